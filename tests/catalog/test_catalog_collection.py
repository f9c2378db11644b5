"""The HATS collection of a catalog: margin cache (a real crossmatch across partition
edges) and the star_id index (id_search reads only the stars' partitions)."""

from __future__ import annotations

import lsdb
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from hats.catalog.dataset.collection_properties import CollectionProperties
from hats.pixel_math.spatial_index import SPATIAL_INDEX_COLUMN

from gflow_dist.catalog.build import COLLECTION_FILE, write_catalog
from gflow_dist.catalog.healpix import PartitionPlan, pixel_at_order, spatial_index
from gflow_dist.catalog.local import LocalCatalogRunner
from gflow_dist.catalog.margins import margin_order
from gflow_dist.catalog.partitions import partition_file
from gflow_dist.config import RunConfig
from gflow_dist.errors import InputError
from tests.conftest import R_MAX, SUN

N, SEED, ORDER = 20_000, 5, 3
MARGIN_ARCSEC, JITTER_ARCSEC, RADIUS_ARCSEC = 300.0, 60.0, 120.0
"""The catalog's ~20k stars lie ~1° apart, so few lie within arcseconds of a partition
edge; the test scales the margin, the offsets of the observed stars and the match radius
up together so that ~100 observed stars sit across an edge from their neighbour."""
CONFIG = RunConfig.model_validate({
    "galaxy": {"sun_position_kpc": SUN, "r_max_kpc": R_MAX},
    "sample": {"shard_size": 6000, "batch_size": 4096},
    "catalog": {"partition_order": ORDER, "margin_arcsec": MARGIN_ARCSEC, "zarr": False},
})


@pytest.fixture(scope="module")
def built(enbid_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("collection") / "enbid"
    manifest = write_catalog(enbid_model_dir, N, SEED, out, CONFIG, {"upsampler": "enbid"},
                             LocalCatalogRunner(spill_rows=5000))
    return out, manifest


@pytest.fixture(scope="module")
def stars(built):
    return lsdb.open_catalog(built[0] / "hats").compute().reset_index()


def _unit(ra_deg, dec_deg):
    ra, dec = np.radians(ra_deg), np.radians(dec_deg)
    return np.stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)], -1)


def _observed(stars: pd.DataFrame) -> pd.DataFrame:
    """Catalog stars moved by up to JITTER_ARCSEC: those that land in another partition
    than their star (whose neighbour is then only in the margin), and as many that don't."""
    rng = np.random.default_rng(0)
    angle = rng.uniform(0, 2 * np.pi, len(stars))
    step = rng.uniform(0, JITTER_ARCSEC, len(stars)) / 3600
    ra0, dec0 = stars["ra"].to_numpy(float), stars["dec"].to_numpy(float)
    dec = np.clip(dec0 + step * np.sin(angle), -89.9, 89.9)
    ra = (ra0 + step * np.cos(angle) / np.cos(np.radians(dec))) % 360
    moved = pd.DataFrame({"obs_id": np.arange(len(stars)), "ra": ra, "dec": dec})
    pixel = pixel_at_order(spatial_index(ra, dec), ORDER)
    crossed = pixel != pixel_at_order(stars[SPATIAL_INDEX_COLUMN].to_numpy(), ORDER)
    stayed = np.flatnonzero(~crossed)[: int(crossed.sum())]
    return moved.iloc[np.sort(np.concatenate([np.flatnonzero(crossed), stayed]))]


def _brute_force(observed: pd.DataFrame, stars: pd.DataFrame) -> dict[int, int]:
    """obs_id → star_id of the nearest star within RADIUS_ARCSEC, over every star."""
    cat = _unit(stars["ra"].to_numpy(), stars["dec"].to_numpy())
    obs = _unit(observed["ra"].to_numpy(), observed["dec"].to_numpy())
    cosine = np.clip(obs @ cat.T, -1, 1)
    nearest = cosine.argmax(1)
    dist = np.degrees(np.arccos(cosine[np.arange(len(obs)), nearest])) * 3600
    ids = stars["star_id"].to_numpy()
    return {int(o): int(ids[k]) for o, k, d in
            zip(observed["obs_id"], nearest, dist, strict=True) if d <= RADIUS_ARCSEC}


def _crossmatch(observed: pd.DataFrame, catalog: lsdb.Catalog) -> dict[int, int]:
    left = lsdb.from_dataframe(observed, ra_column="ra", dec_column="dec",
                               margin_threshold=None)
    matched = left.crossmatch(catalog, n_neighbors=1, radius_arcsec=RADIUS_ARCSEC,
                              suffixes=("_obs", "_cat"), suffix_method="all_columns").compute()
    return dict(zip(matched["obs_id_obs"].astype(int), matched["star_id_cat"].astype(int),
                    strict=True))


def test_collection_opens_the_catalog_with_its_margin_and_index(built):
    out, manifest = built
    properties = CollectionProperties.read_from_dir(out)
    assert (out / COLLECTION_FILE).exists() and properties.hats_primary_table_url == "hats"
    assert properties.default_margin == "margin"
    assert properties.all_indexes == {"star_id": "index"}
    catalog = lsdb.open_catalog(out)
    assert catalog.margin is not None
    assert catalog.margin.hc_structure.catalog_info.margin_threshold == MARGIN_ARCSEC
    assert len(catalog.get_healpix_pixels()) == len(manifest["partitions"])
    assert catalog.margin.hc_structure.catalog_info.total_rows == manifest["margin_rows"] > 0


def test_margin_holds_other_partitions_stars_near_the_edge(built, stars):
    """Every margin star lies outside the partition it serves and within two margin
    pixels' width of it; no star within margin_arcsec of the edge is missed (below)."""
    margin = lsdb.open_catalog(built[0]).margin
    frames = margin.compute().reset_index()
    assert set(frames.columns) == set(stars.columns)
    for pixel in margin.get_healpix_pixels()[:20]:
        rows = pq.read_table(built[0] / "margin/dataset" / partition_file(pixel))
        inside = pixel_at_order(rows.column(SPATIAL_INDEX_COLUMN).to_numpy(), pixel.order)
        assert (inside != pixel.pixel).all()
        assert rows.column(SPATIAL_INDEX_COLUMN).to_numpy().tolist() == sorted(
            rows.column(SPATIAL_INDEX_COLUMN).to_numpy().tolist())
    assert set(frames["star_id"]) <= set(stars["star_id"])


def test_crossmatch_across_partition_edges_needs_the_margin(built, stars):
    observed = _observed(stars)
    assert len(observed) > 40
    expected = _brute_force(observed, stars)
    with_margin = _crossmatch(observed, lsdb.open_catalog(built[0]))
    assert with_margin == expected
    with pytest.warns(RuntimeWarning, match="does not have a margin cache"):
        without = _crossmatch(observed, lsdb.open_catalog(built[0] / "hats"))
    assert without.items() < expected.items()
    assert len(expected) - len(without) > 20  # the observed stars across an edge


def test_id_search_reads_only_the_stars_partitions(built, stars):
    catalog = lsdb.open_catalog(built[0])
    wanted = [0, 7, 4321, 12_345, N - 1]
    found = catalog.id_search(values={"star_id": wanted})
    expected = stars[stars["star_id"].isin(wanted)]
    assert len(found.get_healpix_pixels()) == len(set(pixel_at_order(
        expected[SPATIAL_INDEX_COLUMN].to_numpy(), ORDER)))
    rows = found.compute().reset_index().sort_values("star_id")
    assert rows["star_id"].tolist() == wanted
    np.testing.assert_array_equal(rows["ra"], expected.sort_values("star_id")["ra"])


def test_index_maps_every_star_to_its_partition(built, stars):
    index = pq.read_table(built[0] / "index/dataset").to_pandas()
    assert index["star_id"].tolist() == list(range(N))
    by_id = stars.set_index("star_id").loc[index["star_id"]]
    np.testing.assert_array_equal(
        index["Npix"], pixel_at_order(by_id[SPATIAL_INDEX_COLUMN].to_numpy(), ORDER))
    assert (index["Norder"] == ORDER).all()


def test_rerun_is_a_no_op(built, enbid_model_dir):
    out, manifest = built
    mtime = (out / "margin/hats.properties").stat().st_mtime_ns
    again = write_catalog(enbid_model_dir, N, SEED, out, CONFIG, {"upsampler": "enbid"},
                          LocalCatalogRunner())
    assert again == manifest
    assert (out / "margin/hats.properties").stat().st_mtime_ns == mtime


def test_margin_order_must_be_finer_than_the_partitions(built):
    plan_pixels = lsdb.open_catalog(built[0] / "hats").hc_structure.get_healpix_pixels()
    plan = PartitionPlan(tuple(plan_pixels), tuple(1 for _ in plan_pixels))
    assert margin_order(plan, 10.0) == 13
    with pytest.raises(InputError, match="catalog.margin_arcsec"):
        margin_order(plan, 20_000.0)
