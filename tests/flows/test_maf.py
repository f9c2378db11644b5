"""The MAF ensemble (paper Appendix A) behind the upsampler interface, on the exact mock."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gflow_dist.config import RunConfig
from gflow_dist.errors import GflowError
from gflow_dist.evaluate.truth import preprocessed_gaussian_log_prob
from gflow_dist.flows.cnf import standard_normal_log_prob
from gflow_dist.flows.maf import MAFArchitecture, MAFUpsampler
from gflow_dist.flows.training import Recipe, train, validation_split
from gflow_dist.upsamplers.base import SPEC_FILE
from tests.conftest import R_MAX, SUN

SMALL = Recipe(max_epochs=30, patience=5, refine=False)
TINY = MAFArchitecture(transforms=2, hidden_layers=1, hidden_units=16)


@pytest.fixture(scope="module")
def fitted(mock_split):
    """A 2-member MAF trained briefly on 2,000 mock particles."""
    train_half, _ = mock_split
    return MAFUpsampler(SUN, R_MAX, recipe=SMALL, ensemble_size=2).fit(train_half, seed=5)


def test_maf_beats_a_gaussian_on_held_out_particles(fitted, mock_split, mock_galaxy):
    train_half, test_half = mock_split
    maf = fitted.log_prob(test_half.phase_space)
    gaussian = preprocessed_gaussian_log_prob(train_half, test_half, SUN, R_MAX)
    truth = mock_galaxy.log_prob(test_half.phase_space)
    gain = maf - gaussian
    stderr = gain.std() / np.sqrt(len(gain))
    print(f"held-out NLL: truth {-truth.mean():.3f}, MAF {-maf.mean():.3f}, "
          f"Gaussian {-gaussian.mean():.3f} nats")
    assert gain.mean() > 0.3
    assert gain.mean() > 5 * stderr


def test_transform_is_the_inverse_of_the_density_map():
    """x = T(z) for z ~ N(0, I), and log p(x | c) = log N(z) − log |det ∂T/∂z|."""
    torch.manual_seed(0)
    flow = TINY.build(3).double()
    z = torch.randn(4, 3, dtype=torch.float64)
    context = torch.randn(4, 3, dtype=torch.float64)
    with torch.no_grad():
        x = flow.transform(z, context)
        torch.testing.assert_close(flow.flow(context).transform(x), z)
        log_prob = flow.log_prob(x, context)
    for row in range(len(z)):
        jacobian = torch.autograd.functional.jacobian(
            lambda zi, c=context[row:row + 1]: flow.transform(zi[None], c)[0], z[row])
        expected = standard_normal_log_prob(z[row:row + 1]) - torch.linalg.slogdet(jacobian)[1]
        torch.testing.assert_close(log_prob[row:row + 1], expected)


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


def test_log_prob_is_minus_infinity_outside_the_sphere(fitted):
    outside = np.array([[SUN[0] + R_MAX * 1.01, SUN[1], SUN[2], 0.0, 220.0, 0.0]])
    assert fitted.log_prob(outside)[0] == -np.inf


def test_save_load_round_trip_gives_the_same_samples_and_densities(fitted, mock_split, tmp_path):
    _, test_half = mock_split
    directory = fitted.save(tmp_path / "maf")
    assert {p.suffix for p in directory.iterdir()} == {".json", ".pt"}
    spec = json.loads((directory / SPEC_FILE).read_text())
    assert spec["kind"] == "maf"
    assert spec["architecture"] == {"transforms": 5, "hidden_layers": 2, "hidden_units": 128}
    loaded = MAFUpsampler.from_saved(spec, directory)
    np.testing.assert_array_equal(loaded.sample(500, seed=3, batch_size=512),
                                  fitted.sample(500, seed=3, batch_size=512))
    np.testing.assert_array_equal(loaded.log_prob(test_half.phase_space[:300]),
                                  fitted.log_prob(test_half.phase_space[:300]))


def test_same_seed_fits_the_same_model(mock_split):
    train_half, test_half = mock_split
    recipe = Recipe(max_epochs=3, patience=5, refine=True)

    def fit(seed):
        model = MAFUpsampler(SUN, R_MAX, TINY, recipe, ensemble_size=1, max_train_particles=500)
        return model.fit(train_half, seed=seed).log_prob(test_half.phase_space[:200])

    np.testing.assert_array_equal(fit(2), fit(2))
    assert not np.array_equal(fit(2), fit(3))


def test_interrupted_training_resumes_to_the_uninterrupted_result(tmp_path):
    rng = np.random.default_rng(0)
    data = torch.from_numpy(rng.normal(size=(600, 3)).astype(np.float32))
    context = torch.from_numpy(rng.normal(size=(600, 3)).astype(np.float32))
    fit_rows, val_rows = validation_split(len(data), 0.2, seed=0)
    recipe = Recipe(max_epochs=4, patience=10, refine=True, batches_per_epoch=3)
    arguments = (data[fit_rows], context[fit_rows], data[val_rows], context[val_rows], recipe)

    def fresh():
        torch.manual_seed(0)
        return TINY.build(3)

    def nll(flow, batch, batch_context):
        return -flow.log_prob(batch, batch_context).mean()

    calls = {"n": 0}

    def crashing_nll(flow, batch, batch_context):
        calls["n"] += 1
        if calls["n"] == 22:  # 4 calls per epoch (3 steps + validation): refinement epoch 2
            raise KeyboardInterrupt
        return nll(flow, batch, batch_context)

    uninterrupted = fresh()
    expected = train(uninterrupted, nll, *arguments, seed=1, checkpoint=tmp_path / "a.ckpt")
    resumed = fresh()
    with pytest.raises(KeyboardInterrupt):
        train(resumed, crashing_nll, *arguments, seed=1, checkpoint=tmp_path / "b.ckpt")
    assert torch.load(tmp_path / "b.ckpt", weights_only=True)["phase_index"] == 1
    history = train(resumed, nll, *arguments, seed=1, checkpoint=tmp_path / "b.ckpt")
    assert history.to_dict() == expected.to_dict()
    for a, b in zip(uninterrupted.state_dict().values(), resumed.state_dict().values(),
                    strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_from_config_reads_the_maf_section():
    config = RunConfig.model_validate({"maf": {"transforms": 3, "hidden_units": 64,
                                               "ensemble_size": 4, "refine": False}})
    model = MAFUpsampler.from_config(config)
    assert model.architecture == MAFArchitecture(transforms=3, hidden_layers=2, hidden_units=64)
    assert model.ensemble_size == 4 and not model.recipe.refine and not model.recipe.compile


def test_compiled_training_is_refused():
    with pytest.raises(GflowError, match="compile"):
        MAFUpsampler(SUN, R_MAX, recipe=Recipe(compile=True))
