"""The door's three notions of time: wall clock, monotonic clock and boot id.

A scan records all three: wall time for people, monotonic time plus the boot
id to order scans on one device even when NTP steps the wall clock.
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime
from functools import cache
from pathlib import Path

_BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")


def wall_now() -> datetime:
    """The current local time, aware (it carries its UTC offset)."""
    return datetime.now().astimezone()


def monotonic_ns() -> int:
    return time.monotonic_ns()


@cache
def boot_id() -> str:
    """The kernel's boot id; monotonic times are comparable only within one boot.

    Where the kernel does not provide one, a random id per process stands in:
    comparable within the process, never confused with another boot's.
    """
    try:
        return _BOOT_ID_FILE.read_text().strip()
    except OSError:
        return f"process-{uuid.uuid4()}"


def wall_stamp() -> str:
    """The current local time as ISO 8601 text with milliseconds and UTC offset."""
    return wall_now().isoformat(timespec="milliseconds")
