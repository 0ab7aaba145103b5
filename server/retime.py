"""Re-timing scans whose door did not know the time (issue 17): pure decisions.

A Raspberry Pi has no battery-backed clock: booted offline, its wall clock may be days
off, and the door says so (``time_source: "unknown"``). Every scan also carries the
door's monotonic clock and boot id, and every hello gives the server a **clock
anchor**: the server's time as the hello arrived, with the hello's monotonic clock and
boot. The monotonic clock runs on through a boot whatever the wall clock does, so a scan
of the same boot was made, by the server's clock, at::

    anchor.server_time - (anchor.monotonic_ns - scan.monotonic_ns)

(before the hello or after it). The server stores that time as the scan's
``scanned_at`` and keeps the door's own as ``device_scanned_at``, marked
``reconstructed``; a scan with no anchor of its boot yet keeps the door's time,
flagged ``unknown``, until a later hello of that boot brings one
(:func:`retime_stored`). Scans whose time came from the system clock or from the server
are never re-timed.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sync.server_end import ClockAnchor


class Corrected(enum.StrEnum):
    """What the server did with a scan's time (the scan's ``time_corrected``; ``None``
    for a scan whose door knew the time)."""

    #: Re-timed from an anchor of its boot: ``scanned_at`` is the server's reckoning.
    RECONSTRUCTED = "reconstructed"
    #: The door did not know the time and no anchor of its boot has come yet.
    UNKNOWN = "unknown"


#: The time source of a door that did not know the time (``Scan.time_source``).
UNKNOWN_SOURCE = "unknown"


@dataclass(frozen=True, slots=True)
class Timing:
    """How a scan's time is stored: ``scanned_at`` (the time every page and export
    uses), ``device_scanned_at`` (the door's own, kept when it was corrected) and
    ``time_corrected`` (:class:`Corrected`, or ``None``)."""

    scanned_at: str
    device_scanned_at: str | None = None
    time_corrected: Corrected | None = None


def retime(scanned_at: str, time_source: str | None, monotonic_ns: int, boot_id: str,
           anchor: ClockAnchor | None) -> Timing:
    """How a scan made at *scanned_at* (the door's time) with *time_source* (``None``:
    the system's) is stored, given the latest *anchor* known for its device and boot
    (an anchor of another boot is no use: monotonic times are not comparable across
    boots)."""
    if time_source != UNKNOWN_SOURCE:
        return Timing(scanned_at)
    made = reckon(monotonic_ns, anchor) if anchor is not None and anchor.boot_id == boot_id \
        else None
    if made is None:
        return Timing(scanned_at, None, Corrected.UNKNOWN)
    return Timing(made, scanned_at, Corrected.RECONSTRUCTED)


def reckon(monotonic_ns: int, anchor: ClockAnchor) -> str | None:
    """The server's time at monotonic time *monotonic_ns* of the anchor's boot, as UTC
    text with milliseconds; ``None`` when it falls outside the years a time can have
    (monotonic times no boot could have lasted)."""
    try:
        made = anchor.server_time - timedelta(
            microseconds=(anchor.monotonic_ns - monotonic_ns) / 1000)
        return made.astimezone(UTC).isoformat(timespec="milliseconds")
    except OverflowError:
        return None


@dataclass(frozen=True, slots=True)
class StoredScan:
    """A stored scan still flagged ``unknown``: its id, the door's time (its
    ``scanned_at``, never corrected yet), monotonic time and boot."""

    scan_id: str
    scanned_at: str
    monotonic_ns: int
    boot_id: str


def retime_stored(scans: Iterable[StoredScan], anchor: ClockAnchor) -> dict[str, Timing]:
    """The scans among *scans* that *anchor* re-times (those of its boot whose time it
    can reckon), by id, with their new timing; the others stay ``unknown``."""
    timings = {}
    for scan in scans:
        timing = retime(scan.scanned_at, UNKNOWN_SOURCE, scan.monotonic_ns, scan.boot_id,
                        anchor)
        if timing.time_corrected is Corrected.RECONSTRUCTED:
            timings[scan.scan_id] = timing
    return timings


def anchor_from_row(boot_id: str, monotonic_ns: int, server_time: str) -> ClockAnchor:
    """A stored anchor (``clock_anchors`` row) as a :class:`ClockAnchor`."""
    return ClockAnchor(boot_id, monotonic_ns, datetime.fromisoformat(server_time))


def anchor_row(anchor: ClockAnchor) -> tuple[str, int, str]:
    """(boot id, monotonic ns, server time as UTC text) to store: to the microsecond, so
    a scan re-timed later from the stored anchor gets the time it would have got at once."""
    return (anchor.boot_id, anchor.monotonic_ns,
            anchor.server_time.astimezone(UTC).isoformat(timespec="microseconds"))
