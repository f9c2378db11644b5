"""`gflow plan`: the resources a configured run needs, from measured rates."""

from __future__ import annotations

import json

import pytest

from gflow_dist.cli import main
from gflow_dist.config import build_config
from gflow_dist.errors import EXIT_INPUT, InputError
from gflow_dist.plan import (
    CPU_STARS_PER_S,
    HATS_BYTES_PER_STAR,
    INDEX_BYTES_PER_STAR,
    MARGIN_BYTES_PER_STAR,
    SHUFFLE_BYTES_PER_STAR,
    plan_run,
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
        TEN_BILLION / CPU_STARS_PER_S["cnf"] / 3600)
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
    assert "sampling cnf: 96.8 h of CPU workers, or 2.96 h of H200s" in printed
    assert main(["plan", "configs/mock.yaml", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["stars"] == 200_000
    assert main(["plan", "--set", "galaxy.source=/no/such.parquet"]) == EXIT_INPUT
    assert "--train-particles" in capsys.readouterr().err
