"""Flagging offline scans the server would have decided otherwise.

A door decides on its cache, which may be minutes or hours old when it is
offline. The server records the door's verdict as the fact it is and, beside
it, notes a disagreement when its own data says otherwise about the two rules
that depend on synced data: is the code an attendee, and is it a registrant
of a session with Validate Registrants on. The rules are the door's own
(:func:`device.decision.decide`), applied to the server's data.
"""

from __future__ import annotations

from datetime import datetime

from device.decision import Facts, Policy, Reason, SessionRules, decide
from sync.messages import Scan

#: The reasons that depend on the registrant data alone.
_MEMBERSHIP = frozenset({Reason.REGISTERED, Reason.REENTRY, Reason.UNKNOWN_CODE,
                         Reason.NOT_REGISTERED})


def disagreement(scan: Scan, validate_registrants: bool, is_attendee: bool,
                 is_registrant: bool) -> str | None:
    """Say what the server would have decided, if it differs from the door's verdict."""
    if scan.reason not in _MEMBERSHIP or scan.session_id is None:
        return None
    # Time window and re-entry are the door's policy and clock: leave them out.
    rules = SessionRules(scan.session_id, validate_registrants)
    facts = Facts(rules, is_attendee=is_attendee, is_registrant=is_registrant)
    server = decide(True, facts, Policy(allow_reentry=True), datetime.now().astimezone())
    if server.admitted == (scan.decision == "admitted"):
        return None
    return f"server data says {server.value}"
