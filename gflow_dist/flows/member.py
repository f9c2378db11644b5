"""One ensemble member: the pair of flows p(r) and p(v|r), trained one after the other.

A member is the same for every kind of flow: an architecture (:class:`CNFArchitecture` for
the CNF, :class:`gflow_dist.flows.maf.MAFArchitecture` for the MAF) builds both flows,
and each flow offers ``log_prob(y, context)`` and ``transform(z, context)`` (base draws
z ~ N(0, I) to data).

:func:`train_member` is a plain function of arrays, a seed and a directory, so it runs
unchanged in this process, in a Ray task or in a Ray actor. Everything it writes lives in
its directory: the training checkpoints (for resuming), the best weights and the loss
curves. A member whose weights file exists is not trained again.
:func:`gflow_dist.flows.batched_members.train_members` trains a group of members as one
batched model, writing the same files.

References:
    arXiv:2211.11765, §3.1 eq. 4 (f(r, v) = p(r) p(v|r)) and §3.3.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from gflow_dist.flows.cnf import ContinuousFlow
from gflow_dist.flows.flow_matching import flow_matching_loss
from gflow_dist.flows.training import EpochHook, History, Recipe, train, validation_split
from gflow_dist.outputs import write_text_atomically

WEIGHTS_FILE = "weights.pt"
HISTORY_FILE = "history.json"


class FlowArchitecture(Protocol):
    """The shape of a member's flows: a frozen dataclass whose fields go to ``spec.json``."""

    def build(self, context_dim: int) -> nn.Module:
        """A fresh 3-D flow conditioned on ``context_dim`` inputs, with ``log_prob`` and
        ``transform`` as :class:`ContinuousFlow` has them."""
        ...


@dataclass(frozen=True)
class CNFArchitecture:
    """The CNF architecture of paper §3.2: an MLP of 4 × 32 GELU units, 20 RK4 steps."""

    hidden_layers: int = 4
    hidden_units: int = 32
    steps: int = 20
    stage_times: str = "rk4"

    def build(self, context_dim: int) -> ContinuousFlow:
        """A fresh 3-D flow, conditioned on ``context_dim`` extra inputs."""
        return ContinuousFlow(3, context_dim, **asdict(self))


@dataclass(frozen=True)
class FlowObjective:
    """What a member's flows minimise.

    Attributes:
        kind: ``likelihood``, the paper's negative log-likelihood through the RK4 solve
            (§3.3), or ``flow_matching``, the simulation-free regression of
            :mod:`gflow_dist.flows.flow_matching` (CNF only).
        likelihood_finetune_epochs: after flow matching, train by likelihood for at most
            this many epochs per phase of the recipe (0: none).
    """

    kind: Literal["likelihood", "flow_matching"] = "likelihood"
    likelihood_finetune_epochs: int = 0


PAPER_OBJECTIVE = FlowObjective()
"""Maximum likelihood, as the paper trains (§3.3)."""


@dataclass
class MemberFlows:
    """A trained member: p(r) on preprocessed positions, p(v|r) on standardised velocities."""

    position: nn.Module
    velocity: nn.Module

    def log_prob(self, positions: Tensor, velocities: Tensor) -> Tensor:
        """log p(s_r) + log p(s_v | s_r) in the preprocessed space, shape (B,)."""
        return self.position.log_prob(positions) + self.velocity.log_prob(velocities, positions)

    def transform(self, z_position: Tensor, z_velocity: Tensor) -> tuple[Tensor, Tensor]:
        """Push base draws to preprocessed (positions, velocities), p(r) first."""
        positions = self.position.transform(z_position)
        return positions, self.velocity.transform(z_velocity, positions)

    def state_dict(self) -> dict[str, Tensor]:
        state = {f"position.{k}": v for k, v in self.position.state_dict().items()}
        return state | {f"velocity.{k}": v for k, v in self.velocity.state_dict().items()}

    @classmethod
    def load(cls, architecture: FlowArchitecture, path: Path,
             device: torch.device | str = "cpu") -> MemberFlows:
        """Rebuild from a weights-only file written by :func:`train_member`."""
        state = torch.load(path, map_location=device, weights_only=True)
        member = cls(architecture.build(0), architecture.build(3))
        for name, flow in (("position", member.position), ("velocity", member.velocity)):
            prefix = name + "."
            flow.load_state_dict({k[len(prefix):]: v for k, v in state.items()
                                  if k.startswith(prefix)})
            flow.to(device).eval()
        return member


def default_device() -> torch.device:
    """The GPU when this process was given one (by Ray or otherwise), else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _negative_log_likelihood(flow: nn.Module, data: Tensor,
                             context: Tensor | None) -> Tensor:
    return -flow.log_prob(data, context).mean()


FINETUNE_STAGE = "likelihood_finetune"
"""Names the phases of the likelihood fine-tune after flow matching."""


def _train_flow(flow: nn.Module, fit: tuple[Tensor, Tensor | None],
                validation: tuple[Tensor, Tensor | None], recipe: Recipe,
                objective: FlowObjective, seed: int, checkpoint: Path, label: str,
                after_epoch: EpochHook | None) -> History:
    """Train one flow by its objective; flow matching may end with a likelihood fine-tune.

    Each stage has its own checkpoint file, so an interrupted training resumes in the stage
    it stopped in. The returned history prefixes the phases with their stage when there are
    two, and its best validation loss is the last stage's.
    """
    if objective.kind == "likelihood":
        return train(flow, _negative_log_likelihood, *fit, *validation, recipe, seed,
                     checkpoint, label, after_epoch)
    matched = train(flow, flow_matching_loss, *fit, *validation, recipe, seed, checkpoint,
                    f"{label} flow matching", after_epoch)
    if objective.likelihood_finetune_epochs == 0:
        return matched

    def after_finetune_epoch(model: nn.Module, phase: str, epoch: int) -> None:
        if after_epoch is not None:
            after_epoch(model, f"{FINETUNE_STAGE} {phase}", epoch)

    finetune = replace(recipe, max_epochs=objective.likelihood_finetune_epochs)
    tuned = train(flow, _negative_log_likelihood, *fit, *validation, finetune, seed,
                  checkpoint.with_name(f"{checkpoint.stem}-finetune{checkpoint.suffix}"),
                  f"{label} likelihood fine-tune", after_finetune_epoch)
    stages = {"flow_matching": matched, FINETUNE_STAGE: tuned}
    return History(*({f"{stage} {phase}": curve for stage, history in stages.items()
                      for phase, curve in getattr(history, curves).items()}
                     for curves in ("train", "validation")),
                   tuned.best_validation)


def train_member(positions: np.ndarray, velocities: np.ndarray, architecture: FlowArchitecture,
                 recipe: Recipe, validation_fraction: float, seed: int,
                 directory: str | Path, device: str | None = None,
                 label: str | None = None, objective: FlowObjective = PAPER_OBJECTIVE,
                 after_epoch: Callable[[str, nn.Module, str, int], None] | None = None) -> Path:
    """Train one member on preprocessed train rows and write it to ``directory``.

    Args:
        positions: (n, 3) preprocessed positions (eqs. 9–11).
        velocities: (n, 3) standardised velocities (eq. 11).
        architecture: the flows' shape (CNF or MAF).
        recipe: the training budget (paper §3.3).
        validation_fraction: share of rows held out for early stopping (paper: 0.2).
        seed: seeds the initial weights, the validation split and the shuffles.
        directory: where checkpoints, weights and loss curves go.
        device: 'cpu', 'cuda', or None for :func:`default_device`.
        label: names the member in progress lines; None uses ``seed <seed>``.
        objective: what the flows minimise (paper: the likelihood).
        after_epoch: called after every epoch with the flow's name (``position`` or
            ``velocity``), the flow, the phase and the epoch (benchmarks use it).

    Returns:
        ``directory``, holding ``weights.pt`` and ``history.json``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if (directory / WEIGHTS_FILE).exists():
        return directory
    target = torch.device(device) if device else default_device()
    fit_rows, val_rows = validation_split(len(positions), validation_fraction, seed)

    def tensors(array: np.ndarray) -> tuple[Tensor, Tensor]:
        data = torch.from_numpy(array.astype(np.float32)).to(target)
        return data[fit_rows], data[val_rows]

    (r_fit, r_val), (v_fit, v_val) = tensors(positions), tensors(velocities)
    member = initial_member(architecture, seed, target)
    if recipe.compile:  # only the CNF has a compiled path (FlowEnsemble.compilable)
        for flow in (member.position, member.velocity):
            flow.field.compile = True
    label = label or f"seed {seed}"
    flows = {"position": (member.position, (r_fit, None), (r_val, None), seed, "p(r)"),
             "velocity": (member.velocity, (v_fit, r_fit), (v_val, r_val), seed + 1, "p(v|r)")}
    histories = {
        name: _train_flow(flow, fit, validation, recipe, objective, flow_seed,
                          directory / f"{name}.ckpt", f"{label} {title}",
                          None if after_epoch is None else partial(after_epoch, name))
        for name, (flow, fit, validation, flow_seed, title) in flows.items()
    }
    write_member(directory, member, histories)
    return directory


def initial_member(architecture: FlowArchitecture, seed: int,
                   device: torch.device) -> MemberFlows:
    """A member's flows in their initial state: seeded by ``seed``, p(r) built first."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MemberFlows(architecture.build(0).to(device), architecture.build(3).to(device))


def write_member(directory: Path, member: MemberFlows, histories: dict[str, History]) -> None:
    """Write a trained member's loss curves and, last and atomically, its weights."""
    write_text_atomically(directory / HISTORY_FILE, json.dumps(
        {name: h.to_dict() for name, h in histories.items()}, indent=1))
    temporary = directory / (WEIGHTS_FILE + ".tmp")
    torch.save({k: v.cpu() for k, v in member.state_dict().items()}, temporary)
    temporary.replace(directory / WEIGHTS_FILE)
