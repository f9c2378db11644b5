"""Checks that need a CUDA device (``-m gpu``); skipped, with the reason, on CPU machines."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gpu


def test_a_cnf_fits_and_draws_on_the_gpu(fitted_cnf):
    """Where CUDA is available the members train and sample on it (default_device)."""
    assert fitted_cnf.device.type == "cuda"
    stars = fitted_cnf.sample(2000, seed=1)
    assert stars.shape == (2000, 6) and np.isfinite(stars).all()
    assert np.isfinite(fitted_cnf.log_prob(stars)).all()
