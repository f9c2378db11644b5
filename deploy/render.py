"""Render the kustomize overlays in deploy/k8s offline, and write the CronJob's RayJob templates.

The same output as ``kubectl kustomize deploy/k8s/overlays/NAME`` (kustomize v5) for exactly the
kustomize subset these manifests use:

- ``resources``: YAML files inside the kustomization's folder, and other kustomization folders;
- ``configMapGenerator``: ``files`` (``key=path`` or ``path``), ``behavior`` create, merge or
  replace, ``options.labels``; with ``generatorOptions.disableNameSuffixHash: true``;
- ``patches``: JSON 6902 patches (add, remove, replace) on a target selected by kind and name;
- ``namespace``, ``labels`` (``pairs`` on metadata only), ``images`` (``newName``, ``newTag``
  in every ``containers`` and ``initContainers`` list);
- ``replacements``: copy one field of a source resource into fields of targets (``create``).

Anything else in a kustomization raises :class:`RenderError` naming the field, so that an
unsupported feature can never be ignored silently.

Usage::

    python deploy/render.py deploy/k8s/overlays/gpu      # print the rendered manifests
    python deploy/render.py --write-templates            # refresh every overlay's CronJob template
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import yaml

K8S_DIR = Path(__file__).resolve().parent / "k8s"
OVERLAYS_DIR = K8S_DIR / "overlays"
TEMPLATE_FILE = "regen-rayjob.yaml"
"""Each overlay's RayJob template for the portable CronJob (cronjob.yaml)."""

SUPPORTED_KEYS = {"apiVersion", "kind", "resources", "namespace", "labels", "images",
                  "configMapGenerator", "generatorOptions", "patches", "replacements"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                  "PersistentVolume", "StorageClass", "PriorityClass"}

Resource = dict[str, Any]


class RenderError(ValueError):
    """A kustomization this renderer cannot render exactly as kustomize would."""


def _inside(folder: Path, relative: str, field: str) -> Path:
    path = (folder / relative).resolve()
    if not path.is_relative_to(folder.resolve()):
        raise RenderError(f"{folder}: {field} {relative!r} lies outside the kustomization folder; "
                          "kustomize refuses it (load restrictor RootOnly): move the file here")
    return path


def _identity(resource: Resource) -> tuple[str, str]:
    return resource["kind"], resource["metadata"]["name"]


def _find(resources: list[Resource], kind: str, name: str | None) -> list[Resource]:
    return [r for r in resources
            if r["kind"] == kind and (name is None or r["metadata"]["name"] == name)]


def _load_resources(folder: Path, entries: list[str]) -> list[Resource]:
    resources: list[Resource] = []
    for entry in entries:
        path = (folder / entry).resolve()
        if path.is_dir():
            resources += render(path)
            continue
        path = _inside(folder, entry, "resource")
        resources += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    seen: set[tuple[str, str]] = set()
    for resource in resources:
        if _identity(resource) in seen:
            raise RenderError(f"{folder}: two resources are {_identity(resource)}")
        seen.add(_identity(resource))
    return resources


def _generate_config_maps(folder: Path, spec: dict[str, Any], resources: list[Resource]) -> None:
    if spec.get("configMapGenerator") and not spec.get("generatorOptions", {}).get(
            "disableNameSuffixHash"):
        raise RenderError(f"{folder}: configMapGenerator needs generatorOptions."
                          "disableNameSuffixHash: true (KubeRay kinds keep no hashed names)")
    for generator in spec.get("configMapGenerator", []):
        unknown = set(generator) - {"name", "files", "behavior", "options"}
        if unknown or set(generator.get("options", {})) - {"labels"}:
            raise RenderError(f"{folder}: configMapGenerator fields {sorted(unknown)} or options "
                              "other than labels are not supported")
        data = {}
        for source in generator["files"]:
            key, _, relative = source.rpartition("=")
            path = _inside(folder, relative, "configMapGenerator file")
            data[key or path.name] = path.read_text()
        labels = dict(generator.get("options", {}).get("labels", {}))
        behavior = generator.get("behavior", "create")
        existing = _find(resources, "ConfigMap", generator["name"])
        if behavior == "create":
            if existing:
                raise RenderError(f"{folder}: ConfigMap {generator['name']} exists; use "
                                  "behavior merge or replace")
            resources.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {
                "name": generator["name"], **({"labels": labels} if labels else {})},
                "data": data})
            continue
        if behavior not in ("merge", "replace") or not existing:
            raise RenderError(f"{folder}: configMapGenerator {generator['name']}: behavior "
                              f"{behavior!r} needs an existing ConfigMap of that name")
        target = existing[0]
        target["data"] = ({**target.get("data", {}), **data} if behavior == "merge" else data)
        target["metadata"].setdefault("labels", {}).update(labels)


def _pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise RenderError(f"JSON pointer {path!r} must start with '/'")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _apply_operation(document: Any, operation: dict[str, Any]) -> None:
    *parents, last = _pointer(operation["path"])
    node = document
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    op = operation["op"]
    if isinstance(node, list):
        index = len(node) if last == "-" else int(last)
        if op == "add":
            node.insert(index, copy.deepcopy(operation["value"]))
        elif op == "replace":
            node[index] = copy.deepcopy(operation["value"])
        elif op == "remove":
            del node[index]
        else:
            raise RenderError(f"JSON 6902 op {op!r} is not supported (add, remove, replace)")
        return
    if op in ("replace", "remove") and last not in node:
        raise RenderError(f"JSON 6902 {op} of missing path {operation['path']}")
    if op in ("add", "replace"):
        node[last] = copy.deepcopy(operation["value"])
    elif op == "remove":
        del node[last]
    else:
        raise RenderError(f"JSON 6902 op {op!r} is not supported (add, remove, replace)")


def _apply_patches(folder: Path, patches: list[dict[str, Any]],
                   resources: list[Resource]) -> None:
    for patch in patches:
        target = patch.get("target", {})
        if set(target) - {"kind", "name"} or "kind" not in target:
            raise RenderError(f"{folder}: patch targets select by kind and name only")
        text = (patch["patch"] if "patch" in patch
                else _inside(folder, patch["path"], "patch").read_text())
        operations = yaml.safe_load(text)
        if not isinstance(operations, list):
            raise RenderError(f"{folder}: only JSON 6902 patches (a list of operations) are "
                              "supported, not strategic-merge patches")
        matches = _find(resources, target["kind"], target.get("name"))
        if not matches:
            raise RenderError(f"{folder}: patch target {target} matches no resource")
        for resource in matches:
            for operation in operations:
                _apply_operation(resource, operation)


def _split_image(reference: str) -> tuple[str, str]:
    name, colon, tag = reference.rpartition(":")
    return (reference, "") if not colon or "/" in tag else (name, tag)


def _set_images(node: Any, images: list[dict[str, str]]) -> None:
    if isinstance(node, list):
        for item in node:
            _set_images(item, images)
        return
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        if key in ("containers", "initContainers") and isinstance(value, list):
            for container in value:
                name, tag = _split_image(container.get("image", ""))
                for image in images:
                    if image["name"] == name:
                        container["image"] = (f"{image.get('newName', name)}:"
                                              f"{image.get('newTag', tag)}").rstrip(":")
        _set_images(value, images)


def _field(node: dict[str, Any], path: str, create: bool = False) -> tuple[dict[str, Any], str]:
    if "[" in path:
        raise RenderError(f"replacement fieldPath {path!r}: list selectors are not supported")
    *parents, last = path.split(".")
    for part in parents:
        if part not in node and create:
            node[part] = {}
        node = node[part]
    return node, last


def _apply_replacements(folder: Path, replacements: list[dict[str, Any]],
                        resources: list[Resource]) -> None:
    for replacement in replacements:
        source = replacement["source"]
        found = _find(resources, source["kind"], source.get("name"))
        if len(found) != 1:
            raise RenderError(f"{folder}: replacement source {source} matches {len(found)} "
                              "resources, not one")
        parent, key = _field(found[0], source["fieldPath"])
        value = parent[key]
        for target in replacement["targets"]:
            select = target["select"]
            create = target.get("options", {}).get("create", False)
            for resource in _find(resources, select["kind"], select.get("name")):
                for path in target["fieldPaths"]:
                    parent, key = _field(resource, path, create)
                    if key not in parent and not create:
                        raise RenderError(f"{folder}: replacement target {path} is missing in "
                                          f"{_identity(resource)}; set options.create")
                    parent[key] = copy.deepcopy(value)


def _set_namespace(namespace: str, resources: list[Resource]) -> None:
    for resource in resources:
        if resource["kind"] in CLUSTER_SCOPED:
            continue
        resource["metadata"]["namespace"] = namespace
        if resource["kind"] == "RoleBinding":
            for subject in resource.get("subjects", []):
                if subject["kind"] == "ServiceAccount":
                    subject.setdefault("namespace", namespace)


def render(folder: str | Path) -> list[Resource]:
    """The resources the kustomization in ``folder`` builds, in kustomize's transformer order."""
    folder = Path(folder)
    spec = yaml.safe_load((folder / "kustomization.yaml").read_text()) or {}
    unknown = set(spec) - SUPPORTED_KEYS
    if unknown:
        raise RenderError(f"{folder}/kustomization.yaml: fields {sorted(unknown)} are not "
                          f"supported by deploy/render.py (supported: {sorted(SUPPORTED_KEYS)})")
    resources = _load_resources(folder, spec.get("resources", []))
    _generate_config_maps(folder, spec, resources)
    _apply_patches(folder, spec.get("patches", []), resources)
    if "namespace" in spec:
        _set_namespace(spec["namespace"], resources)
    for label_set in spec.get("labels", []):
        if set(label_set) != {"pairs"}:
            raise RenderError(f"{folder}: labels support only 'pairs' (metadata labels)")
        for resource in resources:
            resource["metadata"].setdefault("labels", {}).update(label_set["pairs"])
    _set_images(resources, spec.get("images", []))
    _apply_replacements(folder, spec.get("replacements", []), resources)
    return resources


def regen_template(resources: list[Resource]) -> Resource:
    """The RayJob the portable CronJob creates: the rendered RayCronJob's job, a fresh name."""
    (cron,) = _find(resources, "RayCronJob", None)
    name = cron["metadata"]["name"]
    labels = {key: value for key, value in cron["metadata"].get("labels", {}).items()
              if key != "gflow.io/deploy"}
    return {"apiVersion": cron["apiVersion"], "kind": "RayJob",
            "metadata": {"generateName": f"{name}-", "labels": {**labels,
                                                                 "gflow.io/schedule": name}},
            "spec": copy.deepcopy(cron["spec"]["jobTemplate"])}


def template_text(resources: list[Resource]) -> str:
    """The text of an overlay's ``regen-rayjob.yaml``."""
    header = ("# Generated by `python deploy/render.py --write-templates` from this overlay's\n"
              "# RayCronJob; do not edit. The CronJob in base/cronjob.yaml creates it.\n")
    return header + yaml.safe_dump(regen_template(resources), sort_keys=False)


def write_templates() -> list[Path]:
    """Refresh ``regen-rayjob.yaml`` in every overlay; returns the files written."""
    written = []
    for overlay in sorted(p for p in OVERLAYS_DIR.iterdir() if p.is_dir()):
        path = overlay / TEMPLATE_FILE
        path.write_text(template_text(render(overlay)))
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", help="kustomization folder to render")
    parser.add_argument("--write-templates", action="store_true",
                        help="refresh each overlay's RayJob template for the CronJob")
    args = parser.parse_args(argv)
    if args.write_templates:
        for path in write_templates():
            print(f"wrote {path}")
    if args.folder:
        print(yaml.safe_dump_all(render(args.folder), sort_keys=True), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
