"""Adam with a member axis: each member of a stacked model keeps its own optimiser.

Every parameter tensor's leading axis is the member (see :mod:`gflow_dist.flows.stacked`).
Adam is elementwise, so one update of the stacked tensors is M independent Adam updates,
provided each member has its own learning rate, step count and bias corrections; that
is what :class:`MemberAdam` keeps. Its arithmetic follows ``torch.optim.Adam`` with the
defaults (β = 0.9, 0.999, ε = 1e-8, no weight decay), so a member moves as it would under
its own ``torch.optim.Adam``. Members that are not active in a step are left exactly as
they are: parameters, moments and step count.

References:
    arXiv:2211.11765, §3.3 (Adam); Kingma & Ba 2015 (arXiv:1412.6980), Algorithm 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

BETA1, BETA2, EPS = 0.9, 0.999, 1e-8
"""``torch.optim.Adam``'s defaults, which the paper's recipe uses."""


class MemberAdam:
    """Per-member Adam state for parameters with a leading member axis of length M.

    Args:
        parameters: the stacked parameters, each (M, ...).
        learning_rates: each member's initial learning rate, length M.
    """

    def __init__(self, parameters: Sequence[Tensor], learning_rates: Sequence[float]) -> None:
        self.parameters = list(parameters)
        device = self.parameters[0].device
        self.exp_avg = [torch.zeros_like(p) for p in self.parameters]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.parameters]
        self.steps = torch.zeros(len(learning_rates), dtype=torch.float64, device=device)
        self.learning_rates = torch.tensor(learning_rates, dtype=torch.float64, device=device)

    def zero_grad(self) -> None:
        for parameter in self.parameters:
            parameter.grad = None

    @torch.no_grad()
    def reset(self, member: int, learning_rate: float) -> None:
        """A fresh optimiser for ``member`` (zero moments and steps) at ``learning_rate``."""
        for moment in (*self.exp_avg, *self.exp_avg_sq):
            moment[member].zero_()
        self.steps[member] = 0.0
        self.learning_rates[member] = learning_rate

    @torch.no_grad()
    def step(self, active: Tensor) -> None:
        """One Adam step of the members where ``active`` (M,) bool is True."""
        self.steps += active.to(self.steps.dtype)
        bias_correction1 = 1.0 - BETA1 ** self.steps
        bias_correction2_sqrt = (1.0 - BETA2 ** self.steps).sqrt()
        for parameter, exp_avg, exp_avg_sq in zip(self.parameters, self.exp_avg,
                                                  self.exp_avg_sq, strict=True):
            shape = (-1,) + (1,) * (parameter.dim() - 1)
            mask = active.view(shape)
            grad = parameter.grad
            exp_avg.copy_(torch.where(mask, exp_avg.lerp(grad, 1.0 - BETA1), exp_avg))
            moved_sq = (exp_avg_sq * BETA2).addcmul_(grad, grad, value=1.0 - BETA2)
            exp_avg_sq.copy_(torch.where(mask, moved_sq, exp_avg_sq))
            step_size = (self.learning_rates / bias_correction1).to(parameter.dtype).view(shape)
            scale = bias_correction2_sqrt.to(parameter.dtype).view(shape)
            denom = (exp_avg_sq.sqrt() / scale).add_(EPS)
            parameter.sub_(torch.where(mask, step_size * exp_avg / denom, 0.0))

    def member_state(self, member: int) -> dict[str, object]:
        """``member``'s optimiser state (CPU copies), for a checkpoint."""
        return {"exp_avg": [m[member].cpu().clone() for m in self.exp_avg],
                "exp_avg_sq": [m[member].cpu().clone() for m in self.exp_avg_sq],
                "steps": float(self.steps[member]),
                "learning_rate": float(self.learning_rates[member])}

    @torch.no_grad()
    def load_member(self, member: int, state: dict[str, object]) -> None:
        """Restore ``member``'s optimiser state from :meth:`member_state`."""
        for moments, saved in ((self.exp_avg, state["exp_avg"]),
                               (self.exp_avg_sq, state["exp_avg_sq"])):
            for moment, value in zip(moments, saved, strict=True):
                moment[member].copy_(value)
        self.steps[member] = state["steps"]
        self.learning_rates[member] = state["learning_rate"]
