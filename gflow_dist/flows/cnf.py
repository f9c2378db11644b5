"""A continuous normalizing flow solved by fixed-step RK4 (paper §3.2).

The base distribution N(0, I) sits at latent time t = 0 and the data at t = 1; the
interval is cut into ``steps`` RK4 steps (20 in the paper). Sampling integrates
dy/dt = F(y, t | c) forward; the log-density integrates it backward together with
dℓ/dt = Tr(∂F/∂y) (eq. 8), so that log p₁(y₁) = log N(y₀; 0, I) + ℓ(0) with ℓ(1) = 0.

This hand-written integrator is the fast path. ``gflow_dist.flows.torchdyn_reference``
solves the same ODE through torchdyn and is what the tests compare against.

References:
    arXiv:2211.11765, §3.2, eqs. 5–8.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from gflow_dist.flows.vector_field import VectorField

STAGE_TIMES: dict[str, tuple[float, float, float, float]] = {
    "rk4": (0.0, 0.5, 0.5, 1.0),
    "torchdyn-1.0.6": (0.0, 0.0, 0.5, 0.5),
}
"""Where the four RK4 stages are evaluated, as fractions of a step.

``rk4`` is the classic scheme. ``torchdyn-1.0.6`` reproduces torchdyn 1.0.6's
``RungeKutta4.step``, which indexes the tableau's c[0..2] instead of c[1..3]; it exists
only to reproduce models trained with that solver.
"""

_LOG_2PI = math.log(2.0 * math.pi)

TRANSFORM_CHUNK = 16_384
"""Rows per chunk of a graph-free ``transform`` (sampling)."""

LOG_DET_ROWS_PER_THREAD = 2_048
"""Rows per torch thread in a chunk of a graph-free ``inverse_with_log_det`` (density
evaluation); see :func:`log_det_chunk`."""


def log_det_chunk() -> int:
    """Rows per chunk of a graph-free ``inverse_with_log_det``: 2048 per torch thread.

    Without a graph the rows are independent, so big batches are solved a chunk at a time.
    Each thread's share of a temporary then stays small: the (3, B, 32) tangent blocks of
    larger shares exceed glibc's mmap threshold, so every one of the ~1500 temporaries of a
    solve is a fresh mmap whose pages fault in (≈45 000 page faults per 4096 rows on one
    thread, about a quarter of the solve's time), and they fall out of the cache. Fewer
    rows per thread leave each thread too little work per operation.
    """
    return LOG_DET_ROWS_PER_THREAD * torch.get_num_threads()



def _in_chunks(function: Callable[[Tensor, Tensor | None], Any], rows: Tensor,
               context: Tensor | None, size: int) -> Any:
    """``function(rows, context)``, a chunk of ``size`` rows at a time on the CPU without a graph.

    Rows are independent, so chunking changes no value; on a GPU, or while autograd records
    a graph for training, the batch is solved whole.
    """
    if len(rows) <= size or torch.is_grad_enabled() or rows.device.type != "cpu":
        return function(rows, context)
    contexts = context.split(size) if context is not None else [None] * math.ceil(len(rows) / size)
    parts = [function(chunk, c) for chunk, c in zip(rows.split(size), contexts, strict=True)]
    if isinstance(parts[0], tuple):
        return tuple(torch.cat(column) for column in zip(*parts, strict=True))
    return torch.cat(parts)


Field = Callable[[Tensor, Tensor, Tensor | None], Tensor]
"""F(t, y, c): the vector field at latent time t of states y with conditioning c."""

FieldWithDivergence = Callable[[Tensor, Tensor, Tensor | None], tuple[Tensor, Tensor]]
"""F(t, y, c) and its divergence Tr(∂F/∂y), one value per state."""


def _grid(start: float, end: float, steps: int, like: Tensor) -> tuple[list[Tensor], float]:
    """The left ends of ``steps`` equal steps from ``start`` to ``end``, and the step."""
    h = (end - start) / steps
    return [torch.tensor(start + i * h, dtype=like.dtype, device=like.device)
            for i in range(steps)], h


def integrate(field: Field, z: Tensor, context: Tensor | None, steps: int,
              stage_times: str) -> Tensor:
    """dy/dt = F(t, y, c) from t = 0 (base draws z) to t = 1 by fixed-step RK4 (eq. 5).

    States may carry any leading axes (rows, or members and rows); ``field`` keeps them.
    """
    times, h = _grid(0.0, 1.0, steps, z)
    c1, c2, c3, c4 = STAGE_TIMES[stage_times]
    y = z
    for t in times:
        k1 = field(t + c1 * h, y, context)
        k2 = field(t + c2 * h, y + 0.5 * h * k1, context)
        k3 = field(t + c3 * h, y + 0.5 * h * k2, context)
        k4 = field(t + c4 * h, y + h * k3, context)
        y = y + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
    return y


def integrate_back_with_trace(field: FieldWithDivergence, y: Tensor, context: Tensor | None,
                              steps: int, stage_times: str) -> tuple[Tensor, Tensor]:
    """[y, ℓ] from t = 1 (data y) back to t = 0 with dℓ/dt = Tr ∂F/∂y (eqs. 7–8), ℓ(1) = 0.

    Returns the base point z and ℓ(0), whose shape is that of y without its last axis.
    """
    times, h = _grid(1.0, 0.0, steps, y)
    c1, c2, c3, c4 = STAGE_TIMES[stage_times]
    ell = torch.zeros(y.shape[:-1], dtype=y.dtype, device=y.device)
    for t in times:
        k1, d1 = field(t + c1 * h, y, context)
        k2, d2 = field(t + c2 * h, y + 0.5 * h * k1, context)
        k3, d3 = field(t + c3 * h, y + 0.5 * h * k2, context)
        k4, d4 = field(t + c4 * h, y + h * k3, context)
        y = y + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
        ell = ell + (h / 6.0) * (d1 + 2.0 * d2 + 2.0 * d3 + d4)
    return y, ell


def standard_normal_log_prob(z: Tensor) -> Tensor:
    """log N(z; 0, I) summed over the last axis."""
    return -0.5 * (z * z).sum(dim=-1) - 0.5 * z.shape[-1] * _LOG_2PI


class ContinuousFlow(nn.Module):
    """One CNF, optionally conditional: p(y) or p(y | c).

    Args:
        dim: dimension of y (3 for positions or velocities).
        context_dim: dimension of the conditioning c (3 for p(v|r), 0 for p(r)).
        hidden_layers, hidden_units: the MLP of F (paper: 4 × 32).
        steps: fixed RK4 steps over t ∈ [0, 1] (paper: 20).
        stage_times: a key of :data:`STAGE_TIMES`.
    """

    def __init__(self, dim: int, context_dim: int = 0, hidden_layers: int = 4,
                 hidden_units: int = 32, steps: int = 20, stage_times: str = "rk4") -> None:
        super().__init__()
        if stage_times not in STAGE_TIMES:
            raise ValueError(f"stage_times must be one of {sorted(STAGE_TIMES)}")
        self.field = VectorField(dim, context_dim, hidden_layers, hidden_units)
        self.dim = dim
        self.context_dim = context_dim
        self.steps = steps
        self.stage_times = stage_times

    def transform(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        """Push base draws z (B, dim) from t = 0 to data space at t = 1."""
        return _in_chunks(self._transform, z, context, TRANSFORM_CHUNK)

    def _transform(self, z: Tensor, context: Tensor | None) -> Tensor:
        return integrate(self.field, z, context, self.steps, self.stage_times)

    def inverse_with_log_det(self, y: Tensor,
                             context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Pull data y (B, dim) back to the base; returns z and ℓ(0) = −∫₀¹ Tr ∂F/∂y dt."""
        return _in_chunks(self._inverse_with_log_det, y, context, log_det_chunk())

    def _inverse_with_log_det(self, y: Tensor,
                              context: Tensor | None) -> tuple[Tensor, Tensor]:
        return integrate_back_with_trace(self.field.with_divergence, y, context, self.steps,
                                         self.stage_times)

    def log_prob(self, y: Tensor, context: Tensor | None = None) -> Tensor:
        """log p(y | c) in the flow's own (preprocessed) space, shape (B,)."""
        z, ell = self.inverse_with_log_det(y, context)
        return standard_normal_log_prob(z) + ell

    def sample(self, n: int, context: Tensor | None = None,
               generator: torch.Generator | None = None) -> Tensor:
        """Draw n points: Gaussian z pushed through the flow (paper §3.3 (i)–(ii))."""
        weight = self.field.output.weight
        z = torch.randn(n, self.dim, generator=generator, dtype=weight.dtype,
                        device=weight.device if generator is None else generator.device)
        return self.transform(z.to(weight.device), context)
