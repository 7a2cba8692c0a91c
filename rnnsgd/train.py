"""One-sample SGD on the shift W' of the recurrent matrix (spec/PAPER.md §4-5).

    W'_{t+1} = W'_t - eta grad_{W'} sum_{j=3}^{L} G(lambda F_j(x; W + W'_t), y*_j),   (x*, y*) ~ U(Z)

The trainer evaluates on a geometric grid of steps and hands each evaluation's metrics to `on_eval`; it
never learns where they go (no Ray, no MLflow here). A run ends `completed` when the training objective
has plateaued, `budget` when the step budget T ran out first (so a budget never masquerades as sample
complexity), or `diverged` on NaN/Inf or blow-up.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from rnnsgd import concept
from rnnsgd.config import TrialConfig, schedule
from rnnsgd.diagnostics import KEYS as DIAGNOSTIC_KEYS
from rnnsgd.diagnostics import diagnostics
from rnnsgd.model import RNN

OUTCOMES = ("completed", "budget", "diverged")


def named_generator(seed: int, name: str) -> torch.Generator:
    """One CPU generator per purpose (teacher, test, init, data, sgd), each from (seed, name)."""
    digest = hashlib.sha256(f"rnnsgd/{name}/{seed}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device: cuda was asked for but torch sees no CUDA device")
    return torch.device(name)


def eval_steps(T: int, per_decade: int) -> list[int]:
    """0, then round(10^(k / per_decade)) up to T, then T."""
    n = int(math.ceil(per_decade * math.log10(max(T, 1)))) + 1
    steps = {0, T} | {round(10 ** (k / per_decade)) for k in range(n)}
    return sorted(s for s in steps if s <= T)


@dataclass
class RunResult:
    status: str  # one of OUTCOMES
    metrics: dict[str, float]  # the last evaluation
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass
class Sample:
    x: torch.Tensor  # (n, L, d_x + 1) network inputs
    y: torch.Tensor  # (n, L, d) noisy labels
    f: torch.Tensor  # (n, L, d) clean F*(x*), for OPT


class Trainer:
    """Holds a trial's fixed parts (teacher, data, init) and its state (W', step, SGD stream, history)."""

    def __init__(self, cfg: TrialConfig) -> None:
        self.cfg = cfg
        self.sched = schedule(cfg)
        self.device = resolve_device(cfg.train.device)
        da, seed = cfg.data, cfg.seed
        phis = tuple(concept.parse_phi(s) for s in da.phi)
        self.teacher = concept.make_teacher(
            da.task,
            da.L,
            da.d_x,
            da.d,
            da.p,
            phis,
            da.lags,
            da.unit_var,
            named_generator(seed.teacher, "teacher"),
        )
        self.mask = self.teacher.mask.to(self.device)
        # the supervised positions as a slice (a view, not a copy, in the SGD loop); contiguous in every task
        sup = self.teacher.mask.nonzero().flatten().tolist()
        assert sup == list(range(sup[0], sup[-1] + 1)), f"supervised positions {sup} are not contiguous"
        self.supervised = slice(sup[0], sup[-1] + 1)
        self.net = RNN(
            cfg.model.m,
            da.d_x,
            da.d,
            named_generator(seed.run, "init"),
            w_var=cfg.model.w_var,
            activation=cfg.model.activation,
            device=self.device,
        )
        # The test set depends on the teacher only: every N and every run seed is scored on the same inputs.
        self.test = self._sample(da.n_test, named_generator(seed.teacher, "test"))
        self.data_gen = named_generator(seed.run, "data")
        self.train_set = None if da.online else self._sample(da.N, self.data_gen)
        self.sgd_gen = named_generator(seed.run, "sgd")
        self.opt = concept.risk(cfg.train.loss, self.test.f, self.test.y, self.mask).mean().item()
        self.zero_risk = (
            concept.risk(cfg.train.loss, torch.zeros_like(self.test.y), self.test.y, self.mask).mean().item()
        )
        self.steps = eval_steps(self.sched.T, cfg.train.evals_per_decade)
        # state
        self.W_shift = torch.zeros_like(self.net.W)
        self.step = 0
        self.history: list[dict[str, float]] = []
        self.outcome: str | None = None

    def _sample(self, n: int, gen: torch.Generator) -> Sample:
        da = self.cfg.data
        x_star = concept.sample_tokens(n, da.L, da.d_x, gen)
        f = self.teacher.labels(x_star)
        y = f + da.noise * torch.randn(f.shape, generator=gen, dtype=torch.float64) if da.noise > 0 else f
        to = {"dtype": torch.float32, "device": self.device}
        return Sample(RNN.normalize(x_star, da.eps_x).to(**to), y.to(**to), f.to(**to))

    # ------------------------------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """Everything that changes during training; the rest is rebuilt from the config."""
        return {
            "step": self.step,
            "W_shift": self.W_shift.cpu().clone(),
            "sgd_gen": self.sgd_gen.get_state(),
            "data_gen": self.data_gen.get_state(),
            "history": [dict(h) for h in self.history],
            "outcome": self.outcome,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = state["step"]
        self.W_shift = state["W_shift"].to(self.device, copy=True)  # trained in place: never alias the state
        self.sgd_gen.set_state(state["sgd_gen"])
        self.data_gen.set_state(state["data_gen"])
        self.history = [dict(h) for h in state["history"]]
        self.outcome = state["outcome"]

    # ------------------------------------------------------------------------------------------ maths

    def objective(self, s: Sample, chunk: int = 4096) -> float:
        """Mean over s of sum_j G(lambda F_j(x; W + W'), y_j)."""
        total = 0.0
        for i in range(0, s.x.shape[0], chunk):
            F = self.net.forward(s.x[i : i + chunk], self.W_shift)
            total += (
                concept.risk(self.cfg.train.loss, self.sched.lam * F, s.y[i : i + chunk], self.mask)
                .sum()
                .item()
            )
        return total / s.x.shape[0]

    def sgd(self, n_steps: int) -> float:
        """n_steps SGD steps from the current state; returns the mean objective of the samples stepped on.

        The hot loop: per step one m x m sum (W + W'), the L-step recurrence and its BPTT, and the update
        fused into one product (W' += -eta delta^T h). Buffers live across the loop; nothing in it waits on
        the device (sample indices are Python ints, the objective is summed on the device).
        """
        cfg, lam, eta, net = self.cfg, self.sched.lam, self.sched.eta, self.net
        b, j = cfg.train.batch, self.supervised
        if (
            cfg.data.online
        ):  # fresh samples, drawn for the whole interval at once (deterministic per interval)
            s = self._sample(n_steps * b, self.data_gen)
            order = torch.arange(n_steps * b).view(n_steps, b)
        else:
            s = self.train_set
            order = torch.randint(cfg.data.N, (n_steps, b), generator=self.sgd_gen)
        rows = order[:, 0].tolist() if b == 1 else order.to(self.device)
        lam_B = lam * net.B  # the loss sees lambda F_j = (lambda B) h_j
        W_total = torch.empty_like(self.W_shift)
        dy = torch.zeros(b, cfg.data.L, cfg.data.d, device=self.device)  # 0 outside the supervised positions
        G_sum = torch.zeros(n_steps, device=self.device)
        for k in range(n_steps):
            if b == 1:
                i = rows[k]
                x, y = s.x[i : i + 1], s.y[i : i + 1, j]  # views, no copies
            else:
                x, y = s.x[rows[k]], s.y[rows[k]][:, j]
            torch.add(net.W, self.W_shift, out=W_total)
            h, u = net.states(x, W_total=W_total)
            z = h[:, j] @ lam_B.T  # (b, |j|, d)
            G, dG = concept.loss_and_grad(cfg.train.loss, z, y)
            torch.sum(G, dim=None, out=G_sum[k])
            torch.mul(dG, lam / b, out=dy[:, j])
            net.backward(h, u, dy, W_total=W_total, out=self.W_shift, alpha=-eta)
        return G_sum.sum().item() / (n_steps * b)

    # ------------------------------------------------------------------------------------------ loop

    def evaluate(self, sgd_obj: float, steps_per_s: float) -> dict[str, float]:
        cfg = self.cfg
        test = self.objective(self.test)
        metrics: dict[str, float] = {"step": float(self.step), "test/risk": test, "opt": self.opt}
        if self.train_set is not None:
            # a fixed subset of at most n_test training samples keeps evaluation cheap at large N
            n = min(cfg.data.N, cfg.data.n_test)
            metrics["train/risk"] = self.objective(
                Sample(self.train_set.x[:n], self.train_set.y[:n], self.train_set.f[:n])
            )
            metrics["gen/gap"] = test - metrics["train/risk"]
        metrics["train/sgd_obj"] = sgd_obj
        metrics["test/excess_risk"] = test - self.opt
        metrics["test/nrisk"] = test / self.zero_risk if self.zero_risk > 0 else math.nan
        metrics["test/risk_iter_avg"] = self._iterate_average(test)
        if math.isfinite(test) and torch.isfinite(self.W_shift).all():
            probe = self.test.x[: cfg.train.probe]
            metrics.update(diagnostics(self.net, self.W_shift, probe))
        else:  # a diverged state: keep every key of the metric table, as NaN
            metrics.update(dict.fromkeys(DIAGNOSTIC_KEYS, math.nan))
        metrics["perf/steps_per_s"] = steps_per_s
        return metrics

    def _iterate_average(self, test: float) -> float:
        """(1/t) sum_{s<t} risk(W_s) by the trapezoid rule on the evaluation grid (what Theorem 1 bounds)."""
        if not self.history or self.step == 0:
            return test
        prev = self.history[-1]
        t0, t1 = prev["step"], float(self.step)
        area = prev["test/risk_iter_avg"] * t0 + 0.5 * (prev["test/risk"] + test) * (t1 - t0)
        return area / t1

    def _verdict(self, metrics: dict[str, float]) -> str | None:
        """diverged / completed (plateau) / budget / None (go on)."""
        tr = self.cfg.train
        key = "test/risk" if self.cfg.data.online else "train/risk"
        now = metrics[key]
        first = self.history[0][key] if self.history else now
        if not math.isfinite(now) or now > tr.diverge_factor * max(first, 1e-12):
            return "diverged"
        if self.step >= tr.min_steps:
            # plateau: the objective fell by less than plateau_tol over the last two doublings of steps (one
            # doubling is too short: one-sample SGD here has slow phases between descents)
            back = [h[key] for h in self.history if h["step"] <= self.step / 4]
            if back and back[-1] - now < tr.plateau_tol * back[-1]:
                return "completed"
        if self.step >= self.sched.T:
            return "budget"
        return None

    @torch.no_grad()
    def run(self, on_eval: Callable[[dict[str, float], Trainer], None] | None = None) -> RunResult:
        """Train until plateau, budget or divergence; call on_eval(metrics, self) after each evaluation."""
        sgd_obj, rate = math.nan, math.nan
        if self.step == 0 and not self.history:
            self._record(self.evaluate(sgd_obj, rate), on_eval)
        while self.outcome is None:
            nxt = next(s for s in self.steps if s > self.step)
            t0 = time.perf_counter()
            sgd_obj = self.sgd(nxt - self.step)
            rate = (nxt - self.step) / (time.perf_counter() - t0)
            self.step = nxt
            self._record(self.evaluate(sgd_obj, rate), on_eval)
        return RunResult(self.outcome, self.history[-1], self.history)

    def _record(self, metrics: dict[str, float], on_eval: Callable | None) -> None:
        self.outcome = self._verdict(metrics) if self.step > 0 else None
        self.history.append(metrics)
        if on_eval is not None:
            on_eval(metrics, self)


def train(
    cfg: TrialConfig,
    on_eval: Callable[[dict[str, float], Trainer], None] | None = None,
    state: dict[str, Any] | None = None,
) -> RunResult:
    """Run one trial. `state` (from Trainer.state_dict, e.g. a checkpoint) resumes it bit-identically."""
    trainer = Trainer(cfg)
    if state is not None:
        trainer.load_state_dict(state)
    return trainer.run(on_eval)
