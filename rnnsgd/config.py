"""Trial configuration: frozen dataclasses, every default in one place, validation, flat dotted keys.

A trial is fully described by a `TrialConfig`; sweeps, MLflow params and the CLI all speak its flat form
(`{"model.m": 256, "data.L": 8, ...}`). Derived quantities (lambda, eta, T) are formulas of the config,
computed by `schedule` (docs/training.md), never stored twice.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass, field
from typing import Any

from rnnsgd.phi import complexity_eps, parse_phi

TASKS = ("paper", "long_range", "lags", "parity")
LOSSES = ("l2", "l1", "huber", "xent", "mse")
SCHEDULES = ("practical", "theory")
ACTIVATIONS = ("relu", "linear")
DEVICES = ("auto", "cpu", "cuda")
MAX_STEPS = 10**12  # the most SGD steps a run may take (the theory schedule's T is cut here; it can be inf)
MAX_EVALS_PER_DECADE = 1000  # each evaluation is a pass over the test set
MEMORY_FRACTION = 0.5  # default share of the device's memory that one pack of models may use (rnnsgd.packed)


@dataclass(frozen=True)
class ModelConfig:
    m: int = 256  # width
    w_var: float = 2.0  # W_ij ~ N(0, w_var/m); 2 is the paper's init, others are E5 controls
    activation: str = "relu"  # "linear" is an E5 control


@dataclass(frozen=True)
class DataConfig:
    task: str = (
        "paper"  # paper: sum over all i < j (eq. 3.1); long_range: y_L = Phi(<w*, x*_2>); lags; parity
    )
    L: int = 8  # sequence length: tokens at positions 2..L-1, labels at 3..L
    N: int = 512  # training-set size (ignored when online)
    d_x: int = 4  # raw token dimension, including the fixed last coordinate 1/2
    d: int = 1  # output dimension
    p: int = 1  # terms per (i -> j) pair
    phi: tuple[str, ...] = ("z^2",)  # Phi families (rnnsgd.phi.parse_phi); one, or one per lag for `lags`
    lags: tuple[int, ...] = (1, 2, 4)  # for task `lags`: y_j = sum_lag Phi_lag(<w*_lag, x*_{j-lag}>)
    eps_x: float = 0.5  # input scaling of real tokens, in (0, 1]; 1 is the "no scaling" control
    noise: float = 0.0  # label noise std sigma_y (makes OPT > 0)
    unit_var: bool = False  # rescale each F*_j to unit variance instead of b* in {-1, +1} raw sums
    n_test: int = 2048  # test-set size: its standard error must sit well below eps
    online: bool = False  # a fresh sample every SGD step (E3) instead of a fixed training set of N


@dataclass(frozen=True)
class TrainConfig:
    loss: str = "l2"  # G(z, y): l2 (unsquared, default), l1, huber, xent; mse is outside the theorem
    schedule: str = "practical"  # how lambda, eta, T follow from (eps, L, m): see `schedule`
    eps: float = 0.1  # target excess risk; sets lambda, eta, T through the schedule
    c_lambda: float = 4.0  # multipliers of the schedule's formulas (practical defaults: see docs/training.md)
    c_eta: float = 1.2
    c_T: float = 1.0
    T: int = 0  # step budget; 0 takes it from the schedule
    batch: int = 1  # samples per SGD step: 1 is the paper's SGD, more is a documented deviation
    evals_per_decade: int = 8  # evaluations on a geometric grid of steps
    plateau_tol: float = (
        0.02  # stop when the train objective fell by less than this fraction in the last 3/4 of
    )
    min_steps: int = 10000  # the steps so far, but never before min_steps
    stall_tol: float = 0.1  # nor while the objective is within this fraction of the constant baseline
    diverge_factor: float = 100.0  # objective above this multiple of its initial value counts as diverged
    probe: int = 64  # probe batch of test inputs for the diagnostics (JVP, flips, drift)
    eta_probe: int = 256  # fresh samples that measure the gradient's size at init (the practical eta)
    device: str = "auto"  # auto: cuda when available, else cpu


@dataclass(frozen=True)
class SeedConfig:
    teacher: int = 0  # draws the teacher (w*, b*, Phi nets): vary it to resample the target function
    run: int = 0  # draws init, data and SGD order, each from its own named stream


@dataclass(frozen=True)
class TrialConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: SeedConfig = field(default_factory=SeedConfig)

    def __post_init__(self) -> None:
        validate(self)

    @classmethod
    def from_flat(cls, flat: dict[str, Any]) -> TrialConfig:
        """Build from dotted keys ("model.m": 256); unknown keys and wrong types raise ValueError."""
        parts: dict[str, dict[str, Any]] = {f.name: {} for f in dataclasses.fields(cls)}
        for key, raw in flat.items():
            if not isinstance(key, str):  # e.g. a YAML file with a number as a key
                raise ValueError(f"{key!r}: keys are dotted strings such as model.m")
            if key not in FIELD_TYPES:
                raise ValueError(f"{key}: {unknown('key', key, FLAT_KEYS)}")
            section, _, name = key.partition(".")
            parts[section][name] = coerce(key, raw, FIELD_TYPES[key])
        sections = {f.name: _SECTIONS[f.name](**parts[f.name]) for f in dataclasses.fields(cls)}
        return cls(**sections)

    def to_flat(self) -> dict[str, Any]:
        """Dotted keys -> values; tuples stay tuples (`format_value` renders them for MLflow and the CLI)."""
        return {
            f"{s.name}.{f.name}": getattr(getattr(self, s.name), f.name)
            for s in dataclasses.fields(self)
            for f in dataclasses.fields(getattr(self, s.name))
        }

    def replace(self, **flat: Any) -> TrialConfig:
        """A copy with some dotted keys changed: cfg.replace(**{"data.N": 1024})."""
        return TrialConfig.from_flat({**self.to_flat(), **flat})


_SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig, "seed": SeedConfig}


# every flat key's field type ("data.N" -> int), in TrialConfig's order: what `coerce` converts values to
FIELD_TYPES: dict[str, Any] = {
    f"{s}.{name}": typ for s, cls in _SECTIONS.items() for name, typ in typing.get_type_hints(cls).items()
}
FLAT_KEYS: tuple[str, ...] = tuple(FIELD_TYPES)


def did_you_mean(word: str, choices: typing.Iterable[str]) -> str | None:
    """'did you mean model.m?' for a misspelt name, or None when nothing is close: a match but for case
    first (data.n -> data.N), then a bare field name (L -> data.L), then difflib's closest (at most three,
    and only those nearly as close as the closest: data.NN -> data.N, not data.p and data.d too)."""
    choices = [str(c) for c in choices]
    close = [c for c in choices if c.lower() == word.lower()]
    close = close or [c for c in choices if "." in c and c.rpartition(".")[2] == word]
    if not close:
        ratio = {
            c: difflib.SequenceMatcher(None, word, c).ratio()
            for c in difflib.get_close_matches(word, choices, n=3)
        }
        close = [c for c, r in ratio.items() if r >= max(ratio.values()) - 0.1]
        close.sort(key=lambda c: (-ratio[c], choices.index(c)))  # ties in the order the choices are given
    if not close:
        return None
    return f"did you mean {close[0] if len(close) == 1 else ', '.join(close[:-1]) + ' or ' + close[-1]}?"


def unknown(what: str, word: str, choices: typing.Iterable[str]) -> str:
    """The one-line complaint about an unknown name: the close matches where there are some (a list of 32
    keys hides the one meant), else every choice."""
    choices = list(choices)
    hint = did_you_mean(word, choices)
    return f"unknown {what}; {hint}" if hint else f"unknown {what} (known: {', '.join(map(str, choices))})"


def coerce(key: str, raw: Any, typ: Any) -> Any:
    """Convert a YAML value or a CLI string to the field's type, or raise ValueError naming the key."""
    if typing.get_origin(typ) is tuple:
        (item,) = {a for a in typing.get_args(typ) if a is not Ellipsis}
        if isinstance(raw, str):
            raw = [s.strip() for s in raw.strip("[]()").split(",") if s.strip()]
        elif not isinstance(raw, list | tuple):
            raw = [raw]
        return tuple(coerce(key, r, item) for r in raw)
    if typ is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in ("true", "false", "1", "0", "yes", "no"):
            return raw.lower() in ("true", "1", "yes")
        raise ValueError(f"{key}: expected true or false, got {raw!r}")
    if typ is int:
        if isinstance(raw, bool):
            raise ValueError(f"{key}: expected an integer, got {raw!r}")
        if isinstance(raw, int):
            return raw
        if isinstance(raw, float) and raw.is_integer():
            return int(raw)
        if isinstance(raw, str):
            try:
                value = float(raw.strip())
            except ValueError:
                value = math.nan
            if value.is_integer():
                return int(value)
        raise ValueError(f"{key}: expected an integer, got {raw!r}")
    if typ is float:
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            return float(raw)
        if isinstance(raw, str):
            try:
                return float(raw.strip())
            except ValueError:
                pass
        raise ValueError(f"{key}: expected a number, got {raw!r}")
    if typ is str:
        if isinstance(raw, str):
            return raw
        raise ValueError(f"{key}: expected a string, got {raw!r}")
    raise TypeError(f"{key}: unsupported field type {typ}")  # a bug in this module, not bad input


def format_value(value: Any) -> str:
    """How a config value is written in MLflow params and on the CLI (the inverse of `coerce`)."""
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ValueError(f"{key}: {message}")


def validate(cfg: TrialConfig) -> None:
    """Raise ValueError("<key>: <problem and what is allowed>") for the first bad field."""
    for key, value in cfg.to_flat().items():
        if isinstance(value, float):  # inf and nan pass comparisons below that they should fail
            _require(math.isfinite(value), key, f"must be finite, got {value}")
        elif isinstance(value, int) and abs(value) >= 2**63:  # torch holds no larger integer
            raise ValueError(f"{key}: must be below 2^63, got about 10^{len(str(abs(value))) - 1}")
    _validate_model(cfg.model)
    _validate_data(cfg.data)
    _validate_train(cfg.train, cfg.data)


def _one_of(value: str, choices: tuple[str, ...], key: str) -> None:
    _require(value in choices, key, f"must be one of {choices}, got {value!r}")


def _validate_model(mo: ModelConfig) -> None:
    _require(mo.m >= 1, "model.m", f"must be a positive integer, got {mo.m}")
    _require(mo.w_var > 0, "model.w_var", f"must be > 0, got {mo.w_var}")
    _one_of(mo.activation, ACTIVATIONS, "model.activation")


def _validate_data(da: DataConfig) -> None:
    _one_of(da.task, TASKS, "data.task")
    _require(da.L >= 3, "data.L", f"must be >= 3 (labels live at positions 3..L), got {da.L}")
    _require(da.N >= 1, "data.N", f"must be >= 1, got {da.N}")
    _require(da.d_x >= 2, "data.d_x", f"must be >= 2 (one free coordinate plus the fixed 1/2), got {da.d_x}")
    _require(da.d >= 1, "data.d", f"must be >= 1, got {da.d}")
    _require(da.p >= 1, "data.p", f"must be >= 1, got {da.p}")
    _require(len(da.phi) >= 1, "data.phi", "must name at least one Phi")
    for spec in da.phi:
        try:
            parse_phi(spec)
        except ValueError as e:
            raise ValueError(f"data.phi: {e}") from None
    if da.task == "lags":
        lags_ok = len(da.lags) >= 1 and all(1 <= g <= da.L - 3 for g in da.lags)
        why = f"each lag must be in 1..L-3 = 1..{da.L - 3} so that some label sees it, got {da.lags}"
        _require(lags_ok, "data.lags", why)
        why = f"give one Phi or one per lag ({len(da.lags)}), got {len(da.phi)}"
        _require(len(da.phi) in (1, len(da.lags)), "data.phi", why)
    else:
        _require(len(da.phi) == 1, "data.phi", f"task {da.task!r} takes one Phi, got {len(da.phi)}")
    _require(0 < da.eps_x <= 1, "data.eps_x", f"must be in (0, 1], got {da.eps_x}")
    _require(da.noise >= 0, "data.noise", f"must be >= 0, got {da.noise}")
    _require(da.n_test >= 1, "data.n_test", f"must be >= 1, got {da.n_test}")


def _validate_train(tr: TrainConfig, da: DataConfig) -> None:
    _one_of(tr.loss, LOSSES, "train.loss")
    _require(tr.loss != "xent" or da.d >= 2, "train.loss", "xent (softmax cross-entropy) needs data.d >= 2")
    _one_of(tr.schedule, SCHEDULES, "train.schedule")
    for k in ("eps", "c_lambda", "c_eta", "c_T"):
        _require(getattr(tr, k) > 0, f"train.{k}", f"must be > 0, got {getattr(tr, k)}")
    _in_range(tr.T, 0, MAX_STEPS, "train.T", " (0: from the schedule)")
    _require(tr.batch >= 1, "train.batch", f"must be >= 1, got {tr.batch}")
    _in_range(tr.evals_per_decade, 1, MAX_EVALS_PER_DECADE, "train.evals_per_decade")
    _require(0 <= tr.plateau_tol < 1, "train.plateau_tol", f"must be in [0, 1), got {tr.plateau_tol}")
    _in_range(tr.min_steps, 0, MAX_STEPS, "train.min_steps")
    _require(0 <= tr.stall_tol < 1, "train.stall_tol", f"must be in [0, 1), got {tr.stall_tol}")
    _require(tr.diverge_factor > 1, "train.diverge_factor", f"must be > 1, got {tr.diverge_factor}")
    _require(tr.probe >= 1, "train.probe", f"must be >= 1, got {tr.probe}")
    _require(tr.eta_probe >= 1, "train.eta_probe", f"must be >= 1, got {tr.eta_probe}")
    _one_of(tr.device, DEVICES, "train.device")


def _in_range(value: int, low: int, high: int, key: str, note: str = "") -> None:
    """An integer in [low, high]; a high of MAX_STEPS is written 1e+12."""
    top = f"{high:.0e}" if high == MAX_STEPS else str(high)
    _require(low <= value <= high, key, f"must be in [{low}, {top}]{note}, got {value}")


@dataclass(frozen=True)
class Schedule:
    lam: float  # output scale lambda: the loss sees lambda * F_j
    eta: float | None  # SGD step size (None: the practical rule's measurement was not given)
    T: int  # step budget


def schedule(cfg: TrialConfig, grad_sq: float | None = None) -> Schedule:
    """lambda, eta and T from (eps, L, m, d, p): one fixed formula per schedule for every cell of a sweep.

    theory (Theorem 1): rho = 100 L d log m, lambda = eps / (10 L rho), eta = 1 / (eps rho^2 m),
        T = p^2 C^2 rho^2 / eps^2 with C = C_eps(Phi, sqrt L) at C* = 1 (the theorem's poly(rho) is
        unspecified; rho^2 is the smallest honest choice). Each times its multiplier.
    practical (default): lambda = c_lambda eps / L and eta = c_eta eps / (L grad_sq), where grad_sq is the
        mean squared norm of one sample's gradient at init (measured by the trainer on fresh samples). One
        step then lowers the loss of the sample it takes by about c_eta eps / L to first order: the
        function-space step keeps the theory's shape (proportional to eps, falling with L, flat in m, since
        grad_sq grows like lambda^2 m), and the measurement carries what a formula cannot: the loss sums
        L - 2 positions and BPTT sums each over up to L earlier steps (docs/training.md).
        T = c_T 2000 L / eps, a budget that the plateau rule usually ends first.
    The budget is never below train.min_steps (the plateau rule's own floor: at L = 3 the formula alone left
    runs that were still learning); an explicit train.T overrides the budget of either schedule.
    """
    tr, L, m = cfg.train, cfg.data.L, cfg.model.m
    if tr.schedule == "theory":
        rho = 100 * L * cfg.data.d * math.log(max(m, 2))
        lam = tr.c_lambda * tr.eps / (10 * L * rho)
        eta = tr.c_eta / (tr.eps * rho**2 * m)
        C = max(complexity_eps(parse_phi(s), math.sqrt(L), tr.eps, C_star=1.0) for s in cfg.data.phi)
        T = tr.c_T * (cfg.data.p * C * rho / tr.eps) ** 2
    else:
        lam = tr.c_lambda * tr.eps / L
        eta = None if grad_sq is None else tr.c_eta * tr.eps / (L * max(grad_sq, 1e-30))
        T = tr.c_T * 2000 * L / tr.eps
    T_final = tr.T if tr.T > 0 else max(tr.min_steps, math.ceil(min(T, MAX_STEPS)))
    return Schedule(lam=lam, eta=eta, T=T_final)


def eval_steps(T: int, per_decade: int) -> list[int]:
    """0, then round(10^(k / per_decade)) up to T, then T."""
    n = int(math.ceil(per_decade * math.log10(max(T, 1)))) + 1
    steps = {0, T} | {round(10 ** (k / per_decade)) for k in range(n)}
    return sorted(s for s in steps if s <= T)
