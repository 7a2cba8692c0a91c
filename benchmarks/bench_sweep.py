"""The sweep service's overhead: a sweep's wall time against the sum of its trials' training time divided by
the concurrency (1.0 would be a service that costs nothing). Runs `rnnsgd sweep` as a user does, in a fresh
folder with a fresh MLflow store, then reads the runs back and prints the factor, where the rest of the time
went, and the final risk per (L, N) cell. With --compare-packing, the wall time of the sweep run a trial per
point (pack.size=1) against packed (the file's pack settings), alternating, and the ratio of the medians.

    .venv/bin/python benchmarks/bench_sweep.py                      # sweeps/smoke.yaml
    .venv/bin/python benchmarks/bench_sweep.py sweeps/e2.yaml --variant smoke
    .venv/bin/python benchmarks/bench_sweep.py --compare-packing 3  # smoke: unpacked vs packed, 3 rounds
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_once(file: str, variant: str | None, sets: list[str], quiet: bool = False) -> tuple[dict, list]:
    """`rnnsgd sweep` in a fresh folder and store; (the numbers, the child runs)."""
    from rnnsgd.sweep.runner import local_nodes, trial_slots
    from rnnsgd.sweep.spec import load_sweep

    sweep = load_sweep(file, variant, dict(s.split("=", 1) for s in sets))
    work = Path(tempfile.mkdtemp(prefix="bench_sweep_"))
    uri = f"sqlite:///{work}/mlflow.db"
    cmd = [
        sys.executable,
        "-m",
        "rnnsgd.cli",
        "sweep",
        str(Path(file).resolve()),
        "--tracking-uri",
        uri,
        "--storage",
        str(work / "ray"),
    ]
    cmd += [f"--variant={variant}"] if variant else []
    cmd += [f"--set={s}" for s in sets]
    env = {
        k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RNNSGD_FAULT", "MLFLOW_TRACKING_URI")
    }
    print(f"$ {' '.join(cmd)}", flush=True)
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    t1 = time.time()
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n")
        raise SystemExit(proc.returncode)

    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(sweep.name)
    runs = [
        r
        for r in client.search_runs([exp.experiment_id], max_results=5000)
        if r.data.tags.get("rnnsgd.role") == "trial"
    ]
    trials: dict[str, list] = defaultdict(list)  # a trial trains a pack of points
    for r in runs:
        trials[r.data.tags["rnnsgd.trial_id"]].append(r)
    # a pack's training time is its last point's rnnsgd.train_s (the pack's time while the point was in it)
    train = {t: max(float(r.data.tags["rnnsgd.train_s"]) for r in rs) for t, rs in trials.items()}
    span = {
        t: (max(r.info.end_time for r in rs) - min(r.info.start_time for r in rs)) / 1000
        for t, rs in trials.items()
    }
    train_s = sum(train.values())
    service = sum(span[t] - train[t] for t in trials)
    concurrency = trial_slots(sweep, local_nodes())
    wall = t1 - t0
    ideal = train_s / concurrency
    first_start = min(r.info.start_time for r in runs) / 1000
    last_end = max(r.info.end_time for r in runs) / 1000
    numbers = {
        "sweep": sweep.name,
        "points": len(runs),
        "trials": len(trials),
        "concurrency": concurrency,
        "wall_s": round(wall, 1),
        "sum_train_s": round(train_s, 1),
        "ideal_s": round(ideal, 1),
        "overhead_factor": round(wall / ideal, 3),
        "startup_s": round(first_start - t0, 1),
        "trials_span_s": round(last_end - first_start, 1),
        "shutdown_s": round(t1 - last_end, 1),
        "span_factor": round((last_end - first_start) / ideal, 3),
        "in_trial_service_s": round(service, 1),
    }
    if not quiet:
        print(
            f"{sweep.name}: {len(runs)} points in {len(trials)} trials, concurrency {concurrency}, wall "
            f"{wall:.1f} s, sum of training {train_s:.1f} s -> ideal {ideal:.1f} s: overhead factor "
            f"{wall / ideal:.2f}"
        )
        print(
            f"  start-up (Ray, MLflow, the first trial's process) {numbers['startup_s']} s; first trial "
            f"start to last trial end {numbers['trials_span_s']} s (factor {numbers['span_factor']}); "
            f"shut-down {numbers['shutdown_s']} s"
        )
        print(
            f"  inside the trials but not training (checkpoints, reports to Tune): {service:.1f} s "
            f"in all, {service / len(trials):.2f} s per trial"
        )
    return numbers, runs


def compare_packing(args) -> int:
    """The same sweep with pack.size=1 (a trial per point) and with the file's packing, alternating."""
    walls: dict[str, list[float]] = {"unpacked": [], "packed": []}
    for r in range(args.compare_packing):
        for how, extra in (("unpacked", ["pack.size=1"]), ("packed", [])):
            numbers, _ = run_once(args.file, args.variant, args.set + extra, quiet=True)
            walls[how].append(numbers["wall_s"])
            print(
                f"  round {r + 1} {how}: {numbers['points']} points in {numbers['trials']} trials, wall "
                f"{numbers['wall_s']} s (start-up {numbers['startup_s']} s, trials "
                f"{numbers['trials_span_s']} s, shut-down {numbers['shutdown_s']} s, sum of training "
                f"{numbers['sum_train_s']} s)",
                flush=True,
            )
    med = {how: statistics.median(w) for how, w in walls.items()}
    print(
        f"median wall: unpacked {med['unpacked']:.1f} s, packed {med['packed']:.1f} s: packed is "
        f"{med['unpacked'] / med['packed']:.2f}x faster"
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"walls": walls, "median": med}, indent=2))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file", nargs="?", default=str(REPO / "sweeps" / "smoke.yaml"))
    ap.add_argument("--variant")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument(
        "--compare-packing",
        type=int,
        metavar="ROUNDS",
        help="run the sweep unpacked and packed, alternating, ROUNDS times each",
    )
    ap.add_argument("--json", help="also write the numbers to this file")
    args = ap.parse_args()
    if args.compare_packing:
        return compare_packing(args)
    numbers, runs = run_once(args.file, args.variant, args.set)

    cells: dict[tuple, list] = defaultdict(list)
    for r in runs:
        p = r.data.params
        cells[(int(p["data.L"]), int(p["data.N"]))].append(r)
    Ls = sorted({L for L, _ in cells})
    Ns = sorted({N for _, N in cells})
    for key in ("test/risk", "test/nrisk"):
        print(f"\nfinal {key}, mean over seeds (rows L, columns N); (k d): k diverged runs left out")
        print("L \\ N " + "".join(f"{N:>14}" for N in Ns))
        for L in Ls:
            row = []
            for N in Ns:
                rs = cells.get((L, N), [])
                ok = [r.data.metrics[key] for r in rs if r.data.tags.get("outcome") != "diverged"]
                diverged = len(rs) - len(ok)
                cell = f"{statistics.fmean(ok):.3f}" if ok else "-"
                row.append(f"{cell + (f' ({diverged}d)' if diverged else ''):>14}")
            print(f"{L:<6}" + "".join(row))
    if args.json:
        Path(args.json).write_text(json.dumps(numbers, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
