"""HEALPix partition plans, the in-process catalog build (HATS) and the Zarr store built from it."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import hats
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import xarray as xr
import zarr
from hats.io.validation import is_valid_catalog
from hats.pixel_math import HealpixPixel
from hats.pixel_math.healpix_shim import radec2pix
from zarr.storage import LocalStore, WrapperStore

from gflow_dist.catalog import healpix
from gflow_dist.catalog.build import FIGURE_STARS_FILE, write_catalog
from gflow_dist.catalog.healpix import (
    PixelCounter,
    adaptive_plan,
    index_range,
    pixel_at_order,
    plan_partitions,
    spatial_index,
)
from gflow_dist.catalog.local import LocalCatalogRunner
from gflow_dist.catalog.observables import COLUMN_UNITS
from gflow_dist.catalog.schema import catalog_schema, table_records
from gflow_dist.catalog.zarr_writer import read_zarr_pixel, write_zarr_catalog
from gflow_dist.config import RunConfig
from gflow_dist.errors import InputError
from gflow_dist.outputs import read_manifest
from gflow_dist.provenance import run_metadata
from tests.conftest import R_MAX, SUN, drawn_catalog_rows

ROOT = Path("/tmp/test-catalog-write")
METADATA = {"config_sha256": "abc123", "seed": "7", "note": 'path C:\\x "quoted"\nline two ☉'}
N_STARS, SEED = 24_000, 5


def _config(**catalog) -> RunConfig:
    return RunConfig.model_validate({
        "galaxy": {"sun_position_kpc": SUN, "r_max_kpc": R_MAX},
        "sample": {"shard_size": 7_000, "batch_size": 5_000},
        "catalog": {"zarr": False} | catalog})


ADAPTIVE = _config(partition_order=None, highest_order=7, max_rows_per_partition=1500)


def _sky(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Uniform all-sky points plus a dense clump, (ra, dec) [deg]."""
    rng = np.random.default_rng(seed)
    ra = rng.uniform(0, 360, n)
    dec = np.degrees(np.arcsin(rng.uniform(-1, 1, n)))
    clump = n // 3
    ra[:clump] = rng.normal(120.0, 1.5, clump) % 360
    dec[:clump] = np.clip(rng.normal(-30.0, 1.5, clump), -90, 90)
    return ra, dec


@pytest.fixture(scope="module")
def written(enbid_model_dir) -> Path:
    out = ROOT / "adaptive"
    shutil.rmtree(out, ignore_errors=True)
    write_catalog(enbid_model_dir, N_STARS, SEED, out, ADAPTIVE, METADATA,
                  LocalCatalogRunner(spill_rows=7_000))
    return out / "hats"


@pytest.fixture(scope="module")
def full_table(enbid_model_dir) -> pa.Table:
    return drawn_catalog_rows(enbid_model_dir, N_STARS, SEED, ADAPTIVE)


def test_spatial_index_matches_hats_pixels_at_every_order():
    ra, dec = _sky(5000, seed=1)
    index = spatial_index(ra, dec)
    for order in (0, 3, 8, 12):
        np.testing.assert_array_equal(pixel_at_order(index, order), radec2pix(order, ra, dec))


def _check_tiling(plan, index, highest_order, max_rows):
    starts = np.array([index_range(p)[0] for p in plan.pixels])
    ends = np.array([index_range(p)[1] for p in plan.pixels])
    assert np.all(starts[1:] >= ends[:-1]), "partitions overlap"
    members = (index[:, None] >= starts) & (index[:, None] < ends)
    assert np.all(members.sum(axis=1) == 1), "a star is in none or several partitions"
    np.testing.assert_array_equal(members.sum(axis=0), plan.counts)
    np.testing.assert_array_equal(plan.assign(index), members.argmax(axis=1))
    for pixel, count in zip(plan.pixels, plan.counts, strict=True):
        assert count <= max_rows or pixel.order == highest_order


def test_adaptive_plan_tiles_the_sky_with_the_largest_pixels_under_the_threshold():
    ra, dec = _sky(20_000, seed=2)
    index = spatial_index(ra, dec)
    counter = PixelCounter(order=6)
    for start in range(0, len(index), 3000):
        counter.add(index[start:start + 3000])
    plan = adaptive_plan(counter, max_rows=400)
    _check_tiling(plan, index, highest_order=6, max_rows=400)
    area = sum(4.0 ** -p.order for p in plan.pixels)
    assert area == pytest.approx(12.0)  # the uniform stars leave no order-0 pixel empty
    orders = {p.order for p in plan.pixels}
    assert min(orders) <= 2 and max(orders) >= 5, orders  # the clump is split finer
    for pixel in plan.pixels:  # the parent of each partition would be too full
        if pixel.order > 0:
            parent = pixel.convert_to_lower_order(1)
            start, end = index_range(parent)
            assert np.count_nonzero((index >= start) & (index < end)) > 400


def test_adaptive_plan_keeps_overfull_pixels_of_the_highest_order():
    index = spatial_index(np.full(50, 10.0), np.full(50, 20.0))
    counter = PixelCounter(order=4)
    counter.add(index)
    plan = adaptive_plan(counter, max_rows=10)
    assert plan.pixels == (HealpixPixel(4, int(pixel_at_order(index[:1], 4)[0])),)
    assert plan.counts == (50,)


def test_fixed_order_plan_and_batched_counts(monkeypatch):
    monkeypatch.setattr(healpix, "_COMPACT_ENTRIES", 100)  # exercise the merging of counts
    ra, dec = _sky(12_000, seed=3)
    index = spatial_index(ra, dec)
    counter = PixelCounter(order=3)
    for start in range(0, len(index), 500):
        counter.add(index[start:start + 500])
    plan = plan_partitions(counter, partition_order=3, max_rows=1)
    pixels, counts = np.unique(pixel_at_order(index, 3), return_counts=True)
    assert plan.pixels == tuple(HealpixPixel(3, int(p)) for p in pixels)
    assert plan.counts == tuple(counts.tolist())
    _check_tiling(plan, index, highest_order=3, max_rows=1)


def test_assign_rejects_stars_outside_the_plan():
    counter = PixelCounter(order=2)
    counter.add(spatial_index(np.array([10.0]), np.array([10.0])))
    plan = adaptive_plan(counter, max_rows=5)
    with pytest.raises(InputError, match="outside the partition plan"):
        plan.assign(spatial_index(np.array([200.0]), np.array([-60.0])))


def test_hats_catalog_layout_and_metadata(written, full_table):
    assert is_valid_catalog(written, strict=True, fail_fast=True, verbose=False)
    catalog = hats.read_hats(written)
    manifest = read_manifest(written)
    assert catalog.catalog_info.total_rows == N_STARS == manifest["rows"]
    pixels = catalog.get_healpix_pixels()
    assert sorted(pixels) == sorted(HealpixPixel(o, p) for o, p, _ in manifest["partitions"])
    assert len(pixels) > 10 and max(c for *_, c in manifest["partitions"]) <= 1500
    files = sorted(str(p.relative_to(written / "dataset"))
                   for p in (written / "dataset").rglob("Npix=*.parquet"))
    assert files == sorted(f"Norder={p.order}/Dir={p.pixel // 10000 * 10000}/Npix={p.pixel}"
                           ".parquet" for p in pixels)
    properties = catalog.catalog_info
    assert (properties.ra_column, properties.dec_column) == ("ra", "dec")
    assert (properties.healpix_column, properties.healpix_order) == ("_healpix_29", 29)
    extra = properties.extra_dict()
    assert {k: extra[f"gflow_{k}"] for k in METADATA} == METADATA
    schema = pq.read_schema(written / "dataset" / "_common_metadata")
    assert schema.names == list(COLUMN_UNITS)
    assert {f.name: f.metadata[b"unit"].decode() for f in schema} == COLUMN_UNITS
    assert json.loads(schema.metadata[b"gflow_dist"]) == METADATA
    footer = pq.read_metadata(written / "dataset" / "_metadata")
    assert footer.num_rows == N_STARS
    assert sorted({footer.row_group(i).column(0).file_path
                   for i in range(footer.num_row_groups)}) == files
    ids = []
    for pixel in pixels:
        table = pq.read_table(hats.io.pixel_catalog_file(written, pixel))
        index = table["_healpix_29"].to_numpy()
        start, end = index_range(pixel)
        assert np.all((index >= start) & (index < end))
        keys = np.lexsort((table["star_id"].to_numpy(), index))
        np.testing.assert_array_equal(keys, np.arange(len(keys)))
        ids.append(table["star_id"].to_numpy())
    ids = np.concatenate(ids)
    np.testing.assert_array_equal(np.sort(ids), np.arange(N_STARS))
    expected = full_table.sort_by([("_healpix_29", "ascending"), ("star_id", "ascending")])
    written_rows = pa.concat_tables(pq.read_table(hats.io.pixel_catalog_file(written, p))
                                    for p in sorted(pixels, key=lambda p: index_range(p)[0]))
    assert written_rows.equals(expected.replace_schema_metadata(written_rows.schema.metadata))


def test_rerun_is_a_no_op_and_the_output_is_independent_of_the_spill_buffer(
        written, enbid_model_dir):
    before = {p: p.stat().st_mtime_ns for p in written.rglob("*") if p.is_file()}
    again = write_catalog(enbid_model_dir, N_STARS, SEED, written.parent, ADAPTIVE, METADATA,
                          LocalCatalogRunner())
    assert again == read_manifest(written)
    assert {p: p.stat().st_mtime_ns for p in written.rglob("*") if p.is_file()} == before
    other = ROOT / "rebuffered"
    shutil.rmtree(other, ignore_errors=True)
    write_catalog(enbid_model_dir, N_STARS, SEED, other, ADAPTIVE, METADATA,
                  LocalCatalogRunner(spill_rows=500, batch_rows=333))
    for sub in ("hats", "margin", "index"):
        files = list((written.parent / sub / "dataset").rglob("*.parquet"))
        assert files, sub
        for path in files:
            copy = other / path.relative_to(written.parent)
            assert copy.read_bytes() == path.read_bytes(), copy
    assert sorted(p.name for p in other.iterdir()) == [
        "collection.properties", "hats", "index", "margin"]


class _FailingRunner(LocalCatalogRunner):
    """Writes every partition, then fails before the catalog is published."""

    def write_partitions(self, *args, **kwargs):
        super().write_partitions(*args, **kwargs)
        raise OSError("disk full")


def test_changed_inputs_replace_the_catalog_and_failures_leave_it_untouched(enbid_model_dir):
    out = ROOT / "replace"
    shutil.rmtree(out, ignore_errors=True)
    config = _config(partition_order=2)
    first = write_catalog(enbid_model_dir, 4000, SEED, out, config, METADATA,
                          LocalCatalogRunner())
    second = write_catalog(enbid_model_dir, 5000, SEED, out, config, METADATA,
                           LocalCatalogRunner())
    assert (first["rows"], second["rows"]) == (4000, 5000)
    assert hats.read_hats(out / "hats").catalog_info.total_rows == 5000
    margin = hats.read_hats(out / "margin").catalog_info.total_rows
    assert margin == second["margin_rows"] > 0
    for runner in (_FailingRunner(), _FailingIndexRunner()):
        with pytest.raises(OSError, match="disk full"):
            write_catalog(enbid_model_dir, 6000, SEED, out, config, METADATA, runner)
        assert read_manifest(out / "hats") == second
        assert hats.read_hats(out / "hats").catalog_info.total_rows == 5000
        assert hats.read_hats(out / "margin").catalog_info.total_rows == margin
        assert hats.read_hats(out / "index").catalog_info.total_rows == 5000
        # the drawn shards stay for the next run to reuse; no half-written catalog is left
        assert sorted(p.name for p in out.iterdir()) == [
            "collection.properties", "hats", "index", "margin"]
        assert sorted(p.name for p in out.parent.iterdir() if p.name.startswith(".replace")) == [
            ".replace.shards"]


class _FailingIndexRunner(LocalCatalogRunner):
    """Writes the partitions and margins, then fails writing the star_id index."""

    def write_index(self, *args, **kwargs):
        raise OSError("disk full")


def test_rows_without_a_unit_or_of_other_types_are_rejected(full_table):
    table = full_table.slice(0, 100)
    no_unit = table.cast(pa.schema([f.remove_metadata() if f.name == "pmra" else f
                                    for f in table.schema]))
    with pytest.raises(InputError, match="'pmra' has no unit"):
        table_records(no_unit, no_unit.schema)
    text = pa.schema([*catalog_schema(), pa.field("name", pa.string(), metadata={b"unit": ""})])
    with pytest.raises(InputError, match="'name' has type string"):
        table_records(table.append_column("name", pa.array(["a"] * 100)), text)


class _ChunkLog(WrapperStore):
    """A store that records every key it reads."""

    def __init__(self, store):
        super().__init__(store)
        self.keys: list[str] = []

    async def get(self, key, prototype, byte_range=None):
        self.keys.append(key)
        return await self._store.get(key, prototype, byte_range)


@pytest.fixture(scope="module")
def zarr_store(written) -> Path:
    store = written.parent / "stars.zarr"
    write_zarr_catalog(written, store, chunk_rows=128)
    return store


def test_zarr_store_holds_the_parquet_stars_aligned_to_partitions(written, zarr_store):
    dataset = xr.open_zarr(zarr_store)
    assert {name: dataset[name].attrs["units"] for name in COLUMN_UNITS} == COLUMN_UNITS
    assert dataset.attrs["gflow_config_sha256"] == "abc123"
    assert dataset.attrs["gflow_note"] == METADATA["note"]
    valid = dataset["valid"].values
    parquet = pq.read_table(written / "dataset").sort_by([("_healpix_29", "ascending"),
                                                          ("star_id", "ascending")])
    for name in COLUMN_UNITS:
        np.testing.assert_array_equal(dataset[name].values[valid], parquet[name].to_numpy())
    offsets, counts = dataset["offset"].values, dataset["count"].values
    assert np.all(offsets % 128 == 0) and counts.sum() == N_STARS
    for offset, count in zip(offsets, counts, strict=True):
        padded_end = offset + -(-count // 128) * 128
        assert valid[offset:offset + count].all() and not valid[offset + count:padded_end].any()


def test_read_zarr_pixel_reads_only_its_partition_chunks(written, zarr_store, full_table):
    index = full_table["_healpix_29"].to_numpy()
    group = zarr.open_group(zarr_store, mode="r")
    partitions = [HealpixPixel(int(o), int(p))
                  for o, p in zip(group["pixel_order"][:], group["pixel"][:], strict=True)]
    big = max(range(len(partitions)), key=lambda k: group["count"][k])
    target = partitions[big]
    child = target.convert_to_higher_order(2)[5]
    parent = target.convert_to_lower_order(target.order)
    for pixel in (target, child, parent):
        start, end = index_range(pixel)
        expected = np.sort(full_table["star_id"].to_numpy()[(index >= start) & (index < end)])
        frame = read_zarr_pixel(zarr_store, pixel, ["star_id", "pmra"])
        assert list(frame.columns) == ["star_id", "pmra"]
        np.testing.assert_array_equal(np.sort(frame["star_id"].to_numpy()), expected)
    logged = _ChunkLog(LocalStore(zarr_store, read_only=True))
    frame = read_zarr_pixel(logged, target, ["pmra"])
    offset, count = int(group["offset"][big]), int(group["count"][big])
    chunks = {f"pmra/c/{k}" for k in range(offset // 128, -(-(offset + count) // 128))}
    data_keys = {k for k in logged.keys if "/c/" in k}
    index_keys = {f"{name}/c/0" for name in ("pixel_order", "pixel", "offset", "count")}
    hp_chunks = {c.replace("pmra", "_healpix_29") for c in chunks}
    assert data_keys == chunks | hp_chunks | index_keys
    assert len(frame) == count
    assert list(read_zarr_pixel(zarr_store, child).columns) == list(COLUMN_UNITS)
    with pytest.raises(InputError, match="not star columns"):
        read_zarr_pixel(zarr_store, target, ["offset"])


def test_zarr_rerun_is_a_no_op(written, zarr_store):
    manifest = read_manifest(zarr_store)
    mtime = (zarr_store / "zarr.json").stat().st_mtime_ns
    assert write_zarr_catalog(written, zarr_store, chunk_rows=128) == manifest
    assert (zarr_store / "zarr.json").stat().st_mtime_ns == mtime
    assert manifest["rows"] == N_STARS and manifest["padded_rows"] >= N_STARS


def test_a_catalog_records_the_frame_of_its_config(enbid_model_dir, tmp_path):
    """The observables, the manifest and the metadata all use ``config.galaxy.frame``."""
    config = _config(partition_order=1)
    frame = config.galaxy.frame.to_metadata()
    write_catalog(enbid_model_dir, 500, SEED, tmp_path, config, run_metadata(config),
                  LocalCatalogRunner())
    assert read_manifest(tmp_path / "hats")["request"]["frame"] == frame
    schema = pq.read_schema(tmp_path / "hats" / "dataset" / "_common_metadata")
    recorded = json.loads(schema.metadata[b"gflow_dist"])
    assert {key: recorded[key] for key in frame} == frame


def test_sky_maps_hold_every_star_and_hats_reads_them(written, full_table):
    """The maps come from the shards' pixel counts; hats and lsdb's reader agree."""
    from hats.io.skymap import read_skymap

    catalog = hats.read_hats(written)
    info = catalog.catalog_info
    assert info.skymap_order == 7 and list(info.skymap_alt_orders) == [2, 4, 6]
    healpix_29 = full_table["_healpix_29"].to_numpy()
    for order in (0, 2, 3, 7):
        expected = np.bincount(pixel_at_order(healpix_29, order), minlength=12 * 4**order)
        np.testing.assert_array_equal(read_skymap(catalog, order), expected)
    assert (written / "point_map.fits").exists() and (written / "skymap.4.fits").exists()


def test_the_figure_stars_are_the_first_shards_stars(enbid_model_dir, full_table, tmp_path):
    config = _config(partition_order=2, figure_stars=10_000)
    write_catalog(enbid_model_dir, N_STARS, SEED, tmp_path, config, METADATA,
                  LocalCatalogRunner())
    stars = pq.read_table(tmp_path / "hats" / FIGURE_STARS_FILE)
    np.testing.assert_array_equal(stars["star_id"].to_numpy(), np.arange(10_000))
    assert stars.equals(full_table.slice(0, 10_000).cast(stars.schema))
    assert is_valid_catalog(tmp_path / "hats", strict=True, fail_fast=True, verbose=False)
    assert read_manifest(tmp_path / "hats")["request"]["figure_stars"] == 10_000


def test_a_catalog_above_the_zarr_cap_skips_the_store_and_says_so(enbid_model_dir, tmp_path,
                                                                  caplog):
    capped = _config(partition_order=2, zarr=True, zarr_max_stars=N_STARS - 1)
    with caplog.at_level(logging.WARNING, logger="gflow_dist.catalog.build"):
        write_catalog(enbid_model_dir, N_STARS, SEED, tmp_path, capped, METADATA,
                      LocalCatalogRunner())
    assert not (tmp_path / "stars.zarr").exists() and (tmp_path / "hats").is_dir()
    assert "catalog.zarr_max_stars=23,999" in caplog.text
    write_catalog(enbid_model_dir, N_STARS, SEED, tmp_path,
                  _config(partition_order=2, zarr=True), METADATA, LocalCatalogRunner())
    assert (tmp_path / "stars.zarr").is_dir()
