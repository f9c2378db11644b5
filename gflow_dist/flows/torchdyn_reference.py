"""The reference solution of a :class:`ContinuousFlow` through torchdyn's ``NeuralODE``.

The paper solved its CNFs with torchdyn (§3.2). This module solves the same ODE with
torchdyn, with the divergence taken by autograd (one vector-Jacobian product per
dimension), independently of the fast path's analytic tangents. It is the yardstick that
tests and benchmarks compare the fast path against.

torchdyn 1.0.6's ``RungeKutta4.step`` evaluates its stages at t, t, t+h/2, t+h/2: it
indexes the tableau's c[0..2] where it should index c[1..3]. For a time-dependent field
like a CNF's that is not RK4. :class:`ClassicRungeKutta4` is the corrected solver and the
default here; ``stage_times="torchdyn-1.0.6"`` keeps torchdyn's own stepper.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchdyn.core import NeuralODE
from torchdyn.numerics.solvers.ode import RungeKutta4

from gflow_dist.flows.cnf import ContinuousFlow, standard_normal_log_prob


class ClassicRungeKutta4(RungeKutta4):
    """torchdyn's RK4 with the classic stage times t, t+h/2, t+h/2, t+h."""

    def step(self, f, x, t, dt, k1=None, args=None):  # noqa: ANN001, ANN201 (torchdyn's API)
        _, a, b, _ = self.tableau
        if k1 is None:
            k1 = f(t, x)
        k2 = f(t + 0.5 * dt, x + dt * (a[0] * k1))
        k3 = f(t + 0.5 * dt, x + dt * (a[1][0] * k1 + a[1][1] * k2))
        k4 = f(t + dt, x + dt * (a[2][0] * k1 + a[2][1] * k2 + a[2][2] * k3))
        return None, x + dt * (b[0] * k1 + b[1] * k2 + b[2] * k3 + b[3] * k4), None


class _AugmentedField(nn.Module):
    """d/dt [y, ℓ, c] = [F(y, t | c), Tr ∂F/∂y, 0], the divergence by autograd.

    For evaluation only: every stage is detached, so nothing here trains.
    """

    def __init__(self, flow: ContinuousFlow, with_divergence: bool) -> None:
        super().__init__()
        self.flow = flow
        self.with_divergence = with_divergence

    def forward(self, t: Tensor, state: Tensor, args: dict | None = None) -> Tensor:
        dim = self.flow.dim
        y = state[:, :dim]
        offset = dim + 1 if self.with_divergence else dim
        context = state[:, offset:] if self.flow.context_dim else None
        if not self.with_divergence:
            velocity = self.flow.field(t, y, context)
            return torch.cat([velocity, torch.zeros_like(state[:, dim:])], dim=1)
        with torch.enable_grad():
            y = y.detach().requires_grad_(True)
            velocity = self.flow.field(t, y, context)
            divergence = sum(
                torch.autograd.grad(velocity[:, i].sum(), y, retain_graph=i < dim - 1)[0][:, i]
                for i in range(dim)
            )
            velocity = velocity.detach()
        return torch.cat(
            [velocity, divergence[:, None], torch.zeros_like(state[:, offset:])], dim=1
        )


def _solver(flow: ContinuousFlow, dtype: torch.dtype) -> RungeKutta4:
    return ClassicRungeKutta4(dtype) if flow.stage_times == "rk4" else RungeKutta4(dtype)


def _solve(flow: ContinuousFlow, state: Tensor, start: float, end: float,
           with_divergence: bool, steps: int) -> Tensor:
    ode = NeuralODE(_AugmentedField(flow, with_divergence), solver=_solver(flow, state.dtype),
                    sensitivity="autograd", return_t_eval=False)
    t_span = torch.linspace(start, end, steps + 1, dtype=state.dtype)
    # Save only the end point. torchdyn negates a reversed t_span but not save_at.
    final = torch.tensor([end if end >= start else -end], dtype=state.dtype)
    with torch.no_grad():
        return ode(state, t_span, save_at=final)[-1]


def reference_transform(flow: ContinuousFlow, z: Tensor, context: Tensor | None = None,
                        steps: int | None = None) -> Tensor:
    """torchdyn's solution of the flow from the base (t = 0) to the data (t = 1)."""
    parts = [z] if context is None else [z, context]
    state = _solve(flow, torch.cat(parts, dim=1), 0.0, 1.0, False, steps or flow.steps)
    return state[:, : flow.dim]


def reference_log_prob(flow: ContinuousFlow, y: Tensor, context: Tensor | None = None,
                       steps: int | None = None) -> Tensor:
    """torchdyn's log p(y | c), integrating [y, ℓ] from t = 1 back to t = 0."""
    parts = [y, torch.zeros_like(y[:, :1])] + ([] if context is None else [context])
    state = _solve(flow, torch.cat(parts, dim=1), 1.0, 0.0, True, steps or flow.steps)
    return standard_normal_log_prob(state[:, : flow.dim]) + state[:, flow.dim]
