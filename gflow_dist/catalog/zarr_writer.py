"""The catalog's stars as a Zarr v3 store that ``xarray.open_zarr`` opens.

Built from a written HATS catalog (:mod:`gflow_dist.catalog.partitions`), one partition
file at a time, so memory stays bounded by the largest partition. Layout:

- one compressed 1-D array per catalog column along dimension ``row``, with a ``units``
  attribute, rows sorted by ``_healpix_29`` as in the partitions;
- ``valid`` (bool, ``row``): False on padding rows;
- the pixel index along dimension ``partition``: ``pixel_order``, ``pixel``, ``offset``,
  ``count`` — partition k's stars are rows ``offset[k] : offset[k] + count[k]``;
- the group attributes hold the provenance (``gflow_<key>``), ``chunk_rows`` and the
  star ``columns`` in schema order.

Zarr v3 chunks are regular, so each partition's slice is padded to a multiple of
``chunk_rows`` (fill values, ``valid`` False): every partition starts on a chunk boundary,
a partition's rows are read from its own chunks only, and every write covers whole
chunks. ``chunk_rows`` is a power of two near 1/8 of the median partition size, so
padding costs at most 1/8 (about 1/16 on average) of the rows; for the default
``max_rows_per_partition`` of 10⁶ it is the cap, 65,536 rows (512 kB per float column).
Selecting ``valid`` gives exactly the Parquet catalog's stars. The store is written in a
hidden staging folder and renamed into place; a rerun from the same HATS content is a
no-op.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import zarr
from hats.catalog import PartitionInfo
from hats.pixel_math import HealpixPixel
from hats.pixel_math.healpix_pixel_function import get_pixel_argsort
from hats.pixel_math.spatial_index import SPATIAL_INDEX_COLUMN
from zarr.codecs import BloscCodec
from zarr.storage import StoreLike

from gflow_dist.catalog.healpix import index_range
from gflow_dist.catalog.partitions import partition_file
from gflow_dist.errors import InputError
from gflow_dist.outputs import (
    MANIFEST_FILE,
    METADATA_KEY,
    UNIT_KEY,
    publish_folder,
    read_manifest,
    staging_folder,
    write_manifest,
)

INDEX_ARRAYS = ("pixel_order", "pixel", "offset", "count")
MIN_CHUNK_ROWS, MAX_CHUNK_ROWS = 64, 65_536
WRITE_ROWS = 1 << 20
"""Padded rows collected before one write per array (partitions start on chunk bounds)."""


def choose_chunk_rows(counts: list[int]) -> int:
    """Power of two near 1/8 of the median partition size, within [64, 65536] rows."""
    target = max(float(np.median(counts)) / 8.0, 1.0)
    return int(np.clip(2 ** round(np.log2(target)), MIN_CHUNK_ROWS, MAX_CHUNK_ROWS))


def _padded(count: int, chunk_rows: int) -> int:
    return -(-count // chunk_rows) * chunk_rows


def _partitions(hats_dir: Path) -> tuple[list[HealpixPixel], list[int]]:
    """Partition pixels in ``_healpix_29`` order and their row counts (from the footers)."""
    pixels = PartitionInfo.read_from_dir(hats_dir).get_healpix_pixels()
    pixels = [pixels[i] for i in get_pixel_argsort(pixels)]
    counts = [pq.read_metadata(hats_dir / "dataset" / partition_file(p)).num_rows
              for p in pixels]
    return pixels, counts


def _fill_value(dtype: np.dtype) -> float | int:
    return np.nan if dtype.kind == "f" else 0


def _create_arrays(root: zarr.Group, schema: pa.Schema, rows: int, chunk_rows: int) -> None:
    compressor = BloscCodec(cname="zstd", clevel=5, shuffle="shuffle")
    for field in schema:
        dtype = np.dtype(field.type.to_pandas_dtype())
        unit = (field.metadata or {}).get(UNIT_KEY, b"").decode()
        root.create_array(field.name, shape=(rows,), chunks=(chunk_rows,), dtype=dtype,
                          fill_value=_fill_value(dtype), compressors=compressor,
                          dimension_names=("row",), attributes={"units": unit})
    root.create_array("valid", shape=(rows,), chunks=(chunk_rows,), dtype=bool,
                      fill_value=False, dimension_names=("row",),
                      attributes={"units": "", "description": "False on padding rows"})


def _write_index(root: zarr.Group, pixels: list[HealpixPixel], offsets: list[int],
                 counts: list[int]) -> None:
    columns = {"pixel_order": [p.order for p in pixels], "pixel": [p.pixel for p in pixels],
               "offset": offsets, "count": counts}
    for name, values in columns.items():
        array = np.asarray(values, np.int64)
        root.create_array(name, data=array, chunks=(max(len(array), 1),),
                          dimension_names=("partition",), attributes={"units": ""})


class _RowWriter:
    """Appends padded partition slices and writes them in runs of whole chunks."""

    def __init__(self, root: zarr.Group, names: list[str], flush_rows: int) -> None:
        self.arrays = {name: root[name] for name in names}
        self.flush_rows = flush_rows
        self._pending: dict[str, list[np.ndarray]] = {name: [] for name in names}
        self._start = self._rows = 0

    def add(self, columns: dict[str, np.ndarray], rows: int) -> None:
        for name, values in columns.items():
            self._pending[name].append(values)
        self._rows += rows
        if self._rows >= self.flush_rows:
            self.flush()

    def flush(self) -> None:
        if not self._rows:
            return
        rows = slice(self._start, self._start + self._rows)
        for name, parts in self._pending.items():
            self.arrays[name][rows] = np.concatenate(parts)
            parts.clear()
        self._start, self._rows = rows.stop, 0


def write_zarr_catalog(hats_dir: str | Path, store_path: str | Path,
                       chunk_rows: int | None = None) -> dict:
    """Copy a HATS catalog's stars into a Zarr v3 store; returns the store's manifest.

    ``chunk_rows`` None picks :func:`choose_chunk_rows` of the partition sizes.
    """
    hats_dir, store_path = Path(hats_dir), Path(store_path)
    source = read_manifest(hats_dir)
    if source is None:
        raise InputError(f"{hats_dir} has no {MANIFEST_FILE}: write the HATS catalog first")
    pixels, counts = _partitions(hats_dir)
    chunk_rows = chunk_rows or choose_chunk_rows(counts)
    request = {"source": source["request"], "chunk_rows": chunk_rows}
    existing = read_manifest(store_path)
    if existing is not None and existing["request"] == request:
        return existing
    offsets = np.concatenate([[0], np.cumsum([_padded(c, chunk_rows) for c in counts])])
    schema = pq.read_schema(hats_dir / "dataset" / "_common_metadata")
    staging = staging_folder(store_path)
    shutil.rmtree(staging, ignore_errors=True)
    root = zarr.open_group(staging, mode="w", zarr_format=3)
    _create_arrays(root, schema, int(offsets[-1]), chunk_rows)
    rows = _RowWriter(root, [*schema.names, "valid"], max(chunk_rows, WRITE_ROWS))
    for pixel, count in zip(pixels, counts, strict=True):
        table = pq.read_table(hats_dir / "dataset" / partition_file(pixel), schema=schema)
        padded = _padded(count, chunk_rows)
        columns = {"valid": np.arange(padded) < count}
        for field in schema:
            dtype = rows.arrays[field.name].dtype
            columns[field.name] = np.full(padded, _fill_value(dtype), dtype)
            columns[field.name][:count] = table.column(field.name).to_numpy()
        rows.add(columns, padded)
    rows.flush()
    _write_index(root, pixels, offsets[:-1].tolist(), counts)
    metadata = json.loads((schema.metadata or {}).get(METADATA_KEY, b"{}"))
    root.attrs.update({f"gflow_{key}": value for key, value in metadata.items()}
                      | {"chunk_rows": chunk_rows, "catalog_rows": int(sum(counts)),
                         "columns": schema.names})
    with warnings.catch_warnings():  # xarray reads consolidated metadata first; fine locally
        warnings.filterwarnings("ignore", "Consolidated metadata", UserWarning)
        zarr.consolidate_metadata(staging)
    manifest = {"request": request, "rows": int(sum(counts)), "padded_rows": int(offsets[-1])}
    write_manifest(staging, manifest)
    publish_folder(staging, store_path)
    return manifest


def read_zarr_pixel(store: StoreLike, pixel: HealpixPixel,
                    columns: list[str] | None = None) -> pd.DataFrame:
    """The stars inside ``pixel`` (any order), reading only the chunks of its partitions.

    ``store`` is the store's path or any zarr store; ``columns`` None reads every column.
    """
    root = zarr.open_group(store, mode="r", use_consolidated=True)
    index = {name: root[name][:] for name in INDEX_ARRAYS}
    bounds = np.array([index_range(HealpixPixel(int(o), int(p)))
                       for o, p in zip(index["pixel_order"], index["pixel"], strict=True)])
    start, end = index_range(pixel)
    overlapping = np.flatnonzero((bounds[:, 0] < end) & (start < bounds[:, 1]))
    star_columns = root.attrs["columns"]
    names = columns or star_columns
    unknown = sorted(set(names) - set(star_columns))
    if unknown:
        raise InputError(f"columns {unknown} are not star columns of the store: {star_columns}")
    slices = [slice(int(index["offset"][k]), int(index["offset"][k] + index["count"][k]))
              for k in overlapping]

    def read(name: str) -> np.ndarray:
        array = root[name]
        return np.concatenate([array[s] for s in slices] or [np.empty(0, array.dtype)])

    data = {name: read(name) for name in dict.fromkeys([*names, SPATIAL_INDEX_COLUMN])}
    inside = (data[SPATIAL_INDEX_COLUMN] >= start) & (data[SPATIAL_INDEX_COLUMN] < end)
    return pd.DataFrame({name: data[name][inside] for name in names})
