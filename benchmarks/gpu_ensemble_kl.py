#!/usr/bin/env python
"""The paper's 10-member CNF ensemble with its members trained side by side on one GPU.

    python benchmarks/gpu_ensemble_kl.py --json runs/ensemble.json        # on a GPU machine
    python benchmarks/gpu_ensemble_kl.py --device cpu --quick               # a smoke run

Trains ``--members`` members of the CNF (paper architecture and recipe, ``--epochs`` per
phase, no refinement unless ``--refine``) on 30k mock particles, ``--parallel`` of them at
once in separate processes sharing the device, then reports KL(truth ‖ ensemble) and
KL(truth ‖ member) on 30k held-out particles (``benchmarks/kl_mock.py``'s measure). The
wall time against one member's time says how well members pack onto one GPU, which is what
``ray.num_gpus_per_trainer < 1`` relies on (one member per actor sharing a GPU).

Measured 2026-11-28 on one NVIDIA H200 (torch 2.11.0+cu130, 16 CPU cores) with
``timeout 225 python benchmarks/gpu_ensemble_kl.py``: the device time ran out before the
end, with all ten p(r) flows done and the p(v|r) flows started, so there is no KL yet. The
training's progress lines (at least 10 s apart) came every 4 epochs for each member: an
epoch of p(r) took 2.5–3.3 s per member with ten side by side, against 1.7 s for one member
alone (``gpu_cnf.py``), i.e. 5–7× the epochs per second per GPU.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from gflow_dist.data.mock import MockGalaxy  # noqa: E402
from gflow_dist.data.selection import split_train_test  # noqa: E402
from gflow_dist.evaluate.truth import kl_divergence  # noqa: E402
from gflow_dist.flows.cnf_upsampler import CNFUpsampler  # noqa: E402
from gflow_dist.flows.member import train_member  # noqa: E402
from gflow_dist.flows.training import Recipe  # noqa: E402


def timed_member(threads: int, **job: Any) -> tuple[Path, float]:
    torch.set_num_threads(threads)  # the processes share the machine's cores
    start = time.perf_counter()
    directory = train_member(**job)
    return directory, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if any)")
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument("--parallel", type=int, default=10, help="members trained at once")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--refine", action="store_true")
    parser.add_argument("--quick", action="store_true", help="3k particles, 2 epochs")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    galaxy = MockGalaxy()
    n_train = 3_000 if args.quick else 30_000
    train, test = split_train_test(galaxy.particles(2 * n_train, seed=0), seed=1)
    recipe = Recipe(max_epochs=2 if args.quick else args.epochs, refine=args.refine,
                    compile=True)
    model = CNFUpsampler(galaxy.sun_position_kpc, galaxy.r_max_kpc, recipe=recipe,
                         ensemble_size=args.members)
    member_seconds: list[float] = []

    def side_by_side(function: Any, jobs: list[dict[str, Any]]) -> list[Path]:
        context = multiprocessing.get_context("spawn")  # CUDA cannot be forked
        with ProcessPoolExecutor(args.parallel, mp_context=context) as pool:
            threads = max(1, (os.cpu_count() or 1) // args.parallel)
            futures = {pool.submit(timed_member, threads, **job, device=args.device): index
                       for index, job in enumerate(jobs)}
            for future in as_completed(futures):
                directory, seconds = future.result()
                member_seconds.append(seconds)
                print(f"member {futures[future]} done in {seconds:.0f} s "
                      f"({time.perf_counter() - start:.0f} s since the start)", flush=True)
        return [job["directory"] for job in jobs]

    start = time.perf_counter()
    model.fit(train, seed=0, runner=side_by_side)
    wall = time.perf_counter() - start
    log_true = galaxy.log_prob(test.phase_space)
    results: dict[str, Any] = {
        "members": args.members, "parallel": args.parallel, "epochs": recipe.max_epochs,
        "refine": args.refine, "train_particles": len(train), "wall_seconds": wall,
        "member_seconds": sorted(member_seconds),
        "kl_ensemble_nats": kl_divergence(log_true, model.log_prob(test.phase_space)),
    }
    members = model.members
    for index, member in enumerate(members):
        model.members = [member]
        results[f"kl_member_{index}_nats"] = kl_divergence(log_true,
                                                           model.log_prob(test.phase_space))
    print(json.dumps(results, indent=1), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
