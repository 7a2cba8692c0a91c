"""The sweep service against a real `mlflow server` on 127.0.0.1 (started here) instead of SQLite: runs,
metrics (NaN included), statuses and the traceback artifact all go through its REST API."""

from __future__ import annotations

import io
import math
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from sweep_testlib import by_point, client, sweep_runs, write_sweep

from rnnsgd.sweep.runner import run_sweep
from rnnsgd.sweep.spec import load_sweep
from rnnsgd.sweep.status import sweep_status


@pytest.fixture
def mlflow_server(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    mlflow = Path(sys.executable).with_name("mlflow")
    cmd = [
        str(mlflow),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{tmp_path}/server.db",
        "--artifacts-destination",
        str(tmp_path / "art"),
    ]
    with open(tmp_path / "server.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            for _ in range(240):
                try:
                    with urllib.request.urlopen(f"{url}/health", timeout=1):
                        break
                except OSError:
                    assert proc.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
                    time.sleep(0.5)
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=30)


@pytest.mark.slow
def test_sweep_logs_to_a_real_mlflow_server(ray_local, tmp_path, monkeypatch, mlflow_server):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    sweep = load_sweep(write_sweep(tmp_path, "served", grid={"data.N": [16, 32, 64]}))
    bad = sweep.points[2]
    monkeypatch.setenv("RNNSGD_FAULT", f"raise@{bad.point_id}:10")
    report = run_sweep(sweep, tracking_uri=mlflow_server, storage=str(tmp_path / "ray"), out=io.StringIO())
    assert (report.done, report.failed) == (2, 1)
    page = f"{mlflow_server}/#/experiments/{report.experiment_id}/runs"
    assert report.ui_command() == f"open {page}?workflowType=machine_learning&viewStateShareKey=sweep"

    parents, children = sweep_runs(mlflow_server, "served")
    runs = by_point(children)
    assert len(parents) == 1 and parents[0].info.status == "FAILED"
    assert [r.info.status for r in runs[bad.point_id]] == ["FAILED"]
    c = client(mlflow_server)
    assert [a.path for a in c.list_artifacts(runs[bad.point_id][0].info.run_id)] == ["traceback.txt"]
    for p in sweep.points[:2]:
        (run,) = runs[p.point_id]
        assert run.info.status == "FINISHED" and "test/risk" in run.data.metrics
        history = c.get_metric_history(run.info.run_id, "perf/steps_per_s")
        assert math.isnan(min(history, key=lambda m: m.step).value)  # NaN goes through the REST API too
    cov, text = sweep_status(sweep, mlflow_server)
    assert (cov.totals()["done"], cov.totals()["failed"]) == (2, 1) and mlflow_server in text
