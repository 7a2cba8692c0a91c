"""The quantities the proof of Theorem 1 relies on, measured at an evaluation (arXiv 1902.01028, §5-7).

- Lemma 7.1: the shift stays small, sqrt(m) ||W'||_F bounded independently of m  -> w/move_fro, w/move_op
- Lemma 6.1 / App. F: few ReLU sign flips (a fraction ~ m^{-1/3})                  -> act/flip_frac
- the network is close to its linearization in W' (~ m^{-1/6})                    -> lin/rel_err
- the hidden states barely move                                                  -> h/drift
- nothing needs spectral radius < 1                                             -> w/spectral_radius, _norm

And, for task `lags` only, what claim C6 asks (one unit learns a different function for each token pair):
the recovery R^2 of each lag's pairs, `lag_recovery`.
"""

from __future__ import annotations

import math

import torch

from rnnsgd.concept import Teacher
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
    torch.func.jvp: that imports torch._dynamo, which every trial process would pay for at its start, and it
    costs more per call.
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


def diagnostics(net: RNN, W_shift: torch.Tensor, x_probe: torch.Tensor) -> dict[str, float]:
    """Every diagnostic metric at the current shift: the keys of rnnsgd.metrics.MECHANISM, in its order (their
    meaning: docs/metrics.md)."""
    return {
        **weight_metrics(net, W_shift),
        **activation_metrics(net, W_shift, x_probe),
        "lin/rel_err": linearization_error(net, W_shift, x_probe),
    }


def lag_recovery(
    net: RNN, W_shift: torch.Tensor, lam: float, teacher: Teacher, x: torch.Tensor, eps_x: float
) -> dict[int, float]:
    """Recovery R^2 of each lag g's token pairs (i -> i + g), on inputs x (n, L, d_x + 1) of task `lags`.

    Token i is resampled (taken from another input of the batch) and the change it makes at output j = i + g
    is compared between the network (lambda F_j) and the teacher (F*_j): in task `lags` only lag g's term of
    F*_j reads token i, so the pair's own function is isolated.
    R^2 = 1 - sum (dF - dF*)^2 / sum (dF* - mean)^2 over inputs and pairs: 1 when the pair's function is
    recovered, 0 (or below) when it is not.
    """
    n, L, d_x = x.shape[0], x.shape[1], x.shape[2] - 1
    x_star = torch.zeros(n, L, d_x, dtype=torch.float64)
    x_star[:, 1 : L - 1] = x[:, 1 : L - 1, :d_x].double().cpu() / eps_x  # undo RNN.normalize
    other = torch.roll(torch.arange(n), 1)
    out0, target0 = lam * net.forward(x, W_shift).double().cpu(), teacher.labels(x_star)
    pairs: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {g: [] for g in teacher.lags}
    for i in range(1, L - 1):
        xi, xsi = x.clone(), x_star.clone()
        xi[:, i], xsi[:, i] = x[other.to(x.device), i], x_star[other, i]
        d_out = lam * net.forward(xi, W_shift).double().cpu() - out0
        d_target = teacher.labels(xsi) - target0
        for g in teacher.lags:
            if i + g < L and teacher.mask[i + g]:
                pairs[g].append((d_out[:, i + g], d_target[:, i + g]))
    r2 = {}
    for g, ps in pairs.items():
        a, b = torch.cat([p[0] for p in ps]), torch.cat([p[1] for p in ps])
        spread = ((b - b.mean(dim=0)) ** 2).sum().item()
        r2[g] = 1 - ((a - b) ** 2).sum().item() / spread if spread > 0 else math.nan
    return r2
