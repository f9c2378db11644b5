"""The CNF's fast path against torchdyn and a float64 many-step solution."""

from __future__ import annotations

import pytest
import torch
from torchdyn.numerics.solvers.ode import RungeKutta4

from gflow_dist.flows.cnf import ContinuousFlow
from gflow_dist.flows.torchdyn_reference import (
    ClassicRungeKutta4,
    reference_log_prob,
    reference_transform,
)
from gflow_dist.flows.vector_field import VectorField

FINE_STEPS = 320


def _flow(context_dim: int, stage_times: str = "rk4", seed: int = 0) -> ContinuousFlow:
    torch.manual_seed(seed)
    flow = ContinuousFlow(3, context_dim, stage_times=stage_times).double()
    with torch.no_grad():  # a field that bends with t, so that stage times matter
        flow.field.hidden[0].weight[:, 3] *= 8.0
    return flow


def _inputs(context_dim: int, n: int = 400) -> tuple[torch.Tensor, torch.Tensor | None]:
    generator = torch.Generator().manual_seed(1)
    y = torch.randn(n, 3, generator=generator, dtype=torch.float64)
    context = torch.randn(n, context_dim, generator=generator, dtype=torch.float64)
    return y, context if context_dim else None


@pytest.mark.parametrize("context_dim", [0, 3])
def test_fast_path_equals_torchdyn_with_classic_rk4(context_dim):
    flow = _flow(context_dim)
    y, context = _inputs(context_dim)
    torch.testing.assert_close(flow.transform(y, context), reference_transform(flow, y, context),
                               rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(flow.log_prob(y, context), reference_log_prob(flow, y, context),
                               rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("context_dim", [0, 3])
def test_twenty_steps_are_close_to_the_float64_many_step_solution(context_dim):
    flow = _flow(context_dim)
    y, context = _inputs(context_dim)
    fine_y = reference_transform(flow, y, context, steps=FINE_STEPS)
    fine_log_prob = reference_log_prob(flow, y, context, steps=FINE_STEPS)
    assert (flow.transform(y, context) - fine_y).abs().max() < 1e-4
    assert (flow.log_prob(y, context) - fine_log_prob).abs().max() < 1e-4


def test_float32_fast_path_matches_float64_reference():
    flow = _flow(3)
    y, context = _inputs(3)
    reference = reference_log_prob(flow, y, context, steps=FINE_STEPS)
    fast = flow.float().log_prob(y.float(), context.float())
    assert (fast.double() - reference).abs().max() < 1e-3


def test_torchdyn_stage_time_trap_is_pinned_down():
    """torchdyn 1.0.6's RK4 puts its stages at t, t, t+h/2, t+h/2: not RK4 for F(y, t)."""
    torchdyn_flow = _flow(0, stage_times="torchdyn-1.0.6")
    classic_flow = _flow(0)
    y, _ = _inputs(0)
    fine = reference_transform(classic_flow, y, steps=FINE_STEPS)
    classic_error = (classic_flow.transform(y) - fine).abs().max()
    torchdyn_error = (torchdyn_flow.transform(y) - fine).abs().max()
    assert torchdyn_error > 100 * classic_error
    # The compatibility option reproduces torchdyn's own stepper exactly.
    assert isinstance(ClassicRungeKutta4(), RungeKutta4)
    torch.testing.assert_close(torchdyn_flow.transform(y),
                               reference_transform(torchdyn_flow, y), rtol=1e-12, atol=1e-12)


def test_classic_rk4_converges_at_fourth_order():
    flow = _flow(0)
    y, _ = _inputs(0)
    fine = reference_transform(flow, y, steps=FINE_STEPS)
    errors = []
    for steps in (10, 20):
        flow.steps = steps
        errors.append((flow.transform(y) - fine).abs().max().item())
    assert 10 < errors[0] / errors[1] < 24  # 2⁴ = 16 for a fourth-order method


@pytest.mark.parametrize("context_dim", [0, 3])
@pytest.mark.parametrize("hidden_layers", [1, 2, 4])
def test_analytic_divergence_equals_autograd_trace(context_dim, hidden_layers):
    torch.manual_seed(3)
    field = VectorField(3, context_dim, hidden_layers=hidden_layers).double()
    y, context = _inputs(context_dim, n=50)
    t = torch.tensor(0.37, dtype=torch.float64)
    jacobians = torch.func.vmap(
        torch.func.jacrev(lambda row, c: field(t, row[None], None if c is None else c[None])[0]),
        in_dims=(0, None if context is None else 0),
    )(y, context)
    for graph in (True, False):  # with a graph, and in place without one
        with torch.set_grad_enabled(graph):
            output, divergence = field.with_divergence(t, y, context)
        torch.testing.assert_close(output.detach(), field(t, y, context).detach())
        torch.testing.assert_close(divergence.detach(),
                                   jacobians.diagonal(dim1=1, dim2=2).sum(-1))


def test_compiled_divergence_equals_eager():
    torch.manual_seed(4)
    field = VectorField(3, 3)
    y, context = (t.float() for t in _inputs(3, n=64))
    t = torch.tensor(0.5)
    eager = field.with_divergence(t, y, context)
    field.compile = True
    compiled = field.with_divergence(t, y, context)
    for a, b in zip(eager, compiled, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("context_dim", [0, 3])
def test_graph_free_divergence_equals_the_differentiable_one(context_dim):
    """Under no_grad the field updates its tangents in place; the numbers must not move."""
    flow = _flow(context_dim)
    y, context = _inputs(context_dim)
    t = torch.tensor(0.3, dtype=torch.float64)
    with_graph = flow.field.with_divergence(t, y.requires_grad_(), context)
    with torch.no_grad():
        graph_free = flow.field.with_divergence(t, y, context)
    for a, b in zip(with_graph, graph_free, strict=True):
        torch.testing.assert_close(a.detach(), b, rtol=1e-14, atol=1e-14)


def test_compiled_density_equals_eager_density():
    """The ensemble evaluates densities through torch.compile; it must agree with eager."""
    flow = _flow(3).float()
    y, context = (t.float() for t in _inputs(3, n=300))
    with torch.no_grad():
        eager = flow.log_prob(y, context)
        flow.field.compile = True
        compiled = flow.log_prob(y, context)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
