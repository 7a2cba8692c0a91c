"""Many trials in one process: K models of one shape trained together with batched products.

One-sample SGD on a small RNN is a chain of tiny matrix-vector products: alone, it leaves a CPU core or a GPU
waiting on launch and Python overhead. A pack trains K trials whose shapes agree (`pack_key`: m, L, d_x, d,
batch, loss, activation, online, device) as one: every SGD step is one batched recurrence and BPTT over K
(`rnnsgd.train.sgd_steps`, the same loop that a plain `Trainer` runs as a pack of one).

Each model is an ordinary `Trainer` (teacher, data, named generators, evaluation, verdict, history, checkpoint
state): its W, A, B and W' become views of the pack's (K, ...) tensors, and it draws its own samples from its
own streams for each interval between its evaluations (`Trainer.draw`), so that its trajectory is the one it
has alone: bit for bit on the CPU where m is a multiple of 16 (the batched operations give each model the bits
it gets in a pack of one; for other m the models' vectors are not 64-byte aligned within the pack and MKL may
round differently), to float32 rounding otherwise and on CUDA. Only stepping is shared. Models may differ in
N, eps (so lambda, eta, T and the eval grid), c_*, the teacher and run seeds, task, Phi, eps_x, noise, w_var:
the pack steps to the next evaluation of any model, evaluates the models whose point it is, and drops those
that ended (completed, budget, diverged) from the pack; NaN in one model's slice never reaches another's.
On a CPU the models step in cache-sized groups (`group_size`): past the cache, a batched product is slower
than separate ones.

    results = train_packed([cfg.replace(**{"seed.run": s}) for s in range(16)], on_eval)

Memory is bounded: `train_packed` refuses a pack whose estimate (rnnsgd.memory) is over `memory_fraction` of
the device's memory (or an explicit `budget_bytes`), before anything is allocated.
"""

from __future__ import annotations

import glob
import math
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from rnnsgd.config import MEMORY_FRACTION, TrialConfig
from rnnsgd.memory import CHUNK_STEPS, block_steps, max_pack, memory_budget, model_bytes, pack_bytes
from rnnsgd.train import RunResult, Sample, Trainer, resolve_device, sgd_steps

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

OnEval = Callable[[int, dict[str, float], Trainer], None]


def pack_key(cfg: TrialConfig) -> tuple[tuple[str, Any], ...]:
    """The fields that decide whether trials can share a pack: equal keys, one pack (up to `max_pack`)."""
    flat = cfg.to_flat()
    return tuple((key, flat[key]) for key in PACK_FIELDS)


def cpu_cache_bytes() -> int:
    """This core's share of the CPU's last-level cache (sysfs), or 8 MiB where it cannot be read."""
    best = 8 * 2**20
    try:
        for index in sorted(glob.glob("/sys/devices/system/cpu/cpu0/cache/index*")):
            with open(f"{index}/size") as f:
                size = f.read().strip()
            with open(f"{index}/shared_cpu_list") as f:
                ranges = [r.partition("-") for r in f.read().strip().split(",") if r]
            cpus = sum(int(hi or lo) - int(lo) + 1 for lo, _, hi in ranges)
            units = {"K": 2**10, "M": 2**20, "G": 2**30}
            nbytes = int(size[:-1]) * units[size[-1]] if size[-1] in units else int(size)
            best = max(best, nbytes // max(cpus, 1))
    except (OSError, ValueError):
        pass
    return best


def group_size(m: int, device: torch.device) -> int:
    """How many models of a pack step together. On CUDA all of them. On a CPU as many as keep their W, W'
    and W + W' within half of this core's share of the last-level cache: a batched matrix-vector product
    streams every model's matrix per position, and past the cache that is slower than K separate runs (each
    group then takes a block of steps in turn, its weights staying in cache)."""
    if device.type == "cuda":
        return 2**31
    return max(1, cpu_cache_bytes() // 2 // (3 * m * m * 4))


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
    end: int = 0  # the interval ends at this step (an evaluation point)
    n: int = 0  # its length
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
        self.cfg = cfgs[0]  # the shared shape
        K, m = len(cfgs), self.cfg.model.m
        if group is not None and group < 1:
            raise ValueError(f"group: must be >= 1, got {group}")
        self.group = group or group_size(m, self.device)
        self._work: dict[int, dict[str, torch.Tensor]] = {}  # sgd_steps' buffers, kept across calls
        self.trainers: list[Trainer] = [None] * K  # type: ignore[list-item]
        f32 = {"dtype": torch.float32, "device": self.device}
        self.W = torch.empty(K, m, m, **f32)
        self.A = torch.empty(K, m, self.cfg.data.d_x + 1, **f32)
        self.B = torch.empty(K, self.cfg.data.d, m, **f32)
        self.S = torch.empty(K, m, m, **f32)  # the shifts W'
        self.tails = torch.empty(K, m, m, **f32)  # the tail averages' current sums (what every step adds to)
        online = self.cfg.data.online
        n_rows = 0 if online else sum(c.data.N for c in cfgs)
        L, d_x, d = self.cfg.data.L, self.cfg.data.d_x, self.cfg.data.d
        self.X = torch.empty(n_rows, L, d_x + 1, **f32)  # every model's training set, concatenated
        self.Y = torch.empty(n_rows, L, d, **f32)
        self.slots: list[_Slot] = []
        base = 0
        for p in range(K):  # built one at a time: each model's own tensors are freed as it joins
            tr = Trainer(cfgs[p])
            if states is not None and states[p] is not None:
                tr.load_state_dict(states[p])
            for name, pack in (("W", self.W), ("A", self.A), ("B", self.B)):
                pack[p].copy_(getattr(tr.net, name))
                setattr(tr.net, name, pack[p])
            for name, pack in (("W_shift", self.S), ("tail_cur", self.tails)):
                pack[p].copy_(getattr(tr, name))
                setattr(tr, name, pack[p])
            slot = _Slot(p, tr)
            if not online:
                N = cfgs[p].data.N
                self.X[base : base + N].copy_(tr.train_set.x)
                self.Y[base : base + N].copy_(tr.train_set.y)
                tr.train_set = Sample(self.X[base : base + N], self.Y[base : base + N], tr.train_set.f)
                slot.base = base
                base += N
            self.trainers[p] = tr
            self.slots.append(slot)
        self._sources: tuple[torch.Tensor, torch.Tensor] | None = None if online else (self.X, self.Y)

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

    def _compact(self, keep: list[_Slot], leave: list[_Slot]) -> None:
        """Drop `leave` from the pack: they get their own copies, the rest move down in place."""
        for s in leave:
            tr = s.trainer
            tr.net.W, tr.net.A, tr.net.B = tr.net.W.clone(), tr.net.A.clone(), tr.net.B.clone()
            tr.W_shift, tr.tail_cur = tr.W_shift.clone(), tr.tail_cur.clone()
            s.src = s.order = None
            s.pieces = []
        old = {id(s): p for p, s in enumerate(self.slots)}
        for new, s in enumerate(keep):
            p = old[id(s)]
            if p != new:  # new < p: moving rows down in order never overwrites a row still to move
                for pack in (self.W, self.A, self.B, self.S, self.tails):
                    pack[new].copy_(pack[p])
            tr = s.trainer
            tr.net.W, tr.net.A, tr.net.B = self.W[new], self.A[new], self.B[new]
            tr.W_shift, tr.tail_cur = self.S[new], self.tails[new]
        K = len(keep)
        self.W, self.A, self.B, self.S = self.W[:K], self.A[:K], self.B[:K], self.S[:K]
        self.tails = self.tails[:K]
        self.slots = keep
        self._work.clear()

    def _start_interval(self, s: _Slot) -> None:
        tr = s.trainer
        s.end = next(t for t in tr.steps if t > tr.step)
        s.n, s.pos, s.seconds, s.pieces = s.end - tr.step, 0, 0.0, []
        s.src, s.order = tr.draw(s.n)
        if self.cfg.data.online:
            self._sources = None  # the concatenation of the sources changes

    def _concat_sources(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Online: every model's current interval samples, concatenated (offsets in slot.base)."""
        base = 0
        for s in self.slots:
            s.base = base
            base += s.src.x.shape[0]
        return torch.cat([s.src.x for s in self.slots]), torch.cat([s.src.y for s in self.slots])

    def _step(self, n: int) -> None:
        """n SGD steps of every model of the pack (none crosses the end of its interval)."""
        slots, cfg = self.slots, self.cfg
        if self._sources is None:
            self._sources = self._concat_sources()
        X, Y = self._sources
        lam, eta, j, mask = self._parts(slots)
        K = len(slots)
        size = min(self.group, K)
        groups = []  # (models a:b, the group as an RNN of views, buffers: one set per group size)
        for a in range(0, K, size):
            b = min(a + size, K)
            net = slots[0].trainer.net.with_weights(self.W[a:b], self.A[a:b], self.B[a:b])
            groups.append((a, b, net, self._work.setdefault(b - a, {})))
        block = block_steps(size, cfg)
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
                        net, self.S[a:b], x[:, a:b], y[:, a:b], lam[a:b], eta[a:b], cfg.train.loss, j,
                        None if mask is None else mask[:, a:b], self.tails[a:b], work,
                    )  # fmt: skip
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
            s.n, s.pos, s.seconds, s.pieces = n_steps, 0, 0.0, []
            s.src, s.order = s.trainer.draw(n_steps)
        if self.cfg.data.online:
            self._sources = None
        self._step(n_steps)
        out: list[float | None] = [None] * len(self.trainers)
        for s in self.slots:
            G = torch.cat([chunk[:, k] for chunk, k in s.pieces])
            out[s.index] = G.sum().item() / (n_steps * self.cfg.train.batch)
            s.pieces = []
        return out

    # ------------------------------------------------------------------------------------------ loop

    @torch.no_grad()
    def run(self, on_eval: OnEval | None = None, *, isolate_errors: bool = False) -> list[RunResult]:
        """Train every model until it ends; on_eval(k, metrics, trainer) after each evaluation of model k.

        Results in the caller's order. isolate_errors: an exception in one model's evaluation or on_eval
        drops that model (status "error", the exception in RunResult.error) and the others go on; otherwise
        it ends the whole run, as it would end `train`. A diverged model never stops the others.
        """
        results: list[RunResult | None] = [None] * len(self.trainers)

        def evaluate(s: _Slot, sgd_obj: float, rate: float) -> bool:
            """Evaluate and record; True when the model leaves the pack."""
            tr = s.trainer
            try:
                metrics = tr.evaluate(sgd_obj, rate)
                metrics["perf/pack_size"] = float(len(self.slots))
                tr._record(metrics, None if on_eval is None else lambda mt, t: on_eval(s.index, mt, t))
            except Exception as e:
                if not isolate_errors:
                    raise
                last = tr.history[-1] if tr.history else {}
                text = f"{type(e).__name__}: {e}\n{traceback.format_exc()}"
                results[s.index] = RunResult("error", last, tr.history, error=text)
                return True
            if tr.outcome is not None:
                results[s.index] = RunResult(tr.outcome, tr.history[-1], tr.history)
                return True
            return False

        leave = []  # after the evaluation at step 0 (not for a resumed model), or resumed after the end
        for s in self.slots:
            tr = s.trainer
            if tr.step == 0 and not tr.history and evaluate(s, math.nan, math.nan):
                leave.append(s)
            elif tr.outcome is not None:
                results[s.index] = RunResult(tr.outcome, tr.history[-1], tr.history)
                leave.append(s)
        if leave:
            self._compact([s for s in self.slots if s not in leave], leave)
        for s in self.slots:
            self._start_interval(s)
        while self.slots:
            self._step(min(s.n - s.pos for s in self.slots))
            leave, done = [], [s for s in self.slots if s.pos == s.n]
            for s in sorted(done, key=lambda s: s.index):
                tr = s.trainer
                tr.step = s.end
                G = torch.cat([chunk[:, k] for chunk, k in s.pieces])  # the interval's step objectives
                sgd_obj = G.sum().item() / (s.n * self.cfg.train.batch)
                if evaluate(s, sgd_obj, s.n / s.seconds if s.seconds > 0 else math.nan):
                    leave.append(s)
                else:
                    self._start_interval(s)
            if leave:
                self._compact([s for s in self.slots if s not in leave], leave)
        return results  # type: ignore[return-value]


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
    states[k] (a Trainer.state_dict, or None) resumes model k. metrics carry `perf/pack_size` besides the
    metrics of `train`. Raises ValueError, before allocating, for an empty pack, fields that differ within
    it (pack_key), a memory_fraction outside (0, 1] or a pack over the memory budget.
    """
    return PackedTrainer(cfgs, states, memory_fraction=memory_fraction, budget_bytes=budget_bytes).run(
        on_eval, isolate_errors=isolate_errors
    )


__all__ = ["PACK_FIELDS", "PackedTrainer", "check_pack", "pack_key", "train_packed"]
