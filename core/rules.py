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
a time window set, the time unknown, "refuse"   rejected    ``time_unknown``
admitted before, re-entry forbidden             rejected    ``already_admitted``
not inside, session at its capacity (if set)    rejected    ``full``
admitted before                                 admitted    ``reentry``
otherwise                                       admitted    ``registered``
==============================================  ==========  ==================

"Admitted before" counts every door of the session whose admissions the door has
heard of (its own, and the others' as the server shared them). An exit door
(``Policy.direction`` is ``out``) applies only the first four rules: nobody is held
back on the way out, and an exit is recorded as ``registered`` (decision admitted,
the person is no longer inside) or with the reason the code is not one of ours.
A staff override (``override``) is not decided here: it is the door's answer to a
button press after a rejection.

When the door does not know the time (``Facts.time_known`` false: its clock is not
synchronised and it has no server time from this boot, :mod:`core.timesource`), a session
time window cannot be checked: ``Policy.unknown_time`` says what the door does then,
``admit`` (decide as if inside the window; the door says the time was unknown) or
``refuse`` (``time_unknown``). Without a window the time does not matter.
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
    FULL = "full"
    #: The session has a time window, the door does not know the time, and its policy
    #: (``[door] unknown_time = "refuse"``) refuses then.
    TIME_UNKNOWN = "time_unknown"
    #: Staff pressed the override button after a rejection: admitted all the same.
    OVERRIDE = "override"

    @property
    def admitted(self) -> bool:
        return self in (Reason.REGISTERED, Reason.REENTRY, Reason.OVERRIDE)

    @property
    def decision(self) -> Decision:
        return Decision.ADMITTED if self.admitted else Decision.REJECTED


class Direction(enum.StrEnum):
    """Which way a door lets people through (``[door] direction``)."""

    IN = "in"
    OUT = "out"


class UnknownTime(enum.StrEnum):
    """What a door does with a session time window while it does not know the time
    (``[door] unknown_time``)."""

    #: Decide as if inside the window (the door says the time was unknown).
    ADMIT = "admit"
    #: Reject, ``time_unknown``.
    REFUSE = "refuse"


@dataclass(frozen=True, slots=True)
class SessionRules:
    """The settings of the door's session, as synced from the server."""

    session_id: str
    validate_registrants: bool
    starts_at: datetime | None = None
    ends_at: datetime | None = None
    #: Most people inside at once (distinct attendees admitted, less those who left
    #: through an exit door); ``None``: no limit.
    capacity: int | None = None


@dataclass(frozen=True, slots=True)
class Facts:
    """What the local cache knows about one code, looked up in one query.

    ``session`` is ``None`` while no registrant list has been synced.
    """

    session: SessionRules | None
    is_attendee: bool = False
    is_registrant: bool = False
    admitted_before: bool = False
    #: The code is counted inside now (admitted, and not out through an exit since).
    inside: bool = False
    #: How many people the door counts inside: what the server last told it plus the
    #: door's own admissions since.
    occupancy: int = 0
    #: The door knows the time (its clock is synchronised, or carries the server's).
    time_known: bool = True

    @property
    def session_id(self) -> str | None:
        return self.session.session_id if self.session else None


@dataclass(frozen=True, slots=True)
class Policy:
    """The door's own policy, from its config file."""

    allow_reentry: bool = True
    #: How long before ``starts_at`` the door already lets people in.
    open_before: timedelta = timedelta(minutes=15)
    direction: Direction = Direction.IN
    #: A session time window while the time is unknown.
    unknown_time: UnknownTime = UnknownTime.ADMIT


def decide(valid_code: bool, facts: Facts, policy: Policy, now: datetime) -> Reason:
    """Decide one scan. *now* is the door's best aware time (``facts.time_known``
    says whether it is known: :func:`core.timesource.door_time`)."""
    if not valid_code:
        return Reason.INVALID_CODE
    session = facts.session
    if session is None:
        return Reason.NOT_READY
    if not facts.is_attendee:
        return Reason.UNKNOWN_CODE
    if session.validate_registrants and not facts.is_registrant:
        return Reason.NOT_REGISTERED
    if policy.direction is Direction.OUT:
        return Reason.REGISTERED
    if _has_window(session) and not facts.time_known:
        if policy.unknown_time is UnknownTime.REFUSE:
            return Reason.TIME_UNKNOWN
    elif not _inside_window(session, policy, now):
        return Reason.OUTSIDE_WINDOW
    if facts.admitted_before and not policy.allow_reentry:
        return Reason.ALREADY_ADMITTED
    if _full(session, facts):
        return Reason.FULL
    return Reason.REENTRY if facts.admitted_before else Reason.REGISTERED


def _full(session: SessionRules, facts: Facts) -> bool:
    """Letting this person in would pass the capacity (someone already inside, back
    through the door after showing their badge again, adds nobody)."""
    return (session.capacity is not None and not facts.inside
            and facts.occupancy >= session.capacity)


def _has_window(session: SessionRules) -> bool:
    return session.starts_at is not None or session.ends_at is not None


def _inside_window(session: SessionRules, policy: Policy, now: datetime) -> bool:
    if session.starts_at is not None and now < session.starts_at - policy.open_before:
        return False
    return session.ends_at is None or now <= session.ends_at
