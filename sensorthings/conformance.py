"""The requirement classes of OGC 18-088 (SensorThings API 1.1, Annex A) the server meets, named by their URIs
in the service root's `serverSettings.conformance`: generated from what is built (the entity model, the query
options the parser reads), so a class is listed exactly while what it requires exists."""

from __future__ import annotations

import re

from sensorthings.model import ENTITY_TYPES, MULTI_DATASTREAM
from sensorthings.query.parser import QUERY_OPTIONS

REQ = "http://www.opengis.net/spec/iot_sensing/1.1/req/"
MQTT_CREATE = REQ + "create-observations-via-mqtt/observations-creation"
MQTT_RECEIVE = REQ + "receive-updates-via-mqtt/receive-updates"

# request-data classes beyond one per query option: status codes, the order options apply in, the operators and
# functions of $filter (all of 18-088's, geospatial included: sensorthings.query.tree.FUNCTIONS), nextLinks
_REQUEST_DATA = ("status-code", "query-status-code", "order", "built-in-filter-operations", "built-in-query-functions",
                 "pagination")
_CREATE_UPDATE_DELETE = ("create-entity", "link-to-existing-entities", "deep-insert", "deep-insert-status-code",
                         "update-entity", "update-entity-put", "update-entity-jsonpatch", "delete-entity",
                         "historical-location-auto-creation", "historical-location-manual-creation")


def _kebab(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "-", name).lower()


def conformance() -> list[str]:
    """Every 1.1 requirement class of the HTTP API; the MQTT classes (MQTT_CREATE, MQTT_RECEIVE) come with a
    broker (sensorthings.mqtt.notify.mqtt_conformance)."""
    # the whole data model first, as FROST-Server lists it too: clients look for it
    out = [REQ + "datamodel", REQ + "datamodel/entity-control-information/common-control-information"]
    for entity in ENTITY_TYPES:
        if entity is not MULTI_DATASTREAM:  # the MultiDatastream extension has classes of its own, below
            out += [f"{REQ}datamodel/{_kebab(entity.name)}/properties",
                    f"{REQ}datamodel/{_kebab(entity.name)}/relations"]
    out.append(REQ + "resource-path/resource-path-to-entities")
    # $resultFormat=dataArray belongs to the data-array class
    out += [f"{REQ}request-data/{option[1:].lower()}" for option in QUERY_OPTIONS if option != "$resultFormat"]
    out += [f"{REQ}request-data/{name}" for name in _REQUEST_DATA]
    out += [f"{REQ}create-update-delete/{name}" for name in _CREATE_UPDATE_DELETE]
    out.append(REQ + "batch-request/batch-request")
    out += [f"{REQ}multi-datastream/{name}" for name in ("properties", "relations", "constraints")]
    out.append(REQ + "data-array/data-array")
    return out
