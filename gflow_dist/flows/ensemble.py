"""An ensemble of flow pairs p(r)·p(v|r) behind the upsampler interface (CNF and MAF).

Members are trained independently from per-member seeds on the same preprocessed train
particles (eqs. 9–11), a group of CNF members as one batched model
(:mod:`gflow_dist.flows.batched_members`). The ensemble density is the mean of the member
densities; an ensemble draw picks a member uniformly at random for every star (paper
§3.3), on the model's device (:mod:`gflow_dist.sample.device_draws`). Densities are
returned in physical units by adding the log-Jacobians of the preprocessing.

Subclasses differ only in the flows of a member, that is in their architecture
(``architecture_type``), their ``kind`` and how the run config maps onto them.

References:
    arXiv:2211.11765, §3.1 eq. 4, §3.3 and Appendix A.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import torch

from gflow_dist.data.particles import ParticleSet
from gflow_dist.errors import GflowError
from gflow_dist.flows.batched_members import train_members
from gflow_dist.flows.cnf import ContinuousFlow
from gflow_dist.flows.member import (
    PAPER_OBJECTIVE,
    WEIGHTS_FILE,
    FlowArchitecture,
    FlowObjective,
    MemberFlows,
    default_device,
)
from gflow_dist.flows.stacked import StackedFlows, padded_groups
from gflow_dist.flows.training import Recipe
from gflow_dist.preprocess import Preprocessor
from gflow_dist.preprocess import device as device_preprocess
from gflow_dist.sample.device_draws import draw_in_window_on_device
from gflow_dist.sample.window import DrawStats, SelectionWindow
from gflow_dist.upsamplers.base import MemberRunner, Upsampler, member_seeds, run_members_here

LOG_PROB_BATCH = 65_536
"""Rows per batch of the ensemble density."""

PAPER_RECIPE = Recipe()


class FlowEnsemble(Upsampler):
    """Equally weighted members, each a pair of flows on the preprocessed phase space.

    Args:
        sun_position_kpc: centre of the selection sphere [kpc].
        r_max_kpc: its radius [kpc].
        architecture: the flows' shape; None uses ``architecture_type()``.
        recipe: the training budget (paper §3.3).
        ensemble_size: number of independently seeded members (paper: 10).
        validation_fraction: held-out share for early stopping (paper: 0.2).
        max_train_particles: fit on a seeded random subset of at most this many train
            particles (a budget for demos); None uses them all.
        objective: what the members' flows minimise (paper: the likelihood).
    """

    architecture_type: ClassVar[type[Any]]
    """The frozen dataclass of this kind's architecture (a :class:`FlowArchitecture`)."""

    compilable: ClassVar[bool] = True
    """Whether the flows can train through ``torch.compile`` (``Recipe.compile``)."""

    flow_matchable: ClassVar[bool] = True
    """Whether the flows can train by flow matching (``FlowObjective.kind``)."""

    def __init__(self, sun_position_kpc: Sequence[float], r_max_kpc: float,
                 architecture: FlowArchitecture | None = None, recipe: Recipe = PAPER_RECIPE,
                 ensemble_size: int = 10, validation_fraction: float = 0.2,
                 max_train_particles: int | None = None,
                 objective: FlowObjective = PAPER_OBJECTIVE) -> None:
        if recipe.compile and not self.compilable:
            raise GflowError(f"{self.kind}: these flows have no torch.compile path; "
                             "train them with Recipe(compile=False)")
        if objective.kind == "flow_matching" and not self.flow_matchable:
            raise GflowError(f"{self.kind}: these flows have no vector field to train by "
                             "flow matching; train them by likelihood")
        self.sun_position_kpc = tuple(float(v) for v in sun_position_kpc)
        self.r_max_kpc = float(r_max_kpc)
        self.architecture = architecture if architecture is not None else self.architecture_type()
        self.recipe = recipe
        self.ensemble_size = ensemble_size
        self.validation_fraction = validation_fraction
        self.max_train_particles = max_train_particles
        self.objective = objective
        self.window = SelectionWindow(self.sun_position_kpc, self.r_max_kpc)
        self.preprocessor: Preprocessor | None = None
        self.members: list[MemberFlows] = []
        self.seeds: list[int] = []
        self.device = default_device()
        self._stacked: tuple[torch.device, list, tuple[StackedFlows, StackedFlows]] | None = None

    def fit(self, particles: ParticleSet, seed: int, workdir: str | Path | None = None,
            runner: MemberRunner = run_members_here) -> Self:
        """Fit the preprocessing, then train every member (resuming any in ``workdir``)."""
        if self.max_train_particles is not None and len(particles) > self.max_train_particles:
            rng = np.random.default_rng([seed, len(particles)])
            particles = particles.subset(
                np.sort(rng.choice(len(particles), self.max_train_particles, replace=False)))
        self.preprocessor = Preprocessor.fit(particles.phase_space, self.sun_position_kpc,
                                             self.r_max_kpc)
        max_speed = float(np.linalg.norm(particles.velocities, axis=1).max())
        self.window = SelectionWindow(self.sun_position_kpc, self.r_max_kpc, max_speed)
        positions, _ = self.preprocessor.positions_forward(particles.positions)
        velocities, _ = self.preprocessor.velocities_forward(particles.velocities)
        self.seeds = member_seeds(seed, self.ensemble_size)
        with tempfile.TemporaryDirectory() as scratch:
            root = Path(workdir) if workdir is not None else Path(scratch)
            jobs = [dict(positions=positions, velocities=velocities,
                         architecture=self.architecture, recipe=self.recipe,
                         validation_fraction=self.validation_fraction, seed=member_seed,
                         directory=root / f"member-{index:02d}", objective=self.objective)
                    for index, member_seed in enumerate(self.seeds)]
            directories = runner(train_members, jobs)
            self.members = [MemberFlows.load(self.architecture, d / WEIGHTS_FILE, self.device)
                            for d in directories]
        return self

    def to_device(self, device: torch.device | str) -> Self:
        """Move every member's flows to ``device`` (where it draws and evaluates); returns
        self."""
        self.device = torch.device(device)
        for member in self.members:
            member.position.to(self.device)
            member.velocity.to(self.device)
        return self

    def _require_fitted(self) -> Preprocessor:
        if self.preprocessor is None or not self.members:
            raise RuntimeError(f"the {self.kind} upsampler is not fitted: call fit() or load "
                               "a model")
        return self.preprocessor

    def log_prob(self, phase_space: np.ndarray) -> np.ndarray:
        """ln f(r, v) [kpc⁻³ (km/s)⁻³]: the ensemble mean density, −inf outside the sphere."""
        preprocessor = self._require_fitted()
        result = np.full(len(phase_space), -np.inf)
        distance = np.linalg.norm(phase_space[:, :3] - np.asarray(self.sun_position_kpc), axis=1)
        inside = np.flatnonzero(distance < self.r_max_kpc)
        for start in range(0, len(inside), LOG_PROB_BATCH):
            rows = inside[start:start + LOG_PROB_BATCH]
            s_r, log_det_r = preprocessor.positions_forward(phase_space[rows, :3])
            s_v, log_det_v = preprocessor.velocities_forward(phase_space[rows, 3:])
            r = torch.as_tensor(s_r, dtype=torch.float32, device=self.device)
            v = torch.as_tensor(s_v, dtype=torch.float32, device=self.device)
            with torch.no_grad():
                per_member = torch.stack([m.log_prob(r, v) for m in self.members])
                ensemble = torch.logsumexp(per_member.double(), 0) - math.log(len(self.members))
            result[rows] = ensemble.cpu().numpy() + log_det_r + log_det_v
        return result

    def iter_samples(self, n: int, seed: int, batch_size: int = 65_536,
                     stats: DrawStats | None = None) -> Iterator[np.ndarray]:
        """Stream exactly n stars inside the window, drawn on the model's device.

        Star k is the k-th proposal inside the window, and proposal p is a pure function
        of (seed, p) (:mod:`gflow_dist.sample.device_draws`): the stars do not depend on
        ``batch_size``.
        """
        for stars in self.iter_sample_tensors(n, seed, batch_size, stats):
            yield stars.cpu().numpy()

    def iter_sample_tensors(self, n: int, seed: int, batch_size: int = 65_536,
                            stats: DrawStats | None = None) -> Iterator[torch.Tensor]:
        """:meth:`iter_samples` as (k, 6) float64 tensors left on the model's device."""
        self._require_fitted()
        return draw_in_window_on_device(self.transform_base, len(self.members), n, seed,
                                        self.window, batch_size, self.device, stats)

    def transform_base(self, z: torch.Tensor, member: torch.Tensor) -> torch.Tensor:
        """(count, 6) Galactocentric stars [kpc, km/s], float64, from (count, 6) float32
        base draws z and the (count,) member each is pushed through (paper §3.3 (i)–(iii)).

        p(r) then p(v|r) of every member run on the model's device, CNF members as one
        stacked model (:class:`~gflow_dist.flows.stacked.StackedFlows`: rows grouped by
        member on a member axis, so M members cost the kernel launches of one), other
        flows one member at a time; then eqs. 9–11 are inverted in float64.
        """
        preprocessor = self._require_fitted()
        with torch.no_grad():
            s_r, s_v = self._push_through_members(z, member)
        positions = device_preprocess.positions_inverse(preprocessor, s_r.double())
        velocities = device_preprocess.velocities_inverse(preprocessor, s_v.double())
        return torch.cat([positions, velocities], dim=1)

    def _push_through_members(self, z: torch.Tensor,
                              member: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Preprocessed (positions, velocities), each (count, 3), of the base draws z."""
        s_r = torch.empty(len(z), 3, dtype=z.dtype, device=z.device)
        s_v = torch.empty_like(s_r)
        stacked = self._stacked_members()
        if stacked is not None:
            rows, valid = padded_groups(member, len(self.members))
            grouped = z[rows]
            r = stacked[0].transform(grouped[..., :3])
            v = stacked[1].transform(grouped[..., 3:], r)
            s_r[rows[valid]], s_v[rows[valid]] = r[valid], v[valid]
            return s_r, s_v
        counts = torch.bincount(member, minlength=len(self.members)).tolist()
        groups = torch.argsort(member, stable=True).split(counts)
        for flows, rows in zip(self.members, groups, strict=True):
            if len(rows):
                chunk = z[rows]
                s_r[rows], s_v[rows] = flows.transform(chunk[:, :3], chunk[:, 3:])
        return s_r, s_v

    def _stacked_members(self) -> tuple[StackedFlows, StackedFlows] | None:
        """The members' p(r) and p(v|r) stacked for sampling; None unless every member is
        a CNF. Built on first use and again whenever the members or the device change
        (the stacked copies hold the weights the members had then)."""
        flows = [(m.position, m.velocity) for m in self.members]
        if not all(isinstance(f, ContinuousFlow) for pair in flows for f in pair):
            return None
        sources = [f for pair in flows for f in pair]
        cached = self._stacked
        if cached is None or cached[0] != self.device or len(cached[1]) != len(sources) or any(
                a is not b for a, b in zip(cached[1], sources, strict=True)):
            cached = (self.device, sources, tuple(
                StackedFlows([pair[i] for pair in flows]).to(self.device).eval()
                for i in (0, 1)))
            self._stacked = cached
        return cached[2]

    def spec(self) -> dict[str, Any]:
        preprocessor = self._require_fitted()
        return {
            "architecture": asdict(self.architecture),
            "recipe": asdict(self.recipe),
            "objective": asdict(self.objective),
            "ensemble_size": self.ensemble_size,
            "validation_fraction": self.validation_fraction,
            "max_train_particles": self.max_train_particles,
            "preprocessor": preprocessor.to_dict(),
            "window": asdict(self.window),
            "member_seeds": self.seeds,
        }

    def save_weights(self, directory: Path) -> None:
        for index, member in enumerate(self.members):
            torch.save({k: v.cpu() for k, v in member.state_dict().items()},
                       directory / f"member-{index:02d}.pt")

    @classmethod
    def from_saved(cls, spec: dict[str, Any], directory: Path) -> Self:
        window = spec["window"]
        model = cls(window["sun_position_kpc"], window["r_max_kpc"],
                    cls.architecture_type(**spec["architecture"]), Recipe(**spec["recipe"]),
                    spec["ensemble_size"], spec["validation_fraction"],
                    spec["max_train_particles"], FlowObjective(**spec.get("objective", {})))
        model.window = SelectionWindow(model.sun_position_kpc, model.r_max_kpc,
                                       window["max_speed_kms"])
        model.preprocessor = Preprocessor.from_dict(spec["preprocessor"])
        model.seeds = list(spec["member_seeds"])
        model.members = [
            MemberFlows.load(model.architecture, directory / f"member-{i:02d}.pt", model.device)
            for i in range(spec["ensemble_size"])
        ]
        return model
