"""systemd's notify protocol: READY=1, WATCHDOG=1 and STOPPING=1 as datagrams to
``$NOTIFY_SOCKET``, and the watchdog's interval from ``$WATCHDOG_USEC``.

A no-op when not run by systemd, so every process behaves the same from a shell.
Here in core so the door, the sync daemon and the server share one implementation.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator, Mapping


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


def watchdog_seconds(environ: Mapping[str, str], pid: int) -> float | None:
    """Seconds between two WATCHDOG=1 for this process, or ``None`` when systemd
    expects none: half of ``$WATCHDOG_USEC`` (sd_watchdog_enabled's advice), and only
    when ``$WATCHDOG_PID``, if set, is *pid* (a child that inherited the environment
    must not pet for its parent)."""
    owner = environ.get("WATCHDOG_PID")
    if owner is not None and owner.strip() != str(pid):
        return None
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 2e6 if usec > 0 else None


async def pet_watchdog(every: float) -> None:
    """Send WATCHDOG=1 now and every *every* seconds, until cancelled.

    A task on the caller's event loop: when that loop is wedged (a blocking call, a
    busy loop), the pets stop and systemd restarts the process.
    """
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(every)


@contextlib.asynccontextmanager
async def ready_and_watched() -> AsyncIterator[None]:
    """Tell systemd the process is up, pet its watchdog while the block runs (if the
    unit has ``WatchdogSec=``), and say STOPPING=1 when the block ends."""
    every = watchdog_seconds(os.environ, os.getpid())
    petting = asyncio.create_task(pet_watchdog(every)) if every else None
    notify("READY=1")
    try:
        yield
    finally:
        notify("STOPPING=1")
        if petting is not None:
            petting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await petting
