"""Helpers for the sweep tests: tiny sweep files and reading back what MLflow holds."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

# tiny trials: a second or two each on one core, with a handful of evaluations
TINY_BASE = {
    "model.m": 32,
    "data.L": 4,
    "data.N": 64,
    "data.n_test": 128,
    "train.T": 600,
    "train.evals_per_decade": 4,
    "train.probe": 16,
}


def write_sweep(folder: Path, name: str, **fields: Any) -> Path:
    """A sweep file `name`.yaml in `folder`; fields override the tiny default (base merges key by key)."""
    doc: dict[str, Any] = {"name": name, "base": dict(TINY_BASE), "resources": {"cpu": 1}, "concurrency": 2}
    doc["base"].update(fields.pop("base", {}))
    doc.update(fields)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def sweep_runs(uri: str, name: str) -> tuple[Any, list[Any]]:
    """(the parent runs, the child runs) of the sweep's experiment."""
    c = client(uri)
    exp = c.get_experiment_by_name(name)
    runs = c.search_runs([exp.experiment_id], max_results=5000)
    parents = [r for r in runs if r.data.tags.get("rnnsgd.role") == "parent"]
    children = [r for r in runs if r.data.tags.get("rnnsgd.role") == "trial"]
    return parents, children


def by_point(children: list[Any]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for r in children:
        out.setdefault(r.data.tags["point_id"], []).append(r)
    return out


def steps(uri: str, run_id: str, key: str = "test/risk") -> list[int]:
    return [m.step for m in sorted(client(uri).get_metric_history(run_id, key), key=lambda m: m.timestamp)]


def assert_one_finished_per_point(uri: str, name: str, point_ids: list[str]) -> dict[str, Any]:
    """Every point: exactly one run, FINISHED; no run RUNNING; one parent. Returns point_id -> run."""
    parents, children = sweep_runs(uri, name)
    assert len(parents) == 1, [p.info.status for p in parents]
    assert not [r for r in children if r.info.status == "RUNNING"], "a run was left RUNNING"
    runs = by_point(children)
    assert set(runs) == set(point_ids)
    for pid, rs in runs.items():
        statuses = [r.info.status for r in rs]
        assert statuses == ["FINISHED"], f"point {pid}: {statuses}"
        assert rs[0].data.tags["mlflow.parentRunId"] == parents[0].info.run_id
    return {pid: rs[0] for pid, rs in runs.items()}


def log_points(uri: str, sweep: str, rows) -> None:
    """Write each row of a frame into a real MLflow store as one finished point run of `sweep`, as the sweep
    layer does: TrialConfig keys as params, keys with a "/" as metrics (at step 1), `outcome` as a tag."""
    from mlflow.entities import Metric, Param, RunTag

    from rnnsgd.config import FLAT_KEYS

    c = client(uri)
    exp = c.get_experiment_by_name(sweep)
    exp_id = exp.experiment_id if exp else c.create_experiment(sweep)
    for i, row in enumerate(rows.to_dict(orient="records")):
        tags = {"sweep": sweep, "point_id": f"p{i}", "outcome": str(row.get("outcome", "completed"))}
        run_id = c.create_run(exp_id, tags=tags).info.run_id
        params = [Param(k, str(v)) for k, v in row.items() if k in FLAT_KEYS]
        metrics = [Metric(k, float(v), 0, 1) for k, v in row.items() if "/" in k and k not in FLAT_KEYS]
        c.log_batch(run_id, metrics=metrics, params=params, tags=[RunTag("rnnsgd.role", "trial")])
        c.set_terminated(run_id, "FINISHED")


def start_driver(
    path: Path, uri: str, storage: str, ray_address: str, log, env: dict[str, str] | None = None
) -> subprocess.Popen:
    """`rnnsgd sweep` as a user runs it, in a subprocess joined to the test's Ray, its output into `log`."""
    cmd = [sys.executable, "-m", "rnnsgd.cli", "sweep", str(path), "--tracking-uri", uri]
    cmd += ["--storage", storage]
    env = {**os.environ, "RAY_ADDRESS": ray_address, **(env or {})}
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=path.parent)


def read_back(log) -> str:
    log.seek(0)
    return log.read()
