"""Interrupting the sweep driver (`rnnsgd sweep` in a subprocess, joined to the test's Ray) with SIGINT, and
separately SIGKILL, mid-sweep, then re-running it: every point ends with exactly one FINISHED run, none
RUNNING, none duplicated, the finished points were not trained again (though their packs were stopped), and
interrupted points resume."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time

import pytest
from sweep_testlib import assert_one_finished_per_point, steps, sweep_runs, write_sweep

from rnnsgd.sweep.runner import run_sweep
from rnnsgd.sweep.spec import load_sweep

pytestmark = pytest.mark.slow  # each test runs real sweeps


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen, log) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if predicate():
            return
        if proc.poll() is not None:
            log.seek(0)
            pytest.fail(f"the driver exited ({proc.returncode}) before {what}:\n{log.read()[-3000:]}")
        time.sleep(0.3)
    pytest.fail(f"timed out waiting for {what}")


def statuses(uri: str, name: str) -> list[str]:
    try:
        return [r.info.status for r in sweep_runs(uri, name)[1]]
    except Exception:  # the experiment does not exist yet
        return []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["sigint", "sigkill"])
def test_interrupted_driver_then_rerun(ray_local, store, tmp_path, sig):
    name = f"interrupt-{sig.name.lower()}"
    # 4 points in 2 packs of 2 (one trial per core), each a short point and a long one (no plateau
    # before its budget): a point finishes while its pack goes on
    path = write_sweep(
        tmp_path, name, base={"train.min_steps": 100000}, grid={"data.N": [16, 32], "train.T": [2000, 100000]}
    )
    sweep = load_sweep(path)
    uri = store["tracking_uri"]
    env = {**os.environ, "RAY_ADDRESS": ray_local}
    cmd = [
        sys.executable,
        "-m",
        "rnnsgd.cli",
        "sweep",
        str(path),
        "--tracking-uri",
        uri,
        "--storage",
        store["storage"],
    ]
    with open(tmp_path / "driver.log", "w+") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
        try:
            wait_for(
                lambda: {"FINISHED", "RUNNING"} <= set(statuses(uri, name)),
                240,
                "a finished point and a running one",
                proc,
                log,
            )
            time.sleep(2)  # the running points get past their first checkpoints
            proc.send_signal(sig)
            rc = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
        log.seek(0)
        output = log.read()

    parents, children = sweep_runs(uri, name)
    if sig == signal.SIGINT:  # a graceful stop: the driver closes what it opened and says how to resume
        assert rc == 130, output[-3000:]
        assert "RUNNING" not in [r.info.status for r in children], output[-3000:]
        assert parents[0].info.status == "KILLED"
        assert "resume with: rnnsgd sweep" in output
    else:
        assert rc == -signal.SIGKILL
        time.sleep(2)  # Ray ends the dead driver's trials
    finished = {
        r.data.tags["point_id"]: (r.info.run_id, r.info.end_time, len(steps(uri, r.info.run_id)))
        for r in children
        if r.info.status == "FINISHED"
    }
    interrupted = {r.data.tags["point_id"] for r in children if r.info.status != "FINISHED"}
    assert finished and interrupted

    report = run_sweep(sweep, out=io.StringIO(), **store)
    assert report.exit_code == 0 and report.ran == len(sweep.points) - len(finished)
    runs = assert_one_finished_per_point(uri, name, [p.point_id for p in sweep.points])
    for pid, (run_id, end_time, n_steps) in finished.items():  # not trained again
        run = runs[pid]
        assert (run.info.run_id, run.info.end_time, len(steps(uri, run_id))) == (run_id, end_time, n_steps)
    resumed = [pid for pid in interrupted if int(runs[pid].data.tags["rnnsgd.resumed_from_step"]) > 0]
    assert resumed, "no interrupted point resumed from its checkpoint"
    for pid in resumed:  # the same run carried on: step 0 logged once, never restarted
        history = steps(uri, runs[pid].info.run_id)
        assert history.count(0) == 1 and max(history) >= int(runs[pid].data.tags["rnnsgd.resumed_from_step"])
