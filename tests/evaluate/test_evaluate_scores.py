"""Log-posterior scores, their standard errors, mergeable sums and AUCs."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm

from gflow_dist.evaluate.scores import PosteriorSums, binary_auc, one_vs_rest_auc


def _fixed_classifier_output(n: int = 5000, seed: int = 0) -> np.ndarray:
    """(n, 3) log-softmax outputs of a fixed, made-up classifier."""
    logits = np.random.default_rng(seed).normal([0.5, 0.0, -1.0], [1.0, 2.0, 0.5], (n, 3))
    return logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)


def test_log_posterior_is_the_mean_and_its_standard_error_matches_a_bootstrap():
    output = _fixed_classifier_output()
    sums = PosteriorSums.of(output)
    rng = np.random.default_rng(1)
    resamples = rng.integers(len(output), size=(2000, len(output)))
    for c, estimate in enumerate(sums.log_posterior()):
        assert estimate.value == pytest.approx(output[:, c].mean(), rel=1e-12)
        bootstrap = output[resamples, c].mean(axis=1).std()
        assert estimate.stderr == pytest.approx(bootstrap, rel=0.08)


def test_paired_difference_error_matches_a_bootstrap():
    output = _fixed_classifier_output()
    sums = PosteriorSums.of(output)
    difference = sums.difference(0, 1)
    assert difference.value == pytest.approx((output[:, 0] - output[:, 1]).mean(), rel=1e-12)
    rng = np.random.default_rng(2)
    resamples = rng.integers(len(output), size=(2000, len(output)))
    bootstrap = (output[resamples, 0] - output[resamples, 1]).mean(axis=1).std()
    assert difference.stderr == pytest.approx(bootstrap, rel=0.08)
    lp = sums.log_posterior()
    unpaired = np.hypot(lp[0].stderr, lp[1].stderr)
    assert abs(difference.stderr - unpaired) > 0.1 * unpaired  # the correlation matters


def test_merged_shard_sums_equal_the_whole():
    output = _fixed_classifier_output()
    whole = PosteriorSums.of(output)
    shards = [PosteriorSums.of(part) for part in np.array_split(output, 7)]
    merged = shards[0]
    for shard in shards[1:]:
        merged = merged.merge(shard)
    for a, b in zip(whole.log_posterior(), merged.log_posterior(), strict=True):
        assert a.value == pytest.approx(b.value, rel=1e-12)
        assert a.stderr == pytest.approx(b.stderr, rel=1e-9)
    assert whole.difference(2, 0).stderr == pytest.approx(merged.difference(2, 0).stderr,
                                                          rel=1e-9)


def test_auc_limits_ties_and_a_known_gaussian_value():
    labels = np.array([0, 0, 1, 1], dtype=bool)
    assert binary_auc(np.array([0.1, 0.2, 0.8, 0.9]), labels) == 1.0
    assert binary_auc(np.array([0.9, 0.8, 0.2, 0.1]), labels) == 0.0
    assert binary_auc(np.ones(4), labels) == 0.5
    rng = np.random.default_rng(3)
    shift = 1.0
    scores = np.concatenate([rng.normal(0, 1, 20000), rng.normal(shift, 1, 20000)])
    positive = np.arange(40000) >= 20000
    assert binary_auc(scores, positive) == pytest.approx(norm.cdf(shift / np.sqrt(2)), abs=0.01)
    with pytest.raises(ValueError, match="both positive and negative"):
        binary_auc(scores[:3], np.ones(3, dtype=bool))


def test_one_vs_rest_auc_singles_out_the_separable_class():
    rng = np.random.default_rng(4)
    labels = np.repeat([0, 1, 2], 1000)
    logits = rng.normal(size=(3000, 3))
    logits[labels == 2, 2] += 4.0
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    auc = one_vs_rest_auc(probabilities, labels)
    assert auc[2] > 0.95
    assert auc[0] < 0.9 and auc[1] < 0.9
    assert auc[0] == pytest.approx(auc[1], abs=0.05)  # classes 0 and 1 are exchangeable
