"""Helpers for the cluster tests: machines simulated with Linux namespaces, ports, listeners, Ray's CLI.

A `Host` stands in for one machine of a cluster: its own PID namespace (so `ray stop` there stops that node's
Ray and nothing else on this machine, such as the pytest session's own Ray), its own mount namespace (and
optionally its own /root and /tmp), and optionally its own network namespace (its own 127.0.0.1). Everything
started in it dies with it: closing a Host kills the namespace's init, and the kernel then kills the rest.
That needs root (CI runs as root); elsewhere the tests skip, or fail where RNNSGD_REQUIRE_CLUSTER_TOOLS=1
(scripts/test sets it where it installed the tools).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sweep_testlib import assert_one_finished_per_point, sweep_runs

from rnnsgd.sweep.spec import load_sweep

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's bin: ray, mlflow, rnnsgd
SMOKE = "sweeps/smoke.yaml"
# the Quickstart sweep cut to 12 short points (3 L x 2 N x 2 tasks, one seed, m = 64): seconds each. No
# spaces: `ray submit` joins the script's arguments into a remote shell command unquoted
SMALL = ("zip=[]", "seeds=1", "model.m=64", "data.L=[4,8,12]", "data.N=[32,512]")
# Folders a Host with its own /root or /tmp must still see (the repository, its venv, the Python behind it).
KEEP = sorted({Path(p).resolve() for p in (REPO, sys.prefix, sys.base_prefix)}, key=lambda p: len(p.parts))
KEEP = [p for p in KEEP if not any(p.is_relative_to(q) and p != q for q in KEEP)]

# The namespace's init: adopts every orphan (daemons started by `ray start`, `mlflow-server.sh`) and reaps it.
REAPER = """
import os, time
while True:
    try:
        os.wait()
    except ChildProcessError:
        time.sleep(0.2)
"""


def require(*tools: str, root: bool = True) -> None:
    """Skip (or fail, under RNNSGD_REQUIRE_CLUSTER_TOOLS=1) unless the tools and root are here."""
    missing = [t for t in tools if shutil.which(t) is None and not Path(t).exists()]
    reasons = [f"missing {', '.join(missing)} (scripts/test installs them as root)"] if missing else []
    if root and os.geteuid() != 0:
        reasons.append("needs root (Linux namespaces stand in for the cluster's machines)")
    if reasons:
        message = "; ".join(reasons)
        if os.environ.get("RNNSGD_REQUIRE_CLUSTER_TOOLS") == "1":
            pytest.fail(f"RNNSGD_REQUIRE_CLUSTER_TOOLS=1 but {message}")
        pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(
    what: str | Callable[[], str], check: Callable[[], Any], timeout: float, every: float = 1.0
) -> Any:
    """Poll check() until it returns something truthy; fail naming `what` (or what()) after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what() if callable(what) else what}")
        time.sleep(every)


def shared_tmpdir(prefix: str) -> Path:
    """A folder in /tmp that other users can traverse (PostgreSQL runs as the user postgres)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    return path


def base_env(**extra: str) -> dict[str, str]:
    """This environment, the venv first on PATH, without the session's Ray/MLflow settings; plus extra."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_", "RNNSGD_FAULT"))}
    env["PATH"] = f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}"
    env.update(extra)
    return env


class Host:
    """One stand-in machine (see the module docstring). `run` executes a command inside it."""

    def __init__(
        self, name: str, log: Path, net: bool = False, home: Path | None = None, tmp: Path | None = None
    ) -> None:
        self.name, self.net = name, net
        setup = []
        for private, mountpoint in ((home, "/root"), (tmp, "/tmp")):
            if private is None:
                continue
            for keep in KEEP:  # what must stay visible under the replaced folder: the repo, the venv, Python
                if keep.is_relative_to(mountpoint):
                    inside = private / keep.relative_to(mountpoint)
                    inside.mkdir(parents=True, exist_ok=True)
                    setup.append(f"mount --rbind {shlex.quote(str(keep))} {shlex.quote(str(inside))}")
            setup.append(f"mount --rbind {shlex.quote(str(private))} {mountpoint}")
        if net:
            setup.append("ip link set lo up")
        setup.append(f"exec {shlex.quote(sys.executable)} -c {shlex.quote(REAPER)}")
        cmd = [
            "unshare",
            "--pid",
            "--fork",
            "--mount-proc",
            "--kill-child",
            *(["--net"] if net else []),
            "bash",
            "-c",
            " && ".join(setup),
        ]
        self._log = open(log, "w")  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = wait_for(f"host {name} to start", self._init_pid, timeout=30, every=0.1)
        self.pidns = os.readlink(f"/proc/{self.pid}/ns/pid")

    def _init_pid(self) -> int | None:
        assert self.proc.poll() is None, f"host {self.name}: unshare exited {self.proc.returncode}"
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        if not children:
            return None
        pid = int(children[0])
        comm = Path(f"/proc/{pid}/cmdline").read_bytes()  # the reaper once the mounts are done
        return pid if b"os.wait()" in comm else None

    def enter(self) -> list[str]:
        """The command prefix that runs a program inside this host."""
        return ["nsenter", "-t", str(self.pid), "-p", "-m", *(["-n"] if self.net else []), "--wd=/"]

    def run(
        self, args: list[str], env: dict[str, str] | None = None, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess:
        done = subprocess.run(
            [*self.enter(), *args], env=env, capture_output=True, text=True, timeout=timeout
        )
        if check and done.returncode != 0:
            pytest.fail(
                f"on {self.name}: {shlex.join(args)} exited {done.returncode}:\n"
                f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            )
        return done

    def owns(self, pid: int) -> bool:
        try:
            return os.readlink(f"/proc/{pid}/ns/pid") == self.pidns
        except OSError:
            return False

    def processes(self) -> list[int]:
        return [int(p) for p in os.listdir("/proc") if p.isdigit() and self.owns(int(p))]

    def close(self) -> None:
        """Kill everything in it (the init first: the kernel then kills the rest of the namespace)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        wait_for(f"host {self.name}'s processes to end", lambda: not self.processes(), timeout=30, every=0.2)
        self._log.close()


def listeners() -> list[tuple[str, int, list[int]]]:
    """Every listening TCP socket of this machine's network namespace: (address, port, pids)."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        fields = line.split()
        local = fields[3]
        address, _, port = local.rpartition(":")
        pids = [int(p) for p in re.findall(r"pid=(\d+)", line)]
        found.append((address.strip("[]"), int(port), pids))
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def is_loopback(address: str) -> bool:
    return address.startswith("127.") or address in ("::1", "::ffff:127.0.0.1")


def dashboard_get(port: int, path: str, token: str | None) -> tuple[int, Any]:
    """GET the Ray dashboard's REST API on 127.0.0.1, with or without a token: (HTTP status, JSON or None)."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, None
    except OSError:
        return 0, None


def alive_nodes(port: int, token: str) -> list[str]:
    """The node ids of the alive nodes, from the dashboard's state API."""
    status, body = dashboard_get(port, "/api/v0/nodes?limit=100", token)
    if status != 200:
        return []
    return [n["node_id"] for n in body["data"]["result"]["result"] if n["state"] == "ALIVE"]


def job_status(port: int, token: str, job: str) -> str | None:
    status, body = dashboard_get(port, f"/api/jobs/{job}", token)
    return body.get("status") if status == 200 else None


def job_logs(port: int, token: str, job: str) -> str:
    status, body = dashboard_get(port, f"/api/jobs/{job}/logs", token)
    return body.get("logs", "") if status == 200 else f"(no logs: HTTP {status})"


def wait_job(port: int, token: str, job: str, timeout: float) -> str:
    """Wait until the job ends; its final status (fails the test with the job's logs on timeout)."""
    deadline = time.monotonic() + timeout
    while (status := job_status(port, token, job)) not in ("SUCCEEDED", "FAILED", "STOPPED"):
        if time.monotonic() > deadline:
            pytest.fail(
                f"job {job} still {status} after {timeout:.0f} s:\n{job_logs(port, token, job)[-4000:]}"
            )
        time.sleep(2)
    return status


def expected_points(*sets: str) -> list[str]:
    pairs = dict(s.split("=", 1) for s in sets)
    return [p.point_id for p in load_sweep(REPO / SMOKE, None, pairs).points]


def check_runs(uri: str, name: str, sets: tuple[str, ...]) -> dict:
    """Every point of the sweep: exactly one run, FINISHED, with its metrics; the parent FINISHED."""
    runs = assert_one_finished_per_point(uri, name, expected_points(*sets))
    parents, _ = sweep_runs(uri, name)
    assert parents[0].info.status == "FINISHED"
    for run in runs.values():
        assert {"test/risk", "train/risk", "w/move_fro"} <= set(run.data.metrics)
        assert run.data.tags["outcome"] in ("completed", "budget", "diverged")
    return runs
