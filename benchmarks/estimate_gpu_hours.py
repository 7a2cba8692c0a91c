"""The GPU-hour estimates in the comments of sweeps/e*.yaml (full variants): a cost model, not a measurement.

One-sample SGD on an RNN is a chain of small kernels: per SGD step and per position, the forward and the
BPTT launch about a dozen kernels, so on a GPU a step costs about L x (t_launch + t_matvec(m)), however fast
the GPU is. Assumed (not measured here; this machine has no GPU):

    t_position(m) = 100 us (kernel launches from eager PyTorch) + 3 matvecs of m x m floats at 2 TB/s
    evaluations   = +20% (geometric grid, n_test samples plus the diagnostics)
    steps         = the budget T of the schedule (upper bound: the plateau rule ends most runs earlier)
    GPU-hours     = sum over points of steps x L x t_position x 1.2 x (GPUs per trial) / 3600

    .venv/bin/python benchmarks/estimate_gpu_hours.py            # every sweeps/e*.yaml, variant full
"""

from __future__ import annotations

import sys
from pathlib import Path

from rnnsgd.config import schedule
from rnnsgd.sweep.spec import load_sweep

REPO = Path(__file__).resolve().parents[1]
T_LAUNCH = 100e-6  # seconds per position per step
BANDWIDTH = 2e12  # bytes/s
EVAL_OVERHEAD = 1.2


def estimate(path: Path, variant: str = "full") -> tuple[int, float, float]:
    """(points, GPU-hours as an upper bound, trial-hours)."""
    sweep = load_sweep(path, variant)
    seconds = 0.0
    for p in sweep.points:
        cfg = p.config()
        t_position = T_LAUNCH + 3 * cfg.model.m**2 * 4 / BANDWIDTH
        seconds += schedule(cfg).T * cfg.data.L * t_position * EVAL_OVERHEAD
    gpu = sweep.resources.gpu or 1.0
    return len(sweep.points), seconds * gpu / 3600, seconds / 3600


def main() -> int:
    paths = [Path(a) for a in sys.argv[1:]] or sorted((REPO / "sweeps").glob("e*.yaml"))
    for path in paths:
        n, gpu_h, trial_h = estimate(path)
        print(f"{path.name}: full: {n} points, at most {gpu_h:,.0f} GPU-hours ({trial_h:,.0f} trial-hours)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
