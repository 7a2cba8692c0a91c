"""`rnnsgd export` and the results API: the exported file's rows are `load_runs`'s, in CSV and Parquet;
`rnnsgd.load_runs` / `load_history` import lazily; a sweep that never ran says how to run it.

The runs are real MLflow runs written without training (sweep_testlib.log_points, as the sweep layer writes
them), so that the round trip covers what a store holds: typed params, NaN metrics, tags, statuses.
"""

from __future__ import annotations

import math
import subprocess
import sys

import pandas as pd
import pytest
from sweep_testlib import log_points, write_sweep

from rnnsgd.cli import EXIT_BAD_INPUT, main

SWEEP = "exported"


@pytest.fixture
def logged(store, tmp_path, monkeypatch) -> str:
    """A store holding sweep SWEEP: 6 points over L and N, list-valued keys, one NaN metric, two outcomes."""
    monkeypatch.chdir(tmp_path)
    rows = pd.DataFrame(
        [
            {
                "model.m": 32,
                "data.L": L,
                "data.N": N,
                "data.task": "lags",
                "data.lags": "1,2",
                "data.phi": "z^2",
                "train.eps": 0.1,
                "seed.run": i % 2,
                "test/rel_risk_tail": 0.3 + 0.01 * i,
                "test/risk": 1 / 3 + i,
                "lin/rel_err": math.nan if i == 2 else 1e-7 * i,
                "outcome": "budget" if i == 5 else "completed",
            }
            for i, (L, N) in enumerate((L, N) for L in (5, 8) for N in (64, 128, 256))
        ]
    )
    log_points(store["tracking_uri"], SWEEP, rows)
    return store["tracking_uri"]


def expected(uri: str) -> pd.DataFrame:
    from rnnsgd.analysis.export import points_table
    from rnnsgd.analysis.load import load_runs

    return points_table(load_runs(SWEEP, uri))


def test_csv_round_trips_to_load_runs(logged, tmp_path, capsys):
    out = tmp_path / "out" / "points.csv"
    assert main(["export", SWEEP, "--tracking-uri", logged, "-o", str(out)]) == 0
    assert f"sweep {SWEEP}: 6 points," in capsys.readouterr().out
    want = expected(logged)
    text_cols = {c: str for c in want if want[c].dtype == object}  # ids and tags stay text
    back = pd.read_csv(out, dtype=text_cols)
    assert list(back.columns) == list(want.columns)
    assert list(back.columns[:3]) == ["point_id", "outcome", "status"]
    pd.testing.assert_frame_equal(back, want, check_dtype=False)
    assert back["data.lags"].tolist() == ["1,2"] * 6  # list-valued keys as MLflow params hold them
    assert set(back["outcome"]) == {"completed", "budget"} and set(back["status"]) == {"FINISHED"}
    assert back["lin/rel_err"].isna().sum() == 1


def test_parquet_round_trips_with_its_types(logged, tmp_path):
    out = tmp_path / "points.parquet"
    assert main(["export", SWEEP, "--tracking-uri", logged, "-o", str(out)]) == 0
    back = pd.read_parquet(out)
    pd.testing.assert_frame_equal(back, expected(logged))
    assert back["data.L"].dtype.kind == "i" and back["test/risk"].dtype.kind == "f"


def test_default_file_and_stdout(logged, tmp_path, capsys):
    assert main(["export", SWEEP, "--tracking-uri", logged]) == 0
    assert (tmp_path / f"{SWEEP}.csv").is_file()
    capsys.readouterr()
    assert main(["export", SWEEP, "--tracking-uri", logged, "-o", "-"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[0].startswith("point_id,outcome,status,model.m,")
    assert len(out.splitlines()) == 7 and "6 points" in err
    assert main(["export", SWEEP, "--tracking-uri", logged, "-o", "points.xlsx"]) == EXIT_BAD_INPUT
    assert "expected a .csv or .parquet" in capsys.readouterr().err


def test_a_sweep_never_run_says_how_to_run_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    path = write_sweep(tmp_path, "never")
    for command in (["export", str(path)], ["report", str(path)]):
        assert main(command) == EXIT_BAD_INPUT
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].endswith(f"run it first: rnnsgd sweep {path}"), err
    assert not (tmp_path / "runs").exists()  # reading created no store
    assert main(["export", "no-such-name"]) == EXIT_BAD_INPUT
    assert "run it first: rnnsgd sweep FILE" in capsys.readouterr().err


def test_the_results_api_imports_lazily(logged):
    """`rnnsgd.load_runs` / `load_history` without MLflow (or torch) at `import rnnsgd`."""
    code = (
        "import sys, rnnsgd; assert 'mlflow' not in sys.modules and 'torch' not in sys.modules; "
        f"runs = rnnsgd.load_runs({SWEEP!r}, {logged!r}); "
        f"hist = rnnsgd.load_history(runs, {logged!r}, metrics=['test/risk']); "
        "print(len(runs), len(hist), sorted(hist.columns))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[:2] == ["6", "6"]
    import rnnsgd

    assert {"load_runs", "load_history"} <= set(dir(rnnsgd))
    with pytest.raises(AttributeError):
        rnnsgd.no_such_thing  # noqa: B018
