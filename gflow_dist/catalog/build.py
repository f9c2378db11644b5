"""Build a catalog from a saved model: draw shards, plan partitions, write HATS, publish.

``out_dir`` becomes a HATS collection: ``out_dir/hats`` (the catalog, HATS Parquet,
:mod:`gflow_dist.catalog.partitions`), ``out_dir/margin`` (its margin cache,
:mod:`gflow_dist.catalog.margins`), ``out_dir/index`` (its star_id index,
:mod:`gflow_dist.catalog.id_index`) and ``out_dir/collection.properties``, so that
``lsdb.open_catalog(out_dir)`` opens the catalog with its margin and index; with
``out_dir/stars.zarr`` (:mod:`gflow_dist.catalog.zarr_writer`) it is built in three
steps; where the work runs is the injected :class:`CatalogRunner`'s business
(:class:`gflow_dist.catalog.local.LocalCatalogRunner` here, one shard after another;
``gflow_dist.distributed.catalog_stages.RayCatalogRunner`` on a Ray cluster):

1. **Draw.** Every shard of the plan is drawn (or a complete one reused) into the staging
   folder ``out_dir/.shards`` (:mod:`gflow_dist.catalog.shards`).
2. **Partition.** The shards' merged pixel counts give the partition plan
   (:mod:`gflow_dist.catalog.healpix`); the runner writes every partition, sorted, from
   the shard files, and its row count is checked against the plan; then the margin file
   of every partition and the star_id index file of every shard.
3. **Publish.** The HATS metadata, the sky maps of the merged pixel counts
   (:mod:`gflow_dist.catalog.skymaps`), the figure stars (:data:`FIGURE_STARS_FILE`, the
   first shards' stars) and the manifest are added, the margin and index metadata too;
   the three folders, each written whole in its staging folder, are swapped into place
   (:func:`gflow_dist.outputs.publish_folder`) one after the other, ``hats`` with its
   manifest last, and ``collection.properties`` is written; the Zarr store is built from it (up to
   ``catalog.zarr_max_stars`` stars) and the shard staging is removed. The manifest's
   request (model hash, n, seed, shard and batch size, partitioning and margin, figure
   stars, frame, metadata) makes a rerun with the same inputs a no-op; a run that stopped
   between the swaps left the old manifest, so its rerun rebuilds all three.

Nothing in this process grows with the number of stars: it merges per-pixel counts,
writes per-partition and per-shard metadata and copies at most ``catalog.figure_stars`` stars; the
stars themselves are drawn and written by the runner's workers. Only the Zarr copy reads
every star here, hence its cap.

Both runners write the same bytes for the same model, plan and config.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Protocol

import pyarrow as pa
import pyarrow.parquet as pq

from gflow_dist.catalog.healpix import PartitionPlan, counting_order, plan_partitions
from gflow_dist.catalog.id_index import INDEX_COLUMN, INDEX_DIR, write_index_metadata
from gflow_dist.catalog.margins import MARGIN_DIR, margin_order, write_margin_metadata
from gflow_dist.catalog.partitions import (
    PARTITIONING_KEYS,
    check_partition_rows,
    partition_schema,
    property_value,
    write_hats_metadata,
)
from gflow_dist.catalog.shards import ShardFiles, ShardSpec, merge_shard_counts
from gflow_dist.catalog.skymaps import write_skymaps
from gflow_dist.catalog.zarr_writer import write_zarr_catalog
from gflow_dist.config import RunConfig
from gflow_dist.outputs import publish_folder, read_manifest, staging_folder, write_manifest
from gflow_dist.sample.shards import ShardPlan
from gflow_dist.upsamplers import model_hash
from gflow_dist.upsamplers.base import SPEC_FILE

SHARDS_DIR = ".shards"
FIGURE_STARS_FILE = "figure_stars.parquet"
"""In the HATS folder: a uniform random subset of the stars (``catalog.figure_stars``)."""
HATS_DIR = "hats"
"""The HATS catalog in the catalog folder; its margin and index are its siblings."""
COLLECTION_FILE = "collection.properties"
"""In the catalog folder: the HATS collection of the catalog, its margin and its index."""

logger = logging.getLogger(__name__)


class CatalogRunner(Protocol):
    """Where the two heavy steps of a catalog build run."""

    def draw_shards(self, model_dir: Path, spec: ShardSpec, indices: list[int]) -> list[dict]:
        """Draw (or reuse) shards ``indices`` of ``spec.plan`` with
        :func:`gflow_dist.catalog.shards.draw_shard`; their stats, in any order."""

    def write_partitions(self, shard_files: list[Path], plan: PartitionPlan, schema: pa.Schema,
                         dataset: Path) -> dict[int, int]:
        """Write every partition of ``plan`` from the stars of ``shard_files`` with
        :func:`gflow_dist.catalog.partitions.write_partition`; rows per partition index."""

    def write_margins(self, shard_files: list[Path], plan: PartitionPlan, order: int,
                      schema: pa.Schema, dataset: Path) -> dict[int, int]:
        """Write the margin file of every partition of ``plan`` whose margin holds stars of
        ``shard_files``: the rows of :func:`gflow_dist.catalog.margins.assign_margins`
        (margin pixels of ``order``) grouped by partition, each group written with
        :func:`gflow_dist.catalog.partitions.write_partition`; rows per written partition
        index."""

    def write_index(self, shard_files: list[Path], plan: PartitionPlan,
                    dataset: Path) -> dict[int, int]:
        """Write the star_id index file of every shard (position k in ``shard_files``) with
        :func:`gflow_dist.catalog.id_index.write_index_file`; rows per shard position."""


def draw_shards(runner: CatalogRunner, model_dir: Path, spec: ShardSpec,
                indices: list[int] | None = None) -> list[dict]:
    """Every shard's stats (or only ``indices``'), sorted by index; see ``draw_shard``."""
    indices = list(range(len(spec.plan))) if indices is None else sorted(indices)
    stats = sorted(runner.draw_shards(model_dir, spec, indices), key=lambda row: row["index"])
    if [row["index"] for row in stats] != indices:
        raise RuntimeError(f"drew shards {[row['index'] for row in stats]}, expected "
                           f"{indices}; nothing published")
    return stats


def write_catalog(model_dir: Path, n: int, seed: int, out_dir: Path, config: RunConfig,
                  metadata: dict[str, str], runner: CatalogRunner) -> dict:
    """Draw ``n`` stars of the saved model in shards and publish the HATS collection
    ``out_dir`` (``hats/``, ``margin/``, ``index/``, ``collection.properties``) + Zarr.

    Args:
        model_dir: a saved upsampler (``spec.json`` + weights) on storage every worker sees.
        n: stars in the catalog; star_id runs 0..n-1.
        seed: the draw's seed; shard k draws with ``shard_seed(seed, k)``.
        out_dir: the catalog folder: the collection, ``stars.zarr`` (``catalog.zarr``)
            and, while running, the shard staging ``.shards/``.
        config: ``sample.shard_size``, ``sample.batch_size``, the ``catalog`` partitioning
            and margin (``catalog.margin_arcsec`` [arcsec]) and the Solar frame (``galaxy``).
        metadata: flat provenance strings, stored in the schema metadata and as
            ``gflow_<key>`` in ``hats.properties``.
        runner: where the shards are drawn and the partitions, margins and index written.

    Returns the HATS manifest: ``request``, ``rows``, ``partitions`` [[order, pixel, rows]],
    ``content_sha256``, per-shard ``shards`` [[index, rows, sha256]], ``margin_rows``
    (stars in the margin cache, counted once per partition they serve) and ``run``: shards
    ``sampled`` or ``reused`` from the staging, ``sample_seconds`` and ``seconds`` (wall
    time to the end of the sampling and of the partition writing) and ``workers`` (per
    sampling process: shards, rows, draw seconds, peak RSS [MiB]) of the run that wrote it;
    a no-op rerun returns that manifest unchanged.
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    start = time.perf_counter()
    plan = ShardPlan(n, config.sample.shard_size, seed)
    model = model_hash(model_dir)
    name = metadata.get("upsampler") or json.loads((model_dir / SPEC_FILE).read_text())["kind"]
    request = {"model_sha256": model, "n": n, "seed": seed,
               "shard_size": config.sample.shard_size, "batch_size": config.sample.batch_size,
               "catalog_name": name, "frame": config.galaxy.frame.to_metadata(),
               "partitioning": config.catalog.model_dump(mode="json", include=PARTITIONING_KEYS),
               "figure_stars": config.catalog.figure_stars,
               "metadata_sha256": hashlib.sha256(
                   json.dumps(metadata, sort_keys=True).encode()).hexdigest()}
    hats, folder = out_dir / HATS_DIR, out_dir / SHARDS_DIR
    manifest = read_manifest(hats)
    if manifest is None or manifest["request"] != request:
        spec = ShardSpec.from_config(plan, folder, model, config)
        stats = draw_shards(runner, model_dir, spec)
        manifest = _partition_and_publish(plan, stats, folder, out_dir, name, config, metadata,
                                          request, start, runner)
    write_collection_properties(out_dir, name)
    if config.catalog.zarr and n <= config.catalog.zarr_max_stars:
        write_zarr_catalog(hats, out_dir / "stars.zarr")
    elif config.catalog.zarr:
        logger.warning("%s: no Zarr store for %s stars, more than catalog.zarr_max_stars=%s: "
                       "one process copies the store from the HATS catalog, so large ones "
                       "are opt-in; raise catalog.zarr_max_stars to build it", name,
                       f"{n:,}", f"{config.catalog.zarr_max_stars:,}")
    shutil.rmtree(folder, ignore_errors=True)
    return manifest


def write_collection_properties(out_dir: Path, catalog_name: str) -> None:
    """Write ``out_dir/collection.properties`` (atomically): the HATS collection of
    ``hats/`` (primary catalog), ``margin/`` (default margin) and ``index/`` (index on
    star_id), so that ``lsdb.open_catalog(out_dir)`` opens the catalog with its margin and
    ``id_search`` finds its index. Its content depends on the catalog name alone."""
    text = "\n".join([
        "#HATS Collection",
        f"obs_collection={property_value(catalog_name)}",
        f"hats_primary_table_url={HATS_DIR}",
        f"all_margins={MARGIN_DIR}",
        f"default_margin={MARGIN_DIR}",
        f"all_indexes={INDEX_COLUMN} {INDEX_DIR}",
        f"default_index={INDEX_COLUMN}", ""])
    path = out_dir / COLLECTION_FILE
    if path.exists() and path.read_text() == text:
        return
    partial = path.with_name(f".{COLLECTION_FILE}.partial")
    partial.write_text(text)
    partial.replace(path)


def write_figure_stars(shard_files: list[Path], path: Path, limit: int,
                       schema: pa.Schema) -> int:
    """Copy the first shards' stars, up to ``limit``, into ``path``; returns their number.

    Every shard is an independent draw from the same model, so the first shards' stars
    are a uniform random subset of the catalog: the figures read them instead of every
    star, at a cost that does not grow with the catalog.
    """
    written = 0
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        for shard_file in shard_files:
            for batch in pq.ParquetFile(shard_file).iter_batches(65_536):
                table = pa.Table.from_batches([batch]).cast(schema).slice(0, limit - written)
                writer.write_table(table)
                written += table.num_rows
                if written == limit:
                    return written
    return written


def _worker_stats(stats: list[dict]) -> list[dict]:
    """Per sampling process: its device type, shards, stars, draw seconds and peak RSS
    [MiB] of its draws."""
    workers: dict[int, dict] = {}
    for row in stats:
        worker = workers.setdefault(row["pid"], {"pid": row["pid"], "device": row["device"],
                                                 "shards": 0, "rows": 0, "seconds": 0.0,
                                                 "peak_rss_mb": 0.0})
        worker["shards"] += 1
        worker["rows"] += row["rows"]
        worker["seconds"] += row["seconds"]
        worker["peak_rss_mb"] = max(worker["peak_rss_mb"], row["peak_rss_mb"])
    return sorted(workers.values(), key=lambda worker: worker["pid"])


def _partition_and_publish(plan: ShardPlan, stats: list[dict], folder: Path, out_dir: Path,
                           name: str, config: RunConfig, metadata: dict[str, str],
                           request: dict, start: float, runner: CatalogRunner) -> dict:
    files = [ShardFiles.of(folder, row["index"]) for row in stats]
    wrong = [row["index"] for row, shard in zip(stats, plan, strict=True)
             if row["rows"] != shard.count]
    if wrong:
        raise RuntimeError(f"shards {wrong[:5]} hold the wrong number of stars; nothing "
                           "published")
    counts = merge_shard_counts([f.record for f in files], counting_order(
        config.catalog.partition_order, config.catalog.highest_order))
    partitions = plan_partitions(counts, config.catalog.partition_order,
                                 config.catalog.max_rows_per_partition)
    if partitions.total_rows != plan.total:
        raise RuntimeError(f"the shards' pixel counts hold {partitions.total_rows} stars, the "
                           f"plan {plan.total}; nothing published")
    order = margin_order(partitions, config.catalog.margin_arcsec)
    # published in this order: the catalog, whose manifest a rerun checks, comes last
    stagings = {staging_folder(out_dir / sub): out_dir / sub
                for sub in (MARGIN_DIR, INDEX_DIR, HATS_DIR)}
    margin_staging, index_staging, staging = stagings
    for path in stagings:
        shutil.rmtree(path, ignore_errors=True)
    shas = [row["sha256"] for row in stats]
    manifest = {"request": request, "rows": partitions.total_rows,
                "partitions": [[p.order, p.pixel, c]
                               for p, c in zip(partitions.pixels, partitions.counts, strict=True)],
                "content_sha256": hashlib.sha256("".join(shas).encode()).hexdigest(),
                "shards": [[row["index"], row["rows"], row["sha256"]] for row in stats],
                "run": {"sampled": sum(row["sampled"] for row in stats),
                        "reused": sum(not row["sampled"] for row in stats),
                        "sample_seconds": time.perf_counter() - start,
                        "workers": _worker_stats(stats)}}
    schema = partition_schema(metadata, config.catalog.row_group_rows)
    try:
        rows = runner.write_partitions([f.parquet for f in files], partitions, schema,
                                       staging / "dataset")
        check_partition_rows(rows, partitions)
        skymaps = write_skymaps(staging, counts)
        write_hats_metadata(staging, partitions, schema, name, config.catalog, metadata,
                            skymaps)
        write_figure_stars([f.parquet for f in files], staging / FIGURE_STARS_FILE,
                           config.catalog.figure_stars, schema)
        margin = runner.write_margins([f.parquet for f in files], partitions, order, schema,
                                      margin_staging / "dataset")
        write_margin_metadata(margin_staging, partitions, margin, schema, name,
                              config.catalog.margin_arcsec, order)
        index = runner.write_index([f.parquet for f in files], partitions,
                                   index_staging / "dataset")
        if sum(index.values()) != plan.total:
            raise RuntimeError(f"the star_id index holds {sum(index.values())} stars, the "
                               f"plan {plan.total}; nothing published")
        write_index_metadata(index_staging, sorted(index), name)
        manifest["margin_rows"] = sum(margin.values())
        manifest["run"]["seconds"] = time.perf_counter() - start
        write_manifest(staging, manifest)
    except BaseException:
        for path in stagings:
            shutil.rmtree(path, ignore_errors=True)
        raise
    for path, published in stagings.items():
        publish_folder(path, published)
    return manifest
