"""Streamed catalog figures: the histograms equal direct numpy ones, and the PNGs are drawn."""

from __future__ import annotations

import astropy.units as u
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from astropy.coordinates import SkyCoord
from astropy_healpix import HEALPix
from matplotlib.image import imread

from gflow_dist.catalog.build import FIGURE_STARS_FILE
from gflow_dist.catalog.healpix import pixel_at_order, spatial_index
from gflow_dist.catalog.observables import COLUMN_UNITS, observables
from gflow_dist.catalog.plots import (
    CORNER_COLUMNS,
    PAPER_WINDOW,
    Histogram,
    SkyWindow,
    corner_histograms,
    fill_histograms,
    iter_parquet_columns,
    make_figures,
    window_particles,
    window_ranges,
)
from gflow_dist.catalog.shards import MergedCounts
from gflow_dist.catalog.skymaps import read_star_counts, write_skymaps
from gflow_dist.data.mock import MockGalaxy
from gflow_dist.errors import GflowError
from gflow_dist.frame import SolarFrame

N_STARS = 40_000
PARTITION_ORDER = 1
SKYMAP_ORDER = 6
DISK_WINDOW = SkyWindow(ra_deg=130.0, dec_deg=-45.0, radius_deg=25.0)
"""A window on the Galactic disk (l ≈ 265°, b ≈ −3°), where the mock has many stars."""


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    """(hats_dir, columns): mock stars written as a hive-partitioned HATS-like dataset."""
    stars = MockGalaxy().sample(N_STARS, seed=5)
    columns = {"star_id": np.arange(N_STARS, dtype=np.uint64)}
    columns |= observables(stars, SolarFrame())
    columns["_healpix_29"] = spatial_index(columns["ra"], columns["dec"])
    table = pa.table({name: columns[name] for name in COLUMN_UNITS})
    hats_dir = tmp_path_factory.mktemp("test_plots") / "hats"
    pixels = columns["_healpix_29"] >> 2 * (29 - PARTITION_ORDER)
    for pixel in np.unique(pixels):
        path = hats_dir / f"dataset/Norder={PARTITION_ORDER}/Dir=0/Npix={pixel}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table.filter(pa.array(pixels == pixel)), path, row_group_size=1000)
    pq.write_metadata(table.schema, hats_dir / "dataset" / "_common_metadata")
    pq.write_table(table, hats_dir / FIGURE_STARS_FILE)
    pixels, counts = np.unique(pixel_at_order(columns["_healpix_29"], SKYMAP_ORDER),
                               return_counts=True)
    write_skymaps(hats_dir, MergedCounts(SKYMAP_ORDER, pixels, counts))
    return hats_dir, columns


def _in_window(columns, window):
    inside = window.contains(columns["ra"], columns["dec"])
    return {name: values[inside] for name, values in columns.items()}


def test_window_contains_matches_astropy_separation(catalog):
    _, columns = catalog
    for window in (PAPER_WINDOW, DISK_WINDOW):
        centre = SkyCoord(window.ra_deg, window.dec_deg, unit="deg")
        separation = SkyCoord(columns["ra"], columns["dec"], unit="deg").separation(centre).deg
        clear = np.abs(separation - window.radius_deg) > 1e-9
        inside = window.contains(columns["ra"], columns["dec"])
        np.testing.assert_array_equal(inside[clear], separation[clear] < window.radius_deg)
    assert 50 < DISK_WINDOW.contains(columns["ra"], columns["dec"]).sum()


def test_streamed_histograms_equal_direct_numpy_histograms(catalog):
    hats_dir, columns = catalog
    needed = sorted({"pmra", "pmdec", "vx", "vy", *CORNER_COLUMNS})
    read = ["star_id", "ra", "dec", *needed]
    ranges = window_ranges(iter_parquet_columns(hats_dir / "dataset", read), needed, DISK_WINDOW)
    pm = Histogram.empty(("pmra", "pmdec"), ranges, 50)
    velocity = Histogram.empty(("vx", "vy"), ranges, 40)
    corner = corner_histograms(CORNER_COLUMNS, ranges, 30)
    batches = list(iter_parquet_columns(hats_dir / "dataset", ["ra", "dec", *needed],
                                        DISK_WINDOW.arrow_filter()))
    assert len(batches) > 5  # several partitions and row groups: the streaming is exercised
    fill_histograms(batches, [pm, velocity, *corner.values()], DISK_WINDOW)

    truth = _in_window(columns, DISK_WINDOW)
    assert pm.counts.sum() > 1000
    for hist in (pm, velocity, *corner.values()):
        if len(hist.columns) == 2:
            direct, *_ = np.histogram2d(truth[hist.columns[0]], truth[hist.columns[1]],
                                        bins=hist.edges)
        else:
            direct, _ = np.histogram(truth[hist.columns[0]], bins=hist.edges[0])
        np.testing.assert_array_equal(hist.counts, direct.astype(np.int64))
    # The quantile ranges hold nearly all window stars: (0.1 %, 99.9 %) widened by 2 %.
    for name in CORNER_COLUMNS:
        assert 0.99 < corner[(name,)].counts.sum() / len(truth[name]) <= 1.0


def test_pandas_frames_give_the_same_counts(catalog):
    hats_dir, columns = catalog
    ranges = {"pmra": (-60.0, 20.0), "pmdec": (-40.0, 40.0)}
    from_arrow = Histogram.empty(("pmra", "pmdec"), ranges, 32)
    from_pandas = Histogram.empty(("pmra", "pmdec"), ranges, 32)
    read = ["ra", "dec", "pmra", "pmdec"]
    fill_histograms(iter_parquet_columns(hats_dir / "dataset", read), [from_arrow], DISK_WINDOW)
    frames = (batch.to_pandas() for batch in iter_parquet_columns(hats_dir / "dataset", read))
    fill_histograms(frames, [from_pandas], DISK_WINDOW)
    np.testing.assert_array_equal(from_arrow.counts, from_pandas.counts)
    assert from_arrow.counts.sum() > 100


def test_ranges_do_not_depend_on_batch_order_or_splitting(catalog):
    hats_dir, columns = catalog
    read = ["star_id", "ra", "dec", "pmra", "radial_velocity"]
    batches = list(iter_parquet_columns(hats_dir / "dataset", read))
    kwargs = dict(columns=["pmra", "radial_velocity"], window=DISK_WINDOW, sample_size=300)
    forward = window_ranges(batches, **kwargs)
    backward = window_ranges(batches[::-1], **kwargs)
    halves = [half for batch in batches for half in (batch.slice(0, 7), batch.slice(7))]
    assert forward == backward == window_ranges(halves, **kwargs)
    full = window_ranges(batches, ["pmra"], DISK_WINDOW, sample_size=10**6)
    truth = _in_window(columns, DISK_WINDOW)["pmra"]
    low, high = np.quantile(truth, [0.001, 0.999])
    assert full["pmra"] == pytest.approx((low - 0.02 * (high - low), high + 0.02 * (high - low)))


@pytest.mark.parametrize("order", [0, 3, 5, SKYMAP_ORDER])
def test_sky_map_counts_match_astropy_healpix(catalog, order):
    """Read from the written maps (an alt order or the full one, summed down)."""
    hats_dir, columns = catalog
    counts = read_star_counts(hats_dir, order)
    assert counts.sum() == N_STARS and len(counts) == 12 * 4**order
    pixels = HEALPix(nside=2**order, order="nested").lonlat_to_healpix(
        columns["ra"] * u.deg, columns["dec"] * u.deg)
    np.testing.assert_array_equal(counts, np.bincount(pixels, minlength=len(counts)))


def test_make_figures_draws_four_nontrivial_pngs(catalog, tmp_path):
    hats_dir, columns = catalog
    particles = MockGalaxy().sample(3000, seed=9)
    paths = make_figures(hats_dir, tmp_path / "figures", order=4, bins=60, corner_bins=20,
                         particles=particles, title="mock")
    assert [p.name for p in paths] == ["proper_motion.png", "corner_icrs.png",
                                      "velocity_xy.png", "sky_counts.png"]
    for path in paths:
        image = imread(path)
        assert path.stat().st_size > 20_000
        assert len(np.unique(image.reshape(-1, image.shape[-1]), axis=0)) > 50


def test_window_particles_are_the_particles_seen_in_the_window():
    particles = MockGalaxy().sample(4000, seed=2)
    chosen = window_particles(particles, SolarFrame(), DISK_WINDOW)
    sky = observables(chosen, SolarFrame())
    assert len(chosen) > 20 and DISK_WINDOW.contains(sky["ra"], sky["dec"]).all()


def test_bad_inputs_name_the_problem(catalog, tmp_path):
    hats_dir, _ = catalog
    with pytest.raises(GflowError, match="does not exist"):
        list(iter_parquet_columns(tmp_path / "missing", ["ra"]))
    with pytest.raises(GflowError, match="lacks columns"):
        list(iter_parquet_columns(hats_dir / "dataset", ["parallax_error"]))
    with pytest.raises(GflowError, match="no catalog star"):
        window_ranges(iter_parquet_columns(hats_dir / "dataset", ["star_id", "ra", "dec", "pmra"]),
                      ["pmra"], SkyWindow(0.0, 0.0, 1e-6))
    with pytest.raises(GflowError, match=f"go down to order {SKYMAP_ORDER}"):
        read_star_counts(hats_dir, SKYMAP_ORDER + 1)
    with pytest.raises(GflowError, match="no skymap.fits"):
        read_star_counts(tmp_path, 3)
    with pytest.raises(GflowError, match=f"no {FIGURE_STARS_FILE}"):
        make_figures(tmp_path, tmp_path / "figures")
