"""StackedFlows: M flows as one batched model give each member's own field, divergence and
log-density, and hand back each member's state dict unchanged."""

from __future__ import annotations

import pytest
import torch

from gflow_dist.flows.cnf import TRANSFORM_CHUNK, ContinuousFlow
from gflow_dist.flows.stacked import StackedFlows, padded_groups


def _flows(context_dim: int, stage_times: str = "rk4", members: int = 3) -> list[ContinuousFlow]:
    torch.manual_seed(5)
    return [ContinuousFlow(3, context_dim, steps=10, stage_times=stage_times)
            for _ in range(members)]


def _rows(context_dim: int, members: int = 3) -> tuple[torch.Tensor, torch.Tensor | None]:
    generator = torch.Generator().manual_seed(6)
    y = torch.randn(members, 200, 3, generator=generator)
    context = torch.randn(members, 200, context_dim, generator=generator) if context_dim else None
    return y, context


@pytest.mark.parametrize("context_dim", [0, 3])
def test_field_and_divergence_are_each_members_own(context_dim):
    flows = _flows(context_dim)
    y, context = _rows(context_dim)
    t = torch.tensor(0.3)
    field, divergence = StackedFlows(flows).field_with_divergence(t, y, context)
    assert field.shape == (3, 200, 3) and divergence.shape == (3, 200)
    for member, flow in enumerate(flows):
        own_context = None if context is None else context[member]
        expected_field, expected_divergence = flow.field.with_divergence(t, y[member], own_context)
        torch.testing.assert_close(field[member], expected_field, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(divergence[member], expected_divergence, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("context_dim, stage_times", [(0, "rk4"), (3, "rk4"),
                                                       (3, "torchdyn-1.0.6")])
def test_log_prob_is_each_members_own(context_dim, stage_times):
    flows = _flows(context_dim, stage_times)
    y, context = _rows(context_dim)
    log_prob = StackedFlows(flows).log_prob(y, context)
    assert log_prob.shape == (3, 200)
    for member, flow in enumerate(flows):
        expected = flow.log_prob(y[member], None if context is None else context[member])
        torch.testing.assert_close(log_prob[member], expected, rtol=1e-6, atol=1e-6)


def test_a_member_does_not_depend_on_its_group():
    """The same member alone and in a group of three: the same numbers, gradients too."""
    flows = _flows(3)
    y, context = _rows(3)
    alone, group = StackedFlows(flows[:1]), StackedFlows(flows)
    alone.member_losses(y[:1], context[:1]).sum().backward()
    group.member_losses(y, context).sum().backward()
    for single, stacked in zip(alone.parameters(), group.parameters(), strict=True):
        torch.testing.assert_close(single.grad[0], stacked.grad[0], rtol=1e-6, atol=1e-7)


def test_unstack_gives_back_each_members_state_dict():
    flows = _flows(3)
    stack = StackedFlows(flows)
    for flow, state in zip(flows, stack.unstack(), strict=True):
        expected = flow.state_dict()
        assert state.keys() == expected.keys()
        assert all(torch.equal(state[k], expected[k]) for k in state)
    stack.load_member(0, flows[2].state_dict())
    moved = stack.member_state(0)
    assert all(torch.equal(moved[k], v) for k, v in flows[2].state_dict().items())
    assert all(torch.equal(stack.member_state(1)[k], v) for k, v in flows[1].state_dict().items())


def test_flows_of_different_shapes_do_not_stack():
    with pytest.raises(ValueError, match="same shape"):
        StackedFlows([ContinuousFlow(3, 0, steps=10), ContinuousFlow(3, 0, steps=20)])


@pytest.mark.parametrize("context_dim, stage_times", [(0, "rk4"), (3, "torchdyn-1.0.6")])
def test_transform_is_each_members_own(context_dim, stage_times):
    flows = _flows(context_dim, stage_times)
    y, context = _rows(context_dim)
    with torch.no_grad():
        pushed = StackedFlows(flows).transform(y, context)
        for member, flow in enumerate(flows):
            expected = flow.transform(y[member], None if context is None else context[member])
            torch.testing.assert_close(pushed[member], expected, rtol=1e-6, atol=1e-6)


def test_transform_in_chunks_equals_one_solve():
    """Above TRANSFORM_CHUNK rows over all members the CPU solves chunks; rows stay apart."""
    flows = _flows(3, members=2)
    stacked = StackedFlows(flows)
    generator = torch.Generator().manual_seed(8)
    y = torch.randn(2, TRANSFORM_CHUNK // 2 + 100, 3, generator=generator)
    context = torch.randn(2, TRANSFORM_CHUNK // 2 + 100, 3, generator=generator)
    with torch.no_grad():
        chunked = stacked.transform(y, context)
        whole = stacked._transform(y, context)
    torch.testing.assert_close(chunked, whole, rtol=1e-6, atol=1e-6)


def test_padded_groups_hold_every_row_once_in_order():
    member = torch.tensor([2, 0, 2, 2, 1, 0, 2])
    rows, valid = padded_groups(member, 4)
    assert rows.shape == valid.shape == (4, 4)
    assert valid.sum(dim=1).tolist() == [2, 1, 4, 0]
    assert rows[0, :2].tolist() == [1, 5] and rows[1, :1].tolist() == [4]
    assert rows[2].tolist() == [0, 2, 3, 6]
    assert sorted(rows[valid].tolist()) == list(range(7))
    assert (member[rows[valid]] == torch.arange(4).repeat_interleave(valid.sum(dim=1))).all()


def test_each_kind_of_flow_compiles_with_its_own_code_object():
    """Dynamo keeps graphs per code object: p(r) and p(v|r) must not share one, or their
    graph variants together pass the recompile limit and run eagerly."""
    from gflow_dist.flows.stacked import stacked_field_with_divergence
    from gflow_dist.flows.vector_field import compiled_for

    conditional = compiled_for(stacked_field_with_divergence, True)
    unconditional = compiled_for(stacked_field_with_divergence, False)
    assert conditional is compiled_for(stacked_field_with_divergence, True)
    codes = {fn.__wrapped__.__code__ for fn in (conditional, unconditional)}
    assert len(codes) == 2 and stacked_field_with_divergence.__code__ not in codes
