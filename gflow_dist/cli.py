"""The ``gflow`` command line.

Every command takes a config file (default: the built-in defaults) and any number of
``--set key.sub=value`` overrides, the value parsed as YAML. Commands that compute run
on Ray: a local cluster by default, or ``--address`` / ``RAY_ADDRESS``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from gflow_dist.catalog.commands import add_plot_parser, add_query_parser
from gflow_dist.config import RunConfig, load_config
from gflow_dist.errors import GflowError

DEFAULT_OUT = Path("runs")


def _config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="run config YAML (default: built-in defaults)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config key, e.g. cnf.patience=5")


def _job_arguments(parser: argparse.ArgumentParser) -> None:
    _config_arguments(parser)
    parser.add_argument("--out", type=Path, help="output folder (default: runs/<config name>)")
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or local)")


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

        out = _output_folder(args)
        with ray_session(args.address or config.ray.address):
            getattr(jobs, f"run_{stage}")(config, out)

    return run


def _publish(args: argparse.Namespace, config: RunConfig) -> None:
    from gflow_dist.distributed import jobs
    from gflow_dist.distributed.cluster import ray_session
    from gflow_dist.publish import publish

    name = args.name or (Path(args.config).stem if args.config else "default")
    with ray_session(args.address or config.ray.address):
        publish(config, args.out, name, jobs.run_all, args.keep, args.force, args.staging)


def _versions(args: argparse.Namespace) -> None:
    from gflow_dist.publish import list_versions
    from gflow_dist.release_stores import open_store

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
    parser = argparse.ArgumentParser(prog="gflow", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
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
    publish.add_argument("--keep", type=int, default=5, help="versions to retain (default 5)")
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


def main(argv: list[str] | None = None) -> int:
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
        print(f"gflow: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
