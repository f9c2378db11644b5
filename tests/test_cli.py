"""The ``gflow`` command line itself: what it imports, its options, its streams and statuses.

The import checks run in a fresh interpreter (``sys.modules`` of this one already holds
everything the other tests imported).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from gflow_dist.cli import build_parser, main
from gflow_dist.errors import EXIT_ACCESS, EXIT_INPUT, EXIT_USAGE

HEAVY = ("ray", "torch", "lsdb", "hats", "dask", "matplotlib", "pandas", "numpy", "pydantic")
"""Modules ``gflow --help`` must not import: each takes from 0.1 s to seconds to load."""


def _python(code: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def _gflow(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gflow_dist.cli", *args], capture_output=True,
                          text=True, timeout=300, cwd=cwd)


def _loaded_after(calls: list[list[str]], cwd: Path | None = None) -> dict:
    """Run ``main`` on each argv in a fresh interpreter; which heavy modules it then held,
    whether Ray was started, and each call's status."""
    code = """
import json, sys
from gflow_dist.cli import main
statuses = []
for argv in json.loads(sys.argv[1]):
    try:
        statuses.append(main(argv))
    except SystemExit as done:
        statuses.append(done.code)
ray = sys.modules.get("ray")
print(json.dumps({"statuses": statuses,
                  "loaded": [m for m in json.loads(sys.argv[2]) if m in sys.modules],
                  "ray_started": bool(ray and ray.is_initialized())}))
"""
    result = _python(code, json.dumps(calls), json.dumps(HEAVY), cwd=cwd)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_importing_the_cli_and_help_load_no_heavy_module():
    found = _loaded_after([["--help"], ["run", "--help"], ["query", "--help"],
                           ["plot", "--help"], ["--version"]])
    assert found["statuses"] == [0] * 5
    assert found["loaded"] == []


@pytest.fixture(scope="module")
def catalog(enbid_model_dir, tmp_path_factory) -> Path:
    """``DIR/catalog/cnf`` holding a small HATS catalog."""
    from gflow_dist.catalog.build import write_catalog
    from gflow_dist.catalog.local import LocalCatalogRunner
    from gflow_dist.config import build_config

    directory = tmp_path_factory.mktemp("cli") / "catalog" / "cnf"
    config = build_config({"catalog": {"partition_order": 2, "zarr": False}})
    write_catalog(enbid_model_dir, 3000, 3, directory, config, {"seed": "3"},
                  LocalCatalogRunner())
    return directory


def test_commands_that_need_no_cluster_never_import_ray(catalog, tmp_path):
    found = _loaded_after([
        ["config", "show"],
        ["plan", "--set", "sample.total=10000000000"],
        ["ingest", "--out", str(tmp_path / "run"), "--set", "galaxy.mock.n_particles=600"],
        ["query", str(catalog), "counts", "--order", "1"],
        ["query", str(catalog), "cone", "--ra", "167", "--dec", "-4", "--radius", "20"],
        ["plot", str(catalog), "--out", str(tmp_path / "figures"), "--order", "2"],
        ["versions", str(tmp_path / "releases")],
    ], cwd=tmp_path)
    assert found["statuses"] == [0] * 7
    assert "ray" not in found["loaded"] and not found["ray_started"]
    assert (tmp_path / "run" / "particles").is_dir() and any((tmp_path / "figures").iterdir())


@pytest.mark.parametrize("argv", [
    ["-v", "config", "show"], ["config", "-v", "show"], ["config", "show", "--verbose"],
    ["query", "cat", "cone", "--ra", "1", "--dec", "2", "--radius", "3", "-v"],
    ["plot", "-v", "cat", "--out", "figures"], ["run", "-v"],
])
def test_verbose_is_accepted_before_and_after_the_command(argv):
    assert build_parser().parse_args(argv).verbosity == 1


@pytest.mark.parametrize(("argv", "verbosity"), [
    (["config", "show"], 0), (["-q", "config", "show"], -1), (["train", "--quiet"], -1),
    (["-v", "config", "show", "-q"], -1), (["-q", "versions", "folder", "-v"], 1),
])
def test_quiet_is_accepted_anywhere_and_the_last_flag_wins(argv, verbosity):
    assert build_parser().parse_args(argv).verbosity == verbosity


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"gflow {version('gflow-dist')}"


def test_run_help_names_the_stages_it_runs():
    help_text = " ".join(_gflow("--help").stdout.split())
    assert "the main job: ingest, train, catalog and evaluate" in help_text
    assert "ingest, train, sample" not in help_text


def _progress_then_result(args, config):
    logging.getLogger("gflow_dist.some_stage").info("progress line")
    logging.getLogger("gflow_dist.some_stage").debug("detail line")
    logging.getLogger("some_library").info("library chatter")
    print("the result")


@pytest.mark.parametrize(("flags", "shown", "hidden"), [
    ([], ["progress line"], ["detail line", "library chatter"]),
    (["-q"], [], ["progress line", "detail line", "library chatter"]),
    (["-v"], ["progress line", "detail line", "library chatter", "gflow_dist.some_stage"], []),
])
def test_progress_goes_to_stderr_and_results_to_stdout(flags, shown, hidden, capsys,
                                                        monkeypatch):
    monkeypatch.setattr("gflow_dist.cli._show_config", _progress_then_result)
    assert main(["config", "show", *flags]) == 0
    captured = capsys.readouterr()
    assert captured.out == "the result\n"
    for text in shown:
        assert text in captured.err
    for text in hidden:
        assert text not in captured.err
    if not flags:  # plain lines by default
        assert captured.err.splitlines() == ["progress line"]


def test_config_show_writes_yaml_to_stdout_only(capsys):
    assert main(["config", "show"]) == 0
    captured = capsys.readouterr()
    assert "upsamplers:" in captured.out and captured.err == ""


def test_exit_status_of_the_process_tells_usage_from_input_from_access(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    usage = _gflow("query", "--no-such-flag")
    assert usage.returncode == EXIT_USAGE, usage.stderr
    assert "usage: gflow query" in usage.stderr
    bad_input = _gflow("config", "show", "--set", "cnf.pateince=3")
    assert bad_input.returncode == EXIT_INPUT, bad_input.stderr
    assert "unknown key 'cnf.pateince'" in bad_input.stderr
    no_access = _gflow("plot", str(tmp_path / "catalog"), "--out", str(a_file / "figures"))
    assert no_access.returncode == EXIT_ACCESS, no_access.stderr
    for result in (usage, bad_input, no_access):
        assert "Traceback" not in result.stderr and result.stdout == ""


def test_an_export_reports_on_stderr_and_leaves_stdout_empty(catalog, tmp_path, capsys):
    export = tmp_path / "counts.csv"
    assert main(["query", str(catalog), "counts", "--order", "1", "--export", str(export)]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and "pixels -> " in captured.err and export.is_file()
