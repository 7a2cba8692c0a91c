"""Per-model one-sample SGD steps per second: this project's trainer against what a researcher would write.

Every contender trains only the shift W' of h_l = ReLU((W + W') h_{l-1} + A x_l), y_l = B h_l, by
one-sample SGD on the project's loss: the sum over the supervised positions (3..L) of |lambda y_l - y*_l|
(unsquared l2, d_out = 1), then W' <- W' - eta grad. Same weights (the Trainers' init, seeds.run 0..K-1),
data (each Trainer's training set: rnnsgd.concept's teacher, N = 1024), lambda and eta (each Trainer's
schedule) for all:

    ours        rnnsgd.train.Trainer.sgd: hand-written BPTT (rnnsgd.model), one model
    ours pack   rnnsgd.packed.PackedTrainer.sgd: K models stepped as one (rnnsgd.train.sgd_steps)
    nn.RNN      torch.nn.RNN(relu, no bias, batch_first) called through torch.func.functional_call with
                weight_hh = W + W', loss.backward(), torch.optim.SGD on W'; one model
    compiled    the same loss function under torch.compile (only with --compile: it compiles for minutes)
    func.vmap   PyTorch's model-ensembling recipe: K nn.Modules, torch.func.stack_module_state, and
                vmap(grad(loss)) over them, one update of the stacked W' per step; K models
    jax         jit(vmap(grad(loss))) with lax.scan over the positions and lax.scan over a chunk of steps
                per jitted call, float32 (matmul precision "highest"); K models; skipped when jax is not
                importable (pip install -e ".[bench]")

Before timing, each contender's gradient at W' = 0 on the first sample of each of its models is compared with
ours (rnnsgd.train.sgd_steps with eta = 1): `grad dev` is max |g - g_ours| / max |g_ours| over its models.
Rounds are interleaved (each round runs every contender once, for about --seconds); the table gives the
median per-model steps/s over the rounds and their min-max range, ratios to ours, and `cpu/wall`: this
process's CPU time over the wall time (about 1 when one thread works). On a CPU the process is pinned to as
many cores as --threads gives every contender (XLA runs threads of its own whatever its flags say).

Bandwidth limit: one model-step streams the m x m float32 W (W + W') about 2L + 5 times (forward, BPTT, the
sum, the update). `read` is the best of a few timed torch.sum over a buffer the size of the pack's W
(K m^2 floats) on the device, and over one model's W (m^2: on a CPU it may stay in cache between steps, as
the plain trainer's and the pack's groups do); `limit` = the faster of the two / ((2L + 5) 4 m^2)
model-steps/s and `%lim` each contender's share of it.

    .venv/bin/python benchmarks/bench_peers.py --quick                      # < 1 min, a check
    .venv/bin/python benchmarks/bench_peers.py                              # m = 128, 512, 1024; K = 16
    python benchmarks/bench_peers.py --device cuda --m 512 2048 4096 --K auto --json peers.json
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import statistics
import sys
import time
import warnings

import torch
from bench_packed import config, rate, sync  # the benchmark's config, timed block and device sync
from torch.func import functional_call, grad, stack_module_state, vmap

from rnnsgd.config import MEMORY_FRACTION
from rnnsgd.memory import max_pack, memory_budget
from rnnsgd.model import Pack
from rnnsgd.packed import PackedTrainer
from rnnsgd.train import Trainer, sgd_steps

QUICK = {"m": [128, 256], "K": "8", "rounds": 3, "seconds": 0.25}


# ---------------------------------------------------------------------------------------------- the problem


class Problem:
    """K Trainers of one shape (seed.run 0..K-1) in a PackedTrainer, and the first alone: the pack's weights,
    training sets, lambda and eta, stacked (copies: the pack's own tensors change as it trains)."""

    def __init__(self, m: int, L: int, K: int, device: str) -> None:
        self.cfgs = [config(m, L, device, seed) for seed in range(K)]
        self.pack, self.plain = PackedTrainer(self.cfgs), Trainer(self.cfgs[0])
        self.trainers = self.pack.trainers
        t0 = self.trainers[0]
        self.m, self.L, self.K, self.device, self.sup = m, L, K, t0.device, t0.supervised
        self.loss = t0.cfg.train.loss
        self.W, self.A, self.B = (torch.stack([getattr(t.net, k) for t in self.trainers]) for k in "WAB")
        self.X = torch.stack([t.train_set.x for t in self.trainers])  # (K, N, L, d_x + 1)
        self.Y = torch.stack([t.train_set.y for t in self.trainers])  # (K, N, L, 1)
        self.lam = torch.tensor([t.sched.lam for t in self.trainers], device=self.device)
        self.eta = torch.tensor([t.sched.eta for t in self.trainers], device=self.device)
        self.N = self.X.shape[1]
        self.gen = torch.Generator().manual_seed(1)

    def order(self, n: int, models: int) -> torch.Tensor:
        """Rows of the next n steps, one per model: (n, models), on the device."""
        return torch.randint(self.N, (n, models), generator=self.gen).to(self.device)


def ours_grad(p: Problem, models: int) -> torch.Tensor:
    """The reference gradient: dLoss/dW' at W' = 0 on each model's first sample, from the trainer's own step
    (sgd_steps with eta = 1 from W' = 0 leaves W' = -grad): (models, m, m)."""
    net = Pack(p.W[:models], p.A[:models], p.B[:models], "relu")
    shift = torch.zeros_like(net.W)
    x, y = p.X[:models, :1].unsqueeze(0), p.Y[:models, :1].unsqueeze(0)  # (1 step, K, b = 1, L, .)
    sgd_steps(net, shift, x, y, p.lam[:models], torch.ones_like(p.lam[:models]), p.loss, p.sup)
    return -shift


# ---------------------------------------------------------------------------------------------- contenders


class Ours:
    """rnnsgd's plain trainer (one model) or its PackedTrainer (K models)."""

    def __init__(self, p: Problem, packed: bool) -> None:
        self.name, self.models = ("ours pack", p.K) if packed else ("ours", 1)
        self.trainer = p.pack if packed else p.plain
        self.p = p

    def step(self, n: int) -> None:
        self.trainer.sgd(n)

    def grad(self) -> torch.Tensor:
        return ours_grad(self.p, self.models)


class TorchRNN:
    """torch.nn.RNN + autograd, one model: weight_hh = W + W' via functional_call, torch.optim.SGD on W'."""

    def __init__(self, p: Problem, compiled: bool = False) -> None:
        self.name, self.models, self.p = ("compiled" if compiled else "nn.RNN"), 1, p
        rnn = torch.nn.RNN(p.A.shape[-1], p.m, nonlinearity="relu", bias=False, batch_first=True)
        self.rnn = rnn.to(p.device).requires_grad_(False)
        self.W, self.A, self.B, self.lam = p.W[0], p.A[0], p.B[0], p.lam[0].item()
        self.shift = torch.zeros_like(self.W, requires_grad=True)
        self.opt = torch.optim.SGD([self.shift], lr=p.eta[0].item())
        self.loss = self._loss
        if compiled:
            torch._dynamo.config.allow_rnn = True  # else dynamo leaves nn.RNN out of the graph
            self.loss = torch.compile(self._loss)

    def _loss(self, shift: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        weights = {"weight_ih_l0": self.A, "weight_hh_l0": self.W + shift}
        h, _ = functional_call(self.rnn, weights, (x,))  # (1, L, m)
        z = self.lam * (h[:, self.p.sup] @ self.B.T)
        return (z - y[:, self.p.sup]).abs().sum()  # |.|_2 of a scalar output

    def step(self, n: int) -> None:
        X, Y = self.p.X[0], self.p.Y[0]
        for i in self.p.order(n, 1)[:, 0].tolist():
            loss = self.loss(self.shift, X[i : i + 1], Y[i : i + 1])
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()

    def grad(self) -> torch.Tensor:
        shift = torch.zeros_like(self.W, requires_grad=True)
        self.loss(shift, self.p.X[0, :1], self.p.Y[0, :1]).backward()
        return shift.grad[None]


class Elman(torch.nn.Module):
    """The model as a researcher writes it for torch.func: a trainable W', buffers W, A, B; one sample."""

    def __init__(self, W: torch.Tensor, A: torch.Tensor, B: torch.Tensor) -> None:
        super().__init__()
        self.shift = torch.nn.Parameter(torch.zeros_like(W))
        self.register_buffer("W", W)
        self.register_buffer("A", A)
        self.register_buffer("B", B)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (L, d_x + 1) -> y (L, d_out)
        W = self.W + self.shift
        h, hs = x.new_zeros(W.shape[0]), []
        for l in range(x.shape[0]):
            h = torch.relu(W @ h + self.A @ x[l])
            hs.append(h)
        return torch.stack(hs) @ self.B.T


class FuncVmap:
    """PyTorch's model-ensembling recipe: stack_module_state over K Elman modules, vmap(grad(loss))."""

    def __init__(self, p: Problem) -> None:
        self.name, self.models, self.p = "func.vmap", p.K, p
        nets = [Elman(p.W[k], p.A[k], p.B[k]) for k in range(p.K)]
        self.params, self.buffers = stack_module_state(nets)
        self.base = copy.deepcopy(nets[0]).to("meta")
        self.grad_fn = vmap(grad(self._loss))
        self.rows = torch.arange(p.K, device=p.device)

    def _loss(self, params, buffers, x, y, lam) -> torch.Tensor:
        z = lam * functional_call(self.base, (params, buffers), (x,))
        return (z[self.p.sup] - y[self.p.sup]).abs().sum()

    def step(self, n: int) -> None:
        p, shift = self.p, self.params["shift"]
        order = p.order(n, p.K)
        for t in range(n):
            x, y = p.X[self.rows, order[t]], p.Y[self.rows, order[t]]  # (K, L, .)
            g = self.grad_fn(self.params, self.buffers, x, y, p.lam)
            with torch.no_grad():
                shift.sub_(p.eta.view(-1, 1, 1) * g["shift"])

    def grad(self) -> torch.Tensor:
        params = {"shift": torch.zeros_like(self.params["shift"])}
        return self.grad_fn(params, self.buffers, self.p.X[:, 0], self.p.Y[:, 0], self.p.lam)["shift"]


class Jax:
    """jit(vmap(grad(loss))) over K models, lax.scan over the positions, `chunk` steps per jitted call."""

    def __init__(self, p: Problem, jax, chunk: int) -> None:
        import numpy as np

        self.name, self.models, self.p, self.jax, self.np, self.unit = "jax", p.K, p, jax, np, chunk
        tensors = (p.W, p.A, p.B, p.X, p.Y, p.lam, p.eta)
        self.args = tuple(jax.device_put(t.cpu().numpy()) for t in tensors)
        self.ws = jax.numpy.zeros_like(self.args[0])
        self.run = jax.jit(self._steps, donate_argnums=0)
        self.grad_fn = jax.jit(jax.vmap(jax.grad(self._loss)))
        self.rng = np.random.default_rng(1)

    def _loss(self, ws, W, A, B, x, y, lam):  # one model, one sample: x (L, d_x + 1), y (L, 1)
        jax, Wt = self.jax, W + ws

        def cell(h, x_l):
            h = jax.nn.relu(Wt @ h + A @ x_l)
            return h, h

        _, hs = jax.lax.scan(cell, jax.numpy.zeros(W.shape[0], W.dtype), x)
        z = lam * (hs[self.p.sup] @ B.T)
        return jax.numpy.abs(z - y[self.p.sup]).sum()

    def _steps(self, ws, W, A, B, X, Y, lam, eta, idx):  # idx (chunk, K): the rows of each step
        g, rows = self.jax.vmap(self.jax.grad(self._loss)), self.jax.numpy.arange(X.shape[0])

        def one(ws, i):
            return ws - eta[:, None, None] * g(ws, W, A, B, X[rows, i], Y[rows, i], lam), None

        return self.jax.lax.scan(one, ws, idx)[0]

    def step(self, n: int) -> None:
        for _ in range(n // self.unit):
            idx = self.rng.integers(self.p.N, size=(self.unit, self.p.K))
            self.ws = self.run(self.ws, *self.args, idx)
        self.ws.block_until_ready()

    def grad(self) -> torch.Tensor:
        W, A, B, X, Y, lam, _ = self.args
        g = self.grad_fn(self.jax.numpy.zeros_like(W), W, A, B, X[:, 0], Y[:, 0], lam)
        return torch.from_numpy(self.np.asarray(g).copy()).to(self.p.device)


# ---------------------------------------------------------------------------------------------- measuring


def read_rate(nbytes: int, device: torch.device, tries: int = 5, seconds: float = 0.1) -> float:
    """Memory-read rate (bytes/s): best of `tries` timed loops of torch.sum over an nbytes float32 buffer."""
    buf = torch.ones(max(1, nbytes // 4), device=device)
    sync(device)
    t0 = time.perf_counter()
    torch.sum(buf)
    sync(device)
    reps = max(1, int(seconds / max(time.perf_counter() - t0, 1e-7)))
    best = 0.0
    for _ in range(tries):
        t0 = time.perf_counter()
        for _ in range(reps):
            torch.sum(buf)
        sync(device)
        best = max(best, reps * buf.numel() * 4 / (time.perf_counter() - t0))
    return best


def block_size(c, seconds: float, device: torch.device) -> int:
    """Steps per timed block of about `seconds` (a multiple of the contender's unit), after a warm-up."""
    unit = getattr(c, "unit", 1)
    c.step(unit)  # warm-up: first calls, compilation
    r = rate(c.step, unit, device)[0]
    r = rate(c.step, max(unit, int(0.1 * seconds * r) // unit * unit), device)[0]
    return max(1, int(seconds * r / unit)) * unit


def grad_dev(c, ref: torch.Tensor) -> float:
    """max over c's models of max |g - g_ours| / max |g_ours| (gradients at W' = 0, first sample)."""
    g, r = c.grad().detach().float(), ref[: c.models]
    return ((g - r).abs().amax(dim=(1, 2)) / r.abs().amax(dim=(1, 2))).max().item()


def interleaved(contenders: list, args: argparse.Namespace, device: torch.device) -> dict:
    """Per-model steps/s of each contender in each round, and its CPU time over wall time."""
    blocks = {c.name: block_size(c, args.seconds, device) for c in contenders}
    out = {c.name: {"rates": [], "cpu_wall": [], "block": blocks[c.name]} for c in contenders}
    for _ in range(args.rounds):
        for c in contenders:
            wall, cpu = rate(c.step, blocks[c.name], device)
            out[c.name]["rates"].append(c.models * wall)
            out[c.name]["cpu_wall"].append(wall / cpu)
    return out


def contenders_for(p: Problem, args: argparse.Namespace, jax) -> list:
    found = [Ours(p, packed=False), Ours(p, packed=True), TorchRNN(p)]
    if args.compile:
        found.append(TorchRNN(p, compiled=True))
    found.append(FuncVmap(p))
    if jax is not None:
        found.append(Jax(p, jax, args.jax_chunk))
    return found


def bandwidth(m: int, L: int, K: int, device: torch.device) -> dict[str, float]:
    """Read rates over the pack's W and over one model's W, and the limit: model-steps/s at the faster one
    (a model's W may stay in a CPU's cache between steps) streaming W 2L + 5 times a step."""
    reads = {n: read_rate(n * m * m * 4, device) for n in (K, 1)}
    limit = max(reads.values()) / ((2 * L + 5) * 4 * m * m)
    print(
        f"\nm = {m}, L = {L}, K = {K}: read {reads[K] / 1e9:.1f} GB/s over the pack's W "
        f"({K * m * m * 4 / 2**20:.1f} MiB), {reads[1] / 1e9:.1f} GB/s over one W; limit {limit:,.0f} "
        "model-steps/s",
        flush=True,
    )
    return {"limit": limit, "read_pack": reads[K], "read_one": reads[1]}


def bench_size(m: int, L: int, K: int, args: argparse.Namespace, jax) -> list[dict]:
    """Every contender at one size: prints the header line and the table's rows; the rows as dicts."""
    device = torch.device(args.device)
    p = Problem(m, L, K, args.device)
    contenders = contenders_for(p, args, jax)
    ref = ours_grad(p, K)
    devs = {c.name: (None if c.name.startswith("ours") else grad_dev(c, ref)) for c in contenders}
    bw = bandwidth(m, L, K, device)
    runs = interleaved(contenders, args, device)
    med = {name: statistics.median(r["rates"]) for name, r in runs.items()}
    rows = []
    for c in contenders:
        r = runs[c.name]
        stats = {"steps_per_s": med[c.name], "min": min(r["rates"]), "max": max(r["rates"])}
        rows.append(
            {"m": m, "L": L, "K": K, "contender": c.name, "models": c.models, **stats, **bw}
            | {"cpu_wall": statistics.median(r["cpu_wall"]), "grad_dev": devs[c.name], "block": r["block"]}
        )
        print(format_row(rows[-1], med["ours"], med["ours pack"]), flush=True)
    del contenders, p
    release(device, jax)
    return rows


def release(device: torch.device, jax) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if jax is not None:
        jax.clear_caches()


# ---------------------------------------------------------------------------------------------- printing

HEAD = (
    f"{'contender':>10} {'models':>6} {'steps/s':>10} {'range (min-max)':>19} {'x ours':>7} {'x pack':>7} "
    f"{'%lim':>6} {'cpu/wall':>8} {'grad dev':>9}"
)


def format_row(r: dict, ours: float, pack: float) -> str:
    dev = "ref" if r["grad_dev"] is None else f"{r['grad_dev']:.1e}"
    span = f"{r['min']:,.0f}-{r['max']:,.0f}"
    return (
        f"{r['contender']:>10} {r['models']:>6} {r['steps_per_s']:>10,.1f} {span:>19} "
        f"{r['steps_per_s'] / ours:>7.2f} {r['steps_per_s'] / pack:>7.2f} "
        f"{100 * r['steps_per_s'] / r['limit']:>5.1f}% {r['cpu_wall']:>8.2f} {dev:>9}"
    )


def machine_line(args: argparse.Namespace, jax) -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or cpu
    dev = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    jx = f"jax {jax.__version__} ({jax.default_backend()})" if jax is not None else "jax: not used"
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    return (
        f"machine: {cpu}, {os.cpu_count()} cores; device {dev}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s); {jx}; python {platform.python_version()}; load average {load}"
    )


LEGEND = """
steps/s: per-model one-sample SGD steps per second (a K-model contender: K x its steps/s), median of the
interleaved rounds, and the range over them; x ours, x pack: ratios of medians to `ours` and `ours pack`;
%lim: share of the bandwidth limit above; cpu/wall: this process's CPU time over wall time (median); grad dev:
max |g - g_ours| / max |g_ours| at W' = 0 on the first sample of each model ('ref': ours, the reference)."""


# ---------------------------------------------------------------------------------------------- main


def pin(args: argparse.Namespace) -> str | None:
    """On a CPU with --threads N, this process and every thread it starts (XLA's too) on the first N of its
    CPUs, so that every contender has the N cores and no more: XLA's CPU runtime runs work on threads of its
    own whatever its one-thread flags say (benchmarks/README.md)."""
    if args.device != "cpu" or not args.threads or not hasattr(os, "sched_setaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))[: args.threads]
    os.sched_setaffinity(0, cpus)
    return ",".join(map(str, cpus))


def load_jax(args: argparse.Namespace):
    """jax with the thread and platform settings made before its import, or None (with a printed note)."""
    if args.no_jax:
        return None
    if args.device == "cpu":
        os.environ["JAX_PLATFORMS"] = "cpu"
        if args.threads == 1:
            flags = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
            os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip()
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # leave the GPU's memory to torch too
    try:
        import jax
    except ImportError:
        print("note: jax is not importable, its contender is skipped (pip install -e '.[bench]')")
        return None
    if args.device == "cuda" and jax.default_backend() != "gpu":
        print(f"note: jax {jax.__version__} has no GPU backend here, its contender is skipped")
        return None
    jax.config.update("jax_default_matmul_precision", "highest")  # float32 products, as torch's (TF32 off)
    return jax


def pick_K(K: str, m: int, L: int, device: str) -> int:
    """--K as given, or 'auto': the largest pack rnnsgd.memory allows in a third of the device's budget (the
    other K-model contenders hold copies of the weights and gradients too), at most 64."""
    if K != "auto":
        return int(K)
    budget = memory_budget(torch.device(device), MEMORY_FRACTION) // 3
    return max(1, min(64, max_pack(config(m, L, device), budget)))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where every contender runs")
    ap.add_argument(
        "--m", type=int, nargs="+", default=[128, 512, 1024], help="widths (default 128 512 1024)"
    )
    ap.add_argument("--L", type=int, help="sequence length for every m (default: 8 at m <= 128, else 16)")
    ap.add_argument("--K", default="16", help="models of the K-model contenders, or 'auto' (memory model)")
    ap.add_argument(
        "--rounds", type=int, default=5, help="interleaved rounds: each runs every contender once"
    )
    ap.add_argument("--seconds", type=float, default=1.0, help="target time of one contender's block")
    ap.add_argument("--threads", type=int, default=1, help="torch (and XLA CPU) threads; 0: the defaults")
    ap.add_argument("--jax-chunk", type=int, default=16, help="SGD steps per jitted JAX call (lax.scan)")
    ap.add_argument("--compile", action="store_true", help="add torch.compile of the nn.RNN loss (slow)")
    ap.add_argument("--no-jax", action="store_true", help="leave out the JAX contender")
    ap.add_argument("--json", metavar="FILE", help="also write the machine line and the rows as JSON")
    ap.add_argument("--quick", action="store_true", help="a check in under a minute: m 128 256, K 8, short")
    args = ap.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            f"bench_peers: --device cuda, but torch {torch.__version__} sees no CUDA device", file=sys.stderr
        )
        return 2
    pinned = pin(args)
    jax = load_jax(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*RNN module weights are not part of single contiguous.*")
    machine = machine_line(args, jax) + (f"; pinned to CPU {pinned}" if pinned else "")
    print(f"{machine}\nmedians of {args.rounds} interleaved rounds of ~{args.seconds:g} s per contender")
    print(HEAD)
    rows = []
    for m in args.m:
        L = args.L or (8 if m <= 128 else 16)
        rows += bench_size(m, L, pick_K(args.K, m, L, args.device), args, jax)
        if args.json:  # after each size: a run cut short by a time limit still leaves its rows
            with open(args.json, "w") as f:
                json.dump({"machine": machine, "device": args.device, "rows": rows}, f, indent=1)
    print(LEGEND)
    return 0


if __name__ == "__main__":
    sys.exit(main())
