"""rnnsgd.model: the Elman ReLU RNN against torch.nn.RNN, the paper's init facts, and the hand-written BPTT
against autograd and finite differences (arXiv 1902.01028, §3)."""

from __future__ import annotations

import math

import pytest
import torch

from rnnsgd import concept
from rnnsgd.config import LOSSES
from rnnsgd.model import RNN, Pack

pytestmark = pytest.mark.usefixtures("one_thread")


def tokens(n: int, L: int, d_x: int, seed: int = 1) -> torch.Tensor:
    return concept.sample_tokens(n, L, d_x, torch.Generator().manual_seed(seed))


def reference_forward(W: torch.Tensor, A: torch.Tensor, B: torch.Tensor, x: torch.Tensor, activation: str):
    """h_l = sigma(W h_{l-1} + A x_l), F_l = B h_l written out plainly, for autograd: (n, L, d), (n, L, m)."""
    sigma = torch.relu if activation == "relu" else (lambda v: v)
    h = x.new_zeros(x.shape[0], W.shape[0])
    hs = []
    for l in range(x.shape[1]):
        h = sigma(h @ W.T + x[:, l] @ A.T)
        hs.append(h)
    H = torch.stack(hs, dim=1)
    return H @ B.T, H


# ------------------------------------------------------------------------------------------ forward


def test_normalize_fixes_first_and_last_token():
    x_star = tokens(3, 6, 4)
    x = RNN.normalize(x_star, 0.3)
    assert x.shape == (3, 6, 5)
    assert torch.equal(
        x[:, 0], torch.tensor([0.0, 0, 0, 0, 1], dtype=torch.float64).expand(3, 5)
    )  # x_1 = (0, 1)
    assert torch.equal(
        x[:, -1], torch.tensor([0.0, 0, 0, 0, 0.3], dtype=torch.float64).expand(3, 5)
    )  # x_L = (0, eps_x)
    assert torch.allclose(x[:, 1:-1, :4], 0.3 * x_star[:, 1:-1])
    assert torch.equal(x[:, 1:-1, 4], torch.zeros(3, 4, dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hidden_equals_torch_rnn(device, dtype):
    m, d_x, L, n = 64, 4, 7, 5
    net = RNN(m, d_x, 2, torch.Generator().manual_seed(0), dtype=dtype, device=device)
    x = RNN.normalize(tokens(n, L, d_x), 0.5).to(dtype=dtype, device=device)
    shift = (
        0.1
        * torch.randn(m, m, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        / math.sqrt(m)
    )
    shift = shift.to(dtype=dtype, device=device)
    rnn = torch.nn.RNN(d_x + 1, m, nonlinearity="relu", bias=False, batch_first=True).to(
        dtype=dtype, device=device
    )
    tol = {"rtol": 1e-12, "atol": 1e-13}
    if dtype == torch.float32:  # cuDNN's RNN may use TF32 on a GPU
        tol = {"rtol": 1e-5, "atol": 1e-6} if device == "cpu" else {"rtol": 2e-3, "atol": 1e-3}
    for S in (None, shift):
        with torch.no_grad():
            rnn.weight_hh_l0.copy_(net.W if S is None else net.W + S)
            rnn.weight_ih_l0.copy_(net.A)
            expected, _ = rnn(x)  # (n, L, m)
        h = net.hidden(x, S)
        assert h.shape == (n, L, m) and h.dtype == dtype
        torch.testing.assert_close(h, expected, **tol)
        torch.testing.assert_close(net.forward(x, S), expected @ net.B.T, **tol)
        h2, u2 = net.states(x, W_total=net.W if S is None else net.W + S)
        torch.testing.assert_close(h2, expected, **tol)
        assert torch.equal(h2, torch.relu(u2))


def test_linear_activation_is_the_identity():
    m, d_x, L = 16, 3, 5
    net = RNN(m, d_x, 1, torch.Generator().manual_seed(0), activation="linear", dtype=torch.float64)
    x = RNN.normalize(tokens(4, L, d_x), 0.5)
    h, u = net.states(x)
    F, H = reference_forward(net.W, net.A, net.B, x, "linear")
    torch.testing.assert_close(h, H)
    assert torch.equal(h, u)
    with pytest.raises(ValueError, match="activation"):
        RNN(m, d_x, 1, torch.Generator().manual_seed(0), activation="tanh")


# ------------------------------------------------------------------------------------------ init


def test_init_spectrum_and_variances(device):
    """Spectral radius of W -> sqrt 2, spectral norm -> 2 sqrt 2 (the paper's init), at m = 1024; entries of
    W, A ~ N(0, 2/m), of B ~ N(0, 1/d); the same init on every device."""
    m, d = 1024, 2
    net = RNN(m, 4, d, torch.Generator().manual_seed(0), device=device)
    W = net.W.double().cpu()
    radius = torch.linalg.eigvals(W).abs().max().item()
    norm = torch.linalg.matrix_norm(W, ord=2).item()
    assert abs(radius - math.sqrt(2)) < 0.06, radius
    assert abs(norm - 2 * math.sqrt(2)) < 0.08, norm
    assert abs(W.var().item() * m / 2 - 1) < 0.01
    assert abs(net.A.double().var().item() * m / 2 - 1) < 0.1
    assert abs(net.B.double().var().item() * d - 1) < 0.15
    cpu = RNN(m, 4, d, torch.Generator().manual_seed(0))
    for k in ("W", "A", "B"):
        assert torch.equal(getattr(net, k).cpu(), getattr(cpu, k))
    other = RNN(m, 4, d, torch.Generator().manual_seed(1))
    assert not torch.equal(other.W, cpu.W)


def test_hidden_norm_stays_near_one(device):
    """||h_l|| close to 1 at every position when eps_x is small (Lemma B.1 states [0.9, 2] for m >= poly(L)).

    At m = 1024 one init's norms wander (a random walk of ~3.5% per position: at L = 16 single inits reach
    0.35..1.7), so: each init within [0.6, 1.5] up to L = 8, and the mean over inits within 0.1 of 1 up to
    L = 16 (He init preserves the norm in expectation)."""
    m, L, inits = 1024, 16, 8
    x = RNN.normalize(tokens(4, L, 4), 0.01).float().to(device)
    norms = torch.stack(
        [
            RNN(m, 4, 1, torch.Generator().manual_seed(s), device=device).hidden(x).norm(dim=-1)
            for s in range(inits)
        ]
    )  # (inits, n, L)
    short = norms[:, :, :8]
    assert short.min().item() > 0.6 and short.max().item() < 1.5, (short.min(), short.max())
    mean = norms.mean(dim=(0, 1))  # (L,)
    assert (mean - 1).abs().max().item() < 0.1, mean


# ------------------------------------------------------------------------------------------ backward


def _tiny(activation: str, device: str = "cpu", d_out: int = 2, m: int = 8, L: int = 5, n: int = 3):
    gen = torch.Generator().manual_seed(3)
    net = RNN(m, 3, d_out, gen, activation=activation, dtype=torch.float64, device=device)
    x = RNN.normalize(tokens(n, L, 3), 0.7).to(device)
    S = (0.3 * torch.randn(m, m, generator=gen, dtype=torch.float64) / math.sqrt(m)).to(device)
    return net, x, S


@pytest.mark.parametrize("activation", ["relu", "linear"])
@pytest.mark.parametrize("n", [1, 3])
def test_backward_matches_autograd_and_finite_differences(device, activation, n):
    net, x, S = _tiny(activation, device, n=n)
    dy = torch.randn(
        n, x.shape[1], net.d_out, generator=torch.Generator().manual_seed(4), dtype=torch.float64
    )
    dy = dy.to(device)

    def loss(shift: torch.Tensor) -> torch.Tensor:
        return (reference_forward(net.W + shift, net.A, net.B, x, activation)[0] * dy).sum()

    S_ad = S.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(loss(S_ad), S_ad)
    h, u = net.states(x, S)
    got = net.backward(h, u, dy, S)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    # same with W + W' summed by the caller, and fused into an update out += alpha * grad
    torch.testing.assert_close(net.backward(h, u, dy, W_total=net.W + S), expected, rtol=1e-10, atol=1e-12)
    acc = S.clone()
    assert net.backward(h, u, dy, W_total=net.W + S, out=acc, alpha=-0.5) is acc
    torch.testing.assert_close(acc, S - 0.5 * expected, rtol=1e-10, atol=1e-12)
    # central finite differences along random directions
    gen = torch.Generator().manual_seed(5)
    for _ in range(3):
        D = torch.randn(S.shape, generator=gen, dtype=torch.float64).to(device)
        e = 1e-6
        fd = (loss(S + e * D) - loss(S - e * D)) / (2 * e)
        assert abs(fd.item() - (got * D).sum().item()) < 1e-6 * max(1.0, abs(fd.item()))


@pytest.mark.parametrize("loss_name", LOSSES)
def test_objective_gradient_for_every_loss(loss_name):
    """grad_{W'} sum_j G(lambda F_j, y_j) through concept.loss_and_grad + RNN.backward equals autograd."""
    d = 3
    net, x, S = _tiny("relu", d_out=d, n=2)
    lam = 0.7
    y = torch.randn(2, x.shape[1], d, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    mask = torch.tensor([False, False, True, True, True])

    S_ad = S.clone().requires_grad_(True)
    F = reference_forward(net.W + S_ad, net.A, net.B, x, "relu")[0]
    obj = concept.risk(loss_name, lam * F, y, mask).sum()
    (expected,) = torch.autograd.grad(obj, S_ad)

    h, u = net.states(x, S)
    z = lam * (h @ net.B.T)
    G, dG = concept.loss_and_grad(loss_name, z[:, mask], y[:, mask])
    assert torch.allclose(G.sum(), obj.detach())
    dy = torch.zeros_like(z)
    dy[:, mask] = lam * dG
    torch.testing.assert_close(net.backward(h, u, dy, S), expected, rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------------------------------ packs


@pytest.mark.parametrize("activation", ["relu", "linear"])
def test_a_pack_computes_what_each_network_does(device, activation):
    """RNN.stack: states, forward and backward with a leading K axis equal those of each network alone
    (float64, to rounding); a step size per network scales its dy, and so its slice of the update."""
    nets, xs, shifts = [], [], []
    for k in range(3):
        gen = torch.Generator().manual_seed(10 + k)
        nets.append(RNN(8, 3, 2, gen, activation=activation, dtype=torch.float64, device=device))
        xs.append(RNN.normalize(tokens(2, 5, 3, seed=k), 0.7).to(device))
        shifts.append((0.3 * torch.randn(8, 8, generator=gen, dtype=torch.float64) / math.sqrt(8)).to(device))
    pack, x, S = RNN.stack(nets), torch.stack(xs), torch.stack(shifts)
    assert isinstance(pack, Pack) and pack.W.shape == (3, 8, 8) and not isinstance(nets[0], Pack)
    h, u = pack.states(x, S)
    dy = torch.randn(3, 2, 5, 2, generator=torch.Generator().manual_seed(7), dtype=torch.float64).to(device)
    alphas = [-0.5, -0.5, -0.25]
    acc = S.clone()
    pack.backward(h, u, torch.tensor(alphas, dtype=dy.dtype, device=device).view(3, 1, 1, 1) * dy, S, out=acc)
    F = pack.forward(x, S)
    for k, net in enumerate(nets):
        h_k, u_k = net.states(xs[k], shifts[k])
        torch.testing.assert_close(h[k], h_k, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(F[k], net.forward(xs[k], shifts[k]), rtol=1e-12, atol=1e-12)
        grad = net.backward(h_k, u_k, dy[k], shifts[k])
        torch.testing.assert_close(acc[k], shifts[k] + alphas[k] * grad, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="RNN.stack"):
        RNN.stack([nets[0], RNN(16, 3, 2, torch.Generator().manual_seed(0), dtype=torch.float64)])
    assert nets[0].as_pack().W.shape == (1, 8, 8) and nets[0].as_pack().W.data_ptr() == nets[0].W.data_ptr()
