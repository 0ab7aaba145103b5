"""The demo's cuttable link: relays bytes while up, drops and refuses connections when cut."""

from __future__ import annotations

import asyncio

from checkin.linkproxy import LinkProxy


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(1024):
        writer.write(data)
        await writer.drain()
    writer.close()


async def read(reader: asyncio.StreamReader) -> bytes:
    """What arrives next; b"" when the connection was closed or reset (as a cut does)."""
    try:
        return await asyncio.wait_for(reader.read(1024), 5)
    except ConnectionResetError:
        return b""


async def round_trip(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
    except ConnectionResetError:
        return b""
    answer = await read(reader)
    writer.close()
    return answer


async def test_the_link_relays_is_cut_and_comes_back() -> None:
    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    proxy = LinkProxy("127.0.0.1", server.sockets[0].getsockname()[1])
    port = await proxy.start()
    try:
        assert await round_trip(port, b"hello") == b"hello"

        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"ping")
        assert await read(reader) == b"ping"
        proxy.cut()
        assert await read(reader) == b""  # dropped mid-connection
        assert await round_trip(port, b"anyone?") == b""  # new connections refused

        proxy.restore()
        assert await round_trip(port, b"back") == b"back"
    finally:
        await proxy.close()
        server.close()
        await server.wait_closed()
