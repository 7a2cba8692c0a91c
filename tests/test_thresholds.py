"""Known-answer tests for rnnsgd.analysis.thresholds (EXPERIMENTS.md, "How thresholds and fits are
computed")."""

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import isotonic_regression

from rnnsgd.analysis.thresholds import curve_crossing, isotonic_decreasing, threshold

N_GRID = 2.0 ** np.arange(6, 12)  # 64 .. 2048


def curves(rows):
    """Per-run frame from {(L, teacher, run): risk values on N_GRID}."""
    parts = [
        pd.DataFrame({"data.L": L, "seed.teacher": t, "seed.run": r, "data.N": N_GRID, "test/excess_risk": y})
        for (L, t, r), y in rows.items()
    ]
    return pd.concat(parts, ignore_index=True)


def power_curve(n_star, eps=0.1, alpha=0.5):
    return eps * (N_GRID / n_star) ** -alpha


def test_crossing_is_exact_log_log_interpolation():
    # a power-law curve is a straight line in log-log, so the interpolated crossing is exact
    th = threshold(curves({(8, 0, 0): power_curve(300.0)}), level=0.1)
    r = th.iloc[0]
    assert r["censor"] == "none"
    assert r["x_star"] == pytest.approx(300.0, rel=1e-12)
    assert (r["lo"], r["hi"]) == (256.0, 512.0)
    assert r["n_points"] == len(N_GRID)
    # a non-power curve: log-log interpolation between the two bracketing points, by hand
    y = np.array([1.0, 0.5, 0.3, 0.08, 0.01, 0.001])
    th = threshold(curves({(8, 0, 0): y}), level=0.1)
    t = (np.log(0.3) - np.log(0.1)) / (np.log(0.3) - np.log(0.08))
    assert th["x_star"].iloc[0] == pytest.approx(np.exp(np.log(256) + t * np.log(2)), rel=1e-12)


def test_left_and_right_censoring_keep_the_unit():
    th = threshold(
        curves({(4, 0, 0): power_curve(20.0), (64, 0, 0): power_curve(1e5), (16, 0, 0): power_curve(500.0)}),
        level=0.1,
    ).set_index("data.L")
    assert len(th) == 3  # censored units are never dropped
    assert th.loc[4, "censor"] == "left" and th.loc[4, "lo"] == 0 and th.loc[4, "hi"] == 64
    assert np.isnan(th.loc[4, "x_star"])
    assert th.loc[64, "censor"] == "right" and th.loc[64, "lo"] == 2048 and np.isinf(th.loc[64, "hi"])
    assert np.isnan(th.loc[64, "x_star"])
    assert th.loc[16, "censor"] == "none"
    # exactly at the level on the first grid point counts as crossed there (<= level): left-censored
    th = threshold(curves({(4, 0, 0): power_curve(64.0)}), level=0.1)
    assert th["censor"].iloc[0] == "left"


def test_isotonic_matches_scipy_on_random_curves():
    rng = np.random.default_rng(0)
    for _ in range(50):
        y = rng.normal(size=12) + np.linspace(3, 0, 12)
        w = rng.uniform(0.5, 2.0, size=12)
        s = isotonic_decreasing(y, w)
        ref = isotonic_regression(y, weights=w, increasing=False).x
        np.testing.assert_allclose(s, ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(isotonic_decreasing([3.0, 1.0, 2.0, 0.0]), [3.0, 1.5, 1.5, 0.0])


def test_noisy_non_monotone_curve_is_smoothed_before_crossing():
    # raw curve dips below 0.1 at N=128 then comes back up: the isotonic fit pools the dip
    # (0.05, 0.2 -> 0.125), so the first crossing is between 512 and 1024, not at 128
    y = np.array([1.0, 0.05, 0.2, 0.15, 0.01, 0.005])
    th = threshold(curves({(8, 0, 0): y}), level=0.1)
    s = isotonic_decreasing(y)
    assert (th["lo"].iloc[0], th["hi"].iloc[0]) == (512.0, 1024.0)
    t = (np.log(s[3]) - np.log(0.1)) / (np.log(s[3]) - np.log(s[4]))
    assert th["x_star"].iloc[0] == pytest.approx(np.exp(np.log(512) + t * np.log(2)), rel=1e-12)


def test_several_levels_after_the_fact():
    df = curves({(8, t, r): power_curve(100.0 * (1 + t + r)) for t in range(2) for r in range(3)})
    levels = [0.2, 0.1, 0.05, 1e-4]
    th = threshold(df, level=levels)
    assert len(th) == 6 * len(levels)
    assert set(th["level"]) == set(levels)
    for lev in levels:
        one = threshold(df, level=lev)
        part = th[th["level"] == lev].reset_index(drop=True)
        pd.testing.assert_frame_equal(part, one)
    # known answer: eps (N / N*)^-1/2 = level at N = N* (level / eps)^-2, wherever it is on the grid
    n_star = 100.0 * (1 + th["seed.teacher"] + th["seed.run"])
    inside = th["censor"] == "none"
    np.testing.assert_allclose(th.loc[inside, "x_star"], (n_star * (th["level"] / 0.1) ** -2)[inside])
    assert inside.sum() == 6 + 6 + 3  # level 0.1 and 0.05: all; 0.2: N* / 4 >= 64 for 3 units
    assert (th.loc[th["level"] == 1e-4, "censor"] == "right").all()


def test_t_star_from_a_history_frame_and_negative_excess():
    # T*: x is the step, one curve per run id; a step-0 point and an excess risk that dips below 0
    hist = pd.DataFrame(
        {
            "run_id": ["a"] * 5 + ["b"] * 5,
            "step": [0, 10, 100, 1000, 10000] * 2,
            "test/excess_risk": [1.0, 0.5, 0.2, 0.05, 0.01, 1.0, 0.9, 0.3, -0.01, -0.02],
        }
    )
    th = threshold(hist, x="step", level=0.1, by=("run_id",), unit=()).set_index("run_id")
    t = (np.log(0.2) - np.log(0.1)) / (np.log(0.2) - np.log(0.05))
    assert th.loc["a", "x_star"] == pytest.approx(np.exp(np.log(100) + t * np.log(10)))
    # smoothed value <= 0 at the upper end: linear in y, log in x
    t = (0.3 - 0.1) / (0.3 + 0.01)
    assert th.loc["b", "x_star"] == pytest.approx(np.exp(np.log(100) + t * np.log(10)))
    # step 0 as the lower bracket end: linear in x
    x_star, lo, hi, censor = curve_crossing(np.array([0.0, 10.0]), np.array([1.0, 0.0]), np.array([0.5]))
    assert x_star[0] == pytest.approx(5.0) and censor[0] == "none"


def test_diverged_points_are_left_out_not_the_unit():
    y = power_curve(300.0)
    y[1] = np.nan
    th = threshold(curves({(8, 0, 0): y}), level=0.1)
    assert th["n_points"].iloc[0] == len(N_GRID) - 1
    assert th["x_star"].iloc[0] == pytest.approx(300.0)


def test_bad_input_is_named():
    df = curves({(8, 0, 0): power_curve(300.0)})
    with pytest.raises(ValueError, match="missing columns"):
        threshold(df.drop(columns="seed.run"), level=0.1)
    with pytest.raises(ValueError, match="level"):
        threshold(df, level=0.0)
    with pytest.raises(ValueError, match="several rows share"):
        threshold(pd.concat([df, df]), level=0.1)
    bad = df.copy()
    bad["test/excess_risk"] = np.nan
    with pytest.raises(ValueError, match="no finite"):
        threshold(bad, level=0.1)
