"""The concept class of eq. (3.1) (spec/PAPER.md §3): tokens, teachers, labels, OPT and complexity.

    F*_{j,s}(x*) = sum_{i=2}^{j-1} sum_{r=1}^{p} b*_{i->j,r,s} Phi_{i->j,r,s}(<w*_{i->j,r,s}, x*_i>)

Positions are 1-based in the maths and 0-based in tensors: tensor index t is position t + 1, so tokens
live at t = 1..L-2 and labels at t = 2..L-1. This module knows nothing of configs: it takes plain values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

# ---------------------------------------------------------------------------------------------------- Phi


@dataclass(frozen=True)
class Phi:
    """A smooth scalar function with Phi(0) = 0, known by its Taylor coefficients c_i (i >= 1)."""

    spec: str
    kind: str  # "poly" (finite coefficients), "sin", "exp"
    coeffs: tuple[float, ...] = ()  # c_0, c_1, ... for kind "poly"
    net: bool = False  # Example 3.5: two-layer teacher, b* ~ U[-1, 1] instead of {-1, +1}

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        if self.kind == "sin":
            return torch.sin(z)
        if self.kind == "exp":
            return torch.expm1(z)
        out = torch.zeros_like(z)
        for c in reversed(self.coeffs):  # Horner
            out = out * z + c
        return out

    def log_abs_coeffs(self, n: int) -> np.ndarray:
        """log |c_i| for i = 1..n (-inf where c_i = 0)."""
        i = np.arange(1, n + 1, dtype=np.float64)
        with np.errstate(divide="ignore"):
            if self.kind == "exp":
                return -np.array([math.lgamma(k + 1) for k in i])
            if self.kind == "sin":
                return np.where(i % 2 == 1, -np.array([math.lgamma(k + 1) for k in i]), -np.inf)
            c = np.zeros(n)
            k = min(n, len(self.coeffs) - 1)
            c[:k] = self.coeffs[1 : k + 1]
            return np.log(np.abs(c))


FAMILIES = "z^k (k >= 1), poly:c0:c1:...:ck (c0 = 0), sin, exp (e^z - 1), net:<one of these>"


def parse_phi(spec: str) -> Phi:
    """'z^2', 'poly:0:1:0.5', 'sin', 'exp', 'net:sin' -> Phi. Raises ValueError naming what is allowed."""
    s = spec.strip().replace(" ", "")
    if s.startswith("net:"):
        inner = parse_phi(s[4:])
        if inner.net:
            raise ValueError(f"{spec!r}: net:net is not a family; allowed: {FAMILIES}")
        return Phi(spec=s, kind=inner.kind, coeffs=inner.coeffs, net=True)
    if s in ("sin", "exp"):
        return Phi(spec=s, kind=s)
    if s.startswith("z^"):
        try:
            k = int(s[2:])
        except ValueError:
            raise ValueError(f"{spec!r}: unknown Phi; allowed: {FAMILIES}") from None
        if k < 1:
            raise ValueError(f"{spec!r}: degree {k} gives Phi(0) = 1 != 0; the degree must be >= 1")
        return Phi(spec=s, kind="poly", coeffs=(0.0,) * k + (1.0,))
    if s.startswith("poly:"):
        try:
            coeffs = tuple(float(c) for c in s[5:].split(":"))
        except ValueError:
            raise ValueError(f"{spec!r}: poly coefficients must be numbers, e.g. poly:0:1:0.5") from None
        if not all(math.isfinite(c) for c in coeffs):
            raise ValueError(f"{spec!r}: poly coefficients must be finite numbers")
        if coeffs[0] != 0:
            raise ValueError(f"{spec!r}: constant term {coeffs[0]} gives Phi(0) != 0; c0 must be 0")
        if not any(coeffs[1:]):
            raise ValueError(f"{spec!r}: all coefficients are 0; give at least one nonzero c_i, i >= 1")
        return Phi(spec=s, kind="poly", coeffs=coeffs)
    raise ValueError(f"{spec!r}: unknown Phi; allowed: {FAMILIES}")


# ------------------------------------------------------------------------------------------ complexity


def _log_sum(log_terms: np.ndarray) -> float:
    top = np.max(log_terms)
    if not np.isfinite(top):
        return float(np.exp(top)) if top == np.inf else 0.0
    total = top + math.log(np.sum(np.exp(log_terms - top)))
    return math.inf if total > 709 else math.exp(total)


def _degrees(phi: Phi, scale: float) -> int:
    # an entire function's terms (scale^i / i!) peak at i ~ scale: sum well past it
    return len(phi.coeffs) - 1 if phi.kind == "poly" else int(3 * scale + 60)


def complexity_eps(phi: Phi, R: float, eps: float, C_star: float = 1e4) -> float:
    """C_eps(Phi, R) = sum_i ((C* R)^i + (sqrt(log(1/eps) / i) C* R)^i) |c_i|  (Section 3, 'complexity')."""
    log_inv_eps = max(math.log(1 / eps), 0.0)  # eps >= 1 has no second term (and no sqrt of a negative)
    n = _degrees(phi, C_star * R * max(1.0, math.sqrt(log_inv_eps)))
    i = np.arange(1, n + 1, dtype=np.float64)
    log_c = phi.log_abs_coeffs(n)
    a = i * math.log(C_star * R) + log_c
    b = i * (0.5 * np.log(max(log_inv_eps, 1e-300) / i) + math.log(C_star * R)) + log_c
    return _log_sum(np.concatenate([a, b]))


def complexity_s(phi: Phi, R: float, C_star: float = 1e4) -> float:
    """C_s(Phi, R) = C* sum_i (i + 1)^1.75 R^i |c_i|."""
    n = _degrees(phi, R)
    i = np.arange(1, n + 1, dtype=np.float64)
    return C_star * _log_sum(1.75 * np.log(i + 1) + i * math.log(R) + phi.log_abs_coeffs(n))


# ------------------------------------------------------------------------------------------ tokens, teachers


def sample_tokens(n: int, L: int, d_x: int, generator: torch.Generator) -> torch.Tensor:
    """Raw tokens (n, L, d_x) in float64 on the CPU: at t = 1..L-2, first d_x - 1 coordinates uniform on the
    sphere of radius sqrt(3)/2, last coordinate 1/2 (unit norm; spec/PAPER.md §2); t = 0 and L-1 are zero."""
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
