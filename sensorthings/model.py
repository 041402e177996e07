"""The SensorThings data model (OGC 18-088): entity types, their properties and navigation.

Everything that depends on which entity has which property or relation reads it from here:
the body parser, the query translator, the store and the serializer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Kind(StrEnum):
    """How a property is typed, stored and written."""

    TEXT = "text"  # a string column
    JSON = "json"  # any JSON value in one column (properties, parameters, unitOfMeasurement, ...)
    TIME = "time"  # an instant
    INTERVAL = "interval"  # an interval: two columns `<col>_start`, `<col>_end`
    TIME_OR_INTERVAL = "time_or_interval"  # an instant or an interval (end NULL for an instant)
    GEOJSON = "geojson"  # GeoJSON in a JSON column, with a geometry column `geom` beside it
    RESULT = "result"  # an Observation's result: any JSON value, split into typed columns


@dataclass(frozen=True)
class Prop:
    """One property of an entity type as the API names it, and where it is stored."""

    name: str
    column: str
    kind: Kind
    required: bool = False
    read_only: bool = False  # computed by the server (Datastream phenomenonTime, observedArea)


class NavKind(StrEnum):
    """How a navigation property is stored."""

    FK = "fk"  # this entity has a column pointing at the target (to-one)
    REVERSE = "reverse"  # the target has a column pointing at this entity (to-many)
    LINK = "link"  # a link table joins both (many-to-many)


@dataclass(frozen=True)
class Nav:
    """A navigation property: `Thing` of a Datastream, `Datastreams` of a Thing."""

    name: str
    target: str  # entity type name
    kind: NavKind
    column: str = ""  # FK: our column; REVERSE: the target's column
    link_table: str = ""  # LINK only
    link_self: str = ""  # LINK: the link table's column pointing at this entity
    link_target: str = ""  # LINK: the link table's column pointing at the target
    required: bool = False  # must be given on create (FK only)

    @property
    def many(self) -> bool:
        """True for navigation to a set."""
        return self.kind is not NavKind.FK


@dataclass(frozen=True)
class EntityType:
    """One SensorThings entity type."""

    name: str
    set_name: str
    table: str
    props: tuple[Prop, ...]
    navs: tuple[Nav, ...]
    prop_by_name: dict[str, Prop] = field(default_factory=dict, compare=False, hash=False)
    nav_by_name: dict[str, Nav] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        self.prop_by_name.update({p.name: p for p in self.props})
        self.nav_by_name.update({n.name: n for n in self.navs})

    def __hash__(self) -> int:
        # by its name, which is unique: the generated hash walked every property and navigation, and each request's
        # parsed options (their cache key) hold a type several times over
        return hash(self.name)


def _t(name: str, column: str, kind: Kind = Kind.TEXT, **kw: bool) -> Prop:
    return Prop(name, column, kind, **kw)


_NAME = _t("name", "name", required=True)
_DESC = _t("description", "description", required=True)
_ENC = _t("encodingType", "encoding_type", required=True)
_PROPS = _t("properties", "properties", Kind.JSON)

THING = EntityType(
    "Thing",
    "Things",
    "things",
    (_NAME, _DESC, _PROPS),
    (
        Nav("Locations", "Location", NavKind.LINK, link_table="thing_locations", link_self="thing_id",
            link_target="location_id"),
        Nav("HistoricalLocations", "HistoricalLocation", NavKind.REVERSE, column="thing_id"),
        Nav("Datastreams", "Datastream", NavKind.REVERSE, column="thing_id"),
        Nav("MultiDatastreams", "MultiDatastream", NavKind.REVERSE, column="thing_id"),
    ),
)

LOCATION = EntityType(
    "Location",
    "Locations",
    "locations",
    (_NAME, _DESC, _ENC, _t("location", "location", Kind.GEOJSON, required=True), _PROPS),
    (
        Nav("Things", "Thing", NavKind.LINK, link_table="thing_locations", link_self="location_id",
            link_target="thing_id"),
        Nav("HistoricalLocations", "HistoricalLocation", NavKind.LINK, link_table="location_historical_locations",
            link_self="location_id", link_target="historical_location_id"),
    ),
)

HISTORICAL_LOCATION = EntityType(
    "HistoricalLocation",
    "HistoricalLocations",
    "historical_locations",
    (_t("time", "time", Kind.TIME, required=True),),
    (
        Nav("Thing", "Thing", NavKind.FK, column="thing_id", required=True),
        Nav("Locations", "Location", NavKind.LINK, link_table="location_historical_locations",
            link_self="historical_location_id", link_target="location_id"),
    ),
)

_OBSERVED_AREA = _t("observedArea", "observed_area", Kind.GEOJSON, read_only=True)
_DS_PHEN = _t("phenomenonTime", "phenomenon_time", Kind.INTERVAL, read_only=True)
_DS_RES = _t("resultTime", "result_time", Kind.INTERVAL, read_only=True)

_OBSERVATION_TYPE = _t("observationType", "observation_type", required=True)
_STREAM_TAIL = (_OBSERVED_AREA, _DS_PHEN, _DS_RES, _PROPS)
_STREAM_NAVS = (
    Nav("Thing", "Thing", NavKind.FK, column="thing_id", required=True),
    Nav("Sensor", "Sensor", NavKind.FK, column="sensor_id", required=True),
)

DATASTREAM = EntityType(
    "Datastream",
    "Datastreams",
    "datastreams",
    (_NAME, _DESC, _OBSERVATION_TYPE, _t("unitOfMeasurement", "unit_of_measurement", Kind.JSON, required=True),
     *_STREAM_TAIL),
    (
        *_STREAM_NAVS,
        Nav("ObservedProperty", "ObservedProperty", NavKind.FK, column="observed_property_id", required=True),
        Nav("Observations", "Observation", NavKind.REVERSE, column="datastream_id"),
    ),
)

MULTI_DATASTREAM = EntityType(
    "MultiDatastream",
    "MultiDatastreams",
    "multi_datastreams",
    (_NAME, _DESC, _OBSERVATION_TYPE,
     _t("multiObservationDataTypes", "multi_observation_data_types", Kind.JSON, required=True),
     _t("unitOfMeasurements", "unit_of_measurements", Kind.JSON, required=True),
     *_STREAM_TAIL),
    (
        *_STREAM_NAVS,
        Nav("ObservedProperties", "ObservedProperty", NavKind.LINK, link_table="multi_datastream_observed_properties",
            link_self="multi_datastream_id", link_target="observed_property_id"),
        Nav("Observations", "Observation", NavKind.REVERSE, column="multi_datastream_id"),
    ),
)

SENSOR = EntityType(
    "Sensor",
    "Sensors",
    "sensors",
    (_NAME, _DESC, _ENC, _t("metadata", "metadata", Kind.JSON, required=True), _PROPS),
    (
        Nav("Datastreams", "Datastream", NavKind.REVERSE, column="sensor_id"),
        Nav("MultiDatastreams", "MultiDatastream", NavKind.REVERSE, column="sensor_id"),
    ),
)

OBSERVED_PROPERTY = EntityType(
    "ObservedProperty",
    "ObservedProperties",
    "observed_properties",
    (_NAME, _t("definition", "definition", required=True), _DESC, _PROPS),
    (
        Nav("Datastreams", "Datastream", NavKind.REVERSE, column="observed_property_id"),
        Nav("MultiDatastreams", "MultiDatastream", NavKind.LINK, link_table="multi_datastream_observed_properties",
            link_self="observed_property_id", link_target="multi_datastream_id"),
    ),
)

OBSERVATION = EntityType(
    "Observation",
    "Observations",
    "observations",
    (
        _t("phenomenonTime", "phenomenon_time", Kind.TIME_OR_INTERVAL),
        _t("resultTime", "result_time", Kind.TIME),
        _t("result", "result", Kind.RESULT, required=True),
        _t("resultQuality", "result_quality", Kind.JSON),
        _t("validTime", "valid_time", Kind.INTERVAL),
        _t("parameters", "parameters", Kind.JSON),
    ),
    (
        Nav("Datastream", "Datastream", NavKind.FK, column="datastream_id"),
        Nav("MultiDatastream", "MultiDatastream", NavKind.FK, column="multi_datastream_id"),
        Nav("FeatureOfInterest", "FeatureOfInterest", NavKind.FK, column="feature_of_interest_id"),
    ),
)

FEATURE_OF_INTEREST = EntityType(
    "FeatureOfInterest",
    "FeaturesOfInterest",
    "features_of_interest",
    (_NAME, _DESC, _ENC, _t("feature", "feature", Kind.GEOJSON, required=True), _PROPS),
    (Nav("Observations", "Observation", NavKind.REVERSE, column="feature_of_interest_id"),),
)

ENTITY_TYPES: tuple[EntityType, ...] = (
    THING,
    LOCATION,
    HISTORICAL_LOCATION,
    DATASTREAM,
    MULTI_DATASTREAM,
    SENSOR,
    OBSERVED_PROPERTY,
    OBSERVATION,
    FEATURE_OF_INTEREST,
)
BY_NAME: dict[str, EntityType] = {e.name: e for e in ENTITY_TYPES}
BY_SET: dict[str, EntityType] = {e.set_name: e for e in ENTITY_TYPES}


def target_of(nav: Nav) -> EntityType:
    """The entity type a navigation property leads to."""
    return BY_NAME[nav.target]


_REVERSE: dict[tuple[str, str], Nav | None] = {}  # (entity, nav) names -> the way back: asked for every write


def reverse_nav(entity: EntityType, nav: Nav) -> Nav | None:
    """The navigation property of the target that leads back (Datastream.Thing for Thing.Datastreams)."""
    key = (entity.name, nav.name)
    if key not in _REVERSE:
        _REVERSE[key] = _find_reverse(entity, nav)
    return _REVERSE[key]


def _find_reverse(entity: EntityType, nav: Nav) -> Nav | None:
    target = target_of(nav)
    for back in target.navs:
        if back.target != entity.name:
            continue
        if nav.kind is NavKind.REVERSE and back.kind is NavKind.FK and back.column == nav.column:
            return back
        if nav.kind is NavKind.FK and back.kind is NavKind.REVERSE and back.column == nav.column:
            return back
        if nav.kind is NavKind.LINK and back.kind is NavKind.LINK and back.link_table == nav.link_table:
            return back
    return None
