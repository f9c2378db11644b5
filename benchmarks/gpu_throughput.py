#!/usr/bin/env python
"""Both halves of issue 14 on one device in under 5 minutes: sampling by stage, and training.

    python benchmarks/gpu_throughput.py --json runs/throughput.json     # on a GPU machine
    python benchmarks/gpu_throughput.py --device cpu --quick            # a smoke run anywhere

Sections:

1. ``sample``: a 10-member CNF ensemble of the paper's architecture (4 × 32 GELU, 20 RK4
   steps; one member fitted for an epoch on mock particles and repeated, which does not
   change the speed) draws stars on the device, stage by stage in proposal batches of
   ``--batch``: counter-based base draws and member choice; both flows of every member;
   eqs. 9–11 inverted in float64 and the window; the observables; the order-29 HEALPix
   index; the finished columns to an Arrow table on the host. Then end to end: shard
   rows as ``draw_shard`` makes them (``catalog_tables``), in stars/s.
2. ``train``: epochs of both flows (10 Adam minibatches each, then the validation loss
   and a checkpoint: paper §3.3) on ``--train-points`` mock particles, of one member alone
   (``train_member``) and of 10 members as one batched model (``train_members``), compiled unless
   ``--eager``; seconds per member-epoch.

Every timing synchronises the device before reading the clock and is the median of a few
repeats after a warm-up. Numbers and their commands go in docs/scaling.md and
docs/operations.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from gpu_cnf import PAPER_ENSEMBLE, fitted_upsampler, synchronise, timed  # noqa: E402

from gflow_dist.catalog.device_observables import (  # noqa: E402
    observables_tensor,
    spatial_index_tensor,
)
from gflow_dist.catalog.device_table import device_catalog_table  # noqa: E402
from gflow_dist.catalog.shards import catalog_tables  # noqa: E402
from gflow_dist.data.mock import MockGalaxy  # noqa: E402
from gflow_dist.flows.batched_members import train_members  # noqa: E402
from gflow_dist.flows.member import CNFArchitecture, train_member  # noqa: E402
from gflow_dist.flows.training import Recipe  # noqa: E402
from gflow_dist.frame import SolarFrame  # noqa: E402
from gflow_dist.preprocess import Preprocessor  # noqa: E402
from gflow_dist.preprocess import device as device_preprocess  # noqa: E402
from gflow_dist.sample.counter_rng import proposal_draws  # noqa: E402
from gflow_dist.sample.shards import Shard  # noqa: E402


def bench_sampling(device: torch.device, batch: int, stars: int) -> list[dict]:
    """Stars (or proposals) per second of each stage and end to end."""
    model = fitted_upsampler(device, PAPER_ENSEMBLE)
    frame = SolarFrame()
    seed = 2**63 + 12345
    z, member = proposal_draws(seed, 0, batch, PAPER_ENSEMBLE, device)
    with torch.no_grad():
        phase_space = model.transform_base(z, member)
    kept = phase_space[model.window.contains_tensor(phase_space)]
    columns = observables_tensor(kept, frame)
    preprocessor = model.preprocessor

    def flows_only() -> None:
        with torch.no_grad():
            model.transform_base(z, member)

    s = torch.randn(batch, 3, dtype=torch.float64, device=device)

    def inverse_and_window() -> None:
        positions = device_preprocess.positions_inverse(preprocessor, s)
        velocities = device_preprocess.velocities_inverse(preprocessor, s)
        model.window.contains_tensor(torch.cat([positions, velocities], dim=1))

    stages = {
        "draws": (lambda: proposal_draws(seed, batch, batch, PAPER_ENSEMBLE, device), batch),
        "flows+inverse": (flows_only, batch),
        "inverse+window": (inverse_and_window, batch),
        "observables": (lambda: observables_tensor(kept, frame), len(kept)),
        "healpix": (lambda: spatial_index_tensor(columns["ra"], columns["dec"]), len(kept)),
        "to-arrow": (lambda: device_catalog_table(kept, 0, frame), len(kept)),
    }
    rows = []
    for stage, (function, count) in stages.items():
        seconds = timed(function, device)
        rows.append({"section": "sample", "stage": stage, "batch": batch, "rows": count,
                     "seconds": seconds, "per_s": count / seconds})
        print(f"sample {stage:15s} {count:>9d} rows: {count / seconds:>14,.0f} /s", flush=True)

    shard = Shard(0, 0, stars, seed)

    def end_to_end() -> None:
        for _ in catalog_tables(model, shard, batch, frame):
            pass

    seconds = timed(end_to_end, device, repeats=2)
    rows.append({"section": "sample", "stage": "end-to-end", "batch": batch, "rows": stars,
                 "members": PAPER_ENSEMBLE, "seconds": seconds, "per_s": stars / seconds,
                 "threads": torch.get_num_threads()})
    print(f"sample end to end, {stars} stars into Arrow: {stars / seconds:,.0f} stars/s "
          f"({torch.get_num_threads()} threads)", flush=True)
    return rows


def _member_jobs(device: torch.device, points: int, members: int, recipe: Recipe,
                 root: Path) -> list[dict]:
    """``train_member`` jobs of ``members`` paper-architecture members on ``points`` mock
    particles, preprocessed as the ensemble does (eqs. 9–11)."""
    galaxy = MockGalaxy()
    particles = galaxy.particles(points, seed=3)
    preprocessor = Preprocessor.fit(particles.phase_space, galaxy.sun_position_kpc,
                                    galaxy.r_max_kpc)
    positions, _ = preprocessor.positions_forward(particles.positions)
    velocities, _ = preprocessor.velocities_forward(particles.velocities)
    return [dict(positions=positions, velocities=velocities, architecture=CNFArchitecture(),
                 recipe=recipe, validation_fraction=0.2, seed=seed, device=str(device),
                 directory=root / f"member-{seed:02d}", label=f"member {seed}")
            for seed in range(members)]


def member_epoch_seconds(device: torch.device, points: int, members: int, epochs: int,
                         compile: bool) -> float:
    """Seconds per member-epoch (one epoch of p(r) and one of p(v|r), with validation and
    checkpoints): one member alone by ``train_member``, or ``members`` as one batched model
    by ``train_members``; after a one-epoch warm-up (which holds any compilation)."""
    def run(max_epochs: int) -> float:
        recipe = Recipe(max_epochs=max_epochs, refine=False, patience=10**6, compile=compile)
        with tempfile.TemporaryDirectory() as scratch:
            jobs = _member_jobs(device, points, members, recipe, Path(scratch))
            synchronise(device)
            start = time.perf_counter()
            if members == 1:
                train_member(**jobs[0])
            else:
                train_members(jobs)
            synchronise(device)
            return time.perf_counter() - start

    run(1)
    return run(epochs) / (epochs * members)


def bench_training(device: torch.device, points: int, members: int, epochs: int,
                   compile: bool) -> list[dict]:
    """Member-epoch seconds alone and batched."""
    rows = []
    for group in (1, members):
        seconds = member_epoch_seconds(device, points, group, epochs, compile)
        rows.append({"section": "train", "members": group, "points": points,
                     "epochs": epochs, "compile": compile, "seconds_per_member_epoch": seconds})
        layout = "alone" if group == 1 else f"batched, {group} members"
        print(f"train {layout}: {seconds:.3f} s per member-epoch ({points} particles, "
              f"compile={compile})", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument("--batch", type=int, help="proposals per batch (default 2^20 on a "
                        "GPU, 2^16 on a CPU, 2^12 with --quick)")
    parser.add_argument("--stars", type=int, help="stars of the end-to-end draw")
    parser.add_argument("--sections", default="sample,train",
                        help="comma-separated subset of sample, train")
    parser.add_argument("--train-points", type=int, help="mock particles to train on, 20 %% "
                        "of them validating (default 300 000: 240k train rows; 1000 --quick)")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per layout")
    parser.add_argument("--eager", action="store_true", help="train without torch.compile "
                        "(always so with --quick)")
    parser.add_argument("--json", help="write the header and rows here after every section")
    args = parser.parse_args()
    device = torch.device(args.device)
    batch = args.batch or (2**12 if args.quick else 2**20 if device.type == "cuda" else 2**16)
    stars = args.stars or (4 * batch if args.quick else 16 * batch)
    header = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "numpy": np.__version__, "threads":
              torch.get_num_threads(), "argv": sys.argv[1:]}
    print(json.dumps(header), flush=True)
    rows: list[dict] = []
    chosen = set(args.sections.split(","))
    points = args.train_points or (1_000 if args.quick else 300_000)
    members = 2 if args.quick else PAPER_ENSEMBLE
    compile = not args.quick and not args.eager
    for name, run in (("sample", lambda: bench_sampling(device, batch, stars)),
                      ("train", lambda: bench_training(device, points, members, args.epochs,
                                                       compile))):
        if name in chosen:
            rows += run()
            if args.json:
                Path(args.json).write_text(json.dumps({"header": header, "rows": rows},
                                                      indent=1))


if __name__ == "__main__":
    main()
