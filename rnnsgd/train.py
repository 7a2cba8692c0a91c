"""One-sample SGD on the shift W' of the recurrent matrix (arXiv 1902.01028, Theorem 1; docs/training.md).

    W'_{t+1} = W'_t - eta grad_{W'} sum_{j=3}^{L} G(lambda F_j(x; W + W'_t), y*_j),   (x*, y*) ~ U(Z)

The trainer evaluates on a geometric grid of steps and hands each evaluation's metrics to `on_eval`; it
never learns where they go (no Ray, no MLflow here). A run ends `completed` when the training objective
has plateaued clearly below the best constant predictor (a plateau near it is a stall, not the end of
learning), `budget` when the step budget T ran out first (so a budget never masquerades as sample
complexity), or `diverged` on NaN/Inf or blow-up.

Besides the last iterate, every evaluation scores the tail average of W' (its mean over the steps since the
last evaluation at or before half the steps so far, Polyak-Ruppert style): under a constant step on a
non-smooth loss the last iterate's risk swings between neighbouring runs, the tail average's much less
(docs/metrics.md).

`run_schedule` is the loop over the evaluation grid, for one trainer (`Trainer.run`) and for a pack of them
(rnnsgd.packed); it computes the objectives of the evaluations due at once together (`evaluate_risks`: batched
forward passes, as many objectives each as rnnsgd.memory.eval_jobs allows; rnnsgd.model.Pack.forward_each
gives each model the bits it gets alone). `sgd_steps` is the SGD loop, for a pack of K networks (a plain run
is a pack of one). Per step it does one K m x m sum (W + W'), the L-step recurrence and its BPTT batched over
K, and the update fused into one product, into buffers (and views of them) that the caller keeps; -eta_k rides
on network k's gradient from the start of BPTT (it is linear), so networks with different step sizes share one
product. Nothing waits on the device. The bits of network k do not depend on the other networks of the pack
(see rnnsgd.model): a pack of K equals K packs of one.
"""

from __future__ import annotations

import hashlib
import math
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from rnnsgd import concept
from rnnsgd.config import TrialConfig, eval_steps, schedule
from rnnsgd.diagnostics import diagnostics, lag_recovery
from rnnsgd.memory import block_steps, eval_chunk, eval_jobs
from rnnsgd.metrics import (
    GEN_GAP,
    MECHANISM,
    NRISK,
    REL_RISK,
    REL_RISK_TAIL,
    STEP,
    STEPS_PER_S,
    TEST_RISK,
    TRAIN_RISK,
)
from rnnsgd.model import RNN, Pack
from rnnsgd.phi import parse_phi

OUTCOMES = ("completed", "budget", "diverged")
LAG_PROBE = 512  # test samples that measure the per-lag recovery of task `lags` (rnnsgd.diagnostics)

# on_eval(k, metrics, trainer) after each evaluation of trainer k (`run_schedule`)
OnEval = Callable[[int, dict[str, float], "Trainer"], None]
# SGD of the active trainers (their indices) until one or more reach their next evaluation: for those, in
# order, (index, the mean objective of the interval's steps, steps per second)
SgdToNext = Callable[[list[int]], list[tuple[int, float, float]]]


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


@dataclass
class RunResult:
    status: str  # one of OUTCOMES, or "error": a model whose evaluation failed, isolated (`run_schedule`)
    metrics: dict[str, float]  # the last evaluation
    history: list[dict[str, float]] = field(default_factory=list)
    error: str | None = None  # the exception, where status is "error"


@dataclass
class Sample:
    x: torch.Tensor  # (n, L, d_x + 1) network inputs
    y: torch.Tensor  # (n, L, d) noisy labels
    f: torch.Tensor  # (n, L, d) clean F*(x*), for OPT


# an objective to compute: a trainer's network at a shift W' on a sample set (`objectives`)
Job = tuple["Trainer", torch.Tensor, Sample]


@dataclass
class Risks:
    """The objectives an evaluation scores (`Trainer.risk_jobs`), computed with other trainers' at once
    (`evaluate_risks`): the last iterate's and the tail average's on the test set, the last iterate's on the
    train subset (None online)."""

    test: float
    tail: float
    train: float | None = None


def _as_slice(mask: torch.Tensor) -> slice:
    """The supervised positions as a slice (a view, not a copy, in the SGD loop); contiguous in every task."""
    sup = mask.nonzero().flatten().tolist()
    assert sup == list(range(sup[0], sup[-1] + 1)), f"supervised positions {sup} are not contiguous"
    return slice(sup[0], sup[-1] + 1)


class Trainer:
    """Holds a trial's fixed parts (teacher, data, init) and its state (W', step, SGD stream, history).

    A pack (rnnsgd.packed) trains many: each `hold`s its tensors in the pack's rows, the pack steps them
    (`sgd_steps`) and tells each how far (`advance`), and `run_schedule` evaluates each on its own grid.
    """

    def __init__(self, cfg: TrialConfig) -> None:
        self.cfg = cfg
        lam = schedule(cfg).lam  # the step size eta is measured at init (`mean_grad_sq`) with this lambda
        self.device = resolve_device(cfg.train.device)
        da, seed = cfg.data, cfg.seed
        phis = tuple(parse_phi(s) for s in da.phi)
        teacher_gen = named_generator(seed.teacher, "teacher")
        self.teacher = concept.make_teacher(
            da.task, da.L, da.d_x, da.d, da.p, phis, da.lags, da.unit_var, teacher_gen
        )
        self.mask = self.teacher.mask.to(self.device)
        self.supervised = _as_slice(self.teacher.mask)
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
        self._fit_baselines()
        self.W_shift = torch.zeros_like(self.net.W)
        self.grad_sq = self.mean_grad_sq(
            self._sample(cfg.train.eta_probe, named_generator(seed.run, "eta")), lam
        )
        self.sched = schedule(cfg, self.grad_sq)
        self.steps = eval_steps(self.sched.T, cfg.train.evals_per_decade)
        # state: W', the step, and the tail average's sums of W'_s: one per interval between evaluations since
        # the window's start (start step, sum), and the running one since the last evaluation
        self.tail_cur = torch.zeros_like(self.W_shift)
        self.tail_done: list[tuple[int, torch.Tensor]] = []
        self.tail_start = 0  # the step after which tail_cur started
        self.step = 0
        self.history: list[dict[str, float]] = []
        self.outcome: str | None = None
        # called with the step reached after each block of SGD steps between evaluations (a live progress
        # display; the sweep's packs do not call it): evaluations thin out geometrically, blocks do not
        self.on_steps: Callable[[int], None] | None = None

    def _fit_baselines(self) -> None:
        """OPT (the teacher's own risk), the zero predictor's risk, and the best constant per position, fitted
        on the training set (online: on a fresh sample as large as the test set, from the teacher's stream, so
        that it is the same for every run seed), with its test risk."""
        da, loss = self.cfg.data, self.cfg.train.loss
        self.opt = concept.risk(loss, self.test.f, self.test.y, self.mask).mean().item()
        zeros = torch.zeros_like(self.test.y)
        self.zero_risk = concept.risk(loss, zeros, self.test.y, self.mask).mean().item()
        fit_on = self.train_set
        if fit_on is None:
            fit_on = self._sample(da.n_test, named_generator(self.cfg.seed.teacher, "baseline"))
        self.baseline = (
            concept.constant_baseline(loss, fit_on.y.cpu(), self.teacher.mask).float().to(self.device)
        )
        self.test_baseline = self._constant_risk(self.test)

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
            "tail_cur": self.tail_cur.cpu().clone(),
            "tail_done": [(start, t.cpu().clone()) for start, t in self.tail_done],
            "tail_start": self.tail_start,
            "sgd_gen": self.sgd_gen.get_state(),
            "data_gen": self.data_gen.get_state(),
            "history": [dict(h) for h in self.history],
            "outcome": self.outcome,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = state["step"]
        self.W_shift = state["W_shift"].to(self.device, copy=True)  # trained in place: never alias the state
        self.tail_cur.copy_(state["tail_cur"])  # in place: in a pack it is a view of the pack's sums
        self.tail_done = [(start, t.to(self.device, copy=True)) for start, t in state["tail_done"]]
        self.tail_start = state["tail_start"]
        self.sgd_gen.set_state(state["sgd_gen"])
        self.data_gen.set_state(state["data_gen"])
        self.history = [dict(h) for h in state["history"]]
        self.outcome = state["outcome"]

    def held(self) -> tuple[torch.Tensor, ...]:
        """What SGD reads and writes: the network's W, A, B, the shift W', the tail average's running sum."""
        return self.net.W, self.net.A, self.net.B, self.W_shift, self.tail_cur

    def hold(
        self,
        W: torch.Tensor,
        A: torch.Tensor,
        B: torch.Tensor,
        W_shift: torch.Tensor,
        tail: torch.Tensor,
        train: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        """Keep `held()` in these tensors from now on (e.g. rows of a pack's, rnnsgd.packed; or copies, for a
        model that leaves it), their values copied in; `train`: likewise for the training set's x and y."""
        for new, old in zip((W, A, B, W_shift, tail), self.held(), strict=True):
            if new.data_ptr() != old.data_ptr():  # a pack's row that stays in place is not copied onto itself
                new.copy_(old)
        self.net = self.net.with_weights(W, A, B)
        self.W_shift, self.tail_cur = W_shift, tail
        if train is not None:
            for new, old in zip(train, (self.train_set.x, self.train_set.y), strict=True):
                new.copy_(old)
            self.train_set = Sample(*train, self.train_set.f)

    # ------------------------------------------------------------------------------------------ maths

    def objective(self, s: Sample, W_shift: torch.Tensor | None = None) -> float:
        """Mean over s of sum_j G(lambda F_j(x; W + W'), y_j), at the current W' unless another is given."""
        return objectives([(self, self.W_shift if W_shift is None else W_shift, s)])[0]

    def _constant_risk(self, s: Sample) -> float:
        """Mean over s of sum_j G(c_j, y_j) for the baseline constants c."""
        c = self.baseline.expand_as(s.y)
        return concept.risk(self.cfg.train.loss, c, s.y, self.mask).mean().item()

    def mean_grad_sq(self, s: Sample, lam: float) -> float:
        """Mean over s of ||grad_{W'} sum_j G(lam F_j(x; W + W'), y_j)||_F^2, each sample's own gradient.

        With delta_l and h_{l-1} of BPTT (rnnsgd.model.RNN.bptt), one sample's gradient is
        sum_l delta_l h_{l-1}^T, whose squared norm is sum_{l,l'} (delta_l . delta_l')(h_{l-1} . h_{l'-1}):
        two Gram matrices per sample, no m x m matrix per sample.
        """
        total, chunk, W_total = 0.0, eval_chunk(self.cfg), self.net.W + self.W_shift
        for i in range(0, s.x.shape[0], chunk):
            h, u = self.net.states(s.x[i : i + chunk], W_total=W_total)  # (n, L, m) views, position-major
            _, dG = concept.loss_and_grad(self.cfg.train.loss, lam * (h @ self.net.B.T), s.y[i : i + chunk])
            dG = dG * self.mask.view(1, -1, 1)
            hT, uT = h.movedim(-2, 0), u.movedim(-2, 0)  # (L, n, m), contiguous
            g = torch.matmul(lam * dG.movedim(-2, 0), self.net.B).contiguous()  # B^T dLoss/dF_l
            self.net.bptt(hT, uT, g, W_total)  # g now holds delta_l
            D = torch.einsum("lnm,knm->nlk", g[1:], g[1:]).double()
            H = torch.einsum("lnm,knm->nlk", hT[:-1], hT[:-1]).double()
            total += (D * H).sum().item()
        return total / s.x.shape[0]

    @property
    def tail_from(self) -> int:
        """The step after which the tail average's window starts."""
        return self.tail_done[0][0] if self.tail_done else self.step

    def _close_tail(self) -> None:
        """At an evaluation: the running sum becomes the interval's, and the window moves to start at the
        last evaluation at or before half the steps, so that it covers the last half of the run and at most
        one interval more (50-72% of the steps at 4 evaluations a decade)."""
        if self.step > self.tail_start:
            self.tail_done.append((self.tail_start, self.tail_cur.clone()))
            self.tail_cur.zero_()
            self.tail_start = self.step
        while len(self.tail_done) > 1 and self.tail_done[1][0] <= self.step / 2:
            self.tail_done.pop(0)

    def tail_average(self) -> torch.Tensor:
        """The mean of W'_s over s in (tail_from, step]: the tail average that evaluations score."""
        if self.step <= self.tail_from:
            return self.W_shift
        return torch.stack([t for _, t in self.tail_done]).sum(dim=0) / (self.step - self.tail_from)

    # ------------------------------------------------------------------------------------------ steps

    def next_evaluation(self) -> int:
        """The step of the next evaluation: the end of the current interval of SGD steps."""
        return next(s for s in self.steps if s > self.step)

    def advance(self, n_steps: int) -> None:
        """n_steps SGD steps were taken (`sgd`, or a pack's `sgd_steps` on `held()`): the step moves on."""
        self.step += n_steps

    def draw(self, n_steps: int) -> tuple[Sample, torch.Tensor]:
        """The samples of the next n_steps SGD steps: a set, and the rows of it each step takes (n_steps, b).

        Offline, the training set and rows from the SGD stream; online, n_steps * b fresh samples from the
        data stream, in order. Drawn for a whole interval at once, so that the streams advance alike whether
        the steps run alone (`sgd`) or in a pack (rnnsgd.packed).
        """
        b = self.cfg.train.batch
        if self.cfg.data.online:
            return self._sample(n_steps * b, self.data_gen), torch.arange(n_steps * b).view(n_steps, b)
        return self.train_set, torch.randint(self.cfg.data.N, (n_steps, b), generator=self.sgd_gen)

    def sgd(self, n_steps: int) -> float:
        """n_steps SGD steps from the current state (the step count stays: see `advance`); returns the mean
        objective of the samples stepped on. The hot loop is `sgd_steps`, this network a pack of one."""
        cfg = self.cfg
        s, order = self.draw(n_steps)
        order = order.to(self.device)
        net, shift, tail = self.net.as_pack(), self.W_shift[None], self.tail_cur[None]
        lam = torch.tensor([self.sched.lam], device=self.device)
        eta = torch.tensor([self.sched.eta], device=self.device)
        G = torch.empty(n_steps, device=self.device)
        block, work = block_steps(1, cfg), {}
        for t0 in range(0, n_steps, block):
            rows = order[t0 : t0 + block]
            x, y = s.x[rows].unsqueeze(1), s.y[rows].unsqueeze(1)  # (block, 1, b, L, .)
            G[t0 : t0 + block] = sgd_steps(
                net, shift, x, y, lam, eta, cfg.train.loss, self.supervised, tail=tail, work=work
            )[:, 0]
            if self.on_steps is not None:
                self.on_steps(self.step + min(t0 + block, n_steps))
        return G.sum().item() / (n_steps * cfg.train.batch)

    # ------------------------------------------------------------------------------------------ evaluation

    def risk_jobs(self) -> list[Job]:
        """The objectives of an evaluation at the current step, in the order of `Risks`; closes the tail
        average's interval first (the tail average takes it in; closing it again at this step is a no-op)."""
        self._close_tail()
        jobs = [(self, self.W_shift, self.test), (self, self.tail_average(), self.test)]
        if self.train_set is not None:
            jobs.append((self, self.W_shift, self._train_subset()))
        return jobs

    def evaluate(self, sgd_obj: float, steps_per_s: float, risks: Risks | None = None) -> dict[str, float]:
        """Every metric of docs/metrics.md at the current step (closing the tail average's interval). risks:
        its objectives, where they were computed with other trainers' (`evaluate_risks`); by default alone."""
        r = evaluate_risks([self])[0] if risks is None else risks
        test, tail = r.test, r.tail
        # STEP stays an int (JSON, MLflow's step, printing); every other value is a float
        metrics: dict[str, float] = {STEP: int(self.step), TEST_RISK: test, "opt": self.opt}
        if self.train_set is not None:
            train = self._train_subset()
            metrics[TRAIN_RISK] = r.train
            metrics["train/baseline"] = self._constant_risk(train)
            metrics[GEN_GAP] = test - metrics[TRAIN_RISK]
        metrics["train/sgd_obj"] = sgd_obj
        metrics["test/excess_risk"] = test - self.opt
        metrics[NRISK] = test / self.zero_risk if self.zero_risk > 0 else math.nan
        metrics["test/risk_iter_avg"] = self._iterate_average(test)
        metrics["test/baseline"] = self.test_baseline
        metrics["test/risk_tail"] = tail
        room = self.test_baseline - self.opt  # what the best constant leaves to learn
        metrics[REL_RISK] = (test - self.opt) / room if room > 0 else math.nan
        metrics[REL_RISK_TAIL] = (tail - self.opt) / room if room > 0 else math.nan
        metrics["sched/eta"], metrics["sched/lambda"] = self.sched.eta, self.sched.lam
        metrics["sched/grad_sq"] = self.grad_sq
        metrics.update(
            self._mechanism(finite=math.isfinite(test) and bool(torch.isfinite(self.W_shift).all()))
        )
        metrics[STEPS_PER_S] = steps_per_s
        return metrics

    def _mechanism(self, finite: bool) -> dict[str, float]:
        """The proof's diagnostics (rnnsgd.diagnostics) and, for task lags, each lag's recovery; NaN for a
        diverged state, so that every evaluation has every key of the metric table."""
        cfg = self.cfg
        if finite:
            out = diagnostics(self.net, self.W_shift, self.test.x[: cfg.train.probe])
        else:
            out = dict.fromkeys(MECHANISM, math.nan)
        if cfg.data.task == "lags":
            x = self.test.x[:LAG_PROBE]
            r2 = (
                lag_recovery(self.net, self.W_shift, self.sched.lam, self.teacher, x, cfg.data.eps_x)
                if finite
                else dict.fromkeys(cfg.data.lags, math.nan)
            )
            out.update({f"lags/r2_{g}": v for g, v in r2.items()})
        return out

    def _train_subset(self) -> Sample:
        """A fixed subset of at most n_test training samples: keeps evaluation cheap at large N."""
        n = min(self.cfg.data.N, self.cfg.data.n_test)
        return Sample(self.train_set.x[:n], self.train_set.y[:n], self.train_set.f[:n])

    def _iterate_average(self, test: float) -> float:
        """(1/t) sum_{s<t} risk(W_s) by the trapezoid rule on the evaluation grid (what Theorem 1 bounds)."""
        if not self.history or self.step == 0:
            return test
        prev = self.history[-1]
        t0, t1 = prev[STEP], float(self.step)
        area = prev["test/risk_iter_avg"] * t0 + 0.5 * (prev[TEST_RISK] + test) * (t1 - t0)
        return area / t1

    def _verdict(self, metrics: dict[str, float]) -> str | None:
        """diverged / completed (plateau) / budget / None (go on)."""
        tr = self.cfg.train
        risk, baseline = (
            (TEST_RISK, "test/baseline") if self.cfg.data.online else (TRAIN_RISK, "train/baseline")
        )
        now = metrics[risk]
        first = self.history[0][risk] if self.history else now
        if not math.isfinite(now) or now > tr.diverge_factor * max(first, 1e-12):
            return "diverged"
        if self.step >= tr.min_steps and now < (1 - tr.stall_tol) * metrics[baseline]:
            # plateau: the objective fell by less than plateau_tol over the last two doublings of steps (one
            # doubling is too short: one-sample SGD here has slow phases between descents). At or near the
            # constant baseline a flat stretch is the stall before learning starts, not an end.
            back = [h[risk] for h in self.history if h[STEP] <= self.step / 4]
            if back and back[-1] - now < tr.plateau_tol * back[-1]:
                return "completed"
        if self.step >= self.sched.T:
            return "budget"
        return None

    def record(
        self, sgd_obj: float, steps_per_s: float, extra: dict[str, float], risks: Risks | None = None
    ) -> dict[str, float]:
        """Evaluate at the current step (`evaluate`, with `risks` if computed already) with `extra`'s
        metrics (a pack's size), judge the run (`outcome`, None while it goes on) and keep the metrics in
        `history`; returns them."""
        metrics = self.evaluate(sgd_obj, steps_per_s, risks)
        metrics.update(extra)
        self.outcome = self._verdict(metrics) if self.step > 0 else None
        self.history.append(metrics)
        return metrics

    def result(self, error: str | None = None) -> RunResult:
        """The run as it stands: its outcome, or status "error" with the exception's text."""
        if error is not None:
            return RunResult("error", self.history[-1] if self.history else {}, self.history, error=error)
        return RunResult(self.outcome, self.history[-1], self.history)

    # ------------------------------------------------------------------------------------------ loop

    @torch.no_grad()
    def run(self, on_eval: Callable[[dict[str, float], Trainer], None] | None = None) -> RunResult:
        """Train until plateau, budget or divergence; call on_eval(metrics, self) after each evaluation."""
        hand_on = None if on_eval is None else lambda _k, metrics, trainer: on_eval(metrics, trainer)
        return run_schedule([self], self._sgd_to_next, hand_on)[0]

    def _sgd_to_next(self, _active: list[int]) -> list[tuple[int, float, float]]:
        """`run_schedule`'s SGD for this trainer alone: the steps to its next evaluation."""
        n = self.next_evaluation() - self.step
        t0 = time.perf_counter()
        sgd_obj = self.sgd(n)
        rate = n / (time.perf_counter() - t0)
        self.advance(n)
        return [(0, sgd_obj, rate)]


def run_schedule(
    trainers: Sequence[Trainer],
    sgd_to_next: SgdToNext,
    on_eval: OnEval | None = None,
    *,
    isolate_errors: bool = False,
    extra: Callable[[], dict[str, float]] = dict,
) -> list[RunResult]:
    """Train each trainer along its own evaluation grid (`Trainer.steps`) until it ends; results in order.

    Each trainer is evaluated at step 0 (not a resumed one); then `sgd_to_next(active)` steps the active ones
    until some reach their next evaluation. The evaluations due together have their objectives computed
    together (`evaluate_risks`); each is recorded with `extra()`'s metrics and judged (`Trainer.record`),
    then handed to on_eval(k, metrics, trainer); a trainer whose run ended leaves the active ones.
    isolate_errors: an exception in one trainer's own evaluation ends that trainer only (status "error", the
    exception in RunResult.error) and the others go on; otherwise it ends the whole run. An exception in
    on_eval (the caller's, e.g. its tracking) always propagates.
    """
    book = _Evaluations(trainers, on_eval, isolate_errors, extra)
    fresh = [k for k, tr in enumerate(trainers) if tr.step == 0 and not tr.history]
    ended = book.record([(k, math.nan, math.nan) for k in fresh])
    # a resumed trainer may have ended already
    active = [k for k, tr in enumerate(trainers) if k not in ended and tr.outcome is None]
    while active:
        ended = book.record(sgd_to_next(active))
        active = [k for k in active if k not in ended]
    return [tr.result(book.errors.get(k)) for k, tr in enumerate(trainers)]


class _Evaluations:
    """`run_schedule`'s evaluations: recorded, handed on, and their errors kept (isolate_errors)."""

    def __init__(
        self,
        trainers: Sequence[Trainer],
        on_eval: OnEval | None,
        isolate_errors: bool,
        extra: Callable[[], dict[str, float]],
    ) -> None:
        self.trainers, self.on_eval, self.extra = trainers, on_eval, extra
        self.isolate_errors = isolate_errors
        self.errors: dict[int, str] = {}
        self.work: dict[str, torch.Tensor] = {}  # the forward passes' buffers, kept for the run

    def record(self, due: list[tuple[int, float, float]]) -> list[int]:
        """Record the evaluations `due` (index, SGD objective, steps per second), in order, their objectives
        batched; the indices of the trainers whose run ended."""
        risks = self._risks([k for k, _, _ in due])
        return [k for (k, obj, rate), r in zip(due, risks, strict=True) if self._record_one(k, obj, rate, r)]

    def _risks(self, ks: list[int]) -> list[Risks | None]:
        """The trainers' objectives in one batched pass; where that fails under isolate_errors, None for each:
        each then computes its own (`Trainer.evaluate`), so that the error ends only the trainer it is in."""
        try:
            return evaluate_risks([self.trainers[k] for k in ks], self.work)
        except Exception:
            if not self.isolate_errors:
                raise
            return [None] * len(ks)

    def _record_one(self, k: int, sgd_obj: float, steps_per_s: float, risks: Risks | None) -> bool:
        """Record trainer k's evaluation; True when its run ended."""
        tr = self.trainers[k]
        try:
            metrics = tr.record(sgd_obj, steps_per_s, self.extra(), risks)
        except Exception as e:
            if not self.isolate_errors:
                raise
            self.errors[k] = f"{type(e).__name__}: {e}\n{traceback.format_exc()}"
            return True
        if self.on_eval is not None:
            self.on_eval(k, metrics, tr)
        return tr.outcome is not None


def evaluate_risks(trainers: Sequence[Trainer], work: dict[str, torch.Tensor] | None = None) -> list[Risks]:
    """Each trainer's `Risks` at its current step (`Trainer.risk_jobs`), computed together (`objectives`)."""
    jobs = [tr.risk_jobs() for tr in trainers]
    values = iter(objectives([job for own in jobs for job in own], work))
    return [Risks(*(next(values) for _ in own)) for own in jobs]


def objectives(jobs: Sequence[Job], work: dict[str, torch.Tensor] | None = None) -> list[float]:
    """`Trainer.objective` of each job (trainer, W', set), in order. The jobs whose networks and sets have one
    shape share batched forward passes (`Pack.forward_each`), `eval_jobs` at a time, each job in chunks of
    `eval_chunk` samples as alone: each value has the bits it has computed alone. work: a dict the caller
    keeps across calls, for the passes' buffers (rnnsgd.model.Pack.forward_each)."""
    out = [math.nan] * len(jobs)
    for group in _same_shape(jobs):
        first_trainer, _, first_set = jobs[group[0]]
        per_pass = eval_jobs(first_trainer.cfg, first_set.x.shape[0], cpu=first_set.x.device.type == "cpu")
        for a in range(0, len(group), per_pass):
            part = group[a : a + per_pass]
            for i, value in zip(part, _objectives_together([jobs[i] for i in part], work), strict=True):
                out[i] = value
    return out


def _same_shape(jobs: Sequence[Job]) -> list[list[int]]:
    """The jobs (indices) that can share a pass: networks of one shape and activation, sets of one shape."""
    groups: dict[tuple, list[int]] = {}
    for i, (tr, _, s) in enumerate(jobs):
        key = (tr.net.W.shape, tr.net.B.shape, tr.net.activation, s.x.shape, s.x.device)  # one device too
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def _objectives_together(jobs: Sequence[Job], work: dict[str, torch.Tensor] | None) -> list[float]:
    """`objectives` of jobs of one shape as one pack: the means over each set, summed chunk by chunk in the
    order a lone job sums them."""
    net = RNN.stack([tr.net for tr, _, _ in jobs])
    W_total = torch.stack([tr.net.W + W_shift for tr, W_shift, _ in jobs])  # as RNN.forward adds them
    n, chunk = jobs[0][2].x.shape[0], eval_chunk(jobs[0][0].cfg)
    totals = [0.0] * len(jobs)
    for i in range(0, n, chunk):
        F = net.forward_each(torch.stack([s.x[i : i + chunk] for _, _, s in jobs]), W_total, work)
        sums = [
            concept.risk(tr.cfg.train.loss, tr.sched.lam * F_k, s.y[i : i + chunk], tr.mask).sum()
            for (tr, _, s), F_k in zip(jobs, F, strict=True)
        ]
        # one wait for the device per chunk, not one per job
        totals = [t + v for t, v in zip(totals, torch.stack(sums).tolist(), strict=True)]
    return [t / n for t in totals]


def sgd_steps(
    net: Pack,
    W_shift: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    lam: torch.Tensor,
    eta: torch.Tensor,
    loss: str,
    supervised: slice,
    mask: torch.Tensor | None = None,
    tail: torch.Tensor | None = None,
    work: dict[str, Any] | None = None,
) -> torch.Tensor:
    """C one-sample (or b-sample) SGD steps of K networks at once (Theorem 1 of the paper):

        W'_k <- W'_k - eta_k grad (1/b) sum_samples sum_{j in supervised} G(lam_k F_j(x; W_k + W'_k), y_j)

    net: a pack (rnnsgd.model.Pack), W (K, m, m); W_shift (K, m, m), trained in place.
    x (C, K, b, L, d_x + 1), y (C, K, b, L, d): the samples of each step. lam, eta (K,) on the device.
    mask (|supervised|, K) bool: the positions that count for each network, where they differ (a pack mixing
    long_range with other tasks); None: all. tail (K, m, m): W' is added to it after every step (the tail
    average's running sum). work: a dict the caller keeps across calls, for buffers to be reused (fresh ones
    cost page faults). Returns (C, K): each step's objective summed over its samples and positions.
    """
    C, K, b, L, _ = x.shape
    m, d, j = W_shift.shape[-1], net.d_out, supervised
    work = {} if work is None else work
    # (C, L, K, b, m): A x_l of every step of the block, contiguous
    U = net.project(x.permute(0, 3, 1, 2, 4), out=_buffer(work, W_shift, "U", C, L, K, b, m))
    Y = y[:, :, :, j].transpose(2, 3)  # (C, K, |j|, b, d), as z below
    lam_B, rows, keep = _loss_side(net, lam, eta, b, mask)
    W_total = _buffer(work, W_shift, "W_total", K, m, m)
    # g = B^T dy (0 outside the supervised positions), h and sigma'(u), position-major, written each step
    g, h_out, active = (_buffer(work, W_shift, name, L, K, b, m) for name in ("g", "h", "active"))
    u_views, h_views, g_views, active_views = (_views(work, k) for k in ("U", "h", "g", "active"))
    G_all = _buffer(work, W_shift, "G", C, K, j.stop - j.start, b)
    for t in range(C):
        torch.add(net.W, W_shift, out=W_total)
        u = U[t]  # (L, K, b, m), position-major
        h = net.recurrence(u, W_total, out=h_out, views=(u_views[t], h_views))
        z = torch.bmm(h[j].transpose(0, 1).reshape(K, -1, m), lam_B).view(K, -1, b, d)  # (K, |j|, b, d)
        G, dG = concept.loss_and_grad(loss, z, Y[t])
        if keep is not None:
            G, dG = torch.where(keep, G, 0.0), torch.where(keep.unsqueeze(-1), dG, 0.0)
        G_all[t].copy_(G)
        dG = dG.transpose(0, 1)  # (|j|, K, b, d), as g
        torch.mul(dG[..., 0:1], rows[0], out=g[j])
        for s in range(1, d):
            g[j].addcmul_(dG[..., s : s + 1], rows[s])
        g[: j.start].zero_()
        g[j.stop :].zero_()
        net.bptt(h, u, g, W_total, out=W_shift, mask=active, views=(g_views, active_views))
        if tail is not None:
            tail.add_(W_shift)
    return G_all.view(C, K, -1).sum(dim=-1)  # a new tensor: G_all is reused


def _loss_side(
    net: Pack, lam: torch.Tensor, eta: torch.Tensor, b: int, mask: torch.Tensor | None
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], torch.Tensor | None]:
    """What `sgd_steps` needs of the outputs: lambda B^T (K, m, d), as the loss sees lambda F_j =
    (lambda B) h_j; the rows of (-eta lambda / b) B, each (K, 1, m), so that -eta dLoss/dh_j = sum_s dG_s of
    them; and the mask of each network's positions as (K, |j|, 1), or None."""
    K = net.W.shape[0]
    lam_B = (lam.view(K, 1, 1) * net.B).mT
    rows = ((-eta * lam / b).view(K, 1, 1) * net.B).unsqueeze(-3).unbind(-2)
    keep = None if mask is None else mask.T.reshape(K, -1, 1)
    return lam_B, rows, keep


def _buffer(work: dict[str, Any], like: torch.Tensor, name: str, *shape: int) -> torch.Tensor:
    """The buffer `name` of `work`, of this shape (a new one, like `like`, when the shape changed)."""
    if name not in work or work[name].shape != shape:
        work[name] = like.new_empty(shape)
    return work[name]


def _views(work: dict[str, Any], name: str) -> list:
    """The per-position views of buffer `name` (U: per step, then per position), made once per buffer: a step
    would otherwise make 4L of them."""
    t, made = work[name], work.get(name + "/views")
    if made is None or made[0] is not t:
        made = work[name + "/views"] = (t, [v.unbind(0) if name == "U" else v for v in t.unbind(0)])
    return made[1]


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
