"""M continuous normalizing flows of one shape, evaluated together as one batched model.

Every parameter of the M flows' vector fields carries a leading member axis: weights
(M, out, in), biases (M, out). A layer is one batched matrix product over inputs
(M, B, width), so M members cost about the kernel launches of one; each member's numbers
go through the same operations as in :class:`~gflow_dist.flows.cnf.ContinuousFlow`, so
its field, divergence and log-density equal the single flow's to float rounding.

The exact divergence Tr(∂F/∂y) of eq. 8 pushes the tangents ∂h/∂y_i forward through the
layers analytically, as :mod:`gflow_dist.flows.vector_field` does, batched over members:
tangents (M, dim, B, H). The log-density integrates eqs. 7–8 backward with the same
fixed-step RK4 as ``ContinuousFlow._inverse_with_log_det`` (its ``stage_times`` too), and
sampling integrates eq. 5 forward as ``ContinuousFlow.transform`` does.

References:
    arXiv:2211.11765, §3.2, eqs. 5–8.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from gflow_dist.flows.cnf import (
    TRANSFORM_CHUNK,
    ContinuousFlow,
    integrate,
    integrate_back_with_trace,
    standard_normal_log_prob,
)
from gflow_dist.flows.vector_field import compiled_for, gelu_derivative


def stacked_field_with_divergence(t: Tensor, y: Tensor, context: Tensor | None,
                                  weights: Sequence[Tensor],
                                  biases: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """F(y, t | c) (M, B, dim) and Tr(∂F/∂y) (M, B) of M MLPs at once.

    Args:
        t: latent time, a 0-d tensor shared by every row.
        y: states (M, B, dim).
        context: conditioning (M, B, context_dim), or None.
        weights, biases: per layer (M, out, in) and (M, out); the last pair is the output.
    """
    members, rows, dim = y.shape
    parts = [y, t.to(y.dtype).expand(members, rows, 1)]
    if context is not None:
        parts.append(context)
    a = torch.baddbmm(biases[0].unsqueeze(1), torch.cat(parts, dim=2), weights[0].transpose(1, 2))
    # Tangents ∂h/∂y_i (M, dim, B, H); in the first layer they are the weight columns of y.
    tangents = gelu_derivative(a).unsqueeze(1) * weights[0][:, :, :dim].transpose(1, 2).unsqueeze(2)
    h = torch.nn.functional.gelu(a)
    for weight, bias in zip(weights[1:-1], biases[1:-1], strict=True):
        a = torch.baddbmm(bias.unsqueeze(1), h, weight.transpose(1, 2))
        pushed = torch.bmm(tangents.reshape(members, dim * rows, -1), weight.transpose(1, 2))
        tangents = gelu_derivative(a).unsqueeze(1) * pushed.view(members, dim, rows, -1)
        h = torch.nn.functional.gelu(a)
    out = torch.baddbmm(biases[-1].unsqueeze(1), h, weights[-1].transpose(1, 2))
    # Tr ∂F/∂y = Σ_i Σ_h T[i, b, h] W_out[i, h]: a batched product per (member, i), so that
    # each member's numbers never depend on how many members share the batch.
    divergence = torch.matmul(tangents, weights[-1].unsqueeze(3)).squeeze(3).sum(dim=1)
    return out, divergence


def stacked_field(t: Tensor, y: Tensor, context: Tensor | None, weights: Sequence[Tensor],
                  biases: Sequence[Tensor]) -> Tensor:
    """F(y, t | c) (M, B, dim) of M MLPs at once, without the divergence (sampling)."""
    members, rows, _ = y.shape
    parts = [y, t.to(y.dtype).expand(members, rows, 1)]
    if context is not None:
        parts.append(context)
    h = torch.cat(parts, dim=2)
    for weight, bias in zip(weights[:-1], biases[:-1], strict=True):
        h = torch.nn.functional.gelu(torch.baddbmm(bias.unsqueeze(1), h, weight.transpose(1, 2)))
    return torch.baddbmm(biases[-1].unsqueeze(1), h, weights[-1].transpose(1, 2))


class StackedFlows(nn.Module):
    """M :class:`ContinuousFlow` s of one shape as one model with a member axis.

    Args:
        flows: the members, all with the same dim, context_dim, layers, steps and
            stage_times; their current parameters are copied in.
        compile: evaluate the field through ``torch.compile`` (as ``VectorField.compile``).
    """

    def __init__(self, flows: Sequence[ContinuousFlow], compile: bool = False) -> None:
        super().__init__()
        first = flows[0]
        shape = (first.dim, first.context_dim, first.steps, first.stage_times)
        if any((f.dim, f.context_dim, f.steps, f.stage_times) != shape for f in flows):
            raise ValueError("stacked flows must all have the same shape")
        self.dim, self.context_dim, self.steps, self.stage_times = shape
        self.members = len(flows)
        self.compile = compile
        self.layer_names = [f"hidden.{i}" for i in range(len(first.field.hidden))] + ["output"]
        states = [flow.field.state_dict() for flow in flows]
        self.weights = nn.ParameterList(
            torch.stack([s[f"{name}.weight"] for s in states]).detach().clone()
            for name in self.layer_names)
        self.biases = nn.ParameterList(
            torch.stack([s[f"{name}.bias"] for s in states]).detach().clone()
            for name in self.layer_names)

    def member_state(self, index: int) -> dict[str, Tensor]:
        """Member ``index`` as a ``ContinuousFlow`` state dict (CPU copies)."""
        state = {}
        for name, weight, bias in zip(self.layer_names, self.weights, self.biases, strict=True):
            state[f"field.{name}.weight"] = weight[index].detach().cpu().clone()
            state[f"field.{name}.bias"] = bias[index].detach().cpu().clone()
        return state

    def unstack(self) -> list[dict[str, Tensor]]:
        """Every member's ``ContinuousFlow`` state dict, in order."""
        return [self.member_state(index) for index in range(self.members)]

    @torch.no_grad()
    def load_member(self, index: int, state: dict[str, Tensor]) -> None:
        """Overwrite member ``index`` with a ``ContinuousFlow`` state dict."""
        for name, weight, bias in zip(self.layer_names, self.weights, self.biases, strict=True):
            weight[index].copy_(state[f"field.{name}.weight"])
            bias[index].copy_(state[f"field.{name}.bias"])

    def field_with_divergence(self, t: Tensor, y: Tensor,
                              context: Tensor | None) -> tuple[Tensor, Tensor]:
        """F (M, B, dim) and its exact divergence (M, B), eq. 8."""
        function = (compiled_for(stacked_field_with_divergence, context is not None)
                    if self.compile else stacked_field_with_divergence)
        return function(t, y, context, list(self.weights), list(self.biases))

    def transform(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        """Push each member's base draws z (M, B, dim) from t = 0 to data space at t = 1.

        On the CPU without a graph the rows are solved ``TRANSFORM_CHUNK`` at a time over
        all members (rows are independent; see ``cnf.log_det_chunk`` on why chunks).
        """
        chunk = max(1, TRANSFORM_CHUNK // self.members)
        if z.shape[1] <= chunk or torch.is_grad_enabled() or z.device.type != "cpu":
            return self._transform(z, context)
        contexts = (context.split(chunk, dim=1) if context is not None
                    else [None] * len(z.split(chunk, dim=1)))
        return torch.cat([self._transform(part, c)
                          for part, c in zip(z.split(chunk, dim=1), contexts, strict=True)],
                         dim=1)

    def _transform(self, z: Tensor, context: Tensor | None) -> Tensor:
        weights, biases = list(self.weights), list(self.biases)

        def field(t: Tensor, y: Tensor, c: Tensor | None) -> Tensor:
            return stacked_field(t, y, c, weights, biases)

        return integrate(field, z, context, self.steps, self.stage_times)

    def inverse_with_log_det(self, y: Tensor,
                             context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Pull data y (M, B, dim) back to the base: z and ℓ(0) = −∫₀¹ Tr ∂F/∂y dt (M, B)."""
        return integrate_back_with_trace(self.field_with_divergence, y, context, self.steps,
                                         self.stage_times)

    def log_prob(self, y: Tensor, context: Tensor | None = None) -> Tensor:
        """log p(y | c) of each member at its own rows y (M, B, dim): shape (M, B), eq. 6."""
        z, ell = self.inverse_with_log_det(y, context)
        return standard_normal_log_prob(z) + ell

    def member_losses(self, y: Tensor, context: Tensor | None = None) -> Tensor:
        """Each member's mean negative log-likelihood of its rows [nats per point], (M,)."""
        return -self.log_prob(y, context).mean(dim=1)


def padded_groups(member: Tensor, members: int) -> tuple[Tensor, Tensor]:
    """Rows grouped by member on a member axis, for :class:`StackedFlows`.

    Args:
        member: (B,) member index of each row, in [0, members).
        members: M.

    Returns:
        rows (M, W): the indices of member m's rows in row order, padded to the largest
        group's size W with a repeat of a valid row; and valid (M, W), False on padding.
    """
    order = torch.argsort(member, stable=True)
    counts = torch.bincount(member, minlength=members)
    width = max(1, int(counts.max()))
    slots = torch.arange(width, device=member.device)
    valid = slots < counts.unsqueeze(1)
    starts = torch.cumsum(counts, 0) - counts
    positions = (starts.unsqueeze(1) + slots).clamp(max=len(member) - 1)
    return order[positions], valid
