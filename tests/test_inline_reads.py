"""Which answers the event loop computes itself (`Service.computes_inline`), on either store: one whose last
computation took little CPU, while none is under way and a connection is free; and what it computes there is what
a service without a cache answers."""

from __future__ import annotations

import orjson

from sensorthings.cache import ResponseCache
from sensorthings.service import INLINE_CPU_S, ApiRequest, Service
from sensorthings.store.base import Store
from tests.test_observation_writes import placed_stream
from tests.test_read_cache import NEWEST


def test_a_cheap_answer_is_computed_on_the_event_loop_on_either_store(store_url: str) -> None:
    store = Store.open(store_url)
    service = Service(store, cache=ResponseCache())
    assert service.cache is not None
    try:
        ds = placed_stream(service, "OM_Measurement")
        for minute in range(3):
            service.call("POST", "Observations", {"result": minute, "phenomenonTime": f"2026-03-01T00:0{minute}Z",
                                                  "Datastream": {"@iot.id": ds}})
        req = ApiRequest("GET", "Observations", params=NEWEST, base="http://udp.local/v1.1")
        plan = service.cache_plan(req)
        assert plan is not None
        assert not service.computes_inline(plan)  # never computed: its cost is not known
        assert service.handle(req).status == 200
        service.cache.note_cost(plan.key, INLINE_CPU_S / 2)
        assert service.computes_inline(plan)
        service.cache.note_cost(plan.key, INLINE_CPU_S * 2)
        assert not service.computes_inline(plan)
        service.cache.note_cost(plan.key, INLINE_CPU_S / 2)

        service.call("POST", "Observations", {"result": 9, "phenomenonTime": "2026-03-01T00:09Z",
                                              "Datastream": {"@iot.id": ds}})
        with store.read() as conn:
            now = store.versions(conn, plan.rows)
        flight, leads = service.cache.board(plan.key, now, plan.rows)
        assert leads and not service.computes_inline(plan)  # one under way: join it instead
        service.cache.land(flight, None)
        assert service.computes_inline(plan)
        answer = service.handle(req, None, now, inline=True)
        assert answer.status == 200
        assert orjson.loads(answer.content()) == Service(store).call("GET", "Observations", **NEWEST)
        assert orjson.loads(answer.content())["value"][0]["result"] == 9

        if store_url.startswith("postgresql"):  # every pooled connection taken: a thread waits for one, not the loop
            # the computation above noted its own CPU time, over the bar on a machine busy enough: cheap again here
            service.cache.note_cost(plan.key, INLINE_CPU_S / 2)
            pool = store.read_engine.pool
            taken = [store.read_engine.connect() for _ in range(pool.size())]  # type: ignore[attr-defined]
            try:
                assert not service.computes_inline(plan)
            finally:
                for conn in taken:
                    conn.close()
            assert service.computes_inline(plan)
    finally:
        store.close()
