"""Scores of the classifier tests: log-posteriors with standard errors, and AUCs.

The multi-model score of upsampler C is LP(C) = mean_i log p(C | x_i, v_i) over the test
particles (paper eq. 12), with the standard error of that mean. LP(C₁) − LP(C₂) is a
log-likelihood ratio (eqs. 13–14), so pairs are compared with the standard error of the
*paired* difference: both scores come from the same test points, and their correlation
makes the two errors combined in quadrature the wrong error of the difference.

The sums are mergeable: shards of test particles each reduce their classifier outputs
to counts, sums and sums of squares, and :meth:`PosteriorSums.merge` adds them, so a
distributed evaluation gives the same numbers as one process.

References:
    arXiv:2211.11765, §5.2–5.3.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata


@dataclass(frozen=True)
class Estimate:
    """A mean and its standard error."""

    value: float
    stderr: float

    def to_dict(self) -> dict[str, float]:
        return {"value": self.value, "stderr": self.stderr}


@dataclass
class PosteriorSums:
    """Count, sums and sums of squares of log p(C|x) per class and of paired differences.

    Attributes:
        count: number of test points.
        total: (N,) Σ log p(C|x).
        squares: (N,) Σ log² p(C|x).
        pair_squares: (N, N) Σ (log p(C_a|x) − log p(C_b|x))².
    """

    count: int
    total: np.ndarray
    squares: np.ndarray
    pair_squares: np.ndarray

    @classmethod
    def of(cls, log_posterior: np.ndarray) -> PosteriorSums:
        """Reduce an (n, N) array of log p(C|x) to its sums."""
        values = np.asarray(log_posterior, dtype=np.float64)
        differences = values[:, :, None] - values[:, None, :]
        return cls(len(values), values.sum(0), (values**2).sum(0), (differences**2).sum(0))

    def merge(self, other: PosteriorSums) -> PosteriorSums:
        """The sums of both shards together."""
        return PosteriorSums(self.count + other.count, self.total + other.total,
                             self.squares + other.squares, self.pair_squares + other.pair_squares)

    @staticmethod
    def _estimate(total: float, squares: float, count: int) -> Estimate:
        mean = total / count
        variance = max(squares - count * mean**2, 0.0) / (count - 1) if count > 1 else np.nan
        return Estimate(float(mean), float(np.sqrt(variance / count)))

    def log_posterior(self) -> list[Estimate]:
        """LP(C) (eq. 12) and its standard error (std over √N_test), per class."""
        return [self._estimate(t, s, self.count) for t, s in zip(self.total, self.squares,
                                                                  strict=True)]

    def difference(self, a: int, b: int) -> Estimate:
        """LP(C_a) − LP(C_b) with the standard error of the paired difference."""
        return self._estimate(self.total[a] - self.total[b], self.pair_squares[a, b], self.count)


def binary_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for the boolean labels ``positive``.

    The Mann–Whitney statistic with mid-ranks for ties: 0.5 means indistinguishable.
    """
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("an AUC needs both positive and negative examples")
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def auc_stderr(auc: float, n_positive: int, n_negative: int) -> float:
    """Standard error of an AUC from ``n_positive`` and ``n_negative`` rows.

    Hanley & McNeil (1982, Radiology 143, 29), eq. 1, with their exponential
    approximations Q1 = A / (2 − A) and Q2 = 2A² / (1 + A).
    """
    q1, q2 = auc / (2.0 - auc), 2.0 * auc**2 / (1.0 + auc)
    variance = (auc * (1.0 - auc) + (n_positive - 1) * (q1 - auc**2)
                + (n_negative - 1) * (q2 - auc**2)) / (n_positive * n_negative)
    return float(np.sqrt(max(variance, 0.0)))


def one_vs_rest_auc(probabilities: np.ndarray, labels: np.ndarray) -> list[float]:
    """Per class c, the AUC of p(c|x) for separating class c from all the others."""
    return [binary_auc(probabilities[:, c], labels == c) for c in range(probabilities.shape[1])]


def class_pairs(count: int) -> list[tuple[int, int]]:
    """Every unordered pair (a, b), a < b, of ``count`` classes."""
    return list(itertools.combinations(range(count), 2))
