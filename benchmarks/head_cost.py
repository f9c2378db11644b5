"""What the head (the driver process) spends on a catalog build, against the number of stars.

Each size runs in a fresh Python process that starts a local Ray cluster, builds the
catalog of a saved simplified-EnBiD model with the Ray runner (``write_catalog`` with
``RayCatalogRunner``: workers draw the shards and write the partitions) and draws the
figures from it, as ``gflow catalog`` does. It reports the driver's peak RSS
(``ru_maxrss``), its CPU seconds (``time.process_time``: the work it does itself, outside
Ray's worker processes) and the wall time. The Zarr store is off: it is one process's copy
of every star, opt-in above ``catalog.zarr_max_stars``.

    OMP_NUM_THREADS=1 python benchmarks/head_cost.py --stars 100000 1000000 10000000
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def measure(stars: int, folder: Path, highest_order: int) -> dict:
    """Build a catalog of ``stars`` stars in this process; the head's costs."""
    import ray

    from gflow_dist.baselines.enbid import EnbidUpsampler
    from gflow_dist.catalog.build import write_catalog
    from gflow_dist.catalog.plots import make_figures
    from gflow_dist.config import build_config
    from gflow_dist.data.mock import MockGalaxy
    from gflow_dist.distributed.catalog_stages import RayCatalogRunner

    galaxy = MockGalaxy()
    model_dir = folder / "model"
    if not model_dir.exists():
        model = EnbidUpsampler(galaxy.sun_position_kpc, galaxy.r_max_kpc)
        model.fit(galaxy.particles(20_000, seed=1), seed=0).save(model_dir)
    config = build_config({"sample": {"total": stars, "shard_size": 250_000},
                           "catalog": {"zarr": False, "highest_order": highest_order},
                           "ray": {"max_samplers": 2}})
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    out = folder / f"catalog-{stars}"
    write_catalog(model_dir, stars, 0, out, config, {"seed": "0"},
                  RayCatalogRunner(config.ray))
    make_figures(out / "hats", folder / f"figures-{stars}")
    result = {"stars": stars, "highest_order": highest_order,
              "wall_s": time.perf_counter() - start_wall,
              "head_cpu_s": time.process_time() - start_cpu,
              "head_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    ray.shutdown()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stars", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--highest-order", type=int, default=10,
                        help="catalog.highest_order: the order the stars are counted at")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(measure(args.one, args.folder, args.highest_order)))
        return
    folder = Path(tempfile.mkdtemp(prefix="gflow-head-"))
    for stars in args.stars:
        run = subprocess.run([sys.executable, __file__, "--one", str(stars), "--folder",
                              str(folder), "--highest-order", str(args.highest_order)],
                             check=True, capture_output=True, text=True)
        print(run.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
