"""The report's verdicts on synthetic runs whose right answer is known (no training, no Ray): controls,
a main task that failed, a grid limited by its step budget, C5 and C6, what a sweep targets, and the bad
input of `report` and `analyze` through the CLI (a small MLflow store written by hand)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sweep_testlib import log_points

from rnnsgd.analysis import render, report
from rnnsgd.analysis.thresholds import DEFAULT_LEVEL, DEFAULT_METRIC, RELATIVE_CAVEAT
from rnnsgd.analysis.validate import synthetic_runs
from rnnsgd.cli import EXIT_BAD_INPUT, main

Y = DEFAULT_METRIC
MAIN = {
    "model.m": 256,
    "data.online": False,
    "data.task": "paper",
    "data.eps_x": 0.5,
    "model.w_var": 2.0,
    "model.activation": "relu",
    "outcome": "completed",
}
L_SMALL = (4, 8, 16, 32, 64)


def e1_runs(law: str = "power", seed: int = 1, **cols) -> pd.DataFrame:
    """Per-run rows on an E1-shaped grid whose relative risk crosses DEFAULT_LEVEL at a known N*(L)."""
    runs = synthetic_runs(
        law, np.random.default_rng(seed), L=L_SMALL, teachers=2, seeds=3, seeds_large=3, eps=DEFAULT_LEVEL
    )
    return runs.rename(columns={"test/excess_risk": Y}).assign(**{**MAIN, **cols})


def never(value: float = 1.0, **cols) -> pd.DataFrame:
    """The same grid with a relative risk that never leaves `value` (NaN: a run with no final metrics)."""
    return e1_runs(**cols).assign(**{Y: value})


def c1(runs: pd.DataFrame, tmp_path) -> report.Claim:
    return report.claim_c1(runs, Y, DEFAULT_LEVEL, 50, {}, tmp_path)


def test_classify_names_what_makes_a_control():
    runs = pd.DataFrame([MAIN] * 5).assign(
        **{
            "data.task": ["paper", "parity", "long_range", "lags", "paper"],
            "data.eps_x": [0.5, 0.5, 1.0, 0.5, 0.5],
            "model.w_var": [2.0, 2.0, 2.0, 1.0, 2.0],
            "model.activation": ["relu", "relu", "relu", "relu", "linear"],
        }
    )
    assert list(report.classify(runs)) == [
        "main",
        "data.task=parity",
        "data.eps_x=1.0",
        "model.w_var=1.0",
        "model.activation=linear",
    ]


def test_a_fully_censored_control_reads_not_learned_as_predicted(tmp_path):
    runs = pd.concat([e1_runs(), never(**{"data.task": "parity"})], ignore_index=True)
    claim = c1(runs, tmp_path)
    assert claim.verdict == "polynomial", claim.evidence  # the main task's, a power law
    assert "Control data.task=parity: as predicted: control not learned at any N." in (claim.evidence)
    main = report.fit_group(e1_runs(), "data.N", Y, DEFAULT_LEVEL, 0, 16.0)
    parity = report.fit_group(never(**{"data.task": "parity"}), "data.N", Y, DEFAULT_LEVEL, 0, 16.0)
    verdict, line, table = report.control_verdict(main, parity)
    assert (verdict, line) == ("as predicted", "control not learned at any N")
    assert (parity.thr["reason"] == "plateau").all()  # completed above the level at every N


def test_a_control_that_learns_like_the_main_task_is_flagged():
    main = report.fit_group(e1_runs(seed=1), "data.N", Y, DEFAULT_LEVEL, 100, 16.0)
    same = report.fit_group(e1_runs(seed=2, **{"data.eps_x": 1.0}), "data.N", Y, DEFAULT_LEVEL, 100, 16.0)
    verdict, line, table = report.control_verdict(main, same)
    assert verdict == "NOT as predicted" and "control learned like the main task" in line
    assert table["ratio"].between(0.5, 2).all() and list(table["data.L"]) == list(L_SMALL)
    # a control whose N* grows exponentially while the main task's grows as L^2: harder, as predicted
    harder = report.fit_group(
        e1_runs("exponential", **{"data.eps_x": 1.0}), "data.N", Y, DEFAULT_LEVEL, 100, 16.0
    )
    verdict, line, _ = report.control_verdict(main, harder)
    assert verdict == "as predicted", line


@pytest.mark.parametrize(
    ("runs", "verdict", "says"),
    [
        (
            never(0.95).assign(**{"train/risk": 0.95, "train/baseline": 1.0, "opt": 0.0}),
            "not learned: under-fitting",
            "median final train relative risk 0.95 >= 0.8",
        ),
        (never(0.9, outcome="budget"), "not learned: budget", "iterations, not samples"),
        (never(np.nan, outcome="diverged"), "not learned: divergence", "100% of its runs diverged"),
    ],
    ids=["under-fitting", "budget", "divergence"],
)
def test_a_main_task_learned_nowhere_gets_a_diagnosis(runs, verdict, says, tmp_path):
    claim = c1(runs, tmp_path)
    assert claim.verdict == verdict and says in claim.evidence, claim.evidence
    assert "N* reached by no unit at any L" in claim.evidence


def test_a_few_units_out_of_steps_stay_in_the_fit_as_right_censored(tmp_path):
    """One unit of six at the largest L ran out of steps above the level: no cell is mostly budget-censored
    and budget censoring is under a quarter of the units, so the grid is decided, with that unit kept as
    right-censored (reason budget)."""
    runs = e1_runs()
    unit = (runs["data.L"] == runs["data.L"].max()) & (runs["seed.teacher"] == 0) & (runs["seed.run"] == 0)
    runs.loc[unit, Y] = 0.9
    runs.loc[unit, "outcome"] = "budget"
    claim = c1(runs, tmp_path)
    assert not claim.verdict.startswith("undecided"), claim.evidence
    assert "right-censored (budget 1)" in claim.evidence


def test_a_grid_that_ran_out_of_steps_is_undecided(tmp_path):
    runs = e1_runs()
    cut = runs["data.L"] >= 32  # the budget ran out before these learned: risk stuck above the level
    runs.loc[cut, Y] = np.maximum(runs.loc[cut, Y], 0.6)
    runs.loc[cut, "outcome"] = "budget"
    claim = c1(runs, tmp_path)
    assert claim.verdict == "undecided: budget-limited"
    assert (
        "L = 32, 64" in claim.evidence
        and "the answer would be about iterations, not samples" in claim.evidence
    )
    (title, cells), *_ = claim.tables
    assert title == "censoring by L"
    assert cells.set_index("data.L")["budget_limited"].to_dict() == {
        4: False,
        8: False,
        16: False,
        32: True,
        64: True,
    }


def test_min_span_reaches_the_law_verdict(tmp_path):
    claim = report.claim_c1(e1_runs(), Y, DEFAULT_LEVEL, 0, {}, tmp_path, min_span=32.0)
    assert claim.verdict == "insufficient data" and "x grid spans 16x < 32x" in claim.evidence


def test_the_grid_decides_which_claims_are_targeted():
    base = pd.DataFrame([MAIN]).assign(**{"data.L": 8, "data.N": 64})
    grid = lambda **axes: pd.concat([base.assign(**{k: v}) for k, vs in axes.items() for v in vs])  # noqa: E731
    assert {
        c
        for c, need in report.targets(grid(**{"data.L": [4, 8, 16], "data.N": [64, 256]})).items()
        if not need
    } == {"C1"}
    e1 = pd.concat([base.assign(**{"data.L": L, "data.N": N}) for L in (4, 8, 16) for N in (64, 256)])
    assert not report.targets(e1)["C1"] and report.targets(e1)["C3"].startswith("needs online runs")
    e2 = pd.concat([base.assign(**{"model.m": m, "data.N": N}) for m in (64, 256) for N in (64, 256)])
    assert [c for c, need in report.targets(e2).items() if not need] == ["C2", "C4"]
    e3 = pd.concat([base.assign(**{"data.L": L, "data.online": True}) for L in (4, 8, 16)])
    assert [c for c, need in report.targets(e3).items() if not need] == ["C3"]
    e5 = pd.concat([base.assign(**{"model.w_var": v}) for v in (1.0, 2.0)])
    assert [c for c, need in report.targets(e5).items() if not need] == ["C5"]
    assert [c for c, need in report.targets(base.assign(**{"data.task": "lags"})).items() if not need] == [
        "C6"
    ]


def test_c5_reads_the_relative_metric_and_leaves_diverged_runs_out():
    rows = [{**MAIN, Y: 0.1, "w/spectral_radius": r} for r in (1.3, 1.4, 1.5, 1.6)] + [
        {**MAIN, Y: np.nan, "w/spectral_radius": 50.0, "outcome": "diverged"},
        {**MAIN, Y: 0.9, "w/spectral_radius": 0.7, "model.w_var": 1.0},
        {**MAIN, Y: 0.6, "w/spectral_radius": 1.2},  # not learned: above the level
    ]
    claim = report.claim_c5(pd.DataFrame(rows))
    assert claim.verdict == "supported", claim.evidence
    assert (
        claim.evidence.startswith("4 ReLU runs at model.w_var = 2 learned")
        and "1.30 to 1.60" in claim.evidence
    )
    ((_, t),) = claim.tables
    t = t.set_index("model.w_var")
    assert t.loc[2.0, "runs"] == 5 and t.loc[2.0, "diverged"] == 1  # the diverged run counted, not in medians
    assert t.loc[2.0, "w/spectral_radius (median)"] == pytest.approx(1.4)
    assert t.loc[1.0, "runs"] == 1 and t.loc[1.0, "diverged"] == 0


def lags_runs(together: dict[int, float], seeds: int = 4) -> pd.DataFrame:
    """Task lags at N = 256 and 1024: each lag alone (R^2 0.9) and all three together (R^2 per lag given);
    seed-to-seed spread of +-0.01."""
    rows = []
    for N in (256, 1024):
        for s in range(seeds):
            jitter = 0.01 * (s - (seeds - 1) / 2)
            for g in (1, 2, 4):
                rows.append(
                    {"data.task": "lags", "data.N": N, "data.lags": (g,), f"lags/r2_{g}": 0.9 + jitter}
                )
            rows.append(
                {
                    "data.task": "lags",
                    "data.N": N,
                    "data.lags": (1, 2, 4),
                    **{f"lags/r2_{g}": r + jitter for g, r in together.items()},
                }
            )
    return pd.DataFrame(rows).assign(**{"seed.run": 0})


def test_c6_compares_each_lag_alone_and_together():
    claim = report.claim_c6(lags_runs({1: 0.88, 2: 0.89, 4: 0.86}), n_boot=200)
    assert claim.verdict == "supported", claim.evidence
    ((_, t),) = claim.tables
    assert len(t) == 6 and (t["n_alone"] == 4).all() and (t["n_together"] == 4).all()
    at = t[t["data.N"] == 1024].set_index("lag")
    assert at["drop"].to_dict() == pytest.approx({1: 0.02, 2: 0.01, 4: 0.04})
    assert claim.evidence.startswith("lag 1 at N = 1024: alone 0.90, together 0.88, drop 0.02")
    claim = report.claim_c6(lags_runs({1: 0.88, 2: 0.89, 4: 0.4}), n_boot=200)
    assert claim.verdict == "not supported"  # lag 4 loses 0.5 of R^2 next to the others
    claim = report.claim_c6(lags_runs({1: 0.88, 2: 0.89, 4: 0.8}), n_boot=200)
    assert claim.verdict == "inconclusive"  # lag 4 drops by the tolerance itself, give or take the seeds
    no_r2 = lags_runs({1: 0.9, 2: 0.9, 4: 0.9}).filter(regex="^(?!lags/r2_)")
    assert report.claim_c6(no_r2).verdict == "insufficient data"


def test_markdown_states_the_threshold_and_lists_untargeted_claims_on_one_line(tmp_path):
    claims = [
        report.Claim("C1", "text", "polynomial", "evidence", criterion=report.criterion("N*", Y, 0.5)),
        report.Claim("C3", "t", "not targeted", "needs " + report.NEEDS["C3"], targeted=False),
        report.Claim("C6", "t", "not targeted", "needs " + report.NEEDS["C6"], targeted=False),
    ]
    runs = pd.DataFrame({"status": ["FINISHED"]})
    md = render.to_markdown(report.Report("s", runs, pd.DataFrame(), claims, {}, Y, 0.5))
    assert (
        "N* = smallest N whose tail-averaged baseline-relative excess risk (test/rel_risk_tail) is <= 0.5"
        in md
    )
    assert RELATIVE_CAVEAT in md
    assert (
        "Not targeted by this sweep: C3 (needs online runs (data.online=true) at >= 3 values of data.L), "
        "C6 (needs runs of task lags)." in md
    )
    assert "## C1: polynomial" in md and "## C3" not in md
    absolute = report.Report("s", runs, pd.DataFrame(), claims, {}, "test/excess_risk", 0.1)
    md = render.to_markdown(absolute)
    assert RELATIVE_CAVEAT not in md and "absolute excess test risk (test/excess_risk) is <= 0.1" in md


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """An MLflow store holding sweep `tiny`: two finished points, as the trainer logs them."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('store')}/m.db"
    rows = [{"data.L": L, "test/risk": 0.3, Y: 0.4, "test/excess_risk": 0.1} for L in (4, 8)]
    log_points(uri, "tiny", pd.DataFrame(rows))
    return uri


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--level", "1.5"], "--level 1.5: a relative metric (test/rel_risk_tail) takes a level in (0, 1)"),
        (["--level", "0"], "--level 0: a relative metric"),
        (["--metric", "test/excess_risk"], "--level: required with the absolute metric test/excess_risk"),
        (["--metric", "test/excess_risk", "--level", "-1"], "--level -1: must be a finite number > 0"),
        (
            ["--metric", "test/riskk", "--level", "0.1"],
            "--metric test/riskk: unknown metric; did you mean test/risk? (known: test/excess_risk, ",
        ),
        (
            ["--metric", "test/rel_risk_tial"],
            "--metric test/rel_risk_tial: unknown metric; did you mean test/rel_",
        ),
        (["--min-span", "1"], "--min-span 1: must be a finite ratio > 1"),
        (["--min-span", "0.5"], "--min-span 0.5"),
    ],
)
@pytest.mark.parametrize("command", ["report", "analyze"])
def test_bad_analysis_options_exit_2_with_one_line(store, tmp_path, capsys, command, args, says):
    out = ["--out", str(tmp_path / "rep")] if command == "report" else []
    assert main([command, "tiny", "--tracking-uri", store, *out, *args]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0], err
    assert not (tmp_path / "rep").exists()  # nothing written


def test_analyze_defaults_to_the_relative_threshold_and_takes_absolute_ones(store, capsys):
    assert main(["analyze", "tiny", "--tracking-uri", store, "--n-boot", "0"]) == 0
    md = capsys.readouterr().out
    assert "(test/rel_risk_tail) is <= 0.5" in md and RELATIVE_CAVEAT in md
    assert "Not targeted by this sweep: C1 (needs offline runs at >= 3 values of data.L" in md
    assert (
        main(["analyze", "tiny", "--tracking-uri", store, "--metric", "test/excess_risk", "--level", "0.1"])
        == 0
    )
    md = capsys.readouterr().out
    assert "(test/excess_risk) is <= 0.1" in md and RELATIVE_CAVEAT not in md
