"""CoalescingTransport (raylm.gateway.coalesce): what one step of the loop writes leaves
in one send, right after that step; close() sends what was written before it; nothing is
written to a transport that is already closing."""

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
        out.write(b"ok")
        assert sends == [], "written before the step ended"
        await asyncio.sleep(0)
        assert sends == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"]
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
        assert bytes(got) == b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\noklast"
        server.close()

    asyncio.run(main())
