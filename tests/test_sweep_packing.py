"""Packing in the sweep service (rnnsgd.sweep.packing, rnnsgd.sweep.trial): which points share a trial, and
real sweeps on the test's Ray whose packs give every point its own MLflow run, its own status and the
results it gets alone; failures, divergence and a killed pack stay per point."""

from __future__ import annotations

import io
import math
import subprocess
import sys
from pathlib import Path

import pytest
from sweep_testlib import assert_one_finished_per_point, by_point, client, steps, sweep_runs, write_sweep

from rnnsgd.config import TrialConfig
from rnnsgd.memory import pack_bytes
from rnnsgd.sweep.packing import AUTO_MAX, plan, split_to_fit
from rnnsgd.sweep.runner import run_sweep
from rnnsgd.sweep.spec import Pack, SweepError, load_sweep


def cfg(**flat) -> TrialConfig:
    return TrialConfig.from_flat({"model.m": 32, "data.L": 4, "data.N": 64, **flat})


# ---------------------------------------------------------------------------------------------- plan


def test_plan_packs_only_same_shapes_and_keeps_every_slot_busy():
    cfgs = [
        cfg(**{"data.L": L, "data.N": N, "seed.run": s}) for L in (4, 8) for N in (16, 64) for s in range(4)
    ]
    costs = [float(c.data.L) for c in cfgs]
    packs = plan(cfgs, costs, Pack(), slots=1, budget=None)
    assert sorted(map(len, packs)) == [8, 8]  # one per shape: one slot needs no more
    assert all(len({cfgs[i].data.L for i in p}) == 1 for p in packs)
    assert sum(costs[i] for i in packs[0]) >= sum(costs[i] for i in packs[1])  # the costliest first

    packs = plan(cfgs, costs, Pack(), slots=4, budget=None)  # L=8 has 2/3 of the cost: 3 of the 4 slots
    by_L = {L: [len(p) for p in packs if cfgs[p[0]].data.L == L] for L in (4, 8)}
    assert sorted(by_L[4]) == [4, 4] and sorted(by_L[8]) == [2, 3, 3]
    assert sorted(i for p in packs for i in p) == list(range(len(cfgs)))  # every point once

    assert all(len(p) == 1 for p in plan(cfgs, costs, Pack(size=1), slots=1, budget=None))
    assert max(map(len, plan(cfgs, costs, Pack(size=3), slots=1, budget=None))) == 3
    many = [cfg(**{"seed.run": s}) for s in range(2 * AUTO_MAX + 2)]  # 130: three packs
    assert sorted(map(len, plan(many, [1.0] * len(many), Pack(), 1, None))) == [43, 43, 44]


def test_plan_balances_a_shapes_packs_by_cost():
    cfgs = [cfg(**{"seed.run": s}) for s in range(6)]
    costs = [10.0, 9.0, 1.0, 1.0, 1.0, 1.0]
    packs = plan(cfgs, costs, Pack(), slots=2, budget=None)
    loads = sorted(sum(costs[i] for i in p) for p in packs)
    assert loads == [11.0, 12.0]  # not [10, 9] + four 1s in one of them


def test_plan_fits_the_memory_budget_or_refuses_an_explicit_size():
    cfgs = [cfg(**{"seed.run": s}) for s in range(8)]
    budget = pack_bytes(cfgs[:3])  # three fit, four do not
    packs = plan(cfgs, [1.0] * 8, Pack(), slots=1, budget=budget)
    assert max(map(len, packs)) == 3 and sum(map(len, packs)) == 8
    with pytest.raises(SweepError, match=r"pack.size: 8 points of shape m=32 L=4 .* at most 3 fit"):
        plan(cfgs, [1.0] * 8, Pack(size=8), slots=1, budget=budget)
    assert len(plan(cfgs, [1.0] * 8, Pack(size=8), slots=1, budget=pack_bytes(cfgs))) == 1


def test_split_to_fit_runs_a_point_alone_whatever_its_estimate():
    cfgs = [cfg(**{"seed.run": s}) for s in range(5)]
    assert split_to_fit(cfgs, pack_bytes(cfgs[:2])) == [[0, 1], [2, 3], [4]]
    assert split_to_fit(cfgs, 1) == [[0], [1], [2], [3], [4]]


def test_bad_pack_settings_exit_2_before_anything_runs(tmp_path):
    path = write_sweep(tmp_path, "bad-pack", grid={"data.N": [16, 32]})
    for sets, message in (
        (["pack.size=0"], "pack.size: expected auto or an integer >= 1"),
        (["pack.size=2.5"], "pack.size: expected auto or an integer >= 1"),
        (["pack.memory_fraction=1.5"], "pack.memory_fraction: expected a fraction in (0, 1]"),
        (["pack.memory_fraction=0"], "pack.memory_fraction: expected a fraction in (0, 1]"),
        (["pack.colour=red"], "pack.colour: unknown key (known: size, memory_fraction)"),
        (["pack.size=2", "pack.memory_fraction=1e-9"], "pack.size: 2 points of shape m=32 L=4 need about"),
    ):
        cmd = [sys.executable, "-m", "rnnsgd.cli", "sweep", str(path), *(f"--set={s}" for s in sets)]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=120)
        assert proc.returncode == 2, (sets, proc.stderr)
        assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "runs").exists()  # no store, no checkpoints: nothing ran


def test_dry_run_shows_the_trials(tmp_path):
    path = write_sweep(tmp_path, "dry", grid={"data.N": [16, 32, 64, 128]}, seeds=2)  # one shape, 2 slots
    cmd = [sys.executable, "-m", "rnnsgd.cli", "sweep", str(path), "--dry-run"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout
    assert "2 trials: 2 x 4 points (pack.size auto, 2 at a time on this machine)" in out
    out = subprocess.run([*cmd, "--set=pack.size=1"], capture_output=True, text=True, timeout=120).stdout
    assert "8 trials: 8 x 1 points (pack.size 1" in out


# ---------------------------------------------------------------------------------------------- real sweeps

slow = pytest.mark.slow


def finals(uri: str, runs: dict) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """point_id -> metric -> [(step, value)], the timing metrics left out, NaN as "nan" (NaN != NaN)."""
    c = client(uri)
    out = {}
    for pid, run in runs.items():
        keys = [k for k in run.data.metrics if not k.startswith("perf/")]
        history = {k: c.get_metric_history(run.info.run_id, k) for k in keys}
        out[pid] = {
            k: sorted((m.step, "nan" if math.isnan(m.value) else m.value) for m in ms)
            for k, ms in history.items()
        }
    return out


@slow
def test_a_packed_sweep_gives_each_point_its_own_run_and_the_results_it_gets_alone(
    ray_local, store, tmp_path
):
    grid = {"data.N": [16, 64], "train.eps": [0.1, 0.05]}  # one shape; eps changes lambda, eta and T
    packed = load_sweep(write_sweep(tmp_path, "packed", grid=grid, concurrency=1))
    alone = load_sweep(write_sweep(tmp_path, "alone", grid=grid, concurrency=1, pack={"size": 1}))
    out = io.StringIO()
    report = run_sweep(packed, out=out, **store)
    assert (report.done, report.ran, report.trials, report.exit_code) == (4, 4, 1, 0), out.getvalue()
    assert "4 to run in 1 trial;" in out.getvalue() and "4/4 done" in out.getvalue()
    assert run_sweep(alone, out=io.StringIO(), **store).trials == 4

    uri = store["tracking_uri"]
    ids = [p.point_id for p in packed.points]
    assert ids == [p.point_id for p in alone.points]  # packing is not part of a point
    runs_packed = assert_one_finished_per_point(uri, "packed", ids)
    runs_alone = assert_one_finished_per_point(uri, "alone", ids)
    assert len({r.data.tags["rnnsgd.trial_id"] for r in runs_packed.values()}) == 1
    assert {r.data.tags["rnnsgd.pack_size"] for r in runs_packed.values()} == {"4"}
    assert len({r.data.tags["rnnsgd.trial_id"] for r in runs_alone.values()}) == 4
    first = client(uri).get_metric_history(runs_packed[ids[0]].info.run_id, "perf/pack_size")
    assert min(first, key=lambda m: m.step).value == 4.0
    a, b = finals(uri, runs_packed), finals(uri, runs_alone)
    for pid in ids:  # bit for bit (m = 32, a multiple of 16), every metric at every step
        assert a[pid] == b[pid], pid
        assert runs_packed[pid].data.tags["outcome"] == runs_alone[pid].data.tags["outcome"]


@slow
def test_in_a_pack_a_failing_point_fails_alone_and_a_diverging_one_ends_alone(
    ray_local, store, tmp_path, monkeypatch
):
    zip_ = [{"data.N": [16, 32, 64, 128], "train.c_eta": [0.3, 0.3, 0.3, 1e6]}]  # the last one blows up
    sweep = load_sweep(write_sweep(tmp_path, "isolate", zip=zip_, concurrency=1))
    bad, diverging = sweep.points[1], sweep.points[3]
    monkeypatch.setenv("RNNSGD_FAULT", f"raise@{bad.point_id}:10")
    report = run_sweep(sweep, out=io.StringIO(), **store)
    assert (report.trials, report.done, report.failed, report.exit_code) == (1, 3, 1, 1)

    uri = store["tracking_uri"]
    runs = by_point(sweep_runs(uri, "isolate")[1])
    (failed,) = runs[bad.point_id]
    assert failed.info.status == "FAILED" and "injected fault" in failed.data.tags["rnnsgd.error"]
    text = Path(
        client(uri).download_artifacts(failed.info.run_id, "traceback.txt", str(tmp_path))
    ).read_text()
    assert "injected fault" in text
    assert max(steps(uri, failed.info.run_id)) < 100  # it left the pack at its fault
    (div,) = runs[diverging.point_id]
    assert div.info.status == "FINISHED" and div.data.tags["outcome"] == "diverged"
    assert not math.isfinite(div.data.metrics["train/risk"]) or div.data.metrics["train/risk"] > 1
    for p in (sweep.points[0], sweep.points[2]):  # the others trained to their end
        (run,) = runs[p.point_id]
        assert run.info.status == "FINISHED" and run.data.tags["outcome"] in ("budget", "completed")
        assert max(steps(uri, run.info.run_id)) > max(steps(uri, div.info.run_id))
    assert len({r[0].data.tags["rnnsgd.trial_id"] for r in runs.values()}) == 1


@slow
def test_a_killed_pack_resumes_its_unfinished_points_and_never_reruns_the_ended_ones(
    ray_local, store, tmp_path, monkeypatch
):
    """One trial of three points: a short one ends at step 300, then the process is SIGKILLed at step 1000
    of another. Tune retries the trial: the ended point is skipped (one run, trained once), the other two
    resume from their checkpoints in their own runs."""
    zip_ = [{"data.N": [16, 32, 64], "train.T": [300, 3000, 3000]}]
    sweep = load_sweep(write_sweep(tmp_path, "killed-pack", zip=zip_, concurrency=1))
    short, victim, other = sweep.points
    monkeypatch.setenv("RNNSGD_FAULT", f"kill@{victim.point_id}:1000")
    out = io.StringIO()
    report = run_sweep(sweep, out=out, **store)
    assert (report.trials, report.exit_code) == (1, 0), out.getvalue()
    assert "retrying from its checkpoints" in out.getvalue()

    uri = store["tracking_uri"]
    runs = assert_one_finished_per_point(uri, "killed-pack", [p.point_id for p in sweep.points])
    assert runs[short.point_id].data.tags["rnnsgd.resumed_from_step"] == "0"
    assert max(steps(uri, runs[short.point_id].info.run_id)) == 300
    for p in (victim, other):
        run = runs[p.point_id]
        assert int(run.data.tags["rnnsgd.resumed_from_step"]) >= (1000 if p is victim else 1)
        history = steps(uri, run.info.run_id)
        assert history == sorted(set(history)) and history[0] == 0 and history[-1] == 3000
    for run in runs.values():  # every point's history once, whatever the retry re-sent
        history = steps(uri, run.info.run_id)
        assert len(history) == len(set(history))


@slow
def test_on_a_cluster_a_pack_over_its_nodes_budget_trains_in_parts(ray_local, store, tmp_path, monkeypatch):
    """With RAY_ADDRESS the driver cannot see the trials' devices and packs by pack.size alone; the trial
    checks its node's memory and trains the pack in parts that fit (here, a point at a time)."""
    monkeypatch.setenv("RAY_ADDRESS", ray_local)
    pack = {"size": 3, "memory_fraction": 1e-9}  # over any budget: every part is one point
    sweep = load_sweep(
        write_sweep(tmp_path, "parts", grid={"data.N": [16, 32, 64]}, concurrency=1, pack=pack)
    )
    report = run_sweep(sweep, out=io.StringIO(), **store)
    assert (report.trials, report.done, report.exit_code) == (1, 3, 0)
    uri = store["tracking_uri"]
    runs = assert_one_finished_per_point(uri, "parts", [p.point_id for p in sweep.points])
    assert len({r.data.tags["rnnsgd.trial_id"] for r in runs.values()}) == 1
    for run in runs.values():  # one trial of three points, each trained as a pack of one
        assert run.data.tags["rnnsgd.pack_size"] == "3" and run.data.metrics["perf/pack_size"] == 1.0
