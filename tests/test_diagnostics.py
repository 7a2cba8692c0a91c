"""rnnsgd.diagnostics: the proof's quantities (the paper's Lemmas 6.1, 7.1) against direct computations."""

from __future__ import annotations

import math

import pytest
import torch

from rnnsgd import concept, diagnostics
from rnnsgd.metrics import MECHANISM
from rnnsgd.model import RNN

pytestmark = pytest.mark.usefixtures("one_thread")

M = 64


@pytest.fixture
def setup():
    net = RNN(M, 4, 2, torch.Generator().manual_seed(0))
    x = RNN.normalize(concept.sample_tokens(16, 6, 4, torch.Generator().manual_seed(1)), 0.5).float()
    D = torch.randn(M, M, generator=torch.Generator().manual_seed(2)) / math.sqrt(M)  # ||D||_2 ~ 2
    return net, x, D


def test_linearization_error_vanishes_linearly(setup):
    """W' = t D: F(W + tD) - F(W) - t JVP(D) = O(t^2) while t JVP(D) = Theta(t), so the relative error err(t)
    is proportional to t as t -> 0: err(t) / t constant. With ReLU that holds once t is small enough that no
    pre-activation changes sign (here t <= 1e-4; at larger t a few flips give an O(1/#units) error)."""
    net, x, D = setup
    ts = [10.0**-k for k in range(1, 7)]
    errs = [diagnostics.linearization_error(net, t * D, x) for t in ts]
    assert all(a > b for a, b in zip(errs, errs[1:], strict=False)), errs
    assert errs[-1] < 1e-5
    ratios = [e / t for e, t in zip(errs[3:], ts[3:], strict=True)]
    assert max(ratios) / min(ratios) < 1.1, ratios
    assert diagnostics.linearization_error(net, torch.zeros(M, M), x) == 0.0
    # a linear RNN is smooth in W': the ratio is constant from t = 0.1 on
    linear = RNN(M, 4, 2, torch.Generator().manual_seed(0), activation="linear")
    ratios = [diagnostics.linearization_error(linear, t * D, x) / t for t in ts[:4]]
    assert max(ratios) / min(ratios) < 1.1, ratios


@pytest.mark.parametrize("activation", ["relu", "linear"])
def test_linearization_error_matches_autograd_jvp(setup, activation):
    """The written-out tangent recurrence against torch.func.jvp of a plain autograd forward, in float64."""
    _, x, D = setup
    net = RNN(M, 4, 2, torch.Generator().manual_seed(0), activation=activation)
    W, A, B, x64 = net.W.double(), net.A.double(), net.B.double(), x.double()
    sigma = torch.relu if activation == "relu" else (lambda u: u)

    def forward(S):
        h, outs = torch.zeros(x.shape[0], M, dtype=torch.float64), []
        for l in range(x.shape[1]):
            h = sigma(x64[:, l] @ A.T + h @ (W + S).T)
            outs.append(h @ B.T)
        return torch.stack(outs, dim=1)

    for t in (1e-3, 0.3):
        S = (t * D).double()
        F0, lin = torch.func.jvp(forward, (torch.zeros_like(S),), (S,))
        want = ((forward(S) - F0 - lin).norm() / lin.norm()).item()
        assert diagnostics.linearization_error(net, t * D, x) == pytest.approx(want, rel=1e-9)


def test_weight_metrics(setup):
    net, _, D = setup
    S = 0.05 * D
    got = diagnostics.weight_metrics(net, S)
    S64, Wt = S.double(), (net.W + S).double()
    assert got["w/move_fro"] == pytest.approx(math.sqrt(M) * math.sqrt((S64**2).sum().item()), rel=1e-5)
    assert got["w/move_op"] == pytest.approx(math.sqrt(M) * torch.linalg.svdvals(S64)[0].item(), rel=1e-6)
    assert got["w/rel_change"] == pytest.approx((S64.norm() / net.W.double().norm()).item(), rel=1e-5)
    assert got["w/spectral_radius"] == pytest.approx(torch.linalg.eigvals(Wt).abs().max().item(), rel=1e-9)
    assert got["w/spectral_norm"] == pytest.approx(torch.linalg.svdvals(Wt)[0].item(), rel=1e-9)


def test_flips_and_drift(setup):
    net, x, D = setup
    zero = diagnostics.activation_metrics(net, torch.zeros(M, M), x)
    assert zero == {"act/flip_frac": 0.0, "h/drift": 0.0}
    S = 0.3 * D
    got = diagnostics.activation_metrics(net, S, x)
    # directly: pre-activation signs and hidden states, one position at a time
    h0 = h1 = torch.zeros(x.shape[0], M)
    flips, drift = 0, []
    for l in range(x.shape[1]):
        u0, u1 = h0 @ net.W.T + x[:, l] @ net.A.T, h1 @ (net.W + S).T + x[:, l] @ net.A.T
        h0, h1 = torch.relu(u0), torch.relu(u1)
        flips += ((u0 > 0) != (u1 > 0)).sum().item()
        drift.append((h1 - h0).norm(dim=-1).mean().item())
    assert 0 < got["act/flip_frac"] == pytest.approx(flips / (x.shape[0] * x.shape[1] * M))
    assert got["h/drift"] == pytest.approx(max(drift), rel=1e-4)
    linear = RNN(M, 4, 2, torch.Generator().manual_seed(0), activation="linear")
    assert diagnostics.activation_metrics(linear, S, x)["act/flip_frac"] == 0.0


def test_diagnostics_has_every_key(setup):
    net, x, D = setup
    got = diagnostics.diagnostics(net, 0.01 * D, x)
    assert list(got) == list(MECHANISM)
    assert all(math.isfinite(v) for v in got.values())
