"""Censored-normal maximum likelihood, batched (docs/claims.md, "From thresholds to a verdict").

Model: log y*_i = mu(x_i; theta) + sigma z_i, z_i ~ N(0, 1). Observation i is known to lie in [lo_i, hi_i]
(log scale). One formula covers the censored cases, with Phi(-inf) = 0 and Phi(inf) = 1:

    lo == hi               exact            log phi((y - mu) / sigma) - log sigma
    lo = -inf              left-censored    log Phi((hi - mu) / sigma)
    hi = +inf              right-censored   log Phi((mu - lo) / sigma)
    otherwise              interval         log(Phi(v) - Phi(u)),  u = (lo - mu)/sigma,  v = (hi - mu)/sigma

The optimizer is a damped ("saddle-free") Newton method with the exact gradient and Hessian, run on a whole
batch of problems at once: many starting points of one fit, or every bootstrap replicate (one weight vector
per replicate over the same observations). Parameters are (theta, s = log sigma).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import log_ndtr

HALF_LOG_2PI = 0.5 * np.log(2 * np.pi)


@dataclass(frozen=True)
class Obs:
    """Observations for one fit: x (n,) and the log-scale bracket [lo, hi] (n,) of each log y*."""

    x: np.ndarray
    lo: np.ndarray
    hi: np.ndarray

    @property
    def n(self) -> int:
        return len(self.x)

    @property
    def exact(self) -> np.ndarray:
        return self.lo == self.hi

    def subset(self, idx: np.ndarray) -> Obs:
        return Obs(self.x[idx], self.lo[idx], self.hi[idx])

    def compress(self) -> tuple[Obs, np.ndarray]:
        """The distinct (x, lo, hi) rows and, per original row, the index of its distinct row: a weighted
        fit over the distinct rows is the same fit (many units share a bracket on a grid)."""
        uniq, inv = np.unique(np.column_stack([self.x, self.lo, self.hi]), axis=0, return_inverse=True)
        return Obs(uniq[:, 0], uniq[:, 1], uniq[:, 2]), inv.ravel()

    def pseudo(self) -> np.ndarray:
        """A rough point value per observation, only for starting points: midpoint, or half a unit past the
        bound of a censored one."""
        mid = 0.5 * (self.lo + self.hi)
        return np.where(np.isinf(self.lo), self.hi - 0.5, np.where(np.isinf(self.hi), self.lo + 0.5, mid))


@dataclass
class Batch:
    """Result of maximize: per problem the parameters (P, q), log-likelihood (P,), projected gradient
    inf-norm (P,), whether it converged (P,) and the number of iterations used."""

    params: np.ndarray
    loglik: np.ndarray
    grad_norm: np.ndarray
    converged: np.ndarray
    n_iter: int


def _interval_terms(u: np.ndarray, v: np.ndarray):
    """log P(u < Z < v) and its partial derivatives l_u, l_v, l_uu, l_uv, l_vv (u < v, +-inf allowed)."""
    upper = u > 0
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        # P = Phi(v) - Phi(u), computed in the tail where it keeps its digits: for u > 0 as
        # Phi(-u) - Phi(-v) (survival functions), else as Phi(v) - Phi(u); two log_ndtr calls either way
        p1 = log_ndtr(np.where(upper, -u, v))
        p2 = log_ndtr(np.where(upper, -v, u))
        logp = p1 + np.log(-np.expm1(p2 - p1))
        ru = np.exp(-0.5 * u * u - HALF_LOG_2PI - logp)  # phi(u) / P, 0 at u = -inf
        rv = np.exp(-0.5 * v * v - HALF_LOG_2PI - logp)
    uf = np.where(np.isfinite(u), u, 0.0)  # every u-term carries phi(u) = 0 there
    vf = np.where(np.isfinite(v), v, 0.0)
    return logp, -ru, rv, uf * ru - ru * ru, ru * rv, -vf * rv - rv * rv, uf, vf


def _per_obs(law, params: np.ndarray, obs: Obs, order: int):
    """Per-observation log-likelihood (P, n) and, for order 2, its derivatives with respect to mu and s:
    g_mu, g_s, h_mumu, h_mus, h_ss (each (P, n)), plus mu's Jacobian J."""
    theta, s = params[:, :-1], params[:, -1:]
    isig = np.exp(-s)  # (P, 1)
    mu, J = law.mu_jac(theta, obs.x)
    P, n = mu.shape
    ex = obs.exact
    ll = np.empty((P, n))
    d = [np.empty((P, n)) for _ in range(5)] if order else None
    if ex.any():
        r = (obs.lo[ex] - mu[:, ex]) * isig
        ll[:, ex] = -0.5 * r * r - s - HALF_LOG_2PI
        if order:
            d[0][:, ex] = r * isig
            d[1][:, ex] = r * r - 1
            d[2][:, ex] = -(isig * isig)
            d[3][:, ex] = -2 * r * isig
            d[4][:, ex] = -2 * r * r
    ci = ~ex
    if ci.any():
        u = (obs.lo[ci] - mu[:, ci]) * isig
        v = (obs.hi[ci] - mu[:, ci]) * isig
        logp, lu, lv, luu, luv, lvv, uf, vf = _interval_terms(u, v)
        ll[:, ci] = logp
        if order:
            d[0][:, ci] = -(lu + lv) * isig
            d[1][:, ci] = -(lu * uf + lv * vf)
            d[2][:, ci] = (luu + 2 * luv + lvv) * isig * isig
            d[3][:, ci] = (lu + lv + luu * uf + luv * (uf + vf) + lvv * vf) * isig
            d[4][:, ci] = luu * uf * uf + 2 * luv * uf * vf + lvv * vf * vf + lu * uf + lv * vf
    return ll, d, J, theta


def loglik_terms(law, params: np.ndarray, obs: Obs) -> np.ndarray:
    """Per-observation log-likelihood contributions (n,) at one parameter vector (for the Vuong test)."""
    ll, _, _, _ = _per_obs(law, np.atleast_2d(params), obs, order=0)
    return ll[0]


def observed_information(law, theta: np.ndarray, obs: Obs) -> np.ndarray:
    """Minus the Hessian of the log-likelihood at one parameter vector (q, q), for Wald standard errors."""
    _, _, H = _evaluate(law, np.atleast_2d(theta), obs, np.ones((1, obs.n)))
    return -H[0]


def _evaluate(law, params: np.ndarray, obs: Obs, W: np.ndarray, order: int = 2):
    """Weighted log-likelihood (P,), gradient (P, q) and Hessian (P, q, q); W is (P, n) or (1, n)."""
    ll, d, J, theta = _per_obs(law, params, obs, order)
    with np.errstate(invalid="ignore"):
        f = np.sum(W * ll, axis=1)
    if not order:
        return f, None, None
    g_mu, g_s, h_mm, h_ms, h_ss = (W * a for a in d)
    P, q = params.shape
    p = q - 1
    G = np.empty((P, q))
    H = np.empty((P, q, q))
    if J.ndim == 2:  # linear law: J (n, p) shared by all problems
        G[:, :p] = g_mu @ J
        H[:, :p, :p] = (h_mm @ (J[:, :, None] * J[:, None, :]).reshape(len(J), p * p)).reshape(P, p, p)
        H[:, :p, p] = h_ms @ J
    else:  # J (P, n, p)
        G[:, :p] = np.einsum("pn,pnk->pk", g_mu, J)
        H[:, :p, :p] = np.matmul((J * h_mm[:, :, None]).transpose(0, 2, 1), J)
        H[:, :p, p] = np.einsum("pn,pnk->pk", h_ms, J)
        H[:, :p, :p] += law.hess(theta, obs.x, g_mu)  # the term from mu's own curvature
    G[:, p] = g_s.sum(axis=1)
    H[:, p, :p] = H[:, :p, p]
    H[:, p, p] = h_ss.sum(axis=1)
    return f, G, H


def _blocked(params, G, lower, upper, fixed):
    """Coordinates that may not move: fixed ones, and those at a bound with the gradient pointing out."""
    return fixed[None, :] | ((params <= lower) & (G < 0)) | ((params >= upper) & (G > 0))


def _projected_grad_norm(law, params: np.ndarray, G: np.ndarray, fixed: np.ndarray) -> np.ndarray:
    """Largest entry of the gradient over the coordinates free to move, per problem (inf where NaN)."""
    pg = np.abs(np.where(_blocked(params, G, law.lower, law.upper, fixed), 0.0, G))
    return np.nan_to_num(pg.max(axis=1), nan=np.inf)


def _newton_step(law, params, G, H, lam, fixed) -> np.ndarray:
    """The candidate of one damped Newton step on |Hessian| (eigenvalues made positive, so the step goes
    uphill) over the free coordinates, damped by lam times the largest eigenvalue, clipped to the bounds."""
    blk = _blocked(params, G, law.lower, law.upper, fixed)
    free = (~blk).astype(float)
    g = np.where(blk, 0.0, G)
    g = np.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0)
    Hn = np.nan_to_num(-H) * free[:, :, None] * free[:, None, :] + np.eye(params.shape[1]) * blk[:, None, :]
    e, V = np.linalg.eigh(Hn)
    ae = np.abs(e)
    damp = lam[:, None] * np.maximum(ae.max(axis=1, keepdims=True), 1e-12)
    step = np.einsum("pij,pj->pi", V, np.einsum("pji,pj->pi", V, g) / (ae + damp))
    step *= free
    return np.clip(params + step, law.lower, law.upper)


def maximize(
    law,
    obs: Obs,
    starts: np.ndarray,
    W: np.ndarray | None = None,
    fixed: np.ndarray | None = None,
    max_iter: int = 200,
    gtol: float = 1e-8,
    accept_gtol: float = 1e-5,
) -> Batch:
    """Maximize the censored log-likelihood from each row of starts (P, q) (q = law params + log sigma).

    W: observation weights (P, n) (bootstrap counts), or (n,) shared, or None (all ones).
    fixed: (q,) bool, parameters held at their start value (profile likelihood).
    Iteration stops when the projected gradient's largest entry falls below gtol * (1 + total weight) or
    the damping has grown past 1e10 (no uphill step left at floating-point precision); `converged` then
    requires a finite log-likelihood and that entry below accept_gtol * (1 + total weight). The step is
    damped Newton on |Hessian| (_newton_step), so it always goes uphill; a step that does not raise the
    log-likelihood is refused and the damping raised.
    """
    params = np.clip(np.array(starts, dtype=float), law.lower, law.upper)
    P, q = params.shape
    W = np.ones((1, obs.n)) if W is None else np.atleast_2d(np.asarray(W, dtype=float))
    fixed = np.zeros(q, bool) if fixed is None else np.asarray(fixed, bool)
    total = np.broadcast_to(W.sum(axis=1), (P,))
    f, G, H = _evaluate(law, params, obs, W)
    f = np.where(np.isfinite(f), f, -np.inf)
    lam = np.full(P, 1e-3)
    done = np.zeros(P, bool)
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007 (it is reported)
        act = np.flatnonzero(~done)
        if act.size == 0:
            break
        cand = _newton_step(law, params[act], G[act], H[act], lam[act], fixed)
        fc, Gc, Hc = _evaluate(law, cand, obs, W if W.shape[0] == 1 else W[act])
        ok = np.isfinite(fc) & (fc >= f[act])
        acc = act[ok]
        params[acc], f[acc], G[acc], H[acc] = cand[ok], fc[ok], Gc[ok], Hc[ok]
        lam[acc] = np.maximum(lam[acc] * 0.2, 1e-12)
        lam[act[~ok]] *= 10.0
        pgn = _projected_grad_norm(law, params[act], G[act], fixed)
        done[act] = (np.isfinite(f[act]) & (pgn < gtol * (1.0 + total[act]))) | (lam[act] > 1e10)
    pgn = _projected_grad_norm(law, params, G, fixed)
    conv = np.isfinite(f) & (pgn < accept_gtol * (1.0 + total))
    return Batch(params, f, pgn, conv, it)
