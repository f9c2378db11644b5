"""The classifier comparisons of upsamplers: multi-model (paper §5.3) and two-sample (§5.2).

Multi-model: every upsampler draws the same number of stars inside the selection window;
an N-class classifier learns to tell them apart; on test particles that no upsampler saw,
LP(C) = mean log p(C | x, v) ranks the upsamplers (eq. 12), and LP differences are
log-likelihood ratios (eqs. 13–14).

Two-sample: a binary classifier of reference rows against one upsampler's stars, scored
by the AUC on rows it did not train on (0.5 means indistinguishable). With the test
particles as reference this is the paper's "ultimate classifier"; the paper explains why
it starves for data, so it is a secondary number. With fresh draws from a known true
density as reference (the mock galaxy) it is not starved.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gflow_dist.evaluate.classifier import ClassifierSettings, TrainedClassifier, train_classifier
from gflow_dist.evaluate.scores import (
    Estimate,
    PosteriorSums,
    auc_stderr,
    binary_auc,
    class_pairs,
    one_vs_rest_auc,
)

MULTI_MODEL_CHECKPOINT = "multi_model.ckpt"
"""The multi-model classifier's checkpoint name in its work folder (keyed, see
:func:`~gflow_dist.evaluate.classifier.keyed_checkpoint`)."""


@dataclass
class MultiModelResult:
    """Outcome of the multi-model classifier test.

    Attributes:
        names: the upsamplers, in class order.
        log_posterior: LP(C) ± standard error per upsampler (eq. 12).
        differences: LP(a) − LP(b) ± paired standard error, keyed "a - b".
        auc: for N = 2 {"binary": AUC of p(second|x)}; else one-vs-rest AUC per upsampler,
            on the classifier's validation stars, each ± its standard error.
        test_log_posterior: (n_test, N) log p(C|x) of the test particles.
        classifier: the trained classifier (validation stars and labels inside).
    """

    names: list[str]
    log_posterior: dict[str, Estimate]
    differences: dict[str, Estimate]
    auc: dict[str, Estimate]
    test_log_posterior: np.ndarray
    classifier: TrainedClassifier

    def to_dict(self) -> dict[str, object]:
        return {
            "upsamplers": self.names,
            "log_posterior": {k: v.to_dict() for k, v in self.log_posterior.items()},
            "differences": {k: v.to_dict() for k, v in self.differences.items()},
            "auc": {k: v.to_dict() for k, v in self.auc.items()},
            "n_test": len(self.test_log_posterior),
            "n_validation": len(self.classifier.validation_labels),
            "best_validation_loss": self.classifier.history.best_validation,
        }


def summarize_posteriors(names: list[str], sums: PosteriorSums
                         ) -> tuple[dict[str, Estimate], dict[str, Estimate]]:
    """LP per upsampler and every pairwise difference from (possibly merged) sums."""
    scores = dict(zip(names, sums.log_posterior(), strict=True))
    differences = {f"{names[a]} - {names[b]}": sums.difference(a, b)
                   for a, b in class_pairs(len(names))}
    return scores, differences


def validation_auc(classifier: TrainedClassifier, names: list[str]) -> dict[str, Estimate]:
    """AUC ± standard error on the classifier's validation stars: for 2 upsamplers
    {"binary": AUC of p(second|x)}, else the one-vs-rest AUC of each upsampler."""
    probabilities = np.exp(classifier.log_posterior(classifier.validation_rows))
    labels = classifier.validation_labels
    if len(names) == 2:
        return {"binary": _auc_estimate(binary_auc(probabilities[:, 1], labels == 1),
                                        labels == 1)}
    return {name: _auc_estimate(auc, labels == c) for c, (name, auc) in
            enumerate(zip(names, one_vs_rest_auc(probabilities, labels), strict=True))}


def _auc_estimate(auc: float, positive: np.ndarray) -> Estimate:
    n_positive = int(positive.sum())
    return Estimate(auc, auc_stderr(auc, n_positive, len(positive) - n_positive))


def multi_model_test(samples: Mapping[str, np.ndarray], test_particles: np.ndarray,
                     settings: ClassifierSettings, seed: int, workdir: Path) -> MultiModelResult:
    """Run the multi-model classifier test.

    Args:
        samples: per upsampler, its (n, 6) stars inside the window [kpc, km/s].
        test_particles: (n_test, 6) held-out particles that no upsampler was fitted on.
        settings: classifier shape and budget.
        seed: seeds the classifier.
        workdir: holds the classifier's checkpoint (resumed on a rerun).
    """
    names = list(samples)
    if len(names) < 2:
        raise ValueError(f"the multi-model test needs at least 2 upsamplers, got {names}")
    classifier = train_classifier([samples[n] for n in names], settings, seed,
                                  workdir / MULTI_MODEL_CHECKPOINT,
                                  "classifier " + " vs ".join(names))
    test_output = classifier.log_posterior(test_particles)
    scores, differences = summarize_posteriors(names, PosteriorSums.of(test_output))
    return MultiModelResult(names, scores, differences, validation_auc(classifier, names),
                            test_output, classifier)


def two_sample_auc(reference: np.ndarray, generated: np.ndarray, settings: ClassifierSettings,
                   seed: int, checkpoint: Path, label: str) -> Estimate:
    """AUC ± standard error of a binary classifier of ``reference`` against ``generated``.

    Both sets are cut to the same size and halved: the classifier trains on the first
    halves (with its own validation split for early stopping) and the AUC is measured on
    the second halves, which it never saw.
    """
    size = min(len(reference), len(generated))
    if size < 8:
        raise ValueError(f"a two-sample test needs at least 8 rows per set, got {size}")
    rng = np.random.default_rng([seed, size])
    reference = reference[rng.permutation(len(reference))[:size]]
    generated = generated[rng.permutation(len(generated))[:size]]
    half = size // 2
    classifier = train_classifier([reference[:half], generated[:half]], settings, seed,
                                  checkpoint, label)
    held_out = np.concatenate([reference[half:], generated[half:]])
    is_generated = np.arange(len(held_out)) >= size - half
    scores = classifier.log_posterior(held_out)[:, 1]
    return _auc_estimate(binary_auc(scores, is_generated), is_generated)
