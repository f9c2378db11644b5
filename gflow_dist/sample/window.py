"""Streaming, deterministic draws restricted to the selection window (paper §3.3 (iv)).

Every upsampler proposes candidate stars in batches; candidates farther than r_max from
the Sun, or faster than the train particles' maximum speed, are discarded and more are
drawn until exactly n are kept. Batch k is proposed from a generator seeded by
(seed, k) alone, so a draw is a pure function of (seed, n, batch_size), and the first
m stars of a larger draw equal a draw of m.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

Proposer = Callable[[int, np.random.Generator], np.ndarray]
"""Draws (count, 6) candidate stars [kpc, km/s] from a generator."""

Rows = Any
"""A numpy array or a torch tensor of rows."""

MAX_EMPTY_BATCHES = 100
"""Give up when this many batches in a row keep no star: the model misses the window."""


@dataclass(frozen=True)
class SelectionWindow:
    """The phase-space region stars must fall in.

    Attributes:
        sun_position_kpc: centre of the selection sphere [kpc].
        r_max_kpc: its radius [kpc].
        max_speed_kms: the fastest train particle's speed [km/s]; faster stars are outliers.
    """

    sun_position_kpc: tuple[float, float, float]
    r_max_kpc: float
    max_speed_kms: float = np.inf

    def contains(self, phase_space: np.ndarray) -> np.ndarray:
        """Boolean mask of the (n, 6) rows inside the window."""
        distance = np.linalg.norm(phase_space[:, :3] - np.asarray(self.sun_position_kpc), axis=1)
        speed = np.linalg.norm(phase_space[:, 3:], axis=1)
        finite = np.isfinite(phase_space).all(axis=1)
        return finite & (distance < self.r_max_kpc) & (speed <= self.max_speed_kms)

    def contains_tensor(self, phase_space: torch.Tensor) -> torch.Tensor:
        """:meth:`contains` on an (n, 6) tensor [kpc, km/s], on its device, in float64.

        Returns the (n,) bool mask; float64 rows give exactly the mask of :meth:`contains`.
        """
        rows = phase_space.double()
        offset = rows[:, :3] - rows.new_tensor(self.sun_position_kpc)
        distance = (offset[:, 0] ** 2 + offset[:, 1] ** 2 + offset[:, 2] ** 2).sqrt()
        speed = (rows[:, 3] ** 2 + rows[:, 4] ** 2 + rows[:, 5] ** 2).sqrt()
        finite = rows.isfinite().all(dim=1)
        return finite & (distance < self.r_max_kpc) & (speed <= self.max_speed_kms)


@dataclass
class DrawStats:
    """Counts of one streamed draw.

    ``rejection_rate`` is the share of proposals that fell outside the window; proposals
    inside it but beyond the n requested (the tail of the last batch) are not rejections.
    """

    proposed: int = 0
    rejected: int = 0
    kept: int = 0

    @property
    def rejection_rate(self) -> float:
        return self.rejected / self.proposed if self.proposed else 0.0


def draw_in_window(propose: Proposer, n: int, seed: int, window: SelectionWindow,
                   batch_size: int, stats: DrawStats | None = None) -> Iterator[np.ndarray]:
    """Yield batches of stars inside ``window`` until exactly ``n`` are produced.

    Memory is bounded by ``batch_size``, not by ``n``. ``stats``, when given, is updated
    with the number of proposals and kept stars.
    """
    def batch(index: int) -> tuple[np.ndarray, np.ndarray]:
        candidates = propose(batch_size, np.random.default_rng([seed, index]))
        return candidates, window.contains(candidates)

    return keep_inside(batch, n, f"batches of {batch_size} proposals", window, stats)


def keep_inside(batch: Callable[[int], tuple[Rows, Rows]], n: int, what: str,
                window: SelectionWindow, stats: DrawStats | None = None) -> Iterator[Rows]:
    """Yield the rows inside the window of batches 0, 1, … until exactly ``n`` are kept.

    ``batch(k)`` gives batch k's candidates and their inside-the-window mask, as numpy
    arrays or torch tensors (kept rows are the same kind); ``what`` names the batches in
    the error raised when :data:`MAX_EMPTY_BATCHES` in a row keep nothing.
    """
    stats = stats if stats is not None else DrawStats()
    remaining, batch_index, empty = n, 0, 0
    while remaining > 0:
        candidates, inside = batch(batch_index)
        kept = candidates[inside][:remaining]
        stats.proposed += len(candidates)
        stats.rejected += len(candidates) - int(inside.sum())
        stats.kept += len(kept)
        empty = 0 if len(kept) else empty + 1
        if empty >= MAX_EMPTY_BATCHES:
            raise RuntimeError(
                f"{MAX_EMPTY_BATCHES} {what} in a row fell outside the selection window "
                f"{window}; the model does not cover the window"
            )
        remaining -= len(kept)
        batch_index += 1
        if len(kept):
            yield kept
