"""HEALPix indexing and the partition plan of a star catalog (HATS layout).

Every star carries ``_healpix_29``, the nested HEALPix index of its (ra, dec) [deg] at
order 29 (hats' spatial index). The pixel of order K that holds it is
``_healpix_29 >> 2 * (29 - K)``, so sorting by ``_healpix_29`` groups every pixel of
every order into one contiguous run. A catalog is split into partitions, each one
HEALPix pixel (:class:`hats.pixel_math.HealpixPixel`): either all pixels of a fixed
order, or adaptively the largest pixels holding at most ``max_rows_per_partition``
stars, found top-down from the counts at ``highest_order`` as hats' ``generate_alignment``
does; a pixel of ``highest_order`` is kept whole even when it holds more.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from hats.pixel_math import HealpixPixel
from hats.pixel_math.spatial_index import SPATIAL_INDEX_ORDER, compute_spatial_index

from gflow_dist.errors import InputError

_COMPACT_ENTRIES = 4_000_000
"""Merge the pending per-batch counts once they hold this many (pixel, count) pairs."""


def spatial_index(ra_deg: np.ndarray, dec_deg: np.ndarray) -> np.ndarray:
    """``_healpix_29``: the nested order-29 HEALPix index (int64) of each (ra, dec) [deg]."""
    return np.asarray(compute_spatial_index(np.asarray(ra_deg), np.asarray(dec_deg)), np.int64)


def pixel_at_order(healpix_29: np.ndarray, order: int) -> np.ndarray:
    """The nested pixel number at ``order`` that contains each ``_healpix_29`` index."""
    return np.asarray(healpix_29, np.int64) >> (2 * (SPATIAL_INDEX_ORDER - order))


def index_range(pixel: HealpixPixel) -> tuple[int, int]:
    """The half-open range [start, end) of ``_healpix_29`` values inside ``pixel``."""
    shift = 2 * (SPATIAL_INDEX_ORDER - pixel.order)
    return pixel.pixel << shift, (pixel.pixel + 1) << shift


class PixelCounter:
    """Stars per HEALPix pixel at one order, accumulated batch by batch in sparse form.

    Memory grows with the number of non-empty pixels, not with the number of stars.
    """

    def __init__(self, order: int) -> None:
        self.order = order
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._entries = 0

    def add(self, healpix_29: np.ndarray) -> None:
        """Count the stars with these ``_healpix_29`` indices."""
        pixels, counts = np.unique(pixel_at_order(healpix_29, self.order), return_counts=True)
        self._pending.append((pixels, counts.astype(np.int64)))
        self._entries += len(pixels)
        if self._entries > _COMPACT_ENTRIES and len(self._pending) > 1:
            self._pending = [self.counts()]
            self._entries = len(self._pending[0][0])

    def counts(self) -> tuple[np.ndarray, np.ndarray]:
        """(pixel numbers ascending, star counts) of every non-empty pixel."""
        if not self._pending:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        pixels = np.concatenate([p for p, _ in self._pending])
        counts = np.concatenate([c for _, c in self._pending])
        unique, inverse = np.unique(pixels, return_inverse=True)
        return unique, np.bincount(inverse, weights=counts, minlength=len(unique)).astype(np.int64)


@dataclass(frozen=True)
class PartitionPlan:
    """Disjoint HEALPix pixels covering every star, in ``_healpix_29`` order.

    Attributes:
        pixels: the partitions, sorted by the first ``_healpix_29`` they contain
            (hats' breadth-first order).
        counts: stars in each partition.
    """

    pixels: tuple[HealpixPixel, ...]
    counts: tuple[int, ...]

    def __post_init__(self) -> None:
        starts, ends = self._ranges()
        if np.any(starts[1:] < ends[:-1]):
            raise ValueError("partition pixels overlap or are not sorted by _healpix_29")

    def _ranges(self) -> tuple[np.ndarray, np.ndarray]:
        ranges = np.array([index_range(p) for p in self.pixels], np.int64).reshape(-1, 2)
        return ranges[:, 0], ranges[:, 1]

    @property
    def total_rows(self) -> int:
        return int(sum(self.counts))

    def assign(self, healpix_29: np.ndarray) -> np.ndarray:
        """Index into ``pixels`` of the partition holding each star.

        Raises:
            InputError: a star lies in no partition (it was not in the counted stars).
        """
        healpix_29 = np.asarray(healpix_29, np.int64)
        starts, ends = self._ranges()
        position = np.searchsorted(starts, healpix_29, side="right") - 1
        inside = (position >= 0) & (healpix_29 < ends[np.maximum(position, 0)])
        if not inside.all():
            raise InputError(f"{int((~inside).sum())} stars fall outside the partition plan: "
                             "the second pass over the batches must yield the same stars")
        return position


def _plan_from_counts(order: int, pixels: np.ndarray, counts: np.ndarray) -> PartitionPlan:
    return PartitionPlan(tuple(HealpixPixel(order, int(p)) for p in pixels),
                         tuple(int(c) for c in counts))


def adaptive_plan(counter: PixelCounter, max_rows: int) -> PartitionPlan:
    """The largest pixels (order 0 down to ``counter.order``) holding at most ``max_rows``.

    Top-down like hats' ``generate_alignment``: a pixel becomes a partition when its
    stars fit, else its four children are tried; pixels of the counting order are kept
    whole even when they hold more than ``max_rows``. Empty pixels get no partition.
    """
    highest = counter.order
    fine_pixels, fine_counts = counter.counts()
    open_rows = np.ones(len(fine_pixels), bool)
    chosen: list[tuple[int, int, int]] = []
    for order in range(highest + 1):
        rows = np.flatnonzero(open_rows)
        if len(rows) == 0:
            break
        parents = fine_pixels[rows] >> (2 * (highest - order))
        parent, first = np.unique(parents, return_index=True)
        sums = np.add.reduceat(fine_counts[rows], first)
        fits = sums <= max_rows if order < highest else np.ones(len(parent), bool)
        chosen += [(order, int(p), int(s)) for p, s in zip(parent[fits], sums[fits], strict=True)]
        open_rows[rows[np.isin(parents, parent[fits])]] = False
    chosen.sort(key=lambda item: item[1] << (2 * (SPATIAL_INDEX_ORDER - item[0])))
    return PartitionPlan(tuple(HealpixPixel(o, p) for o, p, _ in chosen),
                         tuple(c for _, _, c in chosen))


def counting_order(partition_order: int | None, highest_order: int) -> int:
    """Order at which stars are counted: ``highest_order``, or the fixed partition order
    when that is finer. The counts plan the partitions and become the sky maps."""
    return max(highest_order, partition_order or 0)


def plan_partitions(counter: PixelCounter, partition_order: int | None,
                    max_rows: int) -> PartitionPlan:
    """Partition plan from the counts: fixed order (``partition_order``) or adaptive."""
    if partition_order is None:
        return adaptive_plan(counter, max_rows)
    if counter.order < partition_order:
        raise ValueError(f"counts are at order {counter.order}, coarser than {partition_order}")
    pixels, counts = counter.counts()
    coarse, first = np.unique(pixels >> 2 * (counter.order - partition_order), return_index=True)
    return _plan_from_counts(partition_order, coarse, np.add.reduceat(counts, first))
