"""Shared fixtures: a small mock galaxy split 1:1, and one local Ray cluster per session."""

from __future__ import annotations

import os

import pytest

from gflow_dist.data.mock import MockGalaxy
from gflow_dist.data.selection import split_train_test

SUN = (-8.0, 0.0, 0.02)
R_MAX = 3.5
BUCKET = "gflow-releases"
"""The bucket of the ``s3`` fixture's server."""


@pytest.fixture(scope="session")
def mock_galaxy() -> MockGalaxy:
    return MockGalaxy(sun_position_kpc=SUN, r_max_kpc=R_MAX)


@pytest.fixture(scope="session")
def mock_split(mock_galaxy):
    """(train, test) halves of 4,000 mock particles."""
    return split_train_test(mock_galaxy.particles(4000, seed=11), seed=0)


@pytest.fixture(scope="session")
def fitted_cnf(mock_split):
    """A 2-member CNF trained briefly on the 2,000 train particles (10 RK4 steps, for speed)."""
    from gflow_dist.flows.cnf_upsampler import CNFUpsampler
    from gflow_dist.flows.member import CNFArchitecture
    from gflow_dist.flows.training import Recipe

    train_half, _ = mock_split
    model = CNFUpsampler(SUN, R_MAX, architecture=CNFArchitecture(steps=10),
                         recipe=Recipe(max_epochs=25, patience=5, refine=False), ensemble_size=2)
    return model.fit(train_half, seed=5)


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray cluster shared by the session (starting one takes ~15 s on 2 cores)."""
    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    yield ray
    ray.shutdown()


def pytest_collection_modifyitems(config, items):
    """Skip ``gpu``-marked tests, saying why, where torch sees no CUDA device."""
    needs_gpu = [item for item in items if item.get_closest_marker("gpu")]
    if not needs_gpu:
        return
    import torch  # only when a gpu test was collected: importing torch takes seconds

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device: torch.cuda.is_available() is False")
    for item in needs_gpu:
        item.add_marker(skip)


@pytest.fixture(scope="session")
def enbid_model_dir(mock_split, tmp_path_factory):
    """An EnBiD upsampler fitted to the train half, saved (a catalog build loads it by path)."""
    from gflow_dist.baselines.enbid import EnbidUpsampler

    train, _ = mock_split
    return EnbidUpsampler(SUN, R_MAX).fit(train, seed=3).save(
        tmp_path_factory.mktemp("model") / "enbid")


def drawn_catalog_rows(model_dir, n, seed, config):
    """The catalog rows a build of ``n`` stars of the saved model holds, in star_id order."""
    import pyarrow as pa

    from gflow_dist import upsamplers
    from gflow_dist.catalog.schema import catalog_table
    from gflow_dist.sample.shards import ShardPlan

    model, frame, tables = upsamplers.load(model_dir), config.galaxy.frame, []
    for shard in ShardPlan(n, config.sample.shard_size, seed):
        first = shard.first_star_id
        for stars in model.iter_samples(shard.count, shard.seed, config.sample.batch_size):
            tables.append(catalog_table(stars, first, frame))
            first += len(stars)
    return pa.concat_tables(tables)


@pytest.fixture(scope="module")
def s3_endpoint():
    """moto's S3 server on 127.0.0.1 with the bucket BUCKET, and the environment boto3 and
    s3fs read (AWS_ENDPOINT_URL and keys), for the module."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    with pytest.MonkeyPatch.context() as patch:
        for key, value in {"AWS_ENDPOINT_URL": f"http://{host}:{port}",
                           "AWS_ACCESS_KEY_ID": "gflow-test", "AWS_SECRET_ACCESS_KEY": "secret",
                           "AWS_DEFAULT_REGION": "us-east-1"}.items():
            patch.setenv(key, value)
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        yield
    server.stop()


@pytest.fixture
def s3(s3_endpoint, request):
    """A fresh prefix of the bucket for each test, and a client to inspect it."""
    import boto3

    client = boto3.client("s3")
    prefix = request.node.name.replace("_", "-")
    yield client, f"s3://{BUCKET}/{prefix}"
