"""Repeated evaluations: seeds per repeat, how errors combine, and that they cover the truth."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from gflow_dist.evaluate.classifier import ClassifierSettings
from gflow_dist.evaluate.execution import InProcessTests
from gflow_dist.evaluate.repeats import (
    Sharing,
    combine,
    combine_entries,
    plan_repeats,
    repeat_seed,
)
from gflow_dist.evaluate.report import combine_repeats
from gflow_dist.evaluate.scores import auc_stderr, binary_auc
from gflow_dist.flows.training import Recipe
from tests.evaluate.test_evaluate import TruthUpsampler

TINY_CLASSIFIER = ClassifierSettings(hidden_units=(32, 32), validation_fraction=0.5,
                                     recipe=Recipe(batches_per_epoch=8, max_epochs=3,
                                                   patience=2, refine=False))


def test_repeat_zero_keeps_the_run_seed_and_the_others_are_distinct(tmp_path):
    assert repeat_seed(7, 0) == 7
    seeds = [repeat_seed(7, r) for r in range(6)] + [repeat_seed(8, r) for r in range(1, 6)]
    assert len(set(seeds)) == len(seeds)
    repeats = plan_repeats(7, 3, tmp_path)
    assert [r.workdir.name for r in repeats] == ["repeat-0", "repeat-1", "repeat-2"]
    assert len({r.classifier_seed for r in repeats}) == 3
    with pytest.raises(ValueError, match="at least 1 repeat"):
        plan_repeats(7, 0, tmp_path)


def test_one_repeat_measures_no_spread():
    estimate = combine([0.5], [0.01], Sharing.SHARED_REFERENCE)
    assert (estimate.value, estimate.within) == (0.5, 0.01)
    assert estimate.between is None and estimate.total is None and estimate.sigma() is None
    assert estimate.interval95 is None


def test_shared_reference_adds_the_spread_of_the_mean_to_the_reference_error():
    values, withins = [0.10, 0.14, 0.06, 0.12], [0.01, 0.02, 0.01, 0.02]
    estimate = combine(values, withins, Sharing.SHARED_REFERENCE)
    within = math.sqrt(np.mean(np.square(withins)))
    between = np.std(values, ddof=1)
    assert estimate.value == pytest.approx(0.105)
    assert estimate.within == pytest.approx(within)
    assert estimate.between == pytest.approx(between)
    assert estimate.total == pytest.approx(math.sqrt(within**2 + between**2 / 4))
    # Welch–Satterthwaite: between a pure spread (dof 3) and a pure within error (∞)
    assert 3 < estimate.dof < math.inf
    assert estimate.interval95 == pytest.approx(stats.t.ppf(0.975, estimate.dof) * estimate.total)
    assert estimate.per_repeat == tuple(values)
    only_spread = combine(values, [0.0] * 4, Sharing.SHARED_REFERENCE)
    assert only_spread.dof == pytest.approx(3)


def test_independent_repeats_average_down_by_the_larger_of_both_errors():
    calm = combine([1.0, 1.01, 0.99], [0.05, 0.05, 0.05], Sharing.INDEPENDENT)
    assert calm.total == pytest.approx(0.05 / math.sqrt(3)) and calm.dof == math.inf
    noisy = combine([1.0, 1.5, 0.5], [0.05, 0.05, 0.05], Sharing.INDEPENDENT)
    assert noisy.total == pytest.approx(0.5 / math.sqrt(3)) and noisy.dof == 2


def test_entries_sum_their_counts_and_an_infinite_repeat_makes_the_value_infinite():
    entries = [{"value": 0.2, "stderr": 0.01, "draw_count": 10, "zero_density_count": 0},
               {"value": 0.3, "stderr": 0.01, "draw_count": 12, "zero_density_count": 0}]
    combined = combine_entries(entries, Sharing.INDEPENDENT)
    assert combined["value"] == pytest.approx(0.25) and combined["draw_count"] == 22
    entries[1] = {"value": None, "stderr": None, "draw_count": 12, "zero_density_count": 3}
    infinite = combine_entries(entries, Sharing.INDEPENDENT)
    assert infinite["value"] is None and infinite["total"] is None
    assert infinite["zero_density_count"] == 3 and infinite["per_repeat"] == [0.2, None]


def test_the_auc_standard_error_matches_the_spread_of_simulated_aucs():
    rng = np.random.default_rng(0)
    n_pos, n_neg, shift = 300, 500, 0.8
    aucs = []
    for _ in range(400):
        scores = np.concatenate([rng.normal(shift, 1, n_pos), rng.normal(0, 1, n_neg)])
        aucs.append(binary_auc(scores, np.arange(n_pos + n_neg) < n_pos))
    expected = stats.norm.cdf(shift / np.sqrt(2))
    assert auc_stderr(expected, n_pos, n_neg) == pytest.approx(np.std(aucs), rel=0.15)


def test_identical_upsamplers_differ_by_zero_within_the_stated_interval(mock_galaxy, mock_split,
                                                                       tmp_path):
    """Two copies of one upsampler: the true LP difference is 0, and the 95 % interval of
    the total error covers it in at least 18 of 20 independently seeded evaluations."""
    _, test_half = mock_split
    models = {"a": TruthUpsampler(mock_galaxy), "b": TruthUpsampler(mock_galaxy)}
    runner = InProcessTests(shard_size=1500, batch_size=4096)
    covered, sigmas = 0, []
    for seed in range(20):
        repeats = plan_repeats(seed, 3, tmp_path / f"seed-{seed}")
        outcomes = runner.repeated_tests(models, 1500, test_half.phase_space, TINY_CLASSIFIER,
                                         repeats)
        difference = combine_repeats([o.result.to_dict() for o in outcomes])["differences"]["a - b"]
        assert difference["between"] > 0
        covered += abs(difference["value"]) <= difference["interval95"]
        sigmas.append(difference["value"] / difference["total"])
    print(f"covered {covered} of 20; value/total: {np.round(sigmas, 2)}")
    assert covered >= 18
