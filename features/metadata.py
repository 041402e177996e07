"""Catalogue metadata declared in config.yml (publisher, contact, licences, EU data themes, update frequency),
parsed at the edge into typed values from the vocabularies GovData harvests (DCAT-AP.de, EU authority tables)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from apicommon.declaration import declared

LICENSE_BASE = "http://dcat-ap.de/def/licenses/"
THEME_BASE = "http://publications.europa.eu/resource/authority/data-theme/"
FREQUENCY_BASE = "http://publications.europa.eu/resource/authority/frequency/"
FILE_TYPE_BASE = "http://publications.europa.eu/resource/authority/file-type/"
CONTRIBUTOR_BASE = "http://dcat-ap.de/def/contributors/"
GEOCODING_BASE = "http://dcat-ap.de/def/politicalGeocoding/"

# the dcat-ap.de licence vocabulary (http://dcat-ap.de/def/licenses/), the entries a city's open data uses
LICENSES: dict[str, str] = {
    "dl-by-de/2.0": "Datenlizenz Deutschland – Namensnennung – Version 2.0",
    "dl-zero-de/2.0": "Datenlizenz Deutschland – Zero – Version 2.0",
    "dl-by-de/1.0": "Datenlizenz Deutschland – Namensnennung – Version 1.0",
    "dl-by-nc-de/1.0": "Datenlizenz Deutschland – Namensnennung – nicht kommerziell – Version 1.0",
    "cc-by/4.0": "Creative Commons Namensnennung – 4.0 International (CC BY 4.0)",
    "cc-by-sa/4.0": "Creative Commons Namensnennung – Weitergabe unter gleichen Bedingungen 4.0 International",
    "cc-by-nd/4.0": "Creative Commons Namensnennung – Keine Bearbeitung 4.0 International",
    "cc-by-nc/4.0": "Creative Commons Namensnennung – Nicht kommerziell 4.0 International",
    "cc-by-nc-nd/4.0": "Creative Commons Namensnennung – Nicht kommerziell – Keine Bearbeitungen 4.0 International",
    "cc-by-de/3.0": "Creative Commons Namensnennung 3.0 Deutschland",
    "cc-by-sa-de/3.0": "Creative Commons Namensnennung – Weitergabe unter gleichen Bedingungen 3.0 Deutschland",
    "cc-by-nc-de/3.0": "Creative Commons Namensnennung – Nicht kommerziell 3.0 Deutschland",
    "cc-zero": "Creative Commons CC Zero License (cc-zero)",
    "odbl": "Open Data Commons Open Database License (ODbL)",
    "odby": "Open Data Commons Attribution License (ODC-BY 1.0)",
    "odcpddl": "Open Data Commons Public Domain Dedication and Licence (ODC PDDL)",
    "officialWork": "Amtliches Werk, lizenzfrei nach §5 Abs. 1 UrhG",
    "other-open": "Andere offene Lizenz",
    "other-closed": "Andere geschlossene Lizenz",
    "other-commercial": "Andere kommerzielle Lizenz",
    "other-freeware": "Andere Freeware Lizenz",
    "other-opensource": "Andere Open Source Lizenz",
}
# the licences' own pages, as data stewards copy them, stand for their vocabulary entries
LICENSE_PAGES: dict[str, str] = {
    "https://www.govdata.de/dl-de/by-2-0": "dl-by-de/2.0",
    "https://www.govdata.de/dl-de/zero-2-0": "dl-zero-de/2.0",
    "https://www.govdata.de/dl-de/by-1-0": "dl-by-de/1.0",
    "https://creativecommons.org/licenses/by/4.0": "cc-by/4.0",
    "https://creativecommons.org/licenses/by-sa/4.0": "cc-by-sa/4.0",
    "https://creativecommons.org/licenses/by-nd/4.0": "cc-by-nd/4.0",
    "https://creativecommons.org/licenses/by-nc/4.0": "cc-by-nc/4.0",
    "https://creativecommons.org/publicdomain/zero/1.0": "cc-zero",
    "https://opendatacommons.org/licenses/odbl/1.0": "odbl",
    "https://opendatacommons.org/licenses/by/1.0": "odby",
    "https://opendatacommons.org/licenses/pddl/1.0": "odcpddl",
}
# the EU data theme authority table (DCAT-AP's dcat:theme vocabulary)
THEMES: dict[str, str] = {
    "AGRI": "Agriculture, fisheries, forestry and food", "ECON": "Economy and finance",
    "EDUC": "Education, culture and sport", "ENER": "Energy", "ENVI": "Environment",
    "GOVE": "Government and public sector", "HEAL": "Health", "INTR": "International issues",
    "JUST": "Justice, legal system and public safety", "REGI": "Regions and cities",
    "SOCI": "Population and society", "TECH": "Science and technology", "TRAN": "Transport",
}
# ISO 8601 periods and words → the EU frequency authority table
FREQUENCIES: dict[str, str] = {
    "continuous": "UPDATE_CONT", "irregular": "IRREG", "never": "NEVER",
    "PT1M": "1MIN", "PT5M": "5MIN", "PT10M": "10MIN", "PT15M": "15MIN", "PT30M": "30MIN", "PT1H": "HOURLY",
    "PT2H": "BIHOURLY", "PT3H": "TRIHOURLY", "PT12H": "12HRS", "P1D": "DAILY", "P1W": "WEEKLY", "P7D": "WEEKLY",
    "P2W": "BIWEEKLY", "P1M": "MONTHLY", "P2M": "BIMONTHLY", "P3M": "QUARTERLY", "P6M": "ANNUAL_2", "P1Y": "ANNUAL",
    "P2Y": "BIENNIAL", "P3Y": "TRIENNIAL",
}
_LEVELS = {"stateKey": "state", "districtKey": "administrativeDistrict", "municipalityKey": "municipality",
           "regionalKey": "municipality", "municipalAssociationKey": "municipalAssociation"}
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_URL = re.compile(r"^https?://[^\s/]+\S*$")
DATASET_KEYS = ("themes", "license", "updated", "political_geocoding")
CATALOGUE_KEYS = ("title", "description", "contributor_id", "political_geocoding", "homepage", "language", "themes")


class MetadataError(ValueError):
    """A metadata value that is not from its vocabulary or not of its form, named by its key path."""


@dataclass(frozen=True)
class Agent:
    """A publisher or contact point."""

    name: str
    url: str | None = None
    email: str | None = None


@dataclass(frozen=True)
class License:
    """An entry of the dcat-ap.de licence vocabulary."""

    key: str  # the path under LICENSE_BASE: dl-by-de/2.0

    @property
    def uri(self) -> str:
        """The vocabulary URI."""
        return LICENSE_BASE + self.key

    @property
    def title(self) -> str:
        """The entry's label."""
        return LICENSES[self.key]


@dataclass(frozen=True)
class Theme:
    """An EU data theme."""

    code: str  # ENVI

    @property
    def uri(self) -> str:
        """The authority table URI."""
        return THEME_BASE + self.code

    @property
    def label(self) -> str:
        """The theme's English label."""
        return THEMES[self.code]


@dataclass(frozen=True)
class Frequency:
    """How often a dataset changes (dct:accrualPeriodicity)."""

    text: str  # as declared: P1D, continuous
    code: str  # the EU frequency code: DAILY

    @property
    def uri(self) -> str:
        """The authority table URI."""
        return FREQUENCY_BASE + self.code


@dataclass(frozen=True)
class Geocoding:
    """A DCAT-AP.de political geocoding: the administrative area a dataset covers."""

    uri: str

    @property
    def level(self) -> str | None:
        """The level URI, from the kind of key the URI holds (stateKey → state)."""
        for part, level in _LEVELS.items():
            if f"/{part}/" in self.uri:
                return f"{GEOCODING_BASE}Level/{level}"
        return None


@dataclass(frozen=True)
class DatasetMetadata:
    """What a dataset declares for the catalogue beyond title, description and keywords."""

    themes: tuple[Theme, ...] = ()
    license: License | None = None  # None: the catalogue's default licence
    updated: Frequency | None = None
    political_geocoding: Geocoding | None = None  # None: the catalogue's


@dataclass(frozen=True)
class CatalogueMetadata:
    """The catalogue's own description and the defaults every dataset takes."""

    title: str | None = None  # None: the platform's title
    description: str | None = None
    publisher: Agent | None = None
    contact: Agent | None = None
    license: License | None = None
    contributor_id: str | None = None  # dcatde:contributorID, a URI of the dcat-ap.de contributors vocabulary
    political_geocoding: Geocoding | None = None  # the area the city's datasets cover
    homepage: str | None = None
    language: str = "en"
    themes: tuple[Theme, ...] = ()  # the themes of a dataset that declares none


def parse_license(value: Any, where: str) -> License:
    """A licence URI of the dcat-ap.de vocabulary (or a licence page that stands for one)."""
    text = str(value).strip() if isinstance(value, str) else ""
    key = text[len(LICENSE_BASE):] if text.startswith(LICENSE_BASE) else LICENSE_PAGES.get(text.rstrip("/"))
    if key not in LICENSES:
        raise MetadataError(f"{where}: {value!r} is not a licence URI of the dcat-ap.de vocabulary "
                            f"({LICENSE_BASE}…, e.g. {LICENSE_BASE}dl-by-de/2.0 or {LICENSE_BASE}cc-by/4.0)")
    return License(key)


def parse_themes(value: Any, where: str) -> tuple[Theme, ...]:
    """A list of EU data themes, each a code (ENVI) or its URI."""
    if not isinstance(value, list) or not value:
        raise MetadataError(f"{where}: a list of EU data themes ({', '.join(THEMES)})")
    out = []
    for i, item in enumerate(value):
        text = item.strip() if isinstance(item, str) else ""
        code = text[len(THEME_BASE):] if text.startswith(THEME_BASE) else text.upper()
        if code not in THEMES:
            raise MetadataError(f"{where}[{i}]: {item!r} is not an EU data theme ({', '.join(THEMES)}, or "
                                f"{THEME_BASE}CODE)")
        out.append(Theme(code))
    return tuple(dict.fromkeys(out))


def parse_frequency(value: Any, where: str) -> Frequency:
    """An ISO 8601 period (P1D, PT1H) or continuous, irregular, never."""
    text = value.strip() if isinstance(value, str) else ""
    code = FREQUENCIES.get(text)
    if code is None:
        raise MetadataError(f"{where}: {value!r} is not an update frequency of the EU vocabulary (one of "
                            f"{', '.join(FREQUENCIES)})")
    return Frequency(text, code)


def parse_geocoding(value: Any, where: str) -> Geocoding:
    """A URI of the dcat-ap.de political geocoding vocabulary."""
    text = value.strip() if isinstance(value, str) else ""
    if not text.startswith(GEOCODING_BASE) or len(text) <= len(GEOCODING_BASE) or " " in text:
        raise MetadataError(f"{where}: {value!r} is not a political geocoding URI ({GEOCODING_BASE}…, e.g. "
                            f"{GEOCODING_BASE}stateKey/02)")
    return Geocoding(text)


def parse_agent(value: Any, where: str) -> Agent:
    """A publisher or contact: `{name, url?, email?}`."""
    body = declared(value, where, ("name", "url", "email"), MetadataError, required=("name",),
                    shape="must be a mapping with `name` (and `url`, `email`)")
    name = body["name"]
    if not isinstance(name, str) or not name.strip():
        raise MetadataError(f"{where}.name: must be text")
    url, email = body.get("url"), body.get("email")
    if url is not None and (not isinstance(url, str) or not _URL.match(url)):
        raise MetadataError(f"{where}.url: {url!r} is not an http(s) URL")
    if email is not None and (not isinstance(email, str) or not _EMAIL.match(email)):
        raise MetadataError(f"{where}.email: {email!r} is not an e-mail address")
    return Agent(name.strip(), url, email)


def parse_dataset_metadata(body: dict[str, Any], where: str) -> DatasetMetadata:
    """The catalogue keys of a dataset's declaration (themes, license, updated, political_geocoding)."""
    return DatasetMetadata(
        themes=parse_themes(body["themes"], f"{where}.themes") if "themes" in body else (),
        license=parse_license(body["license"], f"{where}.license") if "license" in body else None,
        updated=parse_frequency(body["updated"], f"{where}.updated") if "updated" in body else None,
        political_geocoding=parse_geocoding(body["political_geocoding"], f"{where}.political_geocoding")
        if "political_geocoding" in body else None)


def parse_catalogue_metadata(doc: dict[str, Any]) -> CatalogueMetadata:
    """The top-level `publisher`, `contact`, `license` and `catalogue` keys of config.yml."""
    cat = declared(doc.get("catalogue") or {}, "catalogue", CATALOGUE_KEYS, MetadataError)
    contributor = cat.get("contributor_id")
    if contributor is not None and (not isinstance(contributor, str) or not contributor.startswith(CONTRIBUTOR_BASE)
                                    or len(contributor) <= len(CONTRIBUTOR_BASE)):
        raise MetadataError(f"catalogue.contributor_id: {contributor!r} is not a URI of the dcat-ap.de contributors "
                            f"vocabulary ({CONTRIBUTOR_BASE}…)")
    homepage = cat.get("homepage")
    if homepage is not None and (not isinstance(homepage, str) or not _URL.match(homepage)):
        raise MetadataError(f"catalogue.homepage: {homepage!r} is not an http(s) URL")
    language = cat.get("language", "en")
    if not isinstance(language, str) or not re.fullmatch(r"[a-z]{2}", language):
        raise MetadataError(f"catalogue.language: {language!r} is not a two-letter language code (en, de, ko)")
    for key in ("title", "description"):
        if key in cat and not isinstance(cat[key], str):
            raise MetadataError(f"catalogue.{key}: must be text")
    return CatalogueMetadata(
        title=cat.get("title"), description=cat.get("description"),
        publisher=parse_agent(doc["publisher"], "publisher") if "publisher" in doc else None,
        contact=parse_agent(doc["contact"], "contact") if "contact" in doc else None,
        license=parse_license(doc["license"], "license") if "license" in doc else None,
        contributor_id=contributor,
        political_geocoding=parse_geocoding(cat["political_geocoding"], "catalogue.political_geocoding")
        if "political_geocoding" in cat else None,
        homepage=homepage, language=language,
        themes=parse_themes(cat["themes"], "catalogue.themes") if "themes" in cat else ())
