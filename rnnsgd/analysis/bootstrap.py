"""Hierarchical bootstrap weights (docs/claims.md, "From thresholds to a verdict").

One replicate resamples teachers (clusters) with replacement, then, in each cell (one x value, e.g. one L, of
one drawn teacher), resamples that cell's seeds (units) with replacement. A replicate is returned as a count
per original unit, so "re-running the whole pipeline" on it is a weighted fit over the same units: each
unit's threshold is a pure function of that unit's own curve, so re-thresholding a resampled unit gives the
same bracket as before and is computed once.
"""

from __future__ import annotations

import warnings

import numpy as np


def hierarchical_weights(
    cluster: np.ndarray, cell: np.ndarray, n_boot: int, rng: np.random.Generator
) -> np.ndarray:
    """Bootstrap counts (n_boot, n) for n units.

    cluster (n,): the teacher of each unit (all equal: one level, seeds only). cell (n,): the cell each unit
    belongs to inside its cluster (e.g. its L). A teacher drawn c times contributes c * m draws from each of
    its cells of m seeds, which is the same as c independent resamples of that cell.
    """
    cluster = np.asarray(cluster)
    cell = np.asarray(cell)
    n = len(cluster)
    cl_ids, cl_of_unit = np.unique(cluster, return_inverse=True)
    n_cl = len(cl_ids)
    # (B, n_cl): how often each teacher is drawn
    draws = rng.multinomial(n_cl, np.full(n_cl, 1.0 / n_cl), size=n_boot)
    W = np.zeros((n_boot, n))
    _, cell_of_unit = np.unique(cell, return_inverse=True)
    cell_code = cl_of_unit * (cell_of_unit.max() + 1) + cell_of_unit  # one code per (teacher, cell)
    for c in np.unique(cell_code):
        idx = np.flatnonzero(cell_code == c)
        m = len(idx)
        n_draw = draws[:, cl_of_unit[idx[0]]] * m  # (B,)
        W[:, idx] = rng.multinomial(n_draw, np.full(m, 1.0 / m))
    return W


def percentile_ci(samples: np.ndarray, level: float = 0.95, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of bootstrap samples, ignoring NaN (replicates that failed to converge)."""
    a = 100 * (1 - level) / 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column gives NaN, as it should
        lo = np.nanpercentile(samples, a, axis=axis)
        hi = np.nanpercentile(samples, 100 - a, axis=axis)
    return lo, hi
