"""The catalog build's heavy steps on a Ray cluster: :class:`RayCatalogRunner`.

The science and the file formats live in :mod:`gflow_dist.catalog` (see
:mod:`gflow_dist.catalog.build`); this module only places the work:

- **Draw.** A Ray Data dataset of shard ids flows through an elastic pool of
  :class:`ShardActor` actors (1 to :func:`sampler_pool` of them; Ray Data grows it as
  actors start, and its pending actors are the autoscaler's demand), one shard at a time
  per actor. The stage first waits (``ray.resource_wait_s``) for a node a sampler fits
  on. Each actor loads the saved model once and calls
  :func:`gflow_dist.catalog.shards.draw_shard` per shard. Ray Data restarts a dead actor
  and retries the shard it was drawing (its actor pools default to ``max_restarts=-1``,
  ``max_task_retries=-1``); the retried draw replaces the half-written ``.partial`` file.
- **Partition.** ``ray.data.read_parquet`` of the shard files → partition index →
  ``groupby(partition).map_groups`` (task-based sort shuffle, spilling to disk past the
  object store, in one shuffle partition per HEALPix partition, at most
  ``ray.max_samplers``): every group goes to
  :func:`gflow_dist.catalog.partitions.write_partition`.
- **Margin.** The same shuffle over
  :func:`gflow_dist.catalog.margins.assign_margins` (each star once per partition whose
  margin it lies in) writes the margin cache, one file per partition.
- **Index.** One task per shard file writes its star_id index file
  (:func:`gflow_dist.catalog.id_index.write_index_file`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa

from gflow_dist import upsamplers
from gflow_dist.catalog.build import write_catalog
from gflow_dist.catalog.healpix import PartitionPlan
from gflow_dist.catalog.id_index import write_index_file
from gflow_dist.catalog.margins import assign_margins
from gflow_dist.catalog.partitions import (
    PARTITION_COLUMN,
    assign_partitions,
    write_partition,
)
from gflow_dist.catalog.schema import table_records
from gflow_dist.catalog.shards import ShardSpec, draw_shard
from gflow_dist.config import RayConfig, RunConfig
from gflow_dist.distributed.cluster import (
    actors_per_cluster,
    check_resources,
    elastic,
    node_resources,
    wait_for_node,
)
from gflow_dist.upsamplers import Upsampler


def sampler_pool(config: RayConfig, shards: int) -> int:
    """Most sampling actors to run at once: one per shard, at most ``ray.max_samplers``
    and, on a fixed cluster, at most what its nodes hold at once.

    Raises GflowError, naming the key, when no node the cluster may ever have holds one.
    """
    cpus, gpus = config.num_cpus_per_sampler, config.num_gpus_per_sampler
    check_resources(cpus, gpus, "sampler", config)
    most = min(shards, config.max_samplers or shards)
    if not elastic(config):
        most = min(most, actors_per_cluster(node_resources(), cpus, gpus))
    return max(1, most)


class ShardActor:
    """A Ray Data callable class: loads the model once, then draws the shards it is given
    (shard indices in column ``id``); returns their stats as columns."""

    def __init__(self, model_dir: str, spec: ShardSpec,
                 load_model: Callable[[Path], Upsampler]) -> None:
        self.model, self.spec = load_model(Path(model_dir)), spec

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        stats = [draw_shard(self.model, self.spec, self.spec.plan.shard(int(k)))
                 for k in batch["id"]]
        return {name: np.array([s[name] for s in stats]) for name in stats[0]}


def _write_group(table: pa.Table, plan: PartitionPlan, schema: pa.Schema,
                 dataset: str) -> pa.Table:
    index = int(table.column(PARTITION_COLUMN)[0].as_py())
    rows = write_partition(table_records(table, schema), plan.pixels[index], schema,
                           Path(dataset))
    return pa.table({"partition": [index], "rows": [rows]})


def _write_index(row: dict, plan: PartitionPlan, dataset: str) -> dict:
    rows = write_index_file(Path(row["path"]), int(row["shard"]), plan, Path(dataset))
    return {"shard": row["shard"], "rows": rows}


class RayCatalogRunner:
    """Draws shards on a pool of Ray actors and writes partitions with a Ray Data shuffle.

    Args:
        config: the ``ray`` section: CPUs and GPUs per sampler, ``max_samplers``.
        load_model: restores the saved model in each actor (default
            :func:`gflow_dist.upsamplers.load`); importable, as Ray ships it by reference.
    """

    def __init__(self, config: RayConfig,
                 load_model: Callable[[Path], Upsampler] = upsamplers.load) -> None:
        self.config, self.load_model = config, load_model

    def draw_shards(self, model_dir: Path, spec: ShardSpec, indices: list[int]) -> list[dict]:
        import ray

        pool = sampler_pool(self.config, len(indices))
        wait_for_node(self.config.num_cpus_per_sampler, self.config.num_gpus_per_sampler,
                      f"drawing {len(indices)} catalog shards", self.config)
        dataset = ray.data.from_items([{"id": k} for k in indices],
                                      override_num_blocks=len(indices))
        stats = dataset.map_batches(
            ShardActor, batch_size=1,
            # one shard at a time per actor: a queued shard goes to whichever actor frees first
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=pool,
                                               max_tasks_in_flight_per_actor=1),
            num_cpus=self.config.num_cpus_per_sampler,
            num_gpus=self.config.num_gpus_per_sampler or None,
            fn_constructor_kwargs={"model_dir": str(model_dir), "spec": spec,
                                   "load_model": self.load_model}).take_all()
        return [{k: v.item() if hasattr(v, "item") else v for k, v in row.items()}
                for row in stats]

    def write_partitions(self, shard_files: list[Path], plan: PartitionPlan, schema: pa.Schema,
                         dataset: Path) -> dict[int, int]:
        return self._group_and_write(shard_files, plan, schema, dataset, assign_partitions,
                                     {"plan": plan}, "catalog partitions")

    def write_margins(self, shard_files: list[Path], plan: PartitionPlan, order: int,
                      schema: pa.Schema, dataset: Path) -> dict[int, int]:
        return self._group_and_write(shard_files, plan, schema, dataset, assign_margins,
                                     {"plan": plan, "order": order}, "margin partitions")

    def write_index(self, shard_files: list[Path], plan: PartitionPlan,
                    dataset: Path) -> dict[int, int]:
        import ray

        wait_for_node(1.0, 0.0, f"indexing {len(shard_files)} catalog shards", self.config)
        written = (ray.data.from_items([{"shard": k, "path": str(p)}
                                        for k, p in enumerate(shard_files)],
                                       override_num_blocks=max(1, len(shard_files)))
                   .map(_write_index, fn_kwargs={"plan": plan, "dataset": str(dataset)})
                   .take_all())
        return {int(row["shard"]): int(row["rows"]) for row in written}

    def _group_and_write(self, shard_files: list[Path], plan: PartitionPlan, schema: pa.Schema,
                         dataset: Path, assign: Callable[..., pa.Table], assign_kwargs: dict,
                         what: str) -> dict[int, int]:
        """Rows of the shards → ``assign`` (adds the partition index) → group by partition
        → :func:`_write_group`; rows per written partition index."""
        import ray
        from ray.data.context import ShuffleStrategy

        writers = min(len(plan.pixels), self.config.max_samplers or len(plan.pixels))
        wait_for_node(1.0, 0.0, f"writing {len(plan.pixels)} {what}", self.config)
        stars = ray.data.read_parquet([str(p) for p in shard_files])
        # task-based sort shuffle: no aggregator actors, spills to disk past the object store
        stars.context.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
        written = (stars
                   .map_batches(assign, fn_kwargs=assign_kwargs, batch_format="pyarrow")
                   .groupby(PARTITION_COLUMN, num_partitions=max(1, writers))
                   .map_groups(_write_group, batch_format="pyarrow",
                               fn_kwargs={"plan": plan, "schema": schema,
                                          "dataset": str(dataset)})
                   .take_all())
        return {int(row["partition"]): int(row["rows"]) for row in written}


def write_sharded_catalog(model_dir: Path, n: int, seed: int, out_dir: Path, config: RunConfig,
                          metadata: dict[str, str]) -> dict:
    """:func:`gflow_dist.catalog.build.write_catalog` on the Ray cluster (``config.ray``)."""
    return write_catalog(model_dir, n, seed, out_dir, config, metadata,
                         RayCatalogRunner(config.ray))
