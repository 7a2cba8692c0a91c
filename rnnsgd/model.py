"""The Elman ReLU RNN of Allen-Zhu & Li (2019), Section 3 (spec/PAPER.md §1-2).

    h_0 = 0,   h_l = ReLU((W + W') h_{l-1} + A x_l),   y_l = B h_l        l = 1..L

Only the shift W' is trained; W, A, B stay at their random init. The forward pass and its
backward (BPTT by hand) are written out so that one-sample SGD pays for matrix products only, not
for building an autograd graph every step: `backward` is checked against autograd and finite
differences in tests/test_model.py.
"""

from __future__ import annotations

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
        x_1 = (0, 1) and x_L = (0, eps_x) (spec/PAPER.md §2, decided), the others are scaled by eps_x.
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

    def states(
        self, x: torch.Tensor, W_shift: torch.Tensor | None = None, *, W_total: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states h and pre-activations u, both (n, L, m).

        `W_total` = W + W', if the caller holds it already (the trainer does: it saves an m x m sum per call).
        Both are computed position-major, (L, n, m), so that every h_l is one contiguous block that the
        recurrence writes in place; they are returned as transposed views (`backward` undoes that for free).
        The in-place recurrence supports forward-mode AD (torch.func.jvp, used by the diagnostics) but not
        reverse-mode autograd: gradients come from `backward`.
        """
        W_T = self._total(W_shift, W_total).T
        u = torch.matmul(x.transpose(0, 1), self.A.T).contiguous()  # (L, n, m): A x_l, one product for all l
        us = u.unbind(0)  # per-position views, made once
        if self.activation == "linear":
            for l in range(1, len(us)):
                us[l].addmm_(us[l - 1], W_T)  # u_l = A x_l + W h_{l-1}, h = u
            return u.transpose(0, 1), u.transpose(0, 1)
        h = torch.empty_like(u)
        hs = h.unbind(0)
        hs[0].copy_(us[0]).relu_()  # h_0 = 0, so u_1 = A x_1
        for l in range(1, len(us)):
            us[l].addmm_(hs[l - 1], W_T)
            hs[l].copy_(us[l]).relu_()
        return h.transpose(0, 1), u.transpose(0, 1)

    def hidden(self, x: torch.Tensor, W_shift: torch.Tensor | None = None) -> torch.Tensor:
        """h_l for l = 1..L: (n, L, m)."""
        return self.states(x, W_shift)[0]

    def forward(self, x: torch.Tensor, W_shift: torch.Tensor | None = None) -> torch.Tensor:
        """F_l(x; W + W') = B h_l: (n, L, d_out)."""
        return self.hidden(x, W_shift) @ self.B.T

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
        """
        W = self._total(W_shift, W_total)
        hT, uT = h.transpose(0, 1), u.transpose(0, 1)  # (L, n, m), contiguous when they come from `states`
        L, _, m = hT.shape
        # g starts as B^T dy_l for every l; the loop turns g_l into delta_l in place, back to front
        g = torch.matmul(dy.transpose(0, 1), self.B).contiguous()  # (L, n, m)
        gs = g.unbind(0)
        active = (uT > 0).to(g.dtype).unbind(0) if self.activation == "relu" else None  # sigma'(u_l)
        for l in range(L - 1, 0, -1):
            if active is not None:
                gs[l].mul_(active[l])  # delta_l
            if l > 1:
                gs[l - 1].addmm_(gs[l], W)  # g_{l-1} += W^T delta_l (rows are samples)
        # sum over samples and positions 2..L of delta_l h_{l-1}^T in one product (h_0 = 0 drops l = 1)
        delta, h_prev = g[1:].reshape(-1, m), hT[:-1].reshape(-1, m)
        if out is None:
            return delta.T @ h_prev
        return out.addmm_(delta.T, h_prev, alpha=alpha)
