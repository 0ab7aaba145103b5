"""systemd's notify protocol: READY=1 and WATCHDOG=1 as datagrams to ``$NOTIFY_SOCKET``.

A no-op when not run by systemd, so the door behaves the same from a shell.
"""

from __future__ import annotations

import os
import socket


def notify(message: str) -> bool:
    """Send *message* (e.g. ``"READY=1"``) to systemd; say whether it was sent."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract socket namespace
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message.encode(), address)
    except OSError:
        return False
    return True
