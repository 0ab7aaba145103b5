"""Where the door's time comes from: the system clock, the server's, or nobody knows.

A Raspberry Pi has no battery-backed clock: booted without network it starts at the
time fake-hwclock last saved, possibly days behind. The door's time is therefore
taken from the best source it has, in order:

1. ``system``: the system clock, when it is synchronised (systemd-timesyncd's marker
   file, else the kernel's word through ``adjtimex``);
2. ``server``: the server's time at the sync daemon's last exchange with it in this
   boot, carried forward on the monotonic clock (which a wrong wall clock, or a step of
   it, does not move);
3. ``unknown``: the system clock all the same, said to be unknown (the scan records
   so; the server re-times it once it hears of an anchor of the same boot).

:func:`door_time` is the pure decision; :func:`synchronized` is the adapter asking the
system, and :func:`synchronized_from` its pure rule.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import enum
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from pathlib import Path

#: systemd-timesyncd creates this file once it has synchronised the clock (it is on a
#: tmpfs: gone at each boot). Tests point ``CHECKIN_TIMESYNC_FILE`` elsewhere.
TIMESYNC_FILE = "/run/systemd/timesync/synchronized"
TIMESYNC_ENV = "CHECKIN_TIMESYNC_FILE"
#: The kernel's clock is trusted when its estimated maximum error is below this.
MAX_KERNEL_ERROR_US = 16_000_000
#: adjtimex's status bit: the clock is not synchronised.
STA_UNSYNC = 0x0040
#: adjtimex's return value for a clock not synchronised.
TIME_ERROR = 5


class TimeSource(enum.StrEnum):
    """Where a decision's time came from (the words of the output contract and stores)."""

    SYSTEM = "system"
    SERVER = "server"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class ClockAnchor:
    """The server's time at one exchange with it, and this device's monotonic clock and
    boot id at that moment: the server's time now is ``server_time`` plus the monotonic
    time since, within the same boot."""

    #: Aware.
    server_time: datetime
    monotonic_ns: int
    boot_id: str


def door_time(synchronized: bool, anchor: ClockAnchor | None, now_wall: datetime,
              now_mono: int, boot: str) -> tuple[TimeSource, datetime]:
    """The door's best time now and where it came from.

    *now_wall* is the system clock (aware), *now_mono* the monotonic clock in ns and
    *boot* this boot's id. The server-carried time is shown in *now_wall*'s time zone.
    """
    if synchronized:
        return TimeSource.SYSTEM, now_wall
    if anchor is not None and anchor.boot_id == boot:
        carried = timedelta(microseconds=(now_mono - anchor.monotonic_ns) // 1000)
        return TimeSource.SERVER, (anchor.server_time + carried).astimezone(now_wall.tzinfo)
    return TimeSource.UNKNOWN, now_wall


def synchronized_from(marker_exists: bool, marker_dir_exists: bool,
                      kernel: bool | None) -> bool:
    """The rule: timesyncd's marker says synchronised; its directory without the marker
    says timesyncd runs and has not synchronised yet (the kernel's flag may be stale from
    an earlier NTP client then); without timesyncd, the kernel's word (``None``: it could
    not be asked, so not synchronised)."""
    if marker_exists:
        return True
    if marker_dir_exists:
        return False
    return bool(kernel)


def kernel_synchronized(state: int, status: int, maxerror_us: int) -> bool:
    """adjtimex's answer read: synchronised when neither the return value nor the status
    says otherwise and the kernel's maximum error estimate is small."""
    return (state != TIME_ERROR and not status & STA_UNSYNC
            and 0 <= maxerror_us < MAX_KERNEL_ERROR_US)


def marker_path() -> Path:
    """timesyncd's marker file, or the one ``$CHECKIN_TIMESYNC_FILE`` names."""
    return Path(os.environ.get(TIMESYNC_ENV) or TIMESYNC_FILE)


def synchronized() -> bool:
    """Whether the system clock is synchronised now (a few system calls: cheap, but the
    door asks at most once a second)."""
    marker = marker_path()
    if marker.exists():
        return True
    if marker.parent.is_dir():
        return False
    return bool(_kernel_says())


class _Timex(ctypes.Structure):
    """``struct timex`` (linux/timex.h); ctypes lays out the padding as the C compiler."""

    _fields_ = [
        ("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long), ("status", ctypes.c_int),
        ("constant", ctypes.c_long), ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long), ("time_sec", ctypes.c_long),
        ("time_usec", ctypes.c_long), ("tick", ctypes.c_long), ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long), ("shift", ctypes.c_int), ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long), ("calcnt", ctypes.c_long), ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long), ("tai", ctypes.c_int),
        # the kernel's reserved words, and room to spare for a wider layout
        ("_reserved", ctypes.c_int * 32),
    ]


@cache
def _adjtimex() -> Callable[..., int] | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        function = libc.adjtimex
    except (OSError, AttributeError, TypeError):
        return None
    function.argtypes = [ctypes.POINTER(_Timex)]
    function.restype = ctypes.c_int
    return function


def _kernel_says() -> bool | None:
    """The kernel's word (adjtimex with modes 0 reads, never sets); ``None`` where
    there is no adjtimex (not Linux) or it fails."""
    function = _adjtimex()
    if function is None:
        return None
    timex = _Timex()
    state = function(ctypes.byref(timex))
    if state < 0:
        return None
    return kernel_synchronized(state, timex.status, timex.maxerror)
