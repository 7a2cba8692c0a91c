"""cluster/: every `ray up` config passes Ray's own validation; the KubeRay manifests carry what KubeRay
needs; the configs agree with the project (Ray version, image, token auth, MLflow by one shared script).
Trials never contact MLflow (they send their metrics to the driver with their Tune reports, and the driver
on the head alone writes MLflow): MLflow binds the head's 127.0.0.1, and nothing opens its port to workers."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
RAY_UP = sorted(CLUSTER.glob("*.yaml"))
IMAGE = "rayproject/ray:2.60.0-py311-gpu"


def ray_pin() -> str:
    text = (REPO / "pyproject.toml").read_text()
    return re.search(r'"ray\[[^\]]*\]==([0-9.]+)"', text).group(1)


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_the_configs_are_there():
    assert {p.name for p in RAY_UP} == {"aws-gpu.yaml", "gcp-gpu.yaml", "onprem.yaml"}
    assert ray_pin() == "2.60.0" and f":{ray_pin()}-" in IMAGE


@pytest.mark.parametrize("path", RAY_UP, ids=lambda p: p.name)
def test_ray_up_config_passes_rays_validation(path):
    from ray.autoscaler._private.util import fillout_defaults, prepare_config, validate_config

    config = load(path)
    validate_config(fillout_defaults(copy.deepcopy(config)))
    validate_config(prepare_config(copy.deepcopy(config)))  # what `ray up` itself checks
    broken = {**copy.deepcopy(config), "head_start_ray_comands": []}  # a typo in a key: refused
    with pytest.raises(Exception, match="head_start_ray_comands"):
        validate_config(fillout_defaults(broken))


@pytest.mark.parametrize("path", RAY_UP, ids=lambda p: p.name)
def test_ray_up_config_secures_and_sets_up_every_node(path):
    config = load(path)
    text = path.read_text()
    mounts = config["file_mounts"]
    assert mounts["~/rnnsgd"] == "." and mounts["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert config["setup_commands"][0].startswith("bash ~/rnnsgd/cluster/setup-node.sh")
    head = " ".join(config["head_start_ray_commands"])
    assert "ray start --head" in head and "--dashboard-host=127.0.0.1" in head
    assert "bash ~/rnnsgd/cluster/mlflow-server.sh start" in head  # the one shared script
    assert "0.0.0.0" not in text
    for key in ("setup_commands", "head_start_ray_commands", "worker_start_ray_commands"):
        assert config[key], key
    # every key down to the second level is explained: a comment on its line, just above or just below it
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^( {0,2}|    )[A-Za-z_~][\w.~/-]*:", line) and not line.lstrip().startswith("-"):
            near = [line, lines[i - 1], lines[i + 1] if i + 1 < len(lines) else ""]
            assert any("#" in n for n in near), f"{path.name}:{i + 1}: {line.strip()} is not explained"


@pytest.mark.parametrize("name", ["aws-gpu.yaml", "gcp-gpu.yaml"])
def test_cloud_configs_gpu_spot_autoscaling_from_zero(name):
    config = load(CLUSTER / name)
    assert config["docker"]["image"] == IMAGE
    assert "--gpus all" in config["docker"]["worker_run_options"]
    types = config["available_node_types"]
    head, worker = types[config["head_node_type"]], types["gpu_worker"]
    assert head["resources"] == {"CPU": 0}  # no trials on the head
    assert worker["min_workers"] == 0 and worker["max_workers"] > 0
    node = worker["node_config"]
    if name.startswith("aws"):
        assert node["InstanceMarketOptions"]["MarketType"] == "spot"
        assert head["node_config"]["ImageId"].startswith("ami-") and node["ImageId"].startswith("ami-")
    else:
        assert node["scheduling"]["provisioningModel"] == "SPOT"
    assert any("postgresql" in c for c in config["head_setup_commands"])
    assert "MLFLOW_BACKEND=sqlite" not in " ".join(config["head_start_ray_commands"])  # PostgreSQL


def _walk(node):
    """Every (key, value) pair of a parsed YAML document, at any depth."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield key, value
            yield from _walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item)


def test_mlflow_server_script_binds_loopback_by_default():
    text = (CLUSTER / "mlflow-server.sh").read_text()
    assert "MLFLOW_HOST=${MLFLOW_HOST:-127.0.0.1}" in text
    assert '--host "$MLFLOW_HOST"' in text  # the server binds what MLFLOW_HOST says, nothing wider
    assert "0.0.0.0" not in text


@pytest.mark.parametrize("path", RAY_UP, ids=lambda p: p.name)
def test_ray_up_mlflow_on_the_heads_loopback_only(path):
    """The driver on the head is MLflow's only client: MLflow binds 127.0.0.1 there, and nothing about the
    workers (commands, firewall, security groups) concerns MLflow or its port."""
    config = load(path)
    text = path.read_text()
    (start,) = [c for c in config["head_start_ray_commands"] if "mlflow-server.sh start" in c]
    assert re.findall(r"\bMLFLOW_HOST=(\S+)", start) == ["127.0.0.1"], start
    assert re.findall(r"MLFLOW_HOST=(\S+)", text) == ["127.0.0.1"]  # no other binding anywhere in the file
    assert "MLFLOW_PORT" not in text  # the script's port (5000), on loopback
    for key in ("worker_setup_commands", "worker_start_ray_commands"):
        assert not any("mlflow" in c.lower() for c in config.get(key) or []), key  # workers need no MLflow
    assert not any("mlflow" in o.lower() for o in config.get("docker", {}).get("worker_run_options", []))
    # no security-group or firewall rule of our own: Ray's defaults (SSH from outside, the cluster's own
    # traffic inside) stay, and MLflow's port is opened to no one
    assert "5000" not in yaml.safe_dump(config)
    for key, _ in _walk(config):
        assert not re.search(r"security.?group|firewall|ippermission|networkinterface", str(key), re.I), key
    for old in (
        "so that trials",
        "workers must reach",
        "trials on the workers can log",
        "MLFLOW_HOST=private",
    ):
        assert old not in text, old


def test_onprem_config_is_the_local_provider_over_ssh():
    config = load(CLUSTER / "onprem.yaml")
    assert config["provider"]["type"] == "local" and config["provider"]["head_ip"]
    assert config["auth"]["ssh_user"] and config["auth"]["ssh_private_key"]


KUBERAY = {p.name: list(yaml.safe_load_all(p.read_text())) for p in (CLUSTER / "kuberay").glob("*.yaml")}


def _cluster_spec_checks(spec: dict) -> None:
    assert spec["rayVersion"] == ray_pin()
    assert spec["authOptions"] == {"mode": "token"}
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    (gpu,) = spec["workerGroupSpecs"]
    assert gpu["minReplicas"] == 0 and gpu["maxReplicas"] > 0
    (worker,) = gpu["template"]["spec"]["containers"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    for c in [*head["template"]["spec"]["containers"], worker]:
        assert c["image"] == "REGISTRY/rnnsgd:COMMIT"  # cluster/Dockerfile's image, tagged with its commit


def test_kuberay_raycluster():
    docs = KUBERAY["raycluster.yaml"]
    (cluster,) = [d for d in docs if d["kind"] == "RayCluster"]
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["metadata"]["name"]
    _cluster_spec_checks(cluster["spec"])
    containers = {c["name"]: c for c in cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"]}
    assert "cluster/mlflow-server.sh start" in " ".join(containers["mlflow"]["args"])  # the shared script
    env = {e["name"]: e.get("value") for e in containers["mlflow"]["env"]}
    assert env["MLFLOW_BACKEND"] == "postgres"
    # MLflow's clients are the sweep's drivers alone: this head's jobs (the same pod) and rayjob.yaml's
    # driver, a pod of another cluster, through this head's Service (ClusterIP: inside Kubernetes only). So
    # the sidecar binds the pod's address, and no worker is given anything of MLflow.
    assert env["MLFLOW_HOST"] == "private"
    head_env = {e["name"]: e.get("value") for e in containers["ray-head"]["env"]}
    assert head_env["MLFLOW_TRACKING_URI"] == "http://$(POD_IP):5000"
    assert cluster["spec"]["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP"
    (job,) = KUBERAY["rayjob.yaml"]
    service = f"http://{cluster['metadata']['name']}-head-svc:5000"
    assert f"--tracking-uri {service}" in job["spec"]["entrypoint"]
    for group in cluster["spec"]["workerGroupSpecs"]:
        assert "mlflow" not in yaml.safe_dump(group).lower()
    assert not any(d["kind"] in ("Ingress", "Service") for d in docs)  # no way in from outside Kubernetes
    claim = cluster["spec"]["headGroupSpec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]
    assert any(
        d["kind"] == "PersistentVolumeClaim" and d["metadata"]["name"] == claim["claimName"] for d in docs
    )


def test_kuberay_rayjob():
    (job,) = KUBERAY["rayjob.yaml"]
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert spec["entrypoint"].startswith("rnnsgd sweep sweeps/")
    assert "--storage" in spec["entrypoint"] and "--tracking-uri" in spec["entrypoint"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert "runtimeEnvYAML" not in spec  # a RayJob cannot upload a local folder: the code is in the image
    _cluster_spec_checks(spec["rayClusterSpec"])
    # the job's own cluster runs no MLflow and gives none of its workers an MLflow address: the driver (the
    # entrypoint, on its head) is the only MLflow client
    assert "mlflow" not in yaml.safe_dump(spec["rayClusterSpec"]).lower()


def test_dockerfile_builds_on_the_pinned_image():
    text = (CLUSTER / "Dockerfile").read_text()
    assert f"FROM {IMAGE}" in text and 'pip install --no-cache-dir -q -e ".[cluster]"' in text
