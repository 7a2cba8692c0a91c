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

--calibration FILE replaces t_launch and the bandwidth by a fit to measured rates: the JSON that
`benchmarks/bench_peers.py --device cuda --json FILE` writes (scripts/gpu_check writes it as peers.json). Its
rows of rnnsgd's own trainers (`ours`, one model, and `ours pack`, K models) give the seconds of one (pack)
step, K / (per-model steps/s), fitted by non-negative least squares to the model's form
L x t_launch + K x L x 3 x 4 m^2 / bandwidth.

    .venv/bin/python benchmarks/estimate_gpu_hours.py --calibration gpu_check_out/peers.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
from scipy.optimize import nnls

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
OURS = ("ours", "ours pack")  # bench_peers' rows of rnnsgd's own trainers


class Costs(NamedTuple):
    t_launch: float = T_LAUNCH  # seconds per position per step
    bandwidth: float = BANDWIDTH  # bytes/s


MODEL = Costs()  # the assumed constants above


def calibration(path: Path) -> Costs:
    """t_launch and bandwidth fitted to `bench_peers.py --json` rows (see the module's docstring)."""
    try:
        data = json.loads(Path(path).read_text())
        rows = [r for r in data["rows"] if r["contender"] in OURS and r["steps_per_s"] > 0]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"{path}: not a bench_peers.py --json file ({type(e).__name__}: {e})") from None
    if len({(r["L"], r["models"] * r["m"] ** 2) for r in rows}) < 2:
        raise SystemExit(f"{path}: --calibration needs rows of 'ours'/'ours pack' at two or more sizes")
    if data.get("device") != "cuda":
        print(f"note: {path} was measured on {data.get('device')!r}, not a GPU")
    a = np.array([[r["L"], r["models"] * r["L"] * 3 * 4 * r["m"] ** 2] for r in rows], dtype=float)
    b = np.array([r["models"] / r["steps_per_s"] for r in rows])
    scale = a.max(axis=0)  # columns of one size, for the solver
    (launch, inv_bw), _ = nnls(a / scale, b)
    launch, inv_bw = launch / scale[0], inv_bw / scale[1]
    costs = Costs(launch, 1 / inv_bw if inv_bw > 0 else float("inf"))
    print(
        f"calibration from {path} ({len(rows)} rows): t_launch {costs.t_launch * 1e6:.1f} us per position "
        f"per step (model: {T_LAUNCH * 1e6:.0f}), bandwidth {costs.bandwidth / 1e12:.2f} TB/s "
        f"(model: {BANDWIDTH / 1e12:.0f})"
    )
    return costs


def pack_seconds(cfgs: list, share: float, costs: Costs = MODEL) -> float:
    """GPU-seconds of one trial training cfgs (same shape) as a pack, at a GPU share of `share`."""
    L, m = cfgs[0].data.L, cfgs[0].model.m
    steps = [schedule(c).T for c in cfgs]
    launch = share * max(steps) * L * costs.t_launch
    stream = sum(steps) * L * 3 * m * m * 4 / costs.bandwidth
    return (launch + stream) * EVAL_OVERHEAD


def estimate(
    path: Path, variant: str = "full", sets: dict[str, str] | None = None, costs: Costs = MODEL
) -> dict[str, float]:
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
        "unpacked": sum(pack_seconds([c], share, costs) for c in cfgs) / 3600,
        "packed": sum(pack_seconds([cfgs[i] for i in p], share, costs) for p in packs) / 3600,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="*", help="sweep files (default: every sweeps/e*.yaml)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="as `rnnsgd sweep --set`")
    ap.add_argument(
        "--calibration", metavar="FILE", help="bench_peers.py --json output: fit t_launch and the bandwidth"
    )
    args = ap.parse_args()
    sets = dict(s.split("=", 1) for s in args.set)
    costs = calibration(Path(args.calibration)) if args.calibration else MODEL
    for path in [Path(a) for a in args.files] or sorted((REPO / "sweeps").glob("e*.yaml")):
        e = estimate(path, sets=sets, costs=costs)
        label = f"full with {', '.join(args.set)}" if sets else "full"
        print(
            f"{path.name}: {label}: {e['points']} points: a trial per point at most {e['unpacked']:,.0f} "
            f"GPU-hours; packed ({e['trials']} trials) at most {e['packed']:,.0f} GPU-hours "
            f"({e['unpacked'] / e['packed']:.1f}x less)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
