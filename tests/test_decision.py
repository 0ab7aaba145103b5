"""The Validate Registrants decision, exhaustively, and the debouncer."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.rules import Direction, Facts, Policy, Reason, SessionRules, UnknownTime, decide
from device.debounce import Debouncer

NOW = datetime(2026, 11, 28, 10, 0, tzinfo=timezone(timedelta(hours=1)))
HOUR = timedelta(hours=1)

#: Session time windows relative to NOW, and whether NOW is inside (with 15 min early entry).
WINDOWS = {
    "no window": (None, None, True),
    "running": (NOW - HOUR, NOW + HOUR, True),
    "opens in 10 min": (NOW + timedelta(minutes=10), NOW + HOUR, True),
    "opens in 20 min": (NOW + timedelta(minutes=20), NOW + HOUR, False),
    "ended": (NOW - 2 * HOUR, NOW - timedelta(seconds=1), False),
    "ends now": (NOW - HOUR, NOW, True),
    "only a start, passed": (NOW - HOUR, None, True),
    "only an end, passed": (None, NOW - HOUR, False),
}


#: Capacities against an occupancy of 10: (capacity, whether the room is full).
CAPACITIES = {"no limit": (None, False), "room left": (11, False), "full": (10, True),
              "over": (3, True), "closed": (0, True)}


#: Whether the door knows the time, and its [door] unknown_time policy.
TIMES = {"known": (True, UnknownTime.ADMIT), "known, refuse": (True, UnknownTime.REFUSE),
         "unknown, admit": (False, UnknownTime.ADMIT),
         "unknown, refuse": (False, UnknownTime.REFUSE)}


def expected(valid, synced, attendee, validate, registrant, in_window, before, reentry,
             exit_door=False, full=False, counted_inside=False, has_window=False,
             time_known=True, unknown_time=UnknownTime.ADMIT) -> Reason:
    """The rule table of core.rules, written as data, first match wins."""
    table = [
        (not valid, Reason.INVALID_CODE),
        (not synced, Reason.NOT_READY),
        (not attendee, Reason.UNKNOWN_CODE),
        (validate and not registrant, Reason.NOT_REGISTERED),
        (exit_door, Reason.REGISTERED),
        (has_window and not time_known and unknown_time is UnknownTime.REFUSE,
         Reason.TIME_UNKNOWN),
        (time_known and not in_window, Reason.OUTSIDE_WINDOW),
        (before and not reentry, Reason.ALREADY_ADMITTED),
        (full and not counted_inside, Reason.FULL),
        (before, Reason.REENTRY),
        (True, Reason.REGISTERED),
    ]
    return next(reason for condition, reason in table if condition)


@pytest.mark.parametrize("time", TIMES)
@pytest.mark.parametrize("capacity", CAPACITIES)
@pytest.mark.parametrize("window", WINDOWS)
def test_every_combination_follows_the_rule_table(window: str, capacity: str,
                                                  time: str) -> None:
    starts, ends, in_window = WINDOWS[window]
    limit, full = CAPACITIES[capacity]
    time_known, unknown_time = TIMES[time]
    flags = itertools.product([False, True], repeat=9)
    for valid, synced, attendee, validate, registrant, before, reentry, exit_door, counted \
            in flags:
        session = SessionRules("s1", validate, starts, ends, limit) if synced else None
        facts = Facts(session, attendee, registrant, before, inside=counted, occupancy=10,
                      time_known=time_known)
        policy = Policy(allow_reentry=reentry,
                        direction=Direction.OUT if exit_door else Direction.IN,
                        unknown_time=unknown_time)
        got = decide(valid, facts, policy, NOW)
        want = expected(valid, synced, attendee, validate, registrant, in_window, before,
                        reentry, exit_door, bool(full), counted,
                        starts is not None or ends is not None, time_known, unknown_time)
        assert got == want, (window, capacity, time, valid, synced, attendee, validate, registrant,
                             before, reentry, exit_door, counted)


def test_a_full_room_turns_away_newcomers_but_not_someone_inside() -> None:
    session = SessionRules("talk", False, capacity=2)
    newcomer = Facts(session, is_attendee=True, occupancy=2)
    inside = Facts(session, is_attendee=True, admitted_before=True, inside=True, occupancy=2)
    left = Facts(session, is_attendee=True, admitted_before=True, inside=False, occupancy=2)
    assert decide(True, newcomer, Policy(), NOW) is Reason.FULL
    assert decide(True, inside, Policy(), NOW) is Reason.REENTRY
    assert decide(True, left, Policy(), NOW) is Reason.FULL
    assert decide(True, Facts(session, is_attendee=True, occupancy=1), Policy(),
                  NOW) is Reason.REGISTERED


def test_an_exit_door_never_holds_anyone_back() -> None:
    session = SessionRules("talk", True, NOW + 3 * HOUR, NOW + 4 * HOUR, capacity=0)
    facts = Facts(session, is_attendee=True, is_registrant=True, admitted_before=True,
                  occupancy=99)
    out = Policy(allow_reentry=False, direction=Direction.OUT)
    assert decide(True, facts, out, NOW) is Reason.REGISTERED
    assert decide(True, Facts(session, is_attendee=True), out, NOW) is Reason.NOT_REGISTERED


def test_without_validate_registrants_every_attendee_is_admitted() -> None:
    session = SessionRules("open-talk", validate_registrants=False)
    assert decide(True, Facts(session, is_attendee=True), Policy(), NOW) is Reason.REGISTERED
    assert decide(True, Facts(session, is_attendee=False), Policy(), NOW) is Reason.UNKNOWN_CODE


def test_validate_registrants_rejects_an_attendee_not_added_to_the_session() -> None:
    session = SessionRules("workshop", validate_registrants=True)
    facts = Facts(session, is_attendee=True, is_registrant=False)
    assert decide(True, facts, Policy(), NOW) is Reason.NOT_REGISTERED


def test_early_entry_is_configurable() -> None:
    session = SessionRules("s", False, NOW + timedelta(minutes=20), None)
    facts = Facts(session, is_attendee=True)
    assert decide(True, facts, Policy(), NOW) is Reason.OUTSIDE_WINDOW
    assert decide(True, facts, Policy(open_before=timedelta(minutes=30)), NOW) is Reason.REGISTERED


def test_with_the_time_unknown_a_window_is_the_policys() -> None:
    """A door three days behind would find every session ended: with the time unknown
    the window is not checked but applied by the policy; without a window nothing
    changes; an exit door holds nobody back either way."""
    ended = SessionRules("s", False, NOW - 2 * HOUR, NOW - HOUR)
    facts = Facts(ended, is_attendee=True, time_known=False)
    assert decide(True, facts, Policy(), NOW) is Reason.REGISTERED
    refuse = Policy(unknown_time=UnknownTime.REFUSE)
    assert decide(True, facts, refuse, NOW) is Reason.TIME_UNKNOWN
    assert decide(True, Facts(SessionRules("s", False), is_attendee=True, time_known=False),
                  refuse, NOW) is Reason.REGISTERED
    out = Policy(direction=Direction.OUT, unknown_time=UnknownTime.REFUSE)
    assert decide(True, facts, out, NOW) is Reason.REGISTERED
    assert Reason.TIME_UNKNOWN.value == "time_unknown"
    assert Reason.TIME_UNKNOWN.decision == "rejected"


def test_reasons_map_to_the_two_decisions() -> None:
    admitted = {r for r in Reason if r.decision == "admitted"}
    assert admitted == {Reason.REGISTERED, Reason.REENTRY, Reason.OVERRIDE}
    assert {r.decision for r in Reason} == {"admitted", "rejected"}


SECOND = 1_000_000_000


def test_debouncer_ignores_the_same_phone_held_in_view() -> None:
    d = Debouncer(5 * SECOND)
    assert d.is_new(b"A", 0)
    assert not d.is_new(b"A", 1 * SECOND)
    assert not d.is_new(b"A", 5 * SECOND)  # still in view: the window slides on
    assert d.is_new(b"B", 5 * SECOND)      # another phone is new at once
    assert d.is_new(b"A", 11 * SECOND)     # gone for the whole window: a new scan


def test_debouncer_with_zero_window_counts_every_sighting() -> None:
    d = Debouncer(0)
    assert d.is_new(b"A", 0)
    assert d.is_new(b"A", 0)


def test_debouncer_forgets_codes_long_gone() -> None:
    d = Debouncer(SECOND)
    for i in range(1000):
        d.is_new(str(i).encode(), i * 2 * SECOND)
    assert len(d._last_seen) <= 2


def test_debouncer_rejects_a_negative_window() -> None:
    with pytest.raises(ValueError, match="negative"):
        Debouncer(-1)


@given(st.lists(st.tuples(st.sampled_from([b"A", b"B", b"C"]), st.integers(0, 3 * SECOND)),
                max_size=60),
       st.integers(0, 2 * SECOND))
def test_debouncer_matches_a_simple_model(steps, window: int) -> None:
    d, last, now = Debouncer(window), {}, 0
    for payload, gap in steps:
        now += gap
        model_new = payload not in last or now - last[payload] >= window
        last[payload] = now
        assert d.is_new(payload, now) == model_new
