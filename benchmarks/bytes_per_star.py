"""Bytes on disk per catalog star: shard staging, HATS catalog, margin, index and Zarr store.

`gflow plan` sizes volumes from these numbers (:mod:`gflow_dist.plan`). The HATS bytes per
star count its ``dataset/``; ``hats_extra_bytes`` are the files beside it (sky maps, figure
stars, metadata), whose size does not grow with the stars past ``catalog.figure_stars``.
Simplified-EnBiD stars of the mock galaxy go through the in-process catalog build
(``write_catalog`` with ``LocalCatalogRunner``); the columns and codecs are the same for
every upsampler, so the bytes per star are too.

    OMP_NUM_THREADS=1 python benchmarks/bytes_per_star.py --stars 1000000
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from gflow_dist.baselines.enbid import EnbidUpsampler
from gflow_dist.catalog.build import draw_shards, write_catalog
from gflow_dist.catalog.local import LocalCatalogRunner
from gflow_dist.catalog.shards import ShardSpec
from gflow_dist.config import build_config
from gflow_dist.data.mock import MockGalaxy
from gflow_dist.sample.shards import ShardPlan
from gflow_dist.upsamplers import model_hash


def _bytes(folder: Path, pattern: str = "*") -> int:
    return sum(path.stat().st_size for path in folder.rglob(pattern) if path.is_file())


def _files(folder: Path) -> int:
    return sum(1 for path in folder.rglob("*") if path.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stars", type=int, default=1_000_000)
    parser.add_argument("--shard-size", type=int, default=250_000)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="gflow-bytes-"))
    galaxy = MockGalaxy()
    model = EnbidUpsampler(galaxy.sun_position_kpc, galaxy.r_max_kpc)
    model_dir = model.fit(galaxy.particles(20_000, seed=1), seed=0).save(root / "model")
    config = build_config({"sample": {"total": args.stars, "shard_size": args.shard_size}})
    write_catalog(model_dir, args.stars, 0, root / "catalog", config, {"seed": "0"},
                  LocalCatalogRunner())
    plan = ShardPlan(args.stars, args.shard_size, 0)
    (root / "shards").mkdir()
    draw_shards(LocalCatalogRunner(), model_dir,
                ShardSpec.from_config(plan, root / "shards", model_hash(model_dir), config))
    print(json.dumps({
        "stars": args.stars,
        "shard_bytes_per_star": _bytes(root / "shards", "*.parquet") / args.stars,
        "hats_bytes_per_star": _bytes(root / "catalog" / "hats" / "dataset") / args.stars,
        "hats_extra_bytes": (_bytes(root / "catalog" / "hats")
                             - _bytes(root / "catalog" / "hats" / "dataset")),
        "zarr_bytes_per_star": _bytes(root / "catalog" / "stars.zarr") / args.stars,
        "margin_bytes_per_star": _bytes(root / "catalog" / "margin") / args.stars,
        "index_bytes_per_star": _bytes(root / "catalog" / "index") / args.stars,
        "hats_files": _files(root / "catalog" / "hats"),
        "zarr_files": _files(root / "catalog" / "stars.zarr"),
        "folder": str(root),
    }, indent=1))


if __name__ == "__main__":
    main()
