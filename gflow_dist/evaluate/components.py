"""Fine structure: how much of each labelled component of a known galaxy a model keeps.

The built-in mock galaxy is a labelled mixture p = Σ_k w_k p_k (thin and thick disks, a
Hercules-like moving group, a halo and a cold stellar stream), so two scores can be given
per component for every upsampler q:

- the component's KL, E_{x ~ p_k}[ln p(x) − ln q(x)] in nats, from fresh draws of that
  component alone; its w_k-weighted sum over the components is KL(p ‖ q). A model that
  misses a component scores high on it even when its total KL hardly moves.
- the reproduced share, Q(R_k) / P(R_k): the share of the model's stars that fall in the
  component's region R_k = {x : w_k p_k(x) > p(x) / 2} (where the component holds most of
  the density) over the truth's share there. 1 means as many stars there as the truth; a
  model that smooths the component away scores near 0, one that leaks stars into it > 1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from gflow_dist.data.mock import MockGalaxy
from gflow_dist.evaluate.truth import kl_divergence
from gflow_dist.upsamplers.base import Upsampler

COMPONENT_DRAWS = 5_000
"""Fresh draws of each component that its KL is estimated on."""

TRUTH_DRAWS = 400_000
"""Fresh draws of the whole galaxy that the truth's share of every region comes from."""


def in_component_region(galaxy: MockGalaxy, rows: np.ndarray) -> np.ndarray:
    """(K, n) booleans: whether each row lies in each component's region R_k."""
    log_terms = galaxy.component_log_probs(rows)
    return log_terms > galaxy.log_prob(rows) - math.log(2.0)


def _share(counts: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    share = counts / n
    return share, np.sqrt(share * (1 - share) / n)


def reproduced_shares(galaxy: MockGalaxy, stars: np.ndarray, truth_share: np.ndarray,
                      truth_error: np.ndarray) -> dict[str, dict[str, float]]:
    """Q(R_k)/P(R_k) ± its standard error (binomial errors of both shares) per component."""
    counts = in_component_region(galaxy, stars).sum(axis=1)
    model_share, model_error = _share(counts, len(stars))
    ratio = model_share / truth_share
    with np.errstate(divide="ignore", invalid="ignore"):
        error = ratio * np.sqrt((model_error / model_share) ** 2 + (truth_error / truth_share) ** 2)
    # No star in the region: one star's worth, the resolution of the measurement.
    error = np.where(counts > 0, error, 1.0 / (len(stars) * truth_share))
    return {name: {"value": float(r), "stderr": float(e)}
            for name, r, e in zip(galaxy.component_names, ratio, error, strict=True)}


def component_kl(galaxy: MockGalaxy, model: Upsampler, draws: Mapping[str, np.ndarray]
                 ) -> dict[str, dict[str, Any]]:
    """E_{p_k}[ln p − ln q] ± stderr per component, over the draws inside the model's window.

    None (infinite) where the model has zero density at some draw, as compact kernels do.
    """
    scores = {}
    for name, rows in draws.items():
        rows = rows[model.window.contains(rows)]
        log_model = model.log_prob(rows)
        zero = int(np.isneginf(log_model).sum())
        if zero:
            scores[name] = {"value": None, "stderr": None, "zero_density_count": zero}
            continue
        value, error = kl_divergence(galaxy.log_prob(rows), log_model)
        scores[name] = {"value": value, "stderr": error, "zero_density_count": 0}
    return scores


def component_scores(galaxy: MockGalaxy, models: Mapping[str, Upsampler],
                     stars: Mapping[str, np.ndarray], seed: int) -> dict[str, Any]:
    """Per component: its weight and truth share ± stderr, and each model's KL and reproduced
    share.

    Args:
        galaxy: the labelled truth.
        models: the fitted upsamplers; those without a density get no KL.
        stars: each model's (n, 6) stars inside its window [kpc, km/s].
        seed: seeds the fresh truth draws.
    """
    names = galaxy.component_names
    truth = galaxy.sample(TRUTH_DRAWS, seed)
    truth_share, truth_error = _share(in_component_region(galaxy, truth).sum(axis=1), len(truth))
    draws = {name: galaxy.sample_component(name, COMPONENT_DRAWS, seed + 1 + k)
             for k, name in enumerate(names)}
    weights = dict(zip(names, _weights(galaxy), strict=True))
    report: dict[str, Any] = {
        "components": {name: {"weight": weights[name],
                              "truth_share": {"value": float(share), "stderr": float(error)}}
                       for name, share, error in zip(names, truth_share, truth_error,
                                                     strict=True)},
        "kl_nats": {}, "reproduced_share": {},
    }
    for name, model in models.items():
        report["reproduced_share"][name] = reproduced_shares(galaxy, stars[name], truth_share,
                                                             truth_error)
        if model.has_density:
            report["kl_nats"][name] = component_kl(galaxy, model, draws)
    return report


def _weights(galaxy: MockGalaxy) -> list[float]:
    return [getattr(galaxy, f"{name}_weight") for name in galaxy.component_names]
