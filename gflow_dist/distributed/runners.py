"""The Ray runners of the pipeline's stages (:class:`gflow_dist.pipeline.Runners`).

Ensemble members train in a pool of Ray actors, ``ray.members_per_trainer`` to an actor
call, catalogs are drawn and partitioned with Ray Data, and the evaluation's draws,
classifier and scoring run as Ray tasks and one actor. Each runner only calls library
functions inside Ray.
"""

from __future__ import annotations

from gflow_dist.config import RunConfig
from gflow_dist.distributed.catalog_stages import RayCatalogRunner
from gflow_dist.distributed.checkpoints import model_checkpoint_uri
from gflow_dist.distributed.evaluation import RayClassifierTests
from gflow_dist.distributed.training import ray_member_runner
from gflow_dist.pipeline import Runners
from gflow_dist.upsamplers.base import MemberRunner


def _member_runner(config: RunConfig, name: str, training_key: str) -> MemberRunner:
    """Train model ``name``'s members in Ray actors, checkpointing per training key."""
    return ray_member_runner(
        config.ray.num_cpus_per_trainer, config.ray.num_gpus_per_trainer,
        checkpoint_uri=model_checkpoint_uri(config.ray.checkpoint_uri, name, training_key),
        cluster=config.ray, members_per_trainer=config.ray.members_per_trainer)


def ray_runners() -> Runners:
    """Every stage's parallel work on the connected Ray cluster."""
    return Runners(members=_member_runner, catalog=lambda config: RayCatalogRunner(config.ray),
                   classifier_tests=RayClassifierTests)
