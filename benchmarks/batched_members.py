#!/usr/bin/env python
"""Seconds per member-epoch: one member trained alone (``train``) against M members trained
as one batched model (``train_stacked``), for the p(r) flow of the paper's CNF.

    OMP_NUM_THREADS=2 nice python benchmarks/batched_members.py --members 2 4
    OMP_NUM_THREADS=2 nice python benchmarks/batched_members.py --members 2 4 --compile

An epoch is the paper's recipe (§3.3): 10 Adam minibatches over the train rows, then the
validation loss and a checkpoint; ``--points`` rows of which 20 % validate (30 000: 24 000
train rows, minibatches of 2 400). Each configuration trains one epoch untimed first (with
``--compile`` that compiles), then ``--epochs`` timed epochs.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from gflow_dist.flows.batched_training import train_stacked
from gflow_dist.flows.member import CNFArchitecture, _negative_log_likelihood
from gflow_dist.flows.training import Recipe, train, validation_split


def _flows(members: int) -> list:
    torch.manual_seed(0)
    return [CNFArchitecture().build(0) for _ in range(members)]


def _seconds(run, recipe: Recipe, epochs: int) -> float:
    """Wall seconds of ``epochs`` epochs after one warm-up epoch."""
    with tempfile.TemporaryDirectory() as scratch:
        run(replace(recipe, max_epochs=1), Path(scratch) / "warm")
    with tempfile.TemporaryDirectory() as scratch:
        start = time.perf_counter()
        run(replace(recipe, max_epochs=epochs), Path(scratch) / "timed")
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=30_000)
    parser.add_argument("--members", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    data = torch.from_numpy(np.random.default_rng(0).standard_normal((args.points, 3))
                            .astype(np.float32))
    fit_rows, val_rows = validation_split(args.points, 0.2, 0)
    fit, held = data[fit_rows], data[val_rows]
    recipe = Recipe(refine=False, patience=10**6, compile=args.compile)

    def alone(budget: Recipe, directory: Path) -> None:
        directory.mkdir()
        (flow,) = _flows(1)
        flow.field.compile = budget.compile
        train(flow, _negative_log_likelihood, fit, None, held, None, budget, 0,
              directory / "p.ckpt", "alone")

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{len(fit_rows)} train rows, compile={args.compile}")
    today = _seconds(alone, recipe, args.epochs) / args.epochs
    print(f"M=1 alone (train): {today:.2f} s per member-epoch")
    for members in args.members:
        def batched(budget: Recipe, directory: Path, members: int = members) -> None:
            directory.mkdir()
            train_stacked(_flows(members), fit.expand(members, -1, -1),
                          None, held.expand(members, -1, -1), None, budget,
                          list(range(members)), [directory / f"{m}.ckpt" for m in range(members)],
                          [f"member {m}" for m in range(members)])

        seconds = _seconds(batched, recipe, args.epochs) / args.epochs / members
        print(f"M={members} batched (train_stacked): {seconds:.2f} s per member-epoch "
              f"({today / seconds:.2f}x)")


if __name__ == "__main__":
    main()
