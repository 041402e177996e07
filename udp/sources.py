"""The OGC API's sources for a configuration: the shell builds them and hands them to `features`."""

from __future__ import annotations

from collections.abc import Mapping

from features.source import FeatureSource
from features.spec import CollectionSpec
from provider_plugins.postgis import PostgisSource
from provider_plugins.sensorthings import sensorthings_sources
from provider_plugins.stored import StoredSource
from provider_plugins.table import SourceError
from sensorthings.store.base import Store
from udp.indicators import IndicatorSpec


def load_sources(specs: Mapping[str, CollectionSpec], store: Store,
                 indicators: Mapping[str, IndicatorSpec] | None = None,
                 statement_timeout: float | None = None) -> dict[str, FeatureSource]:
    """Every declared collection opened (SourceError names the first that cannot be read): PostGIS tables
    served live in SQL (with the statement timeout), files from their imports in the store; the SensorThings
    collections of the store and the indicators with areas."""
    out: dict[str, FeatureSource] = dict(sensorthings_sources(store))
    out.update({cid: open_source(spec, store, statement_timeout) for cid, spec in specs.items()})
    if indicators:
        from provider_plugins.indicators import IndicatorSource

        out.update({iid: IndicatorSource(spec, store) for iid, spec in indicators.items() if spec.areas is not None})
    return out


def open_source(spec: CollectionSpec, store: Store, statement_timeout: float | None = None) -> FeatureSource:
    """A declared collection's source: a PostGIS table served live in SQL, a file from its import in the store
    (SourceError names the collection when it cannot be opened)."""
    source: FeatureSource = PostgisSource(spec, statement_timeout) if spec.is_postgis else StoredSource(spec, store)
    named = [n for n in (spec.style.properties or ()) + ((spec.style.label,) if spec.style.label else ())
             if n not in source.fields]
    if named:
        raise SourceError(spec.id, f"style names {named[0]!r}, which is not one of its properties "
                                   f"({', '.join(source.fields)})")
    return source
