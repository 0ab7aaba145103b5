"""A TCP relay between a door's sync daemon and the server, with a switch to cut it.

The demo (and the tests) put one in front of the server for a door, so that
the door can be cut off and reconnected at will, as a pulled cable or a
failed Wi-Fi would: :meth:`LinkProxy.cut` drops every open connection and
refuses new ones until :meth:`LinkProxy.restore`.
"""

from __future__ import annotations

import asyncio
import contextlib


class LinkProxy:
    """Relays connections on a local port to ``(host, port)`` while the link is up."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.up = True
        self.port = 0
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on *host*:*port* (0: any free port); return the port."""
        self._server = await asyncio.start_server(self._relay, host, port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    def cut(self) -> None:
        """Drop every relayed connection now and refuse new ones."""
        self.up = False
        for writer in list(self._open):
            writer.transport.abort()

    def restore(self) -> None:
        self.up = True

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _relay(self, client_reader: asyncio.StreamReader,
                     client_writer: asyncio.StreamWriter) -> None:
        if not self.up:
            client_writer.transport.abort()
            return
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_writer.transport.abort()
            return
        self._open |= {client_writer, server_writer}
        try:
            await asyncio.gather(_pipe(client_reader, server_writer),
                                 _pipe(server_reader, client_writer))
        finally:
            self._open -= {client_writer, server_writer}
            for writer in (client_writer, server_writer):
                writer.transport.abort()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.transport.abort()  # one side ended: end the other (no half-open links)
