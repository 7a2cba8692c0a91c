"""The Elman ReLU RNN of Allen-Zhu & Li (2019), Section 3 (arXiv 1902.01028).

    h_0 = 0,   h_l = ReLU((W + W') h_{l-1} + A x_l),   y_l = B h_l        l = 1..L

Only the shift W' is trained; W, A, B stay at their random init. The forward pass and its
backward (BPTT by hand) are written out so that one-sample SGD pays for matrix products only, not
for building an autograd graph every step: `backward` is checked against autograd and finite
differences in tests/test_model.py.

A pack (`RNN.stack`) holds K networks of one shape: W (K, m, m), A (K, m, d_x+1), B (K, d_out, m). `states`
and `backward` then take a leading K axis on their inputs and do every product batched over K (bmm), with
operations whose result for one network does not depend on the others (no reduction across K, no product
whose rounding depends on K): a network trained in a pack of K gets the bits it gets in a pack of one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class RNN:
    """W (m, m) and A (m, d_x + 1) ~ N(0, w_var/m) resp. N(0, 2/m); B (d_out, m) ~ N(0, 1/d_out).

    `w_var` = 2 is the paper's init (spectral radius -> sqrt 2); other values are the E5 controls.
    `activation` is "relu" (the paper) or "linear" (the E5 control).
    """

    def __init__(
        self,
        m: int,
        d_x: int,
        d_out: int,
        generator: torch.Generator,
        w_var: float = 2.0,
        activation: str = "relu",
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        if activation not in ("relu", "linear"):
            raise ValueError(f"activation must be 'relu' or 'linear', got {activation!r}")
        self.m, self.d_x, self.d_out, self.activation = m, d_x, d_out, activation

        # Sampled on the CPU in float64 from one generator so that the init is the same on every device.
        def gauss(*shape: int, var: float) -> torch.Tensor:
            z = torch.randn(*shape, generator=generator, dtype=torch.float64)
            return (z * var**0.5).to(dtype=dtype, device=device)

        self.W = gauss(m, m, var=w_var / m)
        self.A = gauss(m, d_x + 1, var=2.0 / m)
        self.B = gauss(d_out, m, var=1.0 / d_out)

    @classmethod
    def stack(cls, nets: Sequence[RNN]) -> RNN:
        """A pack of networks of one shape: W (K, m, m), A (K, m, d_x + 1), B (K, d_out, m), copied."""
        first = nets[0]
        shape = (first.m, first.d_x, first.d_out, first.activation)
        for net in nets:
            if (net.m, net.d_x, net.d_out, net.activation) != shape:
                raise ValueError("RNN.stack: the networks of a pack need one m, d_x, d_out and activation")
        return first.with_weights(*(torch.stack([getattr(n, k) for n in nets]) for k in ("W", "A", "B")))

    def as_pack(self) -> RNN:
        """This network as a pack of one: views with a leading axis of size 1, no copy."""
        if self.packed:
            return self
        return self.with_weights(self.W[None], self.A[None], self.B[None])

    def with_weights(self, W: torch.Tensor, A: torch.Tensor, B: torch.Tensor) -> RNN:
        """This network's kind (m, d_x, d_out, activation) with other weights, e.g. views of a pack's."""
        other = object.__new__(RNN)
        other.__dict__.update(self.__dict__)
        other.W, other.A, other.B = W, A, B
        return other

    @property
    def packed(self) -> bool:
        """True for a pack of K networks (`stack`): then every tensor has a leading K axis."""
        return self.W.dim() == 3

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> RNN:
        """A copy with W, A, B cast (e.g. float64 for the linearization diagnostic)."""
        other = object.__new__(RNN)
        other.__dict__.update(self.__dict__)
        for k in ("W", "A", "B"):
            setattr(other, k, getattr(self, k).to(dtype=dtype, device=device))
        return other

    @staticmethod
    def normalize(x_star: torch.Tensor, eps_x: float) -> torch.Tensor:
        """Definition 3.2: raw tokens (n, L, d_x) -> network inputs (n, L, d_x + 1).

        Index l of x_star is position l + 1; positions 1 and L are replaced by the fixed tokens
        x_1 = (0, 1) and x_L = (0, eps_x) (the paper's §2), the others are scaled by eps_x.
        """
        n, L, d_x = x_star.shape
        x = x_star.new_zeros(n, L, d_x + 1)
        x[:, 0, d_x] = 1.0
        x[:, 1 : L - 1, :d_x] = eps_x * x_star[:, 1 : L - 1]
        x[:, L - 1, d_x] = eps_x
        return x

    def _total(self, W_shift: torch.Tensor | None, W_total: torch.Tensor | None) -> torch.Tensor:
        if W_total is not None:
            return W_total
        return self.W if W_shift is None else self.W + W_shift

    def project(self, x_pm: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """The input terms A x_l for position-major inputs: (..., n, d_x + 1) -> (..., n, m).

        One network: one matrix product. A pack: x_pm (..., K, n, d_x + 1) -> (..., K, n, m), contiguous, as a
        sum of d_x + 1 scaled columns of A, elementwise, so that the bits depend neither on K nor on how many
        steps are projected at once (a matrix product's rounding does, for a few rows); d_x + 1 is small.
        """
        if not self.packed:
            return torch.matmul(x_pm, self.A.T, out=out)
        # each coordinate of x and each column of A contiguous: a strided operand made the products 5x slower
        xs = x_pm.movedim(-1, 0).contiguous().unsqueeze(-1)  # (d_x + 1, ..., K, n, 1)
        cols = self.A.movedim(-1, 0).contiguous().unsqueeze(-2)  # (d_x + 1, K, 1, m): broadcast over n
        u = x_pm.new_empty((*x_pm.shape[:-1], self.m)) if out is None else out
        torch.mul(xs[0], cols[0], out=u)
        for c in range(1, len(xs)):
            u.addcmul_(xs[c], cols[c])
        return u

    def states(
        self,
        x: torch.Tensor,
        W_shift: torch.Tensor | None = None,
        *,
        W_total: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states h and pre-activations u, both (n, L, m); a pack: x (K, n, L, d_x+1) -> (K, n, L, m).

        `W_total` = W + W', if the caller holds it already (it saves an m x m sum per call). Both are computed
        position-major (`recurrence`), so that every h_l is one contiguous block that the recurrence writes in
        place; they are returned as transposed views (`backward` undoes that for free).
        The in-place recurrence supports no autograd: gradients come from `backward`, and the diagnostics'
        JVP is written out (rnnsgd.diagnostics).
        """
        u = self.project(x.movedim(-2, 0)).contiguous()  # (L, [K,] n, m): A x_l, one product for all l
        h = self.recurrence(u, self._total(W_shift, W_total))
        return h.movedim(0, -2), u.movedim(0, -2)

    def recurrence(
        self,
        u: torch.Tensor,
        W_total: torch.Tensor,
        *,
        out: torch.Tensor | None = None,
        views: tuple[Sequence[torch.Tensor], Sequence[torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        """h_l = sigma(A x_l + (W + W') h_{l-1}) position-major: u = A x_l (L, [K,] n, m) -> h, same shape.

        u is completed in place into the pre-activations; for the linear activation h is u itself.
        out: where to write h (default: a new tensor). views: the per-position views of u and of out, when
        the caller keeps them across calls (making them costs about a microsecond each, 2L per call).
        """
        W_T = W_total.mT
        acc = _addmm_ if W_T.dim() == 2 else _baddbmm_  # u_l += h_{l-1} W^T, for one network or K at once
        us = u.unbind(0) if views is None else views[0]
        if self.activation == "linear":
            for l in range(1, len(us)):
                acc(us[l], us[l - 1], W_T)  # u_l = A x_l + W h_{l-1}, h = u
            return u
        h = torch.empty_like(u) if out is None else out
        hs = h.unbind(0) if views is None else views[1]
        torch.clamp_min(us[0], 0, out=hs[0])  # h_0 = 0, so u_1 = A x_1
        for l in range(1, len(us)):
            acc(us[l], hs[l - 1], W_T)
            torch.clamp_min(us[l], 0, out=hs[l])
        return h

    def hidden(self, x: torch.Tensor, W_shift: torch.Tensor | None = None) -> torch.Tensor:
        """h_l for l = 1..L: (n, L, m)."""
        return self.states(x, W_shift)[0]

    def forward(self, x: torch.Tensor, W_shift: torch.Tensor | None = None) -> torch.Tensor:
        """F_l(x; W + W') = B h_l: (n, L, d_out), for a pack (K, n, L, d_out)."""
        B_T = self.B.mT.unsqueeze(-3) if self.packed else self.B.T  # (K, 1, m, d_out): broadcasts over n
        return self.hidden(x, W_shift) @ B_T

    __call__ = forward

    def backward(
        self,
        h: torch.Tensor,
        u: torch.Tensor,
        dy: torch.Tensor,
        W_shift: torch.Tensor | None = None,
        *,
        W_total: torch.Tensor | None = None,
        out: torch.Tensor | None = None,
        alpha: float = 1.0,
    ) -> torch.Tensor:
        """BPTT: from dLoss/dy (n, L, d_out) and the states of `states`, dLoss/dW' (m, m) summed over n.

        With g_l = dLoss/dh_l and delta_l = sigma'(u_l) * g_l:
            g_L = B^T dy_L,   g_l = B^T dy_l + (W + W')^T delta_{l+1},   dLoss/dW' = sum_l delta_l h_{l-1}^T.
        With `out` given, adds alpha * dLoss/dW' to it in place (one fused product, as an SGD step wants:
        out=W', alpha=-eta) and returns it.
        A pack: dy (K, n, L, d_out) -> (K, m, m) (a step size per network rides on dy: BPTT is linear in it).
        """
        W = self._total(W_shift, W_total)
        hT, uT, dyT = h.movedim(-2, 0), u.movedim(-2, 0), dy.movedim(-2, 0)  # position-major, as `bptt` takes
        if self.packed:  # B^T dy_l as a sum over d_out of dy_s B_s, elementwise: independent of K
            rows = self.B.unsqueeze(-3)  # (K, 1, d_out, m)
            g = torch.mul(dyT[..., 0:1], rows[..., 0, :])
            for s in range(1, self.B.shape[-2]):
                g.addcmul_(dyT[..., s : s + 1], rows[..., s, :])
        else:
            g = torch.matmul(dyT, self.B).contiguous()  # (L, n, m)
        return self.bptt(hT, uT, g, W, out=out, alpha=alpha)

    def bptt(
        self,
        h: torch.Tensor,
        u: torch.Tensor,
        g: torch.Tensor,
        W_total: torch.Tensor,
        *,
        out: torch.Tensor | None = None,
        alpha: float = 1.0,
        mask: torch.Tensor | None = None,
        views: tuple[Sequence[torch.Tensor], Sequence[torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        """`backward` position-major: h, u (L, [K,] n, m) of `recurrence`; g = B^T dy_l (L, [K,] n, m), the
        gradient that reaches h_l from the outputs, which the loop overwrites with delta_l.

        mask: where to write sigma'(u) (a buffer like u; default: a new one). views: the per-position views
        of g and of mask (so given with mask), when the caller keeps them across calls (as in `recurrence`).
        """
        W = W_total
        packed = W.dim() == 3
        L, m = h.shape[0], h.shape[-1]
        acc = _baddbmm_ if packed else _addmm_
        gs = g.unbind(0) if views is None else views[0]
        active = None  # sigma'(u_l) = 1[u_l > 0], written as floats in one op (a bool mask costs more)
        if self.activation == "relu":
            mask = torch.gt(u, 0, out=torch.empty_like(u) if mask is None else mask)
            active = mask.unbind(0) if views is None else views[1]
        for l in range(L - 1, 0, -1):
            if active is not None:
                gs[l].mul_(active[l])  # delta_l
            if l > 1:
                acc(gs[l - 1], gs[l], W)  # g_{l-1} += W^T delta_l (rows are samples)
        # sum over samples and positions 2..L of delta_l h_{l-1}^T in one product (h_0 = 0 drops l = 1)
        if not packed:
            delta, h_prev = g[1:].reshape(-1, m), h[:-1].reshape(-1, m)
            if out is None:
                return delta.T @ h_prev
            return out.addmm_(delta.T, h_prev, alpha=alpha)
        K = W.shape[0]
        delta = g[1:].transpose(0, 1).reshape(K, -1, m)  # (K, (L-1) n, m), rows ordered as in the 2-D case
        h_prev = h[:-1].transpose(0, 1).reshape(K, -1, m)
        if out is None:
            return torch.bmm(delta.mT, h_prev)
        return out.baddbmm_(delta.mT, h_prev, alpha=alpha)


def _addmm_(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    out.addmm_(a, b)


def _baddbmm_(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    out.baddbmm_(a, b)
