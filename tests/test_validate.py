"""E0 at reduced size (rnnsgd.analysis.validate; EXPERIMENTS.md E0): the pipeline recovers known truths."""

import numpy as np
import pytest

from rnnsgd.analysis.thresholds import threshold
from rnnsgd.analysis.validate import L_GRID, N_GRID, run_validation, synthetic_runs


def test_synthetic_runs_have_the_real_grid_and_real_censoring():
    df = synthetic_runs("exponential", np.random.default_rng(0))
    assert sorted(df["data.L"].unique()) == list(L_GRID) and sorted(df["data.N"].unique()) == list(N_GRID)
    n_units = df.groupby(["data.L", "seed.teacher", "seed.run"]).ngroups
    assert n_units == 6 * 3 * 5 + 3 * 3 * 10  # 5 seeds, 10 at L >= 32, 3 teachers
    th = threshold(df, level=0.05).set_index("data.L")
    assert (th.loc[4, "censor"] == "left").mean() > 0.8  # N* ~ 36 < 64
    assert (th.loc[64, "censor"] == "right").mean() > 0.8  # N* ~ 3e5 > 65536
    # the curves are noisy: the smoothing has work to do
    curve = df[(df["data.L"] == 16) & (df["seed.teacher"] == 0) & (df["seed.run"] == 0)]
    assert (np.diff(curve.sort_values("data.N")["test/excess_risk"]) > 0).any()
    # thresholds track the true N* (interval brackets contain it for most units)
    truth = df.groupby(["data.L", "seed.teacher", "seed.run"])["true_log_nstar"].first().to_numpy()
    th = threshold(df, level=0.05)
    with np.errstate(divide="ignore"):  # log 0 = -inf: the open end of a left-censored bracket
        inside = (np.log(th["lo"]) <= truth + 0.3) & (truth - 0.3 <= np.log(th["hi"]))
    assert inside.mean() > 0.9


def test_e0_reduced_selection_and_coverage():
    summary, text = run_validation(
        n_replicates=15,
        seed=1,
        n_boot=100,
        n_starts=16,
        fit_laws=("power", "exponential", "quasi", "encompassing"),
    )
    s = summary.set_index("truth")
    assert s.loc["power", "p_correct"] >= 0.9 and s.loc["exponential", "p_correct"] >= 0.9
    assert s.loc["power", "polynomial"] + s.loc["exponential", "exponential"] >= 28
    # L^(log L) must rarely be called polynomial (module docstring: the quasi generator's right answer)
    assert s.loc["quasi", "p_correct"] >= 0.7
    assert (s["errors"] == 0).all()
    # rates: unbiased, and CIs that cover at roughly their nominal rate
    assert s.loc["power", "rate_median"] == pytest.approx(2.0, abs=0.05)
    assert s.loc["exponential", "rate_median"] == pytest.approx(0.15, abs=0.005)
    assert s[["coverage"]].to_numpy().mean() >= 0.8
    assert text.startswith("E0") and text.count("right verdict") == 3 and "CI covers" in text
