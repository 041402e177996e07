"""Hostile input to the request handler: random bodies and query options never give a 5xx."""

from __future__ import annotations

import json
from collections.abc import Iterator

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sensorthings.model import ENTITY_TYPES
from sensorthings.service import ApiRequest, Service
from sensorthings.store.base import Store

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
# bodies shaped like entities: real property and navigation names with random values
names = sorted({p.name for e in ENTITY_TYPES for p in e.props} | {n.name for e in ENTITY_TYPES for n in e.navs}
               | {"@iot.id"})
entity_like = st.dictionaries(st.sampled_from(names), json_values | st.fixed_dictionaries({"@iot.id": json_values}),
                              max_size=6)
sets = st.sampled_from([e.set_name for e in ENTITY_TYPES] + ["Things(1)/Datastreams", "Datastreams(1)/Observations",
                                                            "CreateObservations", "$batch", "Things(1)"])
option_text = st.text(alphabet=st.sampled_from(list("abcdeinorstxyz ()',/$;=0123456789-:.TZ[]")), max_size=40)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    store = Store.open(f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'fuzz.db'}")
    svc = Service(store)
    body = {"name": "t", "description": "d", "Locations": [{"name": "l", "description": "d",
            "encodingType": "application/geo+json", "location": {"type": "Point", "coordinates": [1, 2]}}],
            "Datastreams": [{"name": "ds", "description": "d", "observationType": "x", "unitOfMeasurement": {},
                             "Sensor": {"name": "s", "description": "d", "encodingType": "t", "metadata": "m"},
                             "ObservedProperty": {"name": "o", "definition": "d", "description": "d"}}]}
    assert svc.handle(ApiRequest("POST", "Things", body=orjson.dumps(body), base="http://x/v1.1")).status == 201
    yield svc
    store.close()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=sets, body=entity_like | json_values, method=st.sampled_from(["POST", "PATCH", "PUT"]))
def test_random_bodies_never_fail_the_server(service: Service, path: str, body: object, method: str) -> None:
    res = service.handle(ApiRequest(method, path, body=json.dumps(body).encode(), base="http://x/v1.1"))
    assert res.status < 500, res.body


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(option=st.sampled_from(["$filter", "$orderby", "$expand", "$select", "$top", "$skip", "$skiptoken"]),
       text=option_text, path=st.sampled_from(["Things", "Observations", "Datastreams(1)/Observations",
                                               "Locations", "Things(1)"]))
def test_random_query_options_never_fail_the_server(service: Service, option: str, text: str, path: str) -> None:
    res = service.handle(ApiRequest("GET", path, {option: text}, base="http://x/v1.1"))
    assert res.status < 500, (option, text, res.body)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prop=st.sampled_from(["name", "result", "phenomenonTime", "properties/owner", "id", "location",
                             "Datastream/name", "resultTime", "parameters/k"]),
       op=st.sampled_from(["eq", "ne", "gt", "lt", "add", "mod", "div"]),
       value=st.sampled_from(["1", "1.5", "'x'", "null", "true", "2024-01-01T00:00:00Z", "2024-01-01",
                              "geography'POINT(1 2)'", "duration'P1D'", "now()", "name", "result"]))
def test_typed_filter_combinations_never_fail(service: Service, prop: str, op: str, value: str) -> None:
    for path in ("Observations", "Things", "Locations"):
        flt = f"{prop} {op} {value}" if op in ("eq", "ne", "gt", "lt") else f"{prop} {op} {value} eq 1"
        res = service.handle(ApiRequest("GET", path, {"$filter": flt}, base="http://x/v1.1"))
        assert res.status < 500, (path, flt, res.body)
