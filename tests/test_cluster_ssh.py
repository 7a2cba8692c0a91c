"""The `ray up` / `ray submit` / `ray down` path for real, with cluster/onprem.yaml as shipped (its commands,
mounts and setup untouched; only the cluster name and the SSH login differ) against a stand-in machine here.

The machine is a `Host` with its own network namespace (its own 127.0.0.1, so its default ports 6379, 8265,
5000 collide with nothing), its own /root and /tmp, and Debian's sshd listening on its 127.0.0.1:22. Ray's
SSH reaches it through a ProxyCommand that enters that network namespace; rsync syncs the project. The login
shell's PATH has this venv (the node's Python environment), which already holds the dependencies
(RNNSGD_SKIP_INSTALL=1). The results are read the way a user reads them: through an SSH tunnel to the head's
MLflow, and with `rnnsgd status` run there by `ray exec`.
"""

from __future__ import annotations

import hashlib
import secrets
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from cluster_testlib import (
    BIN,
    REPO,
    SMALL,
    SMOKE,
    Host,
    base_env,
    check_runs,
    cmdline,
    free_port,
    require,
    shared_tmpdir,
    wait_for,
)

pytestmark = pytest.mark.slow

SSHD_CONFIG = """\
ListenAddress 127.0.0.1
Port 22
HostKey /root/.sshd/host_key
PidFile /root/.sshd/sshd.pid
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
AuthorizedKeysFile .ssh/authorized_keys
PrintMotd no
Subsystem sftp internal-sftp
"""


def _ssh_machine(root: Path) -> tuple[Host, Path]:
    """The stand-in machine with sshd running; the client's private key."""
    home, client = root / "home", root / "client"
    for d in (home / ".ssh", home / ".sshd", root / "tmp", client):
        d.mkdir(parents=True)
    (root / "tmp").chmod(0o1777)
    key = client / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", home / ".sshd/host_key"], check=True)
    (home / ".ssh/authorized_keys").write_text(key.with_suffix(".pub").read_text())
    (home / ".ssh").chmod(0o700)
    (home / ".sshd/sshd_config").write_text(SSHD_CONFIG)
    # the node's environment, on the PATH of a login shell (Ray runs commands with `bash --login -c -i`)
    (home / ".bashrc").write_text(f"export PATH={BIN}:$PATH\nexport RNNSGD_SKIP_INSTALL=1\n")
    (home / ".profile").write_text(". ~/.bashrc\n")
    host = Host("onprem", root / "host.log", net=True, home=home, tmp=root / "tmp")
    host.run(["mkdir", "-p", "/run/sshd"])
    host.run(["/usr/sbin/sshd", "-f", "/root/.sshd/sshd_config", "-E", "/root/.sshd/sshd.log"])
    log = home / ".sshd/sshd.log"
    wait_for(
        lambda: f"sshd to listen: {log.read_text()[-2000:] if log.exists() else ''}",
        lambda: "sshd" in host.run(["ss", "-ltnpH"]).stdout,
        timeout=30,
        every=0.2,
    )
    return host, key


def test_ray_up_submit_down_over_ssh_with_the_onprem_config():
    require("unshare", "nsenter", "ip", "ss", "ssh", "ssh-keygen", "/usr/sbin/sshd", "rsync", "nc")
    root = shared_tmpdir("rnnsgd-ssh-")
    name = f"rnnsgd-test-{secrets.token_hex(3)}"
    host, tunnel = None, None
    try:
        host, key = _ssh_machine(root)
        listening = host.run(["ss", "-ltnpH"]).stdout
        assert "127.0.0.1:22 " in listening and "sshd" in listening and "0.0.0.0:22" not in listening

        client = base_env(HOME=str(root / "client"))  # the user's machine: its own ~/.ray, ~/.ssh
        proxy = f"nsenter --net=/proc/{host.pid}/ns/net nc 127.0.0.1 22"
        shipped = yaml.safe_load((REPO / "cluster/onprem.yaml").read_text())
        auth = {"ssh_user": "root", "ssh_private_key": str(key), "ssh_proxy_command": proxy}
        config = {**shipped, "cluster_name": name, "auth": auth}
        assert shipped["provider"]["head_ip"] == "127.0.0.1" and shipped["provider"]["worker_ips"] == []
        path = root / "onprem.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))

        def ray(*args: str, timeout: float = 600) -> str:
            done = subprocess.run(
                ["ray", *args], cwd=REPO, env=client, capture_output=True, text=True, timeout=timeout
            )
            assert done.returncode == 0, (
                f"ray {' '.join(args)}:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
            )
            return done.stdout + done.stderr

        ray(
            "get-auth-token", "--generate"
        )  # the README's first step: ~/.ray/auth_token, mounted on the nodes
        token = (root / "client/.ray/auth_token").read_text()
        t0 = time.monotonic()
        ray("up", "-y", "--no-config-cache", str(path))
        t_up = time.monotonic() - t0
        assert (root / "home/.ray/auth_token").read_text() == token  # the client's token, on the head
        assert (root / "home/rnnsgd/cluster/sweep.py").is_file()  # the project, synced

        sets = (*SMALL, "name=onprem-smoke")
        t0 = time.monotonic()
        out = ray("submit", str(path), "cluster/sweep.py", "--", SMOKE, *[f"--set={s}" for s in sets])
        t_submit = time.monotonic() - t0
        assert "12/12 done" in out, out[-3000:]

        # watch and read results as a user does: an SSH tunnel to the head's MLflow, `rnnsgd status` there
        port = free_port()
        tunnel = subprocess.Popen(
            [
                "ssh",
                "-N",
                "-i",
                str(key),
                "-o",
                f"ProxyCommand={proxy}",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "ExitOnForwardFailure=yes",
                "-L",
                f"127.0.0.1:{port}:127.0.0.1:5000",
                "root@127.0.0.1",
            ],
            env=client,
            stderr=subprocess.DEVNULL,
        )
        uri = f"http://127.0.0.1:{port}"
        wait_for("the SSH tunnel to MLflow", lambda: _healthy(uri), timeout=60, every=0.5)
        runs = check_runs(uri, "onprem-smoke", sets)
        assert {r.data.tags["rnnsgd.host"] for r in runs.values()} == {_hostname(host)}
        args = " ".join(shlex.quote(f"--set={s}") for s in sets)
        status = ray("exec", str(path), f"cd ~/rnnsgd && rnnsgd status {SMOKE} {args}")
        assert "done 12" in status and "tracking http://127.0.0.1:5000" in status, status[-2000:]

        t0 = time.monotonic()
        ray("exec", str(path), "bash ~/rnnsgd/cluster/mlflow-server.sh stop")
        ray("down", "-y", str(path))
        t_down = time.monotonic() - t0
        left = [c for c in (cmdline(p) for p in host.processes()) if "ray" in c or "mlflow" in c]
        assert not left, left
        print(
            f"\n[ssh] ray up {t_up:.0f} s, ray submit (12 points) {t_submit:.0f} s, ray down {t_down:.0f} s"
        )
    finally:
        if tunnel is not None:
            tunnel.kill()
            tunnel.wait()
        if host is not None:
            host.close()
        for leftover in Path("/tmp/ray").glob(f"cluster-{name}.*"):  # the client's record of the cluster
            leftover.unlink()
        control = hashlib.sha256(name.encode()).hexdigest()[:10]  # Ray's SSH control sockets for it
        for leftover in Path("/tmp").glob(f"ray_ssh_*/{control}"):
            shutil.rmtree(leftover, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)


def _healthy(uri: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(uri + "/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _hostname(host: Host) -> str:
    return host.run(["hostname"]).stdout.strip()
