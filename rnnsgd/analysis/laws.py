"""Candidate laws mu(x; theta) for log y* (docs/claims.md, "From thresholds to a verdict").

    power          a + k log x
    exponential    a + c x
    quasi          a + k log x + q (log x)^2                  (x^(k + q log x): L^(log L) is k = 0, q = 1)
    encompassing   a + k log x + c x                          (power law at c = 0, exponential at k = 0)
    power_offset   log(e^b + e^(a + k log x))                 (y* = floor + A x^k)
    exp_offset     log(e^b + e^(a + c x))                     (y* = floor + A e^(c x))
    boxcox         a + k (x^theta - 1) / theta                (theta -> 0 power law, theta = 1 exponential)

The offsets are floors on y* (a number of samples the task needs at any length), added on the natural scale.
That form is chosen because it is identifiable for both families: a shift in x, a + c (x + x0), is absorbed by
a in the exponential, and a + k log(x + x0) turns into an exponential as x0 grows, so it would blur exactly
the distinction the fits are for. The floor is nested (b -> -inf gives the plain law, reached in practice at
the lower bound of b, where the likelihood is flat).

Box-Cox is fitted on z = x / g (g the geometric mean of the fit's x values) for conditioning, then reported
in the raw form above; theta is the same in both.

Each law gives mu and its Jacobian J for a batch of parameter rows (P, p): J is (n, p) when the law is linear
in theta, else (P, n, p), with `hess` the curvature term sum_i c_i d2 mu_i / dtheta2 (P, p, p).
"""

from __future__ import annotations

import numpy as np

LOG_SIGMA_BOUNDS = (-7.0, 3.0)  # sigma of log y* between 1e-3 and 20
COEF_BOUND = 1e4  # linear coefficients: only to stop a degenerate fit running away
FAMILY = {
    "power": "polynomial",
    "power_offset": "polynomial",
    "exponential": "exponential",
    "exp_offset": "exponential",
    "quasi": "quasi-polynomial",
    "encompassing": "encompassing",
    "boxcox": "encompassing",
}
LAWS = ("power", "exponential", "power_offset", "exp_offset", "quasi", "boxcox", "encompassing")


def _ols_start(D: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    beta = np.linalg.lstsq(D, y, rcond=None)[0]
    sd = float(np.std(y - D @ beta)) if len(y) > D.shape[1] else 0.5
    return beta, float(np.log(np.clip(sd, 0.05, 5.0)))


class Law:
    name: str
    params: tuple[str, ...]
    linear = False

    def __init__(self, x_ref: np.ndarray):
        self.family = FAMILY[self.name]
        p = len(self.params)
        self.lower = np.r_[np.full(p, -COEF_BOUND), LOG_SIGMA_BOUNDS[0]]
        self.upper = np.r_[np.full(p, COEF_BOUND), LOG_SIGMA_BOUNDS[1]]

    @property
    def q(self) -> int:
        """Number of fitted parameters, sigma included (the k in AICc and BIC)."""
        return len(self.params) + 1

    def to_raw(self, theta: np.ndarray) -> np.ndarray:
        """Parameters as reported (P, p); the identity except for Box-Cox."""
        return theta

    def hess(self, theta, x, c):
        raise NotImplementedError


class LinearLaw(Law):
    """mu = D(x) @ theta: the log-likelihood has one maximum (it is concave in (theta/sigma, 1/sigma))."""

    linear = True

    def design(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def mu_jac(self, theta, x):
        D = self.design(x)
        return theta @ D.T, D

    def starts(self, rng: np.random.Generator, size: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        D = self.design(x)
        beta, s = _ols_start(D, y)
        sd = np.std(D, axis=0)
        # perturb each coefficient by about half itself plus what moves mu by ~0.3 over the data
        scale = 0.5 * np.abs(beta) + np.where(sd > 0, 0.3 / np.where(sd > 0, sd, 1.0), 1.0)
        out = np.empty((size, self.q))
        out[:, :-1] = beta + rng.normal(size=(size, len(beta))) * scale
        out[:, -1] = s + rng.normal(scale=0.7, size=size)
        out[0] = np.r_[beta, s]
        return out


class Power(LinearLaw):
    name, params = "power", ("a", "k")

    def design(self, x):
        return np.column_stack([np.ones_like(x), np.log(x)])


class Exponential(LinearLaw):
    name, params = "exponential", ("a", "c")

    def design(self, x):
        return np.column_stack([np.ones_like(x), x])


class Quasi(LinearLaw):
    name, params = "quasi", ("a", "k", "q")

    def design(self, x):
        lx = np.log(x)
        return np.column_stack([np.ones_like(x), lx, lx * lx])


class Encompassing(LinearLaw):
    name, params = "encompassing", ("a", "k", "c")

    def design(self, x):
        return np.column_stack([np.ones_like(x), np.log(x), x])


class Floor(Law):
    """mu = logaddexp(b, a + k h(x)); dmu = w (1, h, 0) + (1 - w)(0, 0, 1), w = sigmoid(a + k h - b)."""

    def h(self, x):
        raise NotImplementedError

    def __init__(self, x_ref):
        super().__init__(x_ref)
        self.lower[2], self.upper[2] = -50.0, 50.0  # b: a floor of e^-50 is no floor

    def mu_jac(self, theta, x):
        h = self.h(x)
        eta = theta[:, :1] + theta[:, 1:2] * h  # (P, n)
        mu = np.logaddexp(theta[:, 2:3], eta)
        w = np.exp(eta - mu)
        J = np.stack([w, w * h, 1.0 - w], axis=-1)
        return mu, J

    def hess(self, theta, x, c):
        h = self.h(x)
        eta = theta[:, :1] + theta[:, 1:2] * h
        w = np.exp(eta - np.logaddexp(theta[:, 2:3], eta))
        g = np.column_stack([np.ones_like(h), h, -np.ones_like(h)])  # (n, 3)
        cw = c * w * (1.0 - w)
        return (cw @ (g[:, :, None] * g[:, None, :]).reshape(len(h), 9)).reshape(-1, 3, 3)

    def starts(self, rng, size, x, y):
        D = np.column_stack([np.ones_like(x), self.h(x)])
        beta, s = _ols_start(D, y)
        out = np.empty((size, 4))
        out[:, :2] = beta + rng.normal(size=(size, 2)) * 0.5 * (np.abs(beta) + 0.1)
        out[:, 2] = rng.uniform(y.min() - 4.0, y.max(), size=size)
        out[:, 3] = s + rng.normal(scale=0.7, size=size)
        out[0] = np.r_[beta, y.min() - 10.0, s]  # the plain law
        return out


class PowerOffset(Floor):
    name, params = "power_offset", ("a", "k", "b")

    def h(self, x):
        return np.log(x)


class ExpOffset(Floor):
    name, params = "exp_offset", ("a", "c", "b")

    def h(self, x):
        return x


def boxcox_f(t: np.ndarray, s: np.ndarray):
    """f = (e^(t s) - 1) / t and its first two t-derivatives, stable at t s -> 0 (power series there).

    t (P, 1), s (n,) -> three (P, n) arrays. f -> s as t -> 0, which is the log x of the power law.
    """
    ts = t * s
    small = np.abs(ts) < 0.05  # closed form loses ~eps / (t s)^3 in f_tt: fine above 0.05
    tt = np.where(np.abs(t) < 1e-8, 1.0, t)  # there |t s| is small and the series below is used
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        E = np.exp(ts)
        em1 = np.expm1(ts)
        f = em1 / tt
        ft = (s * E * tt - em1) / tt**2
        ftt = (s * s * E * tt * tt - 2 * s * E * tt + 2 * em1) / tt**3
    if small.any():
        # f = sum_{n>=1} t^(n-1) s^n / n!; with |t s| < 0.05, 12 terms reach double precision
        tb, sb = np.broadcast_to(t, ts.shape)[small], np.broadcast_to(s, ts.shape)[small]
        fs, fts, ftts = np.zeros_like(tb), np.zeros_like(tb), np.zeros_like(tb)
        cn = np.ones_like(sb)
        tpow = [np.ones_like(tb)]
        for _ in range(12):
            tpow.append(tpow[-1] * tb)
        for k in range(1, 13):
            cn = cn * sb / k  # s^k / k!
            fs += cn * tpow[k - 1]
            if k >= 2:
                fts += (k - 1) * cn * tpow[k - 2]
            if k >= 3:
                ftts += (k - 1) * (k - 2) * cn * tpow[k - 3]
        f[small], ft[small], ftt[small] = fs, fts, ftts
    return f, ft, ftt


class BoxCox(Law):
    name, params = "boxcox", ("a", "k", "theta")

    def __init__(self, x_ref):
        super().__init__(x_ref)
        self.g = float(np.exp(np.mean(np.log(np.unique(x_ref)))))
        self.lower[2], self.upper[2] = -3.0, 4.0

    def mu_jac(self, theta, x):
        f, ft, _ = boxcox_f(theta[:, 2:3], np.log(x / self.g))
        a, k = theta[:, :1], theta[:, 1:2]
        J = np.stack([np.ones_like(f), f, k * ft], axis=-1)
        return a + k * f, J

    def hess(self, theta, x, c):
        _, ft, ftt = boxcox_f(theta[:, 2:3], np.log(x / self.g))
        H = np.zeros((len(theta), 3, 3))
        H[:, 1, 2] = H[:, 2, 1] = np.sum(c * ft, axis=1)
        H[:, 2, 2] = theta[:, 1] * np.sum(c * ftt, axis=1)
        return H

    def ols_at(self, t: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """(a, k) by least squares of y on (1, f(t)) for each t (T,) -> (T, 2); the profile's start."""
        f = boxcox_f(np.asarray(t, dtype=float)[:, None], np.log(x / self.g))[0]  # (T, n)
        fc = f - f.mean(axis=1, keepdims=True)
        k = (fc @ (y - y.mean())) / np.maximum((fc * fc).sum(axis=1), 1e-300)
        return np.column_stack([y.mean() - k * f.mean(axis=1), k])

    def starts(self, rng, size, x, y):
        out = np.empty((size, 4))
        out[:, 2] = rng.uniform(-1.5, 2.5, size=size)
        out[:3, 2] = (0.0, 0.5, 1.0)[:size]
        out[:, :2] = self.ols_at(out[:, 2], x, y)
        _, s = _ols_start(np.column_stack([np.ones_like(x), np.log(x)]), y)
        out[:, 3] = s + rng.normal(scale=0.5, size=size)
        out[:3, 3] = s
        return out

    def to_raw(self, theta):
        """a + k ((x/g)^t - 1)/t = [a + k ((1/g)^t - 1)/t] + [k g^-t] (x^t - 1)/t."""
        t = theta[:, 2:3]
        f_inv_g = boxcox_f(t, np.array([-np.log(self.g)]))[0][:, 0]
        raw = theta.copy()
        raw[:, 0] = theta[:, 0] + theta[:, 1] * f_inv_g
        raw[:, 1] = theta[:, 1] * np.exp(-theta[:, 2] * np.log(self.g))
        return raw


_REGISTRY = {c.name: c for c in (Power, Exponential, Quasi, Encompassing, PowerOffset, ExpOffset, BoxCox)}


def make_law(name: str, x_ref: np.ndarray) -> Law:
    """The law called name, set up for data at x values x_ref (Box-Cox uses them to scale x)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown law {name!r}; choose from {sorted(_REGISTRY)}")
    return _REGISTRY[name](np.asarray(x_ref, dtype=float))


def mu_raw(name: str, params: dict[str, float], x: np.ndarray) -> np.ndarray:
    """log y* predicted by law `name` at x, from its reported (raw) parameters, e.g. a row of the table that
    select_scaling_law returns: exp(mu_raw(...)) is the fitted median y*, for overlays on plots."""
    x = np.asarray(x, dtype=float)
    p = params
    lx = np.log(x)
    if name == "power":
        return p["a"] + p["k"] * lx
    if name == "exponential":
        return p["a"] + p["c"] * x
    if name == "quasi":
        return p["a"] + p["k"] * lx + p["q"] * lx * lx
    if name == "encompassing":
        return p["a"] + p["k"] * lx + p["c"] * x
    if name == "power_offset":
        return np.logaddexp(p["b"], p["a"] + p["k"] * lx)
    if name == "exp_offset":
        return np.logaddexp(p["b"], p["a"] + p["c"] * x)
    if name == "boxcox":
        return p["a"] + p["k"] * boxcox_f(np.array([[p["theta"]]]), lx)[0][0]
    raise ValueError(f"unknown law {name!r}; choose from {sorted(_REGISTRY)}")
