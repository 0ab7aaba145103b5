"""The Validate Registrants decision: code + cached facts + policy -> verdict.

The functional core of the door, and the rules the server's audit applies to
its own data: :func:`decide` is a pure function of its arguments, tested
exhaustively without a camera, a database or a clock.

The rules, in order (first match wins):

==============================================  ==========  ==================
condition                                       decision    reason
==============================================  ==========  ==================
payload is not a valid code                     rejected    ``invalid_code``
no registrant list synced yet (or no storage)   rejected    ``not_ready``
code is not an attendee of the event            rejected    ``unknown_code``
Validate Registrants on, not a registrant       rejected    ``not_registered``
outside the session's time window (if set)      rejected    ``outside_window``
admitted before, re-entry forbidden             rejected    ``already_admitted``
admitted before                                 admitted    ``reentry``
otherwise                                       admitted    ``registered``
==============================================  ==========  ==================
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta


class Decision(enum.StrEnum):
    """The door's verdict (the words of the output contract and of the stores)."""

    ADMITTED = "admitted"
    REJECTED = "rejected"


class Reason(enum.StrEnum):
    """Why the door decided as it did (the words of the output contract)."""

    REGISTERED = "registered"
    REENTRY = "reentry"
    INVALID_CODE = "invalid_code"
    NOT_READY = "not_ready"
    UNKNOWN_CODE = "unknown_code"
    NOT_REGISTERED = "not_registered"
    OUTSIDE_WINDOW = "outside_window"
    ALREADY_ADMITTED = "already_admitted"

    @property
    def admitted(self) -> bool:
        return self in (Reason.REGISTERED, Reason.REENTRY)

    @property
    def decision(self) -> Decision:
        return Decision.ADMITTED if self.admitted else Decision.REJECTED


@dataclass(frozen=True, slots=True)
class SessionRules:
    """The settings of the door's session, as synced from the server."""

    session_id: str
    validate_registrants: bool
    starts_at: datetime | None = None
    ends_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Facts:
    """What the local cache knows about one code, looked up in one query.

    ``session`` is ``None`` while no registrant list has been synced.
    """

    session: SessionRules | None
    is_attendee: bool = False
    is_registrant: bool = False
    admitted_before: bool = False

    @property
    def session_id(self) -> str | None:
        return self.session.session_id if self.session else None


@dataclass(frozen=True, slots=True)
class Policy:
    """The door's own policy, from its config file."""

    allow_reentry: bool = True
    #: How long before ``starts_at`` the door already lets people in.
    open_before: timedelta = timedelta(minutes=15)


def decide(valid_code: bool, facts: Facts, policy: Policy, now: datetime) -> Reason:
    """Decide one scan. *now* is the device's aware wall-clock time."""
    if not valid_code:
        return Reason.INVALID_CODE
    session = facts.session
    if session is None:
        return Reason.NOT_READY
    if not facts.is_attendee:
        return Reason.UNKNOWN_CODE
    if session.validate_registrants and not facts.is_registrant:
        return Reason.NOT_REGISTERED
    if not _inside_window(session, policy, now):
        return Reason.OUTSIDE_WINDOW
    if facts.admitted_before:
        return Reason.REENTRY if policy.allow_reentry else Reason.ALREADY_ADMITTED
    return Reason.REGISTERED


def _inside_window(session: SessionRules, policy: Policy, now: datetime) -> bool:
    if session.starts_at is not None and now < session.starts_at - policy.open_before:
        return False
    return session.ends_at is None or now <= session.ends_at
