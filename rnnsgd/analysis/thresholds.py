"""Thresholds N* and T* from per-run curves (EXPERIMENTS.md, "How thresholds and fits are computed").

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
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

DEFAULT_BY = ("data.L",)
DEFAULT_UNIT = ("seed.teacher", "seed.run")


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
        x_star[k] = np.where(x0 > 0, xs_log, x0 + t * (x1 - x0))
    return x_star, lo, hi, censor


def threshold(
    df: pd.DataFrame,
    x: str = "data.N",
    y: str = "test/excess_risk",
    level: float | Sequence[float] | None = None,
    by: Sequence[str] = DEFAULT_BY,
    unit: Sequence[str] = DEFAULT_UNIT,
) -> pd.DataFrame:
    """N* (or T*) per unit: the smallest x where the isotonic-smoothed y is <= level (EXPERIMENTS.md).

    df: tidy rows, one per (unit, x), e.g. one per run with x = "data.N", or a history frame with x = step.
    level: one level or several (one sweep serves many eps; thresholds are applied after the fact). No
    default: it is the experiment's eps, which lives in the sweep, not here.
    by, unit: the group columns (e.g. L) and the columns naming one curve inside a group (teacher, run seed).

    Returns one row per (group, unit, level): the by and unit columns, `level`, `x_star` (NaN when censored),
    `lo`, `hi` (the bracket; 0 / inf on the open side of a censored unit), `censor` in {"none", "left",
    "right"} and `n_points` (finite points on the curve). Rows with a non-finite y (a diverged run) are left
    out of their curve; a unit with no finite point is an error, not a silent drop.
    """
    if level is None:
        raise ValueError("threshold: pass level= (the eps the risk must reach)")
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
    if not np.all(np.isfinite(xv)):
        raise ValueError(f"threshold: column {x!r} has non-finite values")
    codes = df.groupby(keys, sort=True, dropna=False).ngroup().to_numpy() if keys else np.zeros(len(df), int)
    order = np.lexsort((xv, codes))
    codes, xv, yv = codes[order], xv[order], yv[order]
    dup = (np.diff(codes) == 0) & (np.diff(xv) == 0)
    if dup.any():
        i = order[np.flatnonzero(dup)[0]]
        raise ValueError(
            f"threshold: several rows share {x}={df[x].iloc[i]!r} within one unit {dict(df[keys].iloc[i])}; "
            "add the column that tells them apart to `by` or `unit`, or filter the frame"
        )

    starts = np.flatnonzero(np.r_[True, np.diff(codes) != 0])
    ends = np.r_[starts[1:], len(codes)]
    n_units, n_lev = len(starts), len(levels)
    out = {k: np.empty(n_units * n_lev) for k in ("x_star", "lo", "hi")}
    censor = np.empty(n_units * n_lev, dtype=object)
    n_points = np.empty(n_units, dtype=int)
    for u, (a, b) in enumerate(zip(starts, ends, strict=True)):
        ok = np.isfinite(yv[a:b])
        if not ok.any():
            i = order[a]
            raise ValueError(f"threshold: unit {dict(df[keys].iloc[i])} has no finite {y!r}")
        xs, ys = xv[a:b][ok], yv[a:b][ok]
        r = slice(u * n_lev, (u + 1) * n_lev)
        out["x_star"][r], out["lo"][r], out["hi"][r], censor[r] = curve_crossing(
            xs, isotonic_decreasing(ys), levels
        )
        n_points[u] = ok.sum()

    first = order[starts]  # a row of each unit, for its key values
    res = df[keys].iloc[first].reset_index(drop=True)
    res = res.loc[res.index.repeat(n_lev)].reset_index(drop=True)
    res["level"] = np.tile(levels, n_units)
    for k, v in out.items():
        res[k] = v
    res["censor"] = censor
    res["n_points"] = np.repeat(n_points, n_lev)
    return res
