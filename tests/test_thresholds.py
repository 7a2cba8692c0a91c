"""Known-answer tests for rnnsgd.analysis.thresholds: N* and T* per unit, their censoring and its reasons."""

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import isotonic_regression

from rnnsgd.analysis.thresholds import (
    LEFT,
    NOT_REACHED,
    censoring_summary,
    curve_crossing,
    isotonic_decreasing,
    threshold,
)

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
    th = threshold(hist, curve_x="step", level=0.1, by=("run_id",), unit=()).set_index("run_id")
    t = (np.log(0.2) - np.log(0.1)) / (np.log(0.2) - np.log(0.05))
    assert th.loc["a", "x_star"] == pytest.approx(np.exp(np.log(100) + t * np.log(10)))
    # smoothed value <= 0 at the upper end: linear in y, log in x
    t = (0.3 - 0.1) / (0.3 + 0.01)
    assert th.loc["b", "x_star"] == pytest.approx(np.exp(np.log(100) + t * np.log(10)))
    # step 0 as the lower bracket end: linear in x
    x_star, lo, hi, censor = curve_crossing(np.array([0.0, 10.0]), np.array([1.0, 0.0]), np.array([0.5]))
    assert x_star[0] == pytest.approx(5.0) and censor[0] == "none"


def test_missing_points_are_left_out_not_the_unit():
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
    with pytest.raises(ValueError, match="no finite"):  # killed, not diverged: nothing to say about it
        threshold(bad.assign(outcome="killed"), level=0.1)


def with_outcomes(rows, outcomes):
    """curves(rows) with an `outcome` column: one outcome per unit, or one per grid point of it."""
    df = curves(rows)
    per_row = [np.broadcast_to(np.asarray(outcomes[k], dtype=object), N_GRID.shape) for k in rows]
    df["outcome"] = np.concatenate(per_row)
    return df


def test_every_censored_unit_says_why_from_the_outcome_at_its_largest_n():
    never = np.full(len(N_GRID), 0.5)  # above the level everywhere
    rows = {
        (8, 0, 0): power_curve(300.0),  # crosses
        (8, 0, 1): power_curve(20.0),  # below at the smallest N
        (8, 0, 2): never,  # still improving when the step budget ran out
        (8, 0, 3): never,  # plateaued above the level
        (8, 0, 4): never,  # no outcome known
        (8, 0, 5): never,  # budget at small N, plateau at the largest: the largest N decides
        (8, 0, 6): never,  # killed: not one of the trainer's verdicts
    }
    outcomes = {
        (8, 0, 0): "completed",
        (8, 0, 1): "completed",
        (8, 0, 2): "budget",
        (8, 0, 3): "completed",
        (8, 0, 4): None,
        (8, 0, 5): ["budget"] * 5 + ["completed"],
        (8, 0, 6): "killed",
    }
    th = threshold(with_outcomes(rows, outcomes), level=0.1).set_index("seed.run")
    assert list(th["censor"]) == ["none", "left"] + ["right"] * 5
    assert list(th["reason"]) == ["", LEFT, "budget", "plateau", NOT_REACHED, "plateau", NOT_REACHED]
    # the outcome only explains censoring: the thresholds are those of the curves alone
    plain = threshold(curves(rows), level=0.1).set_index("seed.run")
    pd.testing.assert_frame_equal(th.drop(columns="reason"), plain.drop(columns="reason"))
    assert (plain.loc[plain["censor"] == "right", "reason"] == NOT_REACHED).all()  # no outcome column


def test_a_diverged_run_counts_as_not_reached_and_is_never_dropped():
    y = power_curve(300.0)  # crosses 0.1 at N = 300, between 256 and 512
    all_nan = np.full(len(N_GRID), np.nan)  # a diverged run's last metrics can be NaN
    rows = {(8, 0, 0): y.copy(), (8, 0, 1): all_nan, (8, 0, 2): y.copy()}
    rows[(8, 0, 2)][N_GRID == 512] = np.nan
    outcomes = {
        (8, 0, 0): "completed",
        (8, 0, 1): "diverged",
        (8, 0, 2): np.where(N_GRID == 512, "diverged", "completed"),
    }
    th = threshold(with_outcomes(rows, outcomes), level=0.1).set_index("seed.run")
    assert len(th) == 3
    # every run of unit 1 diverged: right-censored at the largest N, not an error
    assert th.loc[1, "censor"] == "right" and th.loc[1, "reason"] == "diverged"
    assert (th.loc[1, "lo"], th.loc[1, "hi"]) == (2048.0, np.inf) and th.loc[1, "n_points"] == len(N_GRID)
    # unit 2 diverged at N = 512: not reached there, so (non-increasing) not before either; its crossing
    # moves from 300 to the bracket (512, 1024], whose lower end is +inf: x_star is the upper end
    assert th.loc[0, "x_star"] == pytest.approx(300.0)
    assert th.loc[2, "censor"] == "none" and th.loc[2, "reason"] == ""
    assert (th.loc[2, "lo"], th.loc[2, "hi"], th.loc[2, "x_star"]) == (512.0, 1024.0, 1024.0)
    # a missing value on a run that did not diverge is still left out of its curve
    killed = with_outcomes({(8, 0, 2): rows[(8, 0, 2)]}, {(8, 0, 2): "killed"})
    th = threshold(killed, level=0.1)
    assert th["n_points"].iloc[0] == len(N_GRID) - 1 and th["x_star"].iloc[0] == pytest.approx(300.0)


def test_isotonic_and_crossing_carry_infinity():
    np.testing.assert_array_equal(isotonic_decreasing([1.0, np.inf, 0.5]), [np.inf, np.inf, 0.5])
    x_star, lo, hi, censor = curve_crossing(
        np.array([64.0, 128.0, 256.0]), np.array([np.inf, np.inf, 0.01]), np.array([0.1, 1e-3])
    )
    assert list(censor) == ["none", "right"]
    assert (x_star[0], lo[0], hi[0]) == (256.0, 128.0, 256.0)


def test_t_star_reason_is_its_runs_outcome():
    steps = [10, 100, 1000, 10000]
    hist = pd.DataFrame(
        {
            "run_id": ["a"] * 4 + ["b"] * 4 + ["c"] * 4,
            "step": steps * 3,
            "test/rel_risk_tail": [0.9, 0.8, 0.7, 0.6] * 2 + [0.9, 0.5, 0.2, 0.1],
            "outcome": ["budget"] * 4 + ["completed"] * 4 + ["completed"] * 4,
        }
    )
    th = threshold(hist, curve_x="step", y="test/rel_risk_tail", level=0.5, by=("run_id",), unit=())
    assert list(th["reason"]) == ["budget", "plateau", ""]
    assert th["x_star"].iloc[2] == pytest.approx(100.0)


def test_censoring_summary_flags_budget_limited_cells():
    never = np.full(len(N_GRID), 0.5)
    rows = {(4, 0, r): power_curve(300.0) if r == 0 else never for r in range(3)}
    rows |= {(16, 0, r): power_curve(300.0) if r == 0 else never for r in range(3)}
    outcomes = {(4, 0, 0): "completed", (4, 0, 1): "budget", (4, 0, 2): "budget"}
    outcomes |= {(16, 0, 0): "completed", (16, 0, 1): "budget", (16, 0, 2): "diverged"}
    rows[(16, 0, 2)] = np.full(len(N_GRID), np.nan)
    s = censoring_summary(threshold(with_outcomes(rows, outcomes), level=0.1)).set_index("data.L")
    columns = "level units crossed below_at_smallest budget plateau diverged not_reached budget_limited"
    assert list(s.columns) == columns.split()
    assert s.loc[4, ["units", "crossed", "budget", "diverged"]].tolist() == [3, 1, 2, 0]
    assert s.loc[16, ["units", "crossed", "budget", "diverged"]].tolist() == [3, 1, 1, 1]
    assert bool(s.loc[4, "budget_limited"]) and not bool(s.loc[16, "budget_limited"])  # 2 of 3 vs 1 of 3
