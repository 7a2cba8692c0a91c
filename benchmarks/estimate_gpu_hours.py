"""The GPU-hour estimates in the comments of sweeps/e*.yaml (full variants): a cost model, not a measurement.

One-sample SGD on an RNN is a chain of small kernels: per SGD step and per position, the forward and the
BPTT launch about a dozen kernels, so on a GPU a step costs about L x t_launch however fast the GPU is, plus
the time to stream the weights. Assumed (not measured here; no GPU has been lent to this project yet):

    t_launch  = 100 us per position per step (eager PyTorch's launches; the trial's share of the GPU pays it,
                so 4 trials per GPU overlap their launches)
    t_stream  = 3 reads of each model's m x m float32 matrix per position at 2 TB/s (the whole GPU's
                bandwidth: trials sharing a GPU do not overlap it)
    steps     = the schedule's budget T (an upper bound: the plateau rule ends most runs earlier)
    evals     = +20% (geometric grid, n_test samples plus the diagnostics)

A trial per point pays t_launch for every point; a pack (rnnsgd.sweep.packing, as the sweep plans it for
H100s) pays it once per step for all its points, and streams every point's weights:

    GPU-seconds of a pack = (GPU share x max_i T_i x L x t_launch + sum_i T_i x L x t_stream) x 1.2

    .venv/bin/python benchmarks/estimate_gpu_hours.py            # every sweeps/e*.yaml, variant full
    .venv/bin/python benchmarks/estimate_gpu_hours.py sweeps/e1.yaml --set 'zip=[]'   # E1, task (a) only
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rnnsgd.config import schedule
from rnnsgd.sweep.packing import plan
from rnnsgd.sweep.runner import cost
from rnnsgd.sweep.spec import load_sweep

REPO = Path(__file__).resolve().parents[1]
T_LAUNCH = 100e-6  # seconds per position per step
BANDWIDTH = 2e12  # bytes/s
EVAL_OVERHEAD = 1.2
GPU_BYTES = 80 * 10**9  # an H100's memory
GPUS = 8  # the cluster the packs are planned for (cluster/aws-gpu.yaml: up to 8 one-GPU workers)


def pack_seconds(cfgs: list, share: float) -> float:
    """GPU-seconds of one trial training cfgs (same shape) as a pack, at a GPU share of `share`."""
    L, m = cfgs[0].data.L, cfgs[0].model.m
    steps = [schedule(c).T for c in cfgs]
    launch = share * max(steps) * L * T_LAUNCH
    stream = sum(steps) * L * 3 * m * m * 4 / BANDWIDTH
    return (launch + stream) * EVAL_OVERHEAD


def estimate(path: Path, variant: str = "full", sets: dict[str, str] | None = None) -> dict[str, float]:
    """Points, trials and GPU-hours (upper bounds) of a sweep's variant (with `--set`-style overrides), a
    trial per point and packed."""
    sweep = load_sweep(path, variant, sets or {})
    cfgs = [p.config for p in sweep.points]
    share = sweep.resources.gpu or 1.0
    budget = int(GPU_BYTES * sweep.pack.memory_fraction * share)
    packs = plan(cfgs, [cost(c) for c in cfgs], sweep.pack, int(GPUS / share), budget)
    return {
        "points": len(cfgs),
        "trials": len(packs),
        "unpacked": sum(pack_seconds([c], share) for c in cfgs) / 3600,
        "packed": sum(pack_seconds([cfgs[i] for i in p], share) for p in packs) / 3600,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="*", help="sweep files (default: every sweeps/e*.yaml)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="as `rnnsgd sweep --set`")
    args = ap.parse_args()
    sets = dict(s.split("=", 1) for s in args.set)
    for path in [Path(a) for a in args.files] or sorted((REPO / "sweeps").glob("e*.yaml")):
        e = estimate(path, sets=sets)
        label = f"full with {', '.join(args.set)}" if sets else "full"
        print(
            f"{path.name}: {label}: {e['points']} points: a trial per point at most {e['unpacked']:,.0f} "
            f"GPU-hours; packed ({e['trials']} trials) at most {e['packed']:,.0f} GPU-hours "
            f"({e['unpacked'] / e['packed']:.1f}x less)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
