"""EnBiD's entropy-based binary tree: one 6-D box per star particle (paper §4).

The boxes are built as the paper describes (after Sharma & Steinmetz 2006):

(i)   start with one box holding every particle;
(ii)  for a box of N_p particles, take the Shannon entropy along each axis from a
      histogram of N_p equal-sized bins over the box's extent on that axis;
(iii) choose the axis of minimum entropy;
(iv)  split it at the midpoint of the nearest particle values below and above the mean
      of the box's particles along that axis;
(v)   repeat until every box holds one particle.

The leaves tile the root box, so each leaf's volume is a density estimate 1/(N·V).

Well-defined splits for ties and duplicates:

* The root box is the particles' bounding box widened on each side by 1e-9 of its extent
  (at least one float spacing). Every particle then lies strictly inside the root box,
  and since every split plane lies between two particle values, every particle lies
  inside each box that holds it and no box gets a zero side. It changes the sides of the
  leaves at the edge of the data by at most 1e-9 relative.
* An axis can be split when the box holds values both below and at-or-above the mean
  (rounding can leave all values on one side). If the minimum-entropy axis cannot be
  split, the next-lowest-entropy one that can is used.
* When no axis can be split, the particles coincide (exact duplicates, or values one
  float spacing apart). The box is then cut along its longest side relative to the root
  box among the sides the particles lie strictly inside of (a side an earlier duplicate
  cut already put them on would give a child of zero width), at the middle particle in
  (value, particle index) order: the first ⌊N_p/2⌋ particles go to the lower child and
  the rest to the upper one. Both children hold their particles (on the shared face) and
  have positive volume, so leaves still tile. Only more than 2^d copies of one particle
  exhaust the sides; the longest relative side is then cut all the same.

Every level of the tree is processed at once: the particles of each box are contiguous
in a permutation, and per-box sums, histograms and extrema are segment reductions
(``np.add.reduceat``, ``np.bincount`` over (box, bin) keys), not a loop over boxes.

References:
    arXiv:2211.11765, §4; Sharma & Steinmetz 2006, MNRAS 373, 1293.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gflow_dist.errors import InputError

ROOT_MARGIN = 1e-9
"""Relative widening of the bounding box on each side (see the module docstring)."""


@dataclass(frozen=True)
class LeafBoxes:
    """The leaf box of every particle, in the particles' units (kpc, km/s).

    Attributes:
        lower: (n, d) lower corners of the leaves, row i for particle i.
        upper: (n, d) upper corners.
        root_lower: (d,) lower corner of the root box.
        root_upper: (d,) upper corner of the root box.
        depth: number of tree levels that were split.
    """

    lower: np.ndarray
    upper: np.ndarray
    root_lower: np.ndarray
    root_upper: np.ndarray
    depth: int

    @property
    def sides(self) -> np.ndarray:
        """(n, d) side lengths L_i of every leaf."""
        return self.upper - self.lower

    @property
    def log_volumes(self) -> np.ndarray:
        """(n,) natural log of each leaf's volume."""
        return np.log(self.sides).sum(axis=1)


def _root_box(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    low, high = points.min(axis=0), points.max(axis=0)
    extent = high - low
    if np.any(extent <= 0):
        axis = int(np.argmin(extent))
        raise InputError(f"every particle has the same value on phase-space axis {axis}; "
                         "the 6-D tree needs a spread on every axis (drop that column or "
                         "check the particle file)")
    margin = ROOT_MARGIN * extent
    return (np.minimum(low - margin, np.nextafter(low, -np.inf)),
            np.maximum(high + margin, np.nextafter(high, np.inf)))


def _entropies(values: np.ndarray, lower: np.ndarray, upper: np.ndarray, box: np.ndarray,
               start: np.ndarray, count: np.ndarray) -> np.ndarray:
    """(boxes, d) Shannon entropy of an N_p-bin histogram over each box's extent, per axis.

    H = −Σ_b (c_b/N_p) ln(c_b/N_p) = ln N_p − Σ_b c_b ln c_b / N_p; the bins of box k
    are the keys start_k … start_k + N_p − 1, so one bincount serves every box.
    """
    n, dims = values.shape
    fraction = (values - lower[box]) / (upper - lower)[box]
    bins = np.minimum((fraction * count[box, None]).astype(np.int64), count[box, None] - 1)
    keys = (start[box, None] + bins + n * np.arange(dims)).ravel(order="F")
    counts = np.bincount(keys, minlength=n * dims).astype(np.float64)
    c_log_c = counts * np.log(np.maximum(counts, 1.0))
    per_box = np.add.reduceat(c_log_c.reshape(dims, n), start, axis=1).T
    return np.log(count)[:, None] - per_box / count[:, None]


def _mean_splits(values: np.ndarray, box: np.ndarray, start: np.ndarray,
                 count: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per box and axis: the mean, the nearest value below it and the one at or above it.

    A missing neighbour is −inf (below) or +inf (above): that axis cannot be split.
    """
    mean = np.add.reduceat(values, start, axis=0) / count[:, None]
    below_mean = values < mean[box]
    below = np.maximum.reduceat(np.where(below_mean, values, -np.inf), start, axis=0)
    above = np.minimum.reduceat(np.where(below_mean, np.inf, values), start, axis=0)
    return mean, below, above


def _duplicate_axes(values: np.ndarray, lower: np.ndarray, upper: np.ndarray,
                    start: np.ndarray, root_extent: np.ndarray,
                    boxes: np.ndarray) -> np.ndarray:
    """The axis to cut each box of coinciding particles along: the longest side relative
    to the root among those the particles lie strictly inside of (any, if none is)."""
    inside = ((np.minimum.reduceat(values, start, axis=0) > lower)
              & (np.maximum.reduceat(values, start, axis=0) < upper))[boxes]
    relative = ((upper - lower) / root_extent)[boxes]
    usable = np.where(inside.any(axis=1, keepdims=True), inside, True)
    return np.argmax(np.where(usable, relative, -np.inf), axis=1)


def _duplicate_splits(values: np.ndarray, box: np.ndarray, particle: np.ndarray,
                      start: np.ndarray, count: np.ndarray, axis: np.ndarray,
                      boxes: np.ndarray, go_upper: np.ndarray, cut: np.ndarray) -> None:
    """Split coinciding particles of ``boxes`` half/half at the middle one along ``axis``.

    Fills ``go_upper`` (per particle) and ``cut`` (per box) in place.
    """
    rows = np.flatnonzero(np.isin(box, boxes))
    chosen = values[rows, axis[box[rows]]]
    order = rows[np.lexsort((particle[rows], chosen, box[rows]))]
    rank = np.arange(len(order)) - np.repeat(np.cumsum(count[boxes]) - count[boxes],
                                             count[boxes])
    half = count[box[order]] // 2
    go_upper[order] = rank >= half
    ordered_values = values[order, axis[box[order]]]
    first = np.cumsum(count[boxes]) - count[boxes]
    half_boxes = count[boxes] // 2
    cut[boxes] = 0.5 * (ordered_values[first + half_boxes - 1] + ordered_values[first + half_boxes])


def build_leaf_boxes(points: np.ndarray) -> LeafBoxes:
    """The EnBiD leaf box of every particle of ``points`` (n, d), n ≥ 2.

    Raises:
        InputError: fewer than two particles, non-finite values, or an axis on which
            every particle has the same value.
    """
    points = np.ascontiguousarray(points, dtype=np.float64)
    if points.ndim != 2 or len(points) < 2:
        raise InputError(f"the tree needs an (n, d) array with n >= 2 particles, "
                         f"got shape {points.shape}")
    if not np.isfinite(points).all():
        raise InputError("particle phase space holds NaN or infinite values; drop those rows")
    n, dims = points.shape
    root_lower, root_upper = _root_box(points)
    root_extent = root_upper - root_lower
    leaf_lower = np.empty_like(points)
    leaf_upper = np.empty_like(points)

    particle = np.arange(n)  # active particles, contiguous per box
    lower, upper = root_lower[None].copy(), root_upper[None].copy()
    start, count = np.array([0]), np.array([n])
    depth = 0
    while len(particle):
        depth += 1
        boxes = len(count)
        box = np.repeat(np.arange(boxes), count)
        values = points[particle]
        entropy = _entropies(values, lower, upper, box, start, count)
        mean, below, above = _mean_splits(values, box, start, count)
        splittable = np.isfinite(below) & np.isfinite(above)
        axis = np.argmin(np.where(splittable, entropy, np.inf), axis=1)
        by_mean = splittable.any(axis=1)
        every_box = np.arange(boxes)
        cut = np.zeros(boxes)
        split = np.flatnonzero(by_mean)
        cut[split] = 0.5 * (below[split, axis[split]] + above[split, axis[split]])
        go_upper = values[np.arange(len(particle)), axis[box]] >= mean[box, axis[box]]
        if not by_mean.all():
            coinciding = np.flatnonzero(~by_mean)
            axis[coinciding] = _duplicate_axes(values, lower, upper, start, root_extent,
                                               coinciding)
            _duplicate_splits(values, box, particle, start, count, axis, coinciding,
                              go_upper, cut)

        # Children: lower child first, then upper, each contiguous (a stable partition).
        n_upper = np.bincount(box, weights=go_upper, minlength=boxes).astype(np.int64)
        n_lower = count - n_upper
        upper_before = np.cumsum(go_upper) - go_upper
        upper_rank = upper_before - (upper_before[start])[box]
        lower_rank = np.arange(len(particle)) - start[box] - upper_rank
        position = np.where(go_upper, start[box] + n_lower[box] + upper_rank,
                            start[box] + lower_rank)
        regrouped = np.empty_like(particle)
        regrouped[position] = particle
        particle = regrouped

        child_lower = np.repeat(lower, 2, axis=0)
        child_upper = np.repeat(upper, 2, axis=0)
        child_upper[0::2][every_box, axis] = cut
        child_lower[1::2][every_box, axis] = cut
        child_count = np.column_stack([n_lower, n_upper]).ravel()
        child_start = np.column_stack([start, start + n_lower]).ravel()

        leaf = child_count == 1
        settled = particle[child_start[leaf]]
        leaf_lower[settled] = child_lower[leaf]
        leaf_upper[settled] = child_upper[leaf]

        keep = child_count > 1
        kept_rows = np.repeat(child_start[keep], child_count[keep]) + (
            np.arange(child_count[keep].sum())
            - np.repeat(np.cumsum(child_count[keep]) - child_count[keep], child_count[keep]))
        particle = particle[kept_rows]
        lower, upper = child_lower[keep], child_upper[keep]
        count = child_count[keep]
        start = np.cumsum(count) - count
    return LeafBoxes(leaf_lower, leaf_upper, root_lower, root_upper, depth)
