"""The link relay (the demo's and the chaos run's): relays bytes while up, drops and refuses
connections when cut, and stalls, delays, truncates or flaps as told."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator

import pytest

from checkin.linkproxy import LinkProxy


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(1024):
        writer.write(data)
        await writer.drain()
    writer.close()


async def read(reader: asyncio.StreamReader, timeout: float = 5) -> bytes:
    """What arrives next; b"" when the connection was closed or reset (as a cut does)."""
    try:
        return await asyncio.wait_for(reader.read(1024), timeout)
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


@pytest.fixture
async def proxy() -> AsyncIterator[LinkProxy]:
    """A relay to an echo server."""
    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    proxy = LinkProxy("127.0.0.1", server.sockets[0].getsockname()[1], rng=random.Random(7))
    await proxy.start()
    yield proxy
    await proxy.close()
    server.close()
    await server.wait_closed()


async def test_the_link_relays_is_cut_and_comes_back(proxy: LinkProxy) -> None:
    assert await round_trip(proxy.port, b"hello") == b"hello"

    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"ping")
    assert await read(reader) == b"ping"
    proxy.cut()
    assert await read(reader) == b""  # dropped mid-connection
    assert await round_trip(proxy.port, b"anyone?") == b""  # new connections refused

    proxy.restore()
    assert await round_trip(proxy.port, b"back") == b"back"


async def test_a_cut_without_reset_ends_connections_with_a_fin(proxy: LinkProxy) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"ping")
    assert await read(reader) == b"ping"
    proxy.cut(reset=False)
    assert await asyncio.wait_for(reader.read(1024), 5) == b""  # an end of file, no reset
    writer.close()


async def test_a_stalled_link_holds_the_bytes_until_restored(proxy: LinkProxy) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    proxy.fault("stall")
    writer.write(b"into the void")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.read(1024), 0.3)
    proxy.restore()
    assert await read(reader) == b"into the void"
    writer.close()


async def test_a_delayed_link_relays_late_but_whole(proxy: LinkProxy) -> None:
    proxy.fault("delay")
    started = time.monotonic()
    assert await round_trip(proxy.port, b"slowly") == b"slowly"
    assert time.monotonic() - started >= 0.1  # held 50-400 ms each way


async def test_a_truncating_link_passes_part_of_a_read_then_resets(proxy: LinkProxy) -> None:
    proxy.fault("truncate")
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"x" * 100)
    received = b""
    while chunk := await read(reader):
        received += chunk
    assert len(received) < 100
    writer.close()


async def test_a_flapping_link_resets_every_connection_again_and_again(proxy: LinkProxy) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"ping")
    assert await read(reader) == b"ping"
    resets = await proxy.flap(0.3, pause=(0.02, 0.05))
    assert resets >= 4
    assert await read(reader) == b""  # reset at the first flap
    assert await round_trip(proxy.port, b"again") == b"again"  # reconnects go through
