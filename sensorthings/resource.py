"""Resource paths (`Things(1)/Datastreams`, `Datastreams(7)/Observations/$ref`, `Things(1)/name/$value`)
parsed into typed steps, and the SQL condition that selects what a path addresses."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from sqlalchemy import ColumnElement, FromClause, Select, and_, select

from sensorthings.model import BY_SET, EntityType, Nav, NavKind, target_of
from sensorthings.store.schema import TABLES

_SEGMENT = re.compile(r"^(?P<name>[A-Za-z]+)(?:\((?P<id>[^)]*)\))?$")


class PathError(LookupError):
    """A path that names no resource; `status` is 404 or 400."""

    def __init__(self, message: str, status: int = 404) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Step:
    """One entity set or navigation step, optionally with an id."""

    entity: EntityType
    nav: Nav | None
    id: int | None


@dataclass(frozen=True)
class Resource:
    """What a request path addresses."""

    steps: tuple[Step, ...]
    prop: str | None = None
    value: bool = False
    ref: bool = False

    @property
    def entity(self) -> EntityType:
        """The entity type of the last step."""
        return self.steps[-1].entity

    @property
    def single(self) -> bool:
        """True when the path addresses one entity (an id, or a to-one navigation)."""
        last = self.steps[-1]
        return last.id is not None or (last.nav is not None and not last.nav.many)

    @property
    def parent(self) -> Step | None:
        """The step before the last, when there is one."""
        return self.steps[-2] if len(self.steps) > 1 else None


# ids are BIGINT columns: a number beyond them names nothing (and the database driver would refuse it)
ID_RANGE = range(-(2**63), 2**63)


def _parse_id(raw: str, segment: str) -> int:
    raw = raw.strip("'")
    try:
        id_ = int(raw)
    except ValueError:
        raise PathError(f"{segment}: ids are integers", 404) from None
    if id_ not in ID_RANGE:
        raise PathError(f"{segment}: no such entity (ids are 64-bit integers)", 404)
    return id_


@lru_cache(maxsize=4096)
def parse_path(path: str) -> Resource:
    """A Resource from the path after the version prefix (no leading slash). Kept for the paths asked most (devices
    post to their Datastream's path over and over); a Resource is never changed."""
    parts = [p for p in path.strip("/").split("/") if p]
    if not parts:
        raise PathError("no entity set given")
    steps: list[Step] = []
    prop: str | None = None
    value = ref = False
    for i, part in enumerate(parts):
        if part == "$value":
            if prop is None or i != len(parts) - 1:
                raise PathError("$value follows a property name", 400)
            value = True
            continue
        if part == "$ref":
            if i != len(parts) - 1 or prop is not None:
                raise PathError("$ref ends a path to an entity or a set", 400)
            ref = True
            continue
        if prop is not None:
            raise PathError(f"{prop} is a property: nothing can follow it but $value", 400)
        m = _SEGMENT.match(part)
        if not m:
            raise PathError(f"bad path segment {part!r}", 404)
        name, raw_id = m.group("name"), m.group("id")
        id_ = _parse_id(raw_id, part) if raw_id is not None else None
        if not steps:
            entity = BY_SET.get(name)
            if entity is None:
                raise PathError(f"no entity set {name!r}", 404)
            steps.append(Step(entity, None, id_))
            continue
        last = steps[-1]
        if last.id is None and (last.nav is None or last.nav.many):
            raise PathError(f"{part!r} must follow a single entity, e.g. {last.entity.set_name}(1)", 400)
        nav = last.entity.nav_by_name.get(name)
        if nav is not None:
            if raw_id is not None and not nav.many:
                raise PathError(f"{name} is a single entity and takes no id", 400)
            steps.append(Step(target_of(nav), nav, id_))
            continue
        if raw_id is None and (name in last.entity.prop_by_name or name == "id"):
            prop = name
            continue
        raise PathError(f"{last.entity.name} has no property or navigation {name!r}", 404)
    return Resource(tuple(steps), prop, value, ref)


def condition(resource: Resource) -> Callable[[FromClause], ColumnElement | None]:
    """A function giving the WHERE condition, over the last step's table, for what the path selects."""
    steps = resource.steps

    def cond(table: FromClause, upto: int = len(steps) - 1) -> ColumnElement | None:
        step = steps[upto]
        conds: list[ColumnElement] = []
        if step.id is not None:
            conds.append(table.c.id == step.id)
        if upto > 0 and step.nav is not None:
            prev_step = steps[upto - 1]
            nav = step.nav
            # with the parent known by id, link straight to it instead of a subquery
            if prev_step.id is not None:
                parent_id = prev_step.id
                if nav.kind is NavKind.REVERSE:
                    conds.append(table.c[nav.column] == parent_id)
                elif nav.kind is NavKind.LINK:
                    link = TABLES[nav.link_table]
                    conds.append(table.c.id.in_(select(link.c[nav.link_target])
                                                .where(link.c[nav.link_self] == parent_id)))
                else:
                    prev = TABLES[prev_step.entity.table].alias()
                    conds.append(table.c.id == select(prev.c[nav.column]).where(prev.c.id == parent_id)
                                 .scalar_subquery())
            else:
                prev = TABLES[prev_step.entity.table].alias()
                prev_ids: Select = select(prev.c.id)
                pc = cond(prev, upto - 1)
                if pc is not None:
                    prev_ids = prev_ids.where(pc)
                if nav.kind is NavKind.REVERSE:
                    conds.append(table.c[nav.column].in_(prev_ids))
                elif nav.kind is NavKind.LINK:
                    link = TABLES[nav.link_table]
                    conds.append(table.c.id.in_(select(link.c[nav.link_target])
                                                .where(link.c[nav.link_self].in_(prev_ids))))
                else:
                    fk = select(prev.c[nav.column])
                    if pc is not None:
                        fk = fk.where(pc)
                    conds.append(table.c.id.in_(fk))
        if not conds:
            return None
        if len(conds) == 1:
            return conds[0]
        return and_(*conds)

    return cond
