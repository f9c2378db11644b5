"""The evaluation's classifier tests on Ray: sharded draws, parallel repeats, merged LP sums."""

from __future__ import annotations

import numpy as np
import pytest

from gflow_dist.baselines.enbid import EnbidUpsampler
from gflow_dist.config import build_config
from gflow_dist.distributed.evaluation import RayClassifierTests
from gflow_dist.errors import GflowError
from gflow_dist.evaluate.classifier import ClassifierSettings
from gflow_dist.evaluate.comparisons import multi_model_test
from gflow_dist.evaluate.draws import (
    CLASSIFIER_STREAM,
    draw_for_evaluation,
    evaluation_plan,
    evaluation_seed,
)
from gflow_dist.evaluate.execution import InProcessTests
from gflow_dist.evaluate.repeats import plan_repeats
from gflow_dist.evaluate.report import combine_repeats
from gflow_dist.evaluate.scores import PosteriorSums
from gflow_dist.flows.training import Recipe
from tests.conftest import R_MAX, SUN

SETTINGS = ClassifierSettings(hidden_units=(64, 32), validation_fraction=0.5,
                              recipe=Recipe(batches_per_epoch=10, max_epochs=3, patience=2,
                                            refine=False))
N_SAMPLES = 3000
SEED = 7
CONFIG = build_config({"galaxy": {"source": "mock"},
                       "sample": {"shard_size": 700, "batch_size": 1024},
                       "ray": {"evaluation_shards": 3, "max_samplers": 2}})


def test_evaluation_plans_have_distinct_seeds_per_upsampler_and_run():
    plans = [evaluation_plan(3000, SEED, index, 700) for index in range(3)]
    assert [shard.count for shard in plans[0]] == [700, 700, 700, 700, 200]
    seeds = {shard.seed for plan in plans for shard in plan}
    assert len(seeds) == 15
    assert evaluation_plan(3000, SEED + 1, 0, 700).shard(0).seed != plans[0].shard(0).seed


def test_the_local_draw_is_the_shards_drawn_in_turn(saved_models):
    _, models = saved_models
    model = models["broad"]
    two_shards = draw_for_evaluation(model, 900, SEED, 1, 700)
    plan = evaluation_plan(900, SEED, 1, 700)
    np.testing.assert_array_equal(two_shards[:700], model.sample(700, plan.shard(0).seed))
    np.testing.assert_array_equal(two_shards[700:], model.sample(200, plan.shard(1).seed))
    assert not np.isin(two_shards[700:, 0], two_shards[:700, 0]).any()


@pytest.fixture(scope="module")
def saved_models(mock_split, tmp_path_factory):
    """Two simplified-EnBiD models with leaf-box (1/12) and 4× broader (1/3) kernels."""
    train_half, _ = mock_split
    folder = tmp_path_factory.mktemp("models")
    models = {"narrow": EnbidUpsampler(SUN, R_MAX, variance_factor=1 / 12),
              "broad": EnbidUpsampler(SUN, R_MAX, variance_factor=1 / 3)}
    return {name: model.fit(train_half, seed=0).save(folder / name)
            for name, model in models.items()}, models


@pytest.fixture(scope="module")
def remote_draws(ray_cluster, saved_models):
    _, models = saved_models
    return RayClassifierTests(CONFIG).draw(models, N_SAMPLES, SEED)


@pytest.fixture(scope="module")
def repeats(tmp_path_factory):
    return plan_repeats(SEED, 3, tmp_path_factory.mktemp("eval"))


@pytest.fixture(scope="module")
def distributed_outcomes(ray_cluster, saved_models, mock_split, repeats):
    """Three repeats run on Ray: on the 2-CPU test cluster they outnumber its CPUs."""
    _, test_half = mock_split
    _, models = saved_models
    return list(RayClassifierTests(CONFIG).repeated_tests(
        models, N_SAMPLES, test_half.phase_space, SETTINGS, repeats))


@pytest.fixture(scope="module")
def distributed_result(distributed_outcomes):
    return distributed_outcomes[0].result


@pytest.mark.ray
def test_the_ray_draw_is_the_local_draw(remote_draws, saved_models):
    _, models = saved_models
    assert list(remote_draws) == list(models)
    for index, (name, model) in enumerate(models.items()):
        np.testing.assert_array_equal(remote_draws[name], draw_for_evaluation(
            model, N_SAMPLES, SEED, index, CONFIG.sample.shard_size, CONFIG.sample.batch_size))


@pytest.mark.ray
def test_merged_shard_sums_equal_one_process_scoring_every_test_particle(distributed_result,
                                                                        mock_split):
    _, test_half = mock_split
    result = distributed_result
    whole = result.classifier.log_posterior(test_half.phase_space)
    np.testing.assert_allclose(result.test_log_posterior, whole, rtol=1e-9, atol=1e-12)
    sums = PosteriorSums.of(whole)
    for name, estimate in zip(result.names, sums.log_posterior(), strict=True):
        assert result.log_posterior[name].value == pytest.approx(estimate.value, rel=1e-9)
        assert result.log_posterior[name].stderr == pytest.approx(estimate.stderr, rel=1e-9)
    paired = sums.difference(0, 1)
    difference = result.differences["narrow - broad"]
    assert difference.value == pytest.approx(paired.value, rel=1e-9)
    assert difference.stderr == pytest.approx(paired.stderr, rel=1e-9)
    assert result.to_dict()["n_test"] == len(test_half)


@pytest.mark.ray
def test_distributed_test_equals_the_single_process_one_on_the_same_stars(
        distributed_result, remote_draws, mock_split, tmp_path):
    """A classifier trained in a Ray task and one trained here, on the same stars and seed,
    agree to float32 rounding (threads differ)."""
    _, test_half = mock_split
    assert all(len(rows) == N_SAMPLES for rows in remote_draws.values())
    local = multi_model_test(remote_draws, test_half.phase_space, SETTINGS,
                             evaluation_seed(SEED, CLASSIFIER_STREAM), tmp_path)
    remote = distributed_result
    # identical stars: the validation half is the same rows in the same order
    np.testing.assert_array_equal(remote.classifier.validation_rows,
                                  local.classifier.validation_rows)
    np.testing.assert_array_equal(remote.classifier.validation_labels,
                                  local.classifier.validation_labels)
    for name in remote.names:
        assert remote.log_posterior[name].value == pytest.approx(
            local.log_posterior[name].value, rel=1e-5)
    assert remote.auc["binary"].value == pytest.approx(local.auc["binary"].value, abs=1e-4)
    assert remote.classifier.history.best_validation == pytest.approx(
        local.classifier.history.best_validation, rel=1e-5)


@pytest.mark.ray
def test_ray_repeats_equal_the_single_process_repeats(distributed_outcomes, saved_models,
                                                      mock_split, repeats):
    """Each repeat has its own stars and classifier; in one process the same seeds give the
    same stars, and resuming the Ray-trained classifiers from their checkpoints gives the
    same scores to 1e-9, repeat by repeat and once combined."""
    _, test_half = mock_split
    _, models = saved_models
    local = list(InProcessTests(CONFIG.sample.shard_size, CONFIG.sample.batch_size)
                 .repeated_tests(models, N_SAMPLES, test_half.phase_space, SETTINGS, repeats))
    assert [o.repeat.index for o in distributed_outcomes] == [0, 1, 2]
    stars = [o.samples["narrow"] for o in distributed_outcomes]
    assert not np.isin(stars[1][:, 0], stars[0][:, 0]).any()  # a fresh draw per repeat
    for remote, here in zip(distributed_outcomes, local, strict=True):
        for name in models:
            np.testing.assert_array_equal(remote.samples[name], here.samples[name])
        np.testing.assert_allclose(remote.result.test_log_posterior,
                                   here.result.test_log_posterior, rtol=1e-9, atol=0)
    combined = [combine_repeats([o.result.to_dict() for o in outcomes])
                for outcomes in (distributed_outcomes, local)]
    for section in ("log_posterior", "differences"):
        for key, entry in combined[0][section].items():
            for field in ("value", "within", "between", "total"):
                assert entry[field] == pytest.approx(combined[1][section][key][field], rel=1e-9)
    assert len(set(combined[0]["log_posterior"]["narrow"]["per_repeat"])) == 3


@pytest.mark.ray
def test_a_classifier_gpu_request_the_cluster_cannot_hold_fails_naming_the_key(
        ray_cluster, saved_models, mock_split, tmp_path):
    _, test_half = mock_split
    _, models = saved_models
    config = build_config({"galaxy": {"source": "mock"},
                           "ray": {"num_gpus_per_classifier": 64}})
    with pytest.raises(GflowError, match="ray.num_gpus_per_classifier=64"):
        next(RayClassifierTests(config).repeated_tests(
            models, N_SAMPLES, test_half.phase_space, SETTINGS, plan_repeats(SEED, 1, tmp_path)))
