#!/usr/bin/env python
"""Does the report's total error of LP(a) − LP(b) cover the spread of independent runs?

On a finished run (default ``runs/mock``, from ``make run``), the multi-model classifier test
is run ``--runs`` times on the same trained models and test particles, each run with its
own seed and ``evaluate.repeats`` repeats of its own: new star draws, classifier
initialisations and minibatch orders, nothing else. If the reported total error is right,
the standard deviation of the runs' values of LP(a) − LP(b) equals it up to the noise of a
standard deviation of a few runs (about ±30 % for 6). The within-repeat error alone (what
the report gave before repeats) is printed beside it.

    python benchmarks/evaluation_spread.py                       # runs/mock, 6 runs
    python benchmarks/evaluation_spread.py --runs 6 --json runs/spread.json

Only the classifier test is run (``evaluate.truth``, ``two_sample`` and ``truth_auc`` off):
the truth scores do not enter LP(C). The results go in docs/evaluation.md.

Measured 2026-12-07 on 2 CPU cores, on ``make run``'s models, R = 3, with
``--set evaluate.samples_per_particle=1 --set evaluate.batches_per_epoch=40`` (13 min): the
six runs' standard deviation of LP(cnf) − LP(enbid) is 0.0172, the reported total error
0.0211 (ratio 0.82), the within-repeat error alone 0.0015 (ratio 11.4).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gflow_dist import upsamplers  # noqa: E402
from gflow_dist.config import load_config  # noqa: E402
from gflow_dist.data.ingest import read_ingested  # noqa: E402
from gflow_dist.evaluate.report import evaluate  # noqa: E402

SEED_OFFSET = 1000
"""Run k is seeded ``config.seed + SEED_OFFSET + k``, apart from the run's own evaluation."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/mock", help="a finished `gflow run` folder")
    parser.add_argument("--config", default="configs/mock.yaml")
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config overrides, as `gflow --set` (e.g. a smaller classifier "
                        "budget: evaluate.batches_per_epoch=40)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)

    out = Path(args.out)
    base = load_config(args.config, args.set)
    models = {name: upsamplers.load(out / "models" / name) for name in base.upsamplers}
    train, test = read_ingested(out)
    pair = f"{base.upsamplers[0]} - {base.upsamplers[1]}"
    runs = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        for k in range(args.runs):
            config = load_config(args.config, [
                *args.set, f"seed={base.seed + SEED_OFFSET + k}", "evaluate.truth=false",
                "evaluate.two_sample=false", "evaluate.truth_auc=false"])
            report = evaluate(config, models, train, test, Path(scratch) / f"run-{k}")
            runs.append(report["differences"][pair])
            entry = runs[-1]
            print(f"run {k}: {pair} = {entry['value']:+.4f} ± {entry['total']:.4f} total "
                  f"(within {entry['within']:.4f}, between {entry['between']:.4f}; "
                  f"per repeat {np.round(entry['per_repeat'], 4).tolist()})", flush=True)
    values = np.array([entry["value"] for entry in runs])
    observed = float(values.std(ddof=1))
    reported = float(np.sqrt(np.mean([entry["total"] ** 2 for entry in runs])))
    within = float(np.sqrt(np.mean([entry["within"] ** 2 for entry in runs])))
    summary = {
        "pair": pair, "runs": args.runs, "repeats": base.evaluate.repeats,
        "overrides": args.set,
        "values": values.tolist(), "observed_std": observed,
        "reported_total_rms": reported, "reported_within_rms": within,
        "ratio_observed_to_total": observed / reported,
        "ratio_observed_to_within": observed / within,
        "minutes": (time.perf_counter() - start) / 60,
        "command": "python benchmarks/evaluation_spread.py " + " ".join(argv or sys.argv[1:]),
    }
    print(f"{pair}: std of {args.runs} runs {observed:.4f}; reported total error (rms) "
          f"{reported:.4f}, ratio {observed / reported:.2f}; within-repeat error alone "
          f"{within:.4f}, ratio {observed / within:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
