"""Thresholds N* and T* from per-run curves: the sample and iteration complexity that the main theorem of
Allen-Zhu & Li 2019 (arXiv 1902.01028) bounds by a polynomial.

The threshold contract. By default a curve is the tail-averaged baseline-relative excess risk,
DEFAULT_METRIC = (risk - OPT) / (baseline - OPT) at the tail-averaged weights, where the baseline is the best
constant predictor per position: 1 for a network that learned nothing from the tokens, 0 at OPT. N* is the
smallest N whose curve is <= DEFAULT_LEVEL = 0.5, i.e. halfway from the best constant predictor to OPT.
A relative level is a fair test in one direction only (RELATIVE_CAVEAT).

Per unit (one teacher and run seed inside one group, e.g. one L): sort the curve by x (N, or the SGD step
for T*), smooth y with a non-increasing isotonic fit (pool-adjacent-violators), find the first grid point
where the smoothed curve is <= level, and interpolate log x against log y between the two bracketing grid
points. The bracket is kept, because the fits (fits.py) treat an observed crossing as interval-censored on it.

Censoring is encoded in the bracket itself, so downstream code needs no special cases:

    censor   x_star        lo          hi          meaning
    none     interpolated  x[j-1]      x[j]        crossed between two grid points
    left     NaN           0           x[0]        already <= level at the smallest x
    right    NaN           x[-1]       inf         never reached level on the grid

Censored units are never dropped: dropping the failures at large L makes exponential growth look polynomial.
For the same reason a diverged run is not dropped either: it counts as "not reached" at its x (y = +inf, so
the non-increasing fit puts the threshold above it). Each row says why it is censored (`reason`), from the
trainer's outcome of the run at the unit's largest x: a grid whose units ran out of steps answers a question
about iterations, not samples.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

DEFAULT_METRIC = "test/rel_risk_tail"
DEFAULT_LEVEL = 0.5  # halfway from the best constant predictor (1) to OPT (0)
RELATIVE_CAVEAT = (
    "A relative level is a fair test in one direction: exponential relative N* implies exponential "
    "absolute N*; polynomial relative N* does not prove polynomial absolute N*."
)
DEFAULT_BY = ("data.L",)
DEFAULT_UNIT = ("seed.teacher", "seed.run")

# why a unit is censored; a right-censored one takes the trainer's outcome at its largest x
LEFT = "below at smallest x"
NOT_REACHED = "not reached"
OUTCOME_REASON = {"budget": "budget", "completed": "plateau", "diverged": "diverged"}
REASON_COLUMNS = {
    "": "crossed",
    LEFT: "below_at_smallest",
    "budget": "budget",
    "plateau": "plateau",
    "diverged": "diverged",
    NOT_REACHED: "not_reached",
}


def is_relative(metric: str) -> bool:
    """A baseline-relative metric (0 = OPT, 1 = best constant): its levels live in (0, 1)."""
    return "rel_" in metric


def isotonic_decreasing(y: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """The weighted least-squares non-increasing fit to y (pool-adjacent-violators).

    Curves here have ~10 points, so a plain stack of pooled blocks is both the clearest and fast enough.
    """
    y = np.asarray(y, dtype=float)
    w = np.ones_like(y) if w is None else np.asarray(w, dtype=float)
    means: list[float] = []
    weights: list[float] = []
    counts: list[int] = []
    for yi, wi in zip(y, w, strict=True):
        means.append(yi)
        weights.append(wi)
        counts.append(1)
        # a later block above an earlier one violates "non-increasing": pool them
        while len(means) > 1 and means[-2] < means[-1]:
            wsum = weights[-2] + weights[-1]
            means[-2] = (weights[-2] * means[-2] + weights[-1] * means[-1]) / wsum
            weights[-2] = wsum
            counts[-2] += counts[-1]
            del means[-1], weights[-1], counts[-1]
    return np.repeat(means, counts)


def curve_crossing(x: np.ndarray, s: np.ndarray, levels: np.ndarray) -> tuple[np.ndarray, ...]:
    """First crossing of each level by a non-increasing curve s(x), x sorted ascending.

    Returns (x_star, lo, hi, censor) arrays, one entry per level, with the encoding in the module docstring.
    Interpolation is linear in (log x, log s), exact for a power-law curve; if the smoothed value at the
    lower bracket end is <= 0 (an excess risk can dip below 0) log s does not exist there and the
    interpolation is linear in s instead. It is linear in x where x <= 0 (a T* curve can start at step 0).
    Where the lower bracket end is +inf (a diverged run) nothing bounds the crossing below: x_star = x[j].
    """
    x = np.asarray(x, dtype=float)
    s = np.asarray(s, dtype=float)
    levels = np.asarray(levels, dtype=float)
    below = s[None, :] <= levels[:, None]  # (K, n); monotone in x since s is non-increasing
    crossed = below.any(axis=1)
    j = np.argmax(below, axis=1)
    left = crossed & (j == 0)
    inner = crossed & (j > 0)
    censor = np.where(left, "left", np.where(inner, "none", "right")).astype(object)

    lo = np.where(left, 0.0, np.where(inner, x[np.maximum(j - 1, 0)], x[-1]))
    hi = np.where(left, x[0], np.where(inner, x[j], np.inf))
    x_star = np.full(levels.shape, np.nan)
    if inner.any():
        k = np.flatnonzero(inner)
        s0, s1, lev = s[j[k] - 1], s[j[k]], levels[k]
        x0, x1 = x[j[k] - 1], x[j[k]]
        with np.errstate(divide="ignore", invalid="ignore"):
            t_log = (np.log(s0) - np.log(lev)) / (np.log(s0) - np.log(s1))
            t_lin = (s0 - lev) / (s0 - s1)
            t = np.where(s1 > 0, t_log, t_lin)
            xs_log = np.exp(np.log(x0) + t * (np.log(x1) - np.log(x0)))
        x_star[k] = np.where(np.isinf(s0), x1, np.where(x0 > 0, xs_log, x0 + t * (x1 - x0)))
    return x_star, lo, hi, censor


def threshold(
    df: pd.DataFrame,
    x: str = "data.N",
    y: str = "test/excess_risk",
    level: float | Sequence[float] | None = None,
    by: Sequence[str] = DEFAULT_BY,
    unit: Sequence[str] = DEFAULT_UNIT,
    outcome: str | None = "outcome",
) -> pd.DataFrame:
    """N* (or T*) per unit: the smallest x where the isotonic-smoothed y is <= level (module docstring).

    df: tidy rows, one per (unit, x), e.g. one per run with x = "data.N", or a history frame with x = step.
    level: one level or several (one sweep serves many levels; thresholds are applied after the fact). No
    default here, since it belongs to y: DEFAULT_LEVEL goes with DEFAULT_METRIC.
    by, unit: the group columns (e.g. L) and the columns naming one curve inside a group (teacher, run seed).
    outcome: the column of the trainer's outcome per row (completed, budget, diverged, ...), used when the
    frame has it; a T* history frame carries its run's outcome on every row.

    Returns one row per (group, unit, level): the by and unit columns, `level`, `x_star` (NaN when censored),
    `lo`, `hi` (the bracket; 0 / inf on the open side of a censored unit), `censor` in {"none", "left",
    "right"}, `reason` ("" when crossed, LEFT, or for a right-censored unit the outcome of its run at the
    largest x: "budget", "plateau" (completed above the level), "diverged" or NOT_REACHED) and `n_points`
    (points on the curve). A diverged row stays on its curve as y = +inf, so a unit whose every run
    diverged is right-censored, not an error. Other rows with a non-finite y (a killed run's missing
    metric) are left out of their curve; a unit with no point left is an error, not a silent drop.
    """
    if level is None:
        raise ValueError(
            f"threshold: pass level= (e.g. DEFAULT_LEVEL = {DEFAULT_LEVEL} for {DEFAULT_METRIC})"
        )
    levels = np.atleast_1d(np.asarray(level, dtype=float))
    if levels.size == 0 or not np.all(np.isfinite(levels)) or np.any(levels <= 0):
        raise ValueError(f"threshold: level must be finite and > 0, got {level!r}")
    keys = [*by, *unit]
    missing = [c for c in [*keys, x, y] if c not in df.columns]
    if missing:
        raise ValueError(f"threshold: missing columns {missing}; have {sorted(df.columns)}")
    if len(set(keys)) != len(keys) or x in keys or y in keys:
        raise ValueError(f"threshold: by {list(by)}, unit {list(unit)}, x and y must be distinct columns")
    if len(df) == 0:
        raise ValueError("threshold: empty frame")

    xv = df[x].to_numpy(dtype=float)
    yv = df[y].to_numpy(dtype=float)
    ov = (
        df[outcome].fillna("").astype(str).to_numpy()
        if outcome is not None and outcome in df.columns
        else np.full(len(df), "")
    )
    if not np.all(np.isfinite(xv)):
        raise ValueError(f"threshold: column {x!r} has non-finite values")
    codes = df.groupby(keys, sort=True, dropna=False).ngroup().to_numpy() if keys else np.zeros(len(df), int)
    order = np.lexsort((xv, codes))
    codes, xv, yv, ov = codes[order], xv[order], yv[order], ov[order]
    dup = (np.diff(codes) == 0) & (np.diff(xv) == 0)
    if dup.any():
        i = order[np.flatnonzero(dup)[0]]
        raise ValueError(
            f"threshold: several rows share {x}={df[x].iloc[i]!r} within one unit {dict(df[keys].iloc[i])}; "
            "add the column that tells them apart to `by` or `unit`, or filter the frame"
        )
    diverged = ov == "diverged"
    yv = np.where(diverged, np.inf, yv)  # not reached at that x, whatever its last metrics say
    use = np.isfinite(yv) | diverged

    starts = np.flatnonzero(np.r_[True, np.diff(codes) != 0])
    ends = np.r_[starts[1:], len(codes)]
    n_units, n_lev = len(starts), len(levels)
    out = {k: np.empty(n_units * n_lev) for k in ("x_star", "lo", "hi")}
    censor = np.empty(n_units * n_lev, dtype=object)
    last_outcome = np.empty(n_units, dtype=object)
    n_points = np.empty(n_units, dtype=int)
    for u, (a, b) in enumerate(zip(starts, ends, strict=True)):
        ok = use[a:b]
        if not ok.any():
            i = order[a]
            raise ValueError(
                f"threshold: unit {dict(df[keys].iloc[i])} has no finite {y!r} and no diverged run"
            )
        xs, ys = xv[a:b][ok], yv[a:b][ok]
        r = slice(u * n_lev, (u + 1) * n_lev)
        out["x_star"][r], out["lo"][r], out["hi"][r], censor[r] = curve_crossing(
            xs, isotonic_decreasing(ys), levels
        )
        last_outcome[u] = ov[a:b][ok][-1]
        n_points[u] = ok.sum()

    first = order[starts]  # a row of each unit, for its key values
    res = df[keys].iloc[first].reset_index(drop=True)
    res = res.loc[res.index.repeat(n_lev)].reset_index(drop=True)
    res["level"] = np.tile(levels, n_units)
    for k, v in out.items():
        res[k] = v
    res["censor"] = censor
    right = np.array(
        [OUTCOME_REASON.get(o, NOT_REACHED) for o in np.repeat(last_outcome, n_lev)], dtype=object
    )
    res["reason"] = np.where(censor == "none", "", np.where(censor == "left", LEFT, right))
    res["n_points"] = np.repeat(n_points, n_lev)
    return res


def censoring_summary(thr: pd.DataFrame, by: Sequence[str] = DEFAULT_BY) -> pd.DataFrame:
    """Per cell of `by` (and level): how many units crossed and why the others are censored.

    One row per cell: the by columns, level, units, one count per reason (REASON_COLUMNS: crossed,
    below_at_smallest, budget, plateau, diverged, not_reached) and budget_limited, true when more than half
    of the cell's units are right-censored because their runs ran out of steps: there the threshold says
    how many iterations the budget allowed, not how many samples the task needs.
    """
    keys = [*by, "level"]
    counts = pd.crosstab([thr[k] for k in keys], thr["reason"].map(REASON_COLUMNS))
    counts = counts.reindex(columns=list(REASON_COLUMNS.values()), fill_value=0)
    counts.columns.name = None
    out = counts.reset_index()
    out.insert(len(keys), "units", counts.sum(axis=1).to_numpy())
    out["budget_limited"] = out["budget"] > out["units"] / 2
    return out
