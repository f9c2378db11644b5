"""CPU rows/s of the device kernels against the numpy/hats paths: 1e6 rows, one thread.

Run: RAYON_NUM_THREADS=1 OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_device_kernels.py
"""

from __future__ import annotations

import time

import numpy as np
import torch
from hats.pixel_math.spatial_index import compute_spatial_index

from gflow_dist.catalog.device_observables import observables_tensor, spatial_index_tensor
from gflow_dist.catalog.observables import observables
from gflow_dist.data.mock import MockGalaxy
from gflow_dist.frame import SolarFrame
from gflow_dist.sample.counter_rng import proposal_draws

ROWS = 1_000_000


def _best_seconds(run, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    torch.set_num_threads(1)
    frame = SolarFrame()
    stars = np.tile(MockGalaxy().sample(ROWS // 10, seed=1), (10, 1))
    observed = observables(stars, frame)  # also caches the frame's rotation matrices
    ra, dec = torch.from_numpy(observed["ra"]), torch.from_numpy(observed["dec"])
    cases = {
        "observables (numpy)": lambda: observables(stars, frame),
        "observables_tensor": lambda: observables_tensor(torch.from_numpy(stars), frame),
        "compute_spatial_index (hats)": lambda: compute_spatial_index(observed["ra"],
                                                                      observed["dec"]),
        "spatial_index_tensor": lambda: spatial_index_tensor(ra, dec),
        "proposal_draws": lambda: proposal_draws(7, 0, ROWS, 5, "cpu"),
    }
    for name, run in cases.items():
        seconds = _best_seconds(run)
        print(f"{name:30s} {seconds:6.3f} s  {ROWS / seconds / 1e6:5.2f} M rows/s")


if __name__ == "__main__":
    main()
