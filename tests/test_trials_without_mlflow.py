"""Trial processes never import MLflow: the trials of a real sweep (`rnnsgd sweep` in a subprocess, on the
local Ray it starts, real MLflow SQLite store) run in Ray workers where any import of `mlflow` fails, and
still every point ends with exactly one FINISHED run holding its evaluations; only the driver writes MLflow.

The refusal is a `sitecustomize.py` the test writes into a folder of its own and puts first on PYTHONPATH of
the driver. Ray starts its local cluster from the driver, so the raylet and the workers it starts inherit
that environment, and every Python process of the sweep runs the sitecustomize at startup. It installs a
meta-path finder that, in a Ray worker only, answers `mlflow` and `mlflow.*` with a module whose loading
raises ModuleNotFoundError("mlflow imported in a Ray worker ..."), and appends the attempt (pid, argv,
stack) to a log file: an import that the trial code catches and swallows still fails the test.

A Ray worker is told apart lazily, at each lookup of an mlflow module (at sitecustomize time sys.argv may not
be set yet): Ray 2.60's raylet starts a Python worker as `python .../ray/_private/workers/setup_worker.py
.../ray/_private/workers/default_worker.py --node-ip-address=... ...`, and setup_worker.py `exec`s
`python .../default_worker.py --node-ip-address=...`; so a worker's sys.argv[0] ends with
`default_worker.py`. The driver (`python -m rnnsgd.cli`: argv[0] is .../rnnsgd/cli.py) imports mlflow freely.
test_the_blocker_refuses_mlflow_in_a_real_ray_worker is the positive control that this detection matches
what real Ray workers are.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from sweep_testlib import assert_one_finished_per_point, steps, sweep_runs, write_sweep

pytestmark = pytest.mark.slow  # each test starts a real local Ray

MESSAGE = "mlflow imported in a Ray worker"
LOG_ENV = "RNNSGD_TEST_MLFLOW_ATTEMPTS"  # where the blocker appends each refused import

BLOCKER = textwrap.dedent(
    f'''
    """Written by tests/test_trials_without_mlflow.py: in Ray workers, refuse every import of mlflow."""
    import importlib.abc
    import importlib.machinery
    import os
    import sys
    import traceback


    def _in_ray_worker():
        argv = getattr(sys, "argv", None) or [""]
        return os.path.basename(argv[0]) == "default_worker.py"


    class _Refuse(importlib.abc.Loader):
        def create_module(self, spec):
            where = os.environ.get("{LOG_ENV}")
            if where:
                with open(where, "a") as log:
                    log.write(f"pid {{os.getpid()}} argv {{sys.argv!r}} imported {{spec.name}}\\n")
                    log.write("".join(traceback.format_stack()) + "\\n")
            raise ModuleNotFoundError(f"{MESSAGE} (pid {{os.getpid()}}): {{spec.name}}", name=spec.name)

        def exec_module(self, module):  # never reached: create_module raises
            raise ModuleNotFoundError("{MESSAGE}", name=module.__name__)


    class _RefuseMlflowInRayWorkers(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if (name == "mlflow" or name.startswith("mlflow.")) and _in_ray_worker():
                return importlib.machinery.ModuleSpec(name, _Refuse())
            return None


    sys.meta_path.insert(0, _RefuseMlflowInRayWorkers())
    '''
)


def blocking_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a process whose Ray workers refuse mlflow: the blocker folder first on PYTHONPATH,
    no RAY_ADDRESS (the process starts a local Ray of its own, whose workers inherit this), no fault
    injection and no MLflow URI from the test's environment. The attempts log is tmp_path/mlflow-attempts.log.
    """
    folder = tmp_path / "blocker"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(BLOCKER)
    drop = {"RAY_ADDRESS", "RNNSGD_FAULT", "MLFLOW_TRACKING_URI"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(folder), env.get("PYTHONPATH", "")] if p)
    env[LOG_ENV] = str(tmp_path / "mlflow-attempts.log")
    env.setdefault("RAY_DEDUP_LOGS", "0")
    return env


def attempts(tmp_path: Path) -> str:
    log = tmp_path / "mlflow-attempts.log"
    return log.read_text() if log.exists() else ""


def run(cmd: list[str], env: dict[str, str], cwd: Path, timeout: float) -> tuple[int, str]:
    """Run to the end (killed on timeout, so that no driver, hence no local Ray, outlives the test)."""
    with open(cwd / f"run-{time.monotonic_ns()}.log", "w+") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
        log.seek(0)
        return rc, log.read()


CONTROL = textwrap.dedent(
    """
    import sys

    import mlflow  # the process that starts Ray is no worker: it imports mlflow freely
    import ray


    @ray.remote(num_cpus=1)
    def in_a_worker():
        try:
            import mlflow  # noqa: F401
        except ImportError as e:
            return sys.argv[0], f"{type(e).__name__}: {e}"
        return sys.argv[0], "imported"


    ray.init(address="local", num_cpus=1, include_dashboard=False, object_store_memory=80 * 1024**2)
    try:
        argv0, outcome = ray.get(in_a_worker.remote(), timeout=120)
    finally:
        ray.shutdown()
    print("driver imported", mlflow.__name__)
    print("worker argv0", argv0)
    print("worker outcome", outcome)
    """
)


def test_the_blocker_refuses_mlflow_in_a_real_ray_worker(tmp_path):
    """Positive control, on a real local Ray 2.60 (a few seconds): with the blocker on PYTHONPATH, a process
    that is no Ray worker imports mlflow, while a Ray task it runs fails to, with the blocker's message, in a
    worker whose argv[0] is default_worker.py; the attempt is logged. So the sweep test below, which sees no
    failure and no logged attempt, proves that its trials never imported mlflow (not that the blocker slept).
    """
    script = tmp_path / "control.py"
    script.write_text(CONTROL)
    rc, output = run([sys.executable, str(script)], blocking_env(tmp_path), tmp_path, timeout=180)
    assert rc == 0, output[-3000:]
    lines = dict(
        line.split(" ", 2)[1:] for line in output.splitlines() if line.startswith(("driver ", "worker "))
    )
    assert lines.get("imported") == "mlflow", output[-3000:]
    assert lines.get("argv0", "").endswith("ray/_private/workers/default_worker.py"), output[-3000:]
    assert lines.get("outcome", "").startswith(f"ModuleNotFoundError: {MESSAGE}"), output[-3000:]
    logged = attempts(tmp_path)
    assert "default_worker.py" in logged and "imported mlflow" in logged, logged


def test_trials_of_a_real_sweep_never_import_mlflow(tmp_path):
    """A 2-point sweep, `rnnsgd sweep` on its own local Ray, with every import of mlflow refused in the Ray
    workers: the driver exits 0, no worker even tried to import mlflow, and every point has exactly one
    FINISHED run (one FINISHED parent) whose test/risk history is non-empty, starts at step 0 and repeats no
    step: the evaluations reached MLflow through the driver alone."""
    path = write_sweep(tmp_path, "no-mlflow", grid={"data.N": [16, 32]})
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cmd = [sys.executable, "-m", "rnnsgd.cli", "sweep", str(path), "--tracking-uri", uri]
    cmd += ["--storage", str(tmp_path / "ray")]

    rc, output = run(cmd, blocking_env(tmp_path), tmp_path, timeout=300)
    refused = [line.strip() for line in output.splitlines() if MESSAGE in line][-4:]
    assert rc == 0, "\n".join([*refused, "--- the driver's output ends:", output[-3000:]])
    assert MESSAGE not in output, output[-4000:]
    assert attempts(tmp_path) == "", attempts(tmp_path)[:4000]

    from rnnsgd.sweep.spec import load_sweep

    points = [p.point_id for p in load_sweep(path).points]
    assert len(points) == 2
    runs = assert_one_finished_per_point(uri, "no-mlflow", points)
    assert [p.info.status for p in sweep_runs(uri, "no-mlflow")[0]] == ["FINISHED"]
    for pid, r in runs.items():
        history = steps(uri, r.info.run_id)
        assert history, f"point {pid}: no test/risk in MLflow"
        assert history[0] == 0 and len(set(history)) == len(history), (pid, history)
