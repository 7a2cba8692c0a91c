"""The Phi families of the concept class (arXiv 1902.01028, §3) and their complexities C_eps and C_s.

Apart from rnnsgd.concept's tensors: configs validate Phi specs and schedules compute C_eps without importing
torch, so a sweep file is checked (and Ray started) before torch has loaded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from torch import Tensor

# ---------------------------------------------------------------------------------------------------- Phi


@dataclass(frozen=True)
class Phi:
    """A smooth scalar function with Phi(0) = 0, known by its Taylor coefficients c_i (i >= 1)."""

    spec: str
    kind: str  # "poly" (finite coefficients), "sin", "exp"
    coeffs: tuple[float, ...] = ()  # c_0, c_1, ... for kind "poly"
    net: bool = False  # Example 3.5: two-layer teacher, b* ~ U[-1, 1] instead of {-1, +1}

    def __call__(self, z: Tensor) -> Tensor:
        """Phi(z) elementwise, on a torch tensor (by its methods: this module does not import torch)."""
        if self.kind == "sin":
            return z.sin()
        if self.kind == "exp":
            return z.expm1()
        out = z.new_zeros(z.shape)
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
