"""Which points share a trial: the sweep's points of one shape, packed into Ray Tune trials (rnnsgd.packed).

A trial that trains K same-shape points as one pack (`rnnsgd.packed.train_packed`) steps them several times
faster than K trials would, and pays Ray's per-trial cost once. Bigger packs are not always better: the
trials of a sweep should still keep every slot (CPU core, GPU share) busy, and the points of a pack still
have to fit the trial's memory. So, per shape (`pack_key`):

    packs  = max(ceil(n / K_max), ceil(slots x the shape's share of the sweep's cost)), at most n
    K_max  = pack.size, or AUTO_MAX; at most what fits `trial_budget` (checked here when the trial runs on
             this machine, and again by the trial itself, on the node it lands on: `split_to_fit`)

and the points go to packs by cost, the costliest first into the pack with the least so far (longest
processing time first), so that a shape's packs end at about the same time.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import torch

from rnnsgd.config import TrialConfig
from rnnsgd.memory import max_pack, memory_budget, pack_bytes
from rnnsgd.packed import pack_key
from rnnsgd.sweep.spec import Pack, Resources, SweepError

# The most points `pack.size: auto` puts in one trial: on a CPU the per-model rate stops rising at K ~ 16
# (benchmarks/README.md), on a GPU it rises further; a bigger pack only lengthens the sweep's tail.
AUTO_MAX = 64


def trial_budget(device: torch.device, pack: Pack, resources: Resources) -> int:
    """The bytes one trial's pack may use: pack.memory_fraction of the device's memory, times the trial's
    share of that device (its GPU fraction; on a CPU, its CPUs over the node's)."""
    if device.type == "cuda":
        share = min(resources.gpu, 1.0)
    else:
        share = min(resources.cpu / (os.cpu_count() or 1), 1.0)
    return max(1, int(memory_budget(device, pack.memory_fraction) * share))


def plan(
    cfgs: Sequence[TrialConfig], costs: Sequence[float], pack: Pack, slots: int, budget: int | None
) -> list[list[int]]:
    """Indices into cfgs, grouped into packs (see the module docstring), the costliest pack first.

    budget: the bytes a trial may use on the device it will run on, when the driver knows it (a local run),
    else None. An explicit pack.size that does not fit it raises SweepError; `auto` shrinks to fit.
    """
    groups: dict[Any, list[int]] = {}
    for i, cfg in enumerate(cfgs):
        groups.setdefault(pack_key(cfg), []).append(i)
    total = sum(costs) or 1.0
    packs: list[list[int]] = []
    for members in groups.values():
        k_max = pack.size or AUTO_MAX
        if budget is not None and k_max > 1:
            largest = max((cfgs[i] for i in members), key=lambda c: pack_bytes([c]))
            fit = max_pack(largest, budget, limit=k_max)
            if pack.size is not None and fit < min(pack.size, len(members)):
                raise SweepError(_too_big(largest, min(pack.size, len(members)), fit, budget))
            k_max = max(1, min(k_max, fit))
        share = sum(costs[i] for i in members) / total
        n = len(members)
        n_packs = min(n, max(math.ceil(n / k_max), math.ceil(slots * share - 1e-9)))
        cap = math.ceil(n / n_packs)
        bins: list[list[int]] = [[] for _ in range(n_packs)]
        load = [0.0] * n_packs
        for i in sorted(members, key=lambda i: -costs[i]):
            b = min((b for b in range(n_packs) if len(bins[b]) < cap), key=lambda b: load[b])
            bins[b].append(i)
            load[b] += costs[i]
        packs.extend(bins)
    return sorted(packs, key=lambda p: -sum(costs[i] for i in p))


def _too_big(cfg: TrialConfig, size: int, fit: int, budget: int) -> str:
    need = pack_bytes([cfg] * size)
    return (
        f"pack.size: {size} points of shape m={cfg.model.m} L={cfg.data.L} need about "
        f"{need / 2**30:.3g} GiB, "
        f"over a trial's budget of {budget / 2**30:.3g} GiB (pack.memory_fraction of its share of the "
        f"device's memory); at most {fit} fit: lower pack.size or raise pack.memory_fraction"
    )


def split_to_fit(cfgs: Sequence[TrialConfig], budget: int) -> list[list[int]]:
    """Consecutive runs of cfgs whose packs fit `budget` (a trial's own check, on its node's device); a point
    alone always forms a run, whatever its estimate: only packing is bounded, not a single model."""
    runs: list[list[int]] = []
    for i, cfg in enumerate(cfgs):
        if runs and pack_bytes([cfgs[j] for j in runs[-1]] + [cfg]) <= budget:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs
