"""An indicator's areas: the polygons of a declared collection, each named, with an R-tree to place points."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import shapely

from features.spec import CollectionSpec


class AreaDeclaration(Protocol):
    """Where an indicator's areas come from (the shell's `indicators:` entry has these)."""

    @property
    def areas(self) -> CollectionSpec | None:
        """The polygon collection; None: the whole city only."""

    @property
    def area_name(self) -> str | None:
        """The column that names the areas; None: guessed."""


@dataclass
class Areas:
    """An indicator's polygons: names, CRS84 geometries and an R-tree."""

    names: list[str]
    geoms: np.ndarray
    tree: shapely.STRtree

    def of(self, point: shapely.Geometry) -> str | None:
        """The area a point lies in."""
        hits = self.tree.query(point, predicate="within")
        return self.names[int(hits[0])] if len(hits) else None


def load_areas(spec: AreaDeclaration) -> Areas | None:
    """The areas of an indicator from its polygon collection (read once per process)."""
    if spec.areas is None:
        return None
    from provider_plugins.table import load

    table = load(spec.areas)
    column = spec.area_name or next((c for c in ("name", "NAME", "name_eng", "area") if c in table.columns), None) \
        or next((c for c in table.columns if table.columns[c].dtype.kind in "OSU"), None)
    names = [str(v) for v in (table.columns[column] if column else table.ids)]
    return Areas(names, table.geoms, shapely.STRtree(table.geoms))
