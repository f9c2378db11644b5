"""Streamed draws restricted to the selection window."""

from __future__ import annotations

import numpy as np
import pytest

from gflow_dist.sample.window import DrawStats, SelectionWindow, draw_in_window

WINDOW = SelectionWindow((-8.0, 0.0, 0.0), 1.0, max_speed_kms=100.0)


def _propose(count, rng):
    """Half the candidates inside the window, half beyond r_max."""
    rows = np.zeros((count, 6))
    rows[:, 0] = -8.0 + np.where(rng.random(count) < 0.5, 0.5, 2.0)
    rows[:, 4] = 50.0
    return rows


def test_exact_count_inside_the_window_and_rejection_rate():
    stats = DrawStats()
    stars = np.concatenate(list(draw_in_window(_propose, 1000, 0, WINDOW, 256, stats)))
    assert len(stars) == 1000 and WINDOW.contains(stars).all()
    assert stats.kept == 1000
    assert 0.4 < stats.rejection_rate < 0.6


def test_window_rejects_fast_and_non_finite_stars():
    rows = np.array([[-8.0, 0, 0, 0, 50, 0], [-8.0, 0, 0, 0, 150, 0], [np.nan, 0, 0, 0, 0, 0]])
    assert WINDOW.contains(rows).tolist() == [True, False, False]


def test_a_model_that_misses_the_window_fails_loudly():
    def outside(count, rng):
        return np.full((count, 6), 100.0)

    with pytest.raises(RuntimeError, match="does not cover the window"):
        list(draw_in_window(outside, 10, 0, WINDOW, 16))


def test_contains_tensor_equals_contains_on_awkward_rows():
    import torch

    rng = np.random.default_rng(8)
    window = SelectionWindow((-8.0, 0.0, 0.02), 1.5, max_speed_kms=300.0)
    rows = np.column_stack([np.array(window.sun_position_kpc) + rng.normal(0, 1.0, (3000, 3)),
                            rng.normal(0, 180.0, (3000, 3))])
    sun = np.array(window.sun_position_kpc)
    rows[0] = (*(sun + (1.5, 0.0, 0.0)), 0.0, 0.0, 0.0)  # exactly on r_max: rejected
    rows[1] = (*sun, 300.0, 0.0, 0.0)  # exactly at the speed limit: kept
    rows[2] = (*(sun + (1.5 - 1e-12, 0.0, 0.0)), 0.0, 0.0, 0.0)  # just inside
    rows[3:8, :] = 0.0
    rows[3:8, :3] = window.sun_position_kpc
    rows[3, 0], rows[4, 4], rows[5, 2] = np.nan, np.inf, -np.inf
    rows[6, 5] = np.nextafter(300.0, np.inf)
    expected = window.contains(rows)
    assert expected[[1, 2, 7]].all() and not expected[[0, 3, 4, 5, 6]].any()
    assert 0.1 < expected.mean() < 0.9
    for dtype in (torch.float64, torch.float32):  # float32 input is compared in float64
        got = window.contains_tensor(torch.from_numpy(rows).to(dtype))
        assert got.dtype == torch.bool
        reference = window.contains(rows.astype(np.float32).astype(np.float64))
        np.testing.assert_array_equal(got.numpy(), expected if dtype == torch.float64
                                      else reference)
