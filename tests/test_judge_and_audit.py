"""What the server makes of pushed scans (judge_scans) and of offline verdicts (disagreement)."""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from core.rules import Reason
from server.audit import disagreement
from sync.messages import Scan, ScanOutcome, ScanResult
from sync.server_end import judge_scans

ACCEPTED, DUPLICATE, REFUSED = ScanOutcome

DEVICE = "door-1"
T0 = "2026-11-28T10:00:00+01:00"


def scan(scan_id: str = "s1", *, session_id: str | None = "keynote-1",
         reason: Reason = Reason.REGISTERED, decision: str | None = None) -> Scan:
    return Scan(scan_id=scan_id, seq=1, code="ATT-0001", session_id=session_id,
                decision=decision or reason.decision, reason=str(reason), scanned_at=T0,
                monotonic_ns=1, boot_id="boot")


# -- judge_scans ---------------------------------------------------------------


def test_a_new_scan_for_the_devices_session_is_accepted() -> None:
    assert judge_scans([scan("s1")], DEVICE, "keynote-1", {}) == [ScanResult("s1", ACCEPTED)]


def test_a_scan_this_device_pushed_before_is_a_duplicate() -> None:
    [result] = judge_scans([scan("s1")], DEVICE, "keynote-1", {"s1": DEVICE})
    assert result == ScanResult("s1", DUPLICATE, None)
    assert result.stored


def test_a_duplicate_wins_even_if_the_device_moved_to_another_session() -> None:
    [result] = judge_scans([scan("s1", session_id="keynote-1")], DEVICE, "workshop-2",
                           {"s1": DEVICE})
    assert result.result == DUPLICATE


def test_a_scan_id_stored_from_another_device_is_refused() -> None:
    [result] = judge_scans([scan("s1")], DEVICE, "keynote-1", {"s1": "door-2"})
    assert result == ScanResult("s1", REFUSED, "scan id already stored from another device")
    assert not result.stored


def test_a_scan_for_another_session_is_refused_naming_both() -> None:
    [result] = judge_scans([scan("s1", session_id="workshop-2")], DEVICE, "keynote-1", {})
    assert result.result == REFUSED
    assert result.reason == ("scan is for session 'workshop-2' but device 'door-1' is "
                             "assigned to 'keynote-1'")


def test_a_scan_for_a_session_when_the_device_has_none_is_refused() -> None:
    [result] = judge_scans([scan("s1", session_id="keynote-1")], DEVICE, None, {})
    assert result.result == REFUSED
    assert result.reason is not None
    assert "'keynote-1'" in result.reason
    assert "assigned to None" in result.reason


@pytest.mark.parametrize("device_session", ["keynote-1", None])
def test_a_scan_made_before_the_door_had_a_session_is_accepted(
    device_session: str | None,
) -> None:
    not_ready = scan("s1", session_id=None, reason=Reason.NOT_READY)
    assert judge_scans([not_ready], DEVICE, device_session, {}) == [ScanResult("s1", ACCEPTED)]


def test_a_batch_is_judged_scan_by_scan_in_order() -> None:
    batch = [scan("new"), scan("mine"), scan("theirs"), scan("foreign", session_id="other"),
             scan("early", session_id=None, reason=Reason.NOT_READY)]
    results = judge_scans(batch, DEVICE, "keynote-1", {"mine": DEVICE, "theirs": "door-7"})
    assert [(r.scan_id, r.result) for r in results] == [
        ("new", ACCEPTED), ("mine", DUPLICATE), ("theirs", REFUSED), ("foreign", REFUSED),
        ("early", ACCEPTED)]
    assert judge_scans([], DEVICE, "keynote-1", {}) == []


# -- disagreement --------------------------------------------------------------


@pytest.mark.parametrize(
    "reason",
    [Reason.INVALID_CODE, Reason.NOT_READY, Reason.OUTSIDE_WINDOW, Reason.ALREADY_ADMITTED],
)
@pytest.mark.parametrize(
    ("validate", "attendee", "registrant"), list(itertools.product([True, False], repeat=3))
)
def test_no_disagreement_over_reasons_that_do_not_depend_on_membership(
    reason: Reason, validate: bool, attendee: bool, registrant: bool
) -> None:
    assert disagreement(scan(reason=reason), validate, attendee, registrant) is None


@pytest.mark.parametrize(
    ("validate", "attendee", "registrant"), list(itertools.product([True, False], repeat=3))
)
@pytest.mark.parametrize("reason", list(Reason))
def test_no_disagreement_over_exits(reason: Reason, validate: bool, attendee: bool,
                                    registrant: bool) -> None:
    """An exit door refuses nobody: a person leaving is no admission to dispute."""
    exit_scan = dataclasses.replace(scan(reason=reason), direction="out",
                                    decision=reason.decision)
    assert disagreement(exit_scan, validate, attendee, registrant) is None


@pytest.mark.parametrize("reason", [Reason.OVERRIDE, Reason.FULL])
def test_no_disagreement_over_overrides_and_capacity(reason: Reason) -> None:
    for facts in itertools.product([True, False], repeat=3):
        assert disagreement(scan(reason=reason), *facts) is None


@pytest.mark.parametrize("reason", list(Reason))
def test_no_disagreement_for_scans_without_a_session(reason: Reason) -> None:
    assert disagreement(scan(session_id=None, reason=reason), True, False, False) is None


@pytest.mark.parametrize(
    ("reason", "validate", "attendee", "registrant"),
    [
        (Reason.REGISTERED, True, True, True),
        (Reason.REGISTERED, False, True, False),
        (Reason.REENTRY, True, True, True),
        (Reason.REENTRY, False, True, False),
        (Reason.UNKNOWN_CODE, True, False, False),
        (Reason.UNKNOWN_CODE, False, False, True),
        (Reason.NOT_REGISTERED, True, True, False),
        (Reason.NOT_REGISTERED, True, False, False),  # server: unknown code, still rejected
        (Reason.UNKNOWN_CODE, True, True, False),  # server: not registered, still rejected
    ],
)
def test_no_disagreement_when_the_server_would_have_decided_the_same(
    reason: Reason, validate: bool, attendee: bool, registrant: bool
) -> None:
    assert disagreement(scan(reason=reason), validate, attendee, registrant) is None


@pytest.mark.parametrize("reason", [Reason.REGISTERED, Reason.REENTRY])
def test_an_admitted_code_the_server_does_not_know_is_flagged(reason: Reason) -> None:
    assert disagreement(scan(reason=reason), True, False, False) == (
        "server data says unknown_code")
    assert disagreement(scan(reason=reason), False, False, True) == (
        "server data says unknown_code")


@pytest.mark.parametrize("reason", [Reason.REGISTERED, Reason.REENTRY])
def test_an_admitted_code_the_server_has_not_registered_is_flagged(reason: Reason) -> None:
    assert disagreement(scan(reason=reason), True, True, False) == (
        "server data says not_registered")


def test_a_rejected_code_the_server_has_as_registrant_is_flagged() -> None:
    rejected = scan(reason=Reason.NOT_REGISTERED)
    assert rejected.decision == "rejected"
    assert disagreement(rejected, True, True, True) == "server data says registered"


@pytest.mark.parametrize("reason", [Reason.UNKNOWN_CODE, Reason.NOT_REGISTERED])
def test_with_validate_registrants_off_any_attendee_is_admitted(reason: Reason) -> None:
    # The door rejected on stale data (not an attendee yet, or the session still had
    # Validate Registrants on): the server's data would have let the attendee in.
    assert disagreement(scan(reason=reason), False, True, False) == (
        "server data says registered")


def test_with_validate_registrants_off_registration_does_not_matter() -> None:
    admitted = scan(reason=Reason.REGISTERED)
    assert disagreement(admitted, False, True, False) is None
    assert disagreement(admitted, False, True, True) is None
    assert disagreement(admitted, False, False, True) == "server data says unknown_code"


def test_the_flag_follows_the_decision_recorded_not_the_reason_alone() -> None:
    # The door's decision is the fact; a reason "registered" recorded as rejected
    # (never produced by decide, but possible in a pushed scan) is compared as rejected.
    odd = scan(reason=Reason.REGISTERED, decision="rejected")
    assert disagreement(odd, True, True, True) == "server data says registered"
    assert disagreement(odd, True, False, False) is None
