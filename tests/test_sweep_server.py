"""The sweep service against a real `mlflow server` on 127.0.0.1 (started here) instead of SQLite: runs,
metrics (NaN included), statuses and the traceback artifact all go through its REST API."""

from __future__ import annotations

import io
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from sweep_testlib import (
    assert_one_finished_per_point,
    by_point,
    client,
    read_back,
    start_driver,
    steps,
    sweep_runs,
    write_sweep,
)

from rnnsgd.config import eval_steps
from rnnsgd.sweep.runner import run_sweep
from rnnsgd.sweep.spec import load_sweep
from rnnsgd.sweep.status import sweep_status


class MlflowServer:
    """A real `mlflow server` on 127.0.0.1 with a SQLite backend in `folder`: `start` it, `stop` it, start it
    again on the same database and port (an outage)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> str:
        mlflow = Path(sys.executable).with_name("mlflow")
        cmd = [str(mlflow), "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        cmd += ["--backend-store-uri", f"sqlite:///{self.folder}/server.db"]
        cmd += ["--artifacts-destination", str(self.folder / "art")]
        self.starts += 1
        log_path = self.folder / f"server{self.starts}.log"
        with open(log_path, "w") as log:  # the server keeps its own copy of the file descriptor
            # a session of its own: `stop` ends the server's workers with it
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        for _ in range(240):
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1):
                    return self.url
            except OSError:
                assert self.proc.poll() is None, log_path.read_text()[-2000:]
                time.sleep(0.5)
        raise AssertionError(f"mlflow server did not come up: {log_path.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        for _ in range(60):  # down: nothing answers on the port any more
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1):
                    time.sleep(0.5)
            except OSError:
                return


@pytest.fixture
def server(tmp_path):
    s = MlflowServer(tmp_path)
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def mlflow_server(server):
    return server.start()


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


@pytest.mark.slow
def test_an_mlflow_outage_mid_sweep_stops_it_and_a_rerun_fills_the_gap(
    ray_local, tmp_path, monkeypatch, server
):
    """The server stopped mid-sweep: the CLI driver fails fast (exit 1), its summary naming MLflow as the
    fault; with the server back on the same database, a re-run re-attaches each point to its run, resumes it
    from its checkpoint, and logs what MLflow missed: every run FINISHED, its test/risk history the whole
    evaluation grid, each step once, no gap where the outage was."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RNNSGD_FAULT", raising=False)
    uri = server.start()
    T = 400000  # long enough for the outage to fall mid-way (a trial trains ~30 s here), no plateau before T
    base = {"train.T": T, "train.min_steps": T, "train.evals_per_decade": 16}
    path = write_sweep(tmp_path, "outage", base=base, seeds=2, concurrency=1)
    sweep = load_sweep(path)
    storage = str(tmp_path / "ray")
    grid = eval_steps(T, 16)  # train.T > 0: the budget is T, the grid the trainer's
    c = client(uri)

    def ready() -> dict[str, str] | None:  # both runs have metrics in MLflow, both checkpoints past step 0
        try:
            runs = by_point(sweep_runs(uri, "outage")[1])
            ids = {p.point_id: runs[p.point_id][0].info.run_id for p in sweep.points}
            for p in sweep.points:
                ckpt = Path(storage) / "outage" / "points" / p.point_id / "checkpoint.pt"
                if not c.get_metric_history(ids[p.point_id], "test/risk"):
                    return None
                if torch_step(ckpt) <= 0:
                    return None
            return ids
        except Exception:
            return None

    fail_fast = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    with open(tmp_path / "driver.log", "w+") as log:
        proc = start_driver(path, uri, storage, ray_local, log, fail_fast)
        try:
            t0 = time.monotonic()
            while (before := ready()) is None:
                assert proc.poll() is None, "the driver ended before the outage:\n" + read_back(log)[-3000:]
                assert time.monotonic() - t0 < 180, "no metrics nor checkpoints after 180 s"
                time.sleep(0.5)
            server.stop()
            rc = proc.wait(timeout=120)  # fails fast: no retries, 5 s timeouts
        finally:
            if proc.poll() is None:
                proc.kill()
        output = read_back(log)
    lines = output.strip().splitlines()
    assert rc == 1, output[-3000:]
    (summary,) = [line for line in lines if "stopped by a fault" in line]  # then the page, the resume command
    assert summary.startswith("[outage] 0/2 done, 0 failed, 2 not run; "), summary
    assert f"; stopped by a fault: MLflow at {uri} failed" in summary, summary
    steps_down = {
        p.point_id: torch_step(Path(storage) / "outage" / "points" / p.point_id / "checkpoint.pt")
        for p in sweep.points
    }
    assert all(0 < s <= T for s in steps_down.values()), steps_down  # checkpoints kept

    server.start()  # back, on the same database and port
    held = {pid: sorted(set(steps(uri, run_id))) for pid, run_id in before.items()}
    for pid, logged in held.items():  # what MLflow holds: the grid's start, short of the end
        assert logged == grid[: len(logged)] and logged[-1] < T, (pid, logged)
    out = io.StringIO()
    report = run_sweep(sweep, tracking_uri=uri, storage=storage, out=out)
    assert report.exit_code == 0 and report.fault is None, out.getvalue()
    runs = assert_one_finished_per_point(uri, "outage", [p.point_id for p in sweep.points])
    assert [r.info.status for r in sweep_runs(uri, "outage")[0]] == ["FINISHED"]
    for p in sweep.points:
        run = runs[p.point_id]
        assert run.info.run_id == before[p.point_id]  # re-attached, not a new run
        assert int(run.data.tags["rnnsgd.resumed_from_step"]) == steps_down[p.point_id] > 0  # its checkpoint
        history = steps(uri, run.info.run_id)
        assert len(history) == len(set(history)), f"a step logged twice: {history}"
        assert sorted(history) == grid, (p.point_id, sorted(set(grid) - set(history)), steps_down, held)
    for p in sweep.points:  # done: its checkpoint deleted
        assert not (Path(storage) / "outage" / "points" / p.point_id / "checkpoint.pt").exists()


def torch_step(checkpoint: Path) -> int:
    import torch

    return torch.load(checkpoint, weights_only=True)["meta"]["step"]
