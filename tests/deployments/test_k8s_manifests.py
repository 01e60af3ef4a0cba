"""deployments/k8s/: the KubeRay RayCluster and the Prefect Kubernetes work-pool template parse and carry what the
README's "From a laptop to a cluster" section relies on; the Kubernetes deployment's config is a Ray config."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from tasks.config import PipelineConfig

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deployments" / "k8s"
SHARED_MOUNT = "/data/outputs"


def _manifests() -> dict[str, dict]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all((K8S / "raycluster.yaml").read_text())}


def _mounts(pod_spec: dict) -> set[str]:
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in pod_spec["volumes"]
        if "persistentVolumeClaim" in v
    }
    (container,) = pod_spec["containers"]
    return {f"{claims[m['name']]}:{m['mountPath']}" for m in container["volumeMounts"] if m["name"] in claims}


def test_raycluster_head_cpu_and_gpu_groups_share_one_volume():
    docs = _manifests()
    claim, cluster = docs["PersistentVolumeClaim"], docs["RayCluster"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert cluster["apiVersion"] == "ray.io/v1"
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f"ray[train]>={cluster['spec']['rayVersion']}" in pyproject  # the image's Ray = the cluster's Ray
    head = cluster["spec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    ports = {p["name"]: p["containerPort"] for p in head["template"]["spec"]["containers"][0]["ports"]}
    assert ports["gcs-server"] == 6379
    groups = {g["groupName"]: g for g in cluster["spec"]["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    gpu = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]
    assert gpu["limits"]["nvidia.com/gpu"] == "1" and groups["gpu"]["rayStartParams"]["num-gpus"] == "1"
    shared = f"{claim['metadata']['name']}:{SHARED_MOUNT}"
    for spec in [head["template"]["spec"], *(g["template"]["spec"] for g in groups.values())]:
        assert shared in _mounts(spec)


def test_work_pool_template_runs_flows_beside_the_cluster():
    template = json.loads((K8S / "work-pool-template.json").read_text())
    config, variables = template["job_configuration"], template["variables"]["properties"]
    placeholders = set(re.findall(r"{{ (\w+) }}", json.dumps(config)))
    assert placeholders <= set(variables), placeholders - set(variables)  # every placeholder is a variable
    env = variables["env"]["default"]
    cluster = _manifests()["RayCluster"]["metadata"]["name"]
    assert env["RAY_ADDRESS"] == f"{cluster}-head-svc.rlhf.svc.cluster.local:6379"  # KubeRay's head service
    assert env["MLFLOW_TRACKING_URI"].startswith("http")
    pod = config["job_manifest"]["spec"]["template"]["spec"]
    assert pod["containers"][0]["volumeMounts"] == [{"name": "shared", "mountPath": SHARED_MOUNT}]
    assert (
        variables["shared_volume_claim"]["default"]
        == _manifests()["PersistentVolumeClaim"]["metadata"]["name"]
    )


def test_kubernetes_deployment_is_the_same_pipeline_with_scale_out_on_ray():
    spec = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in spec["deployments"]}
    k8s, local = deployments["rlhf-pipeline-k8s"], deployments["rlhf-pipeline"]
    assert k8s["entrypoint"] == local["entrypoint"] and k8s["work_pool"]["name"] == "rlhf-k8s"
    config = PipelineConfig.model_validate(k8s["parameters"]["config"])
    assert config.scale_out.backend == "ray" and config.scale_out.address is None  # from RAY_ADDRESS
    changed = {k for k, v in k8s["parameters"]["config"].items() if local["parameters"]["config"].get(k) != v}
    assert changed == {"name", "scale_out"}  # nothing else changes
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"ln -s {SHARED_MOUNT} /app/outputs" in dockerfile  # output_dir (outputs/) is the shared volume
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### From a laptop to a cluster") :]
    for needed in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "RAY_ADDRESS", "deployments/k8s/raycluster.yaml",
                   "deployments/k8s/work-pool-template.json", "scale_out"):  # fmt: skip
        assert needed in section, needed
