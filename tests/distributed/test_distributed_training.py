"""Ensemble members trained in a pool of Ray actors: same weights as in-process, groups of
members in one actor, pool sized to the cluster, killed actors resume from their checkpoints,
checkpoints at a URI."""

from __future__ import annotations

import json
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from gflow_dist.distributed.checkpoints import model_checkpoint_uri
from gflow_dist.distributed.training import (
    ATTEMPTS_FILE,
    TRAINER_NAME,
    pool_size,
    ray_member_runner,
)
from gflow_dist.errors import GflowError
from gflow_dist.flows.batched_members import train_members
from gflow_dist.flows.cnf_upsampler import CNFUpsampler
from gflow_dist.flows.member import CNFArchitecture
from gflow_dist.flows.training import Recipe

pytestmark = pytest.mark.ray

SUN = (-8.0, 0.0, 0.02)
R_MAX = 3.5

SHORT = Recipe(max_epochs=3, patience=5, refine=False)
LONG = Recipe(max_epochs=15, patience=15, refine=False)
"""Long enough (≈1.5 s per flow) for a kill to land mid-training."""


def _cnf(members: int, recipe: Recipe = SHORT) -> CNFUpsampler:
    return CNFUpsampler(SUN, R_MAX, architecture=CNFArchitecture(steps=2), recipe=recipe,
                        ensemble_size=members, max_train_particles=400)


@contextmanager
def _one_thread():
    """Train in-process with one torch thread, as a 1-CPU actor does."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _fit_here(members: int, train, workdir: Path, recipe: Recipe = SHORT) -> CNFUpsampler:
    with _one_thread():
        return _cnf(members, recipe).fit(train, seed=7, workdir=workdir)


def _assert_same_members(a: CNFUpsampler, b: CNFUpsampler) -> None:
    assert len(a.members) == len(b.members)
    for left, right in zip(a.members, b.members, strict=True):
        left_state, right_state = left.state_dict(), right.state_dict()
        assert left_state.keys() == right_state.keys()
        assert all(torch.equal(left_state[k], right_state[k]) for k in left_state)


def _attempts(member_dir: Path) -> list[dict]:
    return json.loads((member_dir / ATTEMPTS_FILE).read_text())


def test_actors_train_the_same_members_as_this_process(ray_cluster, mock_split, tmp_path):
    train, _ = mock_split
    here = _fit_here(2, train, tmp_path / "here")
    remote = _cnf(2).fit(train, seed=7, workdir=tmp_path / "ray",
                         runner=ray_member_runner(num_cpus=1))
    _assert_same_members(here, remote)
    attempts = [_attempts(tmp_path / "ray" / f"member-{i:02d}") for i in range(2)]
    assert [len(a) for a in attempts] == [1, 1]
    assert attempts[0][0]["pid"] != attempts[1][0]["pid"]  # two actors, one member each


def test_one_actor_trains_a_group_of_members_together(ray_cluster, mock_split, tmp_path):
    train, _ = mock_split
    here = _fit_here(2, train, tmp_path / "here")
    remote = _cnf(2).fit(train, seed=7, workdir=tmp_path / "ray",
                         runner=ray_member_runner(num_cpus=1, members_per_trainer=2))
    _assert_same_members(here, remote)
    (first,), (second,) = [_attempts(tmp_path / "ray" / f"member-{i:02d}") for i in range(2)]
    assert first["pid"] == second["pid"]  # one actor ...
    assert first["started"] < second["finished"] and second["started"] < first["finished"]
    # ... training both members in one call, not one after the other


def test_gpu_request_on_a_cpu_cluster_fails_fast(ray_cluster, tmp_path):
    runner = ray_member_runner(num_cpus=1, num_gpus=0.25)
    start = time.monotonic()
    with pytest.raises(GflowError, match=r"ray\.num_gpus_per_trainer=0\.25.*set it to 0"):
        runner(train_members, [{"directory": tmp_path / "member-00"}])
    assert time.monotonic() - start < 5


def test_pool_size_is_what_the_nodes_hold():
    nodes = [{"CPU": 16.0, "GPU": 1.0}, {"CPU": 2.0, "GPU": 1.0}, {"CPU": 8.0}]
    assert pool_size(nodes, 1, 0.25, groups=10) == 4 + 2
    assert pool_size(nodes, 1, 0.3, groups=10) == 3 + 2
    assert pool_size(nodes, 2, 0, groups=100) == 8 + 1 + 4
    assert pool_size(nodes, 1, 0.25, groups=3) == 3
    assert pool_size(nodes, 1, 0.25, groups=10, max_concurrent=2) == 2
    assert pool_size(nodes, 1, 0.25, groups=10, max_concurrent=50) == 6


def test_an_autoscaling_pool_is_sized_by_the_work():
    """No nodes to count (an autoscaler may add them): one actor per member, capped."""
    assert pool_size(None, 1, 0.25, groups=10) == 10
    assert pool_size(None, 1, 0.25, groups=10, max_concurrent=3) == 3
    assert pool_size(None, 64, 8, groups=1) == 1


def test_each_model_and_config_checkpoints_in_its_own_folder():
    assert model_checkpoint_uri(None, "cnf", "ab" * 32) is None
    assert model_checkpoint_uri("s3://bucket/runs/", "cnf", "ab" * 32) == \
        "s3://bucket/runs/cnf/" + "ab" * 8
    assert model_checkpoint_uri("gs://b/p", "maf", "cd" * 32) == "gs://b/p/maf/" + "cd" * 8


def test_members_beyond_capacity_wait_for_a_free_actor(ray_cluster, mock_split, tmp_path):
    train, _ = mock_split
    model = _cnf(3).fit(train, seed=7, workdir=tmp_path,
                        runner=ray_member_runner(num_cpus=1.5, max_concurrent=5))
    assert len(model.members) == 3
    attempts = [_attempts(tmp_path / f"member-{i:02d}")[0] for i in range(3)]
    assert len({a["pid"] for a in attempts}) == 1  # 2 CPUs hold one actor of 1.5 CPUs
    spans = sorted((a["started"], a["finished"]) for a in attempts)
    assert all(end <= start for (_, end), (start, _) in zip(spans, spans[1:], strict=False))


def _kill_when(checkpoint: Path, known: set[str], killed: list[str]) -> None:
    """Kill the new trainer actor (Ray restarts it) once ``checkpoint`` exists."""
    import ray

    deadline = time.monotonic() + 60
    while not checkpoint.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    names = [n for n in ray.util.list_named_actors()
             if n.startswith(TRAINER_NAME) and n not in known]
    for name in names:
        ray.kill(ray.get_actor(name), no_restart=False)
    killed.extend(names)


def test_a_killed_actor_resumes_from_its_checkpoint(ray_cluster, mock_split, tmp_path, capfd):
    import ray

    train, _ = mock_split
    reference = _fit_here(1, train, tmp_path / "here", LONG)
    member_dir = tmp_path / "ray" / "member-00"
    killed: list[str] = []
    killer = threading.Thread(target=_kill_when, args=(
        member_dir / "position-batched.ckpt", set(ray.util.list_named_actors()), killed))
    killer.start()
    resumed = _cnf(1, LONG).fit(train, seed=7, workdir=tmp_path / "ray",
                                runner=ray_member_runner(num_cpus=1))
    killer.join()
    assert len(killed) == 1
    _assert_same_members(reference, resumed)
    first, second = _attempts(member_dir)
    assert first["finished"] is None and second["finished"] is not None
    assert first["pid"] != second["pid"]
    assert "position-batched.ckpt" in second["checkpoints"]
    history = json.loads((member_dir / "history.json").read_text())
    assert len(history["position"]["train"]["main"]) == LONG.max_epochs
    output = ""
    deadline = time.monotonic() + 10  # worker output reaches the driver asynchronously
    while "resuming from" not in output and time.monotonic() < deadline:
        time.sleep(0.2)
        output += capfd.readouterr().err
    assert f"member 00 seed {resumed.seeds[0]} p(r): resuming from" in output


def test_checkpoints_at_a_uri_resume_after_the_local_copy_is_lost(ray_cluster, mock_split,
                                                                  tmp_path):
    train, _ = mock_split
    store = tmp_path / "store"
    runner = ray_member_runner(num_cpus=1, checkpoint_uri=f"file://{store}")
    first = _cnf(2).fit(train, seed=7, workdir=tmp_path / "work-1", runner=runner)
    expected = ["attempts.json", "history.json", "position-batched.ckpt", "velocity-batched.ckpt",
                "weights.pt"]
    for index in range(2):
        assert sorted(p.name for p in (store / f"member-{index:02d}").iterdir()) == expected
        assert (tmp_path / "work-1" / f"member-{index:02d}" / "weights.pt").exists()
    for name in ("weights.pt", "history.json", "velocity-batched.ckpt"):  # back to mid-training
        (store / "member-00" / name).unlink()
    second = _cnf(2).fit(train, seed=7, workdir=tmp_path / "work-2", runner=runner)
    _assert_same_members(first, second)
    attempts = _attempts(tmp_path / "work-2" / "member-00")
    assert len(attempts) == 2 and attempts[1]["checkpoints"] == ["position-batched.ckpt"]
