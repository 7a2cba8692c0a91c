"""A local sweep (no RAY_ADDRESS) exposes nothing beyond loopback, no process of its Ray outlives a killed
driver by more than a few seconds (docs/sweeps.md, "What a local sweep listens on"), and the files it creates
are its user's alone.

Real processes: `rnnsgd sweep` in a subprocess with its own local Ray and an MLflow SQLite store. Every 0.2 s
the test lists the processes under the driver and the listening sockets they hold (TCP in LISTEN, UDP
unconnected), read from /proc: a socket counts wherever its address is, loopback or not, and nothing but the
sweep's own processes is looked at. A listener beyond loopback fails the test unless its process is in
rnnsgd.sweep.localray.EXPOSED_LISTENERS, the one list the docs describe.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sweep_testlib import write_sweep

from rnnsgd.sweep.localray import EXPOSED_LISTENERS

BIN = Path(sys.executable).parent
SURVIVAL_S = 5.0  # "a few seconds": the most any process of the local Ray may outlive a SIGKILLed driver


def require_proc() -> None:
    if not Path("/proc/self/net/tcp").exists():
        message = "needs Linux /proc (the sockets and processes of the sweep are read there)"
        if os.environ.get("RNNSGD_REQUIRE_CLUSTER_TOOLS") == "1":
            pytest.fail(f"RNNSGD_REQUIRE_CLUSTER_TOOLS=1 but {message}")
        pytest.skip(message)


def stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, start time) of a live process; None when it is gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_bytes().rpartition(b")")[2].split()
    except OSError:
        return None
    return None if fields[0] == b"Z" else (int(fields[1]), fields[19].decode())


def tree(root: int) -> dict[int, str]:
    """The live processes under root, root included: pid -> start time."""
    procs = {int(p): stat(int(p)) for p in os.listdir("/proc") if p.isdigit()}
    children: dict[int, list[int]] = {}
    for pid, st in procs.items():
        if st is not None:
            children.setdefault(st[0], []).append(pid)
    found, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if procs.get(pid) is not None:
            found[pid] = procs[pid][1]
            todo.extend(children.get(pid, []))
    return found


def comm(pid: int) -> str:
    """The process's name as `ss` shows it (Ray's workers and agents: ray::..., cut to 15 characters), or
    for a Python script, the script's file name (Ray's monitor.py, dashboard.py, log_monitor.py)."""
    try:
        name = Path(f"/proc/{pid}/comm").read_text().strip()
        if name.startswith("python"):
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            name = next((Path(a.decode()).name for a in args[1:] if a.endswith(b".py")), name)
        return name
    except OSError:
        return "?"


def _address(hex_address: str) -> str:
    raw = bytes.fromhex(hex_address)
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw[::-1]))
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))  # four host-order 32-bit words
    return str(ipaddress.IPv6Address(words))


def listening_sockets(pid: int) -> dict[str, tuple[str, str, int]]:
    """Socket inode -> (protocol, address, port) for every listening socket of pid's network namespace."""
    found = {}
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{proto}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            local, remote, state, inode = f[1], f[2], f[3], f[9]
            if (state == "0A") if proto.startswith("tcp") else (state == "07" and set(remote) <= {"0", ":"}):
                address, _, port = local.partition(":")
                found[inode] = (proto, _address(address), int(port, 16))
    return found


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    except OSError:  # ended meanwhile
        pass
    return inodes


def shown(address: str) -> str:
    mapped = getattr(ipaddress.ip_address(address), "ipv4_mapped", None)
    return f"[::ffff:{mapped}]" if mapped is not None else f"[{address}]" if ":" in address else address


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


class Sweep:
    """`rnnsgd sweep` in a subprocess; sample() records its processes and their listeners."""

    def __init__(self, path: Path, tmp: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_", "RNNSGD_"))}
        env["PATH"] = f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}"
        cmd = [
            str(BIN / "rnnsgd"),
            "sweep",
            str(path),
            "--tracking-uri",
            f"sqlite:///{tmp}/mlflow.db",
            "--storage",
            str(tmp / "ray"),
        ]
        self.log_path = tmp / "sweep.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        self.seen: dict[int, str] = {}  # every process of the sweep seen: pid -> start time
        self.listeners: dict[tuple[str, str, int], str] = {}  # (protocol, address, port) -> process name

    def sample(self) -> dict[int, str]:
        procs = tree(self.proc.pid)
        self.seen.update(procs)
        sockets = listening_sockets(self.proc.pid)
        for pid in procs:
            for inode in socket_inodes(pid) & sockets.keys():
                self.listeners[sockets[inode]] = comm(pid)
        return procs

    def run_until(self, done, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and not done(self.sample()):
            assert time.monotonic() < deadline, f"sweep still running after {timeout:.0f} s:\n{self.log()}"
            time.sleep(0.2)

    def alive(self) -> dict[int, str]:
        """The processes seen that still run (same pid, same start time), the driver aside."""
        return {
            pid: comm(pid)
            for pid, start in self.seen.items()
            if pid != self.proc.pid and (st := stat(pid)) is not None and st[1] == start
        }

    def table(self) -> str:
        return "\n".join(
            f"  {proto:5s} {shown(address) + ':' + str(port):>24s}  {name}"
            for (proto, address, port), name in sorted(self.listeners.items(), key=lambda x: (x[1], x[0]))
        )

    def check_listeners(self) -> None:
        names = set(self.listeners.values())
        assert {"gcs_server", "raylet"} <= names and any(n.startswith("ray::") for n in names), (
            f"the sampling missed Ray's processes:\n{self.table()}"
        )
        exposed = {k: name for k, name in self.listeners.items() if not is_loopback(k[1])}
        unlisted = {k: name for k, name in exposed.items() if name not in EXPOSED_LISTENERS}
        assert not unlisted, (
            f"beyond loopback and not in EXPOSED_LISTENERS: {unlisted}; all listeners:\n{self.table()}"
        )
        print(f"listeners of the local sweep ({len(self.listeners)}):\n{self.table()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text()[-3000:]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        for pid in self.alive():  # what a failed test left behind
            os.kill(pid, signal.SIGKILL)
        self._log.close()


def assert_private(folder: Path, least: str) -> None:
    """Everything the sweep created under folder is its user's alone (the `rnnsgd` command's umask 077), and
    it created at least a file named `least`."""
    made = [p for p in folder.rglob("*") if p.name not in ("listen.yaml", "sweep.log")]
    assert any(p.name == least for p in made), sorted(map(str, made))
    loose = {
        str(p.relative_to(folder)): oct(p.stat().st_mode & 0o777) for p in made if p.stat().st_mode & 0o077
    }
    assert not loose, f"readable or writable by others: {loose}"


@pytest.fixture
def sweep(tmp_path):
    require_proc()
    made: list[Sweep] = []

    def start(**fields) -> Sweep:
        made.append(Sweep(write_sweep(tmp_path, "listen", **fields), tmp_path))
        return made[-1]

    yield start
    for s in made:
        s.close()


def test_a_local_sweep_listens_on_loopback_only(sweep):
    """A small sweep from start to end: all its listeners on loopback, nothing of it left once it exits."""
    s = sweep(base={"train.T": 3000}, grid={"seed.run": [0, 1, 2, 3]}, pack={"size": 1})
    s.run_until(lambda procs: False, timeout=240)
    assert s.proc.returncode == 0, s.log()
    s.check_listeners()
    deadline = time.monotonic() + SURVIVAL_S
    while s.alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not s.alive(), f"left running {SURVIVAL_S:.0f} s after the sweep ended: {s.alive()}"
    assert_private(s.log_path.parent, "mlflow.db")


def test_no_process_of_a_local_sweeps_ray_outlives_its_killed_driver(sweep):
    """SIGKILL of the driver while its trials train: every process of its Ray (GCS, raylet, agents,
    workers) and the watchdog are gone within SURVIVAL_S."""
    s = sweep(base={"train.T": 10**7, "train.min_steps": 10**7}, grid={"seed.run": [0, 1]}, pack={"size": 1})

    def trials_train(procs: dict[int, str]) -> bool:
        """Ray's agents are up and a trial has checkpointed: it trains (a fixed wait after the trial's
        process starts is not enough on a loaded machine, where the first checkpoint comes late)."""
        names = {comm(p) for p in procs}
        agents = "ray::ImplicitFu" in names and {"ray::DashboardA", "ray::RuntimeEnv"} <= names
        return agents and any(s.log_path.parent.rglob("checkpoint.pt"))

    s.run_until(trials_train, timeout=180)
    assert s.proc.returncode is None, f"the sweep ended before its trials trained:\n{s.log()}"
    s.check_listeners()
    left = {pid: comm(pid) for pid in s.alive()}
    killed = time.monotonic()
    s.proc.kill()
    s.proc.wait(timeout=30)
    while s.alive() and time.monotonic() - killed < 60:
        time.sleep(0.1)
    took = time.monotonic() - killed
    print(
        f"{len(left)} processes of the sweep's Ray at the kill ({sorted(set(left.values()))}); "
        f"the last gone after {took:.2f} s"
    )
    assert not s.alive(), f"alive 60 s after the driver's SIGKILL: {s.alive()}"
    assert took < SURVIVAL_S, f"the last process of the sweep's Ray outlived its driver by {took:.1f} s"
    assert_private(s.log_path.parent, "checkpoint.pt")  # written by the trials, in Ray's worker processes
