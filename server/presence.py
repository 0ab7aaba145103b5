"""Who is inside a session, and what the doors of a session could not know while offline:
pure functions, time passed in, no database.

The server keeps, per (session, code), the attendee's latest presence: inside after an
admission through an entrance (reasons ``registered``, ``reentry``, ``override``), out
after an admission through an exit door (reason ``registered``); rejected scans change
nothing. The latest is the one with the latest door time (``scanned_at``); a tie goes to
the scan received last.

:func:`audit_admissions` takes one device's batch of accepted scans with what the store
holds about their codes, and says how presence changes and which admissions to flag:

* a **double admission**: an entrance admission the door took for a first one
  (``registered``) although another door of the session had admitted the code earlier,
  at a door that forbids re-entry (its latest hello said ``allow_reentry = false``, or
  said nothing). Both orders are checked: a late upload of the earlier admission flags
  the later one already stored.
* **over capacity**: an entrance admission that made the number of people inside (as the
  server counts it, in the order scans reach it) exceed the session's capacity.

:func:`time_in_session` adds up an attendee's stays from their entries and exits.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from core.codes import check_code
from core.rules import Decision, Direction, Reason
from sync.messages import Scan


def instant(stamp: str) -> float:
    """*stamp* (ISO 8601 with a UTC offset) as POSIX seconds, for ordering; a time that
    cannot be placed sorts first (``-inf``) rather than failing a whole batch."""
    try:
        return datetime.fromisoformat(stamp).timestamp()
    except (ValueError, OverflowError, OSError):
        return -math.inf


def is_entry(scan: Scan) -> bool:
    """An admission through an entrance: the attendee is inside after it."""
    return (scan.decision == Decision.ADMITTED and scan.session_id is not None
            and (scan.direction or Direction.IN) == Direction.IN and _recordable(scan.code))


def is_exit(scan: Scan) -> bool:
    """An exit recorded at an exit door: the attendee is out after it."""
    return (scan.decision == Decision.ADMITTED and scan.session_id is not None
            and scan.direction == Direction.OUT and scan.reason == Reason.REGISTERED
            and _recordable(scan.code))


def _recordable(code: str) -> bool:
    """Presence is shared with doors as attendee codes: a code the protocol would not
    carry (only a misbehaving door admits one) is kept out of it."""
    try:
        check_code(code)
    except ValueError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class Presence:
    """A code's latest presence in a session, as stored."""

    inside: bool
    at: str  # the door time of the scan it comes from
    seq: int


@dataclass(frozen=True, slots=True)
class PriorAdmission:
    """An entrance admission of a code of the batch, stored earlier from another door."""

    scan_id: str
    device_id: str
    code: str
    scanned_at: str
    reason: str
    #: Already flagged as a double admission (a flag is kept, never rewritten).
    flagged: bool = False
    #: Its device's latest hello allowed re-entry (``None``/``False``: it forbids).
    reentry_allowed: bool | None = None


@dataclass(slots=True)
class AdmissionAudit:
    """What one batch changes: flags for its own scans (by scan id), flags for scans
    stored before (by scan id), and the presence rows to write (by code: inside, door
    time, and whether the door must be told, i.e. the row is new or ``inside`` changed)."""

    double: dict[str, str] = field(default_factory=dict)
    over_capacity: dict[str, str] = field(default_factory=dict)
    earlier_doubles: dict[str, str] = field(default_factory=dict)
    presence: dict[str, tuple[bool, str, bool]] = field(default_factory=dict)
    #: People inside after the batch, as the server counts them.
    occupancy: int = 0


def double_flag(device_id: str, scan_id: str, scanned_at: str) -> str:
    return f"door {device_id} admitted this code earlier (scan {scan_id} at {scanned_at})"


def capacity_flag(inside: int, capacity: int) -> str:
    return f"{inside} inside, past the capacity of {capacity}"


def audit_admissions(scans: Sequence[Scan], device_id: str, reentry_allowed: bool | None,
                     presence: dict[str, Presence], prior: Iterable[PriorAdmission],
                     occupancy: int, capacity: int | None) -> AdmissionAudit:
    """Audit one device's accepted *scans* (in the order received) of one session.

    *presence*: the stored presence of the batch's codes; *prior*: every other device's
    entrance admission of the batch's codes; *occupancy*: people inside before the batch;
    *capacity*: the session's, ``None`` for no limit.
    """
    audit = AdmissionAudit(occupancy=occupancy)
    by_code: dict[str, list[PriorAdmission]] = {}
    for admission in prior:
        if admission.device_id != device_id:
            by_code.setdefault(admission.code, []).append(admission)
    first_entry: dict[str, Scan] = {}
    state = {code: (p.inside, p.at, instant(p.at)) for code, p in presence.items()}
    for scan in scans:
        entry = is_entry(scan)
        leaving = not entry and is_exit(scan)
        if not (entry or leaving):
            continue
        at = instant(scan.scanned_at)
        if entry:
            _check_double(scan, at, reentry_allowed, by_code.get(scan.code, ()), audit)
            if scan.code not in first_entry or at < instant(first_entry[scan.code].scanned_at):
                first_entry[scan.code] = scan
        old = state.get(scan.code)
        if old is not None and at < old[2]:
            # An older scan uploaded late: the presence it gives is out of date. Its door
            # counted it already (and may count it again over a snapshot, with its other
            # scans not yet uploaded): if it says otherwise, tell the doors again.
            if old[0] != entry:
                audit.presence[scan.code] = (old[0], old[1], True)
            continue
        was_inside = old is not None and old[0]
        state[scan.code] = (entry, scan.scanned_at, at)
        stored = presence.get(scan.code)
        audit.presence[scan.code] = (entry, scan.scanned_at,
                                     stored is None or stored.inside != entry)
        if entry and not was_inside:
            audit.occupancy += 1
            if capacity is not None and audit.occupancy > capacity:
                audit.over_capacity[scan.scan_id] = capacity_flag(audit.occupancy, capacity)
        elif leaving and was_inside:
            audit.occupancy -= 1
    for code, scan in first_entry.items():
        _flag_later(scan, device_id, by_code.get(code, ()), audit)
    return audit


def _check_double(scan: Scan, at: float, reentry_allowed: bool | None,
                  others: Iterable[PriorAdmission], audit: AdmissionAudit) -> None:
    """Flag *scan* if another door admitted its code before it (a tie counts as before:
    that one was received first) and this door, forbidding re-entry, took it for a first."""
    if scan.reason != Reason.REGISTERED or reentry_allowed:
        return
    earlier = [o for o in others if instant(o.scanned_at) <= at]
    if earlier:
        first = min(earlier, key=lambda o: instant(o.scanned_at))
        audit.double[scan.scan_id] = double_flag(first.device_id, first.scan_id,
                                                 first.scanned_at)


def _flag_later(scan: Scan, device_id: str, others: Iterable[PriorAdmission],
                audit: AdmissionAudit) -> None:
    """Flag the stored first admissions at other doors (forbidding re-entry) made after
    *scan*, the batch's earliest admission of the code: uploaded late, it came first."""
    at = instant(scan.scanned_at)
    for other in others:
        if (other.reason == Reason.REGISTERED and not other.flagged
                and not other.reentry_allowed and instant(other.scanned_at) > at):
            audit.earlier_doubles[other.scan_id] = double_flag(device_id, scan.scan_id,
                                                               scan.scanned_at)


def time_in_session(moves: Iterable[tuple[str, bool]], starts_at: str | None,
                    ends_at: str | None, last_scan_at: str | None, now: str) -> int:
    """Seconds an attendee spent in the session, from their admissions: *moves* is
    ``(door time, True for an entry / False for an exit)`` in any order.

    The rule: sorted by time, an entry opens a stay (an entry while inside changes
    nothing), an exit closes the open stay (an exit while out changes nothing). A stay
    still open counts up to the session's end, or, without an end, up to the session's
    last scan (*last_scan_at*); never past *now*. Stays are clipped to the session's
    start and end when it has them: time outside the session is not time in it.
    """
    events = sorted((instant(at), entering) for at, entering in moves)
    low = instant(starts_at) if starts_at else -math.inf
    high = instant(ends_at) if ends_at else math.inf
    total, opened = 0.0, None
    for at, entering in events:
        if entering and opened is None:
            opened = at
        elif not entering and opened is not None:
            total += _overlap(opened, at, low, high)
            opened = None
    if opened is not None:
        until = high if ends_at else (instant(last_scan_at) if last_scan_at else opened)
        total += _overlap(opened, min(until, instant(now)), low, high)
    return int(total)


def _overlap(start: float, end: float, low: float, high: float) -> float:
    """Length of [start, end] within [low, high] (0 when they do not meet)."""
    length = min(end, high) - max(start, low)
    return length if math.isfinite(length) and length > 0 else 0.0
