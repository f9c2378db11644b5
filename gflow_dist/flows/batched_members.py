"""Train a group of ensemble members as one batched model, or one after another.

:func:`train_members` takes the keyword arguments of
:func:`~gflow_dist.flows.member.train_member` for each member. CNF members trained by
likelihood (the paper's recipe, §3.3) train together through
:func:`~gflow_dist.flows.batched_training.train_stacked`: the p(r) flows of the group
as one stacked model, then the p(v|r) flows. Each member gets what ``train_member``
would give it alone: its seeded initial weights, its validation split, its shuffles (seed
for p(r), seed + 1 for p(v|r)), and the same files in its directory (``weights.pt``,
``history.json``), besides its own checkpoints ``position-batched.ckpt`` and
``velocity-batched.ckpt``. Other members (MAF flows, flow matching) train one after
another through ``train_member``.

References:
    arXiv:2211.11765, §3.1 eq. 4 and §3.3.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gflow_dist.flows.batched_training import train_stacked
from gflow_dist.flows.member import (
    PAPER_OBJECTIVE,
    WEIGHTS_FILE,
    CNFArchitecture,
    default_device,
    initial_member,
    train_member,
    write_member,
)
from gflow_dist.flows.training import validation_split

CHECKPOINT_SUFFIX = "-batched.ckpt"
"""A member's batched checkpoints are ``position-batched.ckpt`` and ``velocity-batched.ckpt``."""

_SHARED = ("architecture", "recipe", "validation_fraction", "device")
"""Job arguments every member of a batched group must share."""


def batchable(jobs: Sequence[dict[str, Any]]) -> bool:
    """Whether the jobs can train as one batched model: CNF flows trained by likelihood,
    of one architecture, recipe, validation fraction, device and number of rows."""
    first = jobs[0]
    return (isinstance(first["architecture"], CNFArchitecture)
            and all(job.get("objective", PAPER_OBJECTIVE).kind == "likelihood" for job in jobs)
            and all(job.get(key) == first.get(key) for job in jobs for key in _SHARED)
            and len({len(job["positions"]) for job in jobs}) == 1)


def train_members(jobs: Sequence[dict[str, Any]]) -> list[Path]:
    """Train every member not yet trained; returns the jobs' directories, in order.

    Args:
        jobs: per member, the keyword arguments of :func:`train_member`.

    Members whose directory holds ``weights.pt`` are skipped. The rest train as one batched
    model when :func:`batchable`, else one after another with ``train_member``.
    """
    directories = [Path(job["directory"]) for job in jobs]
    todo = [job for job, d in zip(jobs, directories, strict=True)
            if not (d / WEIGHTS_FILE).exists()]
    if todo and batchable(todo):
        _train_group(todo)
    else:
        for job in todo:
            train_member(**job)
    return directories


def _train_group(jobs: Sequence[dict[str, Any]]) -> None:
    """Train a batchable group and write each member's directory as ``train_member`` does."""
    first = jobs[0]
    device = torch.device(first["device"]) if first.get("device") else default_device()
    recipe = first["recipe"]
    directories = [Path(job["directory"]) for job in jobs]
    for directory in directories:
        directory.mkdir(parents=True, exist_ok=True)
    members = [initial_member(job["architecture"], job["seed"], device) for job in jobs]
    splits = [validation_split(len(job["positions"]), job["validation_fraction"], job["seed"])
              for job in jobs]

    def stacked(name: str) -> tuple[torch.Tensor, torch.Tensor]:
        arrays = [torch.from_numpy(job[name].astype(np.float32)) for job in jobs]
        fit = torch.stack([a[rows] for a, (rows, _) in zip(arrays, splits, strict=True)])
        held = torch.stack([a[rows] for a, (_, rows) in zip(arrays, splits, strict=True)])
        return fit.to(device), held.to(device)

    (r_fit, r_val), (v_fit, v_val) = stacked("positions"), stacked("velocities")
    labels = [job.get("label") or f"seed {job['seed']}" for job in jobs]
    flows = {"position": (r_fit, None, r_val, None, 0, "p(r)"),
             "velocity": (v_fit, r_fit, v_val, r_val, 1, "p(v|r)")}
    histories: list[dict] = [{} for _ in jobs]
    for name, (fit, context, held, held_context, seed_offset, title) in flows.items():
        hooks = [None if job.get("after_epoch") is None else partial(job["after_epoch"], name)
                 for job in jobs]
        curves = train_stacked(
            [getattr(member, name) for member in members], fit, context, held, held_context,
            recipe, [job["seed"] + seed_offset for job in jobs],
            [d / f"{name}{CHECKPOINT_SUFFIX}" for d in directories],
            [f"{label} {title}" for label in labels], hooks)
        for history, curve in zip(histories, curves, strict=True):
            history[name] = curve
    for directory, member, history in zip(directories, members, histories, strict=True):
        write_member(directory, member, history)
