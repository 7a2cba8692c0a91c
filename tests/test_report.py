"""The full path on a real sweep: Ray Tune -> MLflow -> load -> thresholds -> fits -> report + notebooks.

One small real sweep (36 points, a few hundred SGD steps each) is shared by every test in this module.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
from sweep_testlib import client, write_sweep

from rnnsgd.analysis import render, report
from rnnsgd.analysis.load import load_history, load_runs
from rnnsgd.cli import main
from rnnsgd.sweep.runner import git_sha

ROOT = Path(__file__).resolve().parents[1]
NAME = "report-tiny"


@pytest.fixture(scope="module")
def swept(ray_local, tmp_path_factory) -> dict[str, str]:
    """A real sweep over L (3 values), N (3), m (2) and 2 seeds, tracked in a fresh SQLite store."""
    from rnnsgd.sweep.runner import run_sweep
    from rnnsgd.sweep.spec import load_sweep

    tmp = tmp_path_factory.mktemp("report")
    path = write_sweep(
        tmp,
        NAME,
        base={"train.T": 400, "data.n_test": 128},
        grid={"data.L": [4, 8, 16], "data.N": [16, 64, 256], "model.m": [32, 64]},
        seeds=2,
    )
    uri = f"sqlite:///{tmp}/mlflow.db"
    sweep = load_sweep(str(path), None, {})
    result = run_sweep(sweep, out=io.StringIO(), tracking_uri=uri, storage=str(tmp / "ray"))
    assert result.exit_code == 0, result.summary()
    return {"uri": uri, "tmp": str(tmp), "file": str(path)}


def test_load_gives_one_typed_row_per_point_and_a_deduplicated_history(swept):
    runs = load_runs(NAME, swept["uri"])
    assert len(runs) == 36 and runs["point_id"].is_unique
    assert (runs["status"] == "FINISHED").all()
    assert runs["data.L"].dtype.kind == "i" and set(runs["data.L"]) == {4, 8, 16}
    ok = runs[runs["outcome"] != "diverged"]  # a diverged run's last metrics are NaN by design
    assert len(ok) >= 30
    for key in ("test/excess_risk", "w/move_fro", "act/flip_frac", "lin/rel_err", "opt"):
        assert ok[key].notna().all(), key
    hist = load_history(runs.head(2), swept["uri"], ["test/risk"])
    assert not hist.duplicated(["run_id", "metric", "step"]).any()
    assert hist.groupby("run_id")["step"].max().eq(400).all()


def test_report_states_every_claim_with_evidence_and_logs_it_on_the_parent(swept, tmp_path, capsys):
    runs = load_runs(NAME, swept["uri"])
    # normalized risk: one level that some seeds cross and some do not, at every L
    level = float(runs["test/nrisk"].median())
    out = tmp_path / "rep"
    code = main(
        [
            "report",
            swept["file"],
            "--tracking-uri",
            swept["uri"],
            "--out",
            str(out),
            "--metric",
            "test/nrisk",
            "--level",
            str(level),
            "--n-boot",
            "50",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    verdicts = dict(line.split(": ", 1) for line in printed.splitlines() if line[:1] == "C" and ": " in line)
    assert set(verdicts) == {"C1", "C2", "C3", "C4", "C5", "C6"}
    # 400 steps end every run on its budget (a plateau needs train.min_steps): the seeds that never reach
    # the level say how far 400 steps get, not how many samples the task needs
    assert (runs["outcome"] == "budget").all()
    assert verdicts["C1"] == "undecided: budget-limited"
    assert verdicts["C3"] == verdicts["C5"] == verdicts["C6"] == "not targeted"  # offline, one init, no lags
    assert verdicts["C4"] in ("supported", "not supported", "inconclusive")
    md = (out / "report.md").read_text()
    assert "## C1: undecided: budget-limited" in md and "iterations, not samples" in md  # and what to do
    assert "Not targeted by this sweep: C3 (needs online runs" in md and "## C3" not in md
    assert "N* = smallest N whose normalized test risk (test/nrisk) is <=" in md
    page = (out / "report.html").read_text()
    # every figure the Markdown shows is a file beside it, and is inlined in the page: self-contained
    shown = re.findall(r"^!\[[^\]]*\]\((figures/[^)]+\.png)\)$", md, re.M)
    assert all((out / f).stat().st_size > 1000 and (out / f).with_suffix(".svg").exists() for f in shown)
    assert page.count('src="data:image/png;base64,') == len(shown) and 'src="http' not in page
    expected = {"risk_N_L", "risk_N_m", "learning_curves", "c1_scaling", "c4_mechanism", "heatmap_gen_gap"}
    assert expected <= {Path(f).stem for f in shown}
    # the grid, and the risk over it as tables at the level, in words
    assert "<th>axis</th>" in page and "median test/nrisk over N x L (offline runs)" in page
    assert f"the level {level:g} is absolute" in page
    # provenance: the command, the code's commit, the store, the parent run and links into the MLflow UI
    exp = client(swept["uri"]).get_experiment_by_name(NAME).experiment_id
    (parent_id,) = [
        r.info.run_id
        for r in client(swept["uri"]).search_runs([exp])
        if r.data.tags["rnnsgd.role"] == "parent"
    ]
    ui = f"http://127.0.0.1:5000/#/experiments/{exp}"
    assert f"by <code>rnnsgd report {swept['file']} --metric test/nrisk" in page and git_sha() in page
    assert f"<code>{swept['uri']}</code>" in page and f"mlflow ui --backend-store-uri {swept['uri']}" in page
    q = "?workflowType=machine_learning"  # model-training pages, not GenAI's
    assert f'<a href="{ui}/runs/{parent_id}{q}"><code>{parent_id}</code></a>' in page
    assert all(f'href="{ui}/runs/{run_id}{q}"' in page for run_id in runs["run_id"])  # every run, linked
    logged = {a.path for a in client(swept["uri"]).list_artifacts(parent_id, "report")}
    assert {"report/report.html", "report/report.md", "report/figures"} <= logged


def test_analyze_prints_the_report_without_figures(swept, capsys):
    code = main(
        [
            "analyze",
            NAME,
            "--tracking-uri",
            swept["uri"],
            "--metric",
            "test/nrisk",
            "--level",
            "0.5",
            "--n-boot",
            "20",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "## C4: " in printed and "## Provenance" in printed and f"by `rnnsgd analyze {NAME}" in printed
    assert not re.search(r"\.png|\.svg|!\[|Figure:", printed)  # a terminal shows no image


@pytest.mark.parametrize(("law", "verdict"), [("power", "polynomial"), ("exponential", "exponential")])
def test_c1_gives_the_verdict_of_known_synthetic_laws_with_its_figure(law, verdict, tmp_path):
    """The report's C1 on E1's full grid of synthetic curves from a known law (validate.synthetic_runs)."""
    from rnnsgd.analysis.validate import synthetic_runs

    runs = synthetic_runs(law, np.random.default_rng(1)).assign(
        **{"model.m": 1024, "data.online": False, "data.task": "paper", "data.eps_x": 0.5}
    )
    figures: dict = {}
    claim = report.claim_c1(runs, "test/excess_risk", 0.05, 200, figures, tmp_path)
    assert claim.verdict == verdict, claim.evidence
    (title, table), (_, censoring) = claim.tables
    assert {"power", "exponential", "boxcox"} <= set(table["law"]) and table["converged"].all()
    assert censoring["units"].sum() == runs.groupby(["data.L", "seed.teacher", "seed.run"]).ngroups
    assert (tmp_path / "c1_scaling.png").stat().st_size > 1000


def test_c4_slopes_are_fitted_within_cells(swept):
    runs = load_runs(NAME, swept["uri"])
    s = report.mechanism_slopes(runs).set_index("metric")
    assert s.loc["w/move_fro", "n"] == (runs["outcome"] != "diverged").sum()
    assert (s["ci_lo"] < s["slope"]).all() and (s["slope"] < s["ci_hi"]).all()


def test_bad_input_is_refused_with_one_line(swept, tmp_path, capsys):
    missing = f"sqlite:///{tmp_path}/none.db"
    assert main(["report", "no-such-sweep", "--tracking-uri", missing]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no-such-sweep" in err[0]
    assert not (tmp_path / "none.db").exists()  # reading never creates a store
    assert main(["report", "no-such-sweep", "--tracking-uri", swept["uri"]]) == 2
    assert "no MLflow experiment" in capsys.readouterr().err
    assert main(["report", NAME, "--tracking-uri", swept["uri"], "--level", "-1"]) == 2
    assert "--level" in capsys.readouterr().err


def test_empty_sweep_gives_a_report_that_says_what_is_missing(tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/m.db"
    c = MlflowClient(uri)
    exp = c.create_experiment("half")
    run = c.create_run(
        exp, tags={"sweep": "half", "point_id": "abc", "rnnsgd.role": "trial", "outcome": "error"}
    )
    c.log_param(run.info.run_id, "model.m", "8")
    c.set_terminated(run.info.run_id, "FAILED")
    rep = report.build("half", uri, tmp_path / "out")
    assert {c.verdict for c in rep.claims} == {"insufficient data"}
    assert all("no FINISHED runs" in c.evidence for c in rep.claims)
    md, _ = render.write(rep, tmp_path / "out")
    assert "insufficient data" in md.read_text()


NOTEBOOKS = sorted((ROOT / "analysis").glob("*.ipynb"))


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_against_the_sweep(swept, notebook, tmp_path, monkeypatch):
    import nbclient
    import nbformat

    env = {
        "RNNSGD_SWEEP": NAME,
        "MLFLOW_TRACKING_URI": swept["uri"],
        "RNNSGD_N_BOOT": "20",
        "RNNSGD_OUT": str(tmp_path),
        "RNNSGD_LEVEL": "0.5",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)  # the kernel inherits this process's environment
    nb = nbformat.read(notebook, as_version=4)
    nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(notebook.parent)}}
    ).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any(o.output_type in ("display_data", "execute_result") for o in outputs)
    # figures show inline: a plots.* Figure as a cell's value is an image, not "<Figure size ...>"
    assert any("image/png" in o.get("data", {}) for o in outputs), notebook.name
    assert not [o for o in outputs if "<Figure size" in o.get("data", {}).get("text/plain", "")]
