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

1. **Draw.** Every shard of the plan is drawn (or a complete one reused) into the shard
   folder beside the catalog folder, ``.<name>.shards`` (:func:`shard_folder`,
   :mod:`gflow_dist.catalog.shards`).
2. **Partition.** The shards' merged pixel counts give the partition plan
   (:mod:`gflow_dist.catalog.healpix`); the runner writes every partition, sorted, from
   the shard files, and its row count is checked against the plan; then the margin file
   of every partition and the star_id index file of every shard.
3. **Publish.** The HATS metadata, the sky maps of the merged pixel counts
   (:mod:`gflow_dist.catalog.skymaps`), the figure stars (:data:`FIGURE_STARS_FILE`, the
   first shards' stars) and the manifest are added, the margin and index metadata too,
   ``collection.properties`` and the Zarr store built from the catalog (up to
   ``catalog.zarr_max_stars`` stars). All of it is written in the staging folder
   ``.<name>.staging`` and swapped into place as one folder
   (:func:`gflow_dist.outputs.publish_folder`), so a reader sees the old collection or
   the new one; then the shard folder is removed. The manifest's request (model hash, n,
   seed, shard and batch size, partitioning and margin, figure stars, frame, metadata)
   makes a rerun with the same inputs a no-op. A run interrupted before the swap leaves
   the previous catalog and the shards drawn so far, which its rerun reuses.

Nothing in this process grows with the number of stars: it merges per-pixel counts,
writes per-partition and per-shard metadata and copies at most ``catalog.figure_stars`` stars; the
stars themselves are drawn and written by the runner's workers. Only the Zarr copy reads
every star here, hence its cap.

Both runners write the same bytes for the same model, plan and config, but for the
manifest's ``run`` record (worker pids, timings, peak memory, shards reused).
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
from gflow_dist.faults import kill_point
from gflow_dist.outputs import publish_folder, read_manifest, staging_folder, write_manifest
from gflow_dist.sample.shards import ShardPlan
from gflow_dist.upsamplers import model_hash
from gflow_dist.upsamplers.base import SPEC_FILE

FIGURE_STARS_FILE = "figure_stars.parquet"
"""In the HATS folder: a uniform random subset of the stars (``catalog.figure_stars``)."""
HATS_DIR = "hats"
"""The HATS catalog in the catalog folder; its margin and index are its siblings."""
COLLECTION_FILE = "collection.properties"
"""In the catalog folder: the HATS collection of the catalog, its margin and its index."""
ZARR_STORE = "stars.zarr"
"""In the catalog folder: the catalog's stars as a Zarr store (``catalog.zarr``)."""

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
        out_dir: the catalog folder: the collection and ``stars.zarr`` (``catalog.zarr``),
            replaced whole; beside it, while running, the shards (:func:`shard_folder`)
            and the staging folder.
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
    shards = shard_folder(out_dir)
    zarr = _wants_zarr(config, n, name)
    manifest = read_manifest(out_dir / HATS_DIR)
    if manifest is None or manifest["request"] != request:
        spec = ShardSpec.from_config(plan, shards, model, config)
        stats = draw_shards(runner, model_dir, spec)
        manifest = _partition_and_publish(plan, stats, shards, out_dir, name, config, metadata,
                                          request, start, runner, zarr)
    elif zarr:  # the catalog is unchanged; the store may be missing (catalog.zarr was off)
        write_zarr_catalog(out_dir / HATS_DIR, out_dir / ZARR_STORE)
    shutil.rmtree(shards, ignore_errors=True)
    return manifest


def shard_folder(out_dir: Path) -> Path:
    """The hidden folder beside the catalog folder ``out_dir`` that holds its drawn shards
    until the catalog is published."""
    return out_dir.with_name(f".{out_dir.name}.shards")


def _wants_zarr(config: RunConfig, n: int, name: str) -> bool:
    """Whether the catalog of ``n`` stars gets its Zarr store; says why not when capped."""
    if config.catalog.zarr and n > config.catalog.zarr_max_stars:
        logger.warning("%s: no Zarr store for %s stars, more than catalog.zarr_max_stars=%s: "
                       "one process copies the store from the HATS catalog, so large ones "
                       "are opt-in; raise catalog.zarr_max_stars to build it", name,
                       f"{n:,}", f"{config.catalog.zarr_max_stars:,}")
        return False
    return config.catalog.zarr


def write_collection_properties(out_dir: Path, catalog_name: str) -> None:
    """Write ``out_dir/collection.properties``: the HATS collection of ``hats/`` (primary
    catalog), ``margin/`` (default margin) and ``index/`` (index on star_id), so that
    ``lsdb.open_catalog(out_dir)`` opens the catalog with its margin and ``id_search``
    finds its index. Its content depends on the catalog name alone."""
    text = "\n".join([
        "#HATS Collection",
        f"obs_collection={property_value(catalog_name)}",
        f"hats_primary_table_url={HATS_DIR}",
        f"all_margins={MARGIN_DIR}",
        f"default_margin={MARGIN_DIR}",
        f"all_indexes={INDEX_COLUMN} {INDEX_DIR}",
        f"default_index={INDEX_COLUMN}", ""])
    (out_dir / COLLECTION_FILE).write_text(text)


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


def _partition_and_publish(plan: ShardPlan, stats: list[dict], shards: Path, out_dir: Path,
                           name: str, config: RunConfig, metadata: dict[str, str],
                           request: dict, start: float, runner: CatalogRunner,
                           zarr: bool) -> dict:
    files = [ShardFiles.of(shards, row["index"]) for row in stats]
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
    collection = staging_folder(out_dir)
    shutil.rmtree(collection, ignore_errors=True)
    hats_dir, margin_dir, index_dir = (collection / sub
                                       for sub in (HATS_DIR, MARGIN_DIR, INDEX_DIR))
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
                                       hats_dir / "dataset")
        check_partition_rows(rows, partitions)
        kill_point("partitions")
        skymaps = write_skymaps(hats_dir, counts)
        write_hats_metadata(hats_dir, partitions, schema, name, config.catalog, metadata,
                            skymaps)
        write_figure_stars([f.parquet for f in files], hats_dir / FIGURE_STARS_FILE,
                           config.catalog.figure_stars, schema)
        margin = runner.write_margins([f.parquet for f in files], partitions, order, schema,
                                      margin_dir / "dataset")
        write_margin_metadata(margin_dir, partitions, margin, schema, name,
                              config.catalog.margin_arcsec, order)
        kill_point("margin")
        index = runner.write_index([f.parquet for f in files], partitions,
                                   index_dir / "dataset")
        if sum(index.values()) != plan.total:
            raise RuntimeError(f"the star_id index holds {sum(index.values())} stars, the "
                               f"plan {plan.total}; nothing published")
        write_index_metadata(index_dir, sorted(index), name)
        kill_point("index")
        manifest["margin_rows"] = sum(margin.values())
        manifest["run"]["seconds"] = time.perf_counter() - start
        write_manifest(hats_dir, manifest)
        write_collection_properties(collection, name)
        if zarr:
            write_zarr_catalog(hats_dir, collection / ZARR_STORE)
    except BaseException:
        shutil.rmtree(collection, ignore_errors=True)
        raise
    publish_folder(collection, out_dir)
    return manifest
