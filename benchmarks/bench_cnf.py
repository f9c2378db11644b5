#!/usr/bin/env python
"""Throughput of the CNF fast path against torchdyn, of the full upsampler, and of training.

Usage::

    python benchmarks/bench_cnf.py [--quick] [--threads N] [--json PATH]

Measures, in one run (see benchmarks/README.md for what every number means):

1. sampling: ONE unconditional 3-D flow's ``ContinuousFlow.transform`` (hand-written RK4,
   the fast path) at batch 4096 on 1 thread and at batch 65536 on ``--threads`` threads;
2. the same through torchdyn's ``NeuralODE`` (``reference_transform``), and the ratio;
3. ``CNFUpsampler.sample(n, seed)`` with one member: both flows, the preprocessing
   inversion and the selection-window rejection;
4. log-density: ``CNFUpsampler.log_prob`` and one flow's ``log_prob`` against
   ``reference_log_prob`` (torchdyn + one autograd VJP per dimension);
5. one training epoch (10 Adam minibatches over 240k points, paper §3.3) of one 3-D flow,
   eager and with ``compile=True`` (compile time reported apart from the steady epoch).

Every timing is the median of a few repeats after warm-up calls. The script also prints
the CPU pressure (/proc/pressure/cpu) seen during each measurement: other processes on
the machine make multi-threaded timings in particular unreliable (OpenMP threads wait on
each other at every barrier), and rows measured under contention are flagged with ``!``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from gflow_dist.data.mock import MockGalaxy  # noqa: E402
from gflow_dist.flows.cnf import ContinuousFlow  # noqa: E402
from gflow_dist.flows.cnf_upsampler import CNFUpsampler  # noqa: E402
from gflow_dist.flows.member import CNFArchitecture  # noqa: E402
from gflow_dist.flows.torchdyn_reference import (  # noqa: E402
    reference_log_prob,
    reference_transform,
)
from gflow_dist.flows.training import Recipe  # noqa: E402
from gflow_dist.sample.window import DrawStats  # noqa: E402

REFERENCE = {
    # Measured on a 2-core machine of this kind (figures given with the task).
    ("sample-1flow", "fast", 1): 31_000.0,
    ("sample-1flow", "torchdyn", 1): 24_000.0,
    ("sample-1flow", "fast", 2): 44_000.0,
    ("sample-1flow", "torchdyn", 2): 44_000.0,
}
"""Reference sampling throughputs [stars/s, all threads together] keyed by (what, how,
threads). The 2-thread figure (≈44k at batch 65536) is read as the total of both cores:
it is the only reading consistent with ≈31k on one core."""

REFERENCE_EPOCH_S = {"torchdyn": 126.0, "torch.func compiled": 72.0}
"""Reference training-epoch times over 240k points [s]."""

TARGET_SAMPLES_PER_S = 31_000.0
TARGET_EPOCH_S = 72.0
CONTENDED_PSI = 20.0
"""CPU pressure (% of time some task waited for a CPU, /proc/pressure/cpu avg10) above
which a row is flagged as measured on a busy machine."""


# ----------------------------------------------------------------------------- helpers


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_pressure() -> float | None:
    """``some avg10`` of /proc/pressure/cpu [%], or None where the kernel has no PSI."""
    try:
        first = Path("/proc/pressure/cpu").read_text().splitlines()[0]
        return float(first.split()[1].split("=")[1])
    except (OSError, IndexError, ValueError):
        return None


WAIT_IDLE_S = 0.0
"""Set by ``--wait-idle``: longest wait for an idle CPU before each measurement [s]."""


def wait_idle() -> None:
    """Wait (up to ``WAIT_IDLE_S``) until the CPU pressure drops below ``CONTENDED_PSI``."""
    deadline = time.monotonic() + WAIT_IDLE_S
    announced = False
    while time.monotonic() < deadline:
        pressure = cpu_pressure()
        if pressure is None or pressure <= CONTENDED_PSI / 2:
            return
        if not announced:
            progress(f"CPU busy (pressure {pressure:.0f} %): waiting up to {WAIT_IDLE_S:.0f} s")
            announced = True
        time.sleep(2.0)


@dataclass
class Row:
    section: str
    name: str
    batch: int | None
    threads: int
    seconds: float
    """Median wall time of one call [s]."""
    items: int
    """Stars (or points) one call handles."""
    reference: float | None = None
    """Reference throughput [stars/s, total] or reference epoch time [s] for epochs."""
    note: str = ""
    pressure: float | None = None
    """Highest CPU pressure seen around the measurement [%]."""
    repeats: list[float] = field(default_factory=list)
    paired_ratios: list[float] = field(default_factory=list)
    """For a row measured interleaved with its torchdyn row: torchdyn's time over this
    row's in each round of back-to-back calls (> 1: this path is faster)."""

    @property
    def rate(self) -> float:
        return self.items / self.seconds

    @property
    def rate_per_core(self) -> float:
        return self.rate / self.threads

    @property
    def best_rate(self) -> float:
        return self.items / min(self.repeats or [self.seconds])


def measure(function: Callable[[], object], *, threads: int, repeats: int = 5,
            warmups: int = 1, min_time: float = 0.3) -> tuple[float, list[float], float | None]:
    """Median seconds per call of ``function`` on ``threads`` threads, after warm-up calls.

    The last warm-up calibrates how many calls make one repeat last ``min_time`` seconds.
    """
    torch.set_num_threads(threads)
    wait_idle()
    pressures = [cpu_pressure()]
    single = math.inf
    for _ in range(max(1, warmups)):
        start = time.perf_counter()
        function()
        single = time.perf_counter() - start
    inner = max(1, math.ceil(min_time / max(single, 1e-9)))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            function()
        times.append((time.perf_counter() - start) / inner)
    pressures.append(cpu_pressure())
    known = [p for p in pressures if p is not None]
    return statistics.median(times), times, (max(known) if known else None)


def fmt_rate(value: float) -> str:
    return f"{value / 1000:8.1f}k"


def progress(message: str) -> None:
    print(f"  .. {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- sections


def one_flow(seed: int = 0) -> ContinuousFlow:
    """An untrained unconditional 3-D flow of the paper's architecture (4 × 32, 20 steps)."""
    torch.manual_seed(seed)
    return CNFArchitecture().build(0).eval()


def bench_one_flow_sampling(threads: int, quick: bool) -> list[Row]:
    rows = []
    flow = one_flow()
    for batch, n_threads in ((4096, 1), (65536, threads)):
        z = torch.randn(batch, 3, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            fast = flow.transform(z)
            slow = reference_transform(flow, z)
        gap = float((fast - slow).abs().max())
        for how, function in (("fast", lambda z=z: flow.transform(z)),
                              ("torchdyn", lambda z=z: reference_transform(flow, z))):
            progress(f"sampling one flow: {how}, batch {batch}, {n_threads} thread(s)")
            with torch.no_grad():
                seconds, times, psi = measure(function, threads=n_threads,
                                              repeats=3 if quick else 5)
            rows.append(Row("sample-1flow", how, batch, n_threads, seconds, batch,
                            REFERENCE.get(("sample-1flow", how, n_threads)),
                            f"max|fast-torchdyn| = {gap:.1e}" if how == "torchdyn" else "",
                            psi, times))
    return rows


def build_upsampler(seed: int = 0) -> tuple[CNFUpsampler, MockGalaxy, float]:
    """A one-member CNF upsampler fitted for one epoch on 2000 mock particles."""
    galaxy = MockGalaxy()
    particles = galaxy.particles(2000, seed=seed + 1)
    upsampler = CNFUpsampler(galaxy.sun_position_kpc, galaxy.r_max_kpc,
                             recipe=Recipe(max_epochs=1, patience=1, refine=False),
                             ensemble_size=1)
    start = time.perf_counter()
    upsampler.fit(particles, seed=seed)
    return upsampler, galaxy, time.perf_counter() - start


def bench_pipeline(upsampler: CNFUpsampler, threads: int, quick: bool) -> list[Row]:
    rows = []
    n = 65_536 if quick else 196_608
    stats = DrawStats()
    torch.set_num_threads(threads)
    progress(f"upsampler.sample({n}), {threads} thread(s)")
    # Warm-up draw that also counts the window's rejections.
    for _ in upsampler.iter_samples(n, 7, stats=stats):
        pass
    seconds, times, psi = measure(lambda: upsampler.sample(n, 7), threads=threads,
                                  repeats=2 if quick else 3, warmups=1, min_time=0)
    rows.append(Row("pipeline", "upsampler.sample", n, threads, seconds, n, None,
                    f"1 member, p(r)+p(v|r), {stats.proposed} proposed, "
                    f"{100 * stats.rejection_rate:.1f}% rejected by the window", psi, times))
    return rows


def bench_log_prob(upsampler: CNFUpsampler, threads: int, quick: bool) -> list[Row]:
    rows = []
    n = 16_384 if quick else 65_536
    stars = upsampler.sample(n, 11)
    progress(f"upsampler.log_prob({n}), {threads} thread(s)")
    seconds, times, psi = measure(lambda: upsampler.log_prob(stars), threads=threads,
                                  repeats=2, warmups=1, min_time=0)
    rows.append(Row("log_prob", "upsampler.log_prob", n, threads, seconds, n, None,
                    "1 member, p(r)+p(v|r), in batches of 65536", psi, times))
    flow = one_flow()
    compiled = one_flow()  # the same weights, evaluated through torch.compile
    compiled.field.compile = True
    y = torch.randn(4096, 3, generator=torch.Generator().manual_seed(3))
    progress("log_prob one flow: compiling (torch.compile, once per process and kind)")
    start = time.perf_counter()
    with torch.no_grad():
        compiled.log_prob(y)
    compile_note = f"compiled in {time.perf_counter() - start:.0f} s (once)"
    configs = ((4096, 1), (16_384, threads)) if quick else ((4096, 1), (65_536, threads))
    for batch, n_threads in configs:
        y = torch.randn(batch, 3, generator=torch.Generator().manual_seed(2))
        progress(f"log_prob one flow: eager, compiled and torchdyn interleaved, batch {batch}, "
                 f"{n_threads} thread(s)")
        # no_grad as in the upsampler; reference_log_prob enables grad inside each
        # field call for its VJPs, so the graph never spans more than one stage.
        with torch.no_grad():
            gap = float((flow.log_prob(y) - reference_log_prob(flow, y)).abs().max())
            times, psi = measure_interleaved(
                {"fast": lambda y=y: flow.log_prob(y),
                 "fast compiled": lambda y=y: compiled.log_prob(y),
                 "torchdyn": lambda y=y: reference_log_prob(flow, y)},
                threads=n_threads, rounds=7 if batch <= 4096 else 5)
        for how in ("fast", "fast compiled"):
            ratios = [s / f for f, s in zip(times[how], times["torchdyn"], strict=True)]
            note = f"paired ratio {min(ratios):.2f}-{max(ratios):.2f}"
            rows.append(Row("log_prob-1flow", how, batch, n_threads,
                            statistics.median(times[how]), batch, None,
                            note + (f"; {compile_note}" if how == "fast compiled" else ""),
                            psi, times[how], ratios))
        rows.append(Row("log_prob-1flow", "torchdyn", batch, n_threads,
                        statistics.median(times["torchdyn"]), batch, None,
                        f"max|fast-torchdyn| = {gap:.1e}", psi, times["torchdyn"]))
    return rows


def measure_interleaved(functions: dict[str, Callable[[], object]], *, threads: int,
                        rounds: int) -> tuple[dict[str, list[float]], float | None]:
    """Seconds per call of each function, called one after another in ``rounds`` rounds.

    On a shared machine the speed drifts by tens of percent within a minute; timing each
    path in a block of its own then compares two different machines. Interleaved calls
    see the same drift, so the ratio within each round is what to read.
    """
    torch.set_num_threads(threads)
    wait_idle()
    pressures = [cpu_pressure()]
    for function in functions.values():
        function()
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(rounds):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - start)
    pressures.append(cpu_pressure())
    known = [p for p in pressures if p is not None]
    return times, (max(known) if known else None)


def _nll(flow: ContinuousFlow, data: torch.Tensor) -> torch.Tensor:
    return -flow.log_prob(data).mean()


def _epoch(flow: ContinuousFlow, optimizer: torch.optim.Optimizer, data: torch.Tensor,
           batches: int, epoch: int) -> float:
    """One epoch of :func:`gflow_dist.flows.training.train`'s inner loop."""
    rng = np.random.default_rng([0, 0, epoch])
    running = 0.0
    for rows in np.array_split(rng.permutation(len(data)), batches):
        index = torch.from_numpy(rows)
        loss = _nll(flow, data[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        running += loss.item() * len(rows)
    return running / len(data)


def _compile_frames() -> int:
    """Graphs dynamo has compiled so far in this process (-1 where unknown)."""
    try:
        from torch._dynamo.utils import counters
        return int(counters["stats"]["unique_graphs"])
    except Exception:  # noqa: BLE001 (private API; the count is informative only)
        return -1


def bench_training(upsampler: CNFUpsampler, galaxy: MockGalaxy, threads: int,
                   quick: bool) -> list[Row]:
    """One epoch, 10 Adam minibatches, of the unconditional flow on preprocessed positions.

    The warm-up "epoch" before each timed epoch is short: two minibatches of the timed
    epoch's own size. The size matters for ``compile=True``: the compiled graphs are
    dynamic in the batch size only within a range (in torch 2.13 inductor guards on
    ``batch <= 4096``), so a warm-up on smaller minibatches would leave a recompilation
    inside the timed epoch. The first compiled minibatch compiles the forward and backward
    graphs (two variants: the first RK4 stage's input does not require grad, the others
    do); the compile time is that minibatch's time less the second, warm, one.
    """
    full = 240_000
    points = 24_000 if quick else full
    scale = full / points
    particles = galaxy.particles(points, seed=5)
    positions, _ = upsampler.preprocessor.positions_forward(particles.positions)
    data = torch.as_tensor(positions, dtype=torch.float32)
    batches = Recipe().batches_per_epoch
    batch = len(data) // batches
    warm_data = data[: 2 * batch]
    rows = []
    torch.set_num_threads(threads)
    scaled = f" (measured on {points}, ×{scale:g})" if scale != 1 else ""

    def timed_epoch(flow: ContinuousFlow, optimizer: torch.optim.Optimizer) -> tuple[float,
                                                                                     float]:
        wait_idle()
        psi0 = cpu_pressure()
        start = time.perf_counter()
        _epoch(flow, optimizer, data, batches, 1)
        seconds = time.perf_counter() - start
        psi = max([p for p in (psi0, cpu_pressure()) if p is not None], default=None)
        return seconds, psi

    # Eager.
    flow = one_flow().train()
    flow.field.compile = False
    optimizer = torch.optim.Adam(flow.parameters(), lr=Recipe().learning_rate)
    progress(f"training epoch, eager: warm-up, 2 minibatches of {batch}")
    _epoch(flow, optimizer, warm_data, 2, 0)
    progress(f"training epoch, eager: timed, 10 minibatches of {batch}")
    eager, psi = timed_epoch(flow, optimizer)
    rows.append(Row("train-epoch", "eager", batch, threads, eager * scale, full,
                    REFERENCE_EPOCH_S["torchdyn"], "10 minibatches, Adam" + scaled, psi))

    # Compiled.
    flow = one_flow().train()
    flow.field.compile = True
    optimizer = torch.optim.Adam(flow.parameters(), lr=Recipe().learning_rate)
    progress(f"training epoch, compiled: warm-up (compiling), 2 minibatches of {batch}")
    step_times = []
    for step in range(2):
        start = time.perf_counter()
        _epoch(flow, optimizer, warm_data[step * batch:(step + 1) * batch], 1, step)
        step_times.append(time.perf_counter() - start)
    frames = _compile_frames()
    progress(f"training epoch, compiled: timed, 10 minibatches of {batch}")
    compiled, psi = timed_epoch(flow, optimizer)
    recompiled = frames >= 0 and _compile_frames() != frames
    rows.append(Row("train-epoch", "compile=True", batch, threads, compiled * scale, full,
                    REFERENCE_EPOCH_S["torch.func compiled"], "10 minibatches, Adam" + scaled
                    + (" RECOMPILED inside the timed epoch" if recompiled else ""), psi))
    first, second = step_times
    rows.append(Row("train-epoch", "compile time", None, threads, first - second, 0, None,
                    f"first minibatch {first:.1f} s − warm minibatch {second:.1f} s "
                    f"({frames} graphs)"))
    return rows


# ----------------------------------------------------------------------------- report


def flag(row: Row) -> str:
    return "!" if row.pressure is not None and row.pressure > CONTENDED_PSI else " "


def report(rows: list[Row], header: dict[str, object], quick: bool) -> dict[str, float]:
    print()
    for key, value in header.items():
        print(f"{key:>14}: {value}")
    print()
    print(f"{'section':<15} {'what':<19} {'batch':>6} {'thr':>3} {'time/call':>10} "
          f"{'stars/s':>9} {'/core':>9} {'best':>9} {'reference':>9}  note")
    print("-" * 120)
    for row in rows:
        batch = "" if row.batch is None else str(row.batch)
        if row.section == "train-epoch":
            ref = "" if row.reference is None else f"{row.reference:7.0f} s"
            print(f"{row.section:<15} {row.name:<19} {batch:>6} {row.threads:>3} "
                  f"{row.seconds:9.1f}s{flag(row)}{'':>9} {'':>9} {'':>9} {ref:>9}  {row.note}")
            continue
        ref = "" if row.reference is None else fmt_rate(row.reference)
        print(f"{row.section:<15} {row.name:<19} {batch:>6} {row.threads:>3} "
              f"{row.seconds * 1e3:8.1f}ms{flag(row)}{fmt_rate(row.rate)} "
              f"{fmt_rate(row.rate_per_core)} {fmt_rate(row.best_rate)} {ref:>9}  {row.note}")
    print()
    if any(flag(row) == "!" for row in rows):
        print(f"! measured while the CPU was contended (pressure > {CONTENDED_PSI:g} %): "
              "rerun on an idle machine before trusting that row.")
    if quick:
        print("--quick: training epochs were measured on 24k points and scaled ×10 to 240k.")

    def find(section: str, name: str, threads: int | None = None) -> Row | None:
        return next((r for r in rows if r.section == section and r.name == name
                     and (threads is None or r.threads == threads)), None)

    ratios: dict[str, float] = {}
    print("\nratios")
    for section in ("sample-1flow", "log_prob-1flow"):
        for row in (r for r in rows if r.section == section and r.name.startswith("fast")):
            ref = next(r for r in rows if r.section == section and r.name == "torchdyn"
                       and r.batch == row.batch and r.threads == row.threads)
            key = f"{section} {row.name}/torchdyn batch {row.batch} {row.threads} thr"
            if row.paired_ratios:  # measured interleaved: the median of the pairs' ratios
                ratios[key] = statistics.median(row.paired_ratios)
                print(f"  {key:<52} {ratios[key]:6.2f}×  (median of "
                      f"{len(row.paired_ratios)} interleaved pairs, range "
                      f"{min(row.paired_ratios):.2f}-{max(row.paired_ratios):.2f})")
            else:
                ratios[key] = row.rate / ref.rate
                print(f"  {key:<52} {ratios[key]:6.2f}×")
    fast1 = find("sample-1flow", "fast", 1)
    pipe = find("pipeline", "upsampler.sample")
    if fast1 is not None:
        key = "sample-1flow fast vs target 31k/s (1 thr)"
        ratios[key] = fast1.rate / TARGET_SAMPLES_PER_S
        print(f"  {key:<52} {ratios[key]:6.2f}×  "
              f"({'meets' if ratios[key] >= 1 else 'MISSES'} the target)")
    if pipe is not None:
        fast_t = find("sample-1flow", "fast", pipe.threads)
        if fast_t is not None:
            key = "pipeline sample / one-flow fast (same threads)"
            ratios[key] = pipe.rate / fast_t.rate
            print(f"  {key:<52} {ratios[key]:6.2f}×  (two flows: ≤ 0.5 expected)")
    eager, compiled = find("train-epoch", "eager"), find("train-epoch", "compile=True")
    if eager is not None and compiled is not None:
        ratios["train eager/compiled"] = eager.seconds / compiled.seconds
        ratios["train compiled vs target 72 s"] = TARGET_EPOCH_S / compiled.seconds
        ratios["train compiled vs torchdyn 126 s"] = REFERENCE_EPOCH_S["torchdyn"] / \
            compiled.seconds
        print(f"  {'train epoch eager / compiled':<52} "
              f"{ratios['train eager/compiled']:6.2f}×")
        print(f"  {'train epoch: 72 s target / compiled':<52} "
              f"{ratios['train compiled vs target 72 s']:6.2f}×  "
              f"({'meets' if compiled.seconds <= TARGET_EPOCH_S else 'MISSES'} the target)")
        print(f"  {'train epoch: torchdyn 126 s / compiled':<52} "
              f"{ratios['train compiled vs torchdyn 126 s']:6.2f}×")
    return ratios


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smaller draws and a 24k-point training epoch scaled to 240k")
    parser.add_argument("--threads", type=int, default=2,
                        help="threads of the multi-threaded rows and of training (default 2)")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--wait-idle", type=float, default=0.0, metavar="SECONDS",
                        help="before each measurement wait up to SECONDS for other processes "
                             "to leave the CPU idle (shared machines)")
    parser.add_argument("--warm-compile-cache", action="store_true",
                        help="let torch.compile reuse its on-disk cache (default: a fresh, "
                             "empty cache, so the compile time is a cold compile's)")
    parser.add_argument("--skip-training", action="store_true",
                        help="leave out the training epochs (the slowest section)")
    args = parser.parse_args(argv)
    threads = max(1, args.threads)
    global WAIT_IDLE_S
    WAIT_IDLE_S = max(0.0, args.wait_idle)
    started = time.perf_counter()
    scratch = None
    if not args.warm_compile_cache:
        # Inductor reads this when it first compiles; an empty cache times a cold compile.
        scratch = tempfile.TemporaryDirectory(prefix="bench_cnf_inductor_")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = scratch.name

    header = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "threads": f"1 and {threads} (torch.get_num_threads() default: "
                   f"{torch.get_num_threads()})",
        "mode": "quick" if args.quick else "full",
        "compile cache": "warm (on-disk)" if args.warm_compile_cache else "cold (empty)",
    }
    rows: list[Row] = []
    rows += bench_one_flow_sampling(threads, args.quick)
    torch.set_num_threads(threads)
    progress("fitting a one-member CNFUpsampler (1 epoch on 2000 mock particles)")
    upsampler, galaxy, fit_seconds = build_upsampler()
    header["upsampler fit"] = f"{fit_seconds:.1f} s (1 member, 1 epoch, 2000 particles)"
    rows += bench_pipeline(upsampler, threads, args.quick)
    rows += bench_log_prob(upsampler, threads, args.quick)
    if not args.skip_training:
        rows += bench_training(upsampler, galaxy, threads, args.quick)
    header["wall time"] = f"{time.perf_counter() - started:.0f} s"
    ratios = report(rows, header, args.quick)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "header": header,
            "rows": [asdict(r) | {"stars_per_s": r.rate if r.items else None,
                                  "stars_per_s_per_core": r.rate_per_core if r.items else None}
                     for r in rows],
            "ratios": ratios,
            "targets": {"sample_per_s": TARGET_SAMPLES_PER_S, "epoch_s": TARGET_EPOCH_S},
        }, indent=1))
        print(f"\nwrote {args.json}")
    if scratch is not None:
        scratch.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
