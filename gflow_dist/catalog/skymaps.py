"""The catalog's HEALPix star-count maps, from the shards' pixel counts alone.

Every shard record holds its stars per pixel at the counting order
(:mod:`gflow_dist.catalog.shards`); merged, they are the whole catalog's counts, so the
maps cost nothing that grows with the number of stars. Written as HATS reads them
(``hats.io.skymap.read_skymap``, ``lsdb``'s plotting and planning helpers):

- ``skymap.fits``: stars per pixel at the counting order (``hats_skymap_order``);
- ``skymap.K.fits`` at the lower orders :data:`ALT_ORDERS` (``hats_skymap_alt_orders``);
- ``point_map.fits``: the same map as ``skymap.fits``, under the older name.

``gflow query counts``, the sky-count figure and anything else that needs stars per pixel
read these maps instead of the stars' ``_healpix_29``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.io import fits
from hats.io import get_point_map_file_pointer, get_skymap_file_pointer
from hats.io.file_io import read_fits_image, write_fits_image
from upath import UPath

from gflow_dist.catalog.shards import MergedCounts
from gflow_dist.errors import InputError

ALT_ORDERS = (2, 4, 6, 8)
"""Lower orders of the extra maps (those below the counting order are written)."""


def write_skymaps(folder: Path, counts: MergedCounts) -> dict[str, str]:
    """Write the maps into the HATS folder ``folder``; returns their catalog properties."""
    full = np.zeros(12 * 4**counts.order, np.int64)
    full[counts.pixels] = counts.numbers
    write_fits_image(full, get_skymap_file_pointer(folder))
    write_fits_image(full, get_point_map_file_pointer(folder))
    alt_orders = [order for order in ALT_ORDERS if order < counts.order]
    for order in alt_orders:
        coarse = full.reshape(12 * 4**order, -1).sum(axis=1)
        write_fits_image(coarse, get_skymap_file_pointer(folder, order))
    properties = {"skymap_order": str(counts.order)}
    if alt_orders:
        properties["skymap_alt_orders"] = " ".join(map(str, alt_orders))
    return properties


def skymap_order(folder: Path | UPath) -> int:
    """The order of the full sky map in ``folder`` (``hats_skymap_order``); ``folder`` may
    be a UPath into an object store."""
    full = folder / "skymap.fits"
    if not full.exists():
        raise InputError(f"{folder} has no skymap.fits: the catalog was written before "
                         "gflow-dist wrote sky maps; rebuild it with `gflow catalog`")
    with full.open("rb") as file, fits.open(file) as hdus:
        return int(hdus[1].header["NSIDE"]).bit_length() - 1


def read_star_counts(folder: Path | UPath, order: int) -> np.ndarray:
    """Stars per pixel at ``order`` (12·4^order values) from the maps in ``folder`` (a
    path, or a UPath into an object store).

    Reads the map of the lowest written order at or above ``order`` and sums it down.
    """
    written_order = skymap_order(folder)
    if order > written_order:
        raise InputError(f"the sky maps of {folder} go down to order {written_order}; ask "
                         f"for order {written_order} or less")
    alt_orders = sorted(int(path.name.split(".")[1]) for path in folder.glob("skymap.*.fits"))
    path = next((get_skymap_file_pointer(folder, alt) for alt in alt_orders if alt >= order),
                get_skymap_file_pointer(folder))
    counts = read_fits_image(path).astype(np.int64)
    return counts.reshape(12 * 4**order, -1).sum(axis=1)
