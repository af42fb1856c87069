"""CoalescingTransport (raylm.gateway.coalesce): an answer's head goes out with the write
after it in one send, at once; a head alone goes out right after its step of the loop;
any other write goes out at once; close() sends what was written before it."""

from __future__ import annotations

import asyncio

from raylm.gateway.coalesce import CoalescingTransport

HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


def test_a_head_leaves_with_the_next_write_and_other_writes_at_once() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        got = bytearray()

        class _Peer(asyncio.Protocol):
            def data_received(self, data: bytes) -> None:
                got.extend(data)

        server = await loop.create_server(_Peer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        transport, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
        sends: list[bytes] = []
        real_write = transport.write

        def counted(data: bytes | bytearray | memoryview) -> None:
            sends.append(bytes(data))
            real_write(data)

        transport.write = counted  # type: ignore[method-assign]
        out = CoalescingTransport(transport)
        # A whole answer: one send, at once.
        out.write(HEAD)
        out.write(b"")
        assert sends == [], "the head went out alone"
        out.write(b"ok")
        assert sends == [HEAD + b"ok"], "head and body not sent together at once"
        # A stream: its head alone after the step, its events at once.
        out.write(HEAD)
        assert len(sends) == 1
        await asyncio.sleep(0)
        assert sends[-1] == HEAD, "a head alone waited past its step"
        out.write(b"data: 1\n\n")
        assert sends[-1] == b"data: 1\n\n", "an event waited"
        # close() sends a held head first.
        out.write(HEAD)
        out.close()
        assert sends[-1] == HEAD, "close() dropped what was written before it"
        want = HEAD + b"ok" + HEAD + b"data: 1\n\n" + HEAD
        for _ in range(50):
            if len(got) >= len(want):
                break
            await asyncio.sleep(0.01)
        assert bytes(got) == want
        server.close()

    asyncio.run(main())
