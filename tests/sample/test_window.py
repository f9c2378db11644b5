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
