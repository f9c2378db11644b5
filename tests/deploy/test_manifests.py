"""The container image and the KubeRay/Kubernetes manifests in deploy/, validated offline.

The kustomize overlays are built with ``kubectl kustomize`` (kubectl must be installed: these
tests fail without it, saying how to install it); every KubeRay resource is validated against
the KubeRay v1.6.2 CRDs in ``../shared/kuberay-crds`` (or ``$KUBERAY_CRDS_DIR``), every core
resource with kubernetes-validate, and the project's own rules (pinned Ray version, non-root,
no inline secrets, ClusterIP only) are checked on what would be applied.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import shlex
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from k8s_validation import CRDS_DIR, ManifestError, check_kuberay_semantics, validate
from packaging.requirements import Requirement

from gflow_dist.cli import build_parser
from gflow_dist.config import build_config

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
OVERLAYS = ("cpu-local", "gpu")
STAGES = ("train", "sample", "evaluate", "run")
COMMANDS = {"train": "train", "sample": "catalog", "evaluate": "evaluate", "run": "run"}
"""The gflow command of each stage's RayJob: the cluster samples in shards, into the catalog."""
CONFIG_PATH = "/etc/gflow/run.yaml"
SECURITY = {"runAsNonRoot": True, "runAsUser": 1000, "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}

needs_crds = pytest.mark.skipif(
    not CRDS_DIR.is_dir(), reason=f"KubeRay CRDs not found at {CRDS_DIR} (set KUBERAY_CRDS_DIR "
    "to the folder with ray.io_*.yaml)")


def _load_regen_templates() -> Any:
    spec = importlib.util.spec_from_file_location("regen_templates",
                                                  DEPLOY / "regen_templates.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


regen = _load_regen_templates()


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    """What ``kubectl kustomize deploy/k8s/overlays/NAME`` builds, for each overlay.

    Without kubectl every test that uses it fails at set-up, saying how to install kubectl."""
    try:
        return {name: regen.kustomize(DEPLOY / "k8s" / "overlays" / name) for name in OVERLAYS}
    except regen.KustomizeError as error:
        message = str(error)
    pytest.fail(message, pytrace=False)


def _one(resources: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    (found,) = [r for r in resources
                if r["kind"] == kind and (name is None or r["metadata"]["name"] == name)]
    return found


def _template(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return yaml.safe_load(_one(resources, "ConfigMap", "gflow-regen-template")["data"]
                          ["rayjob.yaml"])


def _applied(resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Everything that reaches the API server: the resources and the CronJob's RayJob."""
    return resources + [_template(resources)]


def _cluster_specs(resource: dict[str, Any]) -> list[dict[str, Any]]:
    spec = resource.get("spec", {})
    found = [spec] if resource["kind"] == "RayCluster" else []
    found += [spec["rayClusterSpec"]] if "rayClusterSpec" in spec else []
    found += ([spec["jobTemplate"]["rayClusterSpec"]]
              if "rayClusterSpec" in spec.get("jobTemplate", {}) else [])
    return found


def _pod_specs(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        if isinstance(node.get("containers"), list):
            yield node
        for value in node.values():
            yield from _pod_specs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _pod_specs(item)


def _ray_pin() -> str:
    constraints = re.search(r"^ray==(\S+)$", (REPO / "constraints.txt").read_text(), re.M)
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    (dependency,) = [Requirement(d) for d in project["dependencies"] if d.startswith("ray[")]
    assert dependency.specifier.contains(constraints.group(1))  # pyproject: a range
    return constraints.group(1)


# ---- rendering --------------------------------------------------------------------------------

def test_overlays_render_every_piece(rendered):
    for resources in rendered.values():
        kinds = sorted(r["kind"] for r in resources)
        assert kinds == sorted(["RayCluster", "Service", "PersistentVolumeClaim", "RayCronJob",
                                "ServiceAccount", "Role", "RoleBinding", "CronJob", "ConfigMap",
                                "ConfigMap"] + ["RayJob"] * 4)
        assert {r["metadata"]["namespace"] for r in resources} == {"gflow"}


def test_missing_kubectl_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(regen.KustomizeError, match="kubectl is not installed.*apt-get install"):
        regen.kustomize(DEPLOY / "k8s" / "overlays" / "gpu")


def test_kustomize_errors_name_the_kustomization(tmp_path):
    (tmp_path / "kustomization.yaml").write_text("resources: [missing.yaml]\n")
    with pytest.raises(regen.KustomizeError,
                       match=rf"kubectl kustomize {re.escape(str(tmp_path))} failed.*missing"):
        regen.kustomize(tmp_path)


def test_cronjob_templates_are_current(rendered):
    for resources in rendered.values():
        assert _template(resources) == regen.regen_template(resources), \
            "stale CronJob template: run python deploy/regen_templates.py"


# ---- schema validation ------------------------------------------------------------------------

@needs_crds
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_manifest_is_valid(rendered, overlay):
    for manifest in _applied(rendered[overlay]):
        validate(manifest)


def _mutations() -> list[Any]:
    def misspell_job(m):
        m["spec"]["shutdownAfterJobFinish"] = m["spec"].pop("shutdownAfterJobFinishes")

    def job_wrong_type(m):
        m["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["maxReplicas"] = "four"

    def misspell_cron(m):
        m["spec"]["concurencyPolicy"] = m["spec"].pop("concurrencyPolicy")

    def cron_wrong_type(m):
        m["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"] = "create"

    def ttl_without_shutdown(m):
        m["spec"]["shutdownAfterJobFinishes"] = False

    cases = [("RayJob", misspell_job), ("RayJob", job_wrong_type), ("CronJob", misspell_cron),
             ("CronJob", cron_wrong_type), ("RayJob", ttl_without_shutdown)]
    return [pytest.param(kind, mutate, id=f"{kind}-{mutate.__name__}") for kind, mutate in cases]


@needs_crds
@pytest.mark.parametrize("kind, mutate", _mutations())
def test_validation_rejects_broken_manifests(rendered, kind, mutate):
    name = "gflow-train" if kind == "RayJob" else "gflow-regen"
    manifest = copy.deepcopy(_one(rendered["gpu"], kind, name))
    validate(manifest)
    mutate(manifest)
    with pytest.raises(ManifestError):
        validate(manifest)


def test_operator_checks_reject_old_ray_with_token_auth(rendered):
    cluster = copy.deepcopy(_one(rendered["gpu"], "RayCluster"))
    check_kuberay_semantics(cluster)
    cluster["spec"]["rayVersion"] = "2.51.0"
    with pytest.raises(ManifestError, match="2.52.0"):
        check_kuberay_semantics(cluster)


# ---- project rules ----------------------------------------------------------------------------

def test_ray_version_everywhere_equals_the_pin(rendered):
    pin = _ray_pin()
    dockerfile = (DEPLOY / "docker" / "Dockerfile").read_text()
    assert re.search(rf"^ARG RAY_VERSION={re.escape(pin)}$", dockerfile, re.M)
    for resources in rendered.values():
        for resource in _applied(resources):
            for spec in _cluster_specs(resource):
                assert spec["rayVersion"] == pin
            if resource["apiVersion"].startswith("ray.io/"):
                for pod in _pod_specs(resource["spec"]):
                    for container in pod["containers"]:
                        assert f"-ray{pin}-" in container["image"], container["image"]


def test_containers_run_as_non_root_with_read_only_root(rendered):
    for resources in rendered.values():
        for resource in _applied(resources):
            pods = list(_pod_specs(resource.get("spec", {})))
            for pod in pods:
                assert pod["securityContext"]["runAsNonRoot"] is True
                mounts = {}
                for container in pod["containers"]:
                    assert container["securityContext"] == SECURITY, container["name"]
                    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
                    assert "/tmp" in mounts
                empty_dirs = {v["name"] for v in pod.get("volumes", []) if "emptyDir" in v}
                assert mounts["/tmp"] in empty_dirs
            for spec in _cluster_specs(resource):
                if spec.get("enableInTreeAutoscaling"):
                    assert spec["autoscalerOptions"]["securityContext"] == SECURITY
                head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
                assert {"/tmp", "/tmp/ray"} <= {m["mountPath"] for m in head["volumeMounts"]}


def test_no_secret_values_inline(rendered):
    secret_like = re.compile(r"SECRET|TOKEN|PASSWORD|ACCESS_KEY|CREDENTIAL", re.I)
    for resources in rendered.values():
        applied = _applied(resources)
        assert not [r for r in applied if r["kind"] == "Secret"]
        for resource in applied:
            for pod in _pod_specs(resource.get("spec", {})):
                for container in pod["containers"]:
                    for env in container.get("env", []):
                        if secret_like.search(env["name"]):
                            assert "value" not in env and "secretKeyRef" in env["valueFrom"]
                    for source in container.get("envFrom", []):
                        assert set(source) == {"secretRef"}


def test_bucket_credentials_and_token_come_from_secrets(rendered):
    for resources in rendered.values():
        specs = [spec for resource in _applied(resources) for spec in _cluster_specs(resource)]
        assert len(specs) == 7, "RayCluster, four RayJobs, RayCronJob, CronJob template"
        for spec in specs:
            assert spec["authOptions"] == {"mode": "token", "secretName": "gflow-ray-token"}
            for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
                (container,) = group["template"]["spec"]["containers"]
                assert container["envFrom"][0]["secretRef"]["name"] == "gflow-bucket-credentials"


def test_dashboard_is_cluster_internal(rendered):
    for resources in rendered.values():
        services = [r for r in resources if r["kind"] == "Service"]
        assert [s["spec"]["type"] for s in services] == ["ClusterIP"]
        assert services[0]["spec"]["selector"] == {"ray.io/cluster": "gflow",
                                                   "ray.io/node-type": "head"}
        for resource in _applied(resources):
            for spec in _cluster_specs(resource):
                assert spec["headGroupSpec"]["serviceType"] == "ClusterIP"
                assert not spec["headGroupSpec"].get("enableIngress")


def test_each_command_has_a_self_contained_rayjob(rendered):
    parser = build_parser()
    for resources in rendered.values():
        cluster = _one(resources, "RayCluster")
        for stage in STAGES:
            job = _one(resources, "RayJob", f"gflow-{stage}")
            spec = job["spec"]
            args = shlex.split(spec["entrypoint"])
            assert args[:3] == ["gflow", COMMANDS[stage], CONFIG_PATH] and "--out" in args
            assert parser.parse_args(args[1:]).out == Path("/data/runs/main")
            assert spec["shutdownAfterJobFinishes"] is True
            assert spec["ttlSecondsAfterFinished"] > 0 and spec["backoffLimit"] >= 1
            assert spec["activeDeadlineSeconds"] > 0
            assert spec["rayClusterSpec"] == cluster["spec"]
            assert job["metadata"]["labels"]["gflow.io/job"] == stage


def _shared_writable_mounts(cluster_spec: dict[str, Any]) -> list[set[str]]:
    """For the head and each worker group: mount paths of writable persistent volumes."""
    pods = [cluster_spec["headGroupSpec"]["template"]["spec"]]
    pods += [group["template"]["spec"] for group in cluster_spec["workerGroupSpecs"]]
    found = []
    for pod in pods:
        claims = {v["name"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
        container = pod["containers"][0]  # the Ray container; KubeRay's sidecars follow
        found.append({m["mountPath"] for m in container["volumeMounts"]
                      if m["name"] in claims and not m.get("readOnly", False)})
    return found


def test_jobs_write_only_to_the_shared_volume_or_the_bucket(rendered):
    """Every folder an entrypoint writes to is on the shared volume of every Ray pod."""
    parser = build_parser()
    for overlay, resources in rendered.items():
        jobs = [r for r in _applied(resources) if r["kind"] in ("RayJob", "RayCronJob")]
        assert len(jobs) == len(STAGES) + 2
        for job in jobs:
            spec = job["spec"].get("jobTemplate", job["spec"])
            args = parser.parse_args(shlex.split(spec["entrypoint"])[1:])
            folders = [str(f) for f in (args.out, getattr(args, "staging", None))
                       if f is not None and not str(f).startswith("s3://")]
            assert folders, f"{overlay} {job['metadata']}: writes nowhere"
            for mounts in _shared_writable_mounts(spec["rayClusterSpec"]):
                for folder in folders:
                    assert any(Path(folder).is_relative_to(m) for m in mounts), \
                        f"{overlay}: {folder} is not on the shared volume ({mounts})"


def test_run_config_is_mounted_and_valid(rendered):
    base_config = (DEPLOY / "k8s" / "base" / "run.yaml").read_text()
    assert base_config == (REPO / "configs" / "mock.yaml").read_text()
    for overlay, resources in rendered.items():
        text = _one(resources, "ConfigMap", "gflow-run-config")["data"]["run.yaml"]
        config = build_config(yaml.safe_load(text), f"{overlay} run.yaml")
        cluster = _one(resources, "RayCluster")["spec"]
        head = cluster["headGroupSpec"]["template"]["spec"]
        (mount,) = [m for m in head["containers"][0]["volumeMounts"]
                    if m["mountPath"] == str(Path(CONFIG_PATH).parent)]
        (volume,) = [v for v in head["volumes"] if v["name"] == mount["name"]]
        assert volume["configMap"]["name"] == "gflow-run-config"
        gpus = [int(g["template"]["spec"]["containers"][0]["resources"]["limits"].get(
            "nvidia.com/gpu", 0)) for g in cluster["workerGroupSpecs"]]
        assert config.ray.num_gpus_per_trainer <= max(gpus)
        assert (config.ray.num_gpus_per_trainer > 0) == (overlay == "gpu")


def test_gpu_workers_are_guaranteed_and_autoscaled(rendered):
    cluster = _one(rendered["gpu"], "RayCluster")["spec"]
    assert cluster["enableInTreeAutoscaling"] is True
    (group,) = cluster["workerGroupSpecs"]
    assert 0 <= group["minReplicas"] < group["maxReplicas"]
    resources = group["template"]["spec"]["containers"][0]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == "1"
    assert resources["requests"] == resources["limits"]
    assert {t["key"] for t in group["template"]["spec"]["tolerations"]} == {"nvidia.com/gpu"}


def test_scheduled_regeneration(rendered):
    for resources in rendered.values():
        ray_cron = _one(resources, "RayCronJob")
        cron = _one(resources, "CronJob")
        template = _template(resources)
        assert ray_cron["spec"]["schedule"] == cron["spec"]["schedule"]
        minute, hour, *rest = cron["spec"]["schedule"].split()
        assert minute.isdigit() and hour.isdigit() and rest == ["*", "*", "*"], "daily"
        assert template["spec"] == ray_cron["spec"]["jobTemplate"]
        assert template["metadata"]["generateName"].endswith("-")
        assert template["spec"]["activeDeadlineSeconds"] < 24 * 3600, "runs must not overlap"
        command = shlex.split(template["spec"]["entrypoint"])
        assert command[:3] == ["gflow", "publish", CONFIG_PATH]
        published = build_parser().parse_args(command[1:])
        assert published.name
        assert published.out.startswith(("/", "s3://"))
        assert (published.staging is not None) == published.out.startswith("s3://")
        assert template["spec"]["rayClusterSpec"] == _one(resources, "RayCluster")["spec"]
        assert cron["spec"]["concurrencyPolicy"] == "Forbid"
        pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        account = pod["serviceAccountName"]
        role = _one(resources, "Role")
        assert role["rules"] == [{"apiGroups": ["ray.io"], "resources": ["rayjobs"],
                                  "verbs": ["create", "get", "list", "watch", "delete"]}]
        binding = _one(resources, "RoleBinding")
        assert binding["roleRef"]["name"] == role["metadata"]["name"]
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account,
                                        "namespace": "gflow"}]


def test_label_selection_splits_what_to_apply(rendered):
    for resources in rendered.values():
        groups: dict[str, set[str]] = {}
        for resource in resources:
            deploy = resource["metadata"]["labels"]["gflow.io/deploy"]
            groups.setdefault(deploy, set()).add(resource["kind"])
        assert groups["infra"] == {"RayCluster", "Service", "PersistentVolumeClaim", "ConfigMap"}
        assert groups["job"] == {"RayJob"}
        assert groups["raycronjob"] == {"RayCronJob"}
        assert groups["cronjob"] == {"ServiceAccount", "Role", "RoleBinding", "CronJob",
                                     "ConfigMap"}


# ---- image ------------------------------------------------------------------------------------

def _instructions(dockerfile: str) -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", dockerfile)
    lines = [line.strip() for line in joined.splitlines()]
    return [tuple(line.split(None, 1)) for line in lines if line and not line.startswith("#")]


def test_dockerfile_targets():
    instructions = _instructions((DEPLOY / "docker" / "Dockerfile").read_text())
    args = dict(a.split("=", 1) for op, a in instructions if op == "ARG" and "=" in a)
    assert args["RAY_VERSION"] == _ray_pin() and args["PYTHON_TAG"] == "py311"
    stages: dict[str, list[tuple[str, str]]] = {}
    for op, argument in instructions:
        if op == "FROM":
            image, _, name = argument.partition(" AS ")
            stages[name] = [("FROM", image)]
        elif stages:
            stages[list(stages)[-1]].append((op, argument))
    bases = {name: steps[0][1] for name, steps in stages.items()}
    assert bases["ray-cpu"] == "rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}-cpu"
    assert bases["ray-gpu"] == "rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}-${CUDA_TAG}"
    for target in ("cpu", "gpu"):
        steps = dict(stages[target][1:])
        assert bases[target] == f"ray-{target}" and steps["USER"] == "1000:100"
        run = steps["RUN"]
        assert f"from=wheels-{target}" in run and "--no-index" in run
        assert "-c /tmp/constraints.txt" in run and "pip uninstall --yes torchvision" in run
        assert not re.search(r"apt-get|build-essential|gcc|g\+\+|COPY", " ".join(
            f"{op} {a}" for op, a in stages[target]))


def test_dockerignore_keeps_the_context_small():
    patterns = set((REPO / ".dockerignore").read_text().split())
    assert {"*", ".venv", "runs", ".git", "**/__pycache__"} <= patterns
    assert {"!pyproject.toml", "!constraints.txt", "!README.md", "!gflow_dist/"} <= patterns


def _quantity_gi(text: str) -> float:
    match = re.fullmatch(r"(\d+)([MGT]i)", text)
    assert match, f"unexpected quantity {text!r}"
    return int(match[1]) * {"Mi": 1 / 1024, "Gi": 1, "Ti": 1024}[match[2]]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_ray_pod_plans_its_disk(rendered, overlay):
    """Ray containers request ephemeral storage that covers their emptyDirs, and every
    worker spills objects to a sized volume mounted where Ray's spilling config points."""
    for resource in _applied(rendered[overlay]):
        for cluster in _cluster_specs(resource):
            groups = [("head", cluster["headGroupSpec"])] + [
                ("worker", group) for group in cluster["workerGroupSpecs"]]
            for role, group in groups:
                pod = group["template"]["spec"]
                (container,) = pod["containers"]
                limits = container["resources"]["limits"]
                assert "ephemeral-storage" in container["resources"]["requests"]
                empty_dirs = [v["emptyDir"] for v in pod["volumes"] if "emptyDir" in v]
                assert all("sizeLimit" in d for d in empty_dirs)
                assert (sum(_quantity_gi(d["sizeLimit"]) for d in empty_dirs)
                        <= _quantity_gi(limits["ephemeral-storage"]))
                if role == "head":
                    continue
                env = {e["name"]: e.get("value") for e in container["env"]}
                spill = json.loads(env["RAY_object_spilling_config"])["params"]["directory_path"]
                (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == spill]
                (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
                if overlay == "cpu-local":
                    assert volume["emptyDir"]["sizeLimit"]
                else:
                    claim = volume["ephemeral"]["volumeClaimTemplate"]["spec"]
                    assert _quantity_gi(claim["resources"]["requests"]["storage"]) >= 200
