"""Maximum-likelihood training of M members' flows at once, each by the paper's recipe (§3.3).

The M flows are one :class:`~gflow_dist.flows.stacked.StackedFlows`; one optimiser step
(:class:`~gflow_dist.flows.member_adam.MemberAdam`) advances every member. The loss is
the sum of the members' mean negative log-likelihoods, so each member's gradient is the
one it would have alone. Everything else is per member, exactly as
:func:`gflow_dist.flows.training.train` does it for that member alone: its minibatch
shuffles (from (seed, phase, epoch)), its validation rows, early stopping on its own
validation loss with its own best state, and its own move to the refinement phase
(restart from its best state, fresh optimiser state, refinement rate). A member done with
every phase is frozen: its parameters and optimiser state no longer change (its rows still
ride along in the batched products, masked out of the loss). Training ends when every
member is done; each member ends in its best state.

After every epoch each member that trained writes its own checkpoint, atomically, holding
all of its state; the members share nothing else, so a group resumes exactly, whichever
subset of its checkpoints exists.

On CUDA with ``Recipe.compile`` the loss and its backward run as CUDA graphs
(``torch.compile(mode="reduce-overhead")``); on the CPU ``compile`` compiles the field.

References:
    arXiv:2211.11765, §3.3, eqs. 5–8.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from gflow_dist.faults import kill_point
from gflow_dist.flows.cnf import ContinuousFlow, log_det_chunk
from gflow_dist.flows.member_adam import MemberAdam
from gflow_dist.flows.stacked import StackedFlows
from gflow_dist.flows.training import (
    EVAL_BATCH,
    EpochHook,
    History,
    Recipe,
    _Progress,
    _save_atomically,
)


@dataclass
class _MemberRun:
    """One member's place in its schedule, and what its checkpoint holds besides weights."""

    seed: int
    label: str
    checkpoint: Path
    best_state: dict[str, Tensor]
    history: History
    phase_index: int = 0
    stale_epochs: int = 0
    finished: bool = False

    def save(self, stack: StackedFlows, optimizer: MemberAdam, member: int) -> None:
        _save_atomically({
            "model": stack.member_state(member), "best_model": self.best_state,
            "optimizer": optimizer.member_state(member), "phase_index": self.phase_index,
            "stale_epochs": self.stale_epochs, "finished": self.finished,
            "train": self.history.train, "validation": self.history.validation,
            "best_validation": self.history.best_validation,
        }, self.checkpoint)


def _resume(runs: list[_MemberRun], stack: StackedFlows, optimizer: MemberAdam) -> None:
    """Load every member whose checkpoint exists."""
    for member, run in enumerate(runs):
        if not run.checkpoint.exists():
            continue
        state = torch.load(run.checkpoint, weights_only=True)
        stack.load_member(member, state["model"])
        optimizer.load_member(member, state["optimizer"])
        run.best_state = state["best_model"]
        run.history = History(state["train"], state["validation"], state["best_validation"])
        run.phase_index, run.stale_epochs = state["phase_index"], state["stale_epochs"]
        run.finished = state["finished"]
        print(f"{run.label}: resuming from {run.checkpoint}", file=sys.stderr, flush=True)


@torch.no_grad()
def _validation_losses(stack: StackedFlows, data: Tensor, context: Tensor | None) -> list[float]:
    """Each member's mean negative log-likelihood of its validation rows (M,)."""
    chunk = log_det_chunk() if data.device.type == "cpu" else EVAL_BATCH
    total = torch.zeros(stack.members, dtype=torch.float64, device=data.device)
    for start in range(0, data.shape[1], chunk):
        rows = slice(start, start + chunk)
        log_prob = stack.log_prob(data[:, rows], None if context is None else context[:, rows])
        total -= log_prob.double().sum(dim=1)
    return (total / data.shape[1]).tolist()


def _batch_loss(stack: StackedFlows, recipe: Recipe,
                device: torch.device) -> Callable[[Tensor, Tensor | None], Tensor]:
    """The members' losses of a minibatch (M,): with ``compile`` on CUDA, as CUDA graphs."""
    stack.compile = recipe.compile
    if recipe.compile and device.type == "cuda":
        return torch.compile(stack.member_losses, mode="reduce-overhead", dynamic=False)
    return stack.member_losses


def train_stacked(flows: Sequence[ContinuousFlow], data: Tensor, context: Tensor | None,
                  validation: Tensor, validation_context: Tensor | None, recipe: Recipe,
                  seeds: Sequence[int], checkpoints: Sequence[Path], labels: Sequence[str],
                  after_epoch: Sequence[EpochHook | None] | None = None) -> list[History]:
    """Train M flows of one shape as one batched model; leave each in its best state.

    Args:
        flows: the members' flows, in their initial state; loaded with their best state.
        data, context: each member's train rows (M, N, dim) and conditioning (M, N, c),
            or None for unconditional flows; every member has the same N.
        validation, validation_context: each member's held-out rows (M, N_val, ·).
        recipe: the budget, the same for every member (paper §3.3).
        seeds: each member's shuffle seed, as ``train``'s ``seed``.
        checkpoints: each member's checkpoint file; resumed from where it exists.
        labels: name each member in progress lines.
        after_epoch: per member, called after each of its epochs with its flow (in the
            epoch's state), the phase and the epoch, before its checkpoint is written.

    Returns:
        Each member's loss curves, as ``train`` returns them.
    """
    device, phases = data.device, recipe.phases()
    stack = StackedFlows(flows).to(device)
    runs = [_MemberRun(seed, label, Path(checkpoint), stack.member_state(m), History())
            for m, (seed, label, checkpoint) in enumerate(zip(seeds, labels, checkpoints,
                                                               strict=True))]
    optimizer = MemberAdam(list(stack.parameters()), [phases[0][1]] * len(runs))
    _resume(runs, stack, optimizer)
    loss_of = _batch_loss(stack, recipe, device)
    members, rows = data.shape[:2]
    batches = min(recipe.batches_per_epoch, rows)
    progress = [_Progress(f"{run.label} {phases[run.phase_index][0]}") for run in runs]
    member_axis = torch.arange(members, device=device).unsqueeze(1)
    while not all(run.finished for run in runs):
        active = [not run.finished for run in runs]
        splits = [np.array_split(np.random.default_rng(
            [run.seed, run.phase_index, len(run.history.train.get(phases[run.phase_index][0],
                                                                   []))]).permutation(rows),
            batches) for run in runs]
        mask = torch.tensor(active, device=device)
        running = torch.zeros(members, dtype=torch.float64, device=device)
        for k in range(batches):
            index = torch.from_numpy(np.stack([split[k] for split in splits])).to(device)
            if recipe.compile and device.type == "cuda":
                torch.compiler.cudagraph_mark_step_begin()
            losses = loss_of(data[member_axis, index],
                             None if context is None else context[member_axis, index])
            optimizer.zero_grad()
            torch.where(mask, losses, 0.0).sum().backward()
            optimizer.step(mask)
            running += losses.detach().double() * index.shape[1]
        train_losses = (running / rows).tolist()
        val_losses = _validation_losses(stack, validation, validation_context)
        for member in (m for m in range(members) if active[m]):
            _end_epoch(member, runs[member], stack, optimizer, recipe, progress,
                       train_losses[member], val_losses[member],
                       None if after_epoch is None else after_epoch[member], flows[member])
    for flow, run in zip(flows, runs, strict=True):
        flow.load_state_dict(run.best_state)
    return [run.history for run in runs]


def _end_epoch(member: int, run: _MemberRun, stack: StackedFlows, optimizer: MemberAdam,
               recipe: Recipe, progress: list[_Progress], train_loss: float,
               val_loss: float, hook: EpochHook | None, flow: ContinuousFlow) -> None:
    """Record a member's epoch, stop or move it to its next phase, write its checkpoint."""
    phases = recipe.phases()
    phase = phases[run.phase_index][0]
    train_curve = run.history.train.setdefault(phase, [])
    val_curve = run.history.validation.setdefault(phase, [])
    train_curve.append(train_loss)
    val_curve.append(val_loss)
    if val_loss < run.history.best_validation:
        run.history.best_validation = val_loss
        run.best_state = stack.member_state(member)
        run.stale_epochs = 0
    else:
        run.stale_epochs += 1
    done = run.stale_epochs >= recipe.patience or len(train_curve) >= recipe.max_epochs
    progress[member].report(len(train_curve) - 1, train_loss, val_loss,
                            run.history.best_validation, done)
    if hook is not None:
        flow.load_state_dict(stack.member_state(member))
        hook(flow, phase, len(train_curve) - 1)
    if done and run.phase_index + 1 < len(phases):
        run.phase_index += 1
        run.stale_epochs = 0
        next_phase, learning_rate = phases[run.phase_index]
        stack.load_member(member, run.best_state)
        optimizer.reset(member, learning_rate)
        run.history.train.setdefault(next_phase, [])
        run.history.validation.setdefault(next_phase, [])
        progress[member] = _Progress(f"{run.label} {next_phase}")
    elif done:
        run.finished = True
    run.save(stack, optimizer, member)
    kill_point("member-epoch")

