"""Thresholds N* and T* from per-run curves: the sample and iteration complexity that the main theorem of
Allen-Zhu & Li 2019 (arXiv 1902.01028) bounds by a polynomial.

The threshold contract. By default a curve is the tail-averaged baseline-relative excess risk,
DEFAULT_METRIC = (risk - OPT) / (baseline - OPT) at the tail-averaged weights, where the baseline is the best
constant predictor per position: 1 for a network that learned nothing from the tokens, 0 at OPT. N* is the
smallest N whose curve is <= DEFAULT_LEVEL = 0.5, i.e. halfway from the best constant predictor to OPT.
A relative level is a fair test in one direction only (RELATIVE_CAVEAT).

Per unit (one teacher and run seed inside one group, e.g. one L): sort the curve along its axis curve_x (x
below: N for N*, the SGD step for T*), smooth y with a non-increasing isotonic fit (pool-adjacent-violators),
find the first grid point where the smoothed curve is <= level, and interpolate log x against log y between
the two bracketing grid points. The bracket is kept, because the fits (fits.py) treat an observed crossing
as interval-censored on it.

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
from dataclasses import dataclass

import numpy as np
import pandas as pd

from rnnsgd.metrics import REL_RISK_TAIL

DEFAULT_METRIC = REL_RISK_TAIL
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


def curve_crossing(grid: np.ndarray, s: np.ndarray, levels: np.ndarray) -> tuple[np.ndarray, ...]:
    """First crossing of each level by a non-increasing curve s over its grid (curve_x values, ascending).

    Returns (x_star, lo, hi, censor) arrays, one entry per level, with the encoding in the module docstring.
    Interpolation is linear in (log grid, log s), exact for a power-law curve; if the smoothed value at the
    lower bracket end is <= 0 (an excess risk can dip below 0) log s does not exist there and the
    interpolation is linear in s instead. It is linear in the grid where the grid is <= 0 (a T* curve can
    start at step 0).
    Where the lower bracket end is +inf (a diverged run) nothing bounds the crossing below: x_star = grid[j].
    """
    grid = np.asarray(grid, dtype=float)
    s = np.asarray(s, dtype=float)
    levels = np.asarray(levels, dtype=float)
    below = s[None, :] <= levels[:, None]  # (K, n); monotone along the grid since s is non-increasing
    crossed = below.any(axis=1)
    j = np.argmax(below, axis=1)
    left = crossed & (j == 0)
    inner = crossed & (j > 0)
    censor = np.where(left, "left", np.where(inner, "none", "right")).astype(object)

    lo = np.where(left, 0.0, np.where(inner, grid[np.maximum(j - 1, 0)], grid[-1]))
    hi = np.where(left, grid[0], np.where(inner, grid[j], np.inf))
    x_star = np.full(levels.shape, np.nan)
    if inner.any():
        k = np.flatnonzero(inner)
        s0, s1, lev = s[j[k] - 1], s[j[k]], levels[k]
        x0, x1 = grid[j[k] - 1], grid[j[k]]
        with np.errstate(divide="ignore", invalid="ignore"):
            t_log = (np.log(s0) - np.log(lev)) / (np.log(s0) - np.log(s1))
            t_lin = (s0 - lev) / (s0 - s1)
            t = np.where(s1 > 0, t_log, t_lin)
            xs_log = np.exp(np.log(x0) + t * (np.log(x1) - np.log(x0)))
        x_star[k] = np.where(np.isinf(s0), x1, np.where(x0 > 0, xs_log, x0 + t * (x1 - x0)))
    return x_star, lo, hi, censor


def threshold(
    df: pd.DataFrame,
    curve_x: str = "data.N",
    y: str = "test/excess_risk",
    level: float | Sequence[float] | None = None,
    by: Sequence[str] = DEFAULT_BY,
    unit: Sequence[str] = DEFAULT_UNIT,
    outcome: str | None = "outcome",
) -> pd.DataFrame:
    """N* (or T*) per unit: the smallest curve_x where the isotonic-smoothed y is <= level (module docstring).

    df: tidy rows, one per (unit, curve_x). curve_x: the axis each curve runs along, which is what the
    threshold counts: "data.N" (samples) for N*, one row per run, or "step" (SGD iterations) for T* on a
    history frame.
    level: one level or several (one sweep serves many levels; thresholds are applied after the fact). No
    default here, since it belongs to y: DEFAULT_LEVEL goes with DEFAULT_METRIC.
    by, unit: the group columns (e.g. L) and the columns naming one curve inside a group (teacher, run seed).
    outcome: the column of the trainer's outcome per row (completed, budget, diverged, ...), used when the
    frame has it; a T* history frame carries its run's outcome on every row.

    Returns one row per (group, unit, level): the by and unit columns, `level`, `x_star` (the threshold on
    the curve_x axis, NaN when censored), `lo`, `hi` (the bracket; 0 / inf on the open side of a censored
    unit), `censor` in {"none", "left", "right"}, `reason` ("" when crossed, LEFT, or for a right-censored
    unit the outcome of its run at the largest curve_x: "budget", "plateau" (completed above the level),
    "diverged" or NOT_REACHED) and `n_points` (points on the curve). A diverged row stays on its curve as
    y = +inf, so a unit whose every run diverged is right-censored, not an error. Other rows with a
    non-finite y (a killed run's missing metric) are left out of their curve; a unit with no point left is
    an error, not a silent drop.
    """
    levels = _levels(level)
    keys = [*by, *unit]
    _check_columns(df, curve_x, y, by, unit)
    c = _sorted_curves(df, curve_x, y, keys, outcome)
    x_star, lo, hi, censor, last_outcome, n_points = _cross_each_unit(df, c, keys, y, levels)
    n_units, n_lev = len(c.starts), len(levels)
    res = df[keys].iloc[c.order[c.starts]].reset_index(drop=True)  # a row of each unit, for its key values
    res = res.loc[res.index.repeat(n_lev)].reset_index(drop=True)
    res["level"] = np.tile(levels, n_units)
    res["x_star"], res["lo"], res["hi"], res["censor"] = x_star, lo, hi, censor
    right = np.array(
        [OUTCOME_REASON.get(o, NOT_REACHED) for o in np.repeat(last_outcome, n_lev)], dtype=object
    )
    res["reason"] = np.where(censor == "none", "", np.where(censor == "left", LEFT, right))
    res["n_points"] = np.repeat(n_points, n_lev)
    return res


def _levels(level) -> np.ndarray:
    """The levels as an array, each finite and > 0."""
    if level is None:
        raise ValueError(
            f"threshold: pass level= (e.g. DEFAULT_LEVEL = {DEFAULT_LEVEL} for {DEFAULT_METRIC})"
        )
    levels = np.atleast_1d(np.asarray(level, dtype=float))
    if levels.size == 0 or not np.all(np.isfinite(levels)) or np.any(levels <= 0):
        raise ValueError(f"threshold: level must be finite and > 0, got {level!r}")
    return levels


def _check_columns(df: pd.DataFrame, curve_x: str, y: str, by, unit) -> None:
    keys = [*by, *unit]
    missing = [c for c in [*keys, curve_x, y] if c not in df.columns]
    if missing:
        raise ValueError(f"threshold: missing columns {missing}; have {sorted(df.columns)}")
    if len(set(keys)) != len(keys) or curve_x in keys or y in keys:
        raise ValueError(
            f"threshold: by {list(by)}, unit {list(unit)}, curve_x and y must be distinct columns"
        )
    if len(df) == 0:
        raise ValueError("threshold: empty frame")


@dataclass
class _Curves:
    """Every unit's curve, rows sorted by (unit, curve_x): order maps them back to df's rows; starts and
    ends delimit each unit; grid, y and outcome are the sorted values (a diverged row's y is +inf) and use
    marks the rows that go into a curve."""

    order: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    grid: np.ndarray
    y: np.ndarray
    outcome: np.ndarray
    use: np.ndarray


def _sorted_curves(df: pd.DataFrame, curve_x: str, y: str, keys: list[str], outcome: str | None) -> _Curves:
    xv = df[curve_x].to_numpy(dtype=float)
    yv = df[y].to_numpy(dtype=float)
    ov = (
        df[outcome].fillna("").astype(str).to_numpy()
        if outcome is not None and outcome in df.columns
        else np.full(len(df), "")
    )
    if not np.all(np.isfinite(xv)):
        raise ValueError(f"threshold: column {curve_x!r} has non-finite values")
    codes = df.groupby(keys, sort=True, dropna=False).ngroup().to_numpy() if keys else np.zeros(len(df), int)
    order = np.lexsort((xv, codes))
    codes, xv, yv, ov = codes[order], xv[order], yv[order], ov[order]
    dup = (np.diff(codes) == 0) & (np.diff(xv) == 0)
    if dup.any():
        i = order[np.flatnonzero(dup)[0]]
        raise ValueError(
            f"threshold: several rows share {curve_x}={df[curve_x].iloc[i]!r} within one unit "
            f"{dict(df[keys].iloc[i])}; add the column that tells them apart to `by` or `unit`, or filter "
            "the frame"
        )
    diverged = ov == "diverged"
    yv = np.where(diverged, np.inf, yv)  # not reached at that x, whatever its last metrics say
    starts = np.flatnonzero(np.r_[True, np.diff(codes) != 0])
    ends = np.r_[starts[1:], len(codes)]
    return _Curves(order, starts, ends, xv, yv, ov, np.isfinite(yv) | diverged)


def _cross_each_unit(df: pd.DataFrame, c: _Curves, keys: list[str], y: str, levels: np.ndarray):
    """Per unit and level (unit-major): x_star, lo, hi, censor; per unit: its last outcome and n_points."""
    n_units, n_lev = len(c.starts), len(levels)
    out = {k: np.empty(n_units * n_lev) for k in ("x_star", "lo", "hi")}
    censor = np.empty(n_units * n_lev, dtype=object)
    last_outcome = np.empty(n_units, dtype=object)
    n_points = np.empty(n_units, dtype=int)
    for u, (a, b) in enumerate(zip(c.starts, c.ends, strict=True)):
        ok = c.use[a:b]
        if not ok.any():
            i = c.order[a]
            raise ValueError(
                f"threshold: unit {dict(df[keys].iloc[i])} has no finite {y!r} and no diverged run"
            )
        r = slice(u * n_lev, (u + 1) * n_lev)
        out["x_star"][r], out["lo"][r], out["hi"][r], censor[r] = curve_crossing(
            c.grid[a:b][ok], isotonic_decreasing(c.y[a:b][ok]), levels
        )
        last_outcome[u] = c.outcome[a:b][ok][-1]
        n_points[u] = ok.sum()
    return out["x_star"], out["lo"], out["hi"], censor, last_outcome, n_points


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
