"""The ``gflow`` command line.

Every command takes a config file (default: the built-in defaults) and any number of
``--set key.sub=value`` overrides, the value parsed as YAML. Commands that compute run
on Ray: a private local cluster by default, or ``--address`` / ``RAY_ADDRESS``. Each
checks its inputs before it starts Ray or writes anything, and fails with one line and an
exit status that tells what kind of problem it met (:data:`EXIT_STATUS`).

Progress goes to stderr through :mod:`logging`; results (query output, ``config show``,
``versions``) go to stdout. Modules beyond the standard library are imported inside the
handlers, so ``gflow --help`` and the commands that need no cluster start fast and never
import Ray.
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
from typing import TYPE_CHECKING

from gflow_dist.catalog.commands import add_plot_parser, add_query_parser
from gflow_dist.errors import (
    EXIT_ACCESS,
    EXIT_BUG,
    GflowError,
    describe_os_error,
)

if TYPE_CHECKING:
    from gflow_dist.config import RunConfig

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
        from gflow_dist import pipeline
        from gflow_dist.preflight import check_job

        out = _output_folder(args)
        ingested = check_job(config, out, stage)  # before Ray starts or anything is written
        run_stage = getattr(pipeline, f"run_{stage}")
        if stage == "ingest":  # needs no cluster
            run_stage(config, out, ingested)
            return
        from gflow_dist.distributed.cluster import ray_session
        from gflow_dist.distributed.runners import ray_runners

        with ray_session(args.address or config.ray.address):
            run_stage(config, out, ray_runners(), ingested)

    return run


def _plan(args: argparse.Namespace, config: RunConfig) -> None:
    import json

    from gflow_dist.plan import plan_run, render_plan

    plan = plan_run(config, args.train_particles, args.epochs)
    print(json.dumps(plan.to_dict(), indent=2) if args.json else render_plan(plan, config))


def _publish(args: argparse.Namespace, config: RunConfig) -> None:
    from gflow_dist import pipeline
    from gflow_dist.data.ingest import ingest
    from gflow_dist.distributed.cluster import ray_session
    from gflow_dist.distributed.runners import ray_runners
    from gflow_dist.preflight import check_writable_folder
    from gflow_dist.release.stores import open_store
    from gflow_dist.release.versions import publish

    name = args.name or (Path(args.config).stem if args.config else "default")
    open_store(args.out, args.staging)  # checks the location and, for S3, the credentials
    if "://" not in args.out:
        check_writable_folder(Path(args.out))
    if args.staging is not None:
        check_writable_folder(args.staging, "--staging")
    run = functools.partial(pipeline.run_all, runners=ray_runners(),
                            ingested=ingest(config))  # checks the particles
    with ray_session(args.address or config.ray.address):
        publish(config, args.out, name, run, args.keep, args.force, args.staging,
                args.lock_lease)


def _versions(args: argparse.Namespace) -> None:
    from gflow_dist.release.stores import open_store
    from gflow_dist.release.versions import list_versions, rollback

    store = open_store(args.folder)
    if args.rollback:
        rollback(store, args.rollback)
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


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gflow-dist")
    except PackageNotFoundError:  # a source tree that is not installed
        from gflow_dist import __version__

        return __version__


def _verbosity_arguments(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument("-v", "--verbose", dest="verbosity", action="store_const", const=1,
                        default=default, help="log details with timestamps; show the "
                        "traceback of a bug")
    parser.add_argument("-q", "--quiet", dest="verbosity", action="store_const", const=-1,
                        default=default, help="log warnings and errors only")


def _subcommands(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every parser below ``parser``, at any depth (``gflow config show``, ``query ... cone``)."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                found += [sub, *_subcommands(sub)]
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gflow", description=__doc__.splitlines()[0],
                                     epilog=EXIT_STATUS,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _verbosity_arguments(parser, 0)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)

    config_parser = commands.add_parser("config", help="inspect configs")
    config_commands = config_parser.add_subparsers(dest="config_command", required=True)
    show = config_commands.add_parser("show", help="print the resolved config, defaults included")
    _config_arguments(show)
    show.set_defaults(handler=_show_config)
    plan = commands.add_parser("plan", help="dry run: the shards, partitions, disk, spill "
                               "and CPU/GPU hours the configured run will need")
    _config_arguments(plan)
    plan.add_argument("--train-particles", type=_positive_int, metavar="N",
                      help="train particles (needed for a particle file: `gflow ingest` "
                      "prints it); the mock galaxy's are known")
    plan.add_argument("--epochs", type=_positive_int, default=600,
                      help="assumed epochs per flow and training phase (default 600)")
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.set_defaults(handler=_plan)

    for stage, text in (
        ("ingest", "read, select and split the particles"),
        ("train", "fit the configured upsamplers"),
        ("sample", "draw upsampled stars (sample.factor per particle or sample.total)"),
        ("catalog", "write the HEALPix-partitioned catalogs (HATS Parquet, Zarr) and figures"),
        ("evaluate", "compare the upsamplers: classifier tests, truth scores, report"),
        ("all", "the main job: ingest, train, catalog and evaluate (`gflow sample` is "
                "separate)"),
    ):
        command = commands.add_parser("run" if stage == "all" else stage, help=text)
        _job_arguments(command)
        command.set_defaults(handler=_job(stage))
    from gflow_dist.release.stores import LOCK_LEASE_SECONDS

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
    publish.add_argument("--lock-lease", type=float, default=LOCK_LEASE_SECONDS, metavar="SECONDS",
                         help="how long the run lock outlives a run that died; a live run "
                         f"renews it every third of that (default {LOCK_LEASE_SECONDS:g})")
    publish.set_defaults(handler=_publish)
    versions_parser = commands.add_parser("versions", help="list published versions, or "
                                          "point `latest` back at one")
    versions_parser.add_argument("folder", help="ROOT/<name> of `gflow publish` (a folder, "
                                 "or s3://BUCKET/PREFIX/<name>)")
    versions_parser.add_argument("--rollback", metavar="VERSION",
                                 help="switch `latest` to this version (refused while "
                                 "a publish of this catalog runs: it holds the lock)")
    versions_parser.set_defaults(handler=_versions)
    add_query_parser(commands)
    add_plot_parser(commands)
    # -v and -q also after the command; SUPPRESS: absent there, the value before it stands
    for sub in _subcommands(parser):
        _verbosity_arguments(sub, argparse.SUPPRESS)
    return parser


def _fail(message: str, status: int) -> int:
    print(f"gflow: error: {message}", file=sys.stderr)
    return status


class _LogFormat(logging.Formatter):
    """Progress as plain lines; warnings and errors say so; -v adds time and logger."""

    def __init__(self, detailed: bool) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s" if detailed
                         else "%(message)s")
        self.detailed = detailed

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if not self.detailed and record.levelno >= logging.WARNING:
            text = f"gflow: {record.levelname.lower()}: {text}"
        return text


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (as pytest's capture replaces it)."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr


def configure_logging(verbosity: int) -> None:
    """Log to stderr: gflow-dist's progress (INFO) by default, warnings only with ``-q``,
    DEBUG with timestamps and logger names with ``-v``. Other libraries log warnings (and
    INFO with ``-v``). Replaces the handler of an earlier call, leaves others alone."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(handler)
    handler = _StderrHandler()
    handler.setFormatter(_LogFormat(detailed=verbosity > 0))
    root.addHandler(handler)
    root.setLevel(logging.INFO if verbosity > 0 else logging.WARNING)
    logging.getLogger("gflow_dist").setLevel(
        {1: logging.DEBUG, 0: logging.INFO, -1: logging.WARNING}[verbosity])


def main(argv: list[str] | None = None) -> int:
    """Run one ``gflow`` command; returns its exit status (see :data:`EXIT_STATUS`).

    A wrong command line exits with status 2 (argparse's ``SystemExit``)."""
    from gflow_dist.release.stores import describe_cloud_error

    # Ray merges log lines that differ only in numbers: every member's progress must show.
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    args = build_parser().parse_args(argv)
    args.verbose = args.verbosity > 0
    configure_logging(args.verbosity)
    try:
        if hasattr(args, "overrides"):  # commands that run from a config
            from gflow_dist.config import load_config

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
