"""A Unix datagram socket bound to a file, read on the event loop.

The door and its sync daemon share nothing but the data dir (the door's unit has
``PrivateNetwork=`` and ``PrivateTmp=``), so the sockets they nudge each other
through are files in it: :mod:`sync.wake` (door -> daemon) and
:mod:`device.selftest` (doctor -> door). This is their one bound end.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable
from pathlib import Path

#: Longest socket path Linux takes (``sun_path`` is 108 bytes, with its NUL).
MAX_SOCKET_PATH = 107


def fits(path: Path | str) -> bool:
    """Whether *path* is short enough to name a Unix socket."""
    return len(os.fsencode(path)) <= MAX_SOCKET_PATH


class BoundSocket:
    """A datagram socket bound to *path*; *readable* is called (on the event loop, with
    the socket) whenever datagrams are waiting. :meth:`open` binds it, replacing a stale
    file a dead process left; :meth:`close` unbinds it and removes the file."""

    def __init__(self, path: Path, readable: Callable[[socket.socket], None]) -> None:
        self.path = path
        self._readable = readable
        self.socket: socket.socket | None = None

    def open(self) -> bool:
        """Bind; say whether it could be bound (a path too long, a folder not writable)."""
        if not fits(self.path):
            return False
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            sock.bind(os.fsencode(self.path))
            sock.setblocking(False)
        except OSError:
            sock.close()
            return False
        self.socket = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._readable, sock)
        return True

    def close(self) -> None:
        if self.socket is None:
            return
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(self.socket.fileno())
        self.socket.close()
        self.socket = None
        with contextlib.suppress(OSError):
            self.path.unlink()
