"""`rnnsgd train` with one torch thread against torch's default (one per core): wall time of the command.

Runs the console script as a user does (a subprocess: torch's import, set-up, training, output), alternating
`--threads 1` and `--threads 0` (torch's default) so that load from other processes hits both alike, and
prints each run and the medians. Default: the README's example ("One run") with a fixed step budget.

    .venv/bin/python benchmarks/bench_cli_threads.py                       # 5 runs each, train.T=10000
    .venv/bin/python benchmarks/bench_cli_threads.py --repeats 1 --steps 0 # the README example as it is
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

README_EXAMPLE = ["model.m=128", "data.L=4", "data.N=512"]


def run_once(threads: int, sets: list[str]) -> tuple[float, dict]:
    script = Path(sys.executable).with_name("rnnsgd")
    args = [str(script), "train", "--json", "--quiet", "--threads", str(threads)]
    args += [a for s in sets for a in ("--set", s)]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    t0 = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, env=env, check=True)
    return time.perf_counter() - t0, json.loads(proc.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10000, help="train.T (0: the schedule's budget)")
    ap.add_argument("--set", action="append", default=[], help="more config keys (KEY=VALUE)")
    a = ap.parse_args()
    sets = README_EXAMPLE + a.set + ([f"train.T={a.steps}"] if a.steps else [])
    print(f"rnnsgd train {' '.join(sets)}: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    walls: dict[int, list[float]] = {1: [], 0: []}
    for i in range(a.repeats):
        for threads in (1, 0):
            wall, final = run_once(threads, sets)
            walls[threads].append(wall)
            rate = final["perf/steps_per_s"]
            print(
                f"  run {i + 1} threads={threads or 'default'}: wall {wall:7.1f} s, step {final['step']}, "
                f"outcome {final['outcome']}, last interval {rate:8.0f} steps/s",
                flush=True,
            )
    one, default = statistics.median(walls[1]), statistics.median(walls[0])
    print(
        f"median wall: 1 thread {one:.1f} s, torch's default {default:.1f} s ({default / one:.1f}x); "
        f"load average now {os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    main()
