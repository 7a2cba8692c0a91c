"""Shared fixtures.

ray_local: one real local Ray (2 CPUs) for the whole pytest run, started only by the tests that ask for it
    (never a bare ray.init(), which attaches to whatever a crash left in /tmp/ray).
store: a fresh MLflow SQLite store and Ray storage folder per test (the sweep tests).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

RAY_TEST_ENV = {
    "RAY_AUTH_MODE": "disabled",  # so that drivers started by tests (subprocesses) can join this cluster
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    "RAY_DEDUP_LOGS": "0",
    "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0",
}


@pytest.fixture(scope="session")
def ray_local() -> str:
    """Start the session's Ray; yields its address (RAY_ADDRESS for driver subprocesses)."""
    for key, value in RAY_TEST_ENV.items():
        os.environ.setdefault(key, value)
    import ray

    context = ray.init(
        address="local", num_cpus=2, include_dashboard=False, object_store_memory=100 * 1024**2
    )
    yield context.address_info["gcs_address"]
    ray.shutdown()


# ---------------------------------------------------------------------------------------------- devices

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> str:
    """'cpu', and 'cuda' (marked gpu) which is skipped, never failed, where torch sees no CUDA device."""
    import torch

    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return request.param


@pytest.fixture
def one_thread():
    """torch on one thread for the test: the small matrices here are slower with more threads on a busy
    machine (threads spin while waiting for each other)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def _template_db(tmp_path_factory) -> Path:
    """An empty MLflow SQLite store, migrated once (that takes seconds) and copied for each test."""
    from rnnsgd.sweep.tracking import SweepTracker

    path = tmp_path_factory.mktemp("mlflow") / "template.db"
    SweepTracker(f"sqlite:///{path}")
    return path


@pytest.fixture
def store(tmp_path, monkeypatch, _template_db) -> dict[str, str]:
    """A fresh MLflow store and Ray storage in tmp_path, as run_sweep's keyword arguments; no RNNSGD_FAULT
    or MLFLOW_TRACKING_URI from the environment leaks in."""
    monkeypatch.delenv("RNNSGD_FAULT", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    shutil.copy(_template_db, tmp_path / "mlflow.db")
    return {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db", "storage": str(tmp_path / "ray")}
