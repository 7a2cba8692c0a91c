"""The sweep service end to end on a real local Ray (2 CPUs) and a real MLflow SQLite store: the smoke sweep,
a growing grid, a trial that raises, a trial whose process is killed.
(rnnsgd.sweep: runner, trial, tracking)."""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

import pytest
from sweep_testlib import assert_one_finished_per_point, by_point, client, steps, sweep_runs, write_sweep

from rnnsgd.metrics import LOGGED
from rnnsgd.sweep.runner import run_sweep
from rnnsgd.sweep.spec import load_sweep
from rnnsgd.sweep.status import sweep_status

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DESIGN_TAGS = ("sweep", "point_id", "seed", "outcome", "git_sha", "device")

pytestmark = pytest.mark.slow  # each test runs real sweeps


def test_smoke_sweep_end_to_end(ray_local, store):
    """sweeps/smoke.yaml (budgets cut for the test): one FINISHED child per point under one parent, every
    metric of docs/metrics.md at several steps, every tag, the params; full coverage; a re-run runs
    nothing."""
    sets = {"train.T": "300", "data.n_test": "128", "train.probe": "8"}
    sets |= {"data.L": "[4, 8]", "data.N": "[16, 64]"}
    sweep = load_sweep(os.path.join(REPO, "sweeps", "smoke.yaml"), sets=sets)
    out = io.StringIO()
    report = run_sweep(sweep, out=out, **store)
    assert (report.done, report.failed, report.missing, report.exit_code) == (len(sweep.points), 0, 0, 0)
    assert report.train_s > 0 and "mlflow ui --backend-store-uri sqlite:///" in report.ui_command()
    assert f"{len(sweep.points)}/{len(sweep.points)} done" in out.getvalue()

    uri = store["tracking_uri"]
    runs = assert_one_finished_per_point(uri, sweep.name, [p.point_id for p in sweep.points])
    parents, _ = sweep_runs(uri, sweep.name)
    assert parents[0].info.status == "FINISHED"
    for p in sweep.points:
        run = runs[p.point_id]
        assert set(DESIGN_TAGS) <= set(run.data.tags), set(DESIGN_TAGS) - set(run.data.tags)
        assert run.data.tags["sweep"] == sweep.name and run.data.tags["seed"] == str(p.flat["seed.run"])
        assert run.data.tags["outcome"] in ("completed", "budget", "diverged")
        assert run.data.tags["device"] == "cpu"
        assert run.data.params["data.N"] == str(p.flat["data.N"]) and len(run.data.params) == len(p.flat)
        missing = [k for k in LOGGED if k not in run.data.metrics]
        assert not missing, missing
        history = steps(uri, run.info.run_id)
        assert history[0] == 0 and len(history) >= 4 and history == sorted(set(history))
    # perf/steps_per_s is NaN at step 0 (no steps yet): logged as NaN, not dropped
    first = client(uri).get_metric_history(runs[sweep.points[0].point_id].info.run_id, "perf/steps_per_s")
    assert math.isnan(min(first, key=lambda m: m.step).value)

    cov, text = sweep_status(sweep, uri)
    assert cov.totals()["done"] == len(sweep.points) and "missing" in text and "data.N" in text

    again = run_sweep(sweep, out=io.StringIO(), **store)
    assert again.ran == 0 and again.exit_code == 0


def test_growing_an_axis_runs_only_the_new_points(ray_local, store, tmp_path):
    path = write_sweep(tmp_path, "grow", grid={"data.N": [16, 32]}, seeds=1)
    small = load_sweep(path)
    assert run_sweep(small, out=io.StringIO(), **store).ran == 2
    before = {r.info.run_id: r.info.end_time for r in sweep_runs(store["tracking_uri"], "grow")[1]}

    grown = load_sweep(path, sets={"data.N": "[16, 32, 64]", "seeds": "2"})
    report = run_sweep(grown, out=io.StringIO(), **store)
    assert report.ran == len(grown.points) - 2 == 4 and report.done == 6
    runs = assert_one_finished_per_point(store["tracking_uri"], "grow", [p.point_id for p in grown.points])
    after = {r.info.run_id: r.info.end_time for r in runs.values()}
    assert all(after[rid] == end for rid, end in before.items()), "a finished point was run again"


def test_a_trial_that_raises_fails_alone_with_its_traceback(ray_local, store, tmp_path, monkeypatch):
    sweep = load_sweep(write_sweep(tmp_path, "raises", grid={"data.N": [16, 32, 64]}))
    bad = sweep.points[1]
    monkeypatch.setenv("RNNSGD_FAULT", f"raise@{bad.point_id}:10")
    report = run_sweep(sweep, out=io.StringIO(), **store)
    assert (report.done, report.failed, report.exit_code) == (2, 1, 1)

    uri = store["tracking_uri"]
    parents, children = sweep_runs(uri, "raises")
    runs = by_point(children)
    assert parents[0].info.status == "FAILED"
    assert [r.info.status for r in runs[bad.point_id]] == ["FAILED"]
    failed = runs[bad.point_id][0]
    assert failed.data.tags["outcome"] == "error" and "injected fault" in failed.data.tags["rnnsgd.error"]
    text = Path(
        client(uri).download_artifacts(failed.info.run_id, "traceback.txt", str(tmp_path))
    ).read_text()
    assert "Traceback" in text and "injected fault" in text
    for p in sweep.points:
        if p is not bad:
            assert [r.info.status for r in runs[p.point_id]] == ["FINISHED"]

    # fixed: a re-run runs only the failed point, in a new run (the failed one stays as the record)
    monkeypatch.delenv("RNNSGD_FAULT")
    again = run_sweep(sweep, out=io.StringIO(), **store)
    assert again.ran == 1 and again.exit_code == 0
    cov, _ = sweep_status(sweep, uri)
    assert cov.totals()["done"] == 3


def test_a_killed_trial_process_resumes_from_its_checkpoint_in_the_same_run(
    ray_local, store, tmp_path, monkeypatch
):
    sweep = load_sweep(write_sweep(tmp_path, "killed", base={"train.T": 2000}, grid={"data.N": [16, 32]}))
    victim = sweep.points[0]
    monkeypatch.setenv("RNNSGD_FAULT", f"kill@{victim.point_id}:100")
    out = io.StringIO()
    report = run_sweep(sweep, out=out, **store)
    assert report.exit_code == 0, out.getvalue()
    assert "retrying from its checkpoint" in out.getvalue()

    uri = store["tracking_uri"]
    runs = assert_one_finished_per_point(uri, "killed", [p.point_id for p in sweep.points])
    run = runs[victim.point_id]
    assert int(run.data.tags["rnnsgd.resumed_from_step"]) >= 100  # not from step 0
    history = steps(uri, run.info.run_id)
    assert history == sorted(set(history)) and history[0] == 0 and history[-1] > 100  # one run, no repeats
    assert int(runs[sweep.points[1].point_id].data.tags["rnnsgd.resumed_from_step"]) == 0


def test_a_trial_that_dies_with_no_retries_left_ends_failed(ray_local, store, tmp_path, monkeypatch):
    """max_failures: 0 and a killed process: Tune gives up, the driver closes the point's run as FAILED."""
    sweep = load_sweep(write_sweep(tmp_path, "gives-up", grid={"data.N": [16, 32]}, max_failures=0))
    victim = sweep.points[0]
    monkeypatch.setenv("RNNSGD_FAULT", f"kill@{victim.point_id}:10")
    report = run_sweep(sweep, out=io.StringIO(), **store)
    assert (report.done, report.failed, report.exit_code) == (1, 1, 1)
    runs = by_point(sweep_runs(store["tracking_uri"], "gives-up")[1])
    (run,) = runs[victim.point_id]
    assert run.info.status == "FAILED" and run.data.tags["outcome"] == "error"
    artifacts = client(store["tracking_uri"]).list_artifacts(run.info.run_id)
    assert [a.path for a in artifacts] == ["traceback.txt"]


@pytest.mark.gpu
def test_a_trial_given_a_gpu_share_trains_on_cuda(ray_local, store, tmp_path):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    sweep = load_sweep(
        write_sweep(tmp_path, "gpu", grid={"data.N": [16, 32]}, resources={"cpu": 1, "gpu": 0.5})
    )
    assert run_sweep(sweep, out=io.StringIO(), **store).exit_code == 0
    runs = assert_one_finished_per_point(store["tracking_uri"], "gpu", [p.point_id for p in sweep.points])
    assert {r.data.tags["device"] for r in runs.values()} == {"cuda"}
