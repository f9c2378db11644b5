"""The paper's figures from a star catalog, streamed so that no catalog is loaded whole.

Figures (paper §2.2 and §5.2): the proper-motion density (μ_α*, μ_δ) of the stars within
15° of the ICRS point (α, δ) = (167.47°, −4.2°) (Fig. 3), their ICRS corner plot of
(ra, dec, distance, pmra, pmdec, radial_velocity) (Figs. 4/5), their Galactocentric
(v_x, v_y) map with optional parent particles as black dots (Figs. 1 and B1), and a
Mollweide sky map of the stars per HEALPix pixel.

The window's figures are fixed-bin histograms accumulated batch by batch (:class:`Histogram`,
:func:`fill_histograms`) from an iterable of pyarrow record batches, tables or pandas
frames that carry only the columns needed — :func:`iter_parquet_columns` streams them
with column projection. Integer counts add exactly, so the streamed histograms equal one
histogram of all stars at once. :func:`make_figures` fills them from a catalog's figure
stars, a uniform random subset that the build keeps, and draws the sky map from the
catalog's sky maps (:mod:`gflow_dist.catalog.skymaps`): it never reads every star.
Bin ranges must be fixed before the pass that fills the bins: :func:`window_ranges` takes
them in a cheap first pass from the (0.1 %, 99.9 %) quantiles of a deterministic
subsample of the window's stars (those whose hashed ``star_id`` is smallest — the same
stars whatever the batch order), widened by 2 % on each side. Pass ``ranges`` explicitly
to compare several catalogs on the same axes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

import astropy.units as u
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from astropy_healpix import HEALPix
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from upath import UPath

from gflow_dist.catalog.build import FIGURE_STARS_FILE
from gflow_dist.catalog.observables import COLUMN_UNITS, observables
from gflow_dist.catalog.skymaps import read_star_counts
from gflow_dist.errors import GflowError, InputError
from gflow_dist.frame import SolarFrame
from gflow_dist.release.paths import Location

Batch = pa.RecordBatch | pa.Table | pd.DataFrame
Ranges = Mapping[str, tuple[float, float]]

CORNER_COLUMNS = ("ra", "dec", "distance", "pmra", "pmdec", "radial_velocity")
"""The six ICRS phase-space coordinates of the paper's Figs. 4/5."""

SYMBOLS = {
    "ra": r"$\alpha$", "dec": r"$\delta$", "distance": "$d$", "parallax": r"$\varpi$",
    "pmra": r"$\mu_{\alpha*}$", "pmdec": r"$\mu_\delta$", "radial_velocity": "$v_r$",
    "vx": "$v_x$", "vy": "$v_y$", "l": "$l$", "b": "$b$",
}


@dataclass(frozen=True)
class SkyWindow:
    """The stars within ``radius_deg`` of the ICRS point (``ra_deg``, ``dec_deg``) [deg]."""

    ra_deg: float = 167.47
    dec_deg: float = -4.2
    radius_deg: float = 15.0

    def contains(self, ra_deg: np.ndarray, dec_deg: np.ndarray) -> np.ndarray:
        """Boolean mask of the points [deg] at angular separation ≤ radius."""
        ra, dec = np.radians(ra_deg), np.radians(dec_deg)
        ra0, dec0 = math.radians(self.ra_deg), math.radians(self.dec_deg)
        cos_sep = (np.sin(dec) * math.sin(dec0)
                   + np.cos(dec) * math.cos(dec0) * np.cos(ra - ra0))
        return cos_sep >= math.cos(math.radians(self.radius_deg))

    def arrow_filter(self) -> pc.Expression:
        """A declination band that holds the window, for Parquet row-group pruning."""
        low = max(self.dec_deg - self.radius_deg, -90.0)
        high = min(self.dec_deg + self.radius_deg, 90.0)
        return (pc.field("dec") >= low) & (pc.field("dec") <= high)

    def describe(self) -> str:
        return (f"{self.radius_deg:g}° around (α, δ) = "
                f"({self.ra_deg:g}°, {self.dec_deg:g}°)")


PAPER_WINDOW = SkyWindow()
"""The paper's 15° window around (α, δ) = (167.47°, −4.2°), off the Galactic disk."""


def _arrow_location(source: Location) -> tuple[str, Any]:
    """(path, filesystem) for pyarrow: a local path and None, or a UPath's path in its
    fsspec filesystem (e.g. s3fs, with the UPath's endpoint and credentials)."""
    if isinstance(source, UPath):
        return source.path, source.fs
    return str(source), None


def iter_parquet_columns(source: str | Location, columns: Sequence[str],
                         filter: pc.Expression | None = None) -> Iterator[pa.RecordBatch]:
    """Stream ``columns`` of a Parquet file, or of every Parquet file below a folder (a
    HATS catalog's ``dataset/``), as record batches; ``source`` is local, or a UPath into
    an object store.

    Only the named columns are read (each once). ``filter`` (a pyarrow expression on data
    columns) skips row groups whose statistics exclude it.
    """
    source = source if isinstance(source, UPath) else Path(source)
    if not source.exists():
        raise GflowError(f"{source} does not exist: pass a catalog's Parquet file or folder")
    path, filesystem = _arrow_location(source)
    dataset = ds.dataset(path, filesystem=filesystem, format="parquet")
    columns = list(dict.fromkeys(columns))
    missing = [name for name in columns if name not in dataset.schema.names]
    if missing:
        raise GflowError(f"{source} lacks columns {missing}; it has {dataset.schema.names}")
    yield from dataset.to_batches(columns=columns, filter=filter)


def _column(batch: Batch, name: str) -> np.ndarray:
    try:
        return np.asarray(batch[name])
    except KeyError:
        raise GflowError(f"catalog batch lacks column {name!r}; read it with the "
                         "columns this function needs") from None


@dataclass
class Histogram:
    """Star counts on fixed bins of one or two catalog columns, filled batch by batch.

    Bins follow :func:`numpy.histogramdd`: half-open, the last one closed; stars outside
    the edges are not counted.
    """

    columns: tuple[str, ...]
    edges: tuple[np.ndarray, ...]
    counts: np.ndarray

    @classmethod
    def empty(cls, columns: Sequence[str], ranges: Ranges, bins: int) -> Histogram:
        """Zero counts on ``bins`` equal bins per column over ``ranges[column]``."""
        edges = tuple(np.linspace(*ranges[name], bins + 1) for name in columns)
        return cls(tuple(columns), edges, np.zeros((bins,) * len(columns), dtype=np.int64))

    def add(self, values: Mapping[str, np.ndarray]) -> None:
        """Count the stars whose columns are given in ``values``."""
        sample = tuple(np.asarray(values[name], dtype=np.float64) for name in self.columns)
        counts, _ = np.histogramdd(sample, bins=self.edges)
        self.counts += counts.astype(np.int64)


def _mix64(keys: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser: a fixed pseudo-random permutation of uint64 keys."""
    z = keys.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _keep_smallest(keys: np.ndarray, values: dict[str, np.ndarray], size: int):
    if len(keys) <= size:
        return keys, values
    chosen = np.argpartition(keys, size - 1)[:size]
    return keys[chosen], {name: column[chosen] for name, column in values.items()}


def window_ranges(
    batches: Iterable[Batch], columns: Sequence[str], window: SkyWindow = PAPER_WINDOW, *,
    sample_size: int = 100_000, quantiles: tuple[float, float] = (0.001, 0.999),
) -> dict[str, tuple[float, float]]:
    """Histogram ranges of ``columns`` for the window's stars, from one streamed pass.

    Keeps the ``sample_size`` window stars of smallest hashed ``star_id`` (a uniform,
    order-independent subsample; batches need ``star_id``, ``ra``, ``dec`` and
    ``columns``) and returns each column's ``quantiles`` widened by 2 % per side.
    """
    keys = np.empty(0, dtype=np.uint64)
    kept: dict[str, np.ndarray] = {name: np.empty(0) for name in columns}
    for batch in batches:
        inside = window.contains(_column(batch, "ra"), _column(batch, "dec"))
        keys = np.concatenate([keys, _mix64(_column(batch, "star_id")[inside])])
        kept = {name: np.concatenate([kept[name], _column(batch, name)[inside]])
                for name in columns}
        if len(keys) > 2 * sample_size:
            keys, kept = _keep_smallest(keys, kept, sample_size)
    keys, kept = _keep_smallest(keys, kept, sample_size)
    if not len(keys):
        raise GflowError(f"no catalog star lies within {window.describe()}; choose another "
                         "window or pass explicit ranges")
    ranges = {}
    for name in columns:
        low, high = np.quantile(kept[name], quantiles)
        pad = 0.02 * (high - low) or 0.5
        ranges[name] = (float(low - pad), float(high + pad))
    return ranges


def fill_histograms(batches: Iterable[Batch], histograms: Sequence[Histogram],
                    window: SkyWindow | None = None) -> Sequence[Histogram]:
    """Add every star of ``batches`` (those in ``window`` if given) to ``histograms``."""
    names = sorted({name for hist in histograms for name in hist.columns})
    for batch in batches:
        values = {name: _column(batch, name) for name in names}
        if window is not None:
            inside = window.contains(_column(batch, "ra"), _column(batch, "dec"))
            values = {name: column[inside] for name, column in values.items()}
        for hist in histograms:
            hist.add(values)
    return histograms


def corner_histograms(columns: Sequence[str], ranges: Ranges,
                      bins: int) -> dict[tuple[str, ...], Histogram]:
    """Empty 1-D histograms of each column and 2-D ones of each pair, for :func:`plot_corner`."""
    keys = [(name,) for name in columns] + list(combinations(columns, 2))
    return {key: Histogram.empty(key, ranges, bins) for key in keys}


def window_particles(particles: np.ndarray, frame: SolarFrame,
                     window: SkyWindow = PAPER_WINDOW) -> np.ndarray:
    """The (n, 6) Galactocentric particle rows seen within ``window``."""
    sky = observables(particles, frame)
    return np.asarray(particles)[window.contains(sky["ra"], sky["dec"])]


def _label(name: str) -> str:
    return f"{SYMBOLS.get(name, name)} [{COLUMN_UNITS[name]}]"


def _density(fig: Figure, ax, hist: Histogram, colorbar: bool = True) -> None:
    """Draw a 2-D histogram on a log colour scale; empty bins stay blank."""
    counts = np.ma.masked_equal(hist.counts.T, 0)
    norm = LogNorm(vmin=1, vmax=max(int(hist.counts.max()), 1))
    mesh = ax.pcolormesh(*hist.edges, counts, norm=norm, cmap="viridis", rasterized=True)
    if colorbar:
        fig.colorbar(mesh, ax=ax, label="stars per bin")


def _save(fig: Figure, out_path: Path) -> Path:
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=120)
    return out_path


def plot_density(hist: Histogram, out_path: Path, title: str = "",
                 points: np.ndarray | None = None) -> Path:
    """PNG of a 2-D histogram (Fig. 3: pmra–pmdec; Fig. 1: vx–vy), ``points`` as black dots."""
    fig = Figure(figsize=(6, 5), layout="constrained")
    ax = fig.add_subplot()
    _density(fig, ax, hist)
    if points is not None and len(points):
        ax.scatter(points[:, 0], points[:, 1], s=4, c="black", label="parent particles")
        ax.legend(loc="upper right")
    ax.set(xlabel=_label(hist.columns[0]), ylabel=_label(hist.columns[1]),
           xlim=hist.edges[0][[0, -1]], ylim=hist.edges[1][[0, -1]])
    ax.set_title(f"{title}\n{hist.counts.sum():,} stars in the ranges shown", fontsize=9)
    return _save(fig, out_path)


def plot_corner(hists: Mapping[tuple[str, ...], Histogram], columns: Sequence[str],
                out_path: Path, title: str = "") -> Path:
    """PNG of a corner plot: 1-D histograms on the diagonal, 2-D densities below (Figs. 4/5)."""
    n = len(columns)
    fig = Figure(figsize=(2.1 * n, 2.1 * n))  # a fixed layout: constrained is slow for n²
    axes = fig.subplots(n, n, squeeze=False, gridspec_kw={"hspace": 0.08, "wspace": 0.08})
    fig.subplots_adjust(left=0.09, right=0.98, bottom=0.08, top=0.95)
    for i, row_name in enumerate(columns):
        for j, col_name in enumerate(columns):
            ax = axes[i, j]
            if j > i:
                ax.set_axis_off()
                continue
            if i == j:
                hist = hists[(col_name,)]
                ax.stairs(hist.counts, hist.edges[0], color="C0")
                ax.set_yticks([])
            else:
                _density(fig, ax, hists[(col_name, row_name)], colorbar=False)
            ax.set_xlim(hists[(col_name,)].edges[0][[0, -1]])
            ax.set_xlabel(_label(col_name) if i == n - 1 else "")
            ax.set_ylabel(_label(row_name) if j == 0 and i > 0 else "")
            ax.tick_params(labelbottom=i == n - 1, labelleft=j == 0 and i > 0, labelsize=7)
    fig.suptitle(title)
    return _save(fig, out_path)


def plot_sky_counts(counts: np.ndarray, out_path: Path, title: str = "") -> Path:
    """PNG of stars per nested HEALPix pixel on a Mollweide map of (α, δ).

    α runs from 180° at the left edge through 0° in the middle to 180° at the right edge
    (matplotlib's Mollweide axes: α increases to the right, unlike a sky chart).
    """
    order = round(math.log(len(counts) / 12, 4))
    if len(counts) != 12 * 4**order:
        raise GflowError(f"counts must hold 12·4^order values, got {len(counts)}")
    healpix = HEALPix(nside=2**order, order="nested")
    n_lon = min(2000, max(720, 8 * 2**order))
    lon_edges = np.linspace(-np.pi, np.pi, n_lon + 1)
    lat_edges = np.linspace(-np.pi / 2, np.pi / 2, n_lon // 2 + 1)
    lon, lat = np.meshgrid(0.5 * (lon_edges[1:] + lon_edges[:-1]),
                           0.5 * (lat_edges[1:] + lat_edges[:-1]))
    grid = counts[healpix.lonlat_to_healpix(lon * u.rad, lat * u.rad)]
    fig = Figure(figsize=(9, 5), layout="constrained")
    ax = fig.add_subplot(projection="mollweide")
    mesh = ax.pcolormesh(lon_edges, lat_edges, np.ma.masked_equal(grid, 0),
                         norm=LogNorm(vmin=1, vmax=max(grid.max(), 1)), cmap="viridis",
                         rasterized=True)
    ticks = np.arange(-150, 180, 30)
    ax.set_xticks(np.radians(ticks), [f"{tick % 360}°" for tick in ticks])
    ax.grid(True, alpha=0.4)
    ax.set(xlabel=r"$\alpha$ [deg]", ylabel=r"$\delta$ [deg]")
    area = healpix.pixel_area.to_value(u.deg**2)
    fig.colorbar(mesh, ax=ax, orientation="horizontal", shrink=0.6,
                 label=f"stars per HEALPix pixel (order {order}, {area:.3g} deg²)")
    ax.set_title(f"{title}\n{counts.sum():,} stars", fontsize=9)
    return _save(fig, out_path)


def make_figures(hats_dir: str | Location, out_dir: Path, *, window: SkyWindow = PAPER_WINDOW,
                 order: int = 5, bins: int = 200, corner_bins: int = 60,
                 ranges: Ranges | None = None, particles: np.ndarray | None = None,
                 frame: SolarFrame | None = None, title: str = "") -> list[Path]:
    """Write the four figures of the HATS catalog ``hats_dir`` (a local folder, or a UPath
    into an object store) to ``out_dir``; return their paths.

    The window's histograms come from the catalog's figure stars (a uniform random subset,
    :data:`~gflow_dist.catalog.build.FIGURE_STARS_FILE`) in two streamed passes: its
    ranges (skipped when ``ranges`` is given) and its histograms. The sky counts come from
    the catalog's sky maps. Neither reads every star. ``particles`` (n, 6), if given, are
    the parent particles drawn over the vx–vy map where they fall in ``window`` (seen from
    ``frame``, default :class:`SolarFrame`).
    """
    hats_dir = hats_dir if isinstance(hats_dir, UPath) else Path(hats_dir)
    stars = hats_dir / FIGURE_STARS_FILE
    if not stars.exists():
        raise InputError(f"{hats_dir} has no {FIGURE_STARS_FILE}: the catalog was written "
                         "before gflow-dist kept figure stars; rebuild it with `gflow catalog`")
    needed = sorted({"pmra", "pmdec", "vx", "vy", *CORNER_COLUMNS})
    in_band = window.arrow_filter()
    if ranges is None:
        ranges = window_ranges(
            iter_parquet_columns(stars, ["star_id", "ra", "dec", *needed], in_band),
            needed, window)
    proper_motion = Histogram.empty(("pmra", "pmdec"), ranges, bins)
    velocity = Histogram.empty(("vx", "vy"), ranges, bins)
    corner = corner_histograms(CORNER_COLUMNS, ranges, corner_bins)
    columns = sorted({"ra", "dec", *needed})
    fill_histograms(iter_parquet_columns(stars, columns, in_band),
                    [proper_motion, velocity, *corner.values()], window)
    counts = read_star_counts(hats_dir, order)
    parents = None
    if particles is not None:
        parents = window_particles(particles, frame or SolarFrame(), window)[:, 3:5]
    path, filesystem = _arrow_location(stars)
    shown = pq.read_metadata(path, filesystem=filesystem).num_rows
    where = (f"{title} stars within {window.describe()} (a uniform subset: {shown:,} of "
             f"{int(counts.sum()):,})").strip()
    out_dir = Path(out_dir)
    return [
        plot_density(proper_motion, out_dir / "proper_motion.png", where),
        plot_corner(corner, CORNER_COLUMNS, out_dir / "corner_icrs.png", where),
        plot_density(velocity, out_dir / "velocity_xy.png", where, parents),
        plot_sky_counts(counts, out_dir / "sky_counts.png", title),
    ]
