"""A request's query options: parsed within the platform's limits, then checked against the entity model.

This is the one way a query comes in, whether by an HTTP GET, a `$batch` part or an MQTT topic
subscription, so every way in meets the same limits and the same names are refused before any SQL
is built or run.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache

from sensorthings.model import BY_NAME, EntityType, target_of
from sensorthings.query.limits import Limits
from sensorthings.query.parser import parse_query_options
from sensorthings.query.tree import QueryError, QueryOptions

# what $select may name besides an entity's properties and navigation properties
_ALWAYS_SELECTABLE = frozenset({"id", "@iot.id", "@iot.selfLink", "selfLink"})


def query_options(params: Mapping[str, str], entity: EntityType, limits: Limits) -> QueryOptions:
    """The `$` options of a request addressing `entity`, parsed within `limits` and checked against the model."""
    return _parsed(tuple(params.items()), entity.name, limits)


# the same options come again and again (a cockpit's requests, an answer the response cache computes after every
# write): parsed once. The options are immutable; what fails to parse is not kept (lru_cache keeps no exceptions)
@lru_cache(maxsize=1024)
def _parsed(params: tuple[tuple[str, str], ...], entity: str, limits: Limits) -> QueryOptions:
    options = parse_query_options(dict(params), limits)
    check_names(BY_NAME[entity], options)
    return options


def check_names(entity: EntityType, options: QueryOptions, option: str | None = None) -> None:
    """QueryError naming the option and position of the first `$select` or `$expand` name that `entity`
    (or, inside `$expand`, the expanded entity) does not have. `option` names the option the text came
    from: names inside `$expand` are reported against `$expand`, where their positions are."""
    for i, name in enumerate(options.select or ()):
        base = name.split("/", 1)[0]
        if base not in _ALWAYS_SELECTABLE and base not in entity.prop_by_name and base not in entity.nav_by_name:
            position = options.select_pos[i] if i < len(options.select_pos) else None
            raise QueryError(f"{entity.name} has no property {base!r}", option or "$select", position)
    for item in options.expand:
        nav = entity.nav_by_name.get(item.name)
        if nav is None:
            raise QueryError(f"{entity.name} has no navigation property {item.name!r}", "$expand", item.pos)
        check_names(target_of(nav), item.options, "$expand")
