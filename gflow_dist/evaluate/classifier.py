"""The paper's classifier: an MLP over the standardised 6-D phase space (paper §5.3).

Four hidden layers of [2048, 1024, 128, 128] units with LeakyReLU, and a softmax over the
N classes. It is large on purpose: an under-parameterised classifier smooths out the
clumps of kernel upsamplers. Training reuses the flows' recipe (:mod:`gflow_dist.flows.
training`): Adam at 1e-3, early stopping on a validation split (paper: half the samples,
1000 minibatches per epoch, patience 100), then a refinement at 1e-4, with a checkpoint
after every epoch so an interrupted training resumes.

The class prior is uniform, p(C) = 1/N (paper §5.3): the loss weights every class by the
inverse of its share, so unequal class sizes cannot bias the posteriors.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from gflow_dist.config import EvaluateConfig
from gflow_dist.flows.member import default_device
from gflow_dist.flows.training import History, Recipe, train, validation_split

PAPER_HIDDEN_UNITS = (2048, 1024, 128, 128)
OUTPUT_BATCH = 65_536
"""Rows per no-grad batch when evaluating the classifier."""


@dataclass(frozen=True)
class ClassifierSettings:
    """Shape and training budget of a classifier (paper §5.3 defaults)."""

    hidden_units: tuple[int, ...] = PAPER_HIDDEN_UNITS
    validation_fraction: float = 0.5
    recipe: Recipe = Recipe(batches_per_epoch=1000, patience=100)

    @classmethod
    def from_config(cls, evaluate: EvaluateConfig) -> ClassifierSettings:
        return cls(tuple(evaluate.hidden_units), evaluate.validation_fraction,
                   evaluate.to_recipe())


def build_network(n_classes: int, hidden_units: Sequence[int], n_features: int = 6) -> nn.Module:
    """The MLP: Linear → LeakyReLU per hidden layer, then N logits."""
    layers: list[nn.Module] = []
    width = n_features
    for units in hidden_units:
        layers += [nn.Linear(width, units), nn.LeakyReLU()]
        width = units
    layers.append(nn.Linear(width, n_classes))
    return nn.Sequential(*layers)


@dataclass(frozen=True)
class Standardizer:
    """Per-feature affine map to zero mean and unit variance, fitted on training rows."""

    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, rows: np.ndarray) -> Standardizer:
        return cls(rows.mean(axis=0), rows.std(axis=0))

    def apply(self, rows: np.ndarray) -> np.ndarray:
        return ((rows - self.mean) / self.scale).astype(np.float32)


@dataclass
class TrainedClassifier:
    """A trained classifier and the held-out rows it was stopped on."""

    network: nn.Module
    standardizer: Standardizer
    history: History
    validation_rows: np.ndarray
    """(n_val, 6) validation inputs, in physical units."""
    validation_labels: np.ndarray

    def log_posterior(self, phase_space: np.ndarray) -> np.ndarray:
        """(n, N) log p(C | x, v) under the uniform class prior."""
        device = next(self.network.parameters()).device
        outputs = []
        with torch.no_grad():
            for start in range(0, len(phase_space), OUTPUT_BATCH):
                rows = self.standardizer.apply(phase_space[start:start + OUTPUT_BATCH])
                logits = self.network(torch.from_numpy(rows).to(device))
                outputs.append(torch.log_softmax(logits.double(), dim=1).cpu().numpy())
        return np.concatenate(outputs) if outputs else np.empty((0, self._n_classes()))

    def _n_classes(self) -> int:
        return int(self.validation_labels.max()) + 1


def keyed_checkpoint(checkpoint: Path, datasets: Sequence[np.ndarray],
                     settings: ClassifierSettings, seed: int) -> Path:
    """``<stem>-<key><suffix>`` beside ``checkpoint``, the key hashing everything the
    training depends on: every class's rows, the settings and the seed.

    So a rerun resumes a classifier only when it would train on the same stars the same
    way; other keyed checkpoints of the same stem, and an unkeyed one, are stale and
    removed.
    """
    digest = hashlib.sha256(repr((settings, seed, [len(rows) for rows in datasets])).encode())
    for rows in datasets:
        digest.update(np.ascontiguousarray(rows, dtype=np.float64).tobytes())
    keyed = checkpoint.with_name(f"{checkpoint.stem}-{digest.hexdigest()[:16]}"
                                 f"{checkpoint.suffix}")
    stale = [*checkpoint.parent.glob(f"{checkpoint.stem}-{'?' * 16}{checkpoint.suffix}"),
             checkpoint]
    for path in stale:
        if path != keyed:
            path.unlink(missing_ok=True)
    return keyed


def train_classifier(datasets: Sequence[np.ndarray], settings: ClassifierSettings, seed: int,
                     checkpoint: Path, label: str = "classifier") -> TrainedClassifier:
    """Train an N-class classifier telling the (n_c, 6) ``datasets`` apart.

    Args:
        datasets: one array of phase-space rows [kpc, km/s] per class.
        settings: the network's shape and the budget.
        seed: seeds the weights, the validation split and the minibatch shuffles.
        checkpoint: names the training state file, which is keyed by the data, settings
            and seed (:func:`keyed_checkpoint`); one of the same key is resumed.
        label: names the classifier in progress lines.
    """
    if any(len(rows) < 2 for rows in datasets):
        raise ValueError("every class needs at least 2 rows to train a classifier")
    rows = np.concatenate(datasets)
    labels = np.concatenate([np.full(len(d), c, dtype=np.int64) for c, d in enumerate(datasets)])
    fit_rows, val_rows = validation_split(len(rows), settings.validation_fraction, seed)
    standardizer = Standardizer.fit(rows[fit_rows])
    device = default_device()
    counts = np.bincount(labels[fit_rows], minlength=len(datasets)).astype(np.float64)
    class_weights = torch.as_tensor(counts.sum() / (len(datasets) * counts),
                                     dtype=torch.float32, device=device)

    def cross_entropy(network: nn.Module, x: Tensor, y: Tensor | None) -> Tensor:
        return nn.functional.cross_entropy(network(x), y, weight=class_weights)

    def tensors(index: np.ndarray) -> tuple[Tensor, Tensor]:
        x = torch.from_numpy(standardizer.apply(rows[index])).to(device)
        return x, torch.from_numpy(labels[index]).to(device)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = build_network(len(datasets), settings.hidden_units).to(device)
    (x_fit, y_fit), (x_val, y_val) = tensors(fit_rows), tensors(val_rows)
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    history = train(network, cross_entropy, x_fit, y_fit, x_val, y_val, settings.recipe, seed,
                    keyed_checkpoint(checkpoint, datasets, settings, seed), label)
    network.eval()
    return TrainedClassifier(network, standardizer, history, rows[val_rows], labels[val_rows])
