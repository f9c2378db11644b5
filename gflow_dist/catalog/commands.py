"""``gflow query`` and ``gflow plot``: look into a written catalog without loading it whole.

    gflow query runs/mock/catalog/cnf cone --ra 167.47 --dec -4.2 --radius 15 \\
        --columns ra dec pmra pmdec --export window.parquet
    gflow query runs/mock/catalog/cnf pixels --order 3 --pixel 10 11
    gflow query runs/mock/catalog/cnf counts --order 2
    gflow query runs/mock/catalog/cnf mean-pm --ra 167.47 --dec -4.2 --radius 15
    gflow query s3://BUCKET/releases/mock/latest/catalog/cnf cone --ra 130 --dec -45 --radius 5
    gflow plot runs/mock/catalog/cnf --out runs/mock/figures/cnf
    gflow plot s3://BUCKET/releases/mock/latest/catalog/cnf --out figures/cnf

Results go to stdout, progress to the log (stderr). Like :mod:`gflow_dist.cli`, this module
imports lsdb, hats and matplotlib inside the handlers, so building the parser stays cheap.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path

logger = logging.getLogger(__name__)

PREVIEW_ROWS = 10


def add_query_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("query", help="cone, pixel, count and proper-motion queries "
                                 "over a written catalog (Dask, lsdb)")
    # a str, not a Path: Path("s3://b/k") would collapse the "//"
    parser.add_argument("catalog", help="DIR/catalog/<name> or its hats/ folder; in a "
                        "published release ROOT/NAME/latest/catalog/<name> (or v=...), "
                        "ROOT a folder or s3://BUCKET/PREFIX")
    kinds = parser.add_subparsers(dest="query", required=True)

    def cone_arguments(command: argparse.ArgumentParser) -> None:
        command.add_argument("--ra", type=float, required=True, help="centre ICRS ra [deg]")
        command.add_argument("--dec", type=float, required=True, help="centre ICRS dec [deg]")
        command.add_argument("--radius", type=float, required=True, help="radius [deg]")

    def output_arguments(command: argparse.ArgumentParser) -> None:
        command.add_argument("--columns", nargs="+", help="columns to return (default: all)")
        command.add_argument("--export", type=Path,
                             help="write the stars to this .parquet or .csv file")

    cone = kinds.add_parser("cone", help="stars within a radius of (ra, dec)")
    cone_arguments(cone)
    output_arguments(cone)
    pixels = kinds.add_parser("pixels", help="stars in HEALPix pixels (nested)")
    pixels.add_argument("--order", type=int, required=True)
    pixels.add_argument("--pixel", type=int, nargs="+", required=True)
    output_arguments(pixels)
    counts = kinds.add_parser("counts", help="stars per HEALPix pixel")
    counts.add_argument("--order", type=int, required=True)
    counts.add_argument("--export", type=Path, help="write the counts to .parquet or .csv")
    mean_pm = kinds.add_parser("mean-pm", help="mean proper motion [mas/yr] in a cone")
    cone_arguments(mean_pm)
    parser.set_defaults(handler=run_query)


def _show_stars(frame, export: Path | None) -> None:
    from gflow_dist.catalog import query

    if export is not None:
        rows = query.export(frame, export)
        logger.info("%s stars -> %s", f"{rows:,}", export)
        return
    rows = len(frame)
    if rows == 0:
        print("0 stars in this region")
        return
    print(f"{rows:,} stars; the first {min(rows, PREVIEW_ROWS)}:")
    print(frame.head(PREVIEW_ROWS, npartitions=-1).to_string())


def run_query(args: argparse.Namespace) -> None:
    from hats.pixel_math import HealpixPixel

    from gflow_dist.catalog import query

    if getattr(args, "export", None) is not None:
        query.check_export_path(args.export)  # before the query runs
    if args.query == "cone":
        _show_stars(query.cone(args.catalog, args.ra, args.dec, args.radius, args.columns),
                    args.export)
    elif args.query == "pixels":
        query.check_order(args.order)  # HealpixPixel refuses orders above 29 with a ValueError
        chosen = [HealpixPixel(args.order, pixel) for pixel in args.pixel]
        _show_stars(query.pixels(args.catalog, chosen, args.columns), args.export)
    elif args.query == "counts":
        counts = query.counts_per_pixel(args.catalog, args.order)
        if args.export is not None:
            query.export(counts.to_frame(), args.export)
            logger.info("%s pixels -> %s", f"{len(counts):,}", args.export)
        else:
            print(counts.to_string())
    else:
        mean = query.mean_proper_motion_in_cone(args.catalog, args.ra, args.dec, args.radius)
        # no stars, no mean: JSON null rather than the invalid NaN
        print(json.dumps({key: None if isinstance(value, float) and math.isnan(value) else value
                          for key, value in mean.items()}))


def add_plot_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("plot", help="the paper's figures from a written catalog")
    # a str, not a Path: Path("s3://b/k") would collapse the "//"
    parser.add_argument("catalog", help="DIR/catalog/<name> or its hats/ folder; in a "
                        "published release ROOT/NAME/latest/catalog/<name> (or v=...), "
                        "ROOT a folder or s3://BUCKET/PREFIX")
    parser.add_argument("--out", type=Path, required=True, help="folder for the PNG files")
    parser.add_argument("--window", type=float, nargs=3, metavar=("RA", "DEC", "RADIUS"),
                        help="sky window [deg] (default: the paper's, around (167.47, -4.2))")
    parser.add_argument("--order", type=int, default=5, help="HEALPix order of the sky map")
    parser.set_defaults(handler=run_plot)


def run_plot(args: argparse.Namespace) -> None:
    from gflow_dist.catalog import query
    from gflow_dist.catalog.plots import PAPER_WINDOW, SkyWindow, make_figures
    from gflow_dist.config import sky_window_problem
    from gflow_dist.errors import InputError
    from gflow_dist.preflight import check_writable_folder

    window = args.window or (PAPER_WINDOW.ra_deg, PAPER_WINDOW.dec_deg, PAPER_WINDOW.radius_deg)
    problem = sky_window_problem(*window)
    if problem:
        raise InputError(f"--window {' '.join(f'{v:g}' for v in window)}: {problem}")
    query.check_order(args.order)
    check_writable_folder(args.out)
    figures = make_figures(query.hats_path(args.catalog), args.out,
                           window=SkyWindow(*window), order=args.order,
                           title=args.catalog.rstrip("/").rsplit("/", 1)[-1])
    for path in figures:
        print(path)
