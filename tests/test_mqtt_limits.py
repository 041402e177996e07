"""MQTT topic subscriptions are held to the same `server:` query limits as HTTP GETs (server.max_top,
server.max_expand_depth), on a platform of their own: the subscriptions they leave on the embedded broker must not
meet other tests' clients."""

from __future__ import annotations

import time

from tests.conftest import Server
from tests.test_hostile import city  # noqa: F401 (a fixture: the platform with tight limits, for this module)
from tests.test_mqtt import Listener, wait_subscribed


def test_mqtt_topic_queries_meet_the_same_limits(city: Server) -> None:  # noqa: F811 (the fixture)
    """A subscription's query options are held to server.max_top and server.max_expand_depth like a GET's:
    topics within them are answered, topics beyond them never (they used to be parsed with the parser's
    own defaults: 10,000 and 50 levels)."""
    within = ["v1.1/Observations?$expand=Datastream/Thing/Locations",
              "v1.1/Observations?$expand=Datastream($expand=Observations($top=500;$select=result))"]
    beyond = ["v1.1/Observations?$expand=Datastream/Thing/Datastreams/Thing",
              "v1.1/Observations?$expand=Datastream($expand=Observations($top=501))"]
    for topic in beyond:  # what the same query gets over HTTP
        path, _, query = topic.partition("?")
        r = city.client.get(f"/{path}", params=dict([query.split("=", 1)]))
        assert r.status_code == 400 and "server.max_" in r.json()["message"], r.text
    listener = Listener("127.0.0.1", city.mqtt_port, within + beyond)  # type: ignore[arg-type]
    try:
        wait_subscribed(city.url, within + beyond)
        ds = city.client.get("/v1.1/Datastreams", params={"$top": "1"}).json()["value"][0]["@iot.id"]
        r = city.client.post(f"/v1.1/Datastreams({ds})/Observations",
                             json={"result": 7, "phenomenonTime": "2024-05-02T00:00:00Z"})
        assert r.status_code == 201, r.text
        first = listener.wait(within[0])
        assert first["result"] == 7 and first["Datastream"]["Thing"]["Locations"][0]["name"] == "here"
        assert listener.wait(within[1])["Datastream"]["Observations"]
        # one publish pass answers every topic: what has not come with the answered ones does not come later
        time.sleep(1)
        got = {t for t, _ in listener.backlog} | {listener.messages.get()[0] for _ in range(listener.messages.qsize())}
        assert not got & set(beyond), got
    finally:
        listener.close()
