"""The torch inverses of eqs. 9–11 against the numpy ones."""

from __future__ import annotations

import numpy as np
import torch

from gflow_dist.data.mock import MockGalaxy
from gflow_dist.preprocess.device import positions_inverse, velocities_inverse
from gflow_dist.preprocess.transforms import Preprocessor


def _preprocessor() -> Preprocessor:
    particles = MockGalaxy().sample(5000, seed=4)
    sun = (-8.0, 0.0, 0.02)
    inside = np.linalg.norm(particles[:, :3] - sun, axis=1) < 3.0
    return Preprocessor.fit(particles[inside], sun, 3.0)


def _standardised_rows(preprocessor: Preprocessor) -> np.ndarray:
    """Random s, plus rows whose |w| is tiny (series branch) or just above its radius."""
    rng = np.random.default_rng(11)
    s = rng.normal(0.0, 2.0, (4000, 3))
    mean, std = np.asarray(preprocessor.position_mean), np.asarray(preprocessor.position_std)
    w = rng.normal(size=(300, 3))
    w *= (10.0 ** rng.uniform(-12, -3, 300) / np.linalg.norm(w, axis=1))[:, None]
    s[:300] = (w - mean) / std
    s[300] = -mean / std  # w = 0 exactly
    return s


def test_positions_inverse_matches_numpy():
    preprocessor = _preprocessor()
    s = _standardised_rows(preprocessor)
    expected = preprocessor.positions_inverse(s)
    got = positions_inverse(preprocessor, torch.from_numpy(s)).numpy()
    assert got.dtype == np.float64
    offset = np.linalg.norm(expected - np.asarray(preprocessor.sun_position_kpc), axis=1)
    assert offset[:300].max() < 1e-2 * preprocessor.r_max_kpc  # the series rows hit the Sun
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12 * preprocessor.r_max_kpc)
    # and the inverse really inverts the forward map
    forward, _ = preprocessor.positions_forward(got[300:])
    np.testing.assert_allclose(forward, s[300:], rtol=1e-6, atol=1e-8)


def test_float32_input_and_velocities():
    preprocessor = _preprocessor()
    s = np.random.default_rng(5).normal(size=(1000, 3)).astype(np.float32)
    np.testing.assert_allclose(positions_inverse(preprocessor, torch.from_numpy(s)).numpy(),
                               preprocessor.positions_inverse(s.astype(np.float64)), rtol=1e-12)
    got = velocities_inverse(preprocessor, torch.from_numpy(s)).numpy()
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, preprocessor.velocities_inverse(s.astype(np.float64)),
                               rtol=1e-12, atol=1e-12)
