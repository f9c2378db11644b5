"""A corpus of bad inputs, each refused up front by the ``gflow`` command (issue 18).

Every case runs the real command line in this process (``gflow_dist.cli.main``), except
the Ray-address cases, which run it as a subprocess so that no Ray session of another
test can hide them. Each case asserts the documented exit status (2 usage, 3 bad input,
4 the machine refused), a one-line message naming the offending key, file, row or flag,
no traceback, and an output folder exactly as it was before. The in-process cases fail
if the command reaches its Ray session: validation must come first.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gflow_dist.catalog.build import write_catalog
from gflow_dist.catalog.local import LocalCatalogRunner
from gflow_dist.cli import main
from gflow_dist.config import RunConfig
from gflow_dist.distributed import cluster
from gflow_dist.errors import (
    EXIT_ACCESS,
    EXIT_BUG,
    EXIT_INPUT,
    EXIT_USAGE,
    AccessError,
    describe_os_error,
)
from gflow_dist.release.stores import describe_cloud_error

SUN = np.array([-8.0, 0.0, 0.02])
N_PARTICLES = 400
READ_ONLY = Path("/sys")  # refuses new entries even to root, unlike a chmod-ed folder
TINY_MOCK = ["--set", "galaxy.mock.n_particles=600"]


def particles(n: int = N_PARTICLES, seed: int = 0) -> pd.DataFrame:
    """Particles around the Sun: positions [kpc], velocities [km/s], masses [Msun]."""
    rng = np.random.default_rng(seed)
    position = SUN + rng.normal(0.0, 1.0, (n, 3))
    velocity = rng.normal(0.0, 50.0, (n, 3)) + [0.0, 220.0, 0.0]
    return pd.DataFrame({"x": position[:, 0], "y": position[:, 1], "z": position[:, 2],
                         "vx": velocity[:, 0], "vy": velocity[:, 1], "vz": velocity[:, 2],
                         "mass": np.full(n, 5e3)})


def _with(column: str, row: int, value: float) -> pd.DataFrame:
    frame = particles()
    frame.loc[row, column] = value
    return frame


def _write_files(data: Path) -> None:
    """Every particle file and config the cases name, under ``data``."""
    good = particles()
    good.to_parquet(data / "good.parquet")
    good.to_csv(data / "good.csv", index=False)
    particles(seed=1).to_parquet(data / "other.parquet")
    parquet = {
        "fast": _with("vx", 7, 1e30), "faster_than_limit": _with("vy", 12, 5000.0),
        "heavy": _with("mass", 3, 1e30), "light": _with("mass", 9, 1e-9),
        "negative_mass": _with("mass", 4, -1.0), "far": _with("x", 11, 1e9),
        "nan_x": _with("x", 5, np.nan), "inf_vy": _with("vy", 8, np.inf),
        "mpc": good.assign(x=good.x / 1e3, y=good.y / 1e3, z=good.z / 1e3),
        "m_per_s": good.assign(vx=good.vx * 1e3, vy=good.vy * 1e3, vz=good.vz * 1e3),
        "duplicates": pd.concat([good, good.iloc[[2]]], ignore_index=True),
        "three": good.head(3), "far_away": good.assign(x=good.x + 100.0),
        "no_vz": good.drop(columns="vz"),
        "age_in_years": good.assign(age=5e9, feh=-0.2),
        "feh_as_z": good.assign(age=5.0, feh=0.012),
        "nan_age": good.assign(age=5.0, feh=-0.2).assign(
            age=lambda f: f.age.where(f.index != 6)),
        "age_without_feh": good.assign(age=5.0),
    }
    for name, frame in parquet.items():
        frame.to_parquet(data / f"{name}.parquet")
    good.to_parquet(data / "parquet_named.csv")
    good.to_csv(data / "csv_named.parquet", index=False)
    good.to_csv(data / "particles.txt", index=False)
    text = (data / "good.csv").read_text()
    (data / "truncated.csv").write_text(text[: len(text) // 2])
    raw = (data / "good.parquet").read_bytes()
    (data / "truncated.parquet").write_bytes(raw[: len(raw) // 2])
    (data / "header_only.csv").write_text("x,y,z,vx,vy,vz\n")
    (data / "empty.parquet").touch()
    (data / "folder.parquet").mkdir()
    words = good.astype({"vx": object})
    words.loc[6, "vx"] = "fast"
    words.to_csv(data / "words.csv", index=False)
    configs = {
        "duplicate_top.yaml": "seed: 1\nupsamplers: [enbid]\nseed: 2\n",
        "duplicate_nested.yaml": "cnf:\n  patience: 3\n  max_epochs: 2\n  patience: 5\n",
        "invalid.yaml": "cnf: [unclosed\n",
        "list.yaml": "- cnf\n- enbid\n",
        "inf_radius.yaml": "galaxy:\n  r_max_kpc: .inf\n",
    }
    for name, text in configs.items():
        (data / name).write_text(text)
    latin1 = "# Sonne: (-8, 0, 0) für Gäste\nseed: 1\n".encode("latin-1")
    (data / "latin1.yaml").write_bytes(latin1)
    (data / "a_file").write_text("not a folder\n")


def _write_catalog(folder: Path, model_dir: Path) -> None:
    """A 200-star HATS catalog at fixed order 3: most of the sky has no stars."""
    config = RunConfig.model_validate({
        "galaxy": {"sun_position_kpc": SUN.tolist(), "r_max_kpc": 3.5},
        "catalog": {"partition_order": 3, "zarr": False}})
    write_catalog(model_dir, 200, 1, folder, config, {"upsampler": "cnf"}, LocalCatalogRunner())


@pytest.fixture(scope="module")
def data(tmp_path_factory, enbid_model_dir) -> Path:
    folder = tmp_path_factory.mktemp("bad-inputs")
    _write_files(folder)
    _write_catalog(folder / "catalog", enbid_model_dir)
    return folder


def _ingest(source: str = "good.parquet", *extra: str) -> Callable[[Path, Path], None]:
    """Preparation: ``gflow ingest`` of ``source`` into the case's --out (no Ray needed)."""
    def prepare(data: Path, out: Path) -> None:
        assert main(["ingest", "--out", str(out), "--set", f"galaxy.source={data / source}",
                     *extra]) == 0
    return prepare


def _ingest_then_rewrite(data: Path, out: Path) -> None:
    """Ingest a copy of good.parquet, then give that same path other particles."""
    source = out.parent / "source.parquet"
    shutil.copy(data / "good.parquet", source)
    assert main(["ingest", "--out", str(out), "--set", f"galaxy.source={source}"]) == 0
    shutil.copy(data / "other.parquet", source)


def _ingest_without_key(data: Path, out: Path) -> None:
    _ingest()(data, out)
    (out / "particles" / "ingest_key.json").unlink()


@dataclass(frozen=True)
class Case:
    """One bad input: the argv (``{data}``, ``{out}``, ``{cat}`` filled in), the exit
    status and the phrases the message must hold."""

    id: str
    argv: list[str]
    status: int
    needles: tuple[str, ...]
    prepare: Callable[[Path, Path], None] | None = None
    watched: str = "{out}"
    environment: dict[str, str] = field(default_factory=dict)


def _train(*overrides: str, source: str | None = "good.parquet") -> list[str]:
    chosen = ["--set", f"galaxy.source={{data}}/{source}"] if source else []
    return ["train", "--out", "{out}", *chosen, *(f"--set={o}" for o in overrides)]


def _source(command: str, source: str, *extra: str) -> list[str]:
    return [command, "--out", "{out}", "--set", f"galaxy.source={{data}}/{source}", *extra]


CONFIG_CASES = [
    Case("r_max_inf", _train("galaxy.r_max_kpc=.inf"), EXIT_INPUT, ("galaxy.r_max_kpc", "finite")),
    Case("r_max_negative", _train("galaxy.r_max_kpc=-2"), EXIT_INPUT, ("galaxy.r_max_kpc",)),
    Case("r_max_nan", _train("galaxy.r_max_kpc=.nan"), EXIT_INPUT, ("galaxy.r_max_kpc",)),
    Case("r_max_inf_in_file", ["train", "{data}/inf_radius.yaml", "--out", "{out}"], EXIT_INPUT,
         ("inf_radius.yaml", "galaxy.r_max_kpc")),
    Case("sun_nan", _train("galaxy.sun_position_kpc=[-8, .nan, 0]"), EXIT_INPUT,
         ("galaxy.sun_position_kpc", "finite")),
    Case("sun_off_axis", _train("galaxy.sun_position_kpc=[-8, 1, 0]"), EXIT_INPUT,
         ("galaxy.sun_position_kpc", "-x axis")),
    Case("sun_positive_x", _train("galaxy.sun_position_kpc=[8, 0, 0]"), EXIT_INPUT,
         ("galaxy.sun_position_kpc", "x < 0")),
    Case("sun_two_values", _train("galaxy.sun_position_kpc=[-8, 0]"), EXIT_INPUT,
         ("galaxy.sun_position_kpc", "3 values")),
    Case("sun_velocity_inf", _train("galaxy.sun_velocity_kms=[11, .inf, 7]"), EXIT_INPUT,
         ("galaxy.sun_velocity_kms",)),
    Case("test_fraction_zero", _train("split.test_fraction=0"), EXIT_INPUT,
         ("split.test_fraction", "greater than 0")),
    Case("test_fraction_one", _train("split.test_fraction=1"), EXIT_INPUT,
         ("split.test_fraction",)),
    Case("window_dec_95", _train("catalog.figure_window_deg=[167, 95, 15]"), EXIT_INPUT,
         ("catalog.figure_window_deg", "dec")),
    Case("window_radius_zero", _train("catalog.figure_window_deg=[167, -4, 0]"), EXIT_INPUT,
         ("catalog.figure_window_deg", "radius")),
    Case("window_ra_negative", _train("catalog.figure_window_deg=[-5, -4, 15]"), EXIT_INPUT,
         ("catalog.figure_window_deg", "ra")),
    Case("upsamplers_empty", _train("upsamplers=[]"), EXIT_INPUT, ("upsamplers", "at least one")),
    Case("upsamplers_repeated", _train("upsamplers=[cnf, enbid, cnf]"), EXIT_INPUT,
         ("upsamplers", "cnf listed more than once")),
    Case("upsampler_unknown", _train("upsamplers=[cnf, nf]"), EXIT_INPUT, ("upsamplers",)),
    Case("hidden_units_empty", _train("evaluate.hidden_units=[]"), EXIT_INPUT,
         ("evaluate.hidden_units",)),
    Case("hidden_units_zero", _train("evaluate.hidden_units=[64, 0]"), EXIT_INPUT,
         ("evaluate.hidden_units",)),
    Case("repeats_zero", _train("evaluate.repeats=0"), EXIT_INPUT,
         ("evaluate.repeats", "greater than or equal to 1")),
    Case("repeats_fraction", _train("evaluate.repeats=2.5"), EXIT_INPUT, ("evaluate.repeats",)),
    Case("max_speed_above_c", _train("galaxy.max_speed_kms=400000"), EXIT_INPUT,
         ("galaxy.max_speed_kms",)),
    Case("train_cap_of_two", _train("cnf.max_train_particles=2"), EXIT_INPUT,
         ("cnf.max_train_particles", "at least 50")),
    Case("learning_rate_inf", _train("cnf.learning_rate=.inf"), EXIT_INPUT,
         ("cnf.learning_rate", "finite")),
    Case("seed_negative", _train("seed=-1"), EXIT_INPUT, ("'seed'",)),
    Case("format_unknown", _train("galaxy.format=fits"), EXIT_INPUT, ("galaxy.format",)),
    Case("sample_total_zero", _train("sample.total=0"), EXIT_INPUT, ("sample.total",)),
    Case("mock_no_particles", _train("galaxy.mock.n_particles=0", source=None), EXIT_INPUT,
         ("galaxy.mock.n_particles",)),
    Case("unknown_key", _train("cnf.pateince=3"), EXIT_INPUT, ("unknown key 'cnf.pateince'",)),
    Case("override_without_value", ["train", "--out", "{out}", "--set", "seed"], EXIT_INPUT,
         ("'seed' must look like key.sub=value",)),
    Case("duplicate_key", ["train", "{data}/duplicate_top.yaml", "--out", "{out}"], EXIT_INPUT,
         ("duplicate_top.yaml", "'seed' is set twice, at lines 1 and 3")),
    Case("duplicate_nested_key", ["run", "{data}/duplicate_nested.yaml", "--out", "{out}"],
         EXIT_INPUT, ("duplicate_nested.yaml", "'patience' is set twice, at lines 2 and 4")),
    Case("config_not_utf8", ["train", "{data}/latin1.yaml", "--out", "{out}"], EXIT_INPUT,
         ("latin1.yaml", "not UTF-8")),
    Case("config_invalid_yaml", ["train", "{data}/invalid.yaml", "--out", "{out}"], EXIT_INPUT,
         ("invalid.yaml", "not valid YAML")),
    Case("config_a_list", ["train", "{data}/list.yaml", "--out", "{out}"], EXIT_INPUT,
         ("list.yaml", "must be a mapping")),
    Case("config_missing", ["train", "{data}/nowhere.yaml", "--out", "{out}"], EXIT_INPUT,
         ("nowhere.yaml", "cannot read config")),
]

PARTICLE_CASES = [
    Case("source_missing", _source("ingest", "nowhere.parquet"), EXIT_INPUT,
         ("nowhere.parquet", "does not exist")),
    Case("source_a_folder", _source("train", "folder.parquet"), EXIT_INPUT,
         ("folder.parquet", "is a directory")),
    Case("source_empty", _source("train", "empty.parquet"), EXIT_INPUT,
         ("empty.parquet", "empty (0 bytes)")),
    Case("parquet_named_csv", _source("train", "parquet_named.csv"), EXIT_INPUT,
         ("parquet_named.csv", "this is a parquet file", "galaxy.format: parquet")),
    Case("csv_named_parquet", _source("train", "csv_named.parquet"), EXIT_INPUT,
         ("csv_named.parquet", "not a parquet file", "galaxy.format: csv")),
    Case("txt_extension", _source("train", "particles.txt"), EXIT_INPUT,
         ("particles.txt", "set galaxy.format")),
    Case("txt_as_parquet", _source("train", "particles.txt", "--set", "galaxy.format=parquet"),
         EXIT_INPUT, ("particles.txt", "not a parquet file")),
    Case("truncated_csv", _source("train", "truncated.csv"), EXIT_INPUT,
         ("truncated.csv", "row 199 has", "truncated")),
    Case("truncated_parquet", _source("train", "truncated.parquet"), EXIT_INPUT,
         ("truncated.parquet", "truncated or corrupt")),
    Case("header_only_csv", _source("train", "header_only.csv"), EXIT_INPUT,
         ("header_only.csv", "no particles")),
    Case("age_in_years", _source("train", "age_in_years.parquet"), EXIT_INPUT,
         ("age_in_years.parquet", "column 'age'", "give ages in Gyr")),
    Case("feh_as_z", _source("train", "feh_as_z.parquet"), EXIT_INPUT,
         ("feh_as_z.parquet", "column 'feh'", "metal mass fraction Z")),
    Case("nan_age", _source("train", "nan_age.parquet"), EXIT_INPUT,
         ("nan_age.parquet", "column 'age' has no value", "[6]")),
    Case("age_without_feh", _source("train", "age_without_feh.parquet"), EXIT_INPUT,
         ("age_without_feh.parquet", "no 'feh' column")),
    Case("missing_column", _source("train", "no_vz.parquet"), EXIT_INPUT,
         ("no_vz.parquet", "missing column(s) vz")),
    Case("not_numeric", _source("train", "words.csv"), EXIT_INPUT,
         ("words.csv", "column 'vx' is not numeric: row 6")),
    Case("nan_position", _source("train", "nan_x.parquet"), EXIT_INPUT,
         ("nan_x.parquet", "column 'x'", "rows [5]")),
    Case("inf_velocity", _source("train", "inf_vy.parquet"), EXIT_INPUT,
         ("inf_vy.parquet", "column 'vy'", "rows [8]")),
    Case("faster_than_light", _source("ingest", "fast.parquet"), EXIT_INPUT,
         ("fast.parquet", "galaxy.max_speed_kms = 3000", "row 7")),
    Case("faster_than_limit", _source("train", "faster_than_limit.parquet"), EXIT_INPUT,
         ("faster_than_limit.parquet", "galaxy.max_speed_kms", "row 12")),
    Case("lower_speed_limit", _source("train", "good.parquet", "--set",
                                      "galaxy.max_speed_kms=100"), EXIT_INPUT,
         ("good.parquet", "galaxy.max_speed_kms = 100")),
    Case("mass_too_large", _source("train", "heavy.parquet"), EXIT_INPUT,
         ("heavy.parquet", "column 'mass'", "row 3")),
    Case("mass_too_small", _source("train", "light.parquet"), EXIT_INPUT,
         ("light.parquet", "column 'mass'", "row 9")),
    Case("mass_negative", _source("train", "negative_mass.parquet"), EXIT_INPUT,
         ("negative_mass.parquet", "non-positive", "rows [4]")),
    Case("position_far_out", _source("train", "far.parquet"), EXIT_INPUT,
         ("far.parquet", "farther than", "row 11")),
    Case("positions_in_mpc", _source("train", "mpc.parquet"), EXIT_INPUT,
         ("mpc.parquet", "look like Mpc")),
    Case("velocities_in_m_per_s", _source("train", "m_per_s.parquet"), EXIT_INPUT,
         ("m_per_s.parquet", "look like m/s")),
    Case("duplicate_rows", _source("train", "duplicates.parquet"), EXIT_INPUT,
         ("duplicates.parquet", "row 400 = row 2")),
    Case("three_particles", _source("train", "three.parquet"), EXIT_INPUT,
         ("three.parquet", "only 2 train particles", "at least 50")),
    Case("nothing_near_the_sun", _source("train", "far_away.parquet"), EXIT_INPUT,
         ("far_away.parquet", "no particle within r_max")),
    Case("small_mock", ["train", "--out", "{out}", "--set", "galaxy.mock.n_particles=60"],
         EXIT_INPUT, ("only 30 train particles", "at least 50")),
    Case("run_with_missing_source", _source("run", "nowhere.parquet"), EXIT_INPUT,
         ("nowhere.parquet",)),
    Case("sample_with_bad_source", _source("sample", "fast.parquet"), EXIT_INPUT,
         ("fast.parquet", "row 7")),
    Case("catalog_with_bad_source", _source("catalog", "three.parquet"), EXIT_INPUT,
         ("three.parquet", "at least 50")),
    Case("evaluate_with_bad_source",
         _source("evaluate", "truncated.csv", "--set", "upsamplers=[cnf, enbid]"), EXIT_INPUT,
         ("truncated.csv", "truncated")),
]

OUTPUT_CASES = [
    Case("out_is_a_file", ["train", "--out", "{data}/a_file"], EXIT_ACCESS,
         ("--out", "a_file is a file")),
    Case("out_inside_a_file", ["run", "--out", "{data}/a_file/run"], EXIT_ACCESS,
         ("--out", "a_file, a file")),
    Case("out_read_only", ["ingest", "--out", f"{READ_ONLY}/gflow-run", *TINY_MOCK],
         EXIT_ACCESS, ("--out", f"cannot write in {READ_ONLY}")),
    Case("stale_source", _source("train", "other.parquet"), EXIT_INPUT,
         ("particles", "differ in galaxy.source", "gflow ingest", "fresh --out"),
         prepare=_ingest()),
    Case("stale_source_rewritten", ["train", "--out", "{out}", "--set",
                                    "galaxy.source={out}/../source.parquet"],
         EXIT_INPUT, ("differ in galaxy.source",), prepare=_ingest_then_rewrite),
    Case("stale_radius", _source("catalog", "good.parquet", "--set", "galaxy.r_max_kpc=3"),
         EXIT_INPUT, ("differ in galaxy.r_max_kpc",), prepare=_ingest()),
    Case("stale_seed", _source("sample", "good.parquet", "--set", "seed=4"), EXIT_INPUT,
         ("differ in", "seed"), prepare=_ingest()),
    Case("stale_split", _source("train", "good.parquet", "--set", "split.test_fraction=0.3"),
         EXIT_INPUT, ("differ in split.test_fraction",), prepare=_ingest()),
    Case("stale_sun", _source("train", "good.parquet", "--set",
                              "galaxy.sun_position_kpc=[-8.2, 0, 0]"),
         EXIT_INPUT, ("differ in galaxy.sun_position_kpc",), prepare=_ingest()),
    Case("stale_mock_for_file", ["train", "--out", "{out}", *TINY_MOCK], EXIT_INPUT,
         ("differ in galaxy.source",), prepare=_ingest()),
    Case("ingest_key_missing", _source("evaluate", "good.parquet", "--set",
                                       "upsamplers=[cnf, enbid]"),
         EXIT_INPUT, ("no ingest key was recorded", "gflow ingest"),
         prepare=_ingest_without_key),
]

PUBLISH_CASES = [
    Case("publish_missing_source", ["publish", "--out", "{out}", "--name", "mock", "--set",
                                    "galaxy.source={data}/nowhere.parquet"],
         EXIT_INPUT, ("nowhere.parquet", "does not exist")),
    Case("publish_keep_zero", ["publish", "--out", "{out}", "--keep", "0"], EXIT_USAGE,
         ("--keep", "at least 1")),
    Case("publish_out_is_a_file", ["publish", "--out", "{data}/a_file", *TINY_MOCK],
         EXIT_ACCESS, ("--out", "a_file is a file")),
    Case("publish_unknown_scheme", ["publish", "--out", "ftp://host/releases", *TINY_MOCK],
         EXIT_INPUT, ("ftp://host/releases", "s3://")),
    Case("publish_staging_for_folder", ["publish", "--out", "{out}", "--staging",
                                        "{out}/../staging", *TINY_MOCK],
         EXIT_INPUT, ("--staging is for s3:// locations only",)),
    Case("publish_s3_without_credentials",
         ["publish", "--out", "s3://gflow-releases/x", "--staging", "{out}", *TINY_MOCK],
         EXIT_ACCESS, ("s3://gflow-releases/x", "no S3 credentials", "AWS_ACCESS_KEY_ID"),
         environment={"AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
                      "AWS_CONFIG_FILE": "/nonexistent", "AWS_EC2_METADATA_DISABLED": "true"}),
    Case("versions_rollback_to_nothing", ["versions", "{out}", "--rollback", "v=nope"],
         EXIT_INPUT, ("v=nope is not a published version",)),
]


def _query(*arguments: str) -> list[str]:
    return ["query", "{cat}", *arguments]


QUERY_CASES = [
    Case("ra_nan", _query("cone", "--ra", "nan", "--dec", "0", "--radius", "5"), EXIT_INPUT,
         ("--ra", "finite")),
    Case("dec_inf", _query("cone", "--ra", "10", "--dec", "inf", "--radius", "5"), EXIT_INPUT,
         ("--dec", "finite")),
    Case("dec_95", _query("cone", "--ra", "10", "--dec", "95", "--radius", "5"), EXIT_INPUT,
         ("dec must be in [-90, 90]",)),
    Case("radius_zero", _query("mean-pm", "--ra", "10", "--dec", "0", "--radius", "0"),
         EXIT_INPUT, ("radius must be in (0, 180]",)),
    Case("ra_not_a_number", _query("cone", "--ra", "east", "--dec", "0", "--radius", "5"),
         EXIT_USAGE, ("--ra", "invalid float value")),
    Case("counts_order_negative", _query("counts", "--order", "-1"), EXIT_INPUT,
         ("--order", "[0, 29]")),
    Case("pixels_order_30", _query("pixels", "--order", "30", "--pixel", "1"), EXIT_INPUT,
         ("--order", "[0, 29]")),
    Case("pixel_out_of_range", _query("pixels", "--order", "1", "--pixel", "48"), EXIT_INPUT,
         ("pixel 48 does not exist at order 1",)),
    Case("unknown_column", _query("cone", "--ra", "10", "--dec", "0", "--radius", "5",
                                  "--columns", "ra", "colour"), EXIT_INPUT, ("colour",)),
    Case("no_catalog_there", ["query", "{out}", "counts", "--order", "0"], EXIT_INPUT,
         ("no HATS catalog",)),
    Case("export_into_missing_folder",
         _query("cone", "--ra", "10", "--dec", "0", "--radius", "5", "--export",
                "{out}/missing/stars.csv"),
         EXIT_ACCESS, ("--export", "missing", "does not exist")),
    Case("export_onto_a_folder", _query("counts", "--order", "1", "--export", "{out}"),
         EXIT_ACCESS, ("--export", "is a folder")),
    Case("export_read_only", _query("pixels", "--order", "0", "--pixel", "1", "--export",
                                    f"{READ_ONLY}/stars.parquet"),
         EXIT_ACCESS, ("--export", f"cannot write in {READ_ONLY}")),
    Case("export_wrong_suffix", _query("cone", "--ra", "10", "--dec", "0", "--radius", "5",
                                       "--export", "{out}/stars.txt"),
         EXIT_INPUT, ("--export", ".parquet, .csv")),
    Case("plot_window_dec_95", ["plot", "{cat}", "--out", "{out}", "--window", "10", "95", "5"],
         EXIT_INPUT, ("--window", "dec must be in [-90, 90]")),
    Case("plot_order_negative", ["plot", "{cat}", "--out", "{out}", "--order", "-1"],
         EXIT_INPUT, ("--order",)),
    Case("plot_out_is_a_file", ["plot", "{cat}", "--out", "{data}/a_file"], EXIT_ACCESS,
         ("--out", "a_file is a file")),
]

CASES = CONFIG_CASES + PARTICLE_CASES + OUTPUT_CASES + PUBLISH_CASES + QUERY_CASES


def _snapshot(path: Path) -> object:
    """Every entry under ``path`` with its size and modification time (None: no path)."""
    if not path.exists():
        return None
    if not path.is_dir():
        return path.stat().st_size, path.stat().st_mtime_ns
    return sorted((str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns)
                  for p in path.rglob("*"))


def _fill(text: str, data: Path, out: Path) -> str:
    return text.format(data=data, out=out, cat=data / "catalog")


@pytest.fixture
def no_ray(monkeypatch):
    """Fail any case that reaches a Ray session: its input must be refused before."""
    def refuse(*args, **kwargs):
        raise AssertionError("a bad input reached the Ray session")
    monkeypatch.setattr(cluster, "ray_session", refuse)


def test_the_corpus_is_large_and_its_ids_unique():
    assert len(CASES) >= 60
    assert len({case.id for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_is_refused_up_front(case, data, tmp_path, capsys, monkeypatch, no_ray):
    out = tmp_path / "out"
    out.mkdir()
    if case.prepare is not None:
        case.prepare(data, out)
    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    for key, value in case.environment.items():
        monkeypatch.setenv(key, value)
    watched = Path(_fill(case.watched, data, out))
    before, data_before = _snapshot(watched), _snapshot(data)
    capsys.readouterr()
    try:
        status = main([_fill(arg, data, out) for arg in case.argv])
    except SystemExit as usage:  # argparse's usage errors
        status = usage.code
    error = capsys.readouterr().err
    assert status == case.status, error
    assert "Traceback" not in error
    for needle in case.needles:
        assert needle in error, f"{needle!r} not in {error!r}"
    assert _snapshot(watched) == before, "a refused command changed its output folder"
    assert _snapshot(data) == data_before, "a refused command changed its inputs"


BAD_SUNS = {
    "y_not_zero": ("[-8, 1, 0]", "-x axis"),
    "x_positive": ("[8, 0, 0]", "x < 0"),
    "nan": ("[-8, .nan, 0]", "finite"),
    "two_values": ("[-8, 0]", "3 values"),
}


@pytest.mark.parametrize("command", ["ingest", "run"])
@pytest.mark.parametrize("sun, fragment", BAD_SUNS.values(), ids=BAD_SUNS)
def test_a_sun_the_frame_cannot_hold_stops_ingest_and_run_before_any_output(
        command, sun, fragment, tmp_path, capsys, no_ray):
    """Issue 16: such a Sun must not pass the config and fail only after training."""
    out = tmp_path / "out"
    status = main([command, "--out", str(out), "--set", f"galaxy.sun_position_kpc={sun}"])
    error = capsys.readouterr().err
    assert status == EXIT_INPUT, error
    assert "galaxy.sun_position_kpc" in error and fragment in error
    assert "Traceback" not in error
    assert not out.exists()


ADDRESS_CASES = {
    "address_flag": (["--address", "127.0.0.1:9"], {}),
    "ray_address_env": ([], {"RAY_ADDRESS": "127.0.0.1:9"}),
    "ray_address_config": (["--set", "ray.address=ray://127.0.0.1:9"], {}),
}


@pytest.mark.parametrize("flags, environment", ADDRESS_CASES.values(), ids=ADDRESS_CASES)
def test_a_dead_ray_address_fails_within_seconds(flags, environment, tmp_path):
    """No silent wait on a dead cluster; nothing written. A subprocess: no other session."""
    out = tmp_path / "out"
    command = [sys.executable, "-c", "import sys; from gflow_dist.cli import main; "
               "sys.exit(main(sys.argv[1:]))", "train", "--out", str(out), *TINY_MOCK, *flags]
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, timeout=120,
                            env=os.environ | environment, cwd=tmp_path)
    assert result.returncode == EXIT_ACCESS, result.stderr
    assert "127.0.0.1:9" in result.stderr and "does not answer" in result.stderr
    assert "Traceback" not in result.stderr
    assert time.monotonic() - started < 60
    assert not out.exists()


@pytest.fixture
def unanswered_address():
    """``127.0.0.1:port`` of a listener that never accepts: its backlog is full, so the
    kernel drops a new connection's SYN and ``connect`` hangs instead of being refused."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        queued: list[socket.socket] = []
        try:
            for _ in range(16):
                queued.append(socket.socket())
                queued[-1].settimeout(0.5)
                try:
                    queued[-1].connect(listener.getsockname())
                except TimeoutError:
                    break
            else:
                pytest.fail("the listener's backlog never filled: connect() did not hang")
            yield f"127.0.0.1:{listener.getsockname()[1]}"
        finally:
            for client in queued:
                client.close()


def test_an_address_that_never_answers_fails_after_the_connect_timeout(unanswered_address):
    """README: a given address must accept a connection within 5 s."""
    started = time.monotonic()
    with pytest.raises(AccessError, match=rf"at {unanswered_address} does not answer "
                                          r"\(timed out, waited at most 5 s\)"):
        cluster.check_reachable(unanswered_address)
    assert 5.0 <= time.monotonic() - started < 6.5


def _crash(args, config):
    raise ZeroDivisionError("a stand-in for a bug")


def test_a_bug_is_one_line_and_its_traceback_shows_only_with_v(monkeypatch, capsys):
    monkeypatch.setattr("gflow_dist.cli._show_config", _crash)
    assert main(["config", "show"]) == EXIT_BUG
    error = capsys.readouterr().err
    assert "Traceback" not in error and len(error.strip().splitlines()) == 1
    assert "ZeroDivisionError" in error and "rerun with -v" in error
    assert main(["-v", "config", "show"]) == EXIT_BUG
    assert "Traceback" in capsys.readouterr().err


def test_a_full_disk_is_named_with_its_fix():
    with pytest.raises(OSError) as full, open("/dev/full", "w") as device:
        device.write("x")
        device.flush()
    assert describe_os_error(full.value) == (
        "No space left on device; the disk is full: free space, or choose a location on "
        "another disk")


def test_cloud_errors_become_one_line_with_the_fix():
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    assert "AWS_ACCESS_KEY_ID" in describe_cloud_error(NoCredentialsError())
    unreachable = describe_cloud_error(EndpointConnectionError(endpoint_url="http://s3.test"))
    assert "http://s3.test" in unreachable and "AWS_ENDPOINT_URL" in unreachable
    refused = ClientError({"Error": {"Code": "InvalidAccessKeyId", "Message": "unknown key"}},
                          "PutObject")
    assert describe_cloud_error(refused).startswith(
        "S3 refused PutObject: InvalidAccessKeyId (unknown key)")
    assert describe_cloud_error(ZeroDivisionError()) is None


@pytest.mark.parametrize("address", ["cluster-head", "ray://head", "http://head:8265/jobs"])
def test_an_address_that_is_not_host_and_port_is_named(address):
    with pytest.raises(AccessError, match=f"Ray address '{address}' is not host:port"):
        cluster.check_reachable(address)


def test_auto_is_left_to_ray(monkeypatch):
    """``auto`` (the cluster `ray start` recorded) is Ray's to resolve: nothing connects."""
    connections = []
    monkeypatch.setattr(socket, "create_connection",
                        lambda *args, **kwargs: connections.append(args))
    cluster.check_reachable("auto")
    assert connections == []
