"""The upsampler registry: build one by name from a config, or load a saved one."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from gflow_dist.config import RunConfig
from gflow_dist.errors import GflowError
from gflow_dist.upsamplers.base import SPEC_FILE, Upsampler


def _registry() -> dict[str, type[Upsampler]]:
    from gflow_dist.baselines.ananke import AnankeUpsampler
    from gflow_dist.baselines.enbid import EnbidUpsampler
    from gflow_dist.baselines.kde_mle import KdeMleUpsampler
    from gflow_dist.flows.cnf_upsampler import CNFUpsampler
    from gflow_dist.flows.maf import MAFUpsampler

    kinds = (CNFUpsampler, MAFUpsampler, EnbidUpsampler, AnankeUpsampler, KdeMleUpsampler)
    return {cls.kind: cls for cls in kinds}


def kind(name: str) -> type[Upsampler]:
    """The upsampler class of kind ``name`` (``upsamplers:`` in the config)."""
    registry = _registry()
    if name not in registry:
        raise GflowError(f"unknown upsampler {name!r}; known: {sorted(registry)}")
    return registry[name]


def create(name: str, config: RunConfig) -> Upsampler:
    """A new, unfitted upsampler of kind ``name`` configured by ``config``."""
    return kind(name).from_config(config)


def model_hash(directory: str | Path) -> str:
    """SHA-256 over a saved model's files, identifying it in sample and catalog manifests."""
    directory = Path(directory)
    if not (directory / SPEC_FILE).exists():
        raise GflowError(f"{directory} holds no saved model ({SPEC_FILE} is missing): run "
                         "`gflow train` first")
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.iterdir() if p.is_file()):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def load(directory: str | Path) -> Upsampler:
    """Restore a model saved with ``Upsampler.save`` (weights only, no pickled code)."""
    directory = Path(directory)
    spec_path = directory / SPEC_FILE
    if not spec_path.exists():
        raise GflowError(f"{directory} holds no saved model: {SPEC_FILE} is missing")
    spec = json.loads(spec_path.read_text())
    registry = _registry()
    kind = spec.get("kind")
    if kind not in registry:
        raise GflowError(f"{spec_path}: unknown model kind {kind!r}; known: {sorted(registry)}")
    return registry[kind].from_saved(spec, directory)


__all__ = ["Upsampler", "create", "kind", "load", "model_hash"]
