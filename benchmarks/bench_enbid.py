#!/usr/bin/env python
"""Speed of the simplified EnBiD baseline: entropy tree vs the real EnBiD binary, log_prob.

Usage::

    nice .venv/bin/python benchmarks/bench_enbid.py [--sizes 100000 500000] [--no-binary]

Measures, on built-in mock-galaxy particles:

1. ``build_leaf_boxes`` (the vectorised entropy tree of paper §4) for each size;
2. the real EnBiD binary (``enbid_ananke.enbid``, 6-D with masses, ngb = 64) on the same
   particles, timed as the CPU of its child process, and the ratio of the two;
3. ``GaussianKernels.log_prob`` of 100k mock points against the 250k kernels of
   ``EnbidUpsampler`` fitted on 250k particles (and the fit itself: tree + window mass).

Times are CPU seconds of one core (``OMP_NUM_THREADS=1`` is set before numpy loads).

Measured on 2026-11-28 (AMD EPYC, 1 core of a shared 2-core machine, under ``nice``)::

    tree  100000:   0.47 s CPU   EnBiD binary:    4.4 s CPU   binary / tree = 9.4×
    tree  500000:   3.53 s CPU   EnBiD binary:   32.3 s CPU   binary / tree = 9.1×
    EnbidUpsampler.fit 250000: 12.7 s CPU (window mass 0.8923 ± 3.3e-05)
    log_prob 100000 points × 250000 kernels: 32.4 s CPU

The fit is mostly the window-mass estimate (256 draws per window-straddling kernel).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gflow_dist.baselines.enbid import EnbidUpsampler  # noqa: E402
from gflow_dist.baselines.entropy_tree import build_leaf_boxes  # noqa: E402
from gflow_dist.data.mock import MockGalaxy  # noqa: E402


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_tree(phase_space) -> float:
    start = time.process_time()
    build_leaf_boxes(phase_space)
    return time.process_time() - start


def time_binary(particles) -> float:
    """CPU seconds of the EnBiD executable (6-D, masses, ngb = 64)."""
    from enbid_ananke import enbid

    with tempfile.TemporaryDirectory(prefix="bench-enbid-") as folder:
        before = _children_cpu()
        density = enbid(particles.positions, velocities=particles.velocities,
                        mass=particles.mass, name=folder, ngb=64, verbose=False)
        spent = _children_cpu() - before
    if len(density) != len(particles):
        raise RuntimeError(f"EnBiD returned {len(density)} densities for {len(particles)}")
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 500_000])
    parser.add_argument("--no-binary", action="store_true", help="skip the EnBiD binary")
    parser.add_argument("--kernels", type=int, default=250_000)
    parser.add_argument("--queries", type=int, default=100_000)
    args = parser.parse_args()
    galaxy = MockGalaxy()
    for size in args.sizes:
        particles = galaxy.particles(size, seed=1)
        tree = time_tree(particles.phase_space)
        line = f"tree {size:>7}: {tree:6.2f} s CPU"
        if not args.no_binary:
            binary = time_binary(particles)
            line += f"   EnBiD binary: {binary:6.1f} s CPU   binary / tree = {binary / tree:.1f}×"
        print(line, flush=True)
    start = time.process_time()
    model = EnbidUpsampler(galaxy.sun_position_kpc, galaxy.r_max_kpc).fit(
        galaxy.particles(args.kernels, seed=2), seed=0)
    fit = time.process_time() - start
    queries = galaxy.sample(args.queries, seed=3)
    start = time.process_time()
    log_p = model.kernels.log_prob(queries)
    spent = time.process_time() - start
    print(f"EnbidUpsampler.fit {args.kernels}: {fit:.1f} s CPU (window mass "
          f"{model.window_mass:.4f} ± {model.window_mass_stderr:.1e})")
    print(f"log_prob {args.queries} points × {args.kernels} kernels: {spent:.1f} s CPU "
          f"({(log_p > -float('inf')).mean():.4f} reached by a kernel)")


if __name__ == "__main__":
    main()
