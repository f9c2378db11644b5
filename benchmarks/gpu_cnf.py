#!/usr/bin/env python
"""CNF throughput and quality on one GPU: the numbers behind docs/operations.md's sizing.

    python benchmarks/gpu_cnf.py --json runs/gpu.json            # on a machine with a GPU
    python benchmarks/gpu_cnf.py --device cpu --quick             # a smoke run anywhere

Sections, in order, each skipped when its estimated time would overrun ``--budget-s``:

1. ``sample``: ``CNFUpsampler.sample(n, seed)`` of the paper's architecture (4 × 32 GELU,
   20 RK4 steps), both flows, preprocessing inverse and window rejection, with 1 and with
   10 members (the paper's ensemble; members share weights here, which does not change the
   speed), at growing proposal batches; one flow's ``transform`` alone for comparison.
2. ``log_prob``: ``CNFUpsampler.log_prob`` (exact trace, eq. 8) of one member.
3. ``train-epoch``: one epoch (10 Adam minibatches, paper §3.3) of one 3-D flow, eager, over
   240k points (a 300k-particle galaxy) and over 24k points (the 30k-particle recipe).
4. ``kl``: KL(truth ‖ CNF) on the mock galaxy (``benchmarks/kl_mock.py``'s measure) for 30k
   train particles and 30 epochs, then for the paper's full recipe (patience 50, then the
   1e-4 refinement), one member each.

Timings synchronise the GPU before reading the clock. The flows are untrained in sections
1–3: speed does not depend on the weights.

Measured 2026-11-28 on one NVIDIA H200 (torch 2.11.0+cu130, 16 CPU cores), in two runs:
``python benchmarks/gpu_cnf.py`` (its KL section was skipped for time) and
``python benchmarks/gpu_cnf.py --sections training,kl --budget-s 330``:

- sample, 1 member: 1.22M / 1.93M / 1.66M stars/s at batches 2¹⁶ / 2¹⁸ / 2²⁰;
  10 members: 0.15M / 0.46M / 0.94M stars/s; one flow's transform: 4.2M / 15.6M / 16.7M
  per s at batches 2¹⁶ / 2²⁰ / 2²².
- log_prob, 1 member: 465k stars/s.
- train epoch, eager: 2.85 s (24k points) and 2.53 s (240k); compiled: 1.66 s and 1.44 s.
- KL, 30k train particles, 30 epochs, compiled, 1 member: 0.122 ± 0.003 nats in 105 s; the
  paper's full recipe was skipped for time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from gflow_dist.data.mock import MockGalaxy  # noqa: E402
from gflow_dist.data.selection import split_train_test  # noqa: E402
from gflow_dist.evaluate.truth import kl_divergence  # noqa: E402
from gflow_dist.flows.cnf_upsampler import CNFUpsampler  # noqa: E402
from gflow_dist.flows.member import CNFArchitecture  # noqa: E402
from gflow_dist.flows.training import Recipe  # noqa: E402

PAPER_ENSEMBLE = 10


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(function: Callable[[], object], device: torch.device, repeats: int = 3) -> float:
    """Median wall time of ``function`` [s] after one warm-up call."""
    function()
    times = []
    for _ in range(repeats):
        synchronise(device)
        start = time.perf_counter()
        function()
        synchronise(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def fitted_upsampler(device: torch.device, members: int) -> CNFUpsampler:
    """A CNF upsampler fitted for one epoch on 2000 mock particles, its member repeated."""
    galaxy = MockGalaxy()
    model = CNFUpsampler(galaxy.sun_position_kpc, galaxy.r_max_kpc,
                         recipe=Recipe(max_epochs=1, patience=1, refine=False),
                         ensemble_size=1)
    model.device = device
    model.fit(galaxy.particles(2000, seed=1), seed=0)
    model.members = model.members * members
    return model


def bench_sampling(device: torch.device, quick: bool) -> list[dict]:
    rows = []
    totals = (2**16,) if quick else (2**20, 2**22)
    for members in (1, PAPER_ENSEMBLE):
        model = fitted_upsampler(device, members)
        for batch in ((2**16,) if quick else (2**16, 2**18, 2**20)):
            n = totals[-1]
            seconds = timed(lambda m=model, b=batch, n=n: m.sample(n, 7, batch_size=b), device,
                            repeats=2)
            rows.append({"section": "sample", "members": members, "batch": batch, "stars": n,
                         "seconds": seconds, "stars_per_s": n / seconds})
            print(f"sample: {members} member(s), batch {batch}: {n / seconds:,.0f} stars/s",
                  flush=True)
    flow = CNFArchitecture().build(0).to(device).eval()
    for batch in ((2**16,) if quick else (2**16, 2**20, 2**22)):
        z = torch.randn(batch, 3, device=device)
        with torch.no_grad():
            seconds = timed(lambda z=z: flow.transform(z), device)
        rows.append({"section": "transform-1flow", "batch": batch, "seconds": seconds,
                     "stars_per_s": batch / seconds})
        print(f"one flow transform, batch {batch}: {batch / seconds:,.0f} /s", flush=True)
    return rows


def bench_log_prob(device: torch.device, quick: bool) -> list[dict]:
    model = fitted_upsampler(device, 1)
    n = 2**14 if quick else 2**18
    stars = model.sample(n, 11)
    seconds = timed(lambda: model.log_prob(stars), device, repeats=2)
    print(f"log_prob: {n / seconds:,.0f} stars/s", flush=True)
    return [{"section": "log_prob", "members": 1, "stars": n, "seconds": seconds,
             "stars_per_s": n / seconds}]


def epoch_seconds(device: torch.device, points: int, compile: bool = False) -> float:
    """One training epoch of one unconditional 3-D flow over ``points`` points [s].

    With ``compile`` the field runs through ``torch.compile`` (``Recipe.compile``); the
    warm-up epoch then holds the compilation, which the timing leaves out.
    """
    torch.manual_seed(0)
    flow = CNFArchitecture().build(0).to(device).train()
    flow.field.compile = compile
    optimizer = torch.optim.Adam(flow.parameters(), lr=Recipe().learning_rate)
    data = torch.randn(points, 3, device=device)
    batches = Recipe().batches_per_epoch

    def epoch() -> None:
        for rows in torch.randperm(points, device=device).chunk(batches):
            loss = -flow.log_prob(data[rows]).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    return timed(epoch, device, repeats=2)


def bench_training(device: torch.device, quick: bool) -> list[dict]:
    rows = []
    for compile in (False, True):
        for points in ((2_400,) if quick else (24_000, 240_000)):
            seconds = epoch_seconds(device, points, compile)
            rows.append({"section": "train-epoch", "points": points, "compile": compile,
                         "batch": points // Recipe().batches_per_epoch, "seconds": seconds})
            print(f"train epoch over {points} points, compile={compile}: {seconds:.2f} s",
                  flush=True)
    return rows


def kl_run(device: torch.device, train_particles: int, recipe: Recipe, seed: int = 0) -> dict:
    galaxy = MockGalaxy()
    train, test = split_train_test(galaxy.particles(2 * train_particles, seed=seed), seed=1)
    model = CNFUpsampler(galaxy.sun_position_kpc, galaxy.r_max_kpc, recipe=recipe,
                         ensemble_size=1)
    model.device = device
    start = time.perf_counter()
    model.fit(train, seed=seed)
    seconds = time.perf_counter() - start
    kl, error = kl_divergence(galaxy.log_prob(test.phase_space), model.log_prob(test.phase_space))
    print(f"KL, {len(train)} train, {recipe}: {kl:.4f} ± {error:.4f} nats in {seconds:.0f} s",
          flush=True)
    return {"section": "kl", "train_particles": len(train), "max_epochs": recipe.max_epochs,
            "patience": recipe.patience, "refine": recipe.refine, "train_seconds": seconds,
            "kl_nats": kl, "kl_stderr_nats": error}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a smoke run")
    parser.add_argument("--budget-s", type=float, default=420.0,
                        help="skip a section whose estimated time would overrun this [s]")
    parser.add_argument("--json", help="write the rows here after every section")
    parser.add_argument("--sections", default="sample,log_prob,training,kl",
                        help="comma-separated subset of sample, log_prob, training, kl")
    args = parser.parse_args()
    device = torch.device(args.device)
    started = time.perf_counter()
    header = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "numpy": np.__version__}
    print(json.dumps(header), flush=True)
    rows: list[dict] = []

    def save() -> None:
        if args.json:
            Path(args.json).write_text(json.dumps({"header": header, "rows": rows}, indent=1))

    chosen = set(args.sections.split(","))
    sections = {"sample": bench_sampling, "log_prob": bench_log_prob,
                "training": bench_training}
    for name, section in sections.items():
        if name in chosen:
            rows += section(device, args.quick)
            save()
    if "kl" not in chosen:
        return
    epochs = [r["seconds"] for r in rows if r["section"] == "train-epoch" and r["compile"]]
    small_epoch = epochs[0] if epochs else epoch_seconds(device, 2_400 if args.quick else 24_000,
                                                         compile=True)
    train_particles = 3_000 if args.quick else 30_000
    for recipe, epochs_guess in (
            (Recipe(max_epochs=3 if args.quick else 30, refine=False, compile=True), 30),
            (Recipe(max_epochs=4 if args.quick else 400, compile=True), 400)):
        # Two flows, about 1.2 epoch-equivalents each with validation; the conditional
        # flow's field is larger, so call it 3 epochs per recipe epoch.
        estimate = 3 * small_epoch * min(epochs_guess, recipe.max_epochs * (1 + recipe.refine))
        left = args.budget_s - (time.perf_counter() - started)
        if estimate > left:
            print(f"skipping KL with {recipe}: ~{estimate:.0f} s needed, {left:.0f} s left",
                  flush=True)
            continue
        rows.append(kl_run(device, train_particles, recipe))
        save()
    print(f"done in {time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
