"""What readers see in a partition file: row groups they can skip, units and UCDs."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import astropy.units as u
import hats
import lsdb
import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as pds
import pyarrow.parquet as pq
import pytest
from astropy.table import QTable
from hats.io.validation import is_valid_catalog
from pydantic import ValidationError

from gflow_dist.catalog import partitions
from gflow_dist.catalog.build import write_catalog
from gflow_dist.catalog.local import LocalCatalogRunner
from gflow_dist.catalog.observables import COLUMN_UNITS
from gflow_dist.catalog.partitions import PARTITIONING_KEYS, partition_schema
from gflow_dist.config import RunConfig
from gflow_dist.outputs import UCDS
from tests.conftest import R_MAX, SUN

ROOT = Path("/tmp/test-catalog-format")
N_STARS, SEED, ROW_GROUP = 20_000, 4, 500
CONFIG = RunConfig.model_validate({
    "galaxy": {"sun_position_kpc": SUN, "r_max_kpc": R_MAX},
    "sample": {"shard_size": 10_000},
    "catalog": {"zarr": False, "partition_order": None, "highest_order": 7,
                "max_rows_per_partition": 5000, "row_group_rows": ROW_GROUP}})


@pytest.fixture(scope="module")
def written(enbid_model_dir) -> Path:
    """A catalog of partitions of up to 5,000 stars in row groups of 500."""
    out = ROOT / "catalog"
    shutil.rmtree(out, ignore_errors=True)
    write_catalog(enbid_model_dir, N_STARS, SEED, out, CONFIG, {"seed": str(SEED)},
                  LocalCatalogRunner())
    return out / "hats"


def _files(hats_dir: Path) -> list[Path]:
    return sorted((hats_dir / "dataset").rglob("Npix=*.parquet"))


def _scanned(dataset: pds.Dataset, expr: pc.Expression) -> int:
    """Row groups a filtered scan of ``dataset`` reads: those whose statistics may match."""
    return sum(len(f.split_by_row_group(expr)) for f in dataset.get_fragments(filter=expr))


def test_row_group_rows_is_a_validated_key_that_decides_the_files():
    assert RunConfig().catalog.row_group_rows == 100_000
    assert "row_group_rows" in PARTITIONING_KEYS
    for bad in (0, -5, 2.5):
        with pytest.raises(ValidationError):
            RunConfig.model_validate({"catalog": {"row_group_rows": bad}})
    assert partitions.row_group_rows(partition_schema({}, 500)) == 500


def test_partitions_hold_several_row_groups_with_statistics_in_footers_and_metadata(written):
    assert is_valid_catalog(written, strict=True, fail_fast=True, verbose=False)
    assert hats.read_hats(written).catalog_info.extra_dict()["gflow_row_group_rows"] == "500"
    groups = 0
    for path in _files(written):
        footer = pq.read_metadata(path)
        sizes = [footer.row_group(i).num_rows for i in range(footer.num_row_groups)]
        assert all(n == ROW_GROUP for n in sizes[:-1]) and 0 < sizes[-1] <= ROW_GROUP
        groups += footer.num_row_groups
    assert max(pq.read_metadata(p).num_row_groups for p in _files(written)) >= 8
    metadata = pq.read_metadata(written / "dataset" / "_metadata")
    assert metadata.num_row_groups == groups and metadata.num_rows == N_STARS
    for i in range(metadata.num_row_groups):
        group = metadata.row_group(i)
        for j in range(group.num_columns):
            column = group.column(j)
            assert column.is_stats_set and column.statistics.has_min_max
            assert column.has_column_index and column.has_offset_index
    first = metadata.row_group(0).column(metadata.schema.names.index("parallax"))
    path = written / "dataset" / first.file_path
    table = pq.read_table(path, columns=["parallax"]).slice(0, ROW_GROUP)
    assert first.statistics.min == pc.min(table["parallax"]).as_py()
    assert first.statistics.max == pc.max(table["parallax"]).as_py()


def test_a_small_cone_reads_few_row_groups(written):
    """Rows are sorted by _healpix_29: a sub-pixel or a 1°×1° box skips most groups."""
    everything = pds.parquet_dataset(written / "dataset" / "_metadata")
    total = sum(f.num_row_groups for f in everything.get_fragments())
    big = max(_files(written), key=lambda p: pq.read_metadata(p).num_rows)
    one = pds.dataset(big, format="parquet")
    groups = pq.read_metadata(big).num_row_groups
    order, pixel = int(big.parent.parent.name.split("=")[1]), int(big.stem.split("=")[1])
    span = 4 ** (29 - order) // 16
    table = pq.read_table(big)
    index = table["_healpix_29"].to_numpy()
    for k in range(16):  # each of the 16 pixels two orders below the partition's
        start = (pixel * 16 + k) * span
        expr = (pc.field("_healpix_29") >= start) & (pc.field("_healpix_29") < start + span)
        assert _scanned(one, expr) <= 3 < groups
        assert _scanned(everything, expr) == _scanned(one, expr)
        rows = one.to_table(filter=expr)
        assert rows.num_rows == np.sum((index >= start) & (index < start + span))
    ra, dec = table["ra"].to_numpy(), table["dec"].to_numpy()
    centre = np.argsort(index)[len(index) // 3]
    box = ((pc.field("ra") > ra[centre] - 0.5) & (pc.field("ra") < ra[centre] + 0.5)
           & (pc.field("dec") > dec[centre] - 0.5) & (pc.field("dec") < dec[centre] + 0.5))
    assert _scanned(one, box) <= groups // 2
    assert _scanned(everything, box) <= total // 10


def test_parallax_cuts_prune_only_when_extreme_and_filters_return_every_star(written):
    """Parallax is not a sort key: groups' ranges overlap, only extreme cuts skip groups."""
    everything = pds.parquet_dataset(written / "dataset" / "_metadata")
    total = sum(f.num_row_groups for f in everything.get_fragments())
    stars = everything.to_table(columns=["star_id", "parallax"])
    parallax = stars["parallax"].to_numpy()
    near = np.percentile(parallax, 99.9)  # the ~20 nearest stars
    assert _scanned(everything, pc.field("parallax") > near) <= total // 2
    band = np.percentile(parallax, [50, 50.1])  # a narrow cut of typical stars
    expr = (pc.field("parallax") > band[0]) & (pc.field("parallax") < band[1])
    assert _scanned(everything, expr) > 0.9 * total
    for cut in (near, np.percentile(parallax, 90)):
        expected = np.sort(stars["star_id"].to_numpy()[parallax > cut])
        by_arrow = pq.read_table(written / "dataset", columns=["star_id"],
                                 filters=[("parallax", ">", cut)])["star_id"].to_numpy()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            by_lsdb = lsdb.open_catalog(written, columns=["star_id", "parallax"],
                                        filters=[("parallax", ">", cut)]).compute()
        np.testing.assert_array_equal(np.sort(by_arrow), expected)
        np.testing.assert_array_equal(np.sort(by_lsdb["star_id"].to_numpy()), expected)
        assert len(expected) > 0


def test_astropy_reads_quantities_and_ucds_from_a_partition_file(written):
    path = _files(written)[0]
    table = QTable.read(path)
    assert table.colnames == list(COLUMN_UNITS)
    assert isinstance(table["ra"], u.Quantity) and table["ra"].unit == u.deg
    assert table["pmra"].unit == u.mas / u.yr
    assert table["radial_velocity"].unit == u.km / u.s
    assert table["parallax"].unit == u.mas and table["x"].unit == u.kpc
    assert not isinstance(table["star_id"], u.Quantity) and table["star_id"].dtype == np.uint64
    assert {name: table[name].info.meta["ucd"] for name in table.colnames} == {
        name: UCDS[name] for name in COLUMN_UNITS}
    np.testing.assert_array_equal(table["ra"].value, pq.read_table(path)["ra"].to_numpy())
    vo = QTable.read(path, format="parquet.votable")  # IVOA VOParquet 1.0
    for name, unit in COLUMN_UNITS.items():
        assert vo[name].unit == (u.Unit(unit) if unit else None)
        assert vo[name].info.meta["ucd"] == UCDS[name]
    np.testing.assert_array_equal(vo["pmdec"].value, table["pmdec"].value)
    common = pq.read_schema(written / "dataset" / "_common_metadata").metadata
    assert common[b"IVOA.VOTable-Parquet.version"] == b"1.0"
    assert pq.read_schema(path).metadata == common
    fields = pq.read_schema(path)
    assert {f.name: f.metadata[b"ucd"].decode() for f in fields} == {
        name: UCDS[name] for name in fields.names}
    assert len(lsdb.open_catalog(written).compute()) == N_STARS
