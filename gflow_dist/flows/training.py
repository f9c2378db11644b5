"""Maximum-likelihood training of one flow with the paper's recipe (§3.3).

Adam at the main learning rate (1e-3) with a random validation split (20 %) and a fixed
number of minibatches per epoch (10), stopped when the validation loss has not improved
for ``patience`` epochs (50); then a restart from the best state at the refinement rate
(1e-4) under the same stopping rule. The best state wins.

After every epoch the whole training state is written to a checkpoint, atomically, so an
interrupted training resumes where it stopped and loses at most the epoch in flight.
Minibatch shuffles, and any noise a loss draws from torch's generator (flow matching's
base draws and times), are derived from (seed, phase, epoch) alone, so a resumed run takes
exactly the steps an uninterrupted run would have taken; the validation loss draws the
same noise every epoch, so its epochs compare like with like.

References:
    arXiv:2211.11765, §3.3.
"""

from __future__ import annotations

import copy
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from gflow_dist.faults import kill_point

EVAL_BATCH = 65_536
"""Rows per no-grad evaluation batch; bounds the validation pass's memory."""

PROGRESS_SECONDS = 10.0
"""Least interval between two progress lines of one training phase."""

LossFn = Callable[[nn.Module, Tensor, Tensor | None], Tensor]
"""The mean loss of a batch (data, context) under a model: a flow's negative
log-likelihood or flow-matching loss, or a classifier's cross-entropy."""

EpochHook = Callable[[nn.Module, str, int], None]
"""Called after every epoch with the model, the phase's name and the epoch's index."""


@dataclass(frozen=True)
class Recipe:
    """The training budget and optimiser settings (paper §3.3 defaults)."""

    learning_rate: float = 1e-3
    refine_learning_rate: float = 1e-4
    batches_per_epoch: int = 10
    max_epochs: int = 100_000
    patience: int = 50
    refine: bool = True
    compile: bool = False
    """Train through ``torch.compile`` (≈3× faster per epoch on CPU, ≈30 s to compile)."""

    def phases(self) -> list[tuple[str, float]]:
        """(name, learning rate) of each training phase, in order."""
        main = [("main", self.learning_rate)]
        return main + ([("refine", self.refine_learning_rate)] if self.refine else [])


@dataclass
class History:
    """Per-epoch losses of each phase [nats per point, in the flow's space]."""

    train: dict[str, list[float]] = field(default_factory=dict)
    validation: dict[str, list[float]] = field(default_factory=dict)
    best_validation: float = math.inf

    def to_dict(self) -> dict[str, object]:
        return {"train": self.train, "validation": self.validation,
                "best_validation": self.best_validation}


def validation_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random (train, validation) index arrays; ``fraction`` of the n rows validate."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, round(fraction * n))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


class _Progress:
    """Epoch lines on stderr, at most one per ``PROGRESS_SECONDS`` and always the last one.

    Plain lines rather than a redrawn bar, so that they read the same in a terminal, in a
    log file and in Ray's forwarded worker output (Ray passes a worker's stderr on to the
    driver's stderr).
    """

    def __init__(self, label: str) -> None:
        self.label = label
        self.last = time.monotonic()

    def report(self, epoch: int, train_loss: float, val_loss: float, best: float,
               done: bool) -> None:
        now = time.monotonic()
        if done or now - self.last >= PROGRESS_SECONDS:
            self.last = now
            state = "done" if done else "epoch"
            print(f"{self.label}: {state} {epoch + 1}  train {train_loss:.4f}  "
                  f"validation {val_loss:.4f}  best {best:.4f}", file=sys.stderr, flush=True)


_VALIDATION_STREAM = 0x76616C
"""Seeds the noise of every validation pass (a fixed draw for the whole training)."""


@contextmanager
def _torch_seeded(device: torch.device, *key: int) -> Iterator[None]:
    """Seed torch's generators from ``key`` inside the block, and restore them after it."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(np.random.SeedSequence(key).generate_state(1)[0]))
        yield


def _evaluate(flow: nn.Module, loss_fn: LossFn, data: Tensor, context: Tensor | None,
              seed: int) -> float:
    total = 0.0
    with torch.no_grad(), _torch_seeded(data.device, seed, _VALIDATION_STREAM):
        for start in range(0, len(data), EVAL_BATCH):
            rows = slice(start, start + EVAL_BATCH)
            batch_context = None if context is None else context[rows]
            total += loss_fn(flow, data[rows], batch_context).item() * len(data[rows])
    return total / len(data)


def _save_atomically(state: dict, path: Path) -> None:
    temporary = path.with_suffix(".tmp")
    torch.save(state, temporary)
    os.replace(temporary, path)


def train(flow: nn.Module, loss_fn: LossFn, data: Tensor, context: Tensor | None,
          validation: Tensor, validation_context: Tensor | None, recipe: Recipe, seed: int,
          checkpoint: Path, label: str = "flow", after_epoch: EpochHook | None = None) -> History:
    """Train ``flow`` in place and leave it in its best state.

    Args:
        flow: the model; its parameters are updated in place.
        loss_fn: mean NLL of a batch.
        data, context: train rows and their conditioning (None for unconditional flows).
        validation, validation_context: held-out rows for early stopping.
        recipe: the budget.
        seed: derives every minibatch shuffle.
        checkpoint: file holding the training state; resumed from when it exists.
        label: names the flow in progress lines.
        after_epoch: called after every epoch, before the checkpoint is written
            (benchmarks snapshot learning curves with it).

    Returns:
        The loss curves of every phase.
    """
    state = torch.load(checkpoint, weights_only=True) if checkpoint.exists() else None
    history = History()
    best_state = copy.deepcopy(flow.state_dict())
    if state is not None:
        flow.load_state_dict(state["model"])
        best_state = state["best_model"]
        history = History(state["train"], state["validation"], state["best_validation"])
        print(f"{label}: resuming from {checkpoint}", file=sys.stderr, flush=True)
    batches = min(recipe.batches_per_epoch, len(data))
    for phase_index, (phase, lr) in enumerate(recipe.phases()):
        if state is not None and phase_index < state["phase_index"]:
            continue
        optimizer = torch.optim.Adam(flow.parameters(), lr=lr)
        resuming = state is not None and phase_index == state["phase_index"]
        if resuming:
            optimizer.load_state_dict(state["optimizer"])
        else:
            flow.load_state_dict(best_state)
        train_curve = history.train.setdefault(phase, [])
        val_curve = history.validation.setdefault(phase, [])
        stale = state["stale_epochs"] if resuming else 0
        done = state is not None and resuming and state["phase_done"]
        progress = _Progress(f"{label} {phase}")
        while not done and len(train_curve) < recipe.max_epochs:
            epoch = len(train_curve)
            rng = np.random.default_rng([seed, phase_index, epoch])
            running = 0.0
            with _torch_seeded(data.device, seed, phase_index, epoch):
                for rows in np.array_split(rng.permutation(len(data)), batches):
                    index = torch.from_numpy(rows).to(data.device)
                    loss = loss_fn(flow, data[index],
                                   None if context is None else context[index])
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    running += loss.item() * len(rows)
            train_curve.append(running / len(data))
            val_curve.append(_evaluate(flow, loss_fn, validation, validation_context, seed))
            if val_curve[-1] < history.best_validation:
                history.best_validation = val_curve[-1]
                best_state = copy.deepcopy(flow.state_dict())
                stale = 0
            else:
                stale += 1
            done = stale >= recipe.patience or len(train_curve) >= recipe.max_epochs
            progress.report(epoch, train_curve[-1], val_curve[-1], history.best_validation, done)
            if after_epoch is not None:
                after_epoch(flow, phase, epoch)
            _save_atomically({
                "model": flow.state_dict(), "best_model": best_state,
                "optimizer": optimizer.state_dict(), "phase_index": phase_index,
                "phase_done": done, "stale_epochs": stale, "train": history.train,
                "validation": history.validation, "best_validation": history.best_validation,
            }, checkpoint)
            kill_point("flow-epoch")
        state = None
    flow.load_state_dict(best_state)
    return history
