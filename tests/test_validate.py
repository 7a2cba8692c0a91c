"""E0 at reduced size (rnnsgd.analysis.validate): the pipeline recovers known truths, the noise of a sweep is
measured in the generator's terms, and the span study and its CLI behave."""

import numpy as np
import pandas as pd
import pytest
from sweep_testlib import log_points

from rnnsgd.analysis.thresholds import threshold
from rnnsgd.analysis.validate import (
    L_GRID,
    N_GRID,
    estimate_noise,
    minimum_span,
    run_validation,
    span_design,
    span_grid,
    span_study,
    span_text,
    synthetic_runs,
)
from rnnsgd.cli import main


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


# ------------------------------------------------------------------------------------- noise and span study

TRUE_NOISE = {"sd_teacher": 0.2, "sd_cell": 0.1, "sd_seed": 0.4, "sd_point": 0.25, "alpha": 0.7}


@pytest.mark.parametrize("seed", [0, 1])
def test_estimate_noise_recovers_the_noise_of_a_synthetic_sweep(seed):
    design = span_design(8, seeds=5, noise=TRUE_NOISE, teachers=20)
    df = synthetic_runs("power", np.random.default_rng(seed), eps=0.1, **design)
    est = estimate_noise(df, "test/excess_risk", 0.1)
    assert set(est) == set(TRUE_NOISE)
    tol = {"sd_teacher": 0.15, "sd_cell": 0.12, "sd_seed": 0.08, "sd_point": 0.02, "alpha": 0.03}
    for k, v in est.items():
        assert v == pytest.approx(TRUE_NOISE[k], abs=tol[k]), k
    # the seed noise is measured net of the noise of reading N* off a noisy curve (0.7 sd_point / alpha)
    th = threshold(df, level=0.1)
    within = th[th["censor"] == "none"].assign(y=lambda f: np.log(f["x_star"]))
    raw = np.sqrt(within.groupby(["data.L", "seed.teacher"])["y"].var().mean())
    assert raw > est["sd_seed"] + 0.02


def test_estimate_noise_with_one_seed_per_teacher_puts_cell_noise_in_the_seeds():
    design = span_design(8, seeds=1, noise=TRUE_NOISE, teachers=20)
    df = synthetic_runs("power", np.random.default_rng(0), eps=0.1, **design)
    est = estimate_noise(df, "test/excess_risk", 0.1)
    assert est["sd_cell"] == 0.0
    assert est["sd_seed"] == pytest.approx(np.hypot(0.4, 0.1), abs=0.12)
    with pytest.raises(ValueError, match="2 teachers"):
        estimate_noise(df[df["seed.teacher"] == 0], "test/excess_risk", 0.1)


def test_span_grids_and_minimum_span():
    assert span_grid(4) == (4, 6, 8, 12, 16) and span_grid(8) == (4, 6, 8, 12, 16, 24, 32)
    assert span_grid(16) == L_GRID and span_grid(3) == (4, 6, 8, 12)
    with pytest.raises(ValueError, match=">= 2"):
        span_grid(1.5)
    power = {(4, 1): 0.5, (4, 3): 0.96, (4, 5): 0.9, (8, 1): 0.9, (8, 3): 0.97, (8, 5): 0.99}
    power |= {(16, 1): 0.99, (16, 3): 0.9, (16, 5): 0.99}
    table = pd.DataFrame(
        [
            {"span": s, "seeds": k, "truth": g, "p_correct": v if g == "power" else 1.0}
            for (s, k), v in power.items()
            for g in ("power", "exponential")
        ]
    )
    # 4x at 3 seeds reaches 95% but 16x at 3 seeds does not: a gate must hold at every wider span
    assert minimum_span(table) == (8.0, 5)
    assert minimum_span(table, laws=("exponential",)) == (4.0, 1)
    assert minimum_span(table, target=0.999) is None


def test_span_study_table_and_wider_spans_do_not_do_worse():
    spans, seeds = (4, 16), (1, 3)
    table = span_study(spans, seeds, n_replicates=8, seed=3, laws=("power", "exponential"), n_boot=100)
    assert len(table) == len(spans) * len(seeds) * 2
    assert list(table.columns[:3]) == ["span", "seeds", "truth"]
    assert {"n", "p_correct", "coverage", "censored_share", "observed_span_median"} <= set(table.columns)
    assert (table["n"] == 8).all() and (table["errors"] == 0).all()  # one seed per teacher included
    assert (table["censored_share"] < 0.5).all()  # re-centered: most units cross inside the N grid
    p = table.set_index(["truth", "seeds", "span"])["p_correct"]
    for law in ("power", "exponential"):
        for s in seeds:
            assert p[law, s, 16.0] >= p[law, s, 4.0] - 0.25, (law, s)
    text = span_text(table)
    assert text.count("\n") == len(table) + 3 and "by generator: power " in text
    assert "minimum span reaching 95% correct" in text or "none of the spans reached 95%" in text


def test_cli_validate_prints_the_span_table(capsys):
    argv = ["analyze", "--validate", "--spans", "4", "--seeds", "1", "--replicates", "1", "--n-boot", "20"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "E0 by span of L" in out and "quasi" in out
    assert out.strip().splitlines()[-1].startswith(("minimum span", "none of the spans"))


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--spans", "1"], "--spans"),
        (["--spans", "0.5,4"], "--spans"),
        (["--spans", ","], "--spans"),
        (["--spans", "four"], "--spans"),
        (["--seeds", "0"], "--seeds"),
        (["--seeds", ""], "--seeds"),
        (["--seeds", "1.5"], "--seeds"),
        (["--replicates", "0"], "--replicates"),
        (["--n-boot", "0"], "--n-boot"),
    ],
)
def test_cli_validate_bad_values_exit_2_naming_the_option(args, option, capsys):
    assert main(["analyze", "--validate", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"error: {option}:" in err


def test_cli_validate_noise_from_a_sweep_without_runs_exits_2(tmp_path, capsys):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    argv = ["analyze", "--validate", "--noise-from", "empty", "--tracking-uri", uri]
    assert main(argv) == 2  # no store at all
    MlflowClient(tracking_uri=uri).create_experiment("empty")
    capsys.readouterr()
    assert main(argv) == 2  # a store and an experiment, but no runs
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "error: --noise-from:" in err and "no point runs" in err


def test_cli_validate_noise_from_a_sweep_simulates_its_measured_noise(tmp_path, capsys):
    """--noise-from reads a sweep from a real MLflow store and simulates the noise measured on it."""
    runs = synthetic_runs("power", np.random.default_rng(0), eps=0.1, **span_design(4, 1, TRUE_NOISE))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    log_points(uri, "cpu", runs.drop(columns="true_log_nstar"))
    argv = ["analyze", "--validate", "--noise-from", "cpu", "--tracking-uri", uri]
    argv += ["--metric", "test/excess_risk", "--level", "0.1", "--spans", "4", "--seeds", "1"]
    assert main([*argv, "--replicates", "1", "--n-boot", "20"]) == 0
    out = capsys.readouterr().out
    measured = estimate_noise(runs, "test/excess_risk", 0.1)
    assert out.startswith("noise measured on cpu")
    assert f"sd_seed {measured['sd_seed']:.3g}, sd_point {measured['sd_point']:.3g}" in out
