"""How a request's handler learns that its client left (raylm.gateway.body): the
connection's Departure cancels the work at once, with no task awaiting `http.disconnect`;
a client gone before the work began stops it at its first wait; without a Departure
(another ASGI server) the `http.disconnect` message does it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from gateway_harness import (
    MODEL,
    RunningGateway,
    raw_request,
    replica,
    start_faulty_replica,
    wait_for,
)

from raylm.gateway.body import DEPARTURE, ClientGone, Departure, unless_client_leaves


async def _never_called() -> dict[str, Any]:
    raise AssertionError("receive() was called: a watcher task is still used")


def test_the_departure_cancels_the_work_when_the_client_leaves() -> None:
    async def main() -> None:
        departure = Departure()
        stopped = asyncio.Event()

        async def work() -> str:
            try:
                await asyncio.sleep(30)
            finally:
                stopped.set()
            return "done"

        asyncio.get_running_loop().call_later(0.05, departure.left)
        with pytest.raises(ClientGone):
            await unless_client_leaves(work(), _never_called, {DEPARTURE: departure})
        assert stopped.is_set() and departure.on_gone is None

    asyncio.run(main())


def test_a_client_gone_before_the_work_began_stops_it_at_its_first_wait() -> None:
    async def main() -> None:
        departure = Departure()
        departure.left()
        with pytest.raises(ClientGone):
            await unless_client_leaves(asyncio.sleep(30), _never_called, {DEPARTURE: departure})

    asyncio.run(main())


def test_finished_work_leaves_nothing_behind() -> None:
    async def main() -> None:
        departure = Departure()
        assert (
            await unless_client_leaves(
                asyncio.sleep(0, "ok"), _never_called, {DEPARTURE: departure}
            )
            == "ok"
        )
        assert departure.on_gone is None
        departure.left()  # the connection closing later cancels nothing

    asyncio.run(main())


def test_without_a_departure_the_disconnect_message_cancels_the_work() -> None:
    async def main() -> None:
        async def receive() -> dict[str, Any]:
            await asyncio.sleep(0.05)
            return {"type": "http.disconnect"}

        with pytest.raises(ClientGone):
            await unless_client_leaves(asyncio.sleep(30), receive, {})

    asyncio.run(main())


def test_the_gateway_connection_tells_the_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    # Through the real server: a client that leaves while a silent replica keeps its
    # request is noticed by the connection itself (the fallback watcher is never used).
    import raylm.gateway.body as body

    async def no_watcher(receive: Any) -> None:
        raise AssertionError("the fallback watcher ran")

    monkeypatch.setattr(body, "wait_disconnect", no_watcher)
    with RunningGateway([]) as gw:
        server, url = gw.call(start_faulty_replica("silent"))
        gw.source.set([replica(url, "mute")])
        gw.call(gw.gateway.refresh())
        payload = b'{"model":"%s","prompt":"Hi","max_tokens":2}' % MODEL.encode()
        with raw_request(gw.url, "/v1/completions", payload):
            wait_for(lambda: gw.gateway.active_requests == 1, 10)
        wait_for(lambda: gw.gateway.active_requests == 0, 5)
        assert gw.metric("raylm_requests_total", route="completions", status="499") == 1
        gw.close_server(server)
