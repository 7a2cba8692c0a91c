"""Many trials in one process: K models of one shape trained together with batched products.

One-sample SGD on a small RNN is a chain of tiny matrix-vector products: alone, it leaves a CPU core or a GPU
waiting on launch and Python overhead. A pack trains K trials whose shapes agree (`pack_key`: m, L, d_x, d,
batch, loss, activation, online, device) as one: every SGD step is one batched recurrence and BPTT over K
(`rnnsgd.train.sgd_steps`, the same loop that a plain `Trainer` runs as a pack of one), and the evaluations
follow the loop of a plain run (`rnnsgd.train.run_schedule`), which computes the objectives of the models due
at one step together (in batched forward passes: rnnsgd.memory.eval_jobs).

Each model is an ordinary `Trainer` (teacher, data, named generators, evaluation, verdict, history, checkpoint
state) that holds its W, A, B and W' in rows of the pack's (K, ...) tensors (`Trainer.hold`) and draws its own
samples from its own streams for each interval between its evaluations (`Trainer.draw`), so that its
trajectory is the one it has alone: bit for bit on the CPU where m is a multiple of 16 (the batched operations
give each model the bits it gets in a pack of one; for other m the models' vectors are not 64-byte aligned
within the pack and MKL may round differently), to float32 rounding otherwise and on CUDA. Only stepping and
the evaluations' forward passes are shared. Models may differ in N, eps (so lambda, eta, T and the eval grid),
c_*, the teacher and run seeds, task, Phi, eps_x, noise, w_var: the pack steps to the next evaluation of any
model, evaluates the models whose point it is, and drops those that ended (completed, budget, diverged) from
the pack; NaN in one model's slice never reaches another's. On a CPU the models step in cache-sized groups
(rnnsgd.memory.group_size): past the cache, a batched product is slower than separate ones.

    results = train_packed([cfg.replace(**{"seed.run": s}) for s in range(16)], on_eval)

Memory is bounded: `train_packed` refuses a pack whose estimate (rnnsgd.memory) is over `memory_fraction` of
the device's memory (or an explicit `budget_bytes`), before anything is allocated.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from rnnsgd.config import MEMORY_FRACTION, TrialConfig
from rnnsgd.memory import (
    CHUNK_STEPS,
    block_steps,
    group_size,
    max_pack,
    memory_budget,
    model_bytes,
    pack_bytes,
)
from rnnsgd.metrics import PACK_SIZE
from rnnsgd.model import Pack
from rnnsgd.train import OnEval, RunResult, Sample, Trainer, resolve_device, run_schedule, sgd_steps

PACK_FIELDS = (
    "model.m",
    "model.activation",
    "data.L",
    "data.d_x",
    "data.d",
    "data.online",
    "train.batch",
    "train.loss",
    "train.device",
)  # what must be equal for trials to share a pack; everything else may differ


def pack_key(cfg: TrialConfig) -> tuple[tuple[str, Any], ...]:
    """The fields that decide whether trials can share a pack: equal keys, one pack (up to `max_pack`)."""
    flat = cfg.to_flat()
    return tuple((key, flat[key]) for key in PACK_FIELDS)


def check_pack(
    cfgs: Sequence[TrialConfig],
    memory_fraction: float = MEMORY_FRACTION,
    budget_bytes: int | None = None,
) -> torch.device:
    """Refuse a pack that cannot be trained (ValueError naming the field or the problem); its device if fine.

    Checks: at least one model; every model the same `pack_key` (with train.device resolved, so auto and
    cpu agree on a CPU machine); the estimated memory within the budget: budget_bytes if given, else
    memory_fraction of the device's memory. Nothing is allocated.
    """
    if len(cfgs) < 1:
        raise ValueError("pack size K = 0: a pack holds at least one TrialConfig")
    devices = [resolve_device(c.train.device) for c in cfgs]
    first = dict(pack_key(cfgs[0]))
    for i, cfg in enumerate(cfgs[1:], start=1):
        for key, value in pack_key(cfg):
            same = devices[i] == devices[0] if key == "train.device" else value == first[key]
            if not same:
                raise ValueError(
                    f"{key}: the models of a pack share it (fields {', '.join(PACK_FIELDS)}); "
                    f"config 0 has {first[key]!r}, config {i} has {value!r}"
                )
    if budget_bytes is not None:
        if not (isinstance(budget_bytes, int) and budget_bytes > 0):
            raise ValueError(f"budget_bytes: must be a positive number of bytes, got {budget_bytes!r}")
        budget, how = budget_bytes, "budget_bytes"
    else:
        budget, how = memory_budget(devices[0], memory_fraction), f"memory_fraction={memory_fraction:g}"
    need = pack_bytes(cfgs)
    if need > budget:
        fit = max_pack(max(cfgs, key=model_bytes), budget)
        raise ValueError(
            f"pack size K = {len(cfgs)}: needs about {need / 2**30:.3g} GiB on {devices[0]}, over the "
            f"budget of {budget / 2**30:.3g} GiB ({how}); at most {fit} models of this shape fit"
        )
    return devices[0]


# ---------------------------------------------------------------------------------------------- trainer


@dataclass(eq=False)
class _Slot:
    """One model's place in the pack and its current interval (the steps up to its next evaluation)."""

    index: int  # position in the caller's list
    trainer: Trainer
    n: int = 0  # the interval's length
    pos: int = 0  # steps taken in it
    src: Sample | None = None  # the samples its steps draw rows from
    order: torch.Tensor | None = None  # (n, b) rows of src
    base: int = 0  # offset of src in the pack's concatenated sources
    seconds: float = 0.0  # pack stepping time during the interval
    pieces: list[tuple[torch.Tensor, int]] = field(default_factory=list)  # (objective chunk, column)


class PackedTrainer:
    """K Trainers whose SGD steps run as one; see the module docstring.

    `trainers` are in the caller's order. Build with `check_pack`'s arguments; `run` trains to the end.
    """

    def __init__(
        self,
        cfgs: Sequence[TrialConfig],
        states: Sequence[dict[str, Any] | None] | None = None,
        *,
        memory_fraction: float = MEMORY_FRACTION,
        budget_bytes: int | None = None,
        group: int | None = None,
    ) -> None:
        cfgs = list(cfgs)
        self.device = check_pack(cfgs, memory_fraction, budget_bytes)  # before anything is allocated
        if states is not None and len(states) != len(cfgs):
            raise ValueError(f"states: {len(states)} states for a pack of {len(cfgs)} configs")
        if group is not None and group < 1:
            raise ValueError(f"group: must be >= 1, got {group}")
        self.cfg = cfgs[0]  # the shared shape
        self.group = group or group_size(self.cfg.model.m, self.device)
        self._work: dict[int, dict[str, Any]] = {}  # sgd_steps' buffers, kept across calls
        self._allocate(cfgs)
        self.slots: list[_Slot] = []
        base = 0
        for p, cfg in enumerate(cfgs):  # built one at a time: each model's own tensors are freed as it joins
            self.slots.append(self._join(p, cfg, None if states is None else states[p], base))
            base += 0 if cfg.data.online else cfg.data.N
        self.trainers: list[Trainer] = [s.trainer for s in self.slots]
        self._sources: tuple[torch.Tensor, torch.Tensor] | None = (
            None if self.cfg.data.online else (self.X, self.Y)
        )

    def _allocate(self, cfgs: list[TrialConfig]) -> None:
        """The pack's (K, ...) tensors, and (offline) every model's training set, concatenated."""
        K, m, da = len(cfgs), self.cfg.model.m, self.cfg.data
        f32 = {"dtype": torch.float32, "device": self.device}
        self.W = torch.empty(K, m, m, **f32)
        self.A = torch.empty(K, m, da.d_x + 1, **f32)
        self.B = torch.empty(K, da.d, m, **f32)
        self.S = torch.empty(K, m, m, **f32)  # the shifts W'
        self.tails = torch.empty(K, m, m, **f32)  # the tail averages' current sums (what every step adds to)
        n_rows = 0 if da.online else sum(c.data.N for c in cfgs)
        self.X = torch.empty(n_rows, da.L, da.d_x + 1, **f32)
        self.Y = torch.empty(n_rows, da.L, da.d, **f32)

    def _stacks(self) -> tuple[torch.Tensor, ...]:
        """The pack's tensors, in the order of `Trainer.held`."""
        return self.W, self.A, self.B, self.S, self.tails

    def _join(self, p: int, cfg: TrialConfig, state: dict[str, Any] | None, base: int) -> _Slot:
        """Model p (resumed from `state`), holding its tensors in row p and its training set at `base`."""
        tr = Trainer(cfg)
        if state is not None:
            tr.load_state_dict(state)
        N = cfg.data.N
        train = None if cfg.data.online else (self.X[base : base + N], self.Y[base : base + N])
        tr.hold(*(t[p] for t in self._stacks()), train=train)
        return _Slot(p, tr, base=base)

    # ------------------------------------------------------------------------------------------ pack

    def _parts(self, slots: list[_Slot]) -> tuple[torch.Tensor, torch.Tensor, slice, torch.Tensor | None]:
        """lambda, eta (K,), the supervised slice (the union) and the mask of each model's positions in it."""
        f32 = {"dtype": torch.float32, "device": self.device}
        lam = torch.tensor([s.trainer.sched.lam for s in slots], **f32)
        eta = torch.tensor([s.trainer.sched.eta for s in slots], **f32)
        sups = [s.trainer.supervised for s in slots]
        j = slice(min(s.start for s in sups), max(s.stop for s in sups))
        if all(s == j for s in sups):
            return lam, eta, j, None
        pos = torch.arange(j.start, j.stop)
        mask = torch.stack([(pos >= s.start) & (pos < s.stop) for s in sups], dim=1)  # (|j|, K)
        return lam, eta, j, mask.to(self.device)

    def _compact(self, active: list[int]) -> None:
        """Keep only the models `active` (indices): the others leave with copies of their tensors, the rest
        move down in place (to a row at or below their own: moving in order never overwrites a row still to
        move)."""
        stay = set(active)
        keep = [s for s in self.slots if s.index in stay]
        for s in self.slots:
            if s.index not in stay:
                s.trainer.hold(*(t.clone() for t in s.trainer.held()))
        K = len(keep)
        self.W, self.A, self.B, self.S, self.tails = (t[:K] for t in self._stacks())
        for new, s in enumerate(keep):
            s.trainer.hold(*(t[new] for t in self._stacks()))
        self.slots = keep
        self._work.clear()

    def _begin(self, s: _Slot, n: int) -> None:
        """Slot s's next n steps: its samples drawn (`Trainer.draw`)."""
        s.n, s.pos, s.seconds, s.pieces = n, 0, 0.0, []
        s.src, s.order = s.trainer.draw(n)
        if self.cfg.data.online:
            self._sources = None  # the concatenation of the sources changes

    def _objective(self, s: _Slot) -> float:
        """The mean objective of the samples that slot s's n steps took."""
        G = torch.cat([chunk[:, k] for chunk, k in s.pieces])
        return G.sum().item() / (s.n * self.cfg.train.batch)

    def _concat_sources(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Online: every model's current interval samples, concatenated (offsets in slot.base)."""
        base = 0
        for s in self.slots:
            s.base = base
            base += s.src.x.shape[0]
        return torch.cat([s.src.x for s in self.slots]), torch.cat([s.src.y for s in self.slots])

    def _groups(self) -> list[tuple[int, int, Pack, dict[str, Any]]]:
        """The models a:b that step together (`group`), each as a Pack of views, with its buffers (one set per
        group size)."""
        K = len(self.slots)
        size = min(self.group, K)
        groups = []
        for a in range(0, K, size):
            b = min(a + size, K)
            net = Pack(self.W[a:b], self.A[a:b], self.B[a:b], self.cfg.model.activation)
            groups.append((a, b, net, self._work.setdefault(b - a, {})))
        return groups

    def _step(self, n: int) -> None:
        """n SGD steps of every model of the pack (none crosses the end of its interval)."""
        slots, loss = self.slots, self.cfg.train.loss
        if self._sources is None:
            self._sources = self._concat_sources()
        X, Y = self._sources
        lam, eta, j, mask = self._parts(slots)
        K, groups = len(slots), self._groups()
        block = block_steps(min(self.group, K), self.cfg)
        t_start = time.perf_counter()
        for c0 in range(0, n, CHUNK_STEPS):
            c = min(CHUNK_STEPS, n - c0)
            rows = torch.stack([s.order[s.pos + c0 : s.pos + c0 + c] + s.base for s in slots], dim=1)
            rows = rows.to(self.device)  # (c, K, b) into the concatenated sources
            G = torch.empty(c, K, device=self.device)
            for t0 in range(0, c, block):
                r = rows[t0 : t0 + block]
                x, y = X[r], Y[r]  # (block, K, b, L, .)
                for a, b, net, work in groups:  # each group takes the block's steps while its weights are hot
                    G[t0 : t0 + block, a:b] = sgd_steps(
                        net,
                        self.S[a:b],
                        x[:, a:b],
                        y[:, a:b],
                        lam[a:b],
                        eta[a:b],
                        loss,
                        j,
                        None if mask is None else mask[:, a:b],
                        self.tails[a:b],
                        work,
                    )
            for k, s in enumerate(slots):
                s.pieces.append((G, k))
        seconds = time.perf_counter() - t_start
        for s in slots:
            s.pos += n
            s.seconds += seconds

    def sgd(self, n_steps: int) -> list[float | None]:
        """n_steps SGD steps of every model in the pack, no evaluation (as `Trainer.sgd`, which draws the same
        samples); each model's mean objective over them, in the caller's order (None: not in the pack)."""
        for s in self.slots:
            self._begin(s, n_steps)
        self._step(n_steps)
        out: list[float | None] = [None] * len(self.trainers)
        for s in self.slots:
            out[s.index] = self._objective(s)
            s.pieces = []
        return out

    # ------------------------------------------------------------------------------------------ loop

    @torch.no_grad()
    def run(self, on_eval: OnEval | None = None, *, isolate_errors: bool = False) -> list[RunResult]:
        """Train every model until it ends; on_eval(k, metrics, trainer) after each evaluation of model k.

        Results in the caller's order; metrics carry PACK_SIZE, the models in the pack at the evaluation.
        isolate_errors: an exception in one model's evaluation drops that model (status "error", the exception
        in RunResult.error) and the others go on; otherwise it ends the whole run, as it would end `train`.
        An exception in on_eval always propagates (`run_schedule`). A diverged model never stops the others.
        """
        return run_schedule(
            self.trainers, self._sgd_to_next, on_eval, isolate_errors=isolate_errors, extra=self._size
        )

    def _size(self) -> dict[str, float]:
        return {PACK_SIZE: float(len(self.slots))}

    def _sgd_to_next(self, active: list[int]) -> list[tuple[int, float, float]]:
        """`run_schedule`'s SGD for the pack: the models that ended leave it, the others step together until
        the nearest next evaluation of any; those that reached theirs, as (index, objective, steps per s)."""
        if len(active) < len(self.slots):
            self._compact(active)
        for s in self.slots:
            if s.pos == s.n:  # a new interval, up to the model's next evaluation
                self._begin(s, s.trainer.next_evaluation() - s.trainer.step)
        self._step(min(s.n - s.pos for s in self.slots))
        reached = []
        for s in self.slots:
            if s.pos == s.n:
                s.trainer.advance(s.n)
                reached.append((s.index, self._objective(s), s.n / s.seconds if s.seconds > 0 else math.nan))
        return reached


def train_packed(
    cfgs: Sequence[TrialConfig],
    on_eval: OnEval | None = None,
    states: Sequence[dict[str, Any] | None] | None = None,
    *,
    memory_fraction: float = MEMORY_FRACTION,
    budget_bytes: int | None = None,
    isolate_errors: bool = False,
) -> list[RunResult]:
    """Train cfgs as one pack: the results that K calls of `train` give (bit for bit on the CPU).

    on_eval(k, metrics, trainer) after each evaluation of cfgs[k] (trainer.state_dict() is its checkpoint);
    an exception it raises propagates, isolate_errors or not (see `PackedTrainer.run`). states[k] (a
    Trainer.state_dict, or None) resumes model k. metrics carry PACK_SIZE besides the metrics of `train`.
    Raises ValueError, before allocating, for an empty pack, fields that differ within it (pack_key), a
    memory_fraction outside (0, 1] or a pack over the memory budget.
    """
    return PackedTrainer(cfgs, states, memory_fraction=memory_fraction, budget_bytes=budget_bytes).run(
        on_eval, isolate_errors=isolate_errors
    )


__all__ = ["PACK_FIELDS", "PackedTrainer", "check_pack", "pack_key", "train_packed"]
