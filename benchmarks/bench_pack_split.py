"""Does splitting a sweep's packs pay? Each shape of a sweep trained as one pack against two halves, alone in
this process (`train_packed`, one thread, no Ray or MLflow), plus the time of one SGD step of the whole pack.

    .venv/bin/python benchmarks/bench_pack_split.py                    # sweeps/smoke.yaml
    .venv/bin/python benchmarks/bench_pack_split.py sweeps/e2.yaml --variant smoke
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from rnnsgd.packed import PackedTrainer, pack_key, train_packed
from rnnsgd.sweep.runner import cost
from rnnsgd.sweep.spec import load_sweep


def seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file", nargs="?", default="sweeps/smoke.yaml")
    ap.add_argument("--variant")
    args = ap.parse_args()
    torch.set_num_threads(1)
    shapes: dict = {}
    for p in load_sweep(args.file, args.variant).points:
        cfg = p.config
        shapes.setdefault(pack_key(cfg), []).append(cfg)
    print("shape                 K  step (us)  one pack (s)  two halves (s)")
    for cfgs in shapes.values():
        cfgs = sorted(cfgs, key=lambda c: -cost(c))
        halves = cfgs[0::2], cfgs[1::2]  # alternating by cost, as the planner balances them
        pack = PackedTrainer(cfgs)
        pack.sgd(200)  # warm-up
        step = statistics.median(seconds(lambda pack=pack: pack.sgd(500)) / 500 for _ in range(5))
        whole = seconds(lambda cfgs=cfgs: train_packed(cfgs))
        split = [seconds(lambda h=h: train_packed(h)) for h in halves if h]
        c = cfgs[0]
        print(
            f"m={c.model.m:<5} L={c.data.L:<4} {len(cfgs):>6}  {step * 1e6:9.1f}  {whole:12.2f}  "
            f"{' + '.join(f'{s:.2f}' for s in split)}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
