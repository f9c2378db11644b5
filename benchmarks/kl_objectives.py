"""KL(truth ‖ CNF) on the mock galaxy against CPU time, for each training objective.

One CNF member (the paper's 4 × 32 GELU field, p(r)·p(v|r), eqs. 9–11) trains on the train
half of the built-in mock galaxy with the paper's recipe (Adam 1e-3, 20 % validation,
10 minibatches per epoch, early stopping, the 1e-4 refinement), by

- ``likelihood``: the paper's maximum likelihood through the RK4 solve with exact trace;
- ``flow_matching``: the straight-path regression of :mod:`gflow_dist.flows.flow_matching`;
- ``flow_matching`` with ``--finetune E``: then by likelihood for at most E epochs per phase.

After chosen epochs the flows' states are kept; afterwards each point of the curve is the
member made of the p(r) and the p(v|r) of the same epoch count, scored by
KL = E_test[ln p_true − ln q] in nats on held-out particles (densities and samples always
come from the RK4 solve with exact trace). Its cost is the process CPU time that p(r) and
p(v|r) took to get there (all threads), so the curves compare science per CPU-minute.

    python benchmarks/kl_objectives.py --objective likelihood --seeds 0 1 --json lik.json
    python benchmarks/kl_objectives.py --objective flow_matching --seeds 0 1 --json fm.json
    python benchmarks/kl_objectives.py --objective flow_matching --finetune 10 --seeds 0 1

Measured numbers and the commands: ``docs/objectives.md``.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from dataclasses import asdict

import numpy as np
import torch
from torch import nn

from gflow_dist.data.mock import MockGalaxy
from gflow_dist.data.selection import split_train_test
from gflow_dist.evaluate.truth import kl_divergence
from gflow_dist.flows.cnf_upsampler import CNFUpsampler
from gflow_dist.flows.member import (
    FINETUNE_STAGE,
    WEIGHTS_FILE,
    FlowObjective,
    MemberFlows,
    train_member,
)
from gflow_dist.flows.training import Recipe
from gflow_dist.preprocess import Preprocessor


class CurveRecorder:
    """Each flow's state after chosen epochs of each training stage (flow matching or
    likelihood, then the likelihood fine-tune), and the process CPU time [s] (all threads)
    at the end of every epoch.

    Within the first stage, states are kept after the epoch counts of ``schedule`` and the
    last epoch; within a fine-tune, after every epoch.
    """

    def __init__(self, schedule: set[int]) -> None:
        self.schedule = schedule
        self.start = time.process_time()
        self.times: dict[str, list[tuple[str, float]]] = {"position": [], "velocity": []}
        self.states: dict[str, dict[tuple[str, int], dict]] = {"position": {}, "velocity": {}}

    def __call__(self, flow: str, model: nn.Module, phase: str, epoch: int) -> None:
        stage = FINETUNE_STAGE if phase.startswith(FINETUNE_STAGE) else "first"
        self.times[flow].append((stage, time.process_time()))
        count = sum(1 for s, _ in self.times[flow] if s == stage)
        kept = self.states[flow]
        last = [key for key in kept if key[0] == stage and key[1] not in self.schedule]
        if stage == "first":
            for key in last:  # only the latest unscheduled state is kept
                del kept[key]
        kept[(stage, count)] = copy.deepcopy(model.state_dict())

    def stages(self) -> list[str]:
        return list(dict.fromkeys(stage for stage, _ in self.times["position"]))

    def counts(self, stage: str) -> list[int]:
        """The epoch counts of ``stage`` with a point on the curve."""
        longest = max(sum(1 for s, _ in t if s == stage) for t in self.times.values())
        every = range(1, longest + 1)
        return [c for c in every if stage != "first" or c in self.schedule or c == longest]

    def point(self, stage: str, count: int) -> tuple[float, dict, dict]:
        """CPU seconds to train both flows to epoch ``count`` of ``stage``, and their states."""
        seconds, states = 0.0, []
        previous_end = self.start
        for flow in ("position", "velocity"):
            times = self.times[flow]
            indices = [i for i, (s, _) in enumerate(times) if s == stage]
            index = indices[min(count, len(indices)) - 1]
            seconds += times[index][1] - previous_end
            states.append(self.states[flow][(stage, min(count, len(indices)))])
            previous_end = times[-1][1]
        return seconds, states[0], states[1]


def _snapshot_schedule(last: int, points: int) -> set[int]:
    """Roughly geometric epoch counts from 1 to ``last``."""
    return {int(round(v)) for v in np.geomspace(1, last, points)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objective", choices=["likelihood", "flow_matching"],
                        default="likelihood")
    parser.add_argument("--finetune", type=int, default=0,
                        help="likelihood fine-tune epochs per phase after flow matching")
    parser.add_argument("--train", type=int, default=30_000, help="train particles")
    parser.add_argument("--test", type=int, default=20_000, help="test particles scored")
    parser.add_argument("--max-epochs", type=int, default=None,
                        help="per phase (default: 30 for likelihood, 3000 for flow matching)")
    parser.add_argument("--patience", type=int, default=50)
    parser.add_argument("--no-refine", action="store_true")
    parser.add_argument("--points", type=int, default=10, help="points on the curve")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    likelihood = args.objective == "likelihood"
    max_epochs = args.max_epochs or (30 if likelihood else 3000)
    recipe = Recipe(max_epochs=max_epochs, patience=args.patience, refine=not args.no_refine,
                    compile=True)
    objective = FlowObjective(args.objective, args.finetune)
    galaxy = MockGalaxy()
    sun, r_max = galaxy.sun_position_kpc, galaxy.r_max_kpc
    last = (2 if recipe.refine else 1) * max_epochs
    results = {"objective": asdict(objective), "recipe": asdict(recipe),
               "train_particles": args.train, "runs": []}
    for seed in args.seeds:
        train, test = split_train_test(galaxy.particles(2 * args.train, seed=seed), seed=1)
        test = test.subset(np.arange(min(args.test, len(test))))
        preprocessor = Preprocessor.fit(train.phase_space, sun, r_max)
        positions, _ = preprocessor.positions_forward(train.positions)
        velocities, _ = preprocessor.velocities_forward(train.velocities)
        recorder = CurveRecorder(_snapshot_schedule(last, args.points))
        with tempfile.TemporaryDirectory() as scratch:
            train_member(positions, velocities, CNFUpsampler.architecture_type(), recipe, 0.2,
                         seed, scratch, device="cpu", objective=objective,
                         after_epoch=recorder)
            total_cpu = time.process_time() - recorder.start
            model = CNFUpsampler(sun, r_max, ensemble_size=1)
            model.preprocessor = preprocessor
            model.members = [MemberFlows.load(model.architecture, f"{scratch}/{WEIGHTS_FILE}")]
            log_true = galaxy.log_prob(test.phase_space)
            final = kl_divergence(log_true, model.log_prob(test.phase_space))
            curve = []
            for stage in recorder.stages():
                for count in recorder.counts(stage):
                    seconds, state_r, state_v = recorder.point(stage, count)
                    model.members[0].position.load_state_dict(state_r)
                    model.members[0].velocity.load_state_dict(state_v)
                    kl = kl_divergence(log_true, model.log_prob(test.phase_space))
                    curve.append({"stage": stage, "epochs": count, "cpu_minutes": seconds / 60,
                                  "kl": kl})
                    print(f"seed {seed} {stage} epochs {count}: {seconds / 60:.2f} CPU-min, "
                          f"KL {kl[0]:.4f} ± {kl[1]:.4f}", flush=True)
        epochs = {flow: {stage: sum(1 for s, _ in times if s == stage)
                         for stage in recorder.stages()}
                  for flow, times in recorder.times.items()}
        run = {"seed": seed, "epochs": epochs, "cpu_minutes": total_cpu / 60,
               "final_kl": final, "curve": curve}
        print(json.dumps({k: v for k, v in run.items() if k != "curve"}), flush=True)
        results["runs"].append(run)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=1)


if __name__ == "__main__":
    main()
