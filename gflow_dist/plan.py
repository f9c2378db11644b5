"""``gflow plan``: what a configured run will need, worked out before anything runs.

Arithmetic on the config and on numbers measured on this project's machines:

- bytes on disk per star of the shard staging (155 B), the HATS catalog's partitions
  (113 B), its star_id index (2.4 B), its margin cache (0.25 B with 10⁶ stars in a few
  large partitions; more as partitions shrink) and the Zarr store (113 B):
  ``benchmarks/bytes_per_star.py`` at 10⁶ stars. Beside the partitions, the figure stars
  (``catalog.figure_stars`` × 155 B) and the sky maps (two full maps of 16 B per pixel at
  ``catalog.highest_order`` at most) do not grow with the stars;
- bytes per star through the partition shuffle: a catalog row in Arrow (17 columns of
  8 B) plus its partition index, 144 B, held in Ray's object store and spilled to disk
  past its memory;
- sampling rates per CPU worker and per GPU (``docs/scaling.md``,
  ``docs/operations.md`` §6): CNF 28.7k stars/s per CPU worker and 0.94M stars/s per
  H200 (10 members, batches of 2²⁰); simplified EnBiD 450k stars/s per CPU worker;
- partition writing at 125k rows/s per CPU (220–290k rows/s on 2 CPUs);
- CNF training: one epoch of one flow costs 0.13 ms per train point on a CPU core (31 s
  for 240k points, compiled) and 1.4 s on an H200 whatever the size up to 240k points
  (launch-bound).

The number of epochs early stopping needs (patience 50) was not measured at the paper's
budget, so training is costed for an assumed number of epochs per flow and phase, which
the caller states (``--epochs``). Upsamplers whose rates were not measured are listed as
such rather than guessed.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from gflow_dist.config import RunConfig
from gflow_dist.errors import InputError

SHARD_BYTES_PER_STAR = 155.0
HATS_BYTES_PER_STAR = 113.0
INDEX_BYTES_PER_STAR = 2.4
MARGIN_BYTES_PER_STAR = 0.25
ZARR_BYTES_PER_STAR = 113.0
SHUFFLE_BYTES_PER_STAR = 144.0
PARTITION_ROWS_PER_CPU_S = 125_000.0
HEADROOM = 1.25
"""Volumes are requested this much larger than the estimate."""

CPU_STARS_PER_S = {"cnf": 28_700.0, "enbid": 450_000.0}
"""Sampling rate of one CPU worker [stars/s], observables and HEALPix index included."""

GPU_STARS_PER_S = {"cnf": 940_000.0}
"""Sampling rate of one H200 [stars/s] (10 members, batches of 2²⁰)."""

CNF_CPU_S_PER_POINT_EPOCH = 31.0 / 240_000
"""One epoch of one CNF flow on one CPU core [s per train point] (compiled, 2-core EPYC)."""

CNF_GPU_S_PER_EPOCH = 1.4
"""One epoch of one CNF flow on an H200 [s], up to 240k train points (launch-bound)."""


@dataclass(frozen=True)
class Plan:
    """The resources one ``gflow run`` of a config needs.

    Bytes are bytes, times are hours; ``None`` marks what was not measured.
    """

    stars: int
    train_particles: int
    shards: int
    partitions: int
    shard_staging_bytes: float
    hats_bytes: float
    zarr_bytes: float
    shuffle_spill_bytes: float
    run_volume_bytes: float
    spill_volume_bytes: float
    sampling_cpu_hours: dict[str, float | None]
    sampling_gpu_hours: dict[str, float | None]
    partition_cpu_hours: float
    training_cpu_hours: float | None
    training_gpu_hours: float | None
    assumed_epochs: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _train_particles(config: RunConfig, train_particles: int | None) -> int:
    if train_particles is not None:
        return train_particles
    if config.galaxy.source == "mock":
        return round(config.galaxy.mock.n_particles * (1 - config.split.test_fraction))
    raise InputError(f"the train particles of {config.galaxy.source} are counted only when "
                     "they are selected: pass --train-particles N (the `split into N train` "
                     "line of `gflow ingest`)")


def _stars(config: RunConfig, n_train: int) -> int:
    if config.sample.total is not None:
        return config.sample.total
    return round(config.sample.factor * n_train)


def _partitions(config: RunConfig, stars: int) -> int:
    """Partitions of the catalog: the fixed order's sky pixels, or about stars over the
    adaptive cap (a lower bound: sparse pixels merge, dense ones split)."""
    if config.catalog.partition_order is not None:
        return min(12 * 4 ** config.catalog.partition_order, stars)
    return max(1, math.ceil(stars / config.catalog.max_rows_per_partition))


def _hours(count: float, per_second: float | None) -> float | None:
    return None if per_second is None else count / per_second / 3600


def _training_hours(config: RunConfig, n_train: int, epochs: int) -> tuple[float, float]:
    """(CPU-hours, GPU-hours) of the CNF ensemble: 2 flows × phases × epochs per member."""
    cnf = config.cnf
    used = min(cnf.max_train_particles or n_train, n_train)
    flow_epochs = cnf.ensemble_size * 2 * (2 if cnf.refine else 1) * min(epochs, cnf.max_epochs)
    cpu = flow_epochs * used * (1 - cnf.validation_fraction) * CNF_CPU_S_PER_POINT_EPOCH
    return cpu / 3600, flow_epochs * CNF_GPU_S_PER_EPOCH / 3600


def plan_run(config: RunConfig, train_particles: int | None = None,
             epochs: int = 600) -> Plan:
    """The :class:`Plan` of ``config``; ``epochs`` is the assumed epochs per flow and phase."""
    n_train = _train_particles(config, train_particles)
    stars = _stars(config, n_train)
    evaluation_stars = (round(config.evaluate.samples_per_particle * n_train)
                        if config.evaluate.enabled and len(config.upsamplers) > 1 else 0)
    drawn = stars + evaluation_stars
    fixed = (min(stars, config.catalog.figure_stars) * SHARD_BYTES_PER_STAR
             + 2 * 16 * 12 * 4**config.catalog.highest_order)
    hats = stars * (HATS_BYTES_PER_STAR + INDEX_BYTES_PER_STAR + MARGIN_BYTES_PER_STAR) + fixed
    with_zarr = config.catalog.zarr and stars <= config.catalog.zarr_max_stars
    zarr = stars * ZARR_BYTES_PER_STAR if with_zarr else 0.0
    staging = stars * SHARD_BYTES_PER_STAR
    spill = stars * SHUFFLE_BYTES_PER_STAR
    training = (_training_hours(config, n_train, epochs) if "cnf" in config.upsamplers
                else (None, None))
    return Plan(
        stars=stars, train_particles=n_train,
        shards=math.ceil(stars / config.sample.shard_size),
        partitions=_partitions(config, stars),
        shard_staging_bytes=staging, hats_bytes=hats, zarr_bytes=zarr,
        shuffle_spill_bytes=spill,
        run_volume_bytes=HEADROOM * len(config.upsamplers) * (staging + hats + zarr),
        spill_volume_bytes=HEADROOM * spill,
        sampling_cpu_hours={name: _hours(drawn, CPU_STARS_PER_S.get(name))
                            for name in config.upsamplers},
        sampling_gpu_hours={name: _hours(drawn, GPU_STARS_PER_S.get(name))
                            for name in config.upsamplers},
        partition_cpu_hours=len(config.upsamplers) * stars / PARTITION_ROWS_PER_CPU_S / 3600,
        training_cpu_hours=training[0], training_gpu_hours=training[1],
        assumed_epochs=epochs,
    )


def _size(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if size < 1000 or unit == "PB":
            return f"{size:.3g} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def _time(hours: float) -> str:
    if hours >= 1:
        return f"{hours:.3g} h"
    return f"{hours * 60:.2g} min" if hours * 60 >= 1 else f"{hours * 3600:.2g} s"


def _either(cpu_hours: float | None, gpu_hours: float | None, cpu: str, gpu: str) -> str:
    options = [f"{_time(hours)} of {what}" for hours, what in ((cpu_hours, cpu),
                                                                (gpu_hours, gpu))
               if hours is not None]
    return ", or ".join(options) if options else "rate not measured"


def render_plan(plan: Plan, config: RunConfig) -> str:
    """The plan as the lines ``gflow plan`` prints."""
    per_model = " per upsampler" if len(config.upsamplers) > 1 else ""
    lines = [
        f"stars: {plan.stars:,} per upsampler ({', '.join(config.upsamplers)}), from "
        f"{plan.train_particles:,} train particles",
        f"shards: {plan.shards:,} of {config.sample.shard_size:,} stars; HEALPix partitions: "
        f"~{plan.partitions:,}",
        f"disk{per_model}: shard staging {_size(plan.shard_staging_bytes)} (removed once "
        f"published), HATS {_size(plan.hats_bytes)} (with its index, margin, sky maps and "
        f"figure stars), Zarr " + (_size(plan.zarr_bytes) if plan.zarr_bytes else
                                   "none (catalog.zarr off, or above catalog.zarr_max_stars)"),
        f"object-store spill{per_model}: {_size(plan.shuffle_spill_bytes)} through the "
        "partition shuffle",
        "",
        "request:",
        f"  shared run volume (PVC): {_size(plan.run_volume_bytes)} "
        f"(staging + HATS + Zarr of every upsampler, +{HEADROOM - 1:.0%}); a release store "
        "keeping K versions needs K × (HATS + Zarr)",
        f"  object-spilling volume: {_size(plan.spill_volume_bytes)} in all, split over the "
        f"worker nodes (+{HEADROOM - 1:.0%})",
        "",
        "compute (measured rates, docs/scaling.md and docs/operations.md §6):",
    ]
    for name in config.upsamplers:
        lines.append(f"  sampling {name}: " + _either(
            plan.sampling_cpu_hours[name], plan.sampling_gpu_hours[name], "CPU workers",
            "H200s"))
    lines.append(f"  partition writing: {_time(plan.partition_cpu_hours)} of CPUs")
    if plan.training_cpu_hours is not None:
        lines.append(f"  cnf training by likelihood, assuming {plan.assumed_epochs} epochs per "
                     "flow and phase: " + _either(plan.training_cpu_hours,
                                                   plan.training_gpu_hours, "CPU cores",
                                                   "H200s"))
        if config.cnf.objective == "flow_matching":
            lines.append("    (this config trains by flow matching first, which costs far "
                         "less per epoch: docs/objectives.md)")
    return "\n".join(lines)
