"""A run killed with SIGKILL at any stage boundary leaves nothing half-made, and its rerun
finishes with the outputs of a run never interrupted, byte for byte.

The job is ``gflow run`` (pre-flight, then ingest → train → catalog → evaluate) with the
in-process runners, so no Ray, on a tiny mock galaxy. Every run is a process of its own
that, given a kill point (:mod:`gflow_dist.faults`), SIGKILLs itself there. The kills
chain in one folder: the run killed at the first point is rerun to be killed at the
next, and so on, each run continuing from what the kill before left; the last run
finishes. Each kill is checked for what it left, each rerun for continuing from it, and
the finished folder against one uninterrupted run's, file by file.

The runs are forked from a multiprocessing forkserver that imported gflow_dist once: a
fresh interpreter spends 5-15 s importing it, longer than a run of this size.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
from dataclasses import dataclass
from pathlib import Path

import pytest

from gflow_dist.faults import KILL_AT, KILL_POINTS
from gflow_dist.pipeline import TRAINING_KEY_FILE

TREE = {
    "galaxy": {"mock": {"n_particles": 1000}}, "upsamplers": ["cnf", "enbid"],
    "cnf": {"ensemble_size": 2, "max_epochs": 2, "patience": 1, "compile": False,
            "solver_steps": 2, "batches_per_epoch": 2, "hidden_units": 8, "hidden_layers": 1},
    "sample": {"total": 3000, "shard_size": 1000, "batch_size": 1024},
    "catalog": {"max_rows_per_partition": 1000},
    "evaluate": {"samples_per_particle": 2, "hidden_units": [16], "batches_per_epoch": 2,
                 "max_epochs": 2, "patience": 1, "two_sample": False, "truth": False},
}
"""500 train particles, 2 CNF members and EnBiD, 3 shards of 1,000 stars per catalog."""

STAGE_KILL_POINTS = {
    "ingest": "ingest",
    "training": "member-epoch",  # the CNF's 2 members train batched
    "sampling": "shard",
    "partitioning": "partitions",
    "margin": "margin",
    "index": "index",
    "evaluation": "flow-epoch",  # the first flow trained alone is the multi-model classifier
}
"""Each stage, in the order the job reaches them, and the point it is killed at there."""

LEFT = {
    "ingest": ([".particles.staging/train.parquet"], ["particles", "run.json", "models"]),
    "training": (["particles/ingest_key.json", "run.json",
                  "models/cnf/training/member-00/position-batched.ckpt"],
                 ["models/cnf/spec.json", "models/cnf/training/member-01/*.ckpt"]),
    "sampling": (["models/cnf/spec.json", "models/enbid/spec.json",
                  "catalog/.cnf.shards/shard-000000.npz"],
                 ["catalog/.cnf.shards/shard-000001.*", "catalog/cnf"]),
    "partitioning": (["catalog/.cnf.shards/shard-000002.npz",
                      "catalog/.cnf.staging/hats/dataset/Norder=*"],
                     ["catalog/cnf", "catalog/.cnf.staging/margin"]),
    "margin": (["catalog/.cnf.staging/margin/dataset/Norder=*"],
               ["catalog/cnf", "catalog/.cnf.staging/index"]),
    "index": (["catalog/.cnf.staging/index/dataset/*"],
              ["catalog/cnf", "catalog/.cnf.staging/hats/_manifest.json"]),
    "evaluation": (["catalog/enbid/hats/_manifest.json", "figures/enbid/sky_counts.png",
                    "evaluation/repeat-0/multi_model-*.ckpt"], ["report.json", "report.md"]),
}
"""Per stage: paths (glob patterns under the run folder) that its kill must have left, and
ones that must not exist yet, which shows where in the job it struck."""

SHARD_FILES = "catalog/.cnf.shards/shard-*"
RUN_TIMEOUT_S = 300


def _run_job(out: str, kill_at: str | None, log: str) -> None:
    """``gflow run`` with the in-process runners, its output to ``log``; SIGKILLed at
    ``kill_at`` (None: runs to the end)."""
    from gflow_dist import pipeline
    from gflow_dist.cli import configure_logging
    from gflow_dist.config import build_config
    from gflow_dist.preflight import check_job

    with open(log, "w") as stream:
        os.dup2(stream.fileno(), 1)
        os.dup2(stream.fileno(), 2)
    configure_logging(0)
    if kill_at is not None:
        os.environ[KILL_AT] = kill_at
    config = build_config(TREE)
    ingested = check_job(config, Path(out), "all")
    pipeline.run_all(config, Path(out), pipeline.local_runners(), ingested)


@pytest.fixture(scope="module")
def job():
    """Runs the job in a new process: (out, kill_at, log) → (exit code, what it printed)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["gflow_dist.pipeline", "gflow_dist.preflight"])

    def run(out: Path, kill_at: str | None, log: Path) -> tuple[int, str]:
        process = context.Process(target=_run_job, args=(str(out), kill_at, str(log)))
        process.start()
        process.join(RUN_TIMEOUT_S)
        if process.exitcode is None:
            process.kill()
            process.join()
            pytest.fail(f"the run to {kill_at or 'the end'} took over {RUN_TIMEOUT_S} s")
        return process.exitcode, log.read_text()

    return run


def half_made(out: Path) -> list[str]:
    """What in ``out`` a reader could take for complete output but is not: outside the
    hidden staging folders, a truncated JSON, Parquet or PNG file, particles without their
    ingest key, a catalog folder without its manifest or collection."""
    problems = []
    for path in sorted(out.rglob("*")):
        relative = path.relative_to(out)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        data = path.read_bytes()
        if path.name == TRAINING_KEY_FILE:  # the bare key, a SHA-256 in hex
            if len(data) != 64:
                problems.append(f"{relative}: not a whole key")
        elif path.suffix == ".json":
            try:
                json.loads(data)
            except ValueError:
                problems.append(f"{relative}: not JSON")
        complete = {".parquet": data[-4:] == b"PAR1", ".png": data.endswith(b"IEND\xaeB`\x82")}
        if not complete.get(path.suffix, True):
            problems.append(f"{relative}: truncated")
    particles = out / "particles"
    if particles.exists() and not (particles / "ingest_key.json").exists():
        problems.append("particles/ without ingest_key.json")
    for catalog in (out / "catalog").glob("[!.]*"):
        for part in ("hats/_manifest.json", "margin", "index", "collection.properties"):
            if not (catalog / part).exists():
                problems.append(f"{catalog.relative_to(out)} without {part}")
    return problems


def _matches(out: Path, pattern: str) -> list[Path]:
    return sorted(out.glob(pattern))


@dataclass(frozen=True)
class Kill:
    """What one killed run did and left."""

    exit_code: int
    log: str
    """What the killed run printed."""
    rerun_log: str
    """What the next run, which continued from it, printed."""
    problems: list[str]
    left: dict[str, bool]
    """Each pattern of :data:`LEFT` for this stage: whether it matched a path."""
    shards: dict[str, int]
    """mtime [ns] of each file of the CNF catalog's shard folder."""


@pytest.fixture(scope="module")
def reference(job, tmp_path_factory):
    """The folder of the job run once, uninterrupted."""
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    code, log = job(out, None, out.with_name("log.txt"))
    assert code == 0, log
    return out


@pytest.fixture(scope="module")
def interrupted(job, tmp_path_factory):
    """(folder, {stage: Kill}): the job killed in every stage in turn, then finished."""
    out = tmp_path_factory.mktemp("interrupted") / "run"
    kills = {}
    for stage, point in STAGE_KILL_POINTS.items():
        exit_code, log = job(out, point, out.with_name(f"{stage}.txt"))
        present, absent = LEFT[stage]
        kills[stage] = dict(
            exit_code=exit_code, log=log, problems=half_made(out),
            left={pattern: bool(_matches(out, pattern)) for pattern in present + absent},
            shards={p.name: p.stat().st_mtime_ns for p in _matches(out, SHARD_FILES)})
    exit_code, log = job(out, None, out.with_name("finished.txt"))
    assert exit_code == 0, log
    rerun_logs = [kill["log"] for kill in kills.values()][1:] + [log]
    return out, {stage: Kill(**kill, rerun_log=rerun_log)
                 for (stage, kill), rerun_log in zip(kills.items(), rerun_logs, strict=True)}


def test_every_kill_point_is_reached_in_one_stage():
    assert sorted(STAGE_KILL_POINTS.values()) == sorted(KILL_POINTS)


@pytest.mark.parametrize("stage", STAGE_KILL_POINTS)
def test_a_run_killed_in_a_stage_leaves_nothing_half_made(interrupted, stage):
    kill = interrupted[1][stage]
    assert kill.exit_code == -signal.SIGKILL, kill.log
    present, absent = LEFT[stage]
    assert kill.left == {pattern: pattern in present for pattern in present + absent}
    assert kill.problems == []


def test_a_rerun_continues_from_what_the_kill_left(interrupted):
    kills = interrupted[1]
    resumed = kills["training"].rerun_log
    assert "member-00/position-batched.ckpt" in resumed
    assert "member-01/position-batched.ckpt" not in resumed  # killed before it was written
    assert "resuming from" in kills["evaluation"].rerun_log
    assert "multi_model-" in kills["evaluation"].rerun_log
    # the shard drawn before the kill is reused, not drawn again, by every later run
    first = kills["sampling"].shards
    assert list(first) == ["shard-000000.npz", "shard-000000.parquet"]
    for stage in ("partitioning", "margin", "index"):
        assert len(kills[stage].shards) == 6
        assert {name: kills[stage].shards[name] for name in first} == first
        assert kills[stage].shards == kills["partitioning"].shards
    manifest = json.loads((interrupted[0] / "catalog/cnf/hats/_manifest.json").read_text())
    assert (manifest["run"]["sampled"], manifest["run"]["reused"]) == (0, 3)


def test_the_finished_rerun_equals_an_uninterrupted_run(interrupted, reference):
    """Every file, hidden ones included, byte for byte, except the per-run ``run`` record
    (wall times, process ids, memory, shards drawn or reused) in each catalog manifest."""
    out = interrupted[0]
    files = sorted(p.relative_to(reference) for p in reference.rglob("*") if p.is_file())
    assert sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file()) == files
    manifests = [name for name in files if name.name == "_manifest.json"
                 and name.parent.name == "hats"]
    assert len(manifests) == 2
    for name in files:
        ours, theirs = (out / name).read_bytes(), (reference / name).read_bytes()
        if name in manifests:
            ours, theirs = ({k: v for k, v in json.loads(text).items() if k != "run"}
                            for text in (ours, theirs))
        assert ours == theirs, name
    report = json.loads((out / "report.json").read_text())
    assert report["upsamplers"] == ["cnf", "enbid"]
    assert set(report["log_posterior"]) == {"cnf", "enbid"}
