"""The tables behind the SensorThings entities, one definition for SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    text,
    types,
)
from sqlalchemy.dialects.postgresql import JSONB, TIMESTAMP
from sqlalchemy.engine import Dialect


def _utc_text(value: datetime | str | None) -> str | None:
    """SQLite's text of a time: fixed-width ISO 8601 in UTC with microseconds and a Z."""
    if value is None or isinstance(value, str):
        return value
    # isoformat() pads the year to four digits (strftime's %Y writes year 999 as "999", which breaks both the fixed
    # width and reading back), and it is in C
    return value.astimezone(UTC).isoformat(timespec="microseconds")[:26] + "Z"


class UtcDateTime(types.TypeDecorator):
    """An aware UTC datetime: `timestamptz` on PostgreSQL, fixed-width ISO text on SQLite
    (so that text order is time order and SQLite's date functions read it)."""

    impl = types.String
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> types.TypeEngine:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(TIMESTAMP(timezone=True))
        return dialect.type_descriptor(String(27))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None or dialect.name == "postgresql":
            return value
        return _utc_text(value)

    def bind_processor(self, dialect: Dialect) -> Any:
        # the text itself, not TypeDecorator's wrapper around process_bind_param: a bulk insert binds a time per row
        return None if dialect.name == "postgresql" else _utc_text

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None or isinstance(value, datetime):
            return value
        return datetime.fromisoformat(value)

    def result_processor(self, dialect: Dialect, coltype: Any) -> Any:
        # psycopg already returns aware datetimes (the session runs in UTC): no per-value call
        if dialect.name == "postgresql":
            return None
        return super().result_processor(dialect, coltype)


class Geometry(types.UserDefinedType):
    """A PostGIS geometry in EPSG:4326 (a WKB blob on SQLite, see `with_variant` below)."""

    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return "geometry(Geometry,4326)"


GEOMETRY = Geometry().with_variant(LargeBinary(), "sqlite")
# None is SQL NULL, not JSON null: nothing to encode on write or decode on read
JSONVALUE = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")
ID = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData()


def _id() -> Column:
    return Column("id", ID, primary_key=True, autoincrement=True)


def _fk(name: str, target: str, nullable: bool = False) -> Column:
    return Column(name, ID, ForeignKey(f"{target}.id", ondelete="CASCADE"), nullable=nullable, index=True)


def _interval(name: str, required: bool = False) -> list[Column]:
    return [Column(f"{name}_start", UtcDateTime(), nullable=not required), Column(f"{name}_end", UtcDateTime())]


things = Table(
    "things", metadata, _id(),
    Column("name", Text, nullable=False),
    Column("description", Text, nullable=False),
    Column("properties", JSONVALUE),
)

locations = Table(
    "locations", metadata, _id(),
    Column("name", Text, nullable=False),
    Column("description", Text, nullable=False),
    Column("encoding_type", Text, nullable=False),
    Column("location", JSONVALUE, nullable=False),
    Column("geom", GEOMETRY),
    Column("properties", JSONVALUE),
)

thing_locations = Table(
    "thing_locations", metadata,
    Column("thing_id", ID, ForeignKey("things.id", ondelete="CASCADE"), primary_key=True),
    Column("location_id", ID, ForeignKey("locations.id", ondelete="CASCADE"), primary_key=True, index=True),
)

historical_locations = Table(
    "historical_locations", metadata, _id(),
    Column("time", UtcDateTime(), nullable=False),
    _fk("thing_id", "things"),
)

location_historical_locations = Table(
    "location_historical_locations", metadata,
    Column("location_id", ID, ForeignKey("locations.id", ondelete="CASCADE"), primary_key=True),
    Column("historical_location_id", ID, ForeignKey("historical_locations.id", ondelete="CASCADE"),
           primary_key=True, index=True),
)

sensors = Table(
    "sensors", metadata, _id(),
    Column("name", Text, nullable=False),
    Column("description", Text, nullable=False),
    Column("encoding_type", Text, nullable=False),
    Column("metadata", JSONVALUE),
    Column("properties", JSONVALUE),
)

observed_properties = Table(
    "observed_properties", metadata, _id(),
    Column("name", Text, nullable=False),
    Column("definition", Text, nullable=False),
    Column("description", Text, nullable=False),
    Column("properties", JSONVALUE),
)

def _stream(name: str, *own: Column) -> Table:
    """A Datastream or MultiDatastream table: what both have, around their own unit columns."""
    return Table(
        name, metadata, _id(),
        Column("name", Text, nullable=False),
        Column("description", Text, nullable=False),
        Column("observation_type", Text, nullable=False),
        *own,
        Column("observed_area", JSONVALUE),
        Column("geom", GEOMETRY),
        *_interval("phenomenon_time"),
        *_interval("result_time"),
        Column("properties", JSONVALUE),
        _fk("thing_id", "things"),
        _fk("sensor_id", "sensors"),
    )


datastreams = _stream("datastreams", Column("unit_of_measurement", JSONVALUE),
                      _fk("observed_property_id", "observed_properties"))
multi_datastreams = _stream("multi_datastreams", Column("multi_observation_data_types", JSONVALUE),
                            Column("unit_of_measurements", JSONVALUE))

multi_datastream_observed_properties = Table(
    "multi_datastream_observed_properties", metadata,
    Column("multi_datastream_id", ID, ForeignKey("multi_datastreams.id", ondelete="CASCADE"), primary_key=True),
    Column("observed_property_id", ID, ForeignKey("observed_properties.id", ondelete="CASCADE"),
           primary_key=True, index=True),
    Column("rank", Integer, nullable=False),
)

features_of_interest = Table(
    "features_of_interest", metadata, _id(),
    Column("name", Text, nullable=False),
    Column("description", Text, nullable=False),
    Column("encoding_type", Text, nullable=False),
    Column("feature", JSONVALUE, nullable=False),
    Column("geom", GEOMETRY),
    Column("properties", JSONVALUE),
    # the Location this feature was generated from, so that it is reused rather than duplicated
    Column("generated_from", ID, ForeignKey("locations.id", ondelete="SET NULL"), index=True),
)

# result_type says which column holds the result: see sensorthings.results
observations = Table(
    "observations", metadata, _id(),
    # OGC 18-088: an Observation's phenomenonTime is mandatory (the writer gives now to one without)
    *_interval("phenomenon_time", required=True),
    Column("result_time", UtcDateTime()),
    Column("result_type", SmallInteger, nullable=False),
    Column("result_number", Float),
    Column("result_string", Text),
    Column("result_json", JSONVALUE),
    Column("result_quality", JSONVALUE),
    *_interval("valid_time"),
    Column("parameters", JSONVALUE),
    Column("datastream_id", ID, ForeignKey("datastreams.id", ondelete="CASCADE")),
    Column("multi_datastream_id", ID, ForeignKey("multi_datastreams.id", ondelete="CASCADE")),
    Column("feature_of_interest_id", ID, ForeignKey("features_of_interest.id", ondelete="CASCADE"), nullable=False),
    # a chart (a Datastream's results over a time range) reads this index only, not a heap page per row: the
    # rows of one Datastream lie far apart in the table when many write side by side (read.py: `_covered`); the
    # MultiDatastream key for the public's visibility condition (sensorthings/access.py), null and free here
    Index("observations_datastream_time", "datastream_id", "phenomenon_time_start", "id",
          postgresql_include=["phenomenon_time_end", "result_type", "result_number", "multi_datastream_id"]),
    # most Observations belong to a Datastream: index only those of MultiDatastreams here
    Index("observations_multi_datastream_time", "multi_datastream_id", "phenomenon_time_start", "id",
          postgresql_where=text("multi_datastream_id IS NOT NULL"),
          sqlite_where=text("multi_datastream_id IS NOT NULL")),
    Index("observations_foi", "feature_of_interest_id"),
    Index("observations_time", "phenomenon_time_start", "id"),
)

TABLES: dict[str, Table] = {t.name: t for t in metadata.sorted_tables}
# entities are found by name (`$filter=name eq '…'`: a device or an import resolving its Thing), and on SQLite listed by
# it (`$orderby=name`; the rowid, which is the id, follows the name in its index as every page's order has it): without
# these each such read scanned or sorted the whole register (50,000 Things: 3 ms to find one by name, 5 for the first
# page by name). A hash on PostgreSQL: a B-tree refuses a row over a third of a page, and a name may be longer
NAME_INDEXES = tuple(Index(f"{name}_name", TABLES[name].c.name, postgresql_using="hash") for name in (
    "things", "locations", "sensors", "observed_properties", "datastreams", "multi_datastreams",
    "features_of_interest"))
SERIES_INDEX = next(i for i in observations.indexes if i.name == "observations_datastream_time")


def series_index_columns() -> tuple[list[str], list[str]]:
    """The series index's key columns and the columns it holds besides (INCLUDE on PostgreSQL)."""
    return [c.name for c in SERIES_INDEX.columns], list(SERIES_INDEX.dialect_options["postgresql"]["include"])
