"""`gflow plan`: the resources a configured run needs, from measured rates that say where
they come from."""

from __future__ import annotations

import json

import pytest

from gflow_dist.cli import main
from gflow_dist.config import build_config
from gflow_dist.errors import EXIT_INPUT, InputError
from gflow_dist.plan import (
    CNF_GPU_TRAINING,
    CPU_SAMPLING,
    GPU_SAMPLING,
    GPU_THROUGHPUT,
    HATS_BYTES_PER_STAR,
    INDEX_BYTES_PER_STAR,
    MARGIN_BYTES_PER_STAR,
    SHUFFLE_BYTES_PER_STAR,
    plan_run,
    render_plan,
)

TEN_BILLION = 10_000_000_000


def test_ten_billion_stars_plan_from_the_measured_rates():
    config = build_config({"upsamplers": ["cnf"], "sample": {"total": TEN_BILLION}})
    plan = plan_run(config)
    assert plan.shards == 10_000 and plan.partitions == 10_000
    per_star = HATS_BYTES_PER_STAR + INDEX_BYTES_PER_STAR + MARGIN_BYTES_PER_STAR
    assert plan.hats_bytes == pytest.approx(TEN_BILLION * per_star, rel=1e-3)
    assert plan.hats_bytes > TEN_BILLION * per_star  # + figure stars and sky maps
    assert plan.shuffle_spill_bytes == pytest.approx(1.44e12)
    assert plan.sampling_cpu_hours["cnf"] == pytest.approx(
        TEN_BILLION / CPU_SAMPLING["cnf"].value / 3600)
    assert plan.zarr_bytes == 0  # above catalog.zarr_max_stars
    assert plan.spill_volume_bytes > plan.shuffle_spill_bytes
    assert plan.run_volume_bytes > plan.shard_staging_bytes + plan.hats_bytes + plan.zarr_bytes


def test_the_plan_follows_the_config():
    base = build_config({"upsamplers": ["cnf"], "sample": {"factor": 500.0}})
    assert plan_run(base).stars == 500 * base.galaxy.mock.n_particles // 2
    no_zarr = build_config({"upsamplers": ["cnf"], "catalog": {"zarr": False}})
    assert plan_run(no_zarr).zarr_bytes == 0
    fixed = build_config({"upsamplers": ["cnf"], "catalog": {"partition_order": 3}})
    assert plan_run(fixed).partitions == 12 * 4 ** 3
    two = build_config({"upsamplers": ["cnf", "enbid"]})
    assert plan_run(two).partition_cpu_hours == pytest.approx(
        2 * plan_run(base).partition_cpu_hours)
    assert plan_run(build_config({"upsamplers": ["maf"]})).sampling_cpu_hours == {"maf": None}
    assert plan_run(base, epochs=300).training_cpu_hours == pytest.approx(
        plan_run(base, epochs=600).training_cpu_hours / 2)
    assert plan_run(base, train_particles=1000).stars == 500_000
    assert SHUFFLE_BYTES_PER_STAR > 136  # a catalog row is 17 columns of 8 bytes


def test_a_particle_file_needs_its_train_count(tmp_path):
    config = build_config({"galaxy": {"source": str(tmp_path / "snapshot.parquet")}})
    with pytest.raises(InputError, match="--train-particles"):
        plan_run(config)
    assert plan_run(config, train_particles=40_000).train_particles == 40_000


def test_gflow_plan_prints_the_plan_for_ten_billion_stars(capsys):
    assert main(["plan", "configs/mock.yaml", "--set", f"sample.total={TEN_BILLION}"]) == 0
    printed = capsys.readouterr().out
    assert "shards: 10,000 of 1,000,000 stars" in printed
    assert "HATS 1.16 TB" in printed and "object-spilling volume: 1.8 TB" in printed
    assert ("sampling cnf: 80.3 h of CPU workers, or 2.96 h of H200s (the GPU rate is from "
            "an old path: see below)") in printed
    assert "cnf sampling on CPUs: 34.6k stars/s per CPU worker: the batched device path" in printed
    assert ("OMP_NUM_THREADS=1 python benchmarks/gpu_throughput.py --device cpu --batch 65536 "
            "--stars 262144 --sections sample") in printed
    assert "cnf sampling on GPUs: 940k stars/s per H200: OLD PATH" in printed
    assert f"today's path is not measured yet; measure it with: {GPU_THROUGHPUT}" in printed
    assert main(["plan", "configs/mock.yaml", "--json"]) == 0
    planned = json.loads(capsys.readouterr().out)
    assert planned["stars"] == 200_000
    assert planned["rates"]["cnf sampling on GPUs"]["from_old_path"] is True
    assert planned["rates"]["cnf sampling on GPUs"]["remeasure"] == GPU_THROUGHPUT
    assert planned["rates"]["cnf sampling on CPUs"]["from_old_path"] is False
    assert planned["rates"]["cnf sampling on CPUs"]["value"] == 34_600
    assert main(["plan", "--set", "galaxy.source=/no/such.parquet"]) == EXIT_INPUT
    assert "--train-particles" in capsys.readouterr().err


def test_every_rate_says_where_it_was_measured_and_which_are_from_an_old_path():
    two = build_config({"upsamplers": ["cnf", "maf"]})
    rates = plan_run(two).rates
    assert rates["maf sampling on CPUs"] is None and "maf sampling on GPUs" not in rates
    measured = [rate for rate in rates.values() if rate is not None]
    assert all(rate.command.startswith(("python benchmarks/", "OMP_NUM_THREADS=1 python "
                                        "benchmarks/")) and rate.measured_on
               for rate in measured)
    assert [name for name, rate in rates.items() if rate is not None and rate.from_old_path] == [
        "cnf sampling on GPUs"]
    assert GPU_SAMPLING["cnf"].remeasure == GPU_THROUGHPUT
    # one member alone on a GPU is measured; members trained as one batched model are not
    assert plan_run(two).rates["cnf training on GPUs"] == CNF_GPU_TRAINING
    batched_config = build_config({"upsamplers": ["cnf"], "ray": {"members_per_trainer": 10}})
    batched = plan_run(batched_config)
    assert batched.rates["cnf training on GPUs"].remeasure == GPU_THROUGHPUT
    assert batched.training_gpu_hours == plan_run(two).training_gpu_hours
    printed = render_plan(batched, batched_config)
    assert "maf" not in printed and "enbid" not in printed
    assert printed.count("OLD PATH") == 2
