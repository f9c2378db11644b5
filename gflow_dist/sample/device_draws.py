"""Window draws of a flow ensemble that stay on the model's device from start to finish.

Proposal p of a draw seeded with ``seed`` is a pure function of (seed, p): its six base
draws and its member come from the counter-based Philox generator
(:func:`gflow_dist.sample.counter_rng.proposal_draws`), keyed by the seed and counted by
p. Proposals are pushed through the flows, mapped back to the Galactocentric frame
(eqs. 9–11 inverted, float64) and kept when inside the selection window (paper §3.3 (iv)),
in proposal order, until exactly n stars are kept. So star k of a draw is the k-th
accepted proposal, whatever the batch size: batches only decide how many proposals are in
flight at once.

What differs between devices: the flows run in float32, and a GPU's kernels round
differently from a CPU's (as a CPU's do for batches of 8 or fewer proposals against larger
ones: docs/scaling.md), so the same proposal lands ~1e-7 (relative) apart on either; a
proposal within that distance of the window's edge can be kept on one and not on the
other, which renumbers the stars after it. A draw is reproducible bit for bit on one
device type, and to float32 rounding across them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from gflow_dist.sample.counter_rng import proposal_draws
from gflow_dist.sample.window import DrawStats, SelectionWindow, keep_inside

BaseTransform = Callable[[Tensor, Tensor], Tensor]
"""Maps (count, 6) float32 base draws z and (count,) member indices to (count, 6)
float64 Galactocentric phase space [kpc, km/s] on the same device."""


def draw_in_window_on_device(transform: BaseTransform, members: int, n: int, seed: int,
                             window: SelectionWindow, batch_size: int,
                             device: torch.device, stats: DrawStats | None = None,
                             ) -> Iterator[Tensor]:
    """Yield (k, 6) float64 tensors on ``device`` of stars inside ``window``, n in all.

    Args:
        transform: base draws and members to phase space (:data:`BaseTransform`).
        members: ensemble members the proposals choose among, uniformly.
        n: stars to keep.
        seed: the draw's 64-bit seed (a shard seed).
        window: the selection window.
        batch_size: proposals in flight at once; bounds the device memory, not the stars.
        device: where every step runs.
        stats: updated with the proposals, rejections and kept stars.
    """
    @torch.no_grad()
    def batch(index: int) -> tuple[Tensor, Tensor]:
        z, member = proposal_draws(seed, index * batch_size, batch_size, members, device)
        candidates = transform(z, member)
        return candidates, window.contains_tensor(candidates)

    return keep_inside(batch, n, f"batches of {batch_size} proposals", window, stats)
