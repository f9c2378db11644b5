"""Flow matching: the simulation-free objective for the CNF's field (cnf.objective)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from gflow_dist import upsamplers
from gflow_dist.config import load_config
from gflow_dist.errors import GflowError
from gflow_dist.flows.cnf_upsampler import CNFUpsampler
from gflow_dist.flows.flow_matching import flow_matching_loss
from gflow_dist.flows.maf import MAFUpsampler
from gflow_dist.flows.member import CNFArchitecture, FlowObjective, train_member
from gflow_dist.flows.training import Recipe, train, validation_split
from tests.conftest import R_MAX, SUN

MEAN = np.array([1.0, -0.5, 0.3])
SIGMA = np.array([0.5, 1.5, 1.0])


def _gaussian_rows(n: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy((MEAN + SIGMA * rng.standard_normal((n, 3))).astype(np.float32))


def _gaussian_log_prob(rows: torch.Tensor) -> np.ndarray:
    z = (rows.double().numpy() - MEAN) / SIGMA
    return -0.5 * (z**2).sum(1) - np.log(SIGMA).sum() - 1.5 * math.log(2 * math.pi)


def _kl(flow: torch.nn.Module, rows: torch.Tensor) -> float:
    with torch.no_grad():
        return float(np.mean(_gaussian_log_prob(rows) - flow.log_prob(rows).double().numpy()))


def test_flow_matching_learns_a_known_density_read_by_the_exact_trace(tmp_path):
    """Trained only by flow matching, the RK4 density with exact trace matches the truth."""
    data = _gaussian_rows(4000, seed=0)
    held_out = _gaussian_rows(2000, seed=1)
    fit_rows, val_rows = validation_split(len(data), 0.2, seed=0)
    torch.manual_seed(0)
    flow = CNFArchitecture().build(0)
    untrained = _kl(flow, held_out)
    history = train(flow, flow_matching_loss, data[fit_rows], None, data[val_rows], None,
                    Recipe(max_epochs=100, patience=100), seed=2,
                    checkpoint=tmp_path / "fm.ckpt")
    trained = _kl(flow, held_out)
    print(f"KL untrained {untrained:.3f}, after flow matching {trained:.4f} nats")
    assert untrained > 0.5
    assert trained < 0.05  # 0.027 measured
    assert history.validation["main"][-1] < history.validation["main"][0]


def test_flow_matching_noise_is_seeded_so_a_resumed_training_is_exact(tmp_path):
    data = _gaussian_rows(600, seed=3)
    fit_rows, val_rows = validation_split(len(data), 0.2, seed=0)
    recipe = Recipe(max_epochs=4, patience=10, refine=True, batches_per_epoch=3)

    def fresh():
        torch.manual_seed(0)
        return CNFArchitecture(steps=4).build(0)

    calls = {"n": 0}

    def crashing_loss(flow, batch, context):
        calls["n"] += 1
        if calls["n"] == 14:  # inside the 2nd epoch of the refinement phase
            raise KeyboardInterrupt
        return flow_matching_loss(flow, batch, context)

    uninterrupted = fresh()
    expected = train(uninterrupted, flow_matching_loss, data[fit_rows], None, data[val_rows],
                     None, recipe, seed=1, checkpoint=tmp_path / "a.ckpt")
    resumed = fresh()
    with pytest.raises(KeyboardInterrupt):
        train(resumed, crashing_loss, data[fit_rows], None, data[val_rows], None, recipe,
              seed=1, checkpoint=tmp_path / "b.ckpt")
    torch.manual_seed(12345)  # the global generator's state must not matter
    history = train(resumed, flow_matching_loss, data[fit_rows], None, data[val_rows], None,
                    recipe, seed=1, checkpoint=tmp_path / "b.ckpt")
    assert history.to_dict() == expected.to_dict()
    for a, b in zip(uninterrupted.state_dict().values(), resumed.state_dict().values(),
                    strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_member_fine_tunes_by_likelihood_after_flow_matching(tmp_path):
    rng = np.random.default_rng(1)
    rows = rng.normal(size=(300, 3))
    directory = train_member(
        rows, rows[::-1].copy(), CNFArchitecture(steps=2), Recipe(max_epochs=3, refine=True),
        0.2, seed=3, directory=tmp_path / "member",
        objective=FlowObjective("flow_matching", likelihood_finetune_epochs=2))
    history = json.loads((directory / "history.json").read_text())
    for flow in ("position", "velocity"):
        assert list(history[flow]["train"]) == [
            "flow_matching main", "flow_matching refine",
            "likelihood_finetune main", "likelihood_finetune refine"]
        assert len(history[flow]["train"]["likelihood_finetune main"]) == 2
        assert (directory / f"{flow}-finetune.ckpt").exists()
    # The fine-tune's best validation loss is a negative log-likelihood, not a flow-matching one.
    best = history["position"]["best_validation"]
    assert best == min(history["position"]["validation"]["likelihood_finetune main"]
                       + history["position"]["validation"]["likelihood_finetune refine"])


def test_config_selects_the_objective_and_the_model_remembers_it(tmp_path, mock_split):
    config = load_config(None, ["cnf.objective=flow_matching",
                                "cnf.likelihood_finetune_epochs=1", "cnf.max_epochs=2",
                                "cnf.ensemble_size=1", "cnf.solver_steps=4", "cnf.compile=false"])
    model = upsamplers.create("cnf", config)
    assert model.objective == FlowObjective("flow_matching", 1)
    train_half, test_half = mock_split
    model.fit(train_half, seed=0)
    loaded = upsamplers.load(model.save(tmp_path / "cnf"))
    assert loaded.objective == model.objective
    rows = test_half.phase_space[:200]
    np.testing.assert_array_equal(loaded.log_prob(rows), model.log_prob(rows))
    assert load_config(None).cnf.objective == "likelihood"  # the paper's objective by default


def test_only_flows_with_a_vector_field_train_by_flow_matching():
    with pytest.raises(GflowError, match="flow matching"):
        MAFUpsampler(SUN, R_MAX, objective=FlowObjective("flow_matching"))
    assert CNFUpsampler(SUN, R_MAX, objective=FlowObjective("flow_matching")).objective.kind \
        == "flow_matching"
