"""A real two-node Ray cluster on this machine, as on a cloud: `ray start --head` and a second node that joins
it with `ray start --address`, token authentication on, an MLflow server with a PostgreSQL backend started on
the head by cluster/mlflow-server.sh (exactly as the cloud configs start it), the sweep submitted with
`ray job submit --working-dir` from outside the cluster.

Each node is a `Host` (tests/cluster_testlib.py): its own PID namespace and Ray temp dir, so that `ray stop`
on the worker stops only the worker, the way it would on another machine. Tests, in order:
    smoke sweep on both nodes -> nothing listens beyond 127.0.0.1 but Ray's own ports, and the token is needed
    -> the worker stopped mid-sweep (last: the worker is gone afterwards)
"""

from __future__ import annotations

import glob
import re
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from cluster_testlib import (
    REPO,
    SMALL,
    SMOKE,
    Host,
    base_env,
    check_runs,
    cmdline,
    dashboard_get,
    free_port,
    is_loopback,
    job_logs,
    listeners,
    require,
    shared_tmpdir,
    wait_for,
    wait_job,
)
from sweep_testlib import client

pytestmark = pytest.mark.slow

OBJECT_STORE = str(100 * 1024**2)


@dataclass
class Cluster:
    root: Path
    head: Host
    worker: Host
    env: dict[str, str]  # a client's: token auth on, the token file
    token: str
    ports: dict[str, int]
    mlflow: str
    mlflow_env: dict[str, str]  # cluster/mlflow-server.sh's settings
    head_node: str
    worker_node: str

    def submit(self, job: str, *args: str) -> None:
        """`ray job submit --working-dir .` of `rnnsgd sweep ARGS`, from the repository, as a user would."""
        cmd = [
            "ray",
            "job",
            "submit",
            "--address",
            f"http://127.0.0.1:{self.ports['dashboard']}",
            "--working-dir",
            ".",
            "--submission-id",
            job,
            "--no-wait",
            "--",
            "rnnsgd",
            "sweep",
            *args,
            "--storage",
            str(self.root / "storage"),
        ]

        def submitted():  # right after start-up the head's agent may not take jobs yet: "try again later"
            done = subprocess.run(cmd, cwd=REPO, env=self.env, capture_output=True, text=True, timeout=120)
            assert done.returncode == 0 or "try again later" in done.stderr, done.stdout + done.stderr
            said.append(done.stderr.strip()[-300:])
            return done.returncode == 0

        said: list[str] = []
        wait_for(lambda: f"job {job} to be accepted: {said[-1:]}", submitted, timeout=90, every=2)

    def wait(self, job: str, timeout: float = 300) -> None:
        status = wait_job(self.ports["dashboard"], self.token, job, timeout)
        assert status == "SUCCEEDED", job_logs(self.ports["dashboard"], self.token, job)[-4000:]


@pytest.fixture(scope="module")
def cluster():
    require("unshare", "nsenter", "ss", "runuser")
    if not glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        require("/usr/lib/postgresql (Debian's postgresql)")
    root = shared_tmpdir("rnnsgd-cluster-")
    hosts: list[Host] = []
    try:
        token = secrets.token_hex(32)
        (root / "auth_token").write_text(token)
        (root / "auth_token").chmod(0o600)
        (root / "home").mkdir()  # HOME of every process here: ~/.ray/auth_token of this machine is left alone
        env = base_env(
            RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(root / "auth_token"), HOME=str(root / "home")
        )
        # Ray's fixed ports chosen here: its defaults (e.g. the agents' 52365) may be taken on this machine
        ports = {k: free_port() for k in ("gcs", "dashboard", "client", "agent", "agent2", "mlflow", "pg")}
        head = Host("head", root / "head.log")
        hosts.append(head)
        worker = Host("worker", root / "worker.log")
        hosts.append(worker)

        t0 = time.monotonic()
        mlflow_env = {
            **env,
            "MLFLOW_DIR": str(root / "mlflow"),
            "MLFLOW_BACKEND": "postgres",
            "MLFLOW_PORT": str(ports["mlflow"]),
            "MLFLOW_PG_PORT": str(ports["pg"]),
        }
        started = head.run(
            ["bash", str(REPO / "cluster/mlflow-server.sh"), "start"], env=mlflow_env, timeout=240
        )
        mlflow = started.stdout.split()[-1]
        assert mlflow == f"http://127.0.0.1:{ports['mlflow']}"
        head.run(
            [
                "ray",
                "start",
                "--head",
                "--node-ip-address=127.0.0.1",
                f"--port={ports['gcs']}",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={ports['dashboard']}",
                "--include-dashboard=true",
                f"--ray-client-server-port={ports['client']}",
                f"--dashboard-agent-listen-port={ports['agent']}",
                "--num-cpus=1",
                f"--object-store-memory={OBJECT_STORE}",
                f"--temp-dir={root / 'ray-head'}",
                "--disable-usage-stats",
            ],
            env={**env, "MLFLOW_TRACKING_URI": mlflow},
        )
        worker.run(
            [
                "ray",
                "start",
                f"--address=127.0.0.1:{ports['gcs']}",
                "--num-cpus=1",
                f"--dashboard-agent-listen-port={ports['agent2']}",
                f"--object-store-memory={OBJECT_STORE}",
                f"--temp-dir={root / 'ray-worker'}",
                "--disable-usage-stats",
            ],
            env=env,
        )
        nodes = wait_for("two alive nodes", lambda: _nodes(ports["dashboard"], token, 2), timeout=90)
        print(f"\n[cluster] MLflow + PostgreSQL + 2 Ray nodes up in {time.monotonic() - t0:.0f} s")
        head_node = next(n["node_id"] for n in nodes if n["is_head_node"])
        worker_node = next(n["node_id"] for n in nodes if not n["is_head_node"])
        yield Cluster(root, head, worker, env, token, ports, mlflow, mlflow_env, head_node, worker_node)
    finally:
        for host in hosts:
            host.close()
        shutil.rmtree(root, ignore_errors=True)


def _nodes(port: int, token: str, count: int) -> list[dict] | None:
    status, body = dashboard_get(port, "/api/v0/nodes?limit=100", token)
    if status != 200:
        return None
    alive = [n for n in body["data"]["result"]["result"] if n["state"] == "ALIVE"]
    return alive if len(alive) == count else None


def test_smoke_sweep_runs_on_both_nodes_and_reaches_mlflow(cluster):
    sets = (*SMALL, "name=cluster-smoke")  # 12 points
    t0 = time.monotonic()
    cluster.submit("smoke", SMOKE, *[f"--set={s}" for s in sets])
    cluster.wait("smoke")
    wall = time.monotonic() - t0
    runs = check_runs(cluster.mlflow, "cluster-smoke", sets)
    per_node = {
        n: sum(r.data.tags["rnnsgd.node_id"] == n for r in runs.values())
        for n in (cluster.head_node, cluster.worker_node)
    }
    print(
        f"[cluster] smoke, {len(runs)} points in {wall:.0f} s (submit to done): "
        f"head {per_node[cluster.head_node]}, worker {per_node[cluster.worker_node]}"
    )
    assert all(per_node.values()), per_node  # trials ran on both nodes
    assert sum(per_node.values()) == len(runs)
    # the runs are in PostgreSQL: the server's database holds every one of them
    pg = cluster.ports["pg"]
    psql = next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/psql"))))
    query = (
        "select count(*) from runs r join experiments e using (experiment_id) where e.name = 'cluster-smoke'"
    )
    psql_args = ["-h", "127.0.0.1", "-p", str(pg), "-U", "mlflow", "-d", "mlflow", "-tAc", query]
    pgpass = {**cluster.env, "PGPASSFILE": str(cluster.root / "mlflow/pgpass")}
    count = subprocess.run([psql, *psql_args], env=pgpass, capture_output=True, text=True, check=True)
    assert int(count.stdout) == len(runs) + 1  # and the parent
    dump = cluster.head.run(["bash", str(REPO / "cluster/mlflow-server.sh"), "dump"], env=cluster.mlflow_env)
    assert Path(dump.stdout.strip()).stat().st_size > 10_000  # the copy to keep before `ray down`


RAY_INTERNAL = (  # Ray's own processes: its servers, agents and workers
    "/gcs_server",
    "/raylet",
    "ray::",
    "-m ray.util.client.server",
    "ray/autoscaler/_private/monitor.py",
    "ray/dashboard/dashboard.py",
    "ray/_private/log_monitor.py",
)


def test_nothing_listens_beyond_loopback_but_rays_own_ports_and_the_token_is_required(cluster):
    hosts = (cluster.head, cluster.worker)
    ours = [(a, p, pids) for a, p, pids in listeners() if any(h.owns(x) for h in hosts for x in pids)]
    assert ours
    by_port = {p: a for a, p, _ in ours}
    for service in ("dashboard", "mlflow", "pg"):  # the user-facing services, and the database
        assert is_loopback(by_port[cluster.ports[service]]), (service, by_port[cluster.ports[service]])
    exposed = []
    for address, port, pids in ours:
        if is_loopback(address):
            continue
        commands = [cmdline(p) for p in pids]
        # Ray 2.60 binds its internal gRPC/agent ports to the node's address or all interfaces (no setting
        # changes that); they require the token (below). Nothing else of ours may.
        assert all(any(k in c for k in RAY_INTERNAL) for c in commands), (address, port, commands)
        assert not any("mlflow" in c or "postgres" in c for c in commands), (address, port, commands)
        exposed.append(port)
    print(f"[cluster] {len(ours)} listening sockets; beyond loopback only Ray's own: {len(exposed)}")

    dashboard = cluster.ports["dashboard"]
    assert dashboard_get(dashboard, "/api/jobs/", cluster.token)[0] == 200
    assert dashboard_get(dashboard, "/api/jobs/", None)[0] == 401  # no token
    assert dashboard_get(dashboard, "/api/jobs/", "0" * 64)[0] == 403  # a wrong one
    address = f"http://127.0.0.1:{dashboard}"
    no_token = {k: v for k, v in cluster.env.items() if not k.startswith("RAY_AUTH")}
    for env in (no_token, {**no_token, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64}):
        done = subprocess.run(
            ["ray", "job", "list", "--address", address], env=env, capture_output=True, text=True, timeout=60
        )
        refused = re.search(r"\b40[13]\b|nauthori|orbidden|token authentication is enabled", done.stderr)
        assert done.returncode != 0 and refused, done.stderr[-2000:]
    # the GCS too: a driver without the token cannot join
    join = "import ray; ray.init(address='127.0.0.1:%d', logging_level='ERROR'); print(ray.nodes())"
    wrong = {**no_token, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64}
    cmd = ["python", "-c", join % cluster.ports["gcs"]]
    done = subprocess.run(cmd, env=wrong, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0, done.stdout[-2000:]


def test_worker_stopped_mid_sweep_its_trials_finish_on_the_head(cluster):
    """`ray stop` on the worker while it runs trials: they are retried on the head from their checkpoints,
    into the same runs; the sweep completes with one FINISHED run per point, nothing lost or duplicated."""
    # 4 long points (no plateau before their budget), two packs of two
    sets = (*SMALL, "name=cluster-kill", "data.L=[12]", "train.T=200000", "train.min_steps=200000")
    uri, c = cluster.mlflow, client(cluster.mlflow)
    t0 = time.monotonic()
    cluster.submit("kill", SMOKE, *[f"--set={s}" for s in sets])

    def worker_runs(*statuses: str) -> list:
        exp = c.get_experiment_by_name("cluster-kill")
        runs = c.search_runs([exp.experiment_id]) if exp is not None else []
        return [
            r
            for r in runs
            if r.data.tags.get("rnnsgd.node_id") == cluster.worker_node
            and r.info.status in statuses
            and "test/risk" in r.data.metrics
        ]

    wait_for("a trial logging from the worker", lambda: worker_runs("RUNNING"), timeout=240, every=0.5)
    t_stop = time.monotonic()
    stopped = cluster.worker.run(["ray", "stop"], env=cluster.env, timeout=120)
    victims = worker_runs("RUNNING", "KILLED")  # its trials that had not finished when it stopped
    assert victims, "every trial of the worker finished before `ray stop` took effect: nothing to retry"
    said = stopped.stdout.strip().splitlines()[-1][-50:]
    print(f"[cluster] ray stop on the worker while {len(victims)} of its trials ran: {said}")
    wait_for("the worker's Ray to end", lambda: not cluster.worker.processes()[1:], timeout=60, every=0.5)
    cluster.wait("kill")
    done_s = time.monotonic()
    print(f"[cluster] sweep done {done_s - t_stop:.0f} s after the stop, {done_s - t0:.0f} s after submit")

    runs = check_runs(uri, "cluster-kill", sets)
    for victim in victims:
        run = c.get_run(victim.info.run_id)  # the same run, re-attached by the retry
        assert run.info.status == "FINISHED"
        assert run.data.tags["rnnsgd.node_id"] == cluster.head_node  # finished on the remaining node
        assert int(run.data.tags["rnnsgd.resumed_from_step"]) > 0  # from its checkpoint, not from step 0
        resumed = int(run.data.tags["rnnsgd.resumed_from_step"])
        steps = [m.step for m in c.get_metric_history(run.info.run_id, "test/risk")]
        distinct = sorted(set(steps))
        assert (
            distinct[0] == 0 and resumed in distinct and distinct[-1] > resumed
        )  # before and after the stop
        assert len(steps) - len(distinct) <= 1, steps  # at most the checkpoint's step, logged twice
    assert {r.info.run_id for r in victims} <= {r.info.run_id for r in runs.values()}
