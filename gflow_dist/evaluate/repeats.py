"""Repeated evaluations and errors that cover what varies between them.

One classifier test has three sources of noise: the test particles it is scored on, the
stars each upsampler drew for it, and the classifier's own training (its initial weights
and minibatch order). The standard error of LP(C) over the test particles (paper eq. 12)
covers only the first. So the evaluation runs R independent *repeats*, each with its own
star draw, classifier initialisation and minibatch order, all from seeds derived from the
run seed (:func:`repeat_seed`), and every score is reported as a
:class:`RepeatedEstimate`:

- ``value``: the mean over the repeats;
- ``within``: the root-mean-square of the repeats' own standard errors;
- ``between``: the sample standard deviation of the per-repeat values (None for R = 1);
- ``total``: the standard error of ``value`` from both (None for R = 1, where the draw
  and classifier variance is not measured).

How they combine depends on what the repeats share (:func:`combine`):

- ``Sharing.SHARED_REFERENCE``: scores on the same reference rows in every repeat (LP(C) and its
  differences on the test particles). The reference's noise is common to every repeat,
  so averaging repeats does not shrink it, and the spread between repeats measures the
  rest: total² = within² + between² / R.
- ``Sharing.INDEPENDENT``: every repeat scores fresh rows (KL on fresh truth draws, a
  classifier's AUC on its own validation stars, reproduced shares of fresh stars). Each
  repeat's own error already covers its draw, and the spread between repeats is taken
  instead where it is the larger (a classifier's training adds variance its AUC error
  does not see): total² = max(within², between²) / R.

``dof`` is the effective number of degrees of freedom of ``total`` (Welch–Satterthwaite;
the within-repeat part, from thousands of rows, counts as infinite), and ``interval95``
the half-width of the two-sided 95 % Student-t interval, which is wider than 1.96 ×
total when only a few repeats measure the spread.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from gflow_dist.evaluate.draws import CLASSIFIER_STREAM, evaluation_seed

REPEAT_STREAM = 5000
"""Repeat r ≥ 1 draws from ``evaluation_seed(seed, REPEAT_STREAM + r)``."""


def repeat_seed(seed: int, repeat: int) -> int:
    """The seed that repeat ``repeat`` of a run seeded with ``seed`` uses in place of it.

    Repeat 0 uses the run seed itself, so a single-repeat evaluation draws the same stars
    and trains the same classifier as before repeats existed.
    """
    if repeat < 0:
        raise ValueError(f"repeat must be ≥ 0, got {repeat}")
    return seed if repeat == 0 else evaluation_seed(seed, REPEAT_STREAM + repeat)


class Sharing(Enum):
    """What the repeats of a score have in common (see the module docstring)."""

    SHARED_REFERENCE = "shared_reference"
    INDEPENDENT = "independent"


@dataclass(frozen=True)
class RepeatedEstimate:
    """A score over R repeats with its errors (see the module docstring).

    Attributes:
        value: the mean of ``per_repeat``.
        within: root-mean-square of the repeats' own standard errors.
        between: sample standard deviation of ``per_repeat``; None for one repeat.
        total: standard error of ``value``; None for one repeat.
        dof: effective degrees of freedom of ``total`` (inf where the within part rules).
        per_repeat: the value of every repeat, in repeat order.
    """

    value: float
    within: float
    between: float | None
    total: float | None
    dof: float | None
    per_repeat: tuple[float, ...]

    @property
    def repeats(self) -> int:
        return len(self.per_repeat)

    @property
    def interval95(self) -> float | None:
        """Half-width of the two-sided 95 % interval: t(0.975, dof) × total."""
        if self.total is None or self.dof is None:
            return None
        return float(stats.t.ppf(0.975, self.dof) * self.total)

    def sigma(self) -> float | None:
        """value / total: how many total errors ``value`` lies from zero."""
        if self.total is None:
            return None
        return self.value / self.total if self.total > 0 else math.copysign(math.inf, self.value)

    def to_dict(self) -> dict[str, object]:
        return {"value": self.value, "within": self.within, "between": self.between,
                "total": self.total, "dof": self.dof, "interval95": self.interval95,
                "per_repeat": list(self.per_repeat)}


def combine(values: Sequence[float], withins: Sequence[float],
            sharing: Sharing) -> RepeatedEstimate:
    """The :class:`RepeatedEstimate` of per-repeat ``values`` and their standard errors."""
    values_array = np.asarray(values, dtype=np.float64)
    within_array = np.asarray(withins, dtype=np.float64)
    if values_array.ndim != 1 or len(values_array) == 0 or within_array.shape != values_array.shape:
        raise ValueError(f"need one value and one error per repeat, got {len(values_array)} "
                         f"values and {len(within_array)} errors")
    count = len(values_array)
    value = float(values_array.mean())
    within = float(np.sqrt(np.mean(within_array**2)))
    if count == 1:
        return RepeatedEstimate(value, within, None, None, None, (value,))
    between = float(values_array.std(ddof=1))
    spread = between**2 / count
    if sharing is Sharing.SHARED_REFERENCE:
        total_squared = within**2 + spread
        dof = _welch_dof(total_squared, spread, count - 1)
    else:
        total_squared = max(within**2, between**2) / count
        dof = math.inf if within >= between else float(count - 1)
    return RepeatedEstimate(value, within, between, math.sqrt(total_squared), dof,
                            tuple(float(v) for v in values_array))


def _welch_dof(total_squared: float, spread: float, spread_dof: int) -> float:
    """Welch–Satterthwaite degrees of freedom of total² = within² (dof ∞) + spread."""
    if spread <= 0.0:
        return math.inf
    return total_squared**2 / (spread**2 / spread_dof)


@dataclass(frozen=True)
class Repeat:
    """One repeat of the evaluation.

    Attributes:
        index: its position, 0 to R − 1.
        seed: :func:`repeat_seed` of the run seed; every draw and classifier of the repeat
            derives its seed from this one as a single evaluation does from the run seed.
        workdir: where its classifiers checkpoint (one folder per repeat, since a keyed
            checkpoint removes the other keys of its folder).
    """

    index: int
    seed: int
    workdir: Path

    @property
    def classifier_seed(self) -> int:
        """Seeds the multi-model classifier's weights, validation split and minibatches."""
        return evaluation_seed(self.seed, CLASSIFIER_STREAM)


def plan_repeats(seed: int, count: int, workdir: Path) -> list[Repeat]:
    """The ``count`` repeats of a run seeded with ``seed``, checkpointing under ``workdir``."""
    if count < 1:
        raise ValueError(f"an evaluation needs at least 1 repeat, got {count}")
    return [Repeat(r, repeat_seed(seed, r), workdir / f"repeat-{r}") for r in range(count)]


def combine_entries(entries: Sequence[Mapping[str, Any]], sharing: Sharing) -> dict[str, Any]:
    """One report entry from the repeats' entries ``{"value", "stderr", counts…}``.

    The result is :meth:`RepeatedEstimate.to_dict` plus every other key summed over the
    repeats (counts of rows, of zero-density rows). A repeat whose value is None (an
    infinite KL: the model has zero density at some rows) makes the value None too.
    """
    counts = {key: sum(entry[key] for entry in entries)
              for key in entries[0] if key not in ("value", "stderr")}
    if any(entry["value"] is None for entry in entries):
        return {"value": None, "within": None, "between": None, "total": None, "dof": None,
                "interval95": None, "per_repeat": [entry["value"] for entry in entries],
                **counts}
    estimate = combine([entry["value"] for entry in entries],
                       [entry["stderr"] for entry in entries], sharing)
    return estimate.to_dict() | counts
