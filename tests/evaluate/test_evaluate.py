"""The classifier tests and the report, with upsamplers whose quality is known.

``TruthUpsampler`` returns fresh draws of the mock galaxy, the best any upsampler can do;
``JitterUpsampler`` returns train particles moved by a tiny Gaussian kernel, the clumpiest.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy.special import logsumexp

from gflow_dist.baselines.enbid import EnbidUpsampler
from gflow_dist.config import build_config
from gflow_dist.data.ingest import mock_galaxy as configured_mock_galaxy
from gflow_dist.data.mock import MockGalaxy
from gflow_dist.data.particles import ParticleSet
from gflow_dist.evaluate.classifier import ClassifierSettings
from gflow_dist.evaluate.comparisons import multi_model_test, two_sample_auc
from gflow_dist.evaluate.components import COMPONENT_DRAWS, component_scores
from gflow_dist.evaluate.report import REPORT_JSON, REPORT_MD, evaluate
from gflow_dist.flows.training import Recipe
from gflow_dist.sample.window import SelectionWindow
from gflow_dist.upsamplers.base import Upsampler
from tests.conftest import R_MAX, SUN

SMALL_CLASSIFIER = ClassifierSettings(hidden_units=(512, 256, 64), validation_fraction=0.5,
                                      recipe=Recipe(batches_per_epoch=50, max_epochs=30,
                                                    patience=4, refine=False))

PAPER_SHAPED_CLASSIFIER = ClassifierSettings(
    recipe=Recipe(batches_per_epoch=50, max_epochs=8, patience=3, refine=False))
"""The paper's [2048, 1024, 128, 128] LeakyReLU MLP and half validation, on a CI budget."""


class TruthUpsampler(Upsampler):
    """Fresh exact draws of the mock galaxy; its density is the truth."""

    kind = "truth"

    def __init__(self, galaxy: MockGalaxy) -> None:
        self.galaxy = galaxy
        self.window = SelectionWindow(SUN, R_MAX)

    @classmethod
    def from_config(cls, config):
        return cls(configured_mock_galaxy(config))

    def fit(self, particles, seed, workdir=None, runner=None):
        return self

    def propose(self, count: int, rng: np.random.Generator) -> np.ndarray:
        return self.galaxy.sample(count, int(rng.integers(2**31)))

    def log_prob(self, phase_space: np.ndarray) -> np.ndarray:
        return self.galaxy.log_prob(phase_space)

    def spec(self) -> dict[str, Any]:
        return {"sun_position_kpc": list(SUN), "r_max_kpc": R_MAX}

    def save_weights(self, directory: Path) -> None:
        """The truth is analytic: there are no weights to write."""

    @classmethod
    def from_saved(cls, spec, directory):
        return cls(MockGalaxy(tuple(spec["sun_position_kpc"]), spec["r_max_kpc"]))


class JitterUpsampler(TruthUpsampler):
    """Train particles, each moved by a Gaussian of 1 pc and 0.1 km/s."""

    kind = "jitter"
    has_density = False

    def fit(self, particles: ParticleSet, seed, workdir=None, runner=None):
        self.particles = particles.phase_space
        return self

    def propose(self, count: int, rng: np.random.Generator) -> np.ndarray:
        parents = self.particles[rng.integers(len(self.particles), size=count)]
        return parents + rng.normal(0, [0.001] * 3 + [0.1] * 3, parents.shape)

    def log_prob(self, phase_space: np.ndarray) -> np.ndarray:
        raise NotImplementedError("no density")

    def save_weights(self, directory: Path) -> None:
        np.save(directory / "particles.npy", self.particles)

    @classmethod
    def from_saved(cls, spec, directory):
        model = super().from_saved(spec, directory)
        model.particles = np.load(directory / "particles.npy")
        return model


@pytest.fixture(scope="module")
def known_models(mock_galaxy, mock_split):
    train_half, _ = mock_split
    return {"truth": TruthUpsampler(mock_galaxy),
            "jitter": JitterUpsampler(mock_galaxy).fit(train_half, 0)}


def test_known_answer_upsamplers_save_and_load(known_models, tmp_path):
    for name, model in known_models.items():
        model.save(tmp_path / name)
        spec = json.loads((tmp_path / name / "spec.json").read_text())
        loaded = type(model).from_saved(spec, tmp_path / name)
        np.testing.assert_array_equal(loaded.sample(100, seed=4), model.sample(100, seed=4))
    config = build_config({"galaxy": {"source": "mock"}})
    assert TruthUpsampler.from_config(config).galaxy.r_max_kpc == R_MAX


def test_fresh_truth_draws_score_at_least_as_well_as_jittered_particles(known_models, mock_split,
                                                                        tmp_path):
    _, test_half = mock_split
    samples = {name: model.sample(20_000, seed=3) for name, model in known_models.items()}
    result = multi_model_test(samples, test_half.phase_space, SMALL_CLASSIFIER, 0, tmp_path)
    truth, jitter = result.log_posterior["truth"], result.log_posterior["jitter"]
    difference = result.differences["truth - jitter"]
    print(f"LP truth {truth}, jitter {jitter}, difference {difference}")
    assert difference.value == pytest.approx(truth.value - jitter.value, rel=1e-9)
    assert difference.value > 3 * difference.stderr
    assert result.auc["binary"].value > 0.6  # jittered particles are clumpy, hence separable
    assert 0 < result.auc["binary"].stderr < 0.02
    assert result.test_log_posterior.shape == (len(test_half), 2)


def test_two_sample_auc_is_near_one_half_for_identical_distributions(mock_galaxy, tmp_path):
    a, b = mock_galaxy.sample(6000, 1), mock_galaxy.sample(6000, 2)
    auc = two_sample_auc(a, b, SMALL_CLASSIFIER, 0, tmp_path / "c.ckpt", "same vs same")
    assert abs(auc.value - 0.5) < 0.05
    assert abs(auc.value - 0.5) < 4 * auc.stderr


def small_config(**evaluate: Any):
    return build_config({
        "galaxy": {"source": "mock"},
        "evaluate": {"samples_per_particle": 5, "hidden_units": [256, 128],
                     "batches_per_epoch": 20, "max_epochs": 10, "patience": 3,
                     "refine": False, **evaluate},
    })


def test_evaluate_writes_the_report_with_truth_scores(known_models, mock_split, tmp_path,
                                                      caplog):
    """One repeat: the report says the draw and classifier spread is not measured."""
    train_half, test_half = mock_split
    config = small_config()
    with caplog.at_level(logging.INFO, logger="gflow_dist.evaluate.report"):
        report = evaluate(config, known_models, train_half, test_half, tmp_path)
    written = json.loads((tmp_path / REPORT_JSON).read_text())
    assert written["upsamplers"] == ["truth", "jitter"]
    assert written["repeats"] == 1
    assert set(written["log_posterior"]) == {"truth", "jitter"}
    difference = written["differences"]["truth - jitter"]
    assert difference["between"] is None and difference["total"] is None
    assert difference["within"] > 0 and len(difference["per_repeat"]) == 1
    assert written["samples_per_upsampler"] == 5 * len(train_half)
    assert written["metadata"]["config_sha256"] == config.hash()
    kl = report["truth"]["kl_nats"]
    assert set(kl) == {"truth"}  # the jitter upsampler has no density
    assert kl["truth"]["value"] == 0.0  # the truth against itself
    assert report["truth"]["auc"]["jitter"]["value"] > report["truth"]["auc"]["truth"]["value"]
    components = report["truth"]["components"]
    assert list(components["components"]) == list(mock_galaxy_components())
    assert set(components["kl_nats"]) == {"truth"}
    assert set(components["reproduced_share"]) == {"truth", "jitter"}
    markdown = (tmp_path / REPORT_MD).read_text()
    assert "| truth |" in markdown and "classifier_histograms.png" in markdown
    assert "| stream |" in markdown and "fine_structure.png" in markdown
    assert "not measured" in markdown and "σ |" not in markdown
    for figure in ("classifier_histograms.png", "fine_structure.png"):
        assert (tmp_path / figure).stat().st_size > 10_000
    assert "LP(truth) − LP(jitter)" in caplog.text and "not measured" in caplog.text


REWEIGHTED = MockGalaxy(SUN, R_MAX, thin_disk_weight=0.6, thick_disk_weight=0.328)
"""A model of known KL against the default mock: its disks' weights are swapped about."""


class HalfSphereUpsampler(TruthUpsampler):
    """The truth's density where x > x_Sun, zero elsewhere: KL(truth ‖ it) is infinite."""

    kind = "half"

    def log_prob(self, phase_space: np.ndarray) -> np.ndarray:
        return np.where(phase_space[:, 0] > SUN[0], self.galaxy.log_prob(phase_space), -np.inf)


def test_repeated_report_kl_matches_an_independent_estimate(mock_galaxy, mock_split, tmp_path):
    """Two repeats: KL(truth ‖ model) of a model of known KL, over fresh truth draws in each,
    agrees with an independent estimate; zero density makes it infinite, with the rows
    counted; the differences carry between-repeat spreads and σ-gaps on the total error."""
    train_half, test_half = mock_split
    config = small_config(repeats=2, truth_auc=False)
    models = {"truth": TruthUpsampler(mock_galaxy), "reweighted": TruthUpsampler(REWEIGHTED),
              "half": HalfSphereUpsampler(mock_galaxy)}
    report = evaluate(config, models, train_half, test_half, tmp_path)
    assert report["repeats"] == 2 and len(report["best_validation_loss"]) == 2
    kl = report["truth"]["kl_nats"]
    assert kl["truth"]["value"] == 0.0 and kl["truth"]["total"] == 0.0
    draws = mock_galaxy.sample(200_000, seed=123)
    gap = mock_galaxy.log_prob(draws) - REWEIGHTED.log_prob(draws)
    direct, direct_error = gap.mean(), gap.std(ddof=1) / np.sqrt(len(gap))
    assert direct > 20 * direct_error  # a KL well away from zero
    reweighted = kl["reweighted"]
    assert len(reweighted["per_repeat"]) == 2 and reweighted["total"] > 0
    assert reweighted["per_repeat"][0] != reweighted["per_repeat"][1]  # fresh draws
    assert reweighted["draw_count"] + reweighted["outside_window_count"] == 2 * len(test_half)
    assert abs(reweighted["value"] - direct) < 4 * np.hypot(reweighted["total"], direct_error)
    half = kl["half"]
    assert half["value"] is None and half["total"] is None
    behind_sun = np.mean(draws[:, 0] <= SUN[0])
    share = half["zero_density_count"] / half["draw_count"]
    assert abs(share - behind_sun) < 4 * np.sqrt(behind_sun * (1 - behind_sun) / half["draw_count"])
    for entry in report["differences"].values():
        assert entry["between"] > 0 and entry["total"] >= entry["within"]
        assert len(entry["per_repeat"]) == 2
    markdown = (tmp_path / REPORT_MD).read_text()
    assert "∞ (zero density at" in markdown and "not measured" not in markdown
    assert "σ |" in markdown


def mock_galaxy_components() -> tuple[str, ...]:
    return MockGalaxy().component_names


def test_component_scores_know_the_answer(mock_galaxy):
    """The truth scores 0 on every component; a galaxy without the stream scores high on it.

    Both "models" are exact mock galaxies, one with the stream's weight moved to the thin
    disk. Its stream KL is large, its other components' KL is ln(0.778 / 0.78) on the thin
    disk and 0 elsewhere, and the weighted sum of component KLs is the total KL.
    """
    no_stream = MockGalaxy(SUN, R_MAX, thin_disk_weight=0.78, stream_weight=0.0)
    models = {"truth": TruthUpsampler(mock_galaxy), "no_stream": TruthUpsampler(no_stream)}
    stars = {name: model.sample(100_000, seed=1) for name, model in models.items()}
    scores = component_scores(mock_galaxy, models, stars, seed=0)
    truth_kl, missing_kl = scores["kl_nats"]["truth"], scores["kl_nats"]["no_stream"]
    assert all(abs(entry["value"]) < 1e-12 for entry in truth_kl.values())
    assert missing_kl["stream"]["value"] > 10
    assert missing_kl["thin_disk"]["value"] == pytest.approx(np.log(0.778 / 0.78), abs=2e-3)
    for component in ("thick_disk", "moving_group", "halo"):
        assert abs(missing_kl[component]["value"]) < 2e-3
    # p = Σ_k w_k p_k with the reported weights, so KL(p ‖ q) = Σ_k w_k E_{p_k}[ln p − ln q]:
    # on the very draws the component KLs were estimated on, the weighted sum is the total
    weights = {k: v["weight"] for k, v in scores["components"].items()}
    assert sum(weights.values()) == pytest.approx(1.0, rel=1e-12)
    total = sum(weights[k] * missing_kl[k]["value"] for k in weights)
    same_draws = [mock_galaxy.sample_component(name, COMPONENT_DRAWS, 0 + 1 + k)
                  for k, name in enumerate(mock_galaxy.component_names)]
    pooled = 0.0
    for name, rows in zip(mock_galaxy.component_names, same_draws, strict=True):
        log_terms = mock_galaxy.component_log_probs(rows)
        np.testing.assert_allclose(logsumexp(log_terms, axis=0), mock_galaxy.log_prob(rows),
                                   rtol=1e-12)
        rows = rows[models["no_stream"].window.contains(rows)]
        pooled += weights[name] * np.mean(mock_galaxy.log_prob(rows) - no_stream.log_prob(rows))
    assert total == pytest.approx(pooled, rel=1e-9)
    # and an independent estimate of the total on other draws agrees within its errors
    draws = mock_galaxy.sample(200_000, seed=9)
    gap = mock_galaxy.log_prob(draws) - no_stream.log_prob(draws)
    total_error = np.sqrt(sum((weights[k] * missing_kl[k]["stderr"]) ** 2 for k in weights))
    assert abs(total - gap.mean()) < 4 * np.hypot(total_error, gap.std() / np.sqrt(len(gap)))
    for component, share in scores["reproduced_share"]["truth"].items():
        assert abs(share["value"] - 1) < 4 * share["stderr"], component
    assert scores["reproduced_share"]["no_stream"]["stream"]["value"] < 0.05
    assert scores["components"]["stream"]["truth_share"]["value"] == pytest.approx(0.002,
                                                                                  rel=0.15)


def test_cnf_beats_simplified_enbid_like_the_paper(fitted_cnf, mock_split, tmp_path):
    """Paper §5.3 / Table 1: LP(CNF) > LP(EnBiD) beyond 3 combined standard errors."""
    train_half, test_half = mock_split
    enbid = EnbidUpsampler(SUN, R_MAX).fit(train_half, seed=0)
    samples = {"enbid": enbid.sample(20_000, seed=1), "cnf": fitted_cnf.sample(20_000, seed=1)}
    result = multi_model_test(samples, test_half.phase_space, PAPER_SHAPED_CLASSIFIER, 0,
                              tmp_path)
    cnf, enbid_lp = result.log_posterior["cnf"], result.log_posterior["enbid"]
    combined = np.hypot(cnf.stderr, enbid_lp.stderr)
    print(f"LP(CNF) = {cnf}, LP(EnBiD) = {enbid_lp}, AUC {result.auc['binary'].value:.3f}")
    assert cnf.value - enbid_lp.value > 3 * combined
