"""The ``gflow`` command line.

Every command takes a config file (default: the built-in defaults) and any number of
``--set key.sub=value`` overrides, the value parsed as YAML. Commands that compute run
on Ray: a private local cluster by default, or ``--address`` / ``RAY_ADDRESS``. Each
checks its inputs before it starts Ray or writes anything, and fails with one line and an
exit status that tells what kind of problem it met (:data:`EXIT_STATUS`).
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from gflow_dist.catalog.commands import add_plot_parser, add_query_parser
from gflow_dist.config import RunConfig, load_config
from gflow_dist.errors import (
    EXIT_ACCESS,
    EXIT_BUG,
    GflowError,
    describe_os_error,
)

EXIT_STATUS = """exit status:
  0  done
  1  a bug in gflow-dist: rerun with -v for the traceback, and report it
  2  the command line is wrong (usage)
  3  the input is unusable: config, particle file, catalog or query arguments
  4  the machine refused: a folder or file cannot be written or read, the disk is full,
     cloud credentials are missing or refused, a Ray cluster does not answer"""

DEFAULT_OUT = Path("runs")


def _config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="run config YAML (default: built-in defaults)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config key, e.g. cnf.patience=5")


def _job_arguments(parser: argparse.ArgumentParser) -> None:
    _config_arguments(parser)
    parser.add_argument("--out", type=Path, help="output folder (default: runs/<config name>)")
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or local)")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _output_folder(args: argparse.Namespace) -> Path:
    if args.out is not None:
        return args.out
    return DEFAULT_OUT / (Path(args.config).stem if args.config else "default")


def _show_config(args: argparse.Namespace, config: RunConfig) -> None:
    print(config.to_yaml(), end="")


def _job(stage: str) -> Callable[[argparse.Namespace, RunConfig], None]:
    def run(args: argparse.Namespace, config: RunConfig) -> None:
        from gflow_dist.distributed import jobs
        from gflow_dist.distributed.cluster import ray_session
        from gflow_dist.preflight import check_job

        out = _output_folder(args)
        ingested = check_job(config, out, stage)  # before Ray starts or anything is written
        run_stage = getattr(jobs, f"run_{stage}")
        if stage == "ingest":  # needs no cluster
            run_stage(config, out, ingested)
            return
        with ray_session(args.address or config.ray.address):
            run_stage(config, out, ingested)

    return run


def _publish(args: argparse.Namespace, config: RunConfig) -> None:
    from gflow_dist.data.ingest import ingest
    from gflow_dist.distributed import jobs
    from gflow_dist.distributed.cluster import ray_session
    from gflow_dist.preflight import check_writable_folder
    from gflow_dist.release.stores import open_store
    from gflow_dist.release.versions import publish

    name = args.name or (Path(args.config).stem if args.config else "default")
    open_store(args.out, args.staging)  # checks the location and, for S3, the credentials
    if "://" not in args.out:
        check_writable_folder(Path(args.out))
    if args.staging is not None:
        check_writable_folder(args.staging, "--staging")
    run = functools.partial(jobs.run_all, ingested=ingest(config))  # checks the particles
    with ray_session(args.address or config.ray.address):
        publish(config, args.out, name, run, args.keep, args.force, args.staging)


def _versions(args: argparse.Namespace) -> None:
    from gflow_dist.release.stores import open_store
    from gflow_dist.release.versions import list_versions

    store = open_store(args.folder)
    if args.rollback:
        store.point_latest(args.rollback)
        print(f"{store.location}/latest -> {args.rollback}")
    published = list_versions(store)
    if not published:
        print(f"no published versions in {store.location}")
    for manifest in published:
        stars = sum(sum(p.values()) for p in manifest["stars_per_pixel"].values())
        print(f"{'*' if manifest['latest'] else ' '} {manifest['version']}  config "
              f"{manifest['config_sha256'][:12]}  code {manifest['code_version']}  "
              f"{stars:,} stars  finished {manifest['finished']}")
    current = store.latest()
    if current is not None:
        print(f"latest: {store.uri(current)}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gflow", description=__doc__.splitlines()[0],
                                     epilog=EXIT_STATUS,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log progress details; show the traceback of a bug")
    commands = parser.add_subparsers(dest="command", required=True)

    config_parser = commands.add_parser("config", help="inspect configs")
    config_commands = config_parser.add_subparsers(dest="config_command", required=True)
    show = config_commands.add_parser("show", help="print the resolved config, defaults included")
    _config_arguments(show)
    show.set_defaults(handler=_show_config)

    for stage, text in (
        ("ingest", "read, select and split the particles"),
        ("train", "fit the configured upsamplers"),
        ("sample", "draw upsampled stars (sample.factor per particle or sample.total)"),
        ("catalog", "write the HEALPix-partitioned catalogs (HATS Parquet, Zarr) and figures"),
        ("evaluate", "compare the upsamplers: classifier tests, truth scores, report"),
        ("all", "the main job: ingest, train, sample, catalog and evaluate"),
    ):
        command = commands.add_parser("run" if stage == "all" else stage, help=text)
        _job_arguments(command)
        command.set_defaults(handler=_job(stage))
    publish = commands.add_parser("publish", help="regenerate into a new immutable version "
                                  "and switch `latest` to it atomically")
    _config_arguments(publish)
    publish.add_argument("--out", required=True,
                         help="release root: a folder, or s3://BUCKET/PREFIX")
    publish.add_argument("--staging", type=Path, help="with s3:// only: where the run writes "
                         "before the upload, a folder every Ray node shares")
    publish.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or local)")
    publish.add_argument("--name", help="catalog name (default: the config file's stem)")
    publish.add_argument("--keep", type=_positive_int, default=5,
                         help="versions to retain (default 5)")
    publish.add_argument("--force", action="store_true", help="regenerate even if unchanged")
    publish.set_defaults(handler=_publish)
    versions_parser = commands.add_parser("versions", help="list published versions, or "
                                          "point `latest` back at one")
    versions_parser.add_argument("folder", help="ROOT/<name> of `gflow publish` (a folder, "
                                 "or s3://BUCKET/PREFIX/<name>)")
    versions_parser.add_argument("--rollback", metavar="VERSION",
                                 help="switch `latest` to this version")
    versions_parser.set_defaults(handler=_versions)
    add_query_parser(commands)
    add_plot_parser(commands)
    return parser


def _fail(message: str, status: int) -> int:
    print(f"gflow: error: {message}", file=sys.stderr)
    return status


def main(argv: list[str] | None = None) -> int:
    """Run one ``gflow`` command; returns its exit status (see :data:`EXIT_STATUS`)."""
    from gflow_dist.release.stores import describe_cloud_error

    # Ray merges log lines that differ only in numbers: every member's progress must show.
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s")
    try:
        if hasattr(args, "overrides"):  # commands that run from a config
            args.handler(args, load_config(args.config, args.overrides))
        else:  # commands over written outputs
            args.handler(args)
    except GflowError as error:
        return _fail(str(error), error.exit_code)
    except OSError as error:
        return _fail(describe_os_error(error), EXIT_ACCESS)
    except Exception as error:
        cloud = describe_cloud_error(error)
        if cloud is not None:
            return _fail(cloud, EXIT_ACCESS)
        if args.verbose:
            traceback.print_exc()
        return _fail(f"unexpected {type(error).__name__}: {error}. This is a bug in "
                     "gflow-dist: rerun with -v for the traceback, and report it", EXIT_BUG)
    return 0


if __name__ == "__main__":
    sys.exit(main())
