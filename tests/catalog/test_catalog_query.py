"""Queries over a written catalog: exact results, partition pruning, plain-reader access."""

from __future__ import annotations

import shutil
from pathlib import Path

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow.dataset as pds
import pyarrow.parquet as pq
import pytest
from hats.io.file_io import file_io
from hats.pixel_math import HealpixPixel

from gflow_dist.catalog import query
from gflow_dist.catalog.build import write_catalog
from gflow_dist.catalog.healpix import index_range
from gflow_dist.catalog.local import LocalCatalogRunner
from gflow_dist.catalog.observables import COLUMN_UNITS
from gflow_dist.config import RunConfig
from gflow_dist.errors import InputError
from tests.conftest import R_MAX, SUN, drawn_catalog_rows

ROOT = Path("/tmp/test-catalog-query")
N_STARS, SEED = 30_000, 9
CONFIG = RunConfig.model_validate({
    "galaxy": {"sun_position_kpc": SUN, "r_max_kpc": R_MAX},
    "sample": {"shard_size": 10_000},
    "catalog": {"partition_order": 3, "zarr": False}})


@pytest.fixture(scope="module")
def table(enbid_model_dir) -> pd.DataFrame:
    """The whole catalog as one pandas frame (the brute-force reference)."""
    return drawn_catalog_rows(enbid_model_dir, N_STARS, SEED, CONFIG).to_pandas()


@pytest.fixture(scope="module")
def catalog_dir(enbid_model_dir) -> Path:
    """``DIR/catalog/cnf`` holding a HATS catalog partitioned at fixed order 3."""
    directory = ROOT / "catalog" / "cnf"
    shutil.rmtree(ROOT, ignore_errors=True)
    write_catalog(enbid_model_dir, N_STARS, SEED, directory, CONFIG,
                  {"upsampler": "cnf", "seed": str(SEED)}, LocalCatalogRunner())
    return directory


def _separation_deg(ra, dec, ra0, dec0):
    ra, dec, ra0, dec0 = map(np.radians, (ra, dec, ra0, dec0))
    cos = np.sin(dec) * np.sin(dec0) + np.cos(dec) * np.cos(dec0) * np.cos(ra - ra0)
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def _brute_force_cone(table, ra0, dec0, radius):
    return table[_separation_deg(table["ra"], table["dec"], ra0, dec0) < radius]


@pytest.mark.parametrize(("ra0", "dec0", "radius"),
                         [(266.4, -28.9, 4.0), (359.0, 10.0, 6.0), (40.0, 87.0, 5.0),
                          (281.9, -2.6, 0.5)])
def test_cone_returns_exactly_the_stars_within_the_radius(catalog_dir, table, ra0, dec0, radius):
    frame = query.cone(catalog_dir, ra0, dec0, radius, columns=["star_id", "ra"]).compute()
    expected = _brute_force_cone(table, ra0, dec0, radius)
    assert len(expected) > 0
    assert set(frame["star_id"]) == set(expected["star_id"])
    assert list(frame.columns) == ["star_id", "ra"]


def test_small_cone_reads_only_a_few_partition_files(catalog_dir, monkeypatch):
    opened: list[str] = []
    read_partition = file_io.read_parquet_file_to_pandas

    def logging_read(path, *args, **kwargs):
        opened.append(str(path))
        return read_partition(path, *args, **kwargs)

    monkeypatch.setattr(file_io, "read_parquet_file_to_pandas", logging_read)
    total = len(query.open_catalog(catalog_dir).get_healpix_pixels())
    frame = query.cone(catalog_dir, 266.4, -28.9, 1.0, columns=["star_id"])
    rows = len(frame.compute())
    assert rows > 0 and total > 300
    assert all("Npix=" in path for path in opened)
    assert 1 <= len(opened) == len(set(opened)) == frame.npartitions <= 4


def test_pixels_returns_the_stars_inside_each_pixel(catalog_dir, table):
    index = table["_healpix_29"].to_numpy()
    requested = [HealpixPixel(3, 300), HealpixPixel(5, 4 * 16 * 100 + 7), HealpixPixel(1, 20)]
    inside = np.zeros(len(table), bool)
    for pixel in requested:
        start, end = index_range(pixel)
        inside |= (index >= start) & (index < end)
    frame = query.pixels(catalog_dir / "hats", requested, columns=["star_id", "pmdec"]).compute()
    assert set(frame["star_id"]) == set(table["star_id"][inside]) and inside.sum() > 0
    assert list(frame.columns) == ["star_id", "pmdec"]
    with pytest.raises(InputError, match="does not exist"):
        query.pixels(catalog_dir, [HealpixPixel(0, 12)])


@pytest.mark.parametrize("order", [1, 3, 6, 12])  # 12: finer than the sky maps, counted
def test_counts_per_pixel_equal_pandas(catalog_dir, table, order):
    counts = query.counts_per_pixel(catalog_dir, order)
    pixels = table["_healpix_29"].to_numpy() >> (2 * (29 - order))
    expected = pd.Series(pixels).value_counts().sort_index()
    np.testing.assert_array_equal(counts.index.to_numpy(), expected.index.to_numpy())
    np.testing.assert_array_equal(counts.to_numpy(), expected.to_numpy())


def test_mean_proper_motion_in_cone_equals_pandas(catalog_dir, table):
    result = query.mean_proper_motion_in_cone(catalog_dir, 90.0, 0.0, 10.0)
    expected = _brute_force_cone(table, 90.0, 0.0, 10.0)
    assert result["n"] == len(expected) > 10
    assert result["pmra"] == pytest.approx(expected["pmra"].mean(), rel=1e-12)
    assert result["pmdec"] == pytest.approx(expected["pmdec"].mean(), rel=1e-12)
    empty = query.mean_proper_motion_in_cone(catalog_dir, 90.0, 0.0, 1e-6)
    assert empty["n"] == 0 and np.isnan(empty["pmra"])


def test_export_to_parquet_and_csv(catalog_dir, table, tmp_path):
    frame = query.cone(catalog_dir, 180.0, -5.0, 8.0, columns=["star_id", "ra", "pmra"])
    expected = _brute_force_cone(table, 180.0, -5.0, 8.0).sort_values("star_id")
    assert query.export(frame, tmp_path / "cone.parquet") == len(expected)
    written = pq.read_table(tmp_path / "cone.parquet")
    assert written.schema.field("pmra").metadata[b"unit"] == b"mas / yr"
    assert written.column_names == ["_healpix_29", "star_id", "ra", "pmra"]
    back = written.to_pandas().sort_values("star_id")
    np.testing.assert_array_equal(back["pmra"].to_numpy(), expected["pmra"].to_numpy())
    assert query.export(frame, tmp_path / "cone.csv") == len(expected)
    csv = pd.read_csv(tmp_path / "cone.csv").sort_values("star_id")
    np.testing.assert_array_equal(csv["star_id"].to_numpy(), expected["star_id"].to_numpy())
    np.testing.assert_allclose(csv["ra"].to_numpy(), expected["ra"].to_numpy(), rtol=1e-15)
    with pytest.raises(InputError, match="must end in"):
        query.export(frame, tmp_path / "cone.txt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cone.csv", "cone.parquet"]


def test_plain_readers_open_the_catalog(catalog_dir, table):
    dataset_dir = catalog_dir / "hats" / "dataset"
    frame = dd.read_parquet(dataset_dir)
    assert len(frame) == N_STARS
    assert set(COLUMN_UNITS) <= set(frame.columns)
    arrow = pds.dataset(dataset_dir, format="parquet", partitioning=None)
    assert arrow.count_rows() == N_STARS
    assert {f.name: f.metadata[b"unit"].decode() for f in arrow.schema} == COLUMN_UNITS
    read = arrow.to_table(columns=["star_id", "pmdec"]).to_pandas().sort_values("star_id")
    np.testing.assert_array_equal(read["pmdec"].to_numpy(), table["pmdec"].to_numpy())


def test_bad_query_input_is_rejected(catalog_dir, tmp_path):
    with pytest.raises(InputError, match="no HATS catalog"):
        query.cone(tmp_path, 0.0, 0.0, 1.0)
    with pytest.raises(InputError, match="radius"):
        query.cone(catalog_dir, 0.0, 0.0, -1.0)
    with pytest.raises(InputError, match="unknown columns"):
        query.cone(catalog_dir, 0.0, 0.0, 1.0, columns=["magnitude"])


def test_lsdb_is_used_through_its_public_names_only():
    """``lsdb.core...`` and the like are internals that move between releases."""
    import ast

    for path in Path(query.__file__).parents[1].rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([node.module or ""] if isinstance(node, ast.ImportFrom)
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            assert not any(n.startswith("lsdb.") for n in names), f"{path}: {names}"
