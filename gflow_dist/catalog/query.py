"""Queries over a written HATS catalog with lsdb on Dask: only overlapping partitions are read.

The typical query is a sky window such as the paper's 15° cone around (α, δ) =
(167.47°, −4.2°) (§2, Fig. 1), with its proper motions (μ_α*, μ_δ) [mas/yr].

A query opens the catalog with a search filter, so lsdb keeps only the partitions whose
HEALPix pixel overlaps the region and reads no other file; the rows are then filtered
exactly (cone: great-circle distance from (ra, dec) [deg]; pixels: ``_healpix_29``
inside the pixels). Frames come back lazy (Dask, index ``_healpix_29``, one partition
per HEALPix partition; a region without stars gives one empty partition); :func:`export`
streams one to Parquet or CSV a partition at a time. ``path`` may be the HATS folder or
the catalog folder ``DIR/catalog/<name>`` that holds it as ``hats/``, local or in a bucket,
also inside a published release: ``s3://BUCKET/PREFIX/NAME/latest/catalog/<name>`` (or
``.../v=<version>/...``; see :mod:`gflow_dist.release.paths`).
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import dask
import dask.dataframe as dd
import lsdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from hats.pixel_math import HealpixPixel
from hats.pixel_math.spatial_index import SPATIAL_INDEX_COLUMN

from gflow_dist.catalog.healpix import index_range, pixel_at_order
from gflow_dist.catalog.observables import COLUMN_UNITS
from gflow_dist.catalog.skymaps import read_star_counts, skymap_order
from gflow_dist.errors import AccessError, InputError
from gflow_dist.outputs import UNIT_KEY
from gflow_dist.release.paths import Location, release_path

EXPORT_SUFFIXES = (".parquet", ".csv")


# lsdb exports its search filters but not their base class (lsdb.core.search.abstract_search)
SearchFilter = (lsdb.ConeSearch | lsdb.PixelSearch | lsdb.OrderSearch | lsdb.BoxSearch
                | lsdb.PolygonSearch | lsdb.MOCSearch | lsdb.IndexSearch)


def hats_path(path: str | Path | Location) -> Location:
    """The HATS folder: ``path`` itself, or ``path/hats`` for a catalog folder; a release's
    ``latest`` is resolved first (:func:`gflow_dist.release.paths.release_path`)."""
    path = release_path(path)
    for candidate in (path, path / "hats"):
        if (candidate / "hats.properties").exists():
            return candidate
    raise InputError(f"no HATS catalog at {path} (no hats.properties there or in hats/): "
                     "give DIR/catalog/<name> or its hats/ folder")


def _columns(columns: list[str] | None, needed: tuple[str, ...] = ()) -> list[str] | str:
    if columns is None:
        return "all"
    unknown = sorted(set(columns) - set(COLUMN_UNITS))
    if unknown:
        raise InputError(f"unknown columns {unknown} (--columns); the catalog has "
                         f"{list(COLUMN_UNITS)}")
    return list(dict.fromkeys([*columns, *needed]))


def open_catalog(path: str | Path, columns: list[str] | None = None,
                 search_filter: SearchFilter | None = None) -> lsdb.Catalog:
    """The lazy lsdb catalog; ``columns`` None loads every column."""
    return lsdb.open_catalog(hats_path(path), columns=_columns(columns),
                             search_filter=search_filter, error_empty_filter=False)


def _select(frame: dd.DataFrame, columns: list[str] | None) -> dd.DataFrame:
    if frame.npartitions == 0:  # no partition overlaps the region: no stars, same columns
        frame = dd.from_pandas(frame._meta, npartitions=1)
    if columns is None:
        return frame
    return frame[[c for c in columns if c != SPATIAL_INDEX_COLUMN]]


def check_order(order: int) -> None:
    """Raise InputError unless ``order`` is a HEALPix order, 0 to 29."""
    if not 0 <= order <= 29:
        raise InputError(f"--order must be a HEALPix order in [0, 29], got {order}")


def cone(path: str | Path, ra_deg: float, dec_deg: float, radius_deg: float,
         columns: list[str] | None = None) -> dd.DataFrame:
    """Stars within ``radius_deg`` great-circle distance of (``ra_deg``, ``dec_deg``) [deg]."""
    for flag, value in (("--ra", ra_deg), ("--dec", dec_deg), ("--radius", radius_deg)):
        if not math.isfinite(value):
            raise InputError(f"cone {flag} must be a finite number of degrees, got {value}")
    if not 0.0 < radius_deg <= 180.0:
        raise InputError(f"cone radius must be in (0, 180] deg, got {radius_deg}")
    if not -90.0 <= dec_deg <= 90.0:
        raise InputError(f"cone dec must be in [-90, 90] deg, got {dec_deg}")
    search = lsdb.ConeSearch(ra_deg % 360.0, dec_deg, radius_deg * 3600.0)
    catalog = lsdb.open_catalog(hats_path(path), columns=_columns(columns, ("ra", "dec")),
                                search_filter=search, error_empty_filter=False)
    return _select(catalog.to_dask_dataframe(), columns)


def _in_pixels(frame: pd.DataFrame, ranges: np.ndarray) -> pd.DataFrame:
    index = frame.index.to_numpy(np.int64)
    inside = ((index[:, None] >= ranges[:, 0]) & (index[:, None] < ranges[:, 1])).any(axis=1)
    return frame[inside]


def pixels(path: str | Path, healpix_pixels: list[HealpixPixel],
           columns: list[str] | None = None) -> dd.DataFrame:
    """Stars inside any of ``healpix_pixels`` (any orders), by their ``_healpix_29``."""
    if not healpix_pixels:
        raise InputError("pixels: give at least one HealpixPixel(order, pixel)")
    for pixel in healpix_pixels:
        check_order(pixel.order)
        if not 0 <= pixel.pixel < 12 * 4**pixel.order:
            raise InputError(f"pixel {pixel.pixel} does not exist at order {pixel.order}")
    catalog = open_catalog(path, columns, lsdb.PixelSearch(list(healpix_pixels), fine=False))
    ranges = np.array([index_range(p) for p in healpix_pixels], np.int64)
    frame = catalog.to_dask_dataframe()
    return _select(frame.map_partitions(_in_pixels, ranges, meta=frame._meta), columns)


def _pixel_counts(frame: pd.DataFrame, order: int) -> pd.Series:
    return pd.Series(pixel_at_order(frame.index.to_numpy(np.int64), order)).value_counts()


def counts_per_pixel(path: str | Path, order: int) -> pd.Series:
    """Stars per non-empty HEALPix pixel at ``order`` (index ``pixel``, ascending).

    Read from the catalog's sky maps (:mod:`gflow_dist.catalog.skymaps`) down to their
    order (``catalog.highest_order``); finer orders count every star's ``_healpix_29``,
    partition by partition on Dask's workers.
    """
    check_order(order)
    folder = hats_path(path)
    if order <= skymap_order(folder):
        counts = read_star_counts(folder, order)
        pixels = np.flatnonzero(counts)
        return pd.Series(counts[pixels], index=pixels, name="count").rename_axis("pixel")
    frame = _select(open_catalog(folder, ["ra"]).to_dask_dataframe(), None)
    parts = dask.compute(*[dask.delayed(_pixel_counts)(part, order)
                           for part in frame.to_delayed()])
    counts = pd.concat(parts).groupby(level=0).sum().sort_index().astype(np.int64)
    return counts.rename("count").rename_axis("pixel")


def mean_proper_motion_in_cone(path: str | Path, ra_deg: float, dec_deg: float,
                               radius_deg: float) -> dict[str, float]:
    """Mean ``pmra`` (μ_α*) and ``pmdec`` [mas/yr] of the stars in a cone, and their number."""
    frame = cone(path, ra_deg, dec_deg, radius_deg, ["pmra", "pmdec"])
    n, pmra_sum, pmdec_sum = dask.compute(frame["pmra"].count(), frame["pmra"].sum(),
                                          frame["pmdec"].sum())
    n = int(n)
    if n == 0:
        return {"n": 0, "pmra": float("nan"), "pmdec": float("nan")}
    return {"n": n, "pmra": float(pmra_sum) / n, "pmdec": float(pmdec_sum) / n}


def _arrow(part: pd.DataFrame) -> pa.Table:
    table = pa.Table.from_pandas(part.reset_index(), preserve_index=False)
    fields = [f.with_metadata({UNIT_KEY: COLUMN_UNITS[f.name]}) if f.name in COLUMN_UNITS else f
              for f in table.schema]
    return table.cast(pa.schema(fields))


def _computed_parts(frame: dd.DataFrame | pd.DataFrame):
    if isinstance(frame, pd.DataFrame):
        yield frame
        return
    for index in range(frame.npartitions):
        yield frame.get_partition(index).compute()


def check_export_path(path: Path) -> None:
    """Raise unless ``path`` names a .parquet or .csv file in a folder one can write.

    Raises:
        InputError: ``path`` has another suffix.
        AccessError: ``path`` is a folder, or its folder is missing or cannot be written.
    """
    if path.is_dir():
        raise AccessError(f"--export {path} is a folder; give a file path ending in "
                         f"{' or '.join(EXPORT_SUFFIXES)}")
    if path.suffix not in EXPORT_SUFFIXES:
        raise InputError(f"--export {path} must end in one of {', '.join(EXPORT_SUFFIXES)}")
    folder = path.absolute().parent
    if not folder.is_dir():
        raise AccessError(f"--export {path}: the folder {folder} does not exist; create it "
                         "first or choose another path")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise AccessError(f"--export {path}: cannot write in {folder} ({error.strerror}); "
                          "choose a folder you can write") from None


def export(frame: dd.DataFrame | pd.DataFrame, path: str | Path) -> int:
    """Write ``frame`` to one Parquet (units in field metadata) or CSV file; returns rows.

    The format follows the suffix. Dask partitions are computed and appended one at a
    time into a hidden file that is renamed into place once complete.
    """
    path = Path(path)
    check_export_path(path)
    empty = frame._meta if isinstance(frame, dd.DataFrame) else frame.iloc[:0]
    partial = path.with_name(f".{path.name}.partial")
    rows = 0
    try:
        if path.suffix == ".csv":
            empty.reset_index().to_csv(partial, index=False)
            for part in _computed_parts(frame):
                part.reset_index().to_csv(partial, mode="a", header=False, index=False)
                rows += len(part)
        else:
            schema = _arrow(empty).schema
            with pq.ParquetWriter(partial, schema) as writer:
                for part in _computed_parts(frame):
                    writer.write_table(_arrow(part).cast(schema))
                    rows += len(part)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return rows
