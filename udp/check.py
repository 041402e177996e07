"""`udp check`: validate a config.yml and try every source in it without serving; a table of what loaded."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import TextIO

from features import crs as crsmod
from features.spec import CollectionSpec
from udp.config import Config, ConfigError, load_config


@dataclass
class Report:
    """One source's outcome."""

    name: str
    source: str
    ok: bool
    count: int | None = None
    crs: str = ""
    bbox: str = ""
    problem: str = ""
    seconds: float = 0.0


def _try(name: str, spec: CollectionSpec) -> Report:
    from provider_plugins.table import SourceError, load

    started = time.perf_counter()
    if spec.is_postgis:
        return _try_postgis(name, spec, started)
    try:
        table = load(spec)
    except SourceError as exc:
        return Report(name, spec.source, False, problem=exc.reason, seconds=time.perf_counter() - started)
    problems = []
    missing = int(sum(1 for g in table.geoms if g is None))
    if missing:
        problems.append(f"{missing} row{'s' if missing > 1 else ''} without a geometry")
    box = table.bbox
    if box is not None and not (-180 <= box[0] <= 180 and -90 <= box[1] <= 90 and -180 <= box[2] <= 180
                                and -90 <= box[3] <= 90):
        problems.append("the extent is not on Earth: is `crs` right?")
    return Report(name, spec.source, True, len(table.ids), crsmod.label(table.source_crs),
                  "" if box is None else ", ".join(f"{v:.5f}" for v in box), "; ".join(problems),
                  time.perf_counter() - started)


def _try_postgis(name: str, spec: CollectionSpec, started: float) -> Report:
    from provider_plugins.postgis import check_table, dispose_engines
    from provider_plugins.table import SourceError

    try:
        count, crs, box = check_table(spec)
    except SourceError as exc:
        return Report(name, spec.source, False, problem=exc.reason, seconds=time.perf_counter() - started)
    finally:
        dispose_engines()
    return Report(name, spec.source, True, count, crsmod.label(crs),
                  "" if box is None else ", ".join(f"{v:.5f}" for v in box), "", time.perf_counter() - started)


def check(config: Config) -> list[Report]:
    """Try every collection and every `sensors:` table."""
    reports = [_try(f"collections.{cid}", spec) for cid, spec in config.collections.items()]
    reports += [_try(f"sensors[{entry.index}]", entry.table) for entry in config.sensors]
    return reports


def metadata_gaps(config: Config) -> list[tuple[str, str]]:
    """What each public dataset's catalogue metadata lacks that a DCAT-AP harvest would refuse or flag: a
    description, themes, a licence, a publisher, a contact point; and, for a catalogue of German administrative
    areas (political geocoding declared), the contributor id GovData requires."""
    cat = config.catalogue
    gaps: list[tuple[str, str]] = []
    german = cat.political_geocoding is not None or any(
        spec.metadata.political_geocoding is not None for spec in config.collections.values())
    if german and cat.contributor_id is None:  # German administrative areas: a catalogue GovData harvests
        gaps.append(("catalogue", "no contributor_id: GovData refuses datasets without dcatde:contributorID"))
    if cat.publisher is None:
        gaps.append(("publisher", "missing: every dataset needs a dct:publisher"))
    if cat.contact is None:
        gaps.append(("contact", "missing: datasets have no dcat:contactPoint"))
    datasets = [(f"collections.{cid}", spec.description, spec.metadata) for cid, spec in config.collections.items()
                if spec.access == "public"]
    datasets += [(f"sensors[{e.index}]", "-", e.metadata) for e in config.sensors if e.access == "public"]
    datasets += [(f"indicators.{iid}", "-", spec.metadata) for iid, spec in config.indicators.items()]
    for where, description, meta in datasets:
        if not description:
            gaps.append((where, "no description: dct:description is mandatory"))
        if not meta.themes and not cat.themes:
            gaps.append((where, "no themes (EU data themes) and no catalogue.themes"))
        if meta.license is None and cat.license is None:
            gaps.append((where, "no license and no default license: its distributions have no dct:license"))
    return gaps


def print_table(reports: list[Report], out: TextIO) -> None:
    """The reports as an aligned table."""
    head = ("source", "ok", "features", "CRS", "bbox (CRS84)", "problems")
    rows = [(r.name, "ok" if r.ok else "FAILED", "" if r.count is None else f"{r.count:,}", r.crs, r.bbox,
             r.problem) for r in reports]
    widths = [max(len(str(row[i])) for row in [head, *rows]) for i in range(len(head))]
    for row in [head, tuple("-" * w for w in widths), *rows]:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip(), file=out)


def run(path: str) -> int:
    """Validate, try every source, print the table; 1 when anything failed."""
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 1
    print(f"{path}: configuration valid ({len(config.collections)} collections, {len(config.sensors)} sensors "
          f"tables, {len(config.bridge)} bridge rules)")
    reports = check(config)
    if reports:
        print_table(reports, sys.stdout)
    gaps = metadata_gaps(config)
    if gaps:
        print(f"catalogue metadata: {len(gaps)} gap{'s' if len(gaps) > 1 else ''} (the data is served; harvesters "
              "would refuse or flag these)")
        width = max(len(w) for w, _ in gaps)
        for where, what in gaps:
            print(f"  {where.ljust(width)}  {what}")
    else:
        print("catalogue metadata: complete")
    failed = [r for r in reports if not r.ok]
    if failed:
        print(f"{len(failed)} of {len(reports)} sources failed", file=sys.stderr)
        return 1
    print(f"all {len(reports)} sources ok")
    return 0
