"""Reading a published release in a bucket: lsdb, ``gflow query``, ``gflow plot`` and
``gflow versions`` on ``s3://BUCKET/PREFIX/NAME/latest`` give what they give on the same
release in a folder.

One small catalog is published as the same version to a folder release and to a release in
the moto S3 bucket of conftest.py (``s3`` fixture); every read of the bucket copy goes
through s3fs with the endpoint of AWS_ENDPOINT_URL, as boto3's does.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import dask.dataframe as dd
import lsdb
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from upath import UPath

from gflow_dist.catalog.build import write_catalog
from gflow_dist.catalog.local import LocalCatalogRunner
from gflow_dist.cli import main
from gflow_dist.config import build_config
from gflow_dist.errors import EXIT_ACCESS, EXIT_INPUT, AccessError, InputError
from gflow_dist.release.paths import release_path
from gflow_dist.release.stores import FolderStore, S3Store
from tests.conftest import BUCKET

VERSION = "v=20260101T000000000000Z-0123abcd"
CONE = ("--ra", "130", "--dec", "-45", "--radius", "20")


def _manifest(store, version: str) -> dict:
    return {"version": version, "uri": store.uri(version), "config_sha256": "0" * 64,
            "code_version": "test", "model_sha256": {}, "stars_per_pixel": {"cnf": {"0/0": 4000}},
            "started": "2026-01-01T00:00:00+00:00", "finished": "2026-01-01T00:01:00+00:00"}


@pytest.fixture(scope="module")
def catalog_dir(enbid_model_dir, tmp_path_factory) -> Path:
    """``DIR/catalog/cnf``: 4,000 stars in HATS (order-2 partitions) and Zarr."""
    directory = tmp_path_factory.mktemp("remote") / "catalog" / "cnf"
    write_catalog(enbid_model_dir, 4000, 5, directory,
                  build_config({"catalog": {"partition_order": 2}}), {"seed": "5"},
                  LocalCatalogRunner())
    return directory


@pytest.fixture(scope="module")
def releases(catalog_dir, s3_endpoint, tmp_path_factory) -> tuple[str, str]:
    """The catalog as version VERSION, and latest, of ``ROOT/mock`` in a folder and in the
    bucket: (folder location, ``s3://`` location)."""
    base = tmp_path_factory.mktemp("releases")
    stores = [FolderStore(base / "releases" / "mock"),
              S3Store(f"s3://{BUCKET}/releases/mock", base / "staging")]
    for store in stores:
        staging = store.staging(VERSION)
        shutil.copytree(catalog_dir, staging / "catalog" / "cnf")
        store.commit(staging, VERSION, _manifest(store, VERSION))
        store.point_latest(VERSION)
    return stores[0].location, stores[1].location


def _by_star(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values("star_id").reset_index()


def test_release_path_resolves_latest_from_latest_json(releases):
    local, remote = releases
    resolved = release_path(f"{remote}/latest/catalog/cnf/hats")
    assert isinstance(resolved, UPath)
    assert str(resolved) == f"{remote}/{VERSION}/catalog/cnf/hats"
    assert resolved.storage_options["endpoint_url"] == os.environ["AWS_ENDPOINT_URL"]
    assert (resolved / "hats.properties").exists()
    assert str(release_path(f"{remote}/{VERSION}/catalog/cnf/")) == (
        f"{remote}/{VERSION}/catalog/cnf")
    assert release_path(f"{local}/latest/catalog/cnf") == Path(local, "latest", "catalog", "cnf")


def test_lsdb_cone_and_crossmatch_on_the_bucket_equal_the_local_release(releases):
    local, remote = releases
    here = lsdb.open_catalog(f"{local}/latest/catalog/cnf/hats")
    there = lsdb.open_catalog(release_path(f"{remote}/latest/catalog/cnf/hats"))
    assert there.get_healpix_pixels() == here.get_healpix_pixels()
    cone_here = here.cone_search(130, -45, 20 * 3600).compute()
    cone_there = there.cone_search(130, -45, 20 * 3600).compute()
    assert len(cone_here) > 10
    pd.testing.assert_frame_equal(_by_star(cone_there), _by_star(cone_here))

    # a tiny catalog of 25 of its stars, moved 0.5" north, matched within 2"
    picked = cone_here.sort_values("star_id").iloc[:25]
    tiny = lsdb.from_dataframe(pd.DataFrame({
        "name": [f"s{i}" for i in range(len(picked))], "ra": picked["ra"].to_numpy(),
        "dec": picked["dec"].to_numpy() + 0.5 / 3600}), ra_column="ra", dec_column="dec")
    matched_here = tiny.crossmatch(here, radius_arcsec=2, n_neighbors=1,
                                   suffixes=("_tiny", ""), suffix_method="all_columns").compute()
    matched_there = tiny.crossmatch(there, radius_arcsec=2, n_neighbors=1,
                                    suffixes=("_tiny", ""), suffix_method="all_columns").compute()
    assert set(matched_there["star_id"]) == set(picked["star_id"])
    pd.testing.assert_frame_equal(_by_star(matched_there), _by_star(matched_here))


def test_the_readme_lines_open_the_bucket_copy(releases, catalog_dir):
    _, remote = releases
    cnf = release_path(f"{remote}/latest/catalog/cnf")  # latest.json resolved
    stars = lsdb.open_catalog(cnf / "hats").cone_search(130, -45, 5 * 3600).compute()
    frame = dd.read_parquet(f"{cnf}/hats/dataset", columns=["ra", "dec", "pmra"],
                            storage_options=cnf.storage_options)
    store = xr.open_zarr(f"{cnf}/stars.zarr", storage_options=cnf.storage_options)
    local_stars = lsdb.open_catalog(catalog_dir / "hats").cone_search(130, -45, 5 * 3600)
    pd.testing.assert_frame_equal(_by_star(stars), _by_star(local_stars.compute()))
    assert len(frame) == 4000 and list(frame.columns) == ["ra", "dec", "pmra"]
    local_store = xr.open_zarr(catalog_dir / "stars.zarr")
    np.testing.assert_array_equal(store["star_id"].values, local_store["star_id"].values)


def _gflow(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_gflow_query_on_the_bucket_prints_what_it_prints_locally(releases, capsys, tmp_path):
    local, remote = releases
    for query in (["cone", *CONE, "--columns", "star_id", "ra", "dec"],
                  ["counts", "--order", "1"], ["mean-pm", *CONE],
                  ["pixels", "--order", "1", "--pixel", "20", "21"]):
        here = _gflow(capsys, "query", f"{local}/latest/catalog/cnf", *query)
        there = _gflow(capsys, "query", f"{remote}/latest/catalog/cnf", *query)
        assert here[0] == there[0] == 0, there[2]
        assert there[1] == here[1]
        assert query[0] != "cone" or " stars; the first " in there[1]
    for version in ("latest", VERSION):
        for name in ("cone.parquet", "cone.csv"):
            status, _, _ = _gflow(capsys, "query", f"{remote}/{version}/catalog/cnf/hats",
                                  "cone", *CONE, "--export", str(tmp_path / f"s3-{name}"))
            assert status == 0
            assert _gflow(capsys, "query", f"{local}/{version}/catalog/cnf", "cone", *CONE,
                          "--export", str(tmp_path / name))[0] == 0
            assert (tmp_path / f"s3-{name}").read_bytes() == (tmp_path / name).read_bytes()


def test_gflow_plot_on_the_bucket_draws_what_it_draws_locally(releases, capsys, tmp_path):
    local, remote = releases
    window = ("--window", "130", "-45", "20", "--order", "2")
    here = _gflow(capsys, "plot", f"{local}/latest/catalog/cnf", "--out",
                  str(tmp_path / "here"), *window)
    there = _gflow(capsys, "plot", f"{remote}/latest/catalog/cnf", "--out",
                   str(tmp_path / "there"), *window)
    assert here[0] == there[0] == 0, there[2]
    figures = [Path(line).name for line in here[1].split()]
    assert figures == [Path(line).name for line in there[1].split()]
    assert len(figures) == 4
    for name in figures:
        assert (tmp_path / "there" / name).read_bytes() == (tmp_path / "here" / name).read_bytes()
    missing = "v=20250101T000000000000Z-ffffffff"
    status, _, err = _gflow(capsys, "plot", f"{remote}/{missing}/catalog/cnf", "--out",
                            str(tmp_path / "missing"))
    assert status == EXIT_INPUT and f"gflow versions {remote}" in err


def test_gflow_versions_lists_the_bucket_release(releases, capsys):
    _, remote = releases
    status, out, _ = _gflow(capsys, "versions", remote)
    assert status == 0
    assert f"* {VERSION}" in out and f"latest: {remote}/{VERSION}" in out


def test_a_missing_version_names_it_and_gflow_versions(releases, capsys):
    _, remote = releases
    missing = "v=20250101T000000000000Z-ffffffff"
    with pytest.raises(InputError, match=rf"{remote} has no published version {missing}; "
                                         rf"`gflow versions {remote}` lists them"):
        release_path(f"{remote}/{missing}/catalog/cnf")
    status, _, err = _gflow(capsys, "query", f"{remote}/{missing}/catalog/cnf", "cone", *CONE)
    assert status == EXIT_INPUT
    assert missing in err and f"gflow versions {remote}" in err


def test_a_prefix_that_is_not_a_release_is_refused(releases, capsys):
    _, remote = releases
    for location in (f"s3://{BUCKET}/no-release/latest/catalog/cnf",
                     f"s3://{BUCKET}/no-release/{VERSION}/catalog/cnf"):
        status, _, err = _gflow(capsys, "query", location, "counts", "--order", "1")
        assert status == EXIT_INPUT
        assert f"s3://{BUCKET}/no-release is not a release: it has no latest.json" in err
    status, _, err = _gflow(capsys, "query", f"{remote}/catalog/cnf", "counts", "--order", "1")
    assert status == EXIT_INPUT and "no HATS catalog" in err


def test_a_folder_release_without_the_version_names_it(releases):
    local, _ = releases
    with pytest.raises(InputError, match=r"has no published version v=1; `gflow versions"):
        release_path(f"{local}/v=1/catalog/cnf")


def test_missing_credentials_are_an_access_error(releases, monkeypatch, capsys, tmp_path):
    _, remote = releases
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE",
                "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(AccessError, match="AWS_ACCESS_KEY_ID"):
        release_path(f"{remote}/latest/catalog/cnf")
    status, _, err = _gflow(capsys, "query", f"{remote}/latest/catalog/cnf", "cone", *CONE)
    assert status == EXIT_ACCESS
    assert "no S3 credentials found" in err and "AWS_ACCESS_KEY_ID" in err
    status, _, err = _gflow(capsys, "versions", remote)
    assert status == EXIT_ACCESS and "AWS_PROFILE" in err


def test_latest_json_names_the_version_readers_resolve(releases):
    import boto3

    _, remote = releases
    body = boto3.client("s3").get_object(Bucket=BUCKET,
                                         Key="releases/mock/latest.json")["Body"].read()
    assert json.loads(body) == {"version": VERSION, "uri": f"{remote}/{VERSION}"}
