"""A TCP relay between a door's sync daemon and the server, with faults on demand.

The demo puts one in front of the server for a door, so that the door can be cut off
and reconnected at will, as a pulled cable or a failed Wi-Fi would; the chaos run
(tests/chaos.py) puts one in front of every door and breaks it in each way a network
does:

- :meth:`LinkProxy.cut`: every relayed connection ends at once (a RST, or a FIN with
  ``reset=False``) and new ones are refused, until :meth:`LinkProxy.restore`;
- :meth:`LinkProxy.fault`: ``"stall"``, bytes go nowhere for now (a black hole);
  ``"delay"``, each read waits 50-400 ms before it is passed on; ``"truncate"``, the
  next read is passed on in part (a frame cut in the middle) and the connection reset;
- :meth:`LinkProxy.flap`: every relayed connection reset every few tens of
  milliseconds for a while, reconnects let through in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from typing import Literal

#: What the link does to the bytes it relays; ``"down"`` refuses connections.
Mode = Literal["up", "down", "stall", "delay", "truncate"]


class LinkProxy:
    """Relays connections on a local port to ``(host, port)``, faults as told."""

    def __init__(self, host: str, port: int, *, rng: random.Random | None = None) -> None:
        self.upstream = (host, port)
        self.rng = rng or random.Random()
        self.mode: Mode = "up"
        self.port = 0
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on *host*:*port* (0: any free port); return the port."""
        self._server = await asyncio.start_server(self._relay, host, port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    def cut(self, *, reset: bool = True) -> None:
        """End every relayed connection now (a RST, or a FIN) and refuse new ones."""
        self.mode = "down"
        self.drop(reset=reset)

    def fault(self, mode: Literal["stall", "delay", "truncate"]) -> None:
        """Stall, delay or truncate what is relayed from now on."""
        self.mode = mode

    def restore(self) -> None:
        """Relay every byte again, and accept connections."""
        self.mode = "up"

    def drop(self, *, reset: bool = True) -> None:
        """End every relayed connection now: a RST (*reset*) or a FIN."""
        for writer in list(self._open):
            if reset:
                writer.transport.abort()
            else:
                writer.close()

    async def flap(self, seconds: float, pause: tuple[float, float] = (0.02, 0.08)) -> int:
        """Reset every relayed connection after a pause drawn from *pause* (in seconds),
        again and again for *seconds*; return how many times."""
        end = time.monotonic() + seconds
        resets = 0
        while time.monotonic() < end:
            await asyncio.sleep(self.rng.uniform(*pause))
            self.drop(reset=True)
            resets += 1
        return resets

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _relay(self, client_reader: asyncio.StreamReader,
                     client_writer: asyncio.StreamWriter) -> None:
        if self.mode == "down":
            client_writer.transport.abort()
            return
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_writer.transport.abort()
            return
        self._open |= {client_writer, server_writer}
        try:
            await asyncio.gather(self._pipe(client_reader, server_writer),
                                 self._pipe(server_reader, client_writer))
        finally:
            self._open -= {client_writer, server_writer}
            for writer in (client_writer, server_writer):
                writer.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                while self.mode == "stall":
                    await asyncio.sleep(0.05)
                if self.mode == "delay":
                    await asyncio.sleep(self.rng.uniform(0.05, 0.4))
                if self.mode == "truncate" and len(data) > 1:
                    writer.write(data[:self.rng.randrange(1, len(data))])  # part of a frame
                    await writer.drain()
                    writer.transport.abort()
                    return
                writer.write(data)
                await writer.drain()
        writer.transport.abort()  # one side ended: end the other (no half-open links)
