"""The simplified EnBiD upsampler: entropy tree, truncated Gaussian kernels, window density."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.special import logsumexp

from gflow_dist.baselines.enbid import EnbidUpsampler, window_mass
from gflow_dist.baselines.entropy_tree import _root_box, build_leaf_boxes
from gflow_dist.baselines.gaussian_kernels import GaussianKernels
from gflow_dist.config import RunConfig
from gflow_dist.data.particles import ParticleSet
from gflow_dist.errors import InputError
from gflow_dist.sample.window import DrawStats, SelectionWindow
from gflow_dist.upsamplers.base import SPEC_FILE

SUN = (-8.0, 0.0, 0.02)


def _tied_points(mock_galaxy, n: int = 400) -> np.ndarray:
    """Mock rows on a coarse grid (many ties) plus exact duplicates."""
    points = mock_galaxy.sample(n, seed=5)
    points[:, :3] = np.round(points[:, :3] * 2) / 2
    points[:, 3:] = np.round(points[:, 3:] / 25) * 25
    return np.concatenate([points, points[:7], points[:3]])


def _reference_leaves(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The paper's recursion, box by box, with the module's tie and duplicate rules."""
    root_lower, root_upper = _root_box(points)
    root_extent = root_upper - root_lower
    lower, upper = np.empty_like(points), np.empty_like(points)
    stack = [(np.arange(len(points)), root_lower, root_upper)]
    while stack:
        rows, low, high = stack.pop()
        if len(rows) == 1:
            lower[rows[0]], upper[rows[0]] = low, high
            continue
        values, n = points[rows], len(rows)
        entropy = np.empty(6)
        for k in range(6):
            bins = np.minimum(((values[:, k] - low[k]) / (high[k] - low[k]) * n).astype(int),
                              n - 1)
            counts = np.bincount(bins, minlength=n).astype(float)
            entropy[k] = math.log(n) - np.sum(counts * np.log(np.maximum(counts, 1))) / n
        mean = values.sum(axis=0) / n
        splittable = [(values[:, k] < mean[k]).any() and (values[:, k] >= mean[k]).any()
                      for k in range(6)]
        if any(splittable):
            axis = int(np.argmin(np.where(splittable, entropy, np.inf)))
            go_upper = values[:, axis] >= mean[axis]
            cut = 0.5 * (values[~go_upper, axis].max() + values[go_upper, axis].min())
        else:
            inside = (values.min(axis=0) > low) & (values.max(axis=0) < high)
            usable = inside if inside.any() else np.ones(6, bool)
            axis = int(np.argmax(np.where(usable, (high - low) / root_extent, -np.inf)))
            order = np.lexsort((rows, values[:, axis]))
            go_upper = np.zeros(n, bool)
            go_upper[order[n // 2:]] = True
            cut = 0.5 * (values[order[n // 2 - 1], axis] + values[order[n // 2], axis])
        low_upper, high_lower = high.copy(), low.copy()
        low_upper[axis], high_lower[axis] = cut, cut
        stack.append((rows[~go_upper], low, low_upper))
        stack.append((rows[go_upper], high_lower, high))
    return lower, upper


@pytest.mark.parametrize("tied", [False, True])
def test_tree_leaves_hold_one_particle_each_and_tile_the_root(mock_galaxy, tied):
    points = _tied_points(mock_galaxy) if tied else mock_galaxy.sample(3000, seed=4)
    boxes = build_leaf_boxes(points)
    assert np.all((boxes.lower <= points) & (points <= boxes.upper))
    assert np.all(boxes.sides > 0)
    root_volume = np.prod(boxes.root_upper - boxes.root_lower)
    assert np.exp(boxes.log_volumes).sum() == pytest.approx(root_volume, rel=1e-9)
    # One particle per leaf: no other particle lies strictly inside a leaf, and leaves are
    # disjoint up to their faces (the volumes sum to the root's, so they tile it).
    centres = 0.5 * (boxes.lower + boxes.upper)
    for i in range(0, len(points), 97):
        strictly_inside = np.all((points > boxes.lower[i]) & (points < boxes.upper[i]), axis=1)
        assert strictly_inside.sum() <= 1
        overlap = np.all((centres > boxes.lower[i]) & (centres < boxes.upper[i]), axis=1)
        assert np.flatnonzero(overlap).tolist() == [i]


@pytest.mark.parametrize("tied", [False, True])
def test_tree_matches_the_box_by_box_recursion(mock_galaxy, tied):
    points = _tied_points(mock_galaxy) if tied else mock_galaxy.sample(500, seed=6)
    boxes = build_leaf_boxes(points)
    lower, upper = _reference_leaves(points)
    np.testing.assert_array_equal(boxes.lower, lower)
    np.testing.assert_array_equal(boxes.upper, upper)


def test_tree_is_deterministic_and_splits_the_lowest_entropy_axis():
    rng = np.random.default_rng(0)
    points = rng.random((64, 6))
    points[:, 2] = np.repeat([0.1, 0.9], 32) + 1e-3 * rng.random(64)  # two tight clumps
    first, second = build_leaf_boxes(points), build_leaf_boxes(points)
    np.testing.assert_array_equal(first.lower, second.lower)
    # The clumped axis has the lowest entropy: the root is cut there, between the clumps.
    low_clump = points[:, 2] < 0.5
    assert np.all(first.upper[low_clump, 2] < 0.5 + 1e-3)
    assert np.all(first.lower[~low_clump, 2] > 0.5 - 1e-3)


def test_tree_rejects_degenerate_input():
    points = np.random.default_rng(1).random((10, 6))
    points[:, 4] = 2.0
    with pytest.raises(InputError, match="axis 4"):
        build_leaf_boxes(points)
    with pytest.raises(InputError, match="n >= 2"):
        build_leaf_boxes(points[:1])


def _brute_log_prob(kernels: GaussianKernels, points: np.ndarray) -> np.ndarray:
    chi2 = (((points[:, None] - kernels.centres[None]) / kernels.sigmas[None]) ** 2).sum(-1)
    terms = np.where(chi2 <= kernels.truncation_sigma**2, kernels.log_norms - chi2 / 2, -np.inf)
    return logsumexp(terms, axis=1)


@pytest.mark.parametrize("weighted", [False, True])
def test_kernel_log_prob_matches_brute_force(mock_galaxy, weighted):
    centres = mock_galaxy.sample(3000, seed=7)
    sigmas = np.sqrt(build_leaf_boxes(centres).sides ** 2 / 12)
    weights = None
    if weighted:
        weights = np.random.default_rng(2).random(len(centres))
        weights /= weights.sum()
    kernels = GaussianKernels(centres, sigmas, weights, truncation_sigma=3.0)
    rng = np.random.default_rng(3)
    points = np.concatenate([kernels.sample(400, rng), mock_galaxy.sample(200, seed=8),
                             centres[:1] + [[50, 0, 0, 0, 0, 0]]])
    got, expected = kernels.log_prob(points), _brute_log_prob(kernels, points)
    assert np.isneginf(got[-1]) and np.isneginf(expected[-1])
    assert np.array_equal(np.isfinite(got), np.isfinite(expected))
    finite = np.isfinite(expected)
    np.testing.assert_allclose(got[finite], expected[finite], rtol=1e-11, atol=1e-11)


def test_kernel_density_integrates_to_one():
    """Importance sampling from a broad Gaussian q: E_q[p/q] = ∫p = 1."""
    rng = np.random.default_rng(4)
    centres = rng.normal(0.0, 1.0, (30, 6))
    kernels = GaussianKernels(centres, rng.uniform(0.3, 1.0, (30, 6)), None, 4.0)
    spread = 2.5
    draws = rng.normal(0.0, spread, (200_000, 6))
    log_q = (-0.5 * (draws / spread) ** 2 - math.log(spread * math.sqrt(2 * math.pi))).sum(1)
    ratio = np.exp(kernels.log_prob(draws) - log_q)
    stderr = ratio.std() / math.sqrt(len(ratio))
    assert abs(ratio.mean() - 1) < 4 * stderr and stderr < 0.02


def test_kernel_draws_stay_inside_the_truncation_ellipsoid():
    kernels = GaussianKernels(np.zeros((1, 6)), np.ones((1, 6)), None, 1.5)
    draws = kernels.sample(20_000, np.random.default_rng(5))
    assert (draws**2).sum(axis=1).max() <= 1.5**2
    half = 1.5**2 / 2  # P(χ²_6 ≤ t²) = 1 − e^(−t²/2)(1 + t²/2 + t⁴/8)
    inside = 1 - math.exp(-half) * (1 + half + half**2 / 2)
    assert kernels.log_truncated_mass == pytest.approx(math.log(inside), rel=1e-12)


@pytest.fixture(scope="module")
def fitted(mock_split):
    train, _ = mock_split
    return EnbidUpsampler.from_config(RunConfig()).fit(train, seed=3)


def test_fit_sets_window_and_kernel_widths(fitted, mock_split):
    train, _ = mock_split
    speed = np.linalg.norm(train.velocities, axis=1).max()
    assert fitted.window == SelectionWindow(SUN, 3.5, speed)
    boxes = build_leaf_boxes(train.phase_space)
    np.testing.assert_allclose(fitted.kernels.sigmas**2, boxes.sides**2 / 12, rtol=1e-12)
    spec = fitted.spec()
    json.dumps(spec)
    assert spec["kernels"] == len(train) and 0 < spec["window_mass"] < 1


def test_samples_lie_in_the_window_and_are_deterministic(fitted):
    stats = DrawStats()
    stars = np.concatenate(list(fitted.iter_samples(20_000, seed=1, stats=stats)))
    assert stars.shape == (20_000, 6)
    assert fitted.window.contains(stars).all()
    np.testing.assert_array_equal(stars[:5000], fitted.sample(5000, seed=1, batch_size=65_536))
    assert not np.array_equal(stars[:100], fitted.sample(100, seed=2))
    # The window mass is the share of proposals that land in the window.
    kept = 1 - stats.rejection_rate
    assert kept == pytest.approx(fitted.window_mass, abs=4 * math.sqrt(kept / stats.proposed)
                                 + 4 * fitted.window_mass_stderr)


def test_log_prob_is_the_window_normalised_mixture(fitted, mock_galaxy):
    points = np.concatenate([fitted.sample(300, seed=4), mock_galaxy.sample(300, seed=9)])
    points[0, :3] = [-12.0, 0.0, 0.0]  # outside the sphere
    points[1, 3:] = [900.0, 0.0, 0.0]  # faster than any train particle
    got = fitted.log_prob(points)
    assert np.isneginf(got[:2]).all()
    expected = _brute_log_prob(fitted.kernels, points[2:]) - math.log(fitted.window_mass)
    np.testing.assert_allclose(got[2:], expected, rtol=1e-11)


def test_window_density_integrates_to_one(fitted):
    """E_q[p_W/q · 1_W] = 1 for q the same kernels widened by 1.5 (untruncated cover)."""
    broad = fitted.kernels.scaled(1.5)
    draws = broad.sample(60_000, np.random.default_rng(6))
    inside = fitted.window.contains(draws)
    ratio = np.zeros(len(draws))
    ratio[inside] = np.exp(fitted.log_prob(draws[inside]) - broad.log_prob(draws[inside]))
    stderr = ratio.std() / math.sqrt(len(ratio))
    assert abs(ratio.mean() - 1) < 4 * stderr + 4 * fitted.window_mass_stderr


def test_window_mass_is_exact_for_kernels_far_inside():
    kernels = GaussianKernels(np.array([[-8.0, 0, 0, 0, 200, 0]]), np.full((1, 6), 0.01),
                              None, 6.0)
    assert window_mass(kernels, SelectionWindow(SUN, 3.5, 300.0), seed=0) == (1.0, 0.0)


def test_save_and_load_round_trip(fitted, tmp_path):
    from gflow_dist.baselines.enbid import WEIGHTS_FILE

    fitted.save(tmp_path / "enbid", metadata={"run": "test"})
    spec = json.loads((tmp_path / "enbid" / SPEC_FILE).read_text())
    assert spec["kind"] == "enbid"
    with np.load(tmp_path / "enbid" / WEIGHTS_FILE, allow_pickle=False) as saved:
        assert sorted(saved.files) == ["centres", "sigmas"]
    loaded = EnbidUpsampler.from_saved(spec, tmp_path / "enbid")
    np.testing.assert_array_equal(loaded.sample(1000, seed=7), fitted.sample(1000, seed=7))
    points = fitted.sample(200, seed=8)
    np.testing.assert_array_equal(loaded.log_prob(points), fitted.log_prob(points))
    assert json.dumps(loaded.spec()) == json.dumps(fitted.spec())


def test_mass_weighted_draws_need_masses(mock_split):
    train, _ = mock_split
    model = EnbidUpsampler(SUN, 3.5, mass_weighted=True)
    with pytest.raises(InputError, match="mass_weighted"):
        model.fit(ParticleSet(train.phase_space), seed=0)
    model.fit(train, seed=0)
    np.testing.assert_allclose(model.kernels.weights, 1 / len(train))


def test_many_copies_of_one_particle_get_leaves_of_positive_volume(mock_galaxy):
    """21 copies need five duplicate cuts, each on a side the copies are not on yet."""
    points = mock_galaxy.sample(200, seed=1)
    points = np.concatenate([points, np.repeat(points[:1], 20, axis=0)])
    boxes = build_leaf_boxes(points)
    assert np.all(boxes.sides > 0)
    assert np.all((boxes.lower <= points) & (points <= boxes.upper))
    root_volume = np.prod(boxes.root_upper - boxes.root_lower)
    assert np.prod(boxes.sides, axis=1).sum() == pytest.approx(root_volume, rel=1e-9)
