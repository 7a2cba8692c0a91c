"""The concept class of eq. (3.1) (arXiv 1902.01028, §3): tokens, teachers, labels, losses and the best
constant predictor (the Phi families and their complexity: rnnsgd.phi).

    F*_{j,s}(x*) = sum_{i=2}^{j-1} sum_{r=1}^{p} b*_{i->j,r,s} Phi_{i->j,r,s}(<w*_{i->j,r,s}, x*_i>)

Positions are 1-based in the maths and 0-based in tensors: tensor index t is position t + 1, so tokens
live at t = 1..L-2 and labels at t = 2..L-1. This module knows nothing of configs: it takes plain values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from rnnsgd.phi import Phi

# ------------------------------------------------------------------------------------------ tokens, teachers


def sample_tokens(n: int, L: int, d_x: int, generator: torch.Generator) -> torch.Tensor:
    """Raw tokens (n, L, d_x) in float64 on the CPU: at t = 1..L-2, first d_x - 1 coordinates uniform on the
    sphere of radius sqrt(3)/2, last coordinate 1/2 (unit norm; the paper's §2); t = 0 and L-1 are zero."""
    g = torch.randn(n, L - 2, d_x - 1, generator=generator, dtype=torch.float64)
    x = torch.zeros(n, L, d_x, dtype=torch.float64)
    x[:, 1 : L - 1, : d_x - 1] = g / g.norm(dim=-1, keepdim=True) * (math.sqrt(3) / 2)
    x[:, 1 : L - 1, d_x - 1] = 0.5
    return x


def _unit_directions(*shape: int, d_x: int, generator: torch.Generator) -> torch.Tensor:
    """w* unit vectors with last coordinate 0 (no weight on the bias coordinate): (*shape, d_x)."""
    w = torch.zeros(*shape, d_x, dtype=torch.float64)
    g = torch.randn(*shape, d_x - 1, generator=generator, dtype=torch.float64)
    w[..., : d_x - 1] = g / g.norm(dim=-1, keepdim=True)
    return w


@dataclass
class Teacher:
    """One target function of the class, for one task.

    w:   (L, L, p, d, d_x)  w*_{i->j,r,s} at [t_j, t_i]  (for `lags`: (n_lags, 1, p, d, d_x))
    b:   (L, L, p, d)       b*; zero where i -> j is not a pair of the task
    phis: the Phi of each pair (one, or one per lag)
    mask: (L,) bool         positions whose label enters the objective
    scale: (L, d)           per-position output scale (1, or 1/std for unit variance)
    """

    task: str
    L: int
    w: torch.Tensor
    b: torch.Tensor
    phis: tuple[Phi, ...]
    lags: tuple[int, ...]
    mask: torch.Tensor
    scale: torch.Tensor

    def labels(self, x_star: torch.Tensor) -> torch.Tensor:
        """F*(x*): (n, L, d) in float64; zero at positions outside `mask`. Label at t uses tokens < t only."""
        n, L, _ = x_star.shape
        d = self.b.shape[-1]
        y = torch.zeros(n, L, d, dtype=torch.float64)
        for t in range(2, L):
            if not self.mask[t]:
                continue
            if self.task == "parity":
                # prod over i < j of sign(<w*, x*_i>): a degree-(j-2) parity, outside the class
                z = torch.einsum("nid,irsd->nirs", x_star[:, 1:t], self.w[t, 1:t])
                y[:, t] = torch.sign(z).flatten(1, 2).prod(dim=1)  # prod takes one dim: (n, i*r, s) -> (n, s)
            elif self.task == "lags":
                for k, lag in enumerate(self.lags):
                    if t - lag < 1:
                        continue
                    z = torch.einsum("nd,rsd->nrs", x_star[:, t - lag], self.w[k, 0])
                    y[:, t] += (self.b[k, 0] * self.phis[k % len(self.phis)](z)).sum(dim=1)
            else:
                z = torch.einsum("nid,irsd->nirs", x_star[:, 1:t], self.w[t, 1:t])
                y[:, t] = (self.b[t, 1:t] * self.phis[0](z)).sum(dim=(1, 2))
        return y * self.scale


def make_teacher(
    task: str,
    L: int,
    d_x: int,
    d: int,
    p: int,
    phis: tuple[Phi, ...],
    lags: tuple[int, ...],
    unit_var: bool,
    generator: torch.Generator,
) -> Teacher:
    """Draw w*, b* (and the unit-variance scale) from the teacher's own generator."""
    mask = torch.zeros(L, dtype=torch.bool)
    if task == "long_range":
        mask[L - 1] = True
    else:
        mask[2:] = True
    net = phis[0].net

    def signs(*shape: int) -> torch.Tensor:
        if net:  # Example 3.5: entries of A* in [-1, 1]
            return 2 * torch.rand(*shape, generator=generator, dtype=torch.float64) - 1
        return 2.0 * torch.randint(0, 2, shape, generator=generator).double() - 1

    if task == "lags":
        w = _unit_directions(len(lags), 1, p, d, d_x=d_x, generator=generator)
        b = signs(len(lags), 1, p, d)
    else:
        w = _unit_directions(L, L, p, d, d_x=d_x, generator=generator)
        b = signs(L, L, p, d)
        pair = torch.zeros(L, L, dtype=torch.bool)
        if task == "long_range":
            pair[L - 1, 1] = True  # y_L depends on x*_2 (tensor index 1) only
        else:
            pair[2:, 1:] = torch.ones(L - 2, L - 1, dtype=torch.bool).tril()  # token i before label j
        b = b * pair[:, :, None, None]
    teacher = Teacher(task, L, w, b, phis, lags, mask, torch.ones(L, d, dtype=torch.float64))
    if unit_var:
        std = teacher.labels(sample_tokens(4096, L, d_x, generator)).std(dim=0)
        teacher.scale = torch.where(std > 0, 1 / std, torch.ones_like(std))
    return teacher


# ------------------------------------------------------------------------------------------------ losses


def loss_and_grad(name: str, z: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """G(z, y) over the last axis (..., d) -> (...) and dG/dz (..., d). Convex, 1-Lipschitz in z except mse.

    l2: ||z - y||_2 (the paper's default); l1: ||z - y||_1; huber: unit-slope Huber per coordinate;
    xent: KL(softmax(y) || softmax(z)) / sqrt 2 (softmax cross-entropy with soft labels, minus their
    entropy so G(y, y) = 0); mse: ||z - y||^2 / 2 (outside the theorem, flagged).
    """
    r = z - y
    if name == "l2" and r.shape[-1] == 1:  # the same numbers in fewer operations (the SGD loop's case)
        return r.abs().squeeze(-1), torch.sign(r)
    if name == "l2":
        norm = r.norm(dim=-1)
        return norm, r / norm.clamp_min(1e-30).unsqueeze(-1)
    if name == "l1":
        return r.abs().sum(dim=-1), torch.sign(r)
    if name == "huber":
        a = r.abs()
        return torch.where(a <= 1, 0.5 * r**2, a - 0.5).sum(dim=-1), r.clamp(-1, 1)
    if name == "xent":
        q, logp = torch.softmax(y, dim=-1), torch.log_softmax(z, dim=-1)
        kl = (q * (torch.log_softmax(y, dim=-1) - logp)).sum(dim=-1)
        return kl / math.sqrt(2), (logp.exp() - q) / math.sqrt(2)
    if name == "mse":
        return 0.5 * (r**2).sum(dim=-1), r
    raise ValueError(f"unknown loss {name!r}")


def risk(name: str, z: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sample objective sum_{j in mask} G(z_j, y_j): (n, L, d) -> (n,)."""
    return loss_and_grad(name, z[:, mask], y[:, mask])[0].sum(dim=-1)


def constant_baseline(name: str, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The best constant prediction per position: c_j = argmin_c mean_i G(c, y_ij), (n, L, d) -> (L, d).

    The level a learner must beat to have learned anything from the tokens: the baseline-relative excess
    risk (risk - OPT) / (baseline - OPT) is 1 for it and 0 at OPT. Exact for every loss: the mean (mse), the
    coordinatewise median (l1; l2 with d = 1), the geometric median by Weiszfeld's iteration (l2, d > 1), the
    root of the Huber score by bisection (huber), and log of the mean soft label (xent: softmax(c) must equal
    the average of softmax(y)). Positions outside `mask` get 0. Computed in float64.
    """
    y = y.double()
    c = torch.zeros(y.shape[1:], dtype=torch.float64)
    ys = y[:, mask]  # (n, J, d)
    if name == "mse":
        c[mask] = ys.mean(dim=0)
    elif name == "l1" or (name == "l2" and ys.shape[-1] == 1):
        c[mask] = ys.median(dim=0).values
    elif name == "l2":
        z = ys.median(dim=0).values
        for _ in range(500):  # Weiszfeld: z <- sum y_i / |y_i - z| / sum 1 / |y_i - z|
            w = 1 / (ys - z).norm(dim=-1, keepdim=True).clamp_min(1e-12)
            z_new = (w * ys).sum(dim=0) / w.sum(dim=0)
            if torch.allclose(z_new, z, rtol=0, atol=1e-12):
                break
            z = z_new
        c[mask] = z
    elif name == "huber":
        lo, hi = ys.min(dim=0).values, ys.max(dim=0).values
        for _ in range(100):  # the score sum_i clamp(c - y_i, -1, 1) is non-decreasing in c
            mid = (lo + hi) / 2
            up = (mid - ys).clamp(-1, 1).sum(dim=0) > 0
            lo, hi = torch.where(up, lo, mid), torch.where(up, mid, hi)
        c[mask] = (lo + hi) / 2
    elif name == "xent":
        c[mask] = torch.softmax(ys, dim=-1).mean(dim=0).log()
    else:
        raise ValueError(f"unknown loss {name!r}")
    return c
