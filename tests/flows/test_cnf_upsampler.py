"""GalaxyFlow's CNF ensemble behind the upsampler interface, on the exact mock galaxy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gflow_dist import upsamplers
from gflow_dist.evaluate.truth import preprocessed_gaussian_log_prob
from gflow_dist.flows.cnf import standard_normal_log_prob
from gflow_dist.flows.cnf_upsampler import CNFUpsampler
from gflow_dist.flows.member import CNFArchitecture, train_member
from gflow_dist.flows.training import Recipe, train, validation_split
from tests.conftest import R_MAX, SUN


@pytest.fixture
def fitted(fitted_cnf):
    """The session's 2-member CNF on 2,000 mock particles (see conftest)."""
    return fitted_cnf


def test_cnf_beats_a_gaussian_on_held_out_particles(fitted, mock_split, mock_galaxy):
    train_half, test_half = mock_split
    cnf = fitted.log_prob(test_half.phase_space)
    gaussian = preprocessed_gaussian_log_prob(train_half, test_half, SUN, R_MAX)
    truth = mock_galaxy.log_prob(test_half.phase_space)
    gain = cnf - gaussian
    stderr = gain.std() / np.sqrt(len(gain))
    print(f"held-out NLL: truth {-truth.mean():.3f}, CNF {-cnf.mean():.3f}, "
          f"Gaussian {-gaussian.mean():.3f} nats")
    assert gain.mean() > 0.3
    assert gain.mean() > 5 * stderr


def test_samples_are_inside_the_window_exact_in_count_and_deterministic(fitted):
    stars = fitted.sample(3000, seed=7, batch_size=1024)
    assert stars.shape == (3000, 6)
    assert fitted.window.contains(stars).all()
    np.testing.assert_array_equal(stars, fitted.sample(3000, seed=7, batch_size=1024))
    assert not np.array_equal(stars, fitted.sample(3000, seed=8, batch_size=1024))
    np.testing.assert_array_equal(stars[:1000], fitted.sample(1000, seed=7, batch_size=1024))


def test_samples_follow_the_particles(fitted, mock_split):
    train_half, _ = mock_split
    stars = fitted.sample(20_000, seed=1)
    np.testing.assert_allclose(stars[:, 4].mean(), train_half.velocities[:, 1].mean(), atol=6.0)
    np.testing.assert_allclose(np.median(np.abs(stars[:, 2] - SUN[2])),
                               np.median(np.abs(train_half.positions[:, 2] - SUN[2])), rtol=0.2)


def test_log_prob_integrates_to_one_inside_the_sphere(fitted, mock_split, mock_galaxy):
    """Importance sampling against a proposal independent of the model.

    The proposal is half the exact mock galaxy (close to the model, so the weights stay
    small) and half uniform in the ball × a Gaussian three times wider than the data (so
    the weights stay bounded wherever the model spreads beyond the mock).
    """
    train_half, _ = mock_split
    rng = np.random.default_rng(0)
    n = 40_000
    direction = rng.normal(size=(n, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    positions = np.asarray(SUN) + direction * R_MAX * rng.uniform(size=(n, 1)) ** (1 / 3)
    mean, width = train_half.velocities.mean(0), 3.0 * train_half.velocities.std(0)
    broad = np.hstack([positions, mean + width * rng.normal(size=(n, 3))])
    draws = np.vstack([broad, mock_galaxy.sample(n, seed=1)])

    def log_broad(rows):
        velocity = (rows[:, 3:] - mean) / width
        return (-np.log(4 / 3 * np.pi * R_MAX**3) - 0.5 * (velocity**2).sum(1)
                - np.log(width).sum() - 1.5 * np.log(2 * np.pi))

    log_proposal = np.logaddexp(log_broad(draws), mock_galaxy.log_prob(draws)) - np.log(2)
    weights = np.exp(fitted.log_prob(draws) - log_proposal)
    estimate, stderr = weights.mean(), weights.std() / np.sqrt(len(weights))
    assert stderr < 0.02
    assert abs(estimate - 1.0) < 4 * stderr + 0.01, (estimate, stderr)


def test_log_prob_is_minus_infinity_outside_the_sphere(fitted):
    outside = np.array([[SUN[0] + R_MAX * 1.01, SUN[1], SUN[2], 0.0, 220.0, 0.0]])
    assert fitted.log_prob(outside)[0] == -np.inf


def test_ensemble_density_is_the_mean_of_member_densities(fitted, mock_split):
    _, test_half = mock_split
    rows = test_half.phase_space[:200]
    members = []
    for member in fitted.members:
        single = CNFUpsampler(SUN, R_MAX, ensemble_size=1)
        single.preprocessor, single.members = fitted.preprocessor, [member]
        members.append(single.log_prob(rows))
    expected = np.log(np.mean(np.exp(members), axis=0))
    np.testing.assert_allclose(fitted.log_prob(rows), expected, rtol=1e-6)


def test_save_load_round_trip_gives_the_same_samples_and_densities(fitted, mock_split, tmp_path):
    _, test_half = mock_split
    directory = fitted.save(tmp_path / "cnf")
    assert {p.suffix for p in directory.iterdir()} == {".json", ".pt"}
    loaded = upsamplers.load(directory)
    np.testing.assert_array_equal(loaded.sample(500, seed=3), fitted.sample(500, seed=3))
    np.testing.assert_array_equal(loaded.log_prob(test_half.phase_space[:300]),
                                  fitted.log_prob(test_half.phase_space[:300]))


def test_interrupted_training_resumes_to_the_uninterrupted_result(tmp_path):
    rng = np.random.default_rng(0)
    data = torch.from_numpy(rng.normal(size=(600, 3)).astype(np.float32))
    fit_rows, val_rows = validation_split(len(data), 0.2, seed=0)
    recipe = Recipe(max_epochs=4, patience=10, refine=True, batches_per_epoch=3)

    def fresh():
        torch.manual_seed(0)
        return CNFArchitecture(steps=4).build(0)

    def nll(flow, batch, context):
        return -flow.log_prob(batch, context).mean()

    calls = {"n": 0}

    def crashing_nll(flow, batch, context):
        calls["n"] += 1
        if calls["n"] == 14:  # inside the 2nd epoch of the refinement phase
            raise KeyboardInterrupt
        return nll(flow, batch, context)

    uninterrupted = fresh()
    expected = train(uninterrupted, nll, data[fit_rows], None, data[val_rows], None, recipe,
                     seed=1, checkpoint=tmp_path / "a.ckpt")
    resumed = fresh()
    with pytest.raises(KeyboardInterrupt):
        train(resumed, crashing_nll, data[fit_rows], None, data[val_rows], None, recipe, seed=1,
              checkpoint=tmp_path / "b.ckpt")
    history = train(resumed, nll, data[fit_rows], None, data[val_rows], None, recipe, seed=1,
                    checkpoint=tmp_path / "b.ckpt")
    assert history.to_dict() == expected.to_dict()
    for a, b in zip(uninterrupted.state_dict().values(), resumed.state_dict().values(),
                    strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_trained_member_is_not_retrained(tmp_path):
    rng = np.random.default_rng(1)
    rows = rng.normal(size=(200, 3))
    arguments = dict(positions=rows, velocities=rows[::-1].copy(),
                     architecture=CNFArchitecture(steps=2),
                     recipe=Recipe(max_epochs=1, patience=1, refine=False),
                     validation_fraction=0.2, seed=3, directory=tmp_path / "member")
    directory = train_member(**arguments)
    weights = (directory / "weights.pt").stat().st_mtime_ns
    assert (directory / "history.json").exists()
    train_member(**arguments)
    assert (directory / "weights.pt").stat().st_mtime_ns == weights


def test_standard_normal_log_prob():
    z = torch.zeros(1, 3)
    expected = torch.tensor([-1.5 * np.log(2 * np.pi)], dtype=torch.float32)
    torch.testing.assert_close(standard_normal_log_prob(z), expected)
