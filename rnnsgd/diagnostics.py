"""The quantities the proof of Theorem 1 relies on, measured at an evaluation (spec/PAPER.md §5, DESIGN.md).

- Lemma 7.1: the shift stays small, sqrt(m) ||W'||_F bounded independently of m  -> w/move_fro, w/move_op
- Lemma 6.1 / App. F: few ReLU sign flips (a fraction ~ m^{-1/3})                  -> act/flip_frac
- the network is close to its linearization in W' (~ m^{-1/6})                    -> lin/rel_err
- the hidden states barely move                                                  -> h/drift
- nothing needs spectral radius < 1                                             -> w/spectral_radius, _norm
"""

from __future__ import annotations

import math

import torch

from rnnsgd.model import RNN


def weight_metrics(net: RNN, W_shift: torch.Tensor) -> dict[str, float]:
    """Movement of the shift and the spectrum of W + W'."""
    m = net.m
    W_total = (net.W + W_shift).double()
    return {
        "w/move_fro": math.sqrt(m) * W_shift.norm().item(),
        "w/move_op": math.sqrt(m) * torch.linalg.matrix_norm(W_shift.double(), ord=2).item(),
        "w/rel_change": (W_shift.norm() / net.W.norm()).item(),
        "w/spectral_radius": torch.linalg.eigvals(W_total).abs().max().item(),
        "w/spectral_norm": torch.linalg.matrix_norm(W_total, ord=2).item(),
    }


def activation_metrics(net: RNN, W_shift: torch.Tensor, x: torch.Tensor) -> dict[str, float]:
    """Sign flips of the pre-activations and drift of h, on inputs x (n, L, d_x + 1)."""
    h0, u0 = net.states(x)
    h1, u1 = net.states(x, W_shift)
    flips = ((u0 > 0) != (u1 > 0)).double().mean().item() if net.activation == "relu" else 0.0
    # max over positions of the mean over inputs of ||h_l(W + W') - h_l(W)||
    drift = (h1 - h0).norm(dim=-1).mean(dim=0).max().item()
    return {"act/flip_frac": flips, "h/drift": drift}


def linearization_error(net: RNN, W_shift: torch.Tensor, x: torch.Tensor) -> float:
    """||F(W + W') - F(W) - JVP_W(W')|| / ||JVP_W(W')||, in float64 on a probe batch x.

    The JVP is the tangent recurrence, written out: dh_0 = 0, dh_l = sigma'(u_l) (W dh_{l-1} + W' h_{l-1})
    at W' = 0, dF_l = B dh_l (sigma' = 1[u > 0] for ReLU, as autograd has it). By hand rather than
    torch.func.jvp: that imports torch._dynamo, 1.5 s of every trial process's start, and costs 5x more.
    """
    net64 = net.to(dtype=torch.float64)
    x64, shift64 = x.double(), W_shift.double()
    h0, u0 = net64.states(x64)  # (n, L, m)
    h1, _ = net64.states(x64, shift64)
    dh = torch.empty_like(h0)
    dh[:, 0] = 0.0
    for l in range(1, h0.shape[1]):
        torch.mm(dh[:, l - 1], net64.W.T, out=dh[:, l])
        dh[:, l].addmm_(h0[:, l - 1], shift64.T)
        if net.activation == "relu":
            dh[:, l].mul_(u0[:, l] > 0)
    lin = dh @ net64.B.T
    denom = lin.norm().item()
    return ((h1 - h0) @ net64.B.T - lin).norm().item() / denom if denom > 0 else 0.0


KEYS = ("w/move_fro", "w/move_op", "w/rel_change", "w/spectral_radius", "w/spectral_norm", "act/flip_frac",
        "h/drift", "lin/rel_err")  # fmt: skip


def diagnostics(net: RNN, W_shift: torch.Tensor, x_probe: torch.Tensor) -> dict[str, float]:
    """Every diagnostic metric of DESIGN.md's table at the current shift (the keys of KEYS)."""
    return {
        **weight_metrics(net, W_shift),
        **activation_metrics(net, W_shift, x_probe),
        "lin/rel_err": linearization_error(net, W_shift, x_probe),
    }
