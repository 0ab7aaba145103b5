"""The door's nudge to the sync daemon: "a scan was recorded", over a datagram socket.

The door and the daemon share the device store, and nothing else: without a
nudge, the daemon would have to look at the store over and over to notice a
new scan. The daemon binds a Unix datagram socket in the data dir
(:data:`WAKE_SOCKET`) with :class:`WakeListener`; the door calls :func:`poke`
after it recorded (and signalled) a scan. A poke is a hint, never a message:
it may be lost (no daemon running, a full socket buffer) and the daemon still
looks at the store now and then, so nothing depends on it arriving.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from pathlib import Path

from core.datagrams import BoundSocket, fits

#: The socket's file name inside the device's data dir.
WAKE_SOCKET = "sync.wake"


def wake_path(data_dir: Path | str) -> Path:
    return Path(data_dir) / WAKE_SOCKET


class Poker:
    """The door's end: one unbound datagram socket, reused for every poke."""

    def __init__(self, data_dir: Path | str) -> None:
        self.path = os.fsencode(wake_path(data_dir))
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.setblocking(False)

    def poke(self) -> bool:
        """Nudge the daemon; say whether the nudge was delivered. Never blocks or raises:
        with no daemon listening (or its buffer full) the daemon finds the scan anyway."""
        if not fits(self.path):
            return False
        try:
            self._socket.sendto(b"!", self.path)
        except OSError:
            return False
        return True

    def close(self) -> None:
        self._socket.close()


class WakeListener:
    """The daemon's end: ``await listener.wait(timeout)`` returns when poked (``True``)
    or after *timeout* seconds (``False``). Pokes that arrive meanwhile coalesce."""

    def __init__(self, data_dir: Path | str) -> None:
        self.path = wake_path(data_dir)
        self._event = asyncio.Event()
        self._bound = BoundSocket(self.path, self._readable)

    def open(self) -> bool:
        """Bind the socket (replacing a stale one a dead daemon left); say whether it
        could be bound. Without it the daemon falls back to looking now and then."""
        return self._bound.open()

    def _readable(self, sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while sock.recv(64):  # drain every poke: one wake serves them all
                pass
        self._event.set()

    async def wait(self, timeout: float) -> bool:
        """Wait for a poke (or *timeout* seconds); say whether one came."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), timeout)
        poked = self._event.is_set()
        self._event.clear()
        return poked

    def set(self) -> None:
        """Wake the waiter from inside the daemon (a result arrived, a link closed)."""
        self._event.set()

    def close(self) -> None:
        self._bound.close()
