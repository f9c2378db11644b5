#!/usr/bin/env python
"""Scaling of the sharded catalog writer: wall time, stars/s per worker, peak RSS per worker.

Usage::

    OMP_NUM_THREADS=1 nice .venv/bin/python benchmarks/scaling.py [--large] [--json PATH]
        [--cnf-model DIR] [--enbid-model DIR] [--kinds cnf enbid] [--workers 1 2]

For each upsampler kind, each pool size (``ray.max_samplers``) and each total (10⁵, 10⁶;
10⁷ with ``--large``) it runs :func:`write_sharded_catalog` into a fresh folder on one
local Ray cluster of 2 CPUs (shards of 62,500 stars, batches of 65,536, the default
adaptive partitioning, no Zarr store) and prints one row: the sampling stage's wall time,
the whole run's (sampling + Ray Data partition writing + publishing), the stars/s of the
sampling stage and of each worker (its stars over the seconds its draws took), and each
worker's peak RSS (``ru_maxrss``, model included). ``--single-writer`` instead times the
in-process build (``write_catalog`` with ``LocalCatalogRunner``: the shards drawn one
after another, then the partitions written through spill files) on the same totals of
enbid stars. Models: the saved ones passed by path,
else fitted here on 20,000 mock particles — enbid on all of them, a 1-member CNF of the
paper's architecture (20 RK4 steps) for one epoch on 2,000 (sampling cost per star does
not depend on the training budget or the ensemble size: each star comes from one member).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gflow_dist import upsamplers  # noqa: E402
from gflow_dist.catalog.build import write_catalog  # noqa: E402
from gflow_dist.catalog.local import LocalCatalogRunner  # noqa: E402
from gflow_dist.config import RunConfig  # noqa: E402
from gflow_dist.data.mock import MockGalaxy  # noqa: E402
from gflow_dist.data.selection import split_train_test  # noqa: E402
from gflow_dist.distributed.catalog_stages import write_sharded_catalog  # noqa: E402

SHARD_SIZE = 62_500
BASE = {"sample": {"shard_size": SHARD_SIZE, "batch_size": 65_536},
        "catalog": {"zarr": False},
        "cnf": {"ensemble_size": 1, "max_epochs": 1, "patience": 1, "compile": False,
                "max_train_particles": 2000}}


def fit_model(kind: str, folder: Path) -> Path:
    """Fit and save a small ``kind`` upsampler on 20,000 mock particles; returns its folder."""
    config = RunConfig.model_validate(BASE)
    galaxy = MockGalaxy(sun_position_kpc=config.galaxy.sun_position_kpc,
                        r_max_kpc=config.galaxy.r_max_kpc)
    train, _ = split_train_test(galaxy.particles(40_000, seed=1), seed=0)
    start = time.perf_counter()
    model = upsamplers.create(kind, config).fit(train, seed=2)
    print(f"# fitted {kind} in {time.perf_counter() - start:.1f} s", flush=True)
    return model.save(folder / kind)


def run_one(model_dir: Path, total: int, workers: int, out: Path) -> dict:
    """One sharded run; returns its row."""
    config = RunConfig.model_validate(BASE | {"ray": {"max_samplers": workers}})
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    manifest = write_sharded_catalog(model_dir, total, 7, out, config, {"upsampler": "bench"})
    wall = time.perf_counter() - start
    run = manifest["run"]
    shutil.rmtree(out, ignore_errors=True)
    return {"total": total, "workers": workers, "shards": len(manifest["shards"]),
            "partitions": len(manifest["partitions"]), "wall_s": wall,
            "sample_s": run["sample_seconds"], "write_s": wall - run["sample_seconds"],
            "sample_stars_per_s": total / run["sample_seconds"],
            "per_worker": [{"rows": w["rows"], "stars_per_s": w["rows"] / w["seconds"],
                            "peak_rss_mb": w["peak_rss_mb"]} for w in run["workers"]]}


def single_writer(model_dir: Path, total: int, out: Path) -> None:
    """Time the in-process build (draws and observables included) of ``total`` stars."""
    config = RunConfig.model_validate(BASE)
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    manifest = write_catalog(model_dir, total, 7, out, config, {"upsampler": "bench"},
                             LocalCatalogRunner())
    wall = time.perf_counter() - start
    shutil.rmtree(out, ignore_errors=True)
    print(f"in-process write_catalog n={total:>10,} partitions="
          f"{len(manifest['partitions']):3d} wall={wall:6.1f} s  {total / wall / 1e3:.1f}k "
          "stars/s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--large", action="store_true", help="also 10^7 stars")
    parser.add_argument("--kinds", nargs="+", default=["enbid", "cnf"])
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--cnf-model", type=Path)
    parser.add_argument("--enbid-model", type=Path)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--single-writer", action="store_true",
                        help="time the single-process HATS writer instead (no Ray)")
    args = parser.parse_args()
    import ray

    totals = [100_000, 1_000_000] + ([10_000_000] if args.large else [])
    scratch = Path(tempfile.mkdtemp(prefix="gflow-scaling-"))
    if args.single_writer:
        model_dir = args.enbid_model or fit_model("enbid", scratch / "models")
        for total in totals:
            single_writer(model_dir, total, scratch / "hats")
        shutil.rmtree(scratch, ignore_errors=True)
        return
    rows = []
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    try:
        for kind in args.kinds:
            model_dir = getattr(args, f"{kind}_model") or fit_model(kind, scratch / "models")
            for total in totals:
                for workers in args.workers:
                    row = {"kind": kind} | run_one(model_dir, total, workers, scratch / "out")
                    rows.append(row)
                    per_worker = ", ".join(f"{w['stars_per_s'] / 1e3:.1f}k/s "
                                           f"{w['peak_rss_mb']:.0f} MiB"
                                           for w in row["per_worker"])
                    print(f"{kind:6s} n={total:>10,} workers={workers} shards={row['shards']:4d} "
                          f"partitions={row['partitions']:3d} wall={row['wall_s']:7.1f} s "
                          f"sample={row['sample_s']:7.1f} s write={row['write_s']:6.1f} s "
                          f"sampling {row['sample_stars_per_s'] / 1e3:7.1f}k stars/s; "
                          f"workers: {per_worker}", flush=True)
    finally:
        ray.shutdown()
        shutil.rmtree(scratch, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
