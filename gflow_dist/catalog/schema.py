"""The catalog's columns: Arrow schema with units, rows from Galactocentric stars, records.

Columns, in order (units in each field's metadata, key ``unit``, and the IVOA UCD, key
``ucd``): star_id, x, y, z [kpc], vx, vy, vz [km/s], ra, dec [deg], distance [kpc],
parallax [mas], pmra, pmdec [mas/yr], radial_velocity [km/s], l, b [deg] and
``_healpix_29``, the HATS spatial index (nested HEALPix pixel at order 29). Partition
files are written from numpy records of these columns (:func:`table_records`), which also
give the bytes the content hashes cover.

:func:`reader_metadata` describes the columns again for readers that ignore Arrow field
metadata: astropy's own ``table_meta_yaml`` (what ``QTable.read(path)`` uses) and IVOA
VOParquet 1.0 (``IVOA.VOTable-Parquet.*``: a VOTable document whose FIELDs give name,
datatype, VOUnit and UCD; ``QTable.read(path, format="parquet.votable")``, TOPCAT).
"""

from __future__ import annotations

from xml.sax.saxutils import quoteattr

import astropy.units as u
import numpy as np
import pyarrow as pa
from hats.pixel_math.spatial_index import SPATIAL_INDEX_COLUMN

from gflow_dist.catalog.healpix import spatial_index
from gflow_dist.catalog.observables import COLUMN_UNITS, observables
from gflow_dist.errors import InputError
from gflow_dist.frame import SolarFrame
from gflow_dist.outputs import UCD_KEY, UCDS, UNIT_KEY

VOPARQUET_VERSION_KEY = b"IVOA.VOTable-Parquet.version"
VOPARQUET_CONTENT_KEY = b"IVOA.VOTable-Parquet.content"
ASTROPY_META_KEY = b"table_meta_yaml"

_VOTABLE_TYPES = {pa.float64(): "double", pa.float32(): "float", pa.int64(): "long",
                  pa.uint64(): "long", pa.int32(): "int", pa.int16(): "short",
                  pa.uint8(): "unsignedByte"}
"""VOTable datatype of each Arrow type; VOTable has no unsigned 64-bit integer, so
star_id (uint64, always below 2**63) is declared ``long``."""


def catalog_schema() -> pa.Schema:
    """The catalog columns in order, with their units and UCDs in the field metadata."""
    types = {"star_id": pa.uint64(), SPATIAL_INDEX_COLUMN: pa.int64()}
    return pa.schema([pa.field(name, types.get(name, pa.float64()),
                               metadata={UNIT_KEY: unit, UCD_KEY: UCDS[name]})
                      for name, unit in COLUMN_UNITS.items()])


def _field_meta(field: pa.Field) -> tuple[str, str]:
    meta = field.metadata or {}
    return meta.get(UNIT_KEY, b"").decode(), meta.get(UCD_KEY, b"").decode()


def _votable_xml(schema: pa.Schema) -> str:
    fields = []
    for field in schema:
        unit, ucd = _field_meta(field)
        attrs = {"name": field.name, "datatype": _VOTABLE_TYPES[field.type]}
        if unit:
            attrs["unit"] = u.Unit(unit).to_string("vounit")
        if ucd:
            attrs["ucd"] = ucd
        fields.append("   <FIELD " + " ".join(f"{k}={quoteattr(v)}" for k, v in attrs.items())
                      + "/>")
    return "\n".join([
        '<?xml version="1.0" encoding="utf-8"?>',
        '<VOTABLE version="1.4" xmlns="http://www.ivoa.net/xml/VOTable/v1.3">',
        ' <RESOURCE type="results">', "  <TABLE>", *fields,
        '   <PARQUET type="Parquet-local-XML"/>', "  </TABLE>", " </RESOURCE>", "</VOTABLE>",
        ""])


def _astropy_yaml(schema: pa.Schema) -> str:
    from astropy.table import Table
    from astropy.table.meta import get_yaml_from_table

    table = Table()
    for field in schema:
        unit, ucd = _field_meta(field)
        table[field.name] = np.zeros(0, field.type.to_pandas_dtype())
        table[field.name].unit = unit or None
        if ucd:
            table[field.name].meta["ucd"] = ucd
    return "\n".join(get_yaml_from_table(table))


def reader_metadata(schema: pa.Schema) -> dict[bytes, bytes]:
    """Schema metadata that gives astropy and VO readers each column's unit and UCD (from
    the field metadata of ``schema``): ``table_meta_yaml``, read by astropy's ``parquet``
    format, so ``QTable.read(path)`` returns Quantities, and VOParquet 1.0."""
    return {ASTROPY_META_KEY: _astropy_yaml(schema).encode(),
            VOPARQUET_VERSION_KEY: b"1.0",
            VOPARQUET_CONTENT_KEY: _votable_xml(schema).encode()}


def catalog_table(phase_space: np.ndarray, first_star_id: int, frame: SolarFrame) -> pa.Table:
    """Catalog rows of (n, 6) Galactocentric stars [kpc, km/s] numbered from ``first_star_id``."""
    columns = observables(phase_space, frame)
    columns["star_id"] = np.arange(first_star_id, first_star_id + len(phase_space),
                                   dtype=np.uint64)
    columns[SPATIAL_INDEX_COLUMN] = spatial_index(columns["ra"], columns["dec"])
    schema = catalog_schema()
    return pa.table([columns[name] for name in schema.names], schema=schema)


def record_dtype(schema: pa.Schema) -> np.dtype:
    """Numpy record type of one row; every column must be a fixed-width number with a unit."""
    fields = []
    for field in schema:
        if not (pa.types.is_integer(field.type) or pa.types.is_floating(field.type)):
            raise InputError(f"catalog column {field.name!r} has type {field.type}; "
                             "only integer and float columns can be partitioned")
        if UNIT_KEY not in (field.metadata or {}):
            raise InputError(f"catalog column {field.name!r} has no unit: set "
                             "metadata={b'unit': ...} on its field ('' for dimensionless)")
        fields.append((field.name, field.type.to_pandas_dtype()))
    return np.dtype(fields)


def table_records(table: pa.Table, schema: pa.Schema) -> np.ndarray:
    """The rows of ``table`` as numpy records of ``schema``'s columns (others are dropped)."""
    dtype = record_dtype(schema)
    records = np.empty(table.num_rows, dtype)
    for name in dtype.names:
        column = table.column(name)
        if column.null_count:
            raise InputError(f"catalog column {name!r} has {column.null_count} missing values")
        records[name] = column.to_numpy()
    return records
