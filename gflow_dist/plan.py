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
- the rates of sampling, partition writing and CNF training (``docs/scaling.md``,
  ``docs/operations.md`` §6), each a :class:`Rate` that says which code path it was
  measured on, on what machine and with which command. The last measurement of each is
  used; a rate measured on a code path older than the one gflow-dist runs today (CNF
  sampling on a GPU, measured before the batched device path) says so and names the
  benchmark that measures today's path, and ``gflow plan`` prints all of it.

The number of epochs early stopping needs (patience 50) was not measured at the paper's
budget, so training is costed for an assumed number of epochs per flow and phase, which
the caller states (``--epochs``). Upsamplers whose rates were not measured are listed as
such rather than guessed.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

from gflow_dist.config import RunConfig
from gflow_dist.errors import InputError

SHARD_BYTES_PER_STAR = 155.0
HATS_BYTES_PER_STAR = 113.0
INDEX_BYTES_PER_STAR = 2.4
MARGIN_BYTES_PER_STAR = 0.25
ZARR_BYTES_PER_STAR = 113.0
SHUFFLE_BYTES_PER_STAR = 144.0
HEADROOM = 1.25
"""Volumes are requested this much larger than the estimate."""

GPU_THROUGHPUT = "python benchmarks/gpu_throughput.py --json runs/throughput.json"
"""The benchmark that measures today's GPU paths: sampling on the device, batched training."""


@dataclass(frozen=True)
class Rate:
    """A measured rate and where it comes from.

    Attributes:
        value: the rate, in ``unit`` (per second).
        unit: what ``value`` counts, per what ("stars/s per CPU worker").
        path: the code path measured, with the settings that matter.
        measured_on: the machine.
        command: the benchmark that measured it.
        remeasure: None where ``path`` is what gflow-dist runs today; else (the number is
            from an older path) the command that measures today's path.
    """

    value: float
    unit: str
    path: str
    measured_on: str
    command: str
    remeasure: str | None = None

    @property
    def from_old_path(self) -> bool:
        return self.remeasure is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"from_old_path": self.from_old_path}

    def describe(self) -> list[str]:
        """The lines ``gflow plan`` prints: the number and its path, where it was
        measured, and for an old path what measures today's."""
        old = "OLD PATH, not what runs today: " if self.from_old_path else ""
        lines = [f"{_number(self.value)} {self.unit}: {old}{self.path}",
                 f"  measured on {self.measured_on}: {self.command}"]
        if self.remeasure is not None:
            lines.append(f"  today's path is not measured yet; measure it with: {self.remeasure}")
        return lines


CPU_MACHINE = "this project's 2-core AMD EPYC machine"
GPU_MACHINE = "1 NVIDIA H200 (torch 2.11, CUDA 13.0)"

CPU_SAMPLING = {
    "cnf": Rate(34_600.0, "stars/s per CPU worker",
                "the batched device path on the CPU: 10 members as one stacked model, base "
                "draws, float64 inverse, window, observables and HEALPix index into Arrow "
                "tables, in one process (Ray and the shard's Parquet not included)",
                f"1 core of {CPU_MACHINE}", "OMP_NUM_THREADS=1 python benchmarks/gpu_throughput.py "
                "--device cpu --batch 65536 --stars 262144 --sections sample"),
    "enbid": Rate(450_000.0, "stars/s per CPU worker",
                  "Ray Data sampling actors of 1 CPU, observables and HEALPix index included",
                  CPU_MACHINE, "OMP_NUM_THREADS=1 python benchmarks/scaling.py --json "
                  "runs/scaling.json"),
}
"""Sampling rate of one CPU worker, per upsampler."""

GPU_SAMPLING = {
    "cnf": Rate(940_000.0, "stars/s per H200",
                "the per-member path from before the batched device path: 10 members, "
                "batches of 2²⁰, flows on the GPU, base draws, inverse, window, observables "
                "and HEALPix index on the host",
                GPU_MACHINE, "python benchmarks/gpu_cnf.py",
                remeasure=GPU_THROUGHPUT),
}
"""Sampling rate of one GPU, per upsampler."""

PARTITION_WRITING = Rate(125_000.0, "rows/s per CPU",
                         "Ray Data's groupby by HEALPix partition into HATS Parquet "
                         "(220–290k rows/s on 2 CPUs)", CPU_MACHINE,
                         "OMP_NUM_THREADS=1 python benchmarks/scaling.py --json "
                         "runs/scaling.json")

CNF_CPU_TRAINING = Rate(240_000 / 31.0, "point-epochs/s of one flow per CPU core",
                        "one member alone, compiled (31 s an epoch of 240k points); 10 "
                        "members as one batched model (ray.members_per_trainer) measured as "
                        "fast per member (7.1 against 7.4 s a member-epoch: python "
                        "benchmarks/gpu_throughput.py --device cpu --sections train "
                        "--train-points 30000 --epochs 1)", CPU_MACHINE,
                        "python benchmarks/bench_cnf.py")

CNF_GPU_TRAINING = Rate(1 / 1.4, "epochs/s of one flow per H200",
                        "one member alone, compiled, up to 240k train points (1.4 s an "
                        "epoch: launch-bound)", GPU_MACHINE, "python benchmarks/gpu_cnf.py")
"""One member's training on a GPU; members trained as one batched model on a GPU
(``ray.members_per_trainer`` > 1) are not measured: :func:`cnf_gpu_training` flags it."""


def cnf_gpu_training(config: RunConfig) -> Rate:
    """The GPU training rate for ``config``: one member alone's, which is an old path
    where ``ray.members_per_trainer`` trains members as one batched model."""
    if config.ray.members_per_trainer == 1:
        return CNF_GPU_TRAINING
    return replace(CNF_GPU_TRAINING, remeasure=GPU_THROUGHPUT,
                   path=CNF_GPU_TRAINING.path + f"; this config trains "
                   f"{config.ray.members_per_trainer} members as one batched model")


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
    rates: dict[str, Rate | None]
    """Every rate the hours come from, by what it sizes ("cnf sampling on GPUs"); None:
    not measured."""

    def to_dict(self) -> dict[str, Any]:
        plan = asdict(self)
        plan["rates"] = {name: None if rate is None else rate.to_dict()
                         for name, rate in self.rates.items()}
        return plan


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


def _hours(count: float, rate: Rate | None) -> float | None:
    return None if rate is None else count / rate.value / 3600


def _training_hours(config: RunConfig, n_train: int, epochs: int) -> tuple[float, float]:
    """(CPU-hours, GPU-hours) of the CNF ensemble: 2 flows × phases × epochs per member."""
    cnf = config.cnf
    used = min(cnf.max_train_particles or n_train, n_train)
    flow_epochs = cnf.ensemble_size * 2 * (2 if cnf.refine else 1) * min(epochs, cnf.max_epochs)
    point_epochs = flow_epochs * used * (1 - cnf.validation_fraction)
    return (point_epochs / CNF_CPU_TRAINING.value / 3600,
            flow_epochs / cnf_gpu_training(config).value / 3600)


def _rates(config: RunConfig) -> dict[str, Rate | None]:
    """The rates a plan of ``config`` uses, by what they size (as ``gflow plan`` names them)."""
    rates: dict[str, Rate | None] = {}
    for name in config.upsamplers:
        rates[f"{name} sampling on CPUs"] = CPU_SAMPLING.get(name)
        if name in GPU_SAMPLING:
            rates[f"{name} sampling on GPUs"] = GPU_SAMPLING[name]
    rates["partition writing"] = PARTITION_WRITING
    if "cnf" in config.upsamplers:
        rates["cnf training on CPUs"] = CNF_CPU_TRAINING
        rates["cnf training on GPUs"] = cnf_gpu_training(config)
    return rates


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
        sampling_cpu_hours={name: _hours(drawn, CPU_SAMPLING.get(name))
                            for name in config.upsamplers},
        sampling_gpu_hours={name: _hours(drawn, GPU_SAMPLING.get(name))
                            for name in config.upsamplers},
        partition_cpu_hours=len(config.upsamplers) * stars / PARTITION_WRITING.value / 3600,
        training_cpu_hours=training[0], training_gpu_hours=training[1],
        assumed_epochs=epochs, rates=_rates(config),
    )


def _size(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if size < 1000 or unit == "PB":
            return f"{size:.3g} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def _number(value: float) -> str:
    """34600 as 34.6k, 1.7e6 as 1.7M: three significant digits."""
    for scale, suffix in ((1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


def _time(hours: float) -> str:
    if hours >= 1:
        return f"{hours:.3g} h"
    return f"{hours * 60:.2g} min" if hours * 60 >= 1 else f"{hours * 3600:.2g} s"


def _either(cpu_hours: float | None, gpu_hours: float | None, cpu: str, gpu: str,
            gpu_rate: Rate | None) -> str:
    options = [f"{_time(hours)} of {what}" for hours, what in ((cpu_hours, cpu),
                                                                (gpu_hours, gpu))
               if hours is not None]
    old = (" (the GPU rate is from an old path: see below)"
           if gpu_hours is not None and gpu_rate is not None and gpu_rate.from_old_path
           else "")
    return ", or ".join(options) + old if options else "rate not measured"


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
        "compute (from the rates below):",
    ]
    for name in config.upsamplers:
        lines.append(f"  sampling {name}: " + _either(
            plan.sampling_cpu_hours[name], plan.sampling_gpu_hours[name], "CPU workers",
            "H200s", plan.rates.get(f"{name} sampling on GPUs")))
    lines.append(f"  partition writing: {_time(plan.partition_cpu_hours)} of CPUs")
    if plan.training_cpu_hours is not None:
        lines.append(f"  cnf training by likelihood, assuming {plan.assumed_epochs} epochs per "
                     "flow and phase: " + _either(plan.training_cpu_hours,
                                                   plan.training_gpu_hours, "CPU cores",
                                                   "H200s", plan.rates["cnf training on GPUs"]))
        if config.cnf.objective == "flow_matching":
            lines.append("    (this config trains by flow matching first, which costs far "
                         "less per epoch: docs/objectives.md)")
    lines += ["", "rates (the last measured of each; docs/scaling.md, docs/operations.md §6):"]
    for name, rate in plan.rates.items():
        if rate is None:
            lines.append(f"  {name}: not measured")
            continue
        first, *more = rate.describe()
        lines += [f"  {name}: {first}", *(f"    {line}" for line in more)]
    return "\n".join(lines)
