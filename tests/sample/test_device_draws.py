"""A flow ensemble's draws on its device: counter-based, batch-size free, and the catalog
rows computed on the device equal the host's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gflow_dist.catalog.device_table import device_catalog_table
from gflow_dist.catalog.schema import catalog_table
from gflow_dist.frame import SolarFrame
from gflow_dist.sample.window import DrawStats
from tests.conftest import R_MAX, SUN

SHARD_SEED = 2**64 - 12_345
"""Shard seeds are uint64 (numpy SeedSequence); this one has its top bit set."""


@pytest.fixture(scope="module")
def two_members(mock_split):
    """A 2-member CNF trained for one epoch: how stars are drawn does not need a good one."""
    from gflow_dist.flows.cnf_upsampler import CNFUpsampler
    from gflow_dist.flows.member import CNFArchitecture
    from gflow_dist.flows.training import Recipe

    model = CNFUpsampler(SUN, R_MAX, architecture=CNFArchitecture(steps=4),
                         recipe=Recipe(max_epochs=1, patience=1, refine=False),
                         ensemble_size=2)
    return model.fit(mock_split[0], seed=5)


def test_stars_do_not_depend_on_the_batch_size(two_members):
    big = two_members.sample(3000, SHARD_SEED, batch_size=4096)
    small = two_members.sample(3000, SHARD_SEED, batch_size=1000)
    odd = two_members.sample(3000, SHARD_SEED, batch_size=777)
    assert big.shape == small.shape == odd.shape == (3000, 6)
    # bit for bit on a CPU; batches of 8 or fewer proposals would not be (docs/scaling.md)
    np.testing.assert_array_equal(small, big)
    np.testing.assert_array_equal(odd, big)


def test_a_draw_is_the_prefix_of_a_larger_one_and_seeds_differ(two_members):
    whole = two_members.sample(2000, 5, batch_size=1024)
    np.testing.assert_array_equal(two_members.sample(700, 5, batch_size=1024), whole[:700])
    other = two_members.sample(2000, 6, batch_size=1024)
    assert not np.isclose(other, whole).all(axis=1).any()
    assert two_members.window.contains(whole).all()


def test_stats_count_every_proposal(two_members):
    stats = DrawStats()
    stars = list(two_members.iter_sample_tensors(5000, 3, 2048, stats))
    assert all(isinstance(batch, torch.Tensor) and batch.dtype == torch.float64
               for batch in stars)
    assert stats.kept == sum(len(batch) for batch in stars) == 5000
    assert stats.proposed % 2048 == 0 and stats.proposed >= 5000
    assert 0 <= stats.rejected <= stats.proposed - 5000


def test_every_member_draws_its_share(two_members):
    """Proposals pick members uniformly: pushing them all through member 0 instead changes
    about half of the stars."""
    from gflow_dist.sample.counter_rng import proposal_draws

    z, member = proposal_draws(SHARD_SEED, 0, 20_000, 2, torch.device("cpu"))
    assert 0.48 < member.float().mean().item() < 0.52
    stars = two_members.transform_base(z, member)
    alone = two_members.transform_base(z, torch.zeros_like(member))
    same = torch.isclose(stars, alone).all(dim=1)
    np.testing.assert_array_equal(same.numpy(), (member == 0).numpy())


def test_stacked_members_push_each_row_through_its_own_member(two_members):
    """The stacked CNF path equals each member's own flows, row by row."""
    from gflow_dist.sample.counter_rng import proposal_draws

    z, member = proposal_draws(7, 0, 3000, 2, torch.device("cpu"))
    assert two_members._stacked_members() is not None
    stars = two_members.transform_base(z, member)
    for index, flows in enumerate(two_members.members):
        rows = member == index
        with torch.no_grad():
            s_r, s_v = flows.transform(z[rows, :3], z[rows, 3:])
        preprocessor = two_members.preprocessor
        expected = np.concatenate([preprocessor.positions_inverse(s_r.double().numpy()),
                                   preprocessor.velocities_inverse(s_v.double().numpy())], 1)
        np.testing.assert_allclose(stars[rows].numpy(), expected, rtol=1e-5, atol=1e-6)


def test_device_rows_equal_the_host_rows(two_members):
    stars = next(two_members.iter_sample_tensors(4000, 9, 4096))
    frame = SolarFrame()
    device = device_catalog_table(stars, 100, frame)
    host = catalog_table(stars.numpy(), 100, frame)
    assert device.schema.equals(host.schema, check_metadata=True)
    for name in host.column_names:
        expected, actual = host.column(name).to_numpy(), device.column(name).to_numpy()
        if name in ("star_id", "_healpix_29"):
            np.testing.assert_array_equal(actual, expected, err_msg=name)
        else:
            np.testing.assert_allclose(actual, expected, rtol=1e-12, atol=1e-10, err_msg=name)


@pytest.mark.gpu
def test_gpu_draws_match_cpu_draws_to_float32_rounding(two_members, tmp_path):
    from gflow_dist import upsamplers

    two_members.save(tmp_path)
    on_gpu, on_cpu = upsamplers.load(tmp_path).to_device("cuda"), two_members.to_device("cpu")
    cpu = on_cpu.sample(20_000, SHARD_SEED, batch_size=8192)
    gpu = on_gpu.sample(20_000, SHARD_SEED, batch_size=8192)
    close = np.isclose(gpu, cpu, rtol=1e-5, atol=1e-6).all(axis=1)
    assert close.mean() > 0.99  # a star kept on one device only renumbers the rest
