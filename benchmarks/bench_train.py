"""SGD steps per second: rnnsgd's Trainer.sgd against a plain torch.nn.RNN + autograd loop (not a test).

Both loops do the same one-sample SGD on the same data, in the same order, with the same lambda and eta:
    W <- W - eta grad_W sum_{j=3}^{L} || lambda B h_j(x; W) - y_j ||_2      (unsquared l2, Theorem 1)
ours trains the shift W' with the hand-written BPTT of rnnsgd.model.RNN.backward; the reference trains
torch.nn.RNN's weight_hh_l0 directly (A = weight_ih_l0 frozen) with loss.backward(). Repeats are interleaved
(ours, reference, ours, ...) so that load from other processes hits both alike; the medians are reported.

One step costs about 6 L m^2 FLOP (forward, backward through time, and the outer products of the weight
gradient, each ~2 L m^2); the FLOP fraction compares that to the machine's float32 matmul rate, measured here
with a 1024 x 1024 matmul loop at the same thread count.

    .venv/bin/python benchmarks/bench_train.py                 # torch's default thread count
    .venv/bin/python benchmarks/bench_train.py --threads 1     # single-threaded
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from rnnsgd.config import TrialConfig
from rnnsgd.train import Trainer


def matmul_gflops(threads: int, n: int = 1024, seconds: float = 1.0) -> float:
    """float32 n x n matmul rate at `threads` threads (GFLOP/s)."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    c = torch.empty(n, n)
    for _ in range(3):
        torch.mm(a, b, out=c)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        torch.mm(a, b, out=c)
        reps += 1
    rate = reps * 2 * n**3 / (time.perf_counter() - t0) / 1e9
    torch.set_num_threads(old)
    return rate


class Reference:
    """The same SGD with torch.nn.RNN and autograd: weight_hh_l0 = W + W' is the trained parameter."""

    def __init__(self, trainer: Trainer) -> None:
        net, cfg = trainer.net, trainer.cfg
        rnn = torch.nn.RNN(net.d_x + 1, net.m, nonlinearity="relu", bias=False, batch_first=True)
        self.rnn = rnn.to(trainer.device)
        self.rnn.weight_ih_l0.requires_grad_(False)
        self.W0, self.A, self.B = net.W.clone(), net.A.clone(), net.B.clone()
        self.x, self.y = trainer.train_set.x, trainer.train_set.y
        self.lam, self.eta, self.N = trainer.sched.lam, trainer.sched.eta, cfg.data.N
        self.reset()

    def reset(self) -> None:
        with torch.no_grad():
            self.rnn.weight_ih_l0.copy_(self.A)
            self.rnn.weight_hh_l0.copy_(self.W0)
        self.gen = torch.Generator().manual_seed(0)

    def sgd(self, n_steps: int) -> float:
        W = self.rnn.weight_hh_l0
        order = torch.randint(self.N, (n_steps,), generator=self.gen).tolist()
        total = 0.0
        for i in order:
            h, _ = self.rnn(self.x[i : i + 1])  # (1, L, m)
            z = self.lam * (h[:, 2:] @ self.B.T)  # positions 3..L
            loss = (z - self.y[i : i + 1, 2:]).norm(dim=-1).sum()
            W.grad = None
            loss.backward()
            with torch.no_grad():
                W.sub_(self.eta * W.grad)
            total += loss.item()
        return total / n_steps


def check_same_steps(cfg: TrialConfig, steps: int = 3) -> float:
    """Both loops from the same init, on the same samples: max |W_ours - W_ref| / max |W_ref - W_init|."""
    ours, ref = Trainer(cfg), Reference(Trainer(cfg))
    ref.gen.set_state(ours.sgd_gen.get_state())
    ours.sgd(steps)
    ref.sgd(steps)
    W_ours, W_ref = ours.net.W + ours.W_shift, ref.rnn.weight_hh_l0.detach()
    return ((W_ours - W_ref).abs().max() / (W_ref - ref.W0).abs().max()).item()


def bench(m: int, L: int, repeats: int, seconds: float, peak: float) -> str:
    cfg = TrialConfig.from_flat(
        {
            "model.m": m,
            "data.L": L,
            "data.N": 1024,
            "data.n_test": 16,
            "train.device": "cpu",
            "train.T": 10**9,
        }
    )
    mismatch = check_same_steps(cfg)
    ours, ref = Trainer(cfg), Reference(Trainer(cfg))

    def run_ours(n: int) -> float:
        ours.W_shift.zero_()
        t0 = time.perf_counter()
        ours.sgd(n)
        return n / (time.perf_counter() - t0)

    def run_ref(n: int) -> float:
        ref.reset()
        t0 = time.perf_counter()
        ref.sgd(n)
        return n / (time.perf_counter() - t0)

    # warm up, then size the blocks to about `seconds` each
    n = max(5, int(seconds * min(run_ours(20), run_ref(20))))
    rates: dict[str, list[float]] = {"ours": [], "ref": []}
    for _ in range(repeats):  # interleaved: ours, ref, ours, ref, ...
        rates["ours"].append(run_ours(n))
        rates["ref"].append(run_ref(n))
    o, r = statistics.median(rates["ours"]), statistics.median(rates["ref"])
    flop = 6 * L * m**2  # one step: forward, backward through time, weight-gradient outer products
    cells = [
        f"{m:>5}",
        f"{L:>3}",
        f"{o:>12.1f}",
        f"{r:>12.1f}",
        f"{o / r:>9.2f}",
        f"{100 * o * flop / 1e9 / peak:>8.1f}%",
        f"{100 * r * flop / 1e9 / peak:>8.1f}%",
        f"{mismatch:>9.1e}",
        f"  ({n} steps/block)",
    ]
    return " ".join(cells)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--threads", default="1,0", help="comma-separated torch thread counts (0: torch's default)"
    )
    ap.add_argument("--sizes", default="256x8,1024x16", help="comma-separated m x L")
    ap.add_argument("--repeats", type=int, default=7, help="interleaved timed blocks per loop")
    ap.add_argument("--seconds", type=float, default=1.0, help="target time per timed block")
    args = ap.parse_args()
    default_threads = torch.get_num_threads()
    print(
        f"torch {torch.__version__}; default threads {default_threads}; "
        f"median of {args.repeats} interleaved blocks"
    )
    for t in (int(v) for v in args.threads.split(",")):
        threads = t or default_threads
        torch.set_num_threads(threads)
        peak = matmul_gflops(threads)
        print(f"\n{threads} thread(s): float32 1024x1024 matmul {peak:.1f} GFLOP/s")
        print(
            f"{'m':>5} {'L':>3} {'ours step/s':>12} {'ref step/s':>12} {'ours/ref':>9} {'ours FLOP':>9} "
            f"{'ref FLOP':>9} {'mismatch':>9}"
        )
        for size in args.sizes.split(","):
            m, L = (int(v) for v in size.lower().split("x"))
            print(bench(m, L, args.repeats, args.seconds, peak), flush=True)
    print(
        "\nFLOP: 6 L m^2 per step as a % of the matmul rate; mismatch: max |W_ours - W_ref| / "
        "max |W_ref - W_0| after 3 identical steps (float32 rounding only)"
    )


if __name__ == "__main__":
    main()
