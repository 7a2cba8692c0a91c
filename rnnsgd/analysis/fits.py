"""Scaling-law fits and model selection (docs/claims.md, "From thresholds to a verdict").

Public:
    select_scaling_law   N*(L) (or T*(L)): censored ML fits of the candidate laws, AICc/BIC, Vuong, LR test,
                         Box-Cox theta, extrapolation, hierarchical bootstrap, and a verdict (ScalingLawFit)
    tost_flat_slope      E2: is the slope of log N* on log m inside +-bound (TOST at level alpha)?
    aggregate_seeds      mean, sd, n and t-based 95% CI per group
    ols_coef_ci          least squares with a t-based CI of the first coefficient
    fit_additive_power_law, fit_learning_curve   (additive.py) the continuous companion fits

How a threshold enters the likelihood (censored.py has the terms). A unit whose smoothed curve crosses the
level between grid points x[j-1] and x[j] contributes P(log x[j-1] < log y* < log x[j]): interval-censored on
its bracket, because the log-log interpolated x_star is only as good as the assumption that the curve is a
straight line between two grid points, while the bracket is what the data say. A unit already below the level
at the smallest grid point is left-censored there (P(log y* < log x_min)); one that never gets there is
right-censored at the largest (P(log y* > log x_max)). Pass censoring="exact" to use log x_star as an exact
value for the crossings instead (censored units stay censored).

Inputs: select_scaling_law and tost_flat_slope take one of three frames, told apart by their columns:
    per-run rows      columns x, curve_x, y and the unit columns; pass `level`: thresholds are computed here,
                      per unit, with thresholds.threshold(curve_x=curve_x, by=(x,), unit=(teacher, run))
    threshold rows    what thresholds.threshold returns (columns lo, hi, censor; x as a column)
    point values      no lo/hi, no level: y holds y* itself (> 0), each row an exact observation
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from .additive import PowerLawFit, fit_additive_power_law, fit_learning_curve
from .bootstrap import hierarchical_weights, percentile_ci
from .censored import Obs, loglik_terms, maximize, observed_information
from .laws import LAWS, Law, make_law
from .thresholds import threshold

__all__ = [
    "LAWS",
    "PowerLawFit",
    "ScalingLawFit",
    "aggregate_seeds",
    "fit_additive_power_law",
    "fit_learning_curve",
    "ols_coef_ci",
    "select_scaling_law",
    "scaling_observations",
    "tost_flat_slope",
]

PARAMS = ("a", "k", "c", "q", "b", "theta", "sigma")
TABLE_COLUMNS = (
    "law",
    "family",
    "n_params",
    "converged",
    "grad_norm",
    "frac_at_best",
    "loglik",
    "aicc",
    "bic",
    "delta_aicc",
    "akaike_weight",
    "p_win",
    "boot_ok",
    *(p + suf for p in PARAMS for suf in ("", "_lo", "_hi")),
    "theta_profile_lo",
    "theta_profile_hi",
    "extrap_nll",
    "extrap_rmse",
    "note",
    "verdict",
)
VERDICT_RULE = (
    "polynomial: bootstrap P(power loglik > exponential loglik) >= p_win, Vuong z >= 1.645 (one-sided 5%) "
    "for power over exponential, and no sign of super-polynomial growth: neither c in a + k log x + c x nor "
    "q in a + k log x + q (log x)^2 is positive at one-sided 1% (signed-root likelihood ratio). "
    "exponential: bootstrap P(exponential loglik > power loglik) >= p_win and Vuong z <= -1.645. "
    "Otherwise inconclusive; 'insufficient data' when the x grid spans less than min_span; no verdict "
    "without the bootstrap."
)
SUPERPOLY_ALPHA = 0.01
_WHAT = "scaling fit"  # how the input errors of scaling_observations start
# largest / smallest x a law verdict needs: the smallest span at which E0 (`rnnsgd analyze --validate`), at
# the noise measured on sweeps/e1.yaml's cpu variant with 9 units a cell, tells a power law from an
# exponential right >= 95% of the time (docs/claims.md; the table: docs/findings/e0.txt)
DEFAULT_MIN_SPAN = 8.0
# C2's band: a slope of log N* on log m inside +-DEFAULT_TOST_BOUND counts as flat (docs/claims.md, E2)
DEFAULT_TOST_BOUND = 0.1


@dataclass
class Observations:
    """One fit's data: obs (log-scale brackets per unit), point (log x_star or log y*, NaN if censored),
    cluster and cell ids for the hierarchical bootstrap, the threshold level if one was applied, and the
    threshold rows the brackets were read from (thresholds.threshold's columns)."""

    obs: Obs
    point: np.ndarray
    cluster: np.ndarray
    cell: np.ndarray
    level: float | None
    thresholds: pd.DataFrame | None = None

    @property
    def n_left(self) -> int:
        return int(np.sum(np.isinf(self.obs.lo)))

    @property
    def n_right(self) -> int:
        return int(np.sum(np.isinf(self.obs.hi)))

    def observed_x(self) -> np.ndarray:
        """Distinct x values with at least one uncensored (crossing or exact) observation."""
        o = self.obs
        return np.unique(o.x[np.isfinite(o.lo) & np.isfinite(o.hi)])


def _need(df: pd.DataFrame, cols: Sequence[str], what: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: missing columns {missing}; have {sorted(map(str, df.columns))}")


def scaling_observations(
    df: pd.DataFrame,
    x: str = "data.L",
    y: str = "test/excess_risk",
    *,
    level: float | None = None,
    curve_x: str = "data.N",
    teacher: str | None = "seed.teacher",
    run: str | None = "seed.run",
    censoring: str = "interval",
) -> Observations:
    """Turn any of the three input frames (module docstring) into censored observations of log y*."""
    what = _WHAT
    if censoring not in ("interval", "exact"):
        raise ValueError(f"{what}: censoring must be 'interval' or 'exact', got {censoring!r}")
    if len(df) == 0:
        raise ValueError(f"{what}: empty frame")
    th = _threshold_rows(df, x, y, level, curve_x, teacher, run)
    _need(th, [x], what)
    if teacher is not None:
        _need(th, [teacher], f"{what} (pass teacher=None to resample seeds only)")
    xv = th[x].to_numpy(dtype=float)
    if not np.all(np.isfinite(xv) & (xv > 0)):
        raise ValueError(f"{what}: {x!r} must be finite and > 0 (the laws use log x)")
    lo, hi, point = _log_brackets(th, censoring)
    cluster = th[teacher].to_numpy() if teacher is not None else np.zeros(len(th), int)
    lev = float(th["level"].iloc[0]) if "level" in th.columns else level
    return Observations(Obs(xv, lo, hi), point, cluster, xv.copy(), lev, th)


def _threshold_rows(df, x, y, level, curve_x, teacher, run) -> pd.DataFrame:
    """Threshold rows from any of the three input frames: as given, computed per unit, or point values."""
    what = _WHAT
    if {"lo", "hi", "censor"} <= set(df.columns):
        if "level" in df.columns and df["level"].nunique() > 1:
            raise ValueError(f"{what}: thresholds at several levels {sorted(df['level'].unique())}; fit one")
        return df
    if level is None:
        return _point_rows(df, x, y, teacher)
    if np.ndim(level) != 0:
        raise ValueError(f"{what}: one level per fit, got {level!r}")
    unit = [c for c in (teacher, run) if c is not None]
    _need(df, [x, curve_x, y, *unit], what)
    return threshold(df, curve_x=curve_x, y=y, level=float(level), by=(x,), unit=unit)


def _point_rows(df: pd.DataFrame, x: str, y: str, teacher: str | None) -> pd.DataFrame:
    """Point values of y* as threshold rows: exact observations, lo = hi = x_star = y*."""
    what = _WHAT
    _need(df, [x, y], what)
    yv = df[y].to_numpy(dtype=float)
    if not np.all(np.isfinite(yv) & (yv > 0)):
        raise ValueError(f"{what}: {y!r} must be finite and > 0 to be used as y* (or pass level=)")
    th = pd.DataFrame({x: df[x].to_numpy(), "lo": yv, "hi": yv, "censor": "none", "x_star": yv})
    if teacher is not None and teacher in df.columns:
        th[teacher] = df[teacher].to_numpy()
    return th


def _log_brackets(th: pd.DataFrame, censoring: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lo, hi, point) on the log scale: the bracket of each unit, and log x_star where it crossed (NaN
    where censored); censoring="exact" shrinks the bracket of a crossing to its point."""
    lo_raw, hi_raw = th["lo"].to_numpy(dtype=float), th["hi"].to_numpy(dtype=float)
    with np.errstate(divide="ignore"):
        lo, hi = np.log(lo_raw), np.log(hi_raw)
    x_star = th["x_star"].to_numpy(dtype=float) if "x_star" in th.columns else np.full(len(th), np.nan)
    observed = (th["censor"].to_numpy() == "none") & np.isfinite(lo) & np.isfinite(hi)
    point = np.where(observed, np.log(np.where(observed, x_star, 1.0)), np.nan)
    if censoring == "exact":
        ok = observed & np.isfinite(point)
        lo, hi = np.where(ok, point, lo), np.where(ok, point, hi)
    if np.any(np.isinf(lo) & np.isinf(hi)) or np.any(np.isnan(lo) | np.isnan(hi)) or np.any(lo > hi):
        raise ValueError(f"{_WHAT}: a threshold bracket is empty, unbounded on both sides or NaN")
    return lo, hi, point


def _check(data: Observations, what: str) -> None:
    """The hard errors: inputs from which no honest number can be computed."""
    xs = np.unique(data.obs.x)
    if len(xs) < 3:
        raise ValueError(f"{what}: need >= 3 distinct x values, got {len(xs)} ({xs.tolist()})")
    seen = data.observed_x()
    if len(seen) < 2:
        raise ValueError(
            f"{what}: need uncensored thresholds at >= 2 distinct x values, got {len(seen)} "
            f"({data.n_left} left- and {data.n_right} right-censored of {data.obs.n}); widen the grid"
        )


@dataclass
class LawFit:
    """Best of many starts for one law: theta as fitted (incl. log sigma), log-likelihood, convergence."""

    law: Law
    theta: np.ndarray
    loglik: float
    converged: bool
    grad_norm: float
    frac_at_best: float  # share of starts that reached the best log-likelihood (a landscape diagnostic)


def _compressed_weights(obs: Obs, W: np.ndarray) -> tuple[Obs, np.ndarray]:
    """Weights (B, n) over units -> the distinct observation rows and weights (B, n_distinct) over them."""
    oc, inv = obs.compress()
    onehot = np.zeros((obs.n, oc.n))
    onehot[np.arange(obs.n), inv] = 1.0
    return oc, np.atleast_2d(W) @ onehot


def _fit(law: Law, obs: Obs, rng: np.random.Generator, n_starts: int) -> LawFit:
    oc, w = _compressed_weights(obs, np.ones(obs.n))
    b = maximize(law, oc, law.starts(rng, n_starts, obs.x, obs.pseudo()), W=w)
    score = np.where(b.converged, b.loglik, -np.inf)
    i = int(np.argmax(score)) if b.converged.any() else int(np.argmax(np.nan_to_num(b.loglik, nan=-np.inf)))
    at_best = np.abs(b.loglik - b.loglik[i]) <= 1e-6 * (1 + abs(b.loglik[i]))
    return LawFit(
        law,
        b.params[i],
        float(b.loglik[i]),
        bool(b.converged[i]),
        float(b.grad_norm[i]),
        float(at_best.mean()),
    )


def _boot(law: Law, obs: Obs, W: np.ndarray, fit: LawFit, rng: np.random.Generator, chunk: int = 4096):
    """Refit law on every bootstrap weight vector (B, n): (params (B, q), loglik (B,)), NaN where no start
    converged. Warm-started from the full-data fit; laws that are not linear also get 3 random starts,
    since their likelihood can have more than one maximum (a linear law's has one)."""
    B = len(W)
    S = 1 if law.linear else 4
    st = np.repeat(fit.theta[None, :], B * S, axis=0).reshape(B, S, -1)
    if S > 1:
        st[:, 1:] = law.starts(rng, B * (S - 1), obs.x, obs.pseudo()).reshape(B, S - 1, -1)
    st = st.reshape(B * S, -1)
    Wr = np.repeat(W, S, axis=0)
    params, ll, conv = np.empty_like(st), np.empty(B * S), np.empty(B * S, bool)
    for i in range(0, B * S, chunk):
        r = slice(i, i + chunk)
        b = maximize(law, obs, st[r], Wr[r])
        params[r], ll[r], conv[r] = b.params, b.loglik, b.converged
    ll = np.where(conv, ll, -np.inf).reshape(B, S)
    best = np.argmax(ll, axis=1)
    out_ll = ll[np.arange(B), best]
    out_p = params.reshape(B, S, -1)[np.arange(B), best]
    bad = ~np.isfinite(out_ll)
    out_ll[bad] = np.nan
    out_p[bad] = np.nan
    return out_p, out_ll


def _aicc(loglik, q, n):
    n = np.asarray(n, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        corr = np.where(n - q - 1 > 0, 2.0 * q * (q + 1) / (n - q - 1), np.nan)
    return -2.0 * loglik + 2.0 * q + corr


def _reported(fit_theta: np.ndarray, law: Law) -> dict[str, np.ndarray]:
    """Reported parameters (raw form, sigma instead of log sigma) for rows of fitted theta (P, q)."""
    th = np.atleast_2d(fit_theta)
    raw = law.to_raw(th[:, :-1])
    out = {name: raw[:, j] for j, name in enumerate(law.params)}
    out["sigma"] = np.exp(th[:, -1])
    return out


def vuong(ll_a: np.ndarray, ll_b: np.ndarray, q_a: int, q_b: int) -> tuple[float, float]:
    """Vuong (1989) z for non-nested models from per-observation log-likelihoods at each MLE, with the
    Schwarz correction for unequal parameter counts; z > 0 favours model a. Returns (z, two-sided p)."""
    m = ll_a - ll_b
    n = len(m)
    sd = np.std(m)
    if n < 2 or not np.isfinite(sd) or sd == 0:
        return float("nan"), float("nan")
    z = (m.sum() - 0.5 * (q_a - q_b) * np.log(n)) / (np.sqrt(n) * sd)
    return float(z), float(2 * stats.norm.sf(abs(z)))


def _lr(fits: dict[str, LawFit], big: str, small: str) -> tuple[float, float]:
    if big not in fits or small not in fits or not (fits[big].converged and fits[small].converged):
        return float("nan"), float("nan")
    stat = max(0.0, 2.0 * (fits[big].loglik - fits[small].loglik))
    return stat, float(stats.chi2.sf(stat, fits[big].law.q - fits[small].law.q))


def _boxcox_profile(law: Law, obs: Obs, fit: LawFit, level: float = 0.95):
    """Profile-likelihood CI for theta: {theta : 2 (l_max - l_p(theta)) <= chi2_1(level)}. An end at the
    search edge (-2 or 3) is reported as -inf / inf: the data do not bound theta on that side."""
    grid = np.linspace(-2.0, 3.0, 251)
    st = np.column_stack([law.ols_at(grid, obs.x, obs.pseudo()), grid, np.full(len(grid), fit.theta[-1])])
    oc, w = _compressed_weights(obs, np.ones(obs.n))
    b = maximize(law, oc, st, W=w, fixed=np.array([False, False, True, False]))
    prof = np.where(b.converged, b.loglik, np.nan)
    lmax = max(fit.loglik, np.nanmax(prof))
    inside = 2 * (lmax - prof) <= stats.chi2.ppf(level, 1)
    if not inside.any():
        return float("nan"), float("nan")
    i0 = int(np.nanargmax(prof))
    lo_i, hi_i = i0, i0
    while lo_i > 0 and inside[lo_i - 1]:
        lo_i -= 1
    while hi_i < len(grid) - 1 and inside[hi_i + 1]:
        hi_i += 1
    crit = lmax - 0.5 * stats.chi2.ppf(level, 1)

    def edge(i_in, i_out):  # linear interpolation of the profile between an inside and an outside point
        p_in, p_out = prof[i_in], prof[i_out]
        if not np.isfinite(p_out):
            return grid[i_in]
        return grid[i_in] + (p_in - crit) / (p_in - p_out) * (grid[i_out] - grid[i_in])

    lo = -np.inf if lo_i == 0 else edge(lo_i, lo_i - 1)
    hi = np.inf if hi_i == len(grid) - 1 else edge(hi_i, hi_i + 1)
    return float(lo), float(hi)


def _extrapolation(names, data: Observations, holdout: int, rng, n_starts: int):
    """Fit each law on x <= cutoff, predict the held-out largest x values. Per law: mean negative
    predictive log-likelihood of the held-out units (censored ones included, so it is a proper score), and
    the RMSE of log x_star over held-out uncensored units (log scale; censored units have no x_star)."""
    xs = np.unique(data.obs.x)
    cutoff = xs[-holdout - 1]
    train = data.obs.x <= cutoff
    sub = Observations(data.obs.subset(train), data.point[train], data.cluster[train], data.cell[train], None)
    out = {}
    try:
        _check(sub, "extrapolation")
    except ValueError as e:
        return cutoff, {n: (np.nan, np.nan, str(e)) for n in names}
    test = data.obs.subset(~train)
    pt = data.point[~train]
    for name in names:
        law = make_law(name, sub.obs.x)
        if len(np.unique(sub.obs.x)) < len(law.params):
            out[name] = (np.nan, np.nan, "too few x values below the cutoff")
            continue
        f = _fit(law, sub.obs, rng, n_starts)
        if not f.converged:
            out[name] = (np.nan, np.nan, "fit below the cutoff did not converge")
            continue
        nll = -float(np.mean(loglik_terms(law, f.theta, test)))
        mu = law.mu_jac(f.theta[None, :-1], test.x)[0][0]
        ok = np.isfinite(pt)
        rmse = float(np.sqrt(np.mean((pt[ok] - mu[ok]) ** 2))) if ok.any() else np.nan
        out[name] = (nll, rmse, "")
    return cutoff, out


@dataclass(frozen=True, eq=False)
class ScalingLawFit:
    """What select_scaling_law returns: the per-law table, the thresholds it was fitted on, the model tests
    as plain numbers, the verdict and a summary of the data.

    table, one row per law, its columns:
        law                    the law's name (laws.py)
        family                 polynomial, exponential, quasi-polynomial or encompassing
        n_params               fitted parameters, sigma included (the k of AICc and BIC)
        converged              whether the full-data fit converged
        grad_norm              projected gradient at the best start
        frac_at_best           share of starts that reached the best log-likelihood (a landscape diagnostic)
        loglik                 maximized log-likelihood (NaN when not converged)
        aicc, bic              information criteria
        delta_aicc             aicc minus the lowest aicc
        akaike_weight          exp(-delta_aicc / 2), normalized over the laws
        p_win                  bootstrap share of replicates the law wins by AICc
        boot_ok                share of bootstrap replicates whose refit converged
        a, k, c, q, b, theta   the law's parameters (laws.py; NaN where the law has none)
        sigma                  sd of log y* around the law
        {p}_lo, {p}_hi         95% percentile bootstrap CI of each parameter p above
        theta_profile_lo, _hi  profile-likelihood 95% CI of Box-Cox theta (boxcox row)
        extrap_nll, extrap_rmse  held-out predictive score and log-scale RMSE (_extrapolation)
        note                   why a law was not fitted or did not converge, in words
        verdict                the verdict, the same on every row
    thresholds: the threshold rows the fit read (thresholds.threshold's columns; point values of y* come as
    exact rows, lo = hi = x_star = y*).
    The tests: vuong_z, vuong_p (power over exponential), lr_{c,k,q}_stat / _p (c = 0 and k = 0 in
    encompassing, q = 0 in quasi), superpoly_c_p / superpoly_q_p (one-sided p that c, q > 0),
    p_power_beats_exp / p_exp_beats_power (bootstrap), boxcox_theta with its profile and bootstrap CIs,
    extrap_cutoff (largest x the extrapolation fits on). The data: n_obs, n_left_censored, n_right_censored,
    x_values, x_span, level, censoring, n_boot, n_starts. NaN where a test could not be computed.
    """

    table: pd.DataFrame = field(repr=False)
    thresholds: pd.DataFrame = field(repr=False)
    verdict: str
    verdict_reason: str
    p_power_beats_exp: float
    p_exp_beats_power: float
    vuong_z: float
    vuong_p: float
    lr_c_stat: float
    lr_c_p: float
    lr_k_stat: float
    lr_k_p: float
    lr_q_stat: float
    lr_q_p: float
    superpoly_c_p: float
    superpoly_q_p: float
    boxcox_theta: float
    boxcox_theta_ci: tuple[float, float]
    boxcox_theta_boot_ci: tuple[float, float]
    extrap_cutoff: float
    n_obs: int
    n_left_censored: int
    n_right_censored: int
    x_values: list[float]
    x_span: float
    level: float | None
    censoring: str
    n_boot: int
    n_starts: int

    @property
    def verdict_rule(self) -> str:
        return VERDICT_RULE


def select_scaling_law(
    df: pd.DataFrame,
    x: str = "data.L",
    y: str = "test/excess_risk",
    *,
    level: float | None = None,
    curve_x: str = "data.N",
    teacher: str | None = "seed.teacher",
    run: str | None = "seed.run",
    laws: Sequence[str] = LAWS,
    n_boot: int = 2000,
    n_starts: int = 128,
    holdout: int | None = None,
    censoring: str = "interval",
    min_span: float = DEFAULT_MIN_SPAN,
    p_win: float = 0.95,
    seed: int | np.random.Generator | None = 0,
) -> ScalingLawFit:
    """Which law does y*(x) follow? (docs/claims.md: C1 and E1.)

    df: per-run rows with `level` (thresholded here, per unit, so the bootstrap re-runs the whole
    pipeline), threshold rows, or point values of y* (module docstring). x: the column the laws are in
    (L). curve_x: the axis each run's curve is thresholded along (N) when df holds per-run rows.
    teacher / run: unit columns; teacher is the bootstrap's cluster (None: resample seeds only).
    n_boot: hierarchical bootstrap replicates (0 skips it, and then no verdict is given). n_starts: starting
    points per full-data fit (>= 100 as the spec asks). holdout: how many of the largest x values the
    extrapolation check holds out (default a third of them when there are >= 6, else none).

    Returns a ScalingLawFit (its docstring lists the table's columns and the tests).

    Raises ValueError, naming the problem, when no honest fit exists: missing columns, x <= 0, < 3 distinct
    x values, uncensored thresholds at < 2 distinct x values, several levels at once. A grid spanning less
    than min_span gives fits but verdict "insufficient data".
    """
    rng = np.random.default_rng(seed)
    names = _law_names(laws)
    data = scaling_observations(
        df, x, y, level=level, curve_x=curve_x, teacher=teacher, run=run, censoring=censoring
    )
    _check(data, "select_scaling_law")
    holdout = _holdout(holdout, data)
    fits, notes = _fit_laws(names, data.obs, rng, n_starts)
    boot, n_b = _bootstrap(fits, data, n_boot, rng)
    table = _law_table(names, fits, notes, boot, data.obs)
    tests = {**_win_probabilities(table, fits, boot, n_b), **_model_tests(fits, data.obs)}
    tests.update(_boxcox_theta(table, fits, boot, data.obs))
    tests["extrap_cutoff"] = _add_extrapolation(table, fits, data, holdout, rng, n_starts)
    verdict, reason = _verdict(fits, tests, np.unique(data.obs.x), min_span, p_win, n_boot)
    table["verdict"] = verdict
    return ScalingLawFit(
        table=_in_order(table),
        thresholds=data.thresholds,
        verdict=verdict,
        verdict_reason=reason,
        **tests,
        **_data_summary(data, censoring, n_boot, n_starts),
    )


def _law_names(laws: Sequence[str]) -> list[str]:
    """The laws to fit, once each in the order given; unknown names fail here, before any work."""
    names = list(dict.fromkeys(laws))
    for n in names:
        make_law(n, np.ones(1))
    return names


def _holdout(holdout: int | None, data: Observations) -> int:
    """How many of the largest x values the extrapolation holds out (default: a third of >= 6, else 0)."""
    n_x = len(np.unique(data.obs.x))
    if holdout is None:
        return n_x // 3 if n_x >= 6 else 0
    if holdout > 0 and holdout >= n_x:
        raise ValueError(f"select_scaling_law: holdout={holdout} leaves no x values to fit ({n_x} distinct)")
    return holdout


def _fit_laws(names, obs: Obs, rng, n_starts: int) -> tuple[dict[str, LawFit], dict[str, str]]:
    """Full-data fits of every law that the x grid can identify, and a note per law that has a problem."""
    n_x = len(np.unique(obs.x))
    fits: dict[str, LawFit] = {}
    notes: dict[str, str] = {}
    for name in names:
        law = make_law(name, obs.x)
        if n_x < len(law.params):
            notes[name] = f"needs >= {len(law.params)} distinct x values"
            continue
        fits[name] = _fit(law, obs, rng, n_starts)
        if not fits[name].converged:
            notes[name] = f"did not converge (gradient {fits[name].grad_norm:.2g})"
    return fits, notes


def _bootstrap(fits: dict[str, LawFit], data: Observations, n_boot: int, rng):
    """Refits of every converged law on n_boot hierarchical resamples: {law: (params, loglik)} and the
    resampled number of units per replicate. Weights are over units, fits over the distinct (x, lo, hi)
    rows they map to."""
    boot: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    n_b = np.full(n_boot, float(data.obs.n))
    if n_boot > 0:
        W = hierarchical_weights(data.cluster, data.cell, n_boot, rng)
        obs_c, Wc = _compressed_weights(data.obs, W)
        n_b = W.sum(axis=1)
        for name, f in fits.items():
            if f.converged:
                boot[name] = _boot(f.law, obs_c, Wc, f, rng)
    return boot, n_b


def _law_row(name: str, f: LawFit | None, boot, obs: Obs) -> dict:
    """One law's row of the table: fit quality, criteria, parameters and their bootstrap CIs."""
    row: dict = {"law": name, "family": make_law(name, obs.x).family}
    if f is None:
        row.update(n_params=len(make_law(name, obs.x).params) + 1, converged=False)
        return row
    row.update(
        n_params=f.law.q,
        converged=f.converged,
        grad_norm=f.grad_norm,
        frac_at_best=f.frac_at_best,
        loglik=f.loglik if f.converged else np.nan,
    )
    row["aicc"] = float(_aicc(row["loglik"], f.law.q, obs.n))
    row["bic"] = -2 * row["loglik"] + f.law.q * np.log(obs.n)
    for p, v in _reported(f.theta, f.law).items():
        row[p] = float(v[0]) if f.converged else np.nan
    if boot is not None:
        for p, v in _reported(boot[0], f.law).items():
            row[f"{p}_lo"], row[f"{p}_hi"] = (float(t) for t in percentile_ci(v))
        row["boot_ok"] = float(np.mean(np.isfinite(boot[1])))
    return row


def _law_table(names, fits, notes, boot, obs: Obs) -> pd.DataFrame:
    """The per-law rows with a note each, delta AICc and Akaike weights."""
    rows = [{**_law_row(n, fits.get(n), boot.get(n), obs), "note": notes.get(n, "")} for n in names]
    table = pd.DataFrame(rows)
    for col in ("loglik", "aicc", "bic", "grad_norm", "frac_at_best", "boot_ok", "p_win"):
        if col not in table.columns:
            table[col] = np.nan
    best = np.nanmin(table["aicc"]) if table["aicc"].notna().any() else np.nan
    table["delta_aicc"] = table["aicc"] - best
    w = np.exp(-0.5 * table["delta_aicc"].to_numpy(dtype=float))
    table["akaike_weight"] = w / np.nansum(w)
    return table


def _win_probabilities(table: pd.DataFrame, fits, boot, n_b: np.ndarray) -> dict[str, float]:
    """Fills table's p_win (AICc per replicate, laws that failed there left out of that replicate) and
    returns the bootstrap shares of replicates where power beats exponential by log-likelihood and back."""
    out = {"p_power_beats_exp": float("nan"), "p_exp_beats_power": float("nan")}
    if not boot:
        return out
    A = np.column_stack([_aicc(ll, fits[n].law.q, n_b) for n, (_, ll) in boot.items()])  # (B, laws)
    A = np.where(np.isfinite(A), A, np.inf)
    ok = np.isfinite(A).any(axis=1)
    win = np.argmin(A, axis=1)
    for j, name in enumerate(boot):
        table.loc[table["law"] == name, "p_win"] = float(np.mean(win[ok] == j)) if ok.any() else np.nan
    if "power" in boot and "exponential" in boot:
        lp, le = boot["power"][1], boot["exponential"][1]
        both = np.isfinite(lp) & np.isfinite(le)
        out["p_power_beats_exp"] = float(np.mean(lp[both] > le[both])) if both.any() else np.nan
        out["p_exp_beats_power"] = float(np.mean(le[both] > lp[both])) if both.any() else np.nan
    return out


def _model_tests(fits: dict[str, LawFit], obs: Obs) -> dict[str, float]:
    """Vuong (power against exponential), the likelihood-ratio tests of the nested laws, and the one-sided
    p that a super-polynomial term is positive (signed root of the LR statistic, ~ N(0, 1) at 0)."""
    out = {"vuong_z": float("nan"), "vuong_p": float("nan")}
    if all(k in fits and fits[k].converged for k in ("power", "exponential")):
        fp, fe = fits["power"], fits["exponential"]
        ll_p, ll_e = loglik_terms(fp.law, fp.theta, obs), loglik_terms(fe.law, fe.theta, obs)
        out["vuong_z"], out["vuong_p"] = vuong(ll_p, ll_e, fp.law.q, fe.law.q)
    nested = (("c", "encompassing", "power"), ("k", "encompassing", "exponential"), ("q", "quasi", "power"))
    for tag, big, small in nested:
        out[f"lr_{tag}_stat"], out[f"lr_{tag}_p"] = _lr(fits, big, small)
    for tag, big in (("c", "encompassing"), ("q", "quasi")):
        stat = out[f"lr_{tag}_stat"]
        z = np.sign(fits[big].theta[2]) * np.sqrt(stat) if np.isfinite(stat) else np.nan
        out[f"superpoly_{tag}_p"] = float(stats.norm.sf(z))  # NaN when the law was not fitted
    return out


def _boxcox_theta(table: pd.DataFrame, fits, boot, obs: Obs) -> dict:
    """Box-Cox theta with its profile-likelihood CI (also put in table's boxcox row) and bootstrap CI."""
    nan2 = (float("nan"), float("nan"))
    out = {"boxcox_theta": float("nan"), "boxcox_theta_ci": nan2, "boxcox_theta_boot_ci": nan2}
    if "boxcox" not in fits or not fits["boxcox"].converged:
        return out
    fb = fits["boxcox"]
    plo, phi = _boxcox_profile(fb.law, obs, fb)
    out.update(boxcox_theta=float(fb.theta[2]), boxcox_theta_ci=(plo, phi))
    i = table["law"] == "boxcox"
    table.loc[i, "theta_profile_lo"], table.loc[i, "theta_profile_hi"] = plo, phi
    if "boxcox" in boot:
        out["boxcox_theta_boot_ci"] = tuple(float(t) for t in percentile_ci(boot["boxcox"][0][:, 2]))
    return out


def _add_extrapolation(table: pd.DataFrame, fits, data: Observations, holdout: int, rng, n_starts: int):
    """Puts each fitted law's extrapolation scores (and a note where there are none) in table; returns the
    largest x fitted on (NaN without a holdout)."""
    table["extrap_nll"], table["extrap_rmse"] = np.nan, np.nan
    if holdout <= 0:
        return float("nan")
    cutoff, ex = _extrapolation(list(fits), data, holdout, rng, n_starts)
    for name, (nll, rmse, note) in ex.items():
        i = table["law"] == name
        table.loc[i, "extrap_nll"], table.loc[i, "extrap_rmse"] = nll, rmse
        if note:
            table.loc[i, "note"] = (table.loc[i, "note"] + "; extrapolation: " + note).str.strip("; ")
    return float(cutoff)


def _data_summary(data: Observations, censoring: str, n_boot: int, n_starts: int) -> dict:
    """The data a fit saw and the settings it ran with."""
    xs = np.unique(data.obs.x)
    return {
        "n_obs": int(data.obs.n),
        "n_left_censored": data.n_left,
        "n_right_censored": data.n_right,
        "x_values": xs.tolist(),
        "x_span": float(xs[-1] / xs[0]),
        "level": data.level,
        "censoring": censoring,
        "n_boot": int(n_boot),
        "n_starts": int(n_starts),
    }


def _in_order(table: pd.DataFrame) -> pd.DataFrame:
    """The table in TABLE_COLUMNS order, NaN in the columns no law filled."""
    for c in TABLE_COLUMNS:
        if c not in table.columns:
            table[c] = np.nan
    return table[list(TABLE_COLUMNS)]


def _verdict(fits, tests, xs, min_span, p_win, n_boot) -> tuple[str, str]:
    """The rule in VERDICT_RULE; returns (verdict, reason in words with the numbers used)."""
    span = xs[-1] / xs[0]
    if span < min_span:
        return "insufficient data", f"x grid spans {span:.3g}x < {min_span:g}x"
    for k in ("power", "exponential"):
        if k not in fits or not fits[k].converged:
            return "inconclusive", f"no converged {k} fit"
    if n_boot <= 0:
        return "inconclusive", "no bootstrap (n_boot = 0): the verdict needs P(win)"
    z, pp, pe = tests["vuong_z"], tests["p_power_beats_exp"], tests["p_exp_beats_power"]
    zc = stats.norm.isf(0.05)
    pc, pq = tests["superpoly_c_p"], tests["superpoly_q_p"]
    nums = (
        f"P_boot(power > exp) = {pp:.3f}, Vuong z = {z:.2f}, one-sided p of a super-polynomial term: "
        f"c {pc:.3g}, q {pq:.3g}"
    )
    superpoly = pc < SUPERPOLY_ALPHA or pq < SUPERPOLY_ALPHA
    if pp >= p_win and z >= zc and not superpoly:
        if not (np.isfinite(pc) and np.isfinite(pq)):
            return (
                "polynomial",
                nums + " (super-polynomial check incomplete: encompassing or quasi not fitted)",
            )
        return "polynomial", nums
    if pe >= p_win and z <= -zc:
        return "exponential", nums
    why = " (a significant super-polynomial term rules out polynomial)" if superpoly and pp >= p_win else ""
    return "inconclusive", nums + why


def tost_flat_slope(
    df: pd.DataFrame,
    x: str = "model.m",
    y: str = "test/excess_risk",
    *,
    level: float | None = None,
    curve_x: str = "data.N",
    teacher: str | None = "seed.teacher",
    run: str | None = "seed.run",
    by: Sequence[str] = (),
    bound: float = DEFAULT_TOST_BOUND,
    alpha: float = 0.05,
    n_boot: int = 2000,
    censoring: str = "interval",
    seed: int | np.random.Generator | None = 0,
) -> pd.DataFrame:
    """TOST equivalence test that y* is flat in x (claim C2): fit log y* = a + k log x + sigma z by
    censored ML, take the (1 - 2 alpha) = 90% hierarchical-bootstrap percentile CI of the slope k, and call
    it flat iff that CI lies inside (-bound, bound). Inputs as select_scaling_law (per-run rows with level,
    threshold rows, or point values); by: columns to split on first (e.g. data.L), one row per group.

    Returns a DataFrame, one row per group: the by columns, slope, ci_lo, ci_hi (bootstrap), se and p_tost
    (Wald, from the observed information: the larger of the two one-sided p values), bound, alpha, flat,
    n_obs, n_censored, boot_ok. Censored units enter the likelihood as everywhere else.
    """
    if not (0 < alpha < 0.5) or bound <= 0:
        raise ValueError(
            f"tost_flat_slope: need 0 < alpha < 0.5 and bound > 0, got alpha={alpha}, bound={bound}"
        )
    rng = np.random.default_rng(seed)
    by = list(by)
    _need(df, by, "tost_flat_slope")
    groups = [((), df)] if not by else list(df.groupby(by, sort=True))
    rows = []
    for key, sub in groups:
        data = scaling_observations(
            sub, x, y, level=level, curve_x=curve_x, teacher=teacher, run=run, censoring=censoring
        )
        row = dict(zip(by, key if isinstance(key, tuple) else (key,), strict=True)) if by else {}
        rows.append({**row, **_tost_group(data, key, bound, alpha, n_boot, rng)})
    return pd.DataFrame(rows)


def _tost_group(data: Observations, key, bound: float, alpha: float, n_boot: int, rng) -> dict:
    """tost_flat_slope's row for one group: the power law's slope, its Wald se and bootstrap CI, the test."""
    obs = data.obs
    if len(np.unique(obs.x)) < 2 or len(data.observed_x()) < 1:
        raise ValueError(
            f"tost_flat_slope: group {key}: need >= 2 distinct x values and some uncensored units"
        )
    law = make_law("power", obs.x)
    f = _fit(law, obs, rng, 16)  # one maximum (linear law): a few starts only guard the optimizer
    try:
        se = float(np.sqrt(np.linalg.inv(observed_information(law, f.theta, obs))[1, 1]))
    except np.linalg.LinAlgError:
        se = float("nan")
    k = float(f.theta[1])
    lo = hi = boot_ok = float("nan")
    if n_boot > 0:
        W = hierarchical_weights(data.cluster, data.cell, n_boot, rng)
        bp, bl = _boot(law, *_compressed_weights(obs, W), f, rng)
        lo, hi = (float(t) for t in percentile_ci(bp[:, 1], level=1 - 2 * alpha))
        boot_ok = float(np.mean(np.isfinite(bl)))
    p_tost = float(max(stats.norm.sf((k + bound) / se), stats.norm.cdf((k - bound) / se)))
    ci_ok = np.isfinite(lo) and np.isfinite(hi)
    return dict(
        slope=k if f.converged else np.nan,
        ci_lo=lo,
        ci_hi=hi,
        se=se,
        p_tost=p_tost,
        bound=bound,
        alpha=alpha,
        flat=bool(f.converged and ci_ok and -bound < lo and hi < bound),
        n_obs=obs.n,
        n_censored=data.n_left + data.n_right,
        boot_ok=boot_ok,
        converged=f.converged,
    )


def ols_coef_ci(X: np.ndarray, y: np.ndarray, level: float = 0.95) -> tuple[float, float, float] | None:
    """Least squares of y on the columns of X: the first coefficient and its t-based CI at `level` (the
    residual variance on n - rank(X) degrees of freedom); None when no degree of freedom is left."""
    beta, *_ = np.linalg.lstsq(X, y, rcond=None)
    dof = len(y) - np.linalg.matrix_rank(X)
    if dof <= 0:
        return None
    s2 = float(np.sum((y - X @ beta) ** 2)) / dof
    half = stats.t.ppf(0.5 + level / 2, dof) * math.sqrt(s2 * np.linalg.pinv(X.T @ X)[0, 0])
    return beta[0], beta[0] - half, beta[0] + half


def aggregate_seeds(
    df: pd.DataFrame, by: Sequence[str] | str, value: str, level: float = 0.95
) -> pd.DataFrame:
    """Mean over seeds per group with sd (ddof 1), n (finite values) and a t-based CI (level, default 95%).
    A group with n = 1 has sd and CI NaN: one seed says nothing about seed noise."""
    by = [by] if isinstance(by, str) else list(by)
    _need(df, [*by, value], "aggregate_seeds")
    v = df[value].astype(float).where(np.isfinite(df[value].astype(float)))
    g = v.groupby([df[c] for c in by], sort=True)
    out = pd.DataFrame({"mean": g.mean(), "sd": g.std(ddof=1), "n": g.count()})
    with np.errstate(invalid="ignore", divide="ignore"):
        half = stats.t.ppf(0.5 + level / 2, out["n"] - 1) * out["sd"] / np.sqrt(out["n"])
    half = half.where(out["n"] > 1)
    out["ci_lo"], out["ci_hi"] = out["mean"] - half, out["mean"] + half
    return out.reset_index()
