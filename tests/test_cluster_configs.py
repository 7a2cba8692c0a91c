"""cluster/: every `ray up` config passes Ray's own validation; the KubeRay manifests carry what KubeRay
needs; the configs agree with the project (Ray version, image, token auth, MLflow by one shared script)."""

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


def test_dockerfile_builds_on_the_pinned_image():
    text = (CLUSTER / "Dockerfile").read_text()
    assert f"FROM {IMAGE}" in text and 'pip install --no-cache-dir -q -e ".[cluster]"' in text
