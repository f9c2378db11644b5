"""Members trained as one batched model equal themselves trained alone (paper §3.3 per
member: seeds, splits, shuffles, early stopping, refinement), resume exactly, and write the
member files ``train_member`` writes."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from gflow_dist.flows.batched_members import batchable, train_members
from gflow_dist.flows.maf import MAFArchitecture
from gflow_dist.flows.member import (
    CNFArchitecture,
    FlowObjective,
    MemberFlows,
    train_member,
)
from gflow_dist.flows.member_adam import MemberAdam
from gflow_dist.flows.training import Recipe

RECIPE = Recipe(max_epochs=6, patience=2, batches_per_epoch=4)
"""Short enough that members stop at different epochs, and each refines on its own."""

ARCHITECTURE = CNFArchitecture(steps=4)
SEEDS = (3, 12)


@pytest.fixture(scope="module")
def arrays() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    positions = rng.standard_normal((400, 3))
    return positions, rng.standard_normal((400, 3)) + 0.3 * positions


def _jobs(arrays, root: Path, prefix: str, recipe: Recipe = RECIPE) -> list[dict]:
    positions, velocities = arrays
    return [dict(positions=positions, velocities=velocities, architecture=ARCHITECTURE,
                 recipe=recipe, validation_fraction=0.2, seed=seed, device="cpu",
                 directory=root / f"{prefix}-{index}") for index, seed in enumerate(SEEDS)]


def _history(directory: Path) -> dict:
    return json.loads((directory / "history.json").read_text())


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    return torch.load(directory / "weights.pt", weights_only=True)


def test_adam_per_member_equals_torch_adam_and_freezes_inactive_members():
    torch.manual_seed(0)
    parameters = [torch.randn(2, 4, 3, requires_grad=True), torch.randn(2, 4, requires_grad=True)]
    alone = [p[1].detach().clone().requires_grad_() for p in parameters]
    frozen = [p[0].detach().clone() for p in parameters]
    reference = torch.optim.Adam(alone, lr=1e-3)
    adam = MemberAdam(parameters, [1e-3, 1e-3])
    active = torch.tensor([False, True])
    for _ in range(5):
        grads = [torch.randn_like(p) for p in parameters]
        for p, g, a in zip(parameters, grads, alone, strict=True):
            p.grad, a.grad = g, g[1].clone()
        adam.step(active)
        reference.step()
    for p, a, f in zip(parameters, alone, frozen, strict=True):
        torch.testing.assert_close(p[1], a, rtol=1e-6, atol=1e-7)
        assert torch.equal(p[0], f)
    assert adam.steps.tolist() == [0.0, 5.0]


def test_a_member_trained_in_the_batch_equals_itself_trained_alone(arrays, tmp_path):
    batched = train_members(_jobs(arrays, tmp_path, "batched"))
    alone = [train_member(**job) for job in _jobs(arrays, tmp_path, "alone")]
    epochs = set()
    for together, single in zip(batched, alone, strict=True):
        expected, got = _weights(single), _weights(together)
        assert got.keys() == expected.keys()
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=1e-6)
        want, have = _history(single), _history(together)
        for flow in ("position", "velocity"):
            assert list(have[flow]["train"]) == ["main", "refine"]
            for curves in ("train", "validation"):
                for phase, curve in want[flow][curves].items():
                    np.testing.assert_allclose(have[flow][curves][phase], curve, rtol=1e-5)
            epochs.add(sum(map(len, have[flow]["train"].values())))
        MemberFlows.load(ARCHITECTURE, together / "weights.pt")
    assert len(epochs) > 1  # members stopped at different epochs: some were frozen


class _Interrupt(Exception):
    """Raised by an epoch hook to stop a training midway, as a crash would."""


def test_an_interrupted_group_resumes_to_the_uninterrupted_result(arrays, tmp_path):
    uninterrupted = train_members(_jobs(arrays, tmp_path, "whole"))

    def stop(flow_name, flow, phase, epoch):
        if flow_name == "velocity" and phase == "main" and epoch == 2:
            raise _Interrupt

    jobs = _jobs(arrays, tmp_path, "cut")
    with pytest.raises(_Interrupt):
        train_members([jobs[0], jobs[1] | {"after_epoch": stop}])
    assert (jobs[1]["directory"] / "velocity-batched.ckpt").exists()
    assert not (jobs[1]["directory"] / "weights.pt").exists()
    resumed = train_members(jobs)
    for whole, cut in zip(uninterrupted, resumed, strict=True):
        expected, got = _weights(whole), _weights(cut)
        assert all(torch.equal(got[key], expected[key]) for key in expected)
        assert _history(cut) == _history(whole)


def test_trained_members_are_skipped(arrays, tmp_path):
    jobs = _jobs(arrays, tmp_path, "m", replace(RECIPE, max_epochs=1, refine=False))
    train_members(jobs[:1])
    written = (jobs[0]["directory"] / "weights.pt").stat().st_mtime_ns
    train_members(jobs[:2])
    assert (jobs[0]["directory"] / "weights.pt").stat().st_mtime_ns == written
    assert (jobs[1]["directory"] / "weights.pt").exists()


def test_only_cnf_members_trained_by_likelihood_are_batched(arrays, tmp_path):
    jobs = _jobs(arrays, tmp_path, "m")
    assert batchable(jobs)
    assert not batchable([job | {"architecture": MAFArchitecture()} for job in jobs])
    assert not batchable([jobs[0] | {"objective": FlowObjective("flow_matching")}, jobs[1]])
    assert not batchable([jobs[0], jobs[1] | {"recipe": replace(RECIPE, patience=3)}])
    positions, velocities = arrays
    assert not batchable([jobs[0], jobs[1] | {"positions": positions[:300],
                                              "velocities": velocities[:300]}])


@pytest.mark.gpu
def test_the_cuda_graph_step_trains_like_the_eager_one(arrays, tmp_path):
    """On CUDA ``compile`` captures the step as CUDA graphs; the members train as eagerly
    (to compiled rounding) and end with the same epochs."""
    recipe = replace(RECIPE, max_epochs=3, patience=3)
    eager = train_members([job | {"device": "cuda"} for job in
                           _jobs(arrays, tmp_path, "e", recipe)])
    graphs = train_members([job | {"device": "cuda"} for job in
                            _jobs(arrays, tmp_path, "g", replace(recipe, compile=True))])
    for a, b in zip(eager, graphs, strict=True):
        expected, got = _weights(a), _weights(b)
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], rtol=1e-3, atol=1e-4)
        assert _history(a)["velocity"]["train"].keys() == _history(b)["velocity"]["train"].keys()
