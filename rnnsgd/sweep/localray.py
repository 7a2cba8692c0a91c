"""The sweep's Ray: join the cluster at RAY_ADDRESS, or start a local one that listens on loopback only and
dies with its driver.

A local Ray (no RAY_ADDRESS) is started in Ray's single-machine mode, the one Ray uses by default on macOS and
Windows: its node address is 127.0.0.1, so the GCS, the raylet, the workers, the driver, the dashboard agent,
the runtime-env agent and the metrics servers of the autoscaler monitor and the dashboard process all bind to
loopback instead of the wildcard address. `_node_ip_address="127.0.0.1"` does not do this: ray.init replaces a
loopback address with the machine's outward one. Metrics export (the dashboard agent's Prometheus endpoint)
is off, and the dashboard UI is not started, unless RNNSGD_RAY_DASHBOARD=1 asks for both (on loopback too).
What still listens, where and why: docs/sweeps.md, "What a local sweep listens on"; EXPOSED_LISTENERS below
is the list tests/test_listeners.py holds a local sweep to.

Ray starts its head processes (GCS, raylet, monitor, dashboard process, log monitor) with a parent-death
signal, so they die with the driver even under SIGKILL; the agents and workers the raylet starts have none.
The workers exit as soon as their raylet is gone, but the two agents first try to tell the (dead) GCS about
it, with a fixed timeout of a minute. A small watchdog process (`python localray.py --watch`, standard library
only) therefore follows the local Ray's processes and kills whatever of them is left once the driver or all
of Ray's head processes are gone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time

RAY_ENV = {  # set before Ray starts, so that the local cluster's workers inherit them
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",  # no CSV/JSON/TensorBoard loggers: MLflow is the record
    "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0",
    "RAY_AIR_NEW_OUTPUT": "0",  # with verbose=0: no tables; the sweep prints its own progress line
}
# Ray's switch between its single-machine mode (node address 127.0.0.1) and a node others can join; read by
# every Ray process, in Python, at import (ray._private.ray_constants.ENABLE_RAY_CLUSTER)
SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
DASHBOARD_ENV = "RNNSGD_RAY_DASHBOARD"  # "1": the local Ray also starts its dashboard and exports metrics

# Listeners of a local sweep's processes that may be reachable from beyond this machine's loopback: process
# name (as `ss` shows it, or a Python script's file name: monitor.py) -> why it must listen there. Empty with
# Ray 2.60: every listener of a local sweep binds to 127.0.0.1 (or ::ffff:127.0.0.1).
# tests/test_listeners.py fails on any other.
EXPOSED_LISTENERS: dict[str, str] = {}

# Ray's notice, at every start of a local Ray, that it turned token authentication on (its default where
# RAY_AUTH_MODE is unset). For the sweep's own Ray on loopback that is the setting it wants, and the notice
# only says how to turn it off: dropped there. Joining a cluster (RAY_ADDRESS) never passes through this.
TOKEN_LOGGER = "ray._private.authentication.authentication_token_setup"
TOKEN_NOTICE = "Token authentication is enabled for this Ray cluster"


def _quiet_token_notice(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith(TOKEN_NOTICE)


WATCH_EVERY_S = 0.5  # how often the watchdog looks for new processes of the local Ray, and for its end

_watchdog: subprocess.Popen | None = None


def connect_ray() -> bool:
    """Join the cluster at RAY_ADDRESS, or start a local one (never a bare ray.init(), which would attach to
    whatever a crashed `ray start` left recorded in /tmp/ray). Returns whether this call connected."""
    for k, v in RAY_ENV.items():
        os.environ.setdefault(k, v)
    import ray

    if ray.is_initialized():
        return False
    address = os.environ.get("RAY_ADDRESS")
    logging_config = ray.LoggingConfig(log_level="WARNING")
    if address:
        try:
            ray.init(address=address, logging_level=logging.WARNING, logging_config=logging_config)
        except Exception as e:
            from rnnsgd.sweep.spec import SweepError

            raise SweepError(
                f"RAY_ADDRESS: cannot join the Ray cluster at {address} ({type(e).__name__}: {e})"
            ) from None
    else:
        start_local_ray(logging_config)
    return True


def start_local_ray(logging_config) -> None:
    """ray.init of a local Ray on loopback (see the module docstring), and its watchdog."""
    import ray
    import ray._private.ray_constants as ray_constants

    dashboard = os.environ.get(DASHBOARD_ENV) == "1"
    # The processes ray.init starts inherit the variable; this process read it when it imported Ray (perhaps
    # before this call), hence the constant too. Both are restored once Ray is up: a later ray.init of this
    # process may join a cluster, where the driver must give its outward address.
    saved = os.environ.get(SINGLE_MACHINE_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[SINGLE_MACHINE_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    token_log = logging.getLogger(TOKEN_LOGGER)
    token_log.addFilter(_quiet_token_notice)
    try:
        ray.init(
            address="local",
            include_dashboard=dashboard,
            object_store_memory=256 * 1024**2,
            logging_level=logging.WARNING,
            logging_config=logging_config,
            # no Prometheus endpoint in the dashboard agent (and no metrics sent to it) unless asked
            _system_config=None if dashboard else {"enable_metrics_collection": False},
        )
    finally:
        token_log.removeFilter(_quiet_token_notice)
        if saved[0] is None:
            os.environ.pop(SINGLE_MACHINE_ENV, None)
        else:
            os.environ[SINGLE_MACHINE_ENV] = saved[0]
        ray_constants.ENABLE_RAY_CLUSTER = saved[1]
    start_watchdog()


def start_watchdog() -> None:
    """Start the watchdog of the local Ray this process just started (Linux; elsewhere, or where Ray's
    process table is not where Ray 2.60 keeps it, nothing: Ray's own clean-up then applies)."""
    global _watchdog
    if _watchdog is not None:  # an earlier local Ray's, ending (or ended) with it: reaped here
        with contextlib.suppress(subprocess.TimeoutExpired):
            _watchdog.wait(timeout=4 * WATCH_EVERY_S)
        _watchdog = None
    if not sys.platform.startswith("linux"):
        return
    import ray

    node = getattr(ray._private.worker, "_global_node", None)
    roots = [
        info.process.pid
        for infos in getattr(node, "all_processes", {}).values()
        for info in infos
        if getattr(info, "process", None) is not None
    ]
    if not roots:
        return
    # its own session: Ctrl+C and a closed terminal reach the driver (which stops Ray itself), not it
    _watchdog = subprocess.Popen(
        [sys.executable, "-I", os.path.abspath(__file__), "--watch", str(os.getpid()), *map(str, roots)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


# ---------------------------------------------------------------------------------------------- watchdog
# Run as a script (`python -I localray.py --watch DRIVER ROOT...`): the standard library only.


def _stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, start time in clock ticks) of a live process, None if it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rpartition(b")")[2].split()
    except OSError:
        return None
    if fields[0] == b"Z":
        return None
    return int(fields[1]), fields[19].decode()


def _processes() -> dict[int, tuple[int, str]]:
    found = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = _stat(int(name))
            if stat is not None:
                found[int(name)] = stat
    return found


def watch(driver: int, roots: list[int]) -> None:
    """Follow the processes under `roots` (the local Ray's head processes) until the driver or all the roots
    are gone, then SIGKILL every one of them still alive (a pid counts only with the start time it had)."""
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    procs = _processes()
    tracked = {pid: procs[pid][1] for pid in roots if pid in procs}
    while True:
        children: dict[int, list[int]] = {}
        for pid, (ppid, _) in procs.items():
            children.setdefault(ppid, []).append(pid)
        todo = [pid for pid in roots if pid in procs and procs[pid][1] == tracked.get(pid)]
        live_roots = bool(todo)
        while todo:
            pid = todo.pop()
            tracked.setdefault(pid, procs[pid][1])
            todo.extend(children.get(pid, []))
        if os.getppid() != driver or not live_roots:
            break
        time.sleep(WATCH_EVERY_S)
        procs = _processes()
    for pid, start in tracked.items():
        stat = _stat(pid)
        if stat is not None and stat[1] == start:
            with contextlib.suppress(OSError):  # ended meanwhile
                os.kill(pid, signal.SIGKILL)


if __name__ == "__main__" and sys.argv[1:2] == ["--watch"]:
    watch(int(sys.argv[2]), [int(p) for p in sys.argv[3:]])
