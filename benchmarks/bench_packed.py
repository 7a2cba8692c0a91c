"""Per-model SGD steps per second: K models packed in one trainer against K plain runs and torch.nn.RNN.

Three contenders do the same one-sample SGD (unsquared l2 on positions 3..L, the same lambda and eta):
    plain   rnnsgd.train.Trainer.sgd, one model (its rate is the per-model rate of K separate runs)
    ref     torch.nn.RNN(relu, no bias) whose weight_hh_l0 is trained with loss.backward(), one model
    pack K  rnnsgd.packed.PackedTrainer.sgd, K models (seeds 0..K-1) at once; per-model rate = K steps / time
Timed blocks of about --seconds each alternate plain, ref, pack 1, pack 4, ... (--repeats rounds), so that
load from other processes hits all alike; the medians are reported, and ratios of medians.

Before timing, a pack of 4 steps 20 times and its models are compared with plain runs of the same configs:
`equal` says whether every W' is bit-identical (CPU) or the largest relative difference (CUDA).

One model-step costs about 6 L m^2 FLOP; `FLOP%` gives the pack's total rate as a share of the device's
float32 matmul rate measured in the same run (a 1024^2 matmul loop on the CPU at the same thread count, an
8192^2 one on CUDA with TF32 off, as the trainer runs). A cell is skipped when one pack step would take longer
than --max-step-seconds (estimated from the plain rate) or when the pack's memory estimate is over the budget.

    .venv/bin/python benchmarks/bench_packed.py                                  # the issue's table, CPU
    .venv/bin/python benchmarks/bench_packed.py --m 128 --L 8 --K 1 16           # one cell
    .venv/bin/python benchmarks/bench_packed.py --runs 16000 --m 128 --L 8 --K 1 4 16  # whole runs

--runs T: instead, whole packed runs (`PackedTrainer.run`, evaluations included) of K models of the default
config with T steps, one after another for each K (--repeats rounds): per-model steps per second, the share of
the run's wall time spent outside SGD (the evaluations), and the seconds that one model's evaluation costs.
    python benchmarks/bench_packed.py --device cuda --m 512 2048 4096 --L 8 32   # a GPU
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from bench_train import Reference  # the same torch.nn.RNN autograd loop, one definition

from rnnsgd.config import MEMORY_FRACTION, TrialConfig
from rnnsgd.memory import estimate_bytes, memory_budget
from rnnsgd.packed import PackedTrainer
from rnnsgd.train import Trainer


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(device: torch.device, seconds: float = 1.0) -> float:
    """float32 matmul rate (GFLOP/s): 1024^2 on the CPU, 8192^2 on CUDA (TF32 off)."""
    n = 8192 if device.type == "cuda" else 1024
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    c = torch.empty(n, n, device=device)
    for _ in range(3):
        torch.mm(a, b, out=c)
    sync(device)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        torch.mm(a, b, out=c)
        reps += 1
        if device.type == "cuda" and reps % 4 == 0:
            sync(device)
    sync(device)
    return reps * 2 * n**3 / (time.perf_counter() - t0) / 1e9


def config(m: int, L: int, device: str, seed: int = 0) -> TrialConfig:
    flat = {
        "model.m": m,
        "data.L": L,
        "data.N": 1024,
        "data.n_test": 16,
        "train.device": device,
        "train.T": 100_000,
        "seed.run": seed,
    }
    return TrialConfig.from_flat(flat)


def check_equal(m: int, L: int, device: str, K: int = 4, steps: int = 20) -> str:
    """A pack of K after `steps` steps against K plain trainers: 'bits' or the max relative difference."""
    cfgs = [config(m, L, device, seed) for seed in range(K)]
    pack = PackedTrainer(cfgs)
    pack.sgd(steps)
    worst = 0.0
    for cfg, tr in zip(cfgs, pack.trainers, strict=True):
        alone = Trainer(cfg)
        alone.sgd(steps)
        if not torch.equal(alone.W_shift, tr.W_shift):
            diff = (alone.W_shift - tr.W_shift).abs().max() / alone.W_shift.abs().max()
            worst = max(worst, diff.item())
    return "bits" if worst == 0 else f"{worst:.1e}"


def rate(step, n: int, device: torch.device) -> tuple[float, float]:
    """Steps per second of step(n): by the wall clock, and by this process's CPU time (what the steps cost
    on a CPU shared with other jobs; meaningless for CUDA, whose work does not run on this process's CPU)."""
    sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    step(n)
    sync(device)
    return n / (time.perf_counter() - t0), n / max(time.process_time() - c0, 1e-9)


def bench(m: int, L: int, Ks: list[int], args: argparse.Namespace, peak: float) -> list[str]:
    device = torch.device(args.device)
    cfg = config(m, L, args.device)
    plain = Trainer(cfg)
    plain.sgd(2)
    # calibrate: per-model rate of the plain trainer, to size blocks and to skip cells that are too slow
    warm = max(2, int(0.3 * rate(plain.sgd, 3, device)[0]))
    plain_rate = rate(plain.sgd, warm, device)[0]
    contenders: dict[str, tuple] = {"plain": (plain.sgd, 1)}
    skipped: dict[int, str] = {}
    if not args.no_ref:
        ref = Reference(plain)
        ref.sgd(2)
        contenders["ref"] = (ref.sgd, 1)
    budget = memory_budget(device, MEMORY_FRACTION)
    for K in Ks:
        if estimate_bytes(cfg, K) > budget:
            skipped[K] = f"memory estimate {estimate_bytes(cfg, K) / 2**30:.1f} GiB over the budget"
        elif K / plain_rate > args.max_step_seconds:
            skipped[K] = f"one pack step ~{K / plain_rate:.1f} s > --max-step-seconds"
        else:
            pack = PackedTrainer([config(m, L, args.device, seed) for seed in range(K)])
            pack.sgd(2)
            contenders[f"K={K}"] = (pack.sgd, K)
    # block sizes: about args.seconds per block, from a short calibration run of each contender
    blocks = {}
    for name, (step, K) in contenders.items():
        r = rate(step, max(1, int(0.2 * plain_rate / K) + 1), device)[0]  # pack steps per second
        blocks[name] = max(1, int(args.seconds * r))
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    cpu_rates: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(args.repeats):  # interleaved
        for name, (step, K) in contenders.items():
            wall, cpu = rate(step, blocks[name], device)
            rates[name].append(K * wall)
            cpu_rates[name].append(K * cpu)
    med = {name: statistics.median(v) for name, v in rates.items()}
    cpu = {name: statistics.median(v) for name, v in cpu_rates.items()}
    equal = check_equal(m, L, args.device) if args.check else "-"
    flop = 6 * L * m**2
    rows = []
    for name in rates:
        K = contenders[name][1]
        vs_ref = f"{med[name] / med['ref']:>6.2f}" if "ref" in med else f"{'-':>6}"
        cpu_cols = ""
        if device.type == "cpu":
            cpu_ref = f"{cpu[name] / cpu['ref']:>6.2f}" if "ref" in cpu else f"{'-':>6}"
            cpu_cols = f" {cpu[name]:>11.1f} {cpu[name] / cpu['plain']:>6.2f} {cpu_ref}"
        rows.append(
            f"{m:>5} {L:>3} {name:>6} {med[name]:>11.1f} {med[name] / med['plain']:>6.2f} {vs_ref}{cpu_cols} "
            f"{100 * med[name] * flop / 1e9 / peak:>7.2f}% {blocks[name] * K:>9}"
            + (f"  equal: {equal}" if name == "plain" else "")
        )
    rows += [f"{m:>5} {L:>3} {'K=' + str(K):>6}   skipped: {why}" for K, why in skipped.items()]
    return rows


def run_config(m: int, L: int, T: int, device: str, seed: int) -> TrialConfig:
    flat = {"model.m": m, "data.L": L, "train.T": T, "train.device": device, "seed.run": seed}
    return TrialConfig.from_flat(flat)


def whole_run(m: int, L: int, K: int, T: int, device: torch.device) -> tuple[float, float, float]:
    """A packed run of K models to its end: per-model steps per second by the wall clock, the share of the
    wall time outside SGD, and seconds per model evaluation. SGD is timed around the pack's `_sgd_to_next`,
    from outside, so that the same measurement runs on older code (whose evaluations go model by model)."""
    pack = PackedTrainer([run_config(m, L, T, device.type, seed) for seed in range(K)])
    sgd_seconds, evals, stepping = [0.0], [0], pack._sgd_to_next

    def timed(active: list[int]) -> list[tuple[int, float, float]]:
        t0 = time.perf_counter()
        reached = stepping(active)
        sync(device)
        sgd_seconds[0] += time.perf_counter() - t0
        return reached

    def count(_k: int, _metrics: dict[str, float], _trainer: Trainer) -> None:
        evals[0] += 1

    pack._sgd_to_next = timed
    t0 = time.perf_counter()
    results = pack.run(count)
    wall = time.perf_counter() - t0
    steps = sum(r.metrics["step"] for r in results)
    return steps / wall, 1 - sgd_seconds[0] / wall, (wall - sgd_seconds[0]) / evals[0]


def bench_runs(args: argparse.Namespace) -> None:
    """The --runs table: each K in turn, --repeats rounds; medians and ranges."""
    device = torch.device(args.device)
    cells = [(m, L, K) for m in args.m for L in args.L for K in args.K]
    got: dict[tuple[int, int, int], list[tuple[float, float, float]]] = {c: [] for c in cells}
    for _ in range(args.repeats):
        for cell in cells:
            got[cell].append(whole_run(*cell, args.runs, device))
    print(f"{'m':>5} {'L':>3} {'K':>3} {'step/s per model':>22} {'eval share':>17} {'s per model eval':>20}")
    for (m, L, K), rows in got.items():
        cols = [spread([r[i] for r in rows], fmt) for i, fmt in enumerate(("{:.0f}", "{:.1%}", "{:.4f}"))]
        print(f"{m:>5} {L:>3} {K:>3} {cols[0]:>22} {cols[1]:>17} {cols[2]:>20}", flush=True)


def spread(values: list[float], fmt: str) -> str:
    """median [min, max]"""
    return f"{fmt.format(statistics.median(values))} [{fmt.format(min(values))}, {fmt.format(max(values))}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--m", type=int, nargs="+", default=[128, 512, 2048])
    ap.add_argument("--L", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--K", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--repeats", type=int, default=5, help="interleaved timed blocks per contender")
    ap.add_argument("--seconds", type=float, default=1.0, help="target time per timed block")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--max-step-seconds", type=float, default=2.0, help="skip slower packs (s per step)")
    ap.add_argument("--no-ref", action="store_true", help="leave out the torch.nn.RNN reference")
    ap.add_argument("--no-check", dest="check", action="store_false", help="skip the equality check")
    ap.add_argument("--runs", type=int, metavar="T", help="time whole packed runs of T steps instead")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.runs:
        print(
            f"torch {torch.__version__}; {torch.get_num_threads()} CPU thread(s); whole runs, T = {args.runs}"
        )
        return bench_runs(args)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = matmul_gflops(device)
    threads = torch.get_num_threads()
    blocks = f"medians of {args.repeats} interleaved blocks of ~{args.seconds:g} s"
    print(f"torch {torch.__version__}; {name}; {threads} CPU thread(s); matmul {peak:.1f} GFLOP/s; {blocks}")
    cpu_head = f" {'cpu step/s':>11} {'xplain':>6} {'xref':>6}" if device.type == "cpu" else ""
    head = f"{'m':>5} {'L':>3} {'who':>6} {'wall step/s':>11} {'xplain':>6} {'xref':>6}"
    print(f"{head}{cpu_head} {'FLOP%':>8} {'steps/blk':>9}")
    for m in args.m:
        for L in args.L:
            for row in bench(m, L, args.K, args, peak):
                print(row, flush=True)
    print(
        "\nstep/s: per-model SGD steps per second (a pack: K x its steps per second), medians, by the wall "
        "clock and (CPU) by this process's CPU time; xplain, xref: ratios of those medians; FLOP%: 6 L m^2 "
        "per model-step at the wall-clock rate as a share of the matmul rate; steps/blk: model-steps per "
        "timed block; equal: a pack of 4 against 4 plain runs after 20 steps"
    )


if __name__ == "__main__":
    main()
