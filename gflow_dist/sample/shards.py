"""The shard plan of a distributed draw: star_id ranges and seeds from (total, size, seed).

Shard k holds star_id ``[k·size, min((k+1)·size, total))`` and is drawn with its own
seed, derived from ``SeedSequence([seed, k])`` alone, so any shard can be regenerated bit
for bit without the others. The plan is arithmetic: 10¹⁰ stars in shards of 10⁶ is a
plan of 10⁴ shards that materialises nothing until a shard is asked for.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from gflow_dist.errors import GflowError


def shard_seed(seed: int, index: int) -> int:
    """The 64-bit seed of shard ``index`` of a draw seeded with ``seed``."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0])


@dataclass(frozen=True)
class Shard:
    """One independently drawn slice of the catalog.

    Attributes:
        index: position in the plan (0-based).
        first_star_id: star_id of its first star.
        count: stars in it.
        seed: the seed its draw uses (``Upsampler.iter_samples(count, seed, ...)``).
    """

    index: int
    first_star_id: int
    count: int
    seed: int

    @property
    def star_ids(self) -> range:
        return range(self.first_star_id, self.first_star_id + self.count)


@dataclass(frozen=True)
class ShardPlan:
    """``total`` stars split into shards of ``shard_size`` (the last one may be shorter)."""

    total: int
    shard_size: int
    seed: int

    def __post_init__(self) -> None:
        if self.total < 1:
            raise GflowError(f"a draw needs at least one star, got total={self.total}: set "
                             "sample.total (or sample.factor) to a positive count")
        if self.shard_size < 1:
            raise GflowError(f"sample.shard_size must be positive, got {self.shard_size}")

    @classmethod
    def per_particle(cls, n_particles: int, factor: float, shard_size: int,
                     seed: int) -> ShardPlan:
        """``factor`` stars per particle (paper: 500), rounded to a whole number of stars."""
        return cls(round(factor * n_particles), shard_size, seed)

    def __len__(self) -> int:
        return -(-self.total // self.shard_size)

    def shard(self, index: int) -> Shard:
        """Shard ``index``; raises IndexError outside ``range(len(self))``."""
        if not 0 <= index < len(self):
            raise IndexError(f"shard {index} outside the plan's {len(self)} shards")
        first = index * self.shard_size
        return Shard(index, first, min(self.shard_size, self.total - first),
                     shard_seed(self.seed, index))

    def __iter__(self) -> Iterator[Shard]:
        return (self.shard(k) for k in range(len(self)))
