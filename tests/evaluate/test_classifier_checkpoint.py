"""A classifier resumes only a checkpoint of the same stars, settings and seed."""

from __future__ import annotations

import numpy as np
import torch

from gflow_dist.evaluate.classifier import ClassifierSettings, train_classifier
from gflow_dist.flows.training import Recipe

TINY = ClassifierSettings(hidden_units=(16,), validation_fraction=0.5,
                          recipe=Recipe(batches_per_epoch=2, max_epochs=3, patience=3,
                                        refine=False))


def _classes(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(0.0, 1.0, (300, 6)), rng.normal(0.5, 1.0, (300, 6))]


def _weights(trained) -> list[torch.Tensor]:
    return [p.detach().clone() for p in trained.network.parameters()]


def test_other_stars_train_afresh_and_the_same_stars_resume(tmp_path, capsys):
    checkpoint = tmp_path / "multi_model.ckpt"
    checkpoint.write_bytes(b"an unkeyed checkpoint of an older version")
    first = train_classifier(_classes(1), TINY, 0, checkpoint)
    assert not checkpoint.exists()
    assert len(list(tmp_path.glob("multi_model-*.ckpt"))) == 1
    other = train_classifier(_classes(2), TINY, 0, checkpoint)
    alone = train_classifier(_classes(2), TINY, 0, tmp_path / "alone" / "c.ckpt")
    for resumed, fresh in zip(_weights(other), _weights(alone), strict=True):
        torch.testing.assert_close(resumed, fresh)
    assert len(list(tmp_path.glob("multi_model-*.ckpt"))) == 1  # the stale one is gone
    capsys.readouterr()
    again = train_classifier(_classes(2), TINY, 0, checkpoint)
    assert "resuming" in capsys.readouterr().err
    assert again.history.validation == other.history.validation
    assert first.history.validation != other.history.validation
