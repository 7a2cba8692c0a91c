"""MLflow as a training-sweep tool, on a real sweep: what its store holds, read through MLflow's own client,
and what a person sees in a real browser (headless Chromium, scripts/browser_check.py) on `mlflow ui`.
(rnnsgd.sweep.tracking: the experiment, the parent, the saved view; rnnsgd.cli cmd_report: the results table)

The browser test needs Chromium (Debian's `chromium`) and playwright (the dev extra): without them it skips
and says why, except under RNNSGD_REQUIRE_CLUSTER_TOOLS=1 (scripts/test as root, which installs Chromium),
where it fails. Its screenshots go to $RNNSGD_TEST_ARTIFACTS/mlflow_ui/ (default: the test's tmp_path).
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from sweep_testlib import client, write_sweep

from rnnsgd.cli import main
from rnnsgd.sweep import tracking

ROOT = Path(__file__).resolve().parents[1]
NAME = "ui-tiny"
DESCRIPTION = "N against the seed, in miniature: what the MLflow UI shows"
SCRIPT = ROOT / "scripts" / "browser_check.py"

pytestmark = pytest.mark.slow  # one real sweep for the module, then MLflow's UI in a browser


def _browser_check():
    spec = importlib.util.spec_from_file_location("browser_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def swept(ray_local, tmp_path_factory):
    """A tiny real sweep (2 values of N x 2 run seeds) into a store it creates, and its report. Where a
    browser can run, `mlflow ui` starts on the store right away: it boots while the store's checks run."""
    from rnnsgd.sweep.runner import run_sweep
    from rnnsgd.sweep.spec import load_sweep

    tmp = tmp_path_factory.mktemp("ui")
    path = write_sweep(tmp, NAME, description=DESCRIPTION, grid={"data.N": [16, 32]}, seeds=2)
    uri = f"sqlite:///{tmp}/runs/mlflow.db"  # no file yet: the sweep creates the store
    sweep = load_sweep(str(path))
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("RNNSGD_FAULT", raising=False)
        result = run_sweep(sweep, out=io.StringIO(), tracking_uri=uri, storage=str(tmp / "ray"))
    assert result.exit_code == 0, result.summary()
    found = {"uri": uri, "file": path, "sweep": sweep, "result": result, "report": tmp / "report"}
    proc = None
    if _browser_check().browser_missing() is None:
        port = _free_port()
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # GenAI jobs: 7 processes
        cmd = [
            str(Path(sys.executable).with_name("mlflow")),
            "ui",
            "--backend-store-uri",
            uri,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
        with open(tmp / "mlflow-ui.log", "w") as log:
            # a session of its own: `mlflow ui` runs uvicorn in a child process, ended with it (killpg)
            proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        found.update(ui=f"http://127.0.0.1:{port}", ui_proc=proc, ui_log=tmp / "mlflow-ui.log")
    try:
        report = ["report", str(path), "--tracking-uri", uri, "--out", str(found["report"]), "--n-boot", "0"]
        assert main(report) == 0
        yield found
    finally:
        if proc is not None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)


def test_the_store_holds_a_training_sweep(swept, tmp_path):
    c = client(swept["uri"])
    sweep = swept["sweep"]
    # no "Default" experiment listed: the one MLflow puts into a new store is deleted (still there, empty)
    assert [e.name for e in c.search_experiments()] == [NAME]
    assert c.get_experiment("0").lifecycle_stage == "deleted"
    exp = c.get_experiment_by_name(NAME)
    assert exp.tags[tracking.KIND] == "custom_model_development"  # the UI's "Machine learning", not GenAI
    assert exp.tags[tracking.NOTE] == DESCRIPTION

    # the saved view of the runs page: the UI's envelope, the varying keys and headline metrics as columns,
    # runs grouped by cell (N; the seeds are averaged), the headline charts first, over a log step axis
    view = json.loads(exp.tags[tracking.VIEW_TAG])
    state = json.loads(view["state"])
    assert isinstance(view["name"], str) and isinstance(view["createdAt"], int)
    assert {"params.`data.N`", "params.`seed.run`", "metrics.`test/rel_risk_tail`", "tags.`outcome`"} <= set(
        state["selectedColumns"]
    )
    assert state["groupBy"]["groupByKeys"] == [{"mode": "param", "groupByData": "data.N"}]
    assert state["runsHiddenMode"] == "SHOW_ALL" and state["isAccordionReordered"]
    charts = state["compareRunCharts"]
    assert [ch["metricKey"] for ch in charts] == list(tracking.HEADLINE)
    assert {ch["xAxisScaleType"] for ch in charts} == {"log"}
    assert {ch["metricSectionId"] for ch in charts} == {state["compareRunSections"][0]["uuid"]}
    ui = swept["result"].ui_command()
    assert f"#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning" in ui
    assert "viewStateShareKey=sweep" in ui

    # the parent: the description, the axes and base values as params, the sweep file and the resolved sweep
    runs = c.search_runs([exp.experiment_id])
    (parent,) = [r for r in runs if r.data.tags["rnnsgd.role"] == "parent"]
    children = [r for r in runs if r.data.tags["rnnsgd.role"] == "trial"]
    assert parent.data.tags[tracking.NOTE] == DESCRIPTION
    params = parent.data.params
    assert params["axis.data.N"] == "16, 32" and params["axis.seed.run"] == "0, 1"
    assert params["base.model.m"] == "32" and params["base.train.T"] == "600" and params["base.data.L"] == "4"
    assert not any(k.startswith("base.") and k[5:] in ("data.N", "seed.run") for k in params)
    top = {a.path for a in c.list_artifacts(parent.info.run_id)}
    assert {"sweep.json", "sweep.yaml", "report"} <= top
    stored = Path(c.download_artifacts(parent.info.run_id, "sweep.yaml", str(tmp_path)))
    assert stored.read_text() == swept["file"].read_text()

    # the children: the full config as params, the axes among them (the runs table's columns)
    assert len(children) == len(sweep.points) == 4
    by_point = {r.data.tags["point_id"]: r for r in children}
    for p in sweep.points:
        run = by_point[p.point_id]
        assert run.data.params["data.N"] == str(p.flat["data.N"])
        assert run.data.params["seed.run"] == str(p.flat["seed.run"])
        assert run.info.run_name == p.label()

    # the report on the parent: its files, and the points as a table the UI shows; a second report replaces
    # the table (MLflow's log_table would append to it)
    assert {"report/report.html", "report/figures", tracking.RESULTS} <= {
        a.path for a in c.list_artifacts(parent.info.run_id, "report")
    }
    logged = json.loads(c.get_run(parent.info.run_id).data.tags["mlflow.loggedArtifacts"])
    assert {"path": tracking.RESULTS, "type": "table"} in logged

    def table() -> pd.DataFrame:
        dst = tmp_path / f"table-{time.monotonic_ns()}"
        dst.mkdir()
        path = c.download_artifacts(parent.info.run_id, tracking.RESULTS, str(dst))
        return pd.read_json(path, orient="split")

    first = table()
    assert len(first) == 4
    assert {"data.N", "seed.run", "outcome", "test/rel_risk_tail", "point_id"} <= set(first)
    assert "model.m" not in first  # a key that does not vary says nothing about a point
    tracking.log_report(swept["uri"], parent.info.run_id, swept["report"], first)
    assert len(table()) == 4


def test_a_rerun_that_changes_an_axis_keeps_the_params_and_says_so(store, tmp_path):
    """MLflow refuses to change a param: a re-run of the sweep with a grown axis keeps the first value and
    names the key in rnnsgd.changed_params, which a run with the first values again removes."""
    from rnnsgd.sweep.spec import load_sweep

    path = write_sweep(tmp_path, "grow-params", grid={"data.N": [16, 32]})
    small, grown = load_sweep(str(path)), load_sweep(str(path), sets={"data.N": "[16, 32, 64]"})
    tracker = tracking.SweepTracker(store["tracking_uri"])
    exp = tracker.experiment("grow-params")
    run_id = tracker.open_parent(exp, small, {})
    assert tracker.open_parent(exp, grown, {}) == run_id
    run = tracker.client.get_run(run_id)
    assert run.data.params["axis.data.N"] == "16, 32" and run.data.tags[tracking.CHANGED] == "axis.data.N"
    tracker.open_parent(exp, small, {})
    assert tracking.CHANGED not in tracker.client.get_run(run_id).data.tags


def test_the_browser_shows_the_report_and_the_runs(swept, tmp_path):
    """scripts/browser_check.py on the report and on `mlflow ui`: the report's images load, the runs page
    lists the sweep's point runs as model training, the charts show the headline section; screenshots kept."""
    why = _browser_check().browser_missing()
    if why is not None:
        if os.environ.get("RNNSGD_REQUIRE_CLUSTER_TOOLS") == "1":
            pytest.fail(f"RNNSGD_REQUIRE_CLUSTER_TOOLS=1 but {why}")
        pytest.skip(why)
    out = Path(os.environ.get("RNNSGD_TEST_ARTIFACTS") or tmp_path) / "mlflow_ui"
    url, proc = swept["ui"], swept["ui_proc"]
    deadline = time.monotonic() + 180
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                break
        except OSError:
            assert proc.poll() is None, swept["ui_log"].read_text()[-3000:]
            assert time.monotonic() < deadline, "mlflow ui did not answer in 180 s"
            time.sleep(0.5)
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--report",
        str(swept["report"] / "report.html"),
        "--mlflow",
        url,
        "--experiment",
        NAME,
        "--out",
        str(out),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout + done.stderr
    for shot in ("report", "mlflow_runs", "mlflow_charts", "mlflow_run", "mlflow_parent"):
        assert (out / f"{shot}.png").stat().st_size > 10_000, shot
