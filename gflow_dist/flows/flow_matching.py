"""Conditional flow matching: a simulation-free objective for the CNF's vector field.

The paper trains the CNF by maximum likelihood (§3.3): every point of every step is
solved through 20 RK4 steps with the exact trace, about 80 field evaluations and their
tangents. Flow matching instead regresses the field onto the velocity of a straight path
from a base draw z ~ N(0, I) at t = 0 to a data point y at t = 1 (the optimal-transport
path of Lipman et al. 2023 with σ_min = 0, the "rectified flow" of Liu et al. 2023):

    y_t = (1 − t)·z + t·y,    u = y − z,    L = E_{t ~ U(0, 1), z, y} |F(y_t, t | c) − u|²,

one field evaluation per point. The minimiser of L is the marginal field that carries
N(0, I) onto the data distribution (conditioned on c for p(v|r)), so the same ODE, solved
by RK4 in 20 steps with the exact trace, gives the samples and the density (eqs. 5–8)
exactly as for a field trained by likelihood.

References:
    arXiv:2211.11765, §3.2–3.3; Lipman et al., arXiv:2210.02747; Liu et al.,
    arXiv:2209.03003.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gflow_dist.flows.cnf import ContinuousFlow


def flow_matching_loss(flow: ContinuousFlow, data: Tensor, context: Tensor | None) -> Tensor:
    """Mean over the batch of |F(y_t, t | c) − (y − z)|², summed over the dimensions.

    The base draws z and times t come from torch's global generator, which
    :func:`gflow_dist.flows.training.train` seeds per epoch (and fixes for validation).
    """
    z = torch.randn_like(data)
    t = torch.rand(len(data), 1, dtype=data.dtype, device=data.device)
    path = (1.0 - t) * z + t * data
    residual = flow.field(t, path, context) - (data - z)
    return (residual * residual).sum(dim=1).mean()
