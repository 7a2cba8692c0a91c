"""The Elman ReLU RNN of Allen-Zhu & Li (2019), Section 3 (arXiv 1902.01028).

    h_0 = 0,   h_l = ReLU((W + W') h_{l-1} + A x_l),   y_l = B h_l        l = 1..L

Only the shift W' is trained; W, A, B stay at their random init. The forward pass and its
backward (BPTT by hand) are written out so that one-sample SGD pays for matrix products only, not
for building an autograd graph every step: `backward` is checked against autograd and finite
differences in tests/test_model.py.

Two shapes share that code (`_Elman`): `RNN`, one network, and `Pack`, K networks of one shape with
W (K, m, m), A (K, m, d_x+1), B (K, d_out, m), whose inputs carry a leading K axis and whose products are
batched over K (bmm). A pack uses only operations whose result for one network does not depend on the others
(no reduction across K, no product whose rounding depends on K): a network trained in a pack of K gets the
bits it gets in a pack of one. One-sample SGD always runs on a pack (rnnsgd.train.sgd_steps); so do the
evaluations' forward passes (`Pack.forward_each`, rnnsgd.train.objectives), each network with the bits of
`RNN.forward` alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

ACTIVATIONS = ("relu", "linear")


class _Elman:
    """The recurrence and its BPTT, written once for `RNN` and `Pack`; each says how its products with W, A
    and B are batched (`project`, `_acc`, `_out`, `_from_out`, `_weight_grad`)."""

    m: int
    d_x: int
    d_out: int
    activation: str
    W: torch.Tensor
    A: torch.Tensor
    B: torch.Tensor

    def with_weights(self, W: torch.Tensor, A: torch.Tensor, B: torch.Tensor):  # -> the same type
        """This network's kind (m, d_x, d_out, activation) with other weights, e.g. views of a pack's."""
        other = object.__new__(type(self))
        other.__dict__.update(self.__dict__)
        other.W, other.A, other.B = W, A, B
        return other

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None):
        """A copy with W, A, B cast (e.g. float64 for the linearization diagnostic)."""
        return self.with_weights(*(t.to(dtype=dtype, device=device) for t in (self.W, self.A, self.B)))

    def _total(self, W_shift: torch.Tensor | None, W_total: torch.Tensor | None) -> torch.Tensor:
        if W_total is not None:
            return W_total
        return self.W if W_shift is None else self.W + W_shift

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
        the caller keeps them across calls (a step of SGD would otherwise make 2L of them).
        """
        W_T, acc = W_total.mT, self._acc  # acc: u_l += h_{l-1} W^T
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
        """h_l for l = 1..L: (n, L, m), a pack (K, n, L, m)."""
        return self.states(x, W_shift)[0]

    def forward(self, x: torch.Tensor, W_shift: torch.Tensor | None = None) -> torch.Tensor:
        """F_l(x; W + W') = B h_l: (n, L, d_out), for a pack (K, n, L, d_out)."""
        return self._out(self.hidden(x, W_shift))

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
        return self.bptt(hT, uT, self._from_out(dyT), W, out=out, alpha=alpha)

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
        gs, acc = (g.unbind(0) if views is None else views[0]), self._acc
        active = None  # sigma'(u_l) = 1[u_l > 0], written as floats in one op (a bool mask costs more)
        if self.activation == "relu":
            mask = torch.gt(u, 0, out=torch.empty_like(u) if mask is None else mask)
            active = mask.unbind(0) if views is None else views[1]
        for l in range(h.shape[0] - 1, 0, -1):
            if active is not None:
                gs[l].mul_(active[l])  # delta_l
            if l > 1:
                acc(gs[l - 1], gs[l], W_total)  # g_{l-1} += W^T delta_l (rows are samples)
        # sum over samples and positions 2..L of delta_l h_{l-1}^T in one product (h_0 = 0 drops l = 1)
        return self._weight_grad(g[1:], h[:-1], out, alpha)


class RNN(_Elman):
    """One network. W (m, m) and A (m, d_x + 1) ~ N(0, w_var/m) resp. N(0, 2/m); B (d_out, m) ~ N(0, 1/d_out).

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
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be 'relu' or 'linear', got {activation!r}")
        self.m, self.d_x, self.d_out, self.activation = m, d_x, d_out, activation

        # Sampled on the CPU in float64 from one generator so that the init is the same on every device.
        def gauss(*shape: int, var: float) -> torch.Tensor:
            z = torch.randn(*shape, generator=generator, dtype=torch.float64)
            return (z * var**0.5).to(dtype=dtype, device=device)

        self.W = gauss(m, m, var=w_var / m)
        self.A = gauss(m, d_x + 1, var=2.0 / m)
        self.B = gauss(d_out, m, var=1.0 / d_out)

    @staticmethod
    def stack(nets: Sequence[RNN]) -> Pack:
        """A pack of networks of one shape: W (K, m, m), A (K, m, d_x + 1), B (K, d_out, m), copied."""
        first = nets[0]
        shape = (first.m, first.d_x, first.d_out, first.activation)
        for net in nets:
            if (net.m, net.d_x, net.d_out, net.activation) != shape:
                raise ValueError("RNN.stack: the networks of a pack need one m, d_x, d_out and activation")
        return Pack(*(torch.stack([getattr(n, k) for n in nets]) for k in ("W", "A", "B")), first.activation)

    def as_pack(self) -> Pack:
        """This network as a pack of one: views with a leading axis of size 1, no copy."""
        return Pack(self.W[None], self.A[None], self.B[None], self.activation)

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

    def project(self, x_pm: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """The input terms A x_l for position-major inputs: (..., n, d_x + 1) -> (..., n, m), one product."""
        return torch.matmul(x_pm, self.A.T, out=out)

    @staticmethod
    def _acc(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
        out.addmm_(a, b)

    def _out(self, h: torch.Tensor) -> torch.Tensor:
        return h @ self.B.T

    def _from_out(self, dy: torch.Tensor) -> torch.Tensor:
        """B^T dy_l, position-major: (L, n, d_out) -> (L, n, m), contiguous."""
        return torch.matmul(dy, self.B).contiguous()

    @staticmethod
    def _weight_grad(delta: torch.Tensor, h_prev: torch.Tensor, out: torch.Tensor | None, alpha: float):
        """sum over (L-1, n) of delta h_prev^T: (m, m), or out + alpha times it, in place."""
        m = delta.shape[-1]
        delta, h_prev = delta.reshape(-1, m), h_prev.reshape(-1, m)
        return delta.T @ h_prev if out is None else out.addmm_(delta.T, h_prev, alpha=alpha)


class Pack(_Elman):
    """K networks of one shape, as `RNN.stack` or `RNN.as_pack` make them, or over a pack trainer's tensors
    (rnnsgd.packed): W (K, m, m), A (K, m, d_x + 1), B (K, d_out, m)."""

    def __init__(self, W: torch.Tensor, A: torch.Tensor, B: torch.Tensor, activation: str) -> None:
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be 'relu' or 'linear', got {activation!r}")
        self.m, self.d_x, self.d_out, self.activation = W.shape[-1], A.shape[-1] - 1, B.shape[-2], activation
        self.W, self.A, self.B = W, A, B

    def project(self, x_pm: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """The input terms A x_l for position-major inputs: x_pm (..., K, n, d_x + 1) -> (..., K, n, m),
        contiguous, as a sum of d_x + 1 scaled columns of A, elementwise, so that the bits depend neither on K
        nor on how many steps are projected at once (a matrix product's rounding does, for a few rows);
        d_x + 1 is small."""
        # each coordinate of x and each column of A contiguous: strided operands make the products slow
        xs = x_pm.movedim(-1, 0).contiguous().unsqueeze(-1)  # (d_x + 1, ..., K, n, 1)
        cols = self.A.movedim(-1, 0).contiguous().unsqueeze(-2)  # (d_x + 1, K, 1, m): broadcast over n
        u = x_pm.new_empty((*x_pm.shape[:-1], self.m)) if out is None else out
        torch.mul(xs[0], cols[0], out=u)
        for c in range(1, len(xs)):
            u.addcmul_(xs[c], cols[c])
        return u

    def forward_each(
        self, x: torch.Tensor, W_total: torch.Tensor, work: dict[str, torch.Tensor] | None = None
    ) -> list[torch.Tensor]:
        """F(x_k; W_total_k) of each network k, for an evaluation: x (K, n, L, d_x + 1) -> K outputs
        (n, L, d_out), each bit for bit what `RNN.forward` gives that network alone on x_k (so that a model is
        scored alike in a pack and alone). The input terms are one batched product whose batches are the
        products `RNN.project` makes (the same rows, position-major; `project`'s sum of columns rounds
        otherwise); the recurrence is `recurrence`'s; the output product is made per network, as `RNN` makes
        it (one batched over K n samples rounds otherwise).
        work: a dict the caller keeps across calls, for the input terms and hidden states (`_scratch`).
        """
        K, n, L, d_in = x.shape
        x_pm = x.movedim(-2, 1).reshape(K, L * n, d_in)  # rows position-major, as RNN.project's product
        u = torch.bmm(x_pm, self.A.mT, out=_scratch(work, "u", x, (K, L * n, self.m)))
        u = u.view(K, L, n, self.m).transpose(0, 1)  # (L, K, n, m)
        if not u.is_contiguous():  # K > 1: the recurrence wants each position's block contiguous
            u = _scratch(work, "u_pm", x, u.shape).copy_(u)
        h_out = None if self.activation == "linear" else _scratch(work, "h", x, u.shape)  # linear: h is u
        h = self.recurrence(u, W_total, out=h_out).movedim(0, -2)  # (K, n, L, m) views
        return [h[k] @ self.B[k].T for k in range(K)]

    @staticmethod
    def _acc(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
        out.baddbmm_(a, b)

    def _out(self, h: torch.Tensor) -> torch.Tensor:
        return h @ self.B.mT.unsqueeze(-3)  # (K, 1, m, d_out): broadcasts over n

    def _from_out(self, dy: torch.Tensor) -> torch.Tensor:
        """B^T dy_l as a sum over d_out of dy_s B_s, elementwise (independent of K): (L, K, n, d_out) ->
        (L, K, n, m)."""
        rows = self.B.unsqueeze(-3)  # (K, 1, d_out, m)
        g = torch.mul(dy[..., 0:1], rows[..., 0, :])
        for s in range(1, self.d_out):
            g.addcmul_(dy[..., s : s + 1], rows[..., s, :])
        return g

    @staticmethod
    def _weight_grad(delta: torch.Tensor, h_prev: torch.Tensor, out: torch.Tensor | None, alpha: float):
        """Per network, the sum over (L-1, n) of delta h_prev^T: (K, m, m), or out + alpha times it."""
        K, m = delta.shape[1], delta.shape[-1]
        delta = delta.transpose(0, 1).reshape(K, -1, m)  # (K, (L-1) n, m), rows ordered as in `RNN`
        h_prev = h_prev.transpose(0, 1).reshape(K, -1, m)
        return torch.bmm(delta.mT, h_prev) if out is None else out.baddbmm_(delta.mT, h_prev, alpha=alpha)


def _scratch(work: dict[str, torch.Tensor] | None, name: str, like: torch.Tensor, shape) -> torch.Tensor:
    """A tensor of this shape, like `like`, on the front of `work`'s buffer `name`, which grows when too small
    (None: a new tensor). Evaluations reuse one buffer across their sets of several sizes: a fresh buffer of
    this size costs a page fault per page each time."""
    numel = math.prod(shape)
    if work is None:
        return like.new_empty(shape)
    buf = work.get(name)
    if buf is None or buf.numel() < numel or buf.dtype != like.dtype or buf.device != like.device:
        buf = work[name] = like.new_empty(numel)
    return buf[:numel].view(shape)
