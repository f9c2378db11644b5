"""The stars each upsampler draws for the classifier tests, shard by shard.

Upsampler ``index`` of a run seeded with ``seed`` draws its n stars with the shard plan
``ShardPlan(n, sample.shard_size, evaluation_seed(seed, index))``
(:mod:`gflow_dist.sample.shards`), so the single-process evaluation and the distributed
one (Ray tasks, one per shard) draw exactly the same stars, and any shard can be
regenerated alone. The evaluation's random streams are kept apart from the catalog draw
of the same seed.
"""

from __future__ import annotations

import numpy as np

from gflow_dist.sample.shards import ShardPlan
from gflow_dist.upsamplers.base import Upsampler

_EVALUATION_STREAM = 0x6576616C
CLASSIFIER_STREAM = 1000
"""The multi-model classifier is seeded with ``evaluation_seed(seed, CLASSIFIER_STREAM)``."""


def evaluation_seed(seed: int, stream: int = 0) -> int:
    """Seed of the evaluation's ``stream``-th random draw, derived from the run seed."""
    return int(np.random.SeedSequence([seed, _EVALUATION_STREAM, stream]).generate_state(1)[0])


def evaluation_plan(n: int, seed: int, upsampler_index: int, shard_size: int) -> ShardPlan:
    """The shard plan of upsampler ``upsampler_index``'s n classifier stars."""
    return ShardPlan(n, shard_size, evaluation_seed(seed, upsampler_index))


def draw_for_evaluation(model: Upsampler, n: int, seed: int, upsampler_index: int,
                        shard_size: int, batch_size: int = 65_536) -> np.ndarray:
    """(n, 6) stars drawn shard by shard in this process: the distributed draw's stars."""
    plan = evaluation_plan(n, seed, upsampler_index, shard_size)
    return np.concatenate([model.sample(shard.count, shard.seed, batch_size) for shard in plan])
