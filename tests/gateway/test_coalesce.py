"""CoalescingTransport (raylm.gateway.coalesce): an answer's head goes out with its body
in one send, at once; a write alone goes out right after its step of the loop; close()
sends what was written before it; nothing is written to a transport already closing."""

from __future__ import annotations

import asyncio

from raylm.gateway.coalesce import CoalescingTransport


def test_writes_of_one_step_leave_together_and_close_sends_them_first() -> None:
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
        out.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        out.write(b"")
        assert sends == [], "the head went out alone"
        out.write(b"ok")
        assert sends == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"], "not at once"
        out.write(b"data: 1\n\n")
        assert len(sends) == 1
        await asyncio.sleep(0)
        assert sends[-1] == b"data: 1\n\n", "a write alone waited past its step"
        out.write(b"last")
        out.close()
        assert sends[-1] == b"last", "close() dropped what was written before it"
        await asyncio.sleep(0)
        out.write(b"after close")
        await asyncio.sleep(0)
        assert sends[-1] == b"last"
        for _ in range(50):
            if got.endswith(b"last"):
                break
            await asyncio.sleep(0.01)
        assert bytes(got) == b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokdata: 1\n\nlast"
        server.close()

    asyncio.run(main())
