"""Offline validation of Kubernetes manifests: KubeRay kinds against the KubeRay CRDs, core kinds
against the Kubernetes OpenAPI schemas of ``kubernetes-validate``, and the KubeRay operator's
own spec checks that no schema expresses.

A CRD's ``openAPIV3Schema`` becomes a JSON Schema the way the API server treats it with strict
field validation (kubectl's default): an object that declares ``properties`` and neither
``additionalProperties`` nor ``x-kubernetes-preserve-unknown-fields`` rejects unknown fields,
``x-kubernetes-int-or-string`` accepts an integer or a string, and ``nullable`` admits null.
CEL rules (``x-kubernetes-validations``) are not evaluated.
"""

from __future__ import annotations

import os
import re
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

REPO = Path(__file__).resolve().parents[2]
CRDS_DIR = Path(os.environ.get("KUBERAY_CRDS_DIR", REPO.parent / "shared" / "kuberay-crds"))
KUBERNETES_VERSION = "1.33"
"""Kubernetes minor version the core kinds are validated against (kubectl image pin)."""

# KubeRay v1.6.2 ray-operator/controllers/ray/utils/constant.go: a RayJob's cluster is named
# after the job plus 6 characters, and a RayCluster name must fit in 53.
MAX_RAYCLUSTER_NAME = 53
MAX_RAYJOB_NAME = MAX_RAYCLUSTER_NAME - 6
MIN_TOKEN_AUTH_RAY = (2, 52, 0)
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
CRON_FIELD = r"(\*|\d+(-\d+)?(,\d+(-\d+)?)*)(/\d+)?"
CRON = re.compile(rf"^{CRON_FIELD}( {CRON_FIELD}){{4}}$")


class ManifestError(ValueError):
    """A manifest the API server or the KubeRay operator would reject."""


def structural_to_json_schema(node: Any) -> Any:
    """Convert a CRD's structural OpenAPI v3 schema into a strict JSON Schema."""
    if isinstance(node, list):
        return [structural_to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    schema = {key: structural_to_json_schema(value) for key, value in node.items()
              if not key.startswith("x-kubernetes-") and key != "nullable"}
    if node.get("x-kubernetes-int-or-string"):
        schema.pop("type", None)
        schema.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if node.get("nullable") and "type" in schema:
        schema["type"] = [schema["type"], "null"]
    if ("properties" in node and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")):
        schema["additionalProperties"] = False
    return schema


@cache
def crd_schemas(crds_dir: Path = CRDS_DIR) -> dict[tuple[str, str], dict[str, Any]]:
    """JSON Schemas keyed by (apiVersion, kind) for every served version of every CRD file."""
    schemas = {}
    for path in sorted(crds_dir.glob("*.yaml")):
        crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if version.get("served"):
                schemas[(f"{group}/{version['name']}", kind)] = structural_to_json_schema(
                    version["schema"]["openAPIV3Schema"])
    return schemas


def _where(error: jsonschema.ValidationError) -> str:
    return ".".join(str(part) for part in error.absolute_path) or "<root>"


def validate_custom(manifest: dict[str, Any], crds_dir: Path = CRDS_DIR) -> None:
    """Check a KubeRay resource against its CRD schema and the operator's spec checks."""
    key = (manifest.get("apiVersion"), manifest.get("kind"))
    schema = crd_schemas(crds_dir).get(key)
    if schema is None:
        raise ManifestError(f"no CRD in {crds_dir} serves {key}")
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(manifest),
                    key=lambda e: list(e.absolute_path))
    if errors:
        raise ManifestError("; ".join(f"{_where(e)}: {e.message}" for e in errors[:5]))
    check_kuberay_semantics(manifest)


def validate_core(manifest: dict[str, Any], version: str = KUBERNETES_VERSION) -> None:
    """Check a built-in kind with ``kubernetes-validate`` in strict mode (unknown fields fail)."""
    import kubernetes_validate

    try:
        kubernetes_validate.validate(manifest, version, strict=True)
    except kubernetes_validate.ValidationError as error:
        raise ManifestError(f"{manifest.get('kind')}: {_where(error)}: {error.message}") from None


def validate(manifest: dict[str, Any], crds_dir: Path = CRDS_DIR) -> None:
    """Validate any manifest: ``ray.io`` kinds by CRD, everything else by kubernetes-validate."""
    if manifest.get("apiVersion", "").startswith("ray.io/"):
        validate_custom(manifest, crds_dir)
    else:
        validate_core(manifest)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def _check_name(name: str | None, limit: int, kind: str) -> None:
    if name is None:
        return
    if len(name) > limit or not DNS1035.match(name):
        raise ManifestError(f"{kind} name {name!r} must be a DNS-1035 label of at most "
                            f"{limit} characters")


def _check_cluster_spec(spec: dict[str, Any]) -> None:
    groups = [("head", spec["headGroupSpec"])] + [
        (group["groupName"], group) for group in spec.get("workerGroupSpecs", [])]
    for name, group in groups:
        if not group["template"]["spec"].get("containers"):
            raise ManifestError(f"{name} group has no container")
        params = group.get("rayStartParams", {})
        if group.get("resources") and any(params.get(key) for key in (
                "num-cpus", "num-gpus", "memory", "resources")):
            raise ManifestError(f"{name} group sets resources in rayStartParams and resources")
    for group in spec.get("workerGroupSpecs", []):
        if not group["minReplicas"] <= group.get("replicas", group["minReplicas"]) \
                <= group["maxReplicas"]:
            raise ManifestError(f"worker group {group['groupName']}: replicas outside "
                                "[minReplicas, maxReplicas]")
    if spec.get("authOptions", {}).get("mode", "disabled") == "token":
        if _version(spec.get("rayVersion", "0")) < MIN_TOKEN_AUTH_RAY:
            raise ManifestError("authOptions.mode token needs rayVersion >= 2.52.0")


def _check_job_spec(spec: dict[str, Any]) -> None:
    if spec.get("ttlSecondsAfterFinished", 0) > 0 and not spec.get("shutdownAfterJobFinishes"):
        raise ManifestError("ttlSecondsAfterFinished needs shutdownAfterJobFinishes: true")
    if ("rayClusterSpec" in spec) == bool(spec.get("clusterSelector")):
        raise ManifestError("set exactly one of rayClusterSpec and clusterSelector")
    if spec.get("activeDeadlineSeconds", 1) <= 0 or spec.get("backoffLimit", 0) < 0:
        raise ManifestError("activeDeadlineSeconds must be positive, backoffLimit >= 0")
    if spec.get("suspend") and not spec.get("shutdownAfterJobFinishes"):
        raise ManifestError("a suspended RayJob needs shutdownAfterJobFinishes: true")
    if "rayClusterSpec" in spec:
        _check_cluster_spec(spec["rayClusterSpec"])


def check_kuberay_semantics(manifest: dict[str, Any]) -> None:
    """The KubeRay v1.6 operator's spec checks (``utils/validation.go``) that no schema holds."""
    kind, spec = manifest["kind"], manifest.get("spec", {})
    name = manifest["metadata"].get("name")
    if kind == "RayCluster":
        _check_name(name, MAX_RAYCLUSTER_NAME, kind)
        _check_cluster_spec(spec)
    elif kind == "RayJob":
        _check_name(name, MAX_RAYJOB_NAME, kind)
        _check_job_spec(spec)
    elif kind == "RayCronJob":
        _check_name(name, MAX_RAYJOB_NAME, kind)
        if not CRON.match(spec["schedule"]):
            raise ManifestError(f"schedule {spec['schedule']!r} is not a 5-field cron line")
        _check_job_spec(spec["jobTemplate"])
