"""How much memory training takes, from configs alone, and how much cache a CPU core has: nothing is
allocated, and torch is imported only to ask a GPU its size.

The trainer sizes its work by `block_steps`, `eval_chunk` and `eval_jobs`; packs are sized by `pack_bytes` and
`max_pack` (rnnsgd.packed, rnnsgd.sweep.packing); `rnnsgd train` and every point of a sweep are checked
against the machine by `check_fits` before anything starts. The estimate counts what each model holds on its
device (weights, data, one evaluation interval's samples, the teacher) plus the buffers that a pack's step and
an evaluation share, with a margin; tests/test_packed.py holds it against measured peaks.
"""

from __future__ import annotations

import contextlib
import glob
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rnnsgd.config import MEMORY_FRACTION, TrialConfig, eval_steps, format_value, schedule

BLOCK_BYTES = 2**20  # the input terms A x of this many bytes of SGD steps are computed at once
EVAL_BYTES = 2**27  # an evaluation's forward pass holds its hidden states for at most this many bytes at once
CHUNK_STEPS = 4096  # sample rows of at most this many steps are indexed at once (bounds that index's memory)


def eval_chunk(cfg: TrialConfig) -> int:
    """How many samples an evaluation's forward pass takes at once: EVAL_BYTES of hidden states, at most 4096
    (so that large m x L do not hold a whole test set's states per buffer)."""
    return max(1, min(4096, EVAL_BYTES // (cfg.data.L * cfg.model.m * 4)))


def eval_jobs(cfg: TrialConfig, n: int, cpu: bool) -> int:
    """How many objectives (a network and a shift on a set of n samples) one batched forward pass of an
    evaluation takes at once (rnnsgd.train.objectives), each in chunks of `eval_chunk` samples. On CUDA,
    chunks of EVAL_BYTES of hidden states together, as one objective's chunk holds alone (or one chunk,
    where one is more): a pass's kernels are launched once for all of them. On a CPU, as many as keep
    their input terms and hidden states within half this core's share of the last-level cache (as
    `group_size` for SGD): past it a batched pass streams them from memory and is slower than one
    objective at a time (benchmarks/README.md)."""
    per_job = min(eval_chunk(cfg), n) * cfg.data.L * cfg.model.m * 4
    if cpu:
        return max(1, cpu_cache_bytes() // 2 // (2 * per_job))
    return max(1, EVAL_BYTES // per_job)


def block_steps(K: int, cfg: TrialConfig) -> int:
    """How many SGD steps `sgd_steps` takes per call for a pack of K: BLOCK_BYTES of input terms."""
    per_step = K * cfg.train.batch * cfg.data.L * cfg.model.m * 4
    return max(1, min(1024, BLOCK_BYTES // per_step))


def _longest_interval(cfg: TrialConfig) -> int:
    steps = eval_steps(schedule(cfg).T, cfg.train.evals_per_decade)
    return max(b - a for a, b in zip(steps, steps[1:], strict=False)) if len(steps) > 1 else 1


def model_bytes(cfg: TrialConfig) -> int:
    """What one model of a pack holds on the device: weights, shift, data, one interval's sample stream."""
    m, L, d_x, d, b = cfg.model.m, cfg.data.L, cfg.data.d_x, cfg.data.d, cfg.train.batch
    row = L * (d_x + 1 + 2 * d) * 4  # one sample: x, y, f in float32
    # W, W', W + W' (the step's buffer), A, B, the tail average's sums (at most one per interval in a
    # doubling of steps, plus the running one and one being closed)
    tail = math.ceil(cfg.train.evals_per_decade * math.log10(2)) + 3
    weights = ((3 + tail) * m * m + m * (d_x + 1) + d * m) * 4
    n_int = _longest_interval(cfg)
    data = cfg.data.n_test * row + (0 if cfg.data.online else cfg.data.N * row)
    # online: the interval's fresh samples, their concatenation and their float64 draw; offline: the
    # interval's sample rows (int64, on the CPU and the device)
    stream = n_int * b * row * 4 if cfg.data.online else n_int * b * 8 * 2
    teacher = L * L * cfg.data.p * d * (d_x + 1) * 8  # w*, b* in float64 (on the CPU)
    bookkeeping = 2**18  # generators, history, Python objects
    return weights + data + stream + n_int * 4 + teacher + bookkeeping  # n_int * 4: each step's objective


def _shared_bytes(cfgs: Sequence[TrialConfig], K: int) -> int:
    """Step buffers for a pack of K models like cfgs plus the largest evaluation (`_evaluation_bytes`)."""
    cfg = cfgs[0]
    m, L, d_x, d, b = cfg.model.m, cfg.data.L, cfg.data.d_x, cfg.data.d, cfg.train.batch
    per_step = K * b * L * m * 4  # one (L, K, b, m) float32 buffer
    C = block_steps(K, cfg)
    block = C * per_step + C * K * b * L * (d_x + 1 + d) * 4  # projected inputs, gathered samples
    step = 8 * per_step + 2 * K * L * m * d * 4  # h, g, mask, delta, h_prev, z, temporaries
    rows = CHUNK_STEPS * K * b * 8 * 2
    evaluation = max(_evaluation_bytes(c, K) for c in cfgs)
    build = max(  # a model's data while it is drawn: float64 tokens, labels and inputs (one at a time)
        max(c.data.n_test, 0 if c.data.online else c.data.N, c.train.eta_probe, 4096)
        * (c.data.L * (2 * d_x + 2 + 2 * d) * 8)
        for c in cfgs
    )
    return block + step + rows + max(evaluation, build)


def _evaluation_bytes(cfg: TrialConfig, K: int) -> int:
    """An evaluation in a pack of K: one batched pass of up to 3 K objectives (`eval_jobs`; the last iterate
    and the tail average on the test set and the train subset of each model) plus the float64 diagnostics of
    one model (they follow it: counting both is a margin)."""
    m, L, n = cfg.model.m, cfg.data.L, cfg.data.n_test
    jobs = min(3 * K, eval_jobs(cfg, n, cpu=False))  # CUDA's passes: the larger
    objectives = jobs * (3 * min(eval_chunk(cfg), n) * L * m * 4 + m * m * 4)  # u, h, F of a chunk; W + W'
    diagnostics = 12 * m * m * 8 + 10 * cfg.train.probe * L * m * 8  # W + W', eigvals / SVD; probe JVP states
    return objectives + diagnostics


def pack_bytes(cfgs: Sequence[TrialConfig]) -> int:
    """Estimated peak device memory of training `cfgs` as one pack, with a margin (x 1.25 + 64 MiB)."""
    return _with_margin(sum(model_bytes(c) for c in cfgs) + _shared_bytes(cfgs, len(cfgs)))


def _with_margin(total: int) -> int:
    return int(1.25 * total) + 64 * 2**20


def estimate_bytes(cfg: TrialConfig, K: int) -> int:
    """Estimated peak device memory of a pack of K models like `cfg` (`pack_bytes` of K copies)."""
    if K < 1:
        raise ValueError(f"K: a pack holds at least one model, got {K}")
    return _with_margin(K * model_bytes(cfg) + _shared_bytes([cfg], K))


def max_pack(cfg: TrialConfig, budget_bytes: int, limit: int = 2**20) -> int:
    """The largest K <= limit with estimate_bytes(cfg, K) <= budget_bytes (0: not even one model fits)."""
    if budget_bytes <= 0:
        raise ValueError(f"budget_bytes: must be > 0, got {budget_bytes}")
    if estimate_bytes(cfg, 1) > budget_bytes:
        return 0
    if estimate_bytes(cfg, limit) <= budget_bytes:
        return limit
    lo, hi = 1, limit  # lo fits, hi does not; estimate_bytes grows with K: bisect
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if estimate_bytes(cfg, mid) <= budget_bytes else (lo, mid)
    return lo


def device_memory(device: Any) -> int:
    """Total memory of a device (torch.device or its name) in bytes: the GPU's, or the machine's RAM."""
    if str(device).startswith("cuda"):
        import torch

        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def memory_budget(device: Any, memory_fraction: float = MEMORY_FRACTION) -> int:
    """memory_fraction (in (0, 1]) of the device's memory, in bytes."""
    if not (isinstance(memory_fraction, int | float) and 0 < memory_fraction <= 1):
        raise ValueError(f"memory_fraction: must be in (0, 1], got {memory_fraction!r}")
    return int(memory_fraction * device_memory(device))


def available_memory() -> int:
    """Bytes of RAM a new allocation may still take: the kernel's MemAvailable, within this process's cgroup
    limit where one is set (a container's limit is lower than the host's RAM that /proc/meminfo shows)."""
    avail = device_memory("cpu")
    with contextlib.suppress(OSError, ValueError, StopIteration), open("/proc/meminfo") as f:
        avail = 1024 * int(next(line for line in f if line.startswith("MemAvailable:")).split()[1])
    with contextlib.suppress(OSError, ValueError):
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            avail = min(avail, max(0, int(limit) - used))
    return avail


# the keys that size a model, for naming the one that makes a config too big (`check_fits`)
SIZE_KEYS = (
    "model.m",
    "data.L",
    "data.N",
    "data.n_test",
    "train.T",
    "train.eps",
    "train.min_steps",
    "train.batch",
    "data.d_x",
    "data.d",
    "data.p",
    "train.probe",
    "train.eta_probe",
)


def check_fits(cfg: TrialConfig, limit: int, what: str) -> None:
    """Raise ValueError("<key>=<value>: ...") when one model of `cfg` needs more than `limit` bytes; `what`
    names the limit ("of memory available on this machine"). The key named is the one whose default would
    shrink the estimate most: the size a user most likely mistyped."""
    need = estimate_bytes(cfg, 1)
    if need <= limit:
        return
    flat, defaults = cfg.to_flat(), TrialConfig().to_flat()
    saved = {}
    for key in SIZE_KEYS:
        if flat[key] != defaults[key]:
            with contextlib.suppress(ValueError):
                saved[key] = need - estimate_bytes(cfg.replace(**{key: defaults[key]}), 1)
    key = max(saved, key=saved.get) if saved else "model.m"
    raise ValueError(
        f"{key}={format_value(flat[key])}: one model of this config needs about {format_bytes(need)}, more "
        f"than the {format_bytes(limit)} {what}"
    )


def format_bytes(n: float) -> str:
    """1.5 GiB, 320 MiB, 2.1e+06 TiB: three significant figures in the largest unit that keeps n >= 1."""
    units = ("bytes", "KiB", "MiB", "GiB", "TiB")
    k = 0
    while k < len(units) - 1 and n >= 1024:
        n, k = n / 1024, k + 1
    return f"{n:.3g} {units[k]}"


# ---------------------------------------------------------------------------------------------- hardware


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


def group_size(m: int, device: Any) -> int:
    """How many models of a pack (rnnsgd.packed) step together on `device` (a torch.device). On CUDA all of
    them. On a CPU as many as keep their W, W' and W + W' within half of this core's share of the last-level
    cache: a batched matrix-vector product streams every model's matrix per position, and past the cache that
    is slower than K separate runs (each group then takes a block of steps in turn, its weights staying in
    cache)."""
    if device.type == "cuda":
        return 2**31
    return max(1, cpu_cache_bytes() // 2 // (3 * m * m * 4))
