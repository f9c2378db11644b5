"""Sharded catalog builds with Ray Data into HATS + Zarr: plan, equality with the in-process
build, crashes and reruns."""

from __future__ import annotations

import os
import time
from pathlib import Path

import lsdb
import numpy as np
import pyarrow.parquet as pq
import pytest
import xarray as xr

from gflow_dist import upsamplers
from gflow_dist.catalog.build import HATS_DIR, draw_shards, shard_folder, write_catalog
from gflow_dist.catalog.local import LocalCatalogRunner
from gflow_dist.catalog.shards import ShardSpec, draw_shard
from gflow_dist.config import RunConfig
from gflow_dist.distributed.catalog_stages import (
    RayCatalogRunner,
    sampler_pool,
    write_sharded_catalog,
)
from gflow_dist.errors import GflowError
from gflow_dist.outputs import MANIFEST_FILE, read_manifest
from gflow_dist.sample.shards import ShardPlan, shard_seed
from gflow_dist.upsamplers import model_hash
from tests.conftest import R_MAX, SUN

N, SEED = 5000, 17
CONFIG = RunConfig.model_validate({
    "galaxy": {"sun_position_kpc": SUN, "r_max_kpc": R_MAX},
    "sample": {"shard_size": 1500, "batch_size": 512},
    "catalog": {"highest_order": 5, "max_rows_per_partition": 800},
})
METADATA = {"upsampler": "enbid", "seed": str(SEED)}


def test_plan_covers_every_star_once_with_distinct_seeds():
    plan = ShardPlan(10_007, 1000, 3)
    shards = list(plan)
    assert len(plan) == 11 and shards[-1].count == 7
    ids = np.concatenate([np.arange(s.first_star_id, s.first_star_id + s.count) for s in shards])
    np.testing.assert_array_equal(ids, np.arange(10_007))
    assert len({s.seed for s in shards}) == len(shards)
    assert list(ShardPlan(10_007, 1000, 3)) == shards
    assert {s.seed for s in ShardPlan(10_007, 1000, 4)}.isdisjoint(s.seed for s in shards)
    assert ShardPlan.per_particle(2000, 500.0, 10**6, 0).total == 10**6
    with pytest.raises(IndexError):
        plan.shard(11)


def test_plan_of_ten_billion_stars_is_cheap():
    start = time.perf_counter()
    plan = ShardPlan(10**10, 10**6, 0)
    last = plan.shard(len(plan) - 1)
    assert len(plan) == 10**4 and last.star_ids == range(10**10 - 10**6, 10**10)
    assert last.seed == shard_seed(0, 9999)
    assert time.perf_counter() - start < 0.05


@pytest.fixture(scope="module")
def model_dir(enbid_model_dir):
    return enbid_model_dir


@pytest.fixture(scope="module")
def in_process(model_dir, tmp_path_factory):
    """(out, manifest): the same catalog built in this process, one shard after another."""
    out = tmp_path_factory.mktemp("single") / "enbid"
    return out, write_catalog(model_dir, N, SEED, out, CONFIG, METADATA,
                              LocalCatalogRunner(spill_rows=700))


@pytest.fixture(scope="module")
def reference(in_process):
    return in_process[0]


@pytest.fixture(scope="module")
def sharded(ray_cluster, model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("sharded") / "enbid"
    return out, write_sharded_catalog(model_dir, N, SEED, out, CONFIG, METADATA)


def _files(folder):
    return {path.relative_to(folder): path for path in folder.rglob("*") if path.is_file()}


def _assert_equals_reference(out, reference):
    """Every file of the catalog folder (the HATS collection with its margin and index, the
    Zarr store) holds the in-process build's bytes, but for the manifest's ``run`` record:
    worker pids, timings, peak memory and shards reused differ from run to run."""
    ours, theirs = _files(out), _files(reference)
    assert ours.keys() == theirs.keys()
    assert sum(name.parts[:2] == (HATS_DIR, "dataset") and name.suffix == ".parquet"
               for name in ours) > 1
    manifest = Path(HATS_DIR) / MANIFEST_FILE
    for name, path in ours.items():
        if name != manifest:
            assert path.read_bytes() == theirs[name].read_bytes(), name
    manifests = [read_manifest(folder / HATS_DIR) for folder in (out, reference)]
    for record in manifests:
        del record["run"]
    assert manifests[0] == manifests[1]


def _spec(model_dir, folder):
    plan = ShardPlan(N, CONFIG.sample.shard_size, SEED)
    return ShardSpec.from_config(plan, folder, model_hash(model_dir), CONFIG)


@pytest.mark.ray
def test_catalog_opens_in_lsdb_and_equals_the_in_process_build(sharded, in_process, reference):
    out, manifest = sharded
    theirs = in_process[1]
    for key in ("request", "rows", "partitions", "content_sha256", "shards", "margin_rows"):
        assert manifest[key] == theirs[key], key
    assert (in_process[0] / "stars.zarr").exists()
    assert not shard_folder(in_process[0]).exists()
    stars = lsdb.open_catalog(out).compute()
    assert len(stars) == N == manifest["rows"]
    np.testing.assert_array_equal(np.sort(stars["star_id"].to_numpy()), np.arange(N))
    _assert_equals_reference(out, reference)
    store = xr.open_zarr(out / "stars.zarr")
    assert int(store["valid"].sum()) == N
    assert manifest["run"] == manifest["run"] | {"sampled": 4, "reused": 0}
    assert [row[1] for row in manifest["shards"]] == [1500, 1500, 1500, 500]
    assert not shard_folder(out).exists()


@pytest.mark.ray
def test_a_killed_sampling_worker_is_replaced_without_losing_or_duplicating_stars(
        model_dir, sharded, reference, tmp_path):
    marker = tmp_path / "died"
    doomed_seed = ShardPlan(N, CONFIG.sample.shard_size, SEED).shard(2).seed

    def load_a_model_that_dies_once(directory):
        """The saved model, whose draw of shard 2 kills its process after the first batch
        (once: the marker file remembers)."""
        model = upsamplers.load(directory)
        draw = model.iter_samples

        def iter_samples(n, seed, batch_size=65_536, stats=None):
            for batch in draw(n, seed, batch_size, stats):
                yield batch
                if seed == doomed_seed and not marker.exists():
                    marker.write_text(str(os.getpid()))
                    os._exit(1)

        model.iter_samples = iter_samples
        return model

    out = tmp_path / "enbid"
    runner = RayCatalogRunner(CONFIG.ray, load_model=load_a_model_that_dies_once)
    manifest = write_catalog(model_dir, N, SEED, out, CONFIG, METADATA, runner)
    assert marker.exists(), "the worker drawing shard 2 did not die"
    assert manifest["shards"] == sharded[1]["shards"]
    ids = pq.read_table(out / "hats" / "dataset", columns=["star_id"]).column(0).to_numpy()
    np.testing.assert_array_equal(np.sort(ids), np.arange(N))
    _assert_equals_reference(out, reference)


@pytest.mark.ray
def test_an_interrupted_run_reuses_finished_shards_and_redraws_the_rest(
        model_dir, sharded, reference, tmp_path):
    out = tmp_path / "enbid"
    first = draw_shards(RayCatalogRunner(CONFIG.ray), model_dir,
                        _spec(model_dir, shard_folder(out)), [0, 1, 3])
    assert [row["sampled"] for row in first] == [True, True, True]
    # a crash mid-write leaves a partial file; a tampered shard must not be trusted
    (shard_folder(out) / "shard-000002.parquet.partial").write_bytes(b"half a file")
    tampered = shard_folder(out) / "shard-000001.parquet"
    table = pq.read_table(tampered)
    ra = table.schema.get_field_index("ra")
    pq.write_table(table.set_column(ra, table.schema.field(ra), pq.read_table(
        shard_folder(out) / "shard-000000.parquet").column("ra")), tampered)
    manifest = write_sharded_catalog(model_dir, N, SEED, out, CONFIG, METADATA)
    assert manifest["run"]["sampled"] == 2 and manifest["run"]["reused"] == 2
    assert manifest["shards"] == sharded[1]["shards"]
    _assert_equals_reference(out, reference)


@pytest.mark.ray
def test_a_same_input_rerun_is_a_no_op(model_dir, sharded):
    out, manifest = sharded
    files = [out / "hats" / "_manifest.json", *sorted((out / "hats").rglob("*.parquet"))]
    before = [f.stat().st_mtime_ns for f in files]
    assert write_sharded_catalog(model_dir, N, SEED, out, CONFIG, METADATA) == manifest
    assert [f.stat().st_mtime_ns for f in files] == before
    assert not shard_folder(out).exists()


@pytest.mark.ray
def test_sampler_pool_follows_the_cluster_and_rejects_oversized_workers(ray_cluster):
    assert sampler_pool(CONFIG.ray, shards=10) == 2
    assert sampler_pool(CONFIG.ray, shards=1) == 1
    capped = RunConfig.model_validate({"ray": {"max_samplers": 1}})
    assert sampler_pool(capped.ray, shards=10) == 1
    greedy = RunConfig.model_validate({"ray": {"num_cpus_per_sampler": 64}})
    with pytest.raises(GflowError, match="ray.num_cpus_per_sampler"):
        sampler_pool(greedy.ray, shards=4)


def test_a_worker_reproduces_a_shard_bit_for_bit(model_dir, tmp_path):
    model, stats = upsamplers.load(model_dir), []
    for folder in ("a", "b"):
        spec = _spec(model_dir, tmp_path / folder)
        stats.append(draw_shard(model, spec, spec.plan.shard(3)))
        assert draw_shard(model, spec, spec.plan.shard(3))["sampled"] is False
    assert stats[0]["sha256"] == stats[1]["sha256"] and stats[0]["rows"] == 500
    assert os.path.getsize(tmp_path / "a" / "shard-000003.parquet") > 0
