"""Faults around a sweep, on real processes (`rnnsgd sweep` subprocesses joined to the test's Ray, real MLflow
SQLite stores): a full disk, a corrupt checkpoint, two first-time drivers at once. Each ends in honest
statuses: no run left RUNNING once the driver exits, one line saying what happened, and a re-run that
finishes every point with exactly one FINISHED run."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from sweep_testlib import by_point, client, read_back, start_driver, steps, sweep_runs, write_sweep

from rnnsgd.sweep.runner import run_sweep
from rnnsgd.sweep.spec import load_sweep

pytestmark = pytest.mark.slow  # each test runs real sweeps


def run_driver(path: Path, uri: str, storage: str, ray_address: str) -> tuple[int, str]:
    with open(path.parent / f"driver-{time.monotonic_ns()}.log", "w+") as log:
        proc = start_driver(path, uri, storage, ray_address, log)
        rc = proc.wait(timeout=300)
        return rc, read_back(log)


def assert_finished_once(uri: str, name: str, point_ids: list[str]) -> dict[str, list]:
    """Every point: exactly one FINISHED run; no run RUNNING; any other run FAILED (a record)."""
    parents, children = sweep_runs(uri, name)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    runs = by_point(children)
    assert set(runs) == set(point_ids)
    for pid, rs in runs.items():
        statuses = sorted(r.info.status for r in rs)
        assert statuses.count("FINISHED") == 1 and set(statuses) <= {"FINISHED", "FAILED"}, (pid, statuses)
    return runs


@pytest.fixture
def tmpfs(tmp_path):
    """A folder on a tmpfs of its own: mount(size) mounts it (or remounts it at a new size)."""
    folder = tmp_path / "tmpfs"
    folder.mkdir()
    if os.geteuid() != 0:
        pytest.skip("a full disk is made with a small tmpfs, which only root can mount")
    mounted = []

    def mount(size: str) -> Path:
        opts = f"remount,size={size}" if mounted else f"size={size}"
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(folder)], capture_output=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
        mounted.append(size)
        return folder

    yield mount
    if mounted:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_full_disk_fails_every_point_with_the_reason(ray_local, store, tmp_path, tmpfs):
    """Checkpoints on a small tmpfs (the MLflow store elsewhere): too small to start is bad input (exit 2,
    one line, nothing written); big enough to start but not to finish, every point ends FAILED saying so,
    the parent FAILED with the fault, exit 1, no half-written checkpoint left; with room, a re-run
    finishes every point."""
    # 4 points at m = 256 in 2 packs: a checkpoint is 0.54 MB at step 0 and 0.8 MB from step 1 on
    path = write_sweep(tmp_path, "disk", base={"model.m": 256}, seeds=4, max_failures=1)
    sweep = load_sweep(path)
    uri, disk = store["tracking_uri"], tmpfs("1m")
    storage = str(disk / "ray")

    rc, output = run_driver(path, uri, storage, ray_local)
    assert rc == 2, output[-3000:]
    assert output.strip().splitlines() == [output.strip()] and "--storage" in output and "MB free" in output
    assert client(uri).get_experiment_by_name("disk") is None and not any(disk.iterdir())

    tmpfs("3m")  # more than the least the 4 checkpoints need (2.1 MB), less than they take (3.2 MB)
    rc, output = run_driver(path, uri, storage, ray_local)
    last = output.strip().splitlines()[-2]  # the summary, then the `mlflow ui` command
    assert rc == 1, output[-3000:]
    assert last.startswith("[disk] 0/4 done, 4 failed") and f"no space left on device in {disk}" in last, last
    parents, children = sweep_runs(uri, "disk")
    assert [p.info.status for p in parents] == ["FAILED"]
    assert "no space left on device" in parents[0].data.tags["rnnsgd.fault"]
    assert sorted(r.info.status for r in children) == ["FAILED"] * 4
    for r in children:
        assert "no space left on device" in r.data.tags["rnnsgd.error"].lower(), r.data.tags["rnnsgd.error"]
    assert not list(disk.rglob("*.tmp")), list(disk.rglob("*"))

    tmpfs("64m")
    rc, output = run_driver(path, uri, storage, ray_local)
    assert rc == 0, output[-3000:]
    assert_finished_once(uri, "disk", [p.point_id for p in sweep.points])
    assert "rnnsgd.fault" not in sweep_runs(uri, "disk")[0][0].data.tags


def test_a_corrupt_checkpoint_restarts_its_point_alone(ray_local, store, tmp_path):
    """A driver stopped mid-sweep (Ctrl+C), then one checkpoint truncated: the re-run restarts that point
    from step 0 in a new run (its old run ends FAILED naming the checkpoint), its pack-mate resumes from its
    own checkpoint in its own run, and every point ends with exactly one FINISHED run."""
    # 2 points in one pack, long enough to be stopped mid-way (no plateau before the budget), with
    # evaluations close enough that their metrics reach MLflow (every TrialRun.FLUSH_S) before that
    base = {"train.T": 200000, "train.min_steps": 200000, "train.evals_per_decade": 16}
    path = write_sweep(tmp_path, "corrupt", base=base, seeds=2, concurrency=1)
    sweep = load_sweep(path)
    uri = store["tracking_uri"]
    victim, mate = sweep.points
    c = client(uri)

    def ready() -> bool:  # the victim's run has metrics in MLflow, the mate a checkpoint past step 0
        try:
            runs = by_point(sweep_runs(uri, "corrupt")[1])
            logged = c.get_metric_history(runs[victim.point_id][0].info.run_id, "test/risk")
            import torch

            ckpt = Path(store["storage"]) / "corrupt" / "points" / mate.point_id / "checkpoint.pt"
            return bool(logged) and torch.load(ckpt, weights_only=True)["meta"]["step"] > 0
        except Exception:
            return False

    with open(tmp_path / "driver.log", "w+") as log:
        proc = start_driver(path, uri, store["storage"], ray_local, log)
        try:
            t0 = time.monotonic()
            while not ready():
                assert proc.poll() is None and time.monotonic() - t0 < 120, "the driver ended too early"
                time.sleep(0.2)
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=120) == 130
        finally:
            if proc.poll() is None:
                proc.kill()
    before = {r.data.tags["point_id"]: r for r in sweep_runs(uri, "corrupt")[1]}
    assert [before[p.point_id].info.status for p in sweep.points] == ["KILLED", "KILLED"]
    checkpoint = Path(store["storage"]) / "corrupt" / "points" / victim.point_id / "checkpoint.pt"
    os.truncate(checkpoint, 1000)

    out = io.StringIO()
    report = run_sweep(sweep, out=out, **store)
    assert report.exit_code == 0 and report.fault is None, out.getvalue()
    runs = assert_finished_once(uri, "corrupt", [p.point_id for p in sweep.points])

    old, new = sorted(runs[victim.point_id], key=lambda r: r.info.start_time)
    assert old.info.run_id == before[victim.point_id].info.run_id and old.info.status == "FAILED"
    assert f"unreadable checkpoint {checkpoint.resolve()}" in old.data.tags["rnnsgd.restarted"]
    assert new.info.status == "FINISHED" and new.data.tags["rnnsgd.resumed_from_step"] == "0"
    history = steps(uri, new.info.run_id)
    assert history == sorted(set(history)) and history[0] == 0  # from step 0, no step twice

    (resumed,) = runs[mate.point_id]  # the pack-mate: its own run, from its own checkpoint
    assert resumed.info.run_id == before[mate.point_id].info.run_id
    assert int(resumed.data.tags["rnnsgd.resumed_from_step"]) > 0
    history = steps(uri, resumed.info.run_id)
    assert history.count(0) == 1 and history[-1] == 200000

    again = run_sweep(sweep, out=io.StringIO(), **store)
    assert again.ran == 0 and again.exit_code == 0


def test_two_first_drivers_on_a_new_store_one_runs_one_is_refused(ray_local, tmp_path, monkeypatch):
    """Two `rnnsgd sweep` started at once on a store that does not exist yet: one creates it and runs the
    sweep, the other waits for the store to be created, then meets the first one's lock (exit 2, one line)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RNNSGD_FAULT", raising=False)
    path = write_sweep(tmp_path, "race", base={"train.T": 20000}, seeds=2)
    uri, storage = f"sqlite:///{tmp_path}/new/mlflow.db", str(tmp_path / "ray")
    with open(tmp_path / "driver0.log", "w+") as log0, open(tmp_path / "driver1.log", "w+") as log1:
        procs = [start_driver(path, uri, storage, ray_local, log) for log in (log0, log1)]
        try:
            rcs = [p.wait(timeout=240) for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
        outputs = [read_back(log) for log in (log0, log1)]
    assert sorted(rcs) == [0, 2], outputs
    refused = outputs[rcs.index(2)].strip().splitlines()
    assert len(refused) == 1 and "is being run right now by" in refused[0], refused
    assert "wait or stop that driver" in refused[0]
    runs = assert_finished_once(uri, "race", [p.point_id for p in load_sweep(path).points])
    assert all(len(rs) == 1 for rs in runs.values())
