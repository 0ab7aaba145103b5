"""Flagging scans for the organizer's review: offline scans the server would have
decided otherwise, and scans stamped by a device clock that was off.

A door decides on its cache, which may be minutes or hours old when it is
offline. The server records the door's verdict as the fact it is and, beside
it, notes a disagreement when its own data says otherwise about the two rules
that depend on synced data: is the code an attendee, and is it a registrant
of a session with Validate Registrants on. The rules are the door's own
(:func:`core.rules.decide`), applied to the server's data.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from core.rules import Decision, Direction, Facts, Policy, Reason, SessionRules, decide
from sync.messages import CLOCK_TOLERANCE_SECONDS, Scan
from sync.server_end import ClockAnchor

#: The reasons that depend on the registrant data alone.
_MEMBERSHIP = frozenset({Reason.REGISTERED, Reason.REENTRY, Reason.UNKNOWN_CODE,
                         Reason.NOT_REGISTERED})


def disagreement(scan: Scan, validate_registrants: bool, is_attendee: bool,
                 is_registrant: bool) -> str | None:
    """Say what the server would have decided, if it differs from the door's verdict.

    Exits are left alone: an exit door refuses nobody, and a person leaving is no
    admission the server could have refused."""
    if (scan.reason not in _MEMBERSHIP or scan.session_id is None
            or scan.direction == Direction.OUT):
        return None
    # Time window and re-entry are the door's policy and clock: leave them out.
    rules = SessionRules(scan.session_id, validate_registrants)
    facts = Facts(rules, is_attendee=is_attendee, is_registrant=is_registrant)
    server = decide(True, facts, Policy(allow_reentry=True), datetime.now().astimezone())
    if server.admitted == (scan.decision == Decision.ADMITTED):
        return None
    return f"server data says {server.value}"


def clock_flag(scan: Scan, anchor: ClockAnchor | None) -> str | None:
    """Say how far off the device's clock was, if it was off, for a scan made online.

    A scan made after the device said hello on this connection (same boot, later
    monotonic time) was made at the hello's server time plus the monotonic time
    elapsed, by the server's clock; a scanned_at more than
    :data:`CLOCK_TOLERANCE_SECONDS` from that is flagged. Scans made before (offline,
    or on an earlier connection) cannot be told apart from late uploads: left alone.
    """
    if anchor is None or scan.boot_id != anchor.boot_id or scan.monotonic_ns < anchor.monotonic_ns:
        return None
    made = anchor.server_time + timedelta(microseconds=(scan.monotonic_ns
                                                        - anchor.monotonic_ns) / 1000)
    try:
        skew = (datetime.fromisoformat(scan.scanned_at) - made).total_seconds()
    except OverflowError:  # a device time near year 1 or 9999
        return "device clock unusable: scan time out of range"
    if abs(skew) <= CLOCK_TOLERANCE_SECONDS:
        return None
    return (f"device clock {abs(skew):.1f} s {'ahead of' if skew > 0 else 'behind'} the "
            "server's when scanned online")
