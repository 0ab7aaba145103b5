"""Who is inside a session, and the audit of doors that decided alone: the pure rules
(server/presence.py) and the server's store on a real SQLite file."""

from __future__ import annotations

import math
import sqlite3
import uuid

import pytest

from server.presence import (
    Presence,
    PriorAdmission,
    audit_admissions,
    instant,
    time_in_session,
)
from server.schema import MIGRATIONS, SERVER_FILE
from server.store import Attendee, Device, ServerStore
from sync.messages import Change, Scan, SessionInfo
from tests.conftest import sqlite_only

DAY = "2026-11-28T"


def at(clock: str) -> str:
    return f"{DAY}{clock}Z"


def scan(code: str, clock: str, reason: str = "registered", decision: str = "admitted",
         direction: str | None = None, scan_id: str | None = None,
         override_of: str | None = None) -> Scan:
    return Scan(scan_id or str(uuid.uuid4()), 1, code, "s1", decision, reason, at(clock), 5,
                "boot", direction=direction, override_of=override_of)


def prior(code: str, clock: str, device: str = "door-2", reason: str = "registered",
          **kwargs) -> PriorAdmission:
    return PriorAdmission(f"old-{code}-{clock}", device, code, at(clock), reason, **kwargs)


# -- the pure rules ----------------------------------------------------------------------


def test_instant_orders_any_offset_and_places_nonsense_first() -> None:
    assert instant("2026-11-28T10:00:00+01:00") == instant(at("09:00:00"))
    assert instant("not a time") == -math.inf


def test_entries_and_exits_make_presence_and_the_count() -> None:
    audit = audit_admissions(
        [scan("A1", "10:00:00"), scan("B2", "10:01:00"),
         scan("A1", "10:02:00", direction="out"),
         scan("C3", "10:03:00", "not_registered", "rejected"),   # rejected: nothing
         scan("B2", "10:04:00", "unknown_code", "rejected", direction="out")],
        "door-1", False, {}, [], occupancy=0, capacity=None)
    assert audit.presence == {"A1": (False, at("10:02:00"), True),
                              "B2": (True, at("10:01:00"), True)}
    assert audit.occupancy == 1 and not audit.over_capacity and not audit.double


def test_an_older_scan_uploaded_late_does_not_change_presence() -> None:
    stored = {"A1": Presence(False, at("10:30:00"), 7)}
    audit = audit_admissions([scan("A1", "10:00:00")], "door-1", True, stored, [], 0, None)
    # Unchanged, but told again (a new seq): the door that sent it counts A1 inside.
    assert audit.presence == {"A1": (False, at("10:30:00"), True)} and audit.occupancy == 0
    same = audit_admissions([scan("A1", "10:00:00", direction="out")], "door-1", True,
                            stored, [], 0, None)
    assert same.presence == {} and same.occupancy == 0


def test_a_tie_goes_to_the_scan_received_last_and_unchanged_rows_keep_their_seq() -> None:
    stored = {"A1": Presence(True, at("10:00:00"), 7)}
    audit = audit_admissions([scan("A1", "10:00:00", "reentry")], "door-1", True, stored,
                             [], 1, None)
    assert audit.presence == {"A1": (True, at("10:00:00"), False)}  # no news for doors
    out = audit_admissions([scan("A1", "10:00:00", direction="out")], "door-1", True,
                           stored, [], 1, None)
    assert out.presence == {"A1": (False, at("10:00:00"), True)} and out.occupancy == 0


def test_over_capacity_flags_each_admission_past_it() -> None:
    batch = [scan("A1", "10:00:00"), scan("B2", "10:01:00"), scan("A1", "10:02:00", "reentry"),
             scan("C3", "10:03:00", "override"), scan("D4", "10:04:00")]
    audit = audit_admissions(batch, "door-1", True, {}, [], occupancy=1, capacity=2)
    # A1 makes 2 (at capacity, fine); B2 makes 3; A1 again adds nobody; C3 4; D4 5.
    assert audit.over_capacity == {batch[1].scan_id: "3 inside, past the capacity of 2",
                                   batch[3].scan_id: "4 inside, past the capacity of 2",
                                   batch[4].scan_id: "5 inside, past the capacity of 2"}
    leaving = audit_admissions([scan("Z9", "09:00:00", direction="out"), scan("D4", "10:00:00")],
                               "door-1", True, {"Z9": Presence(True, at("08:00:00"), 1)},
                               [], occupancy=2, capacity=2)
    assert leaving.over_capacity == {} and leaving.occupancy == 2


def test_a_first_admission_after_another_doors_earlier_one_is_a_double() -> None:
    late = scan("A1", "10:05:00")
    audit = audit_admissions([late], "door-1", None, {},
                             [prior("A1", "10:00:00"), prior("A1", "10:01:00", "door-3")],
                             1, None)
    assert audit.double == {late.scan_id: "door door-2 admitted this code earlier "
                                          f"(scan old-A1-10:00:00 at {at('10:00:00')})"}


@pytest.mark.parametrize(("batch", "reentry", "others"), [
    ([scan("A1", "10:05:00", "reentry")], False, [prior("A1", "10:00:00")]),   # door knew
    ([scan("A1", "10:05:00", "override")], False, [prior("A1", "10:00:00")]),  # staff chose
    ([scan("A1", "10:05:00")], True, [prior("A1", "10:00:00")]),               # re-entry ok
    ([scan("A1", "10:05:00")], False, [prior("A1", "10:00:00", "door-1")]),    # its own
    ([scan("A1", "10:05:00", direction="out")], False, [prior("A1", "10:00:00")]),  # exit
])
def test_not_a_double(batch: list[Scan], reentry: bool, others: list[PriorAdmission]) -> None:
    audit = audit_admissions(batch, "door-1", reentry, {}, others, 1, None)
    assert audit.double == {} and audit.earlier_doubles == {}


def test_a_late_upload_of_an_earlier_admission_flags_the_later_one_stored() -> None:
    early = scan("A1", "09:00:00", "reentry")  # any admission counts as the earlier one
    others = [prior("A1", "10:00:00"),                                     # flagged
              prior("A1", "10:01:00", "door-3", "reentry"),                # knew: no
              prior("A1", "10:02:00", "door-4", reentry_allowed=True),     # allowed: no
              prior("A1", "10:03:00", "door-5", flagged=True),             # kept as it is
              prior("A1", "08:00:00", "door-6")]                           # earlier: no
    audit = audit_admissions([early, scan("A1", "09:30:00", "reentry")], "door-1", False,
                             {}, others, 0, None)
    assert audit.earlier_doubles == {"old-A1-10:00:00": "door door-1 admitted this code "
                                                        f"earlier (scan {early.scan_id} at "
                                                        f"{at('09:00:00')})"}


def test_a_tie_flags_the_one_received_last() -> None:
    late = scan("A1", "10:00:00")
    audit = audit_admissions([late], "door-1", False, {}, [prior("A1", "10:00:00")], 1, None)
    assert late.scan_id in audit.double and audit.earlier_doubles == {}


@pytest.mark.parametrize(("moves", "window", "seconds"), [
    ([], (None, None, None), 0),
    ([("10:00:00", True), ("10:30:00", False)], (None, None, "10:30:00"), 1800),
    # Two stays; a second entry while inside and an exit while out change nothing.
    ([("10:00:00", True), ("10:05:00", True), ("10:10:00", False), ("10:20:00", False),
      ("10:40:00", True), ("10:50:00", False)], (None, None, "10:50:00"), 1200),
    # An open stay counts up to the session's end...
    ([("10:00:00", True)], (None, "11:00:00", "10:00:00"), 3600),
    # ...or, with no end, to the session's last scan.
    ([("10:00:00", True)], (None, None, "10:45:00"), 2700),
    # Clipped to the session's window: early arrivals and late leavers.
    ([("08:50:00", True), ("11:20:00", False)], ("09:00:00", "11:00:00", "11:20:00"), 7200),
    # Any order in, sorted by time; the exit before any entry is nothing.
    ([("10:30:00", False), ("10:10:00", True), ("10:00:00", False)],
     (None, None, "10:30:00"), 1200),
])
def test_time_in_session(moves: list[tuple[str, bool]],
                         window: tuple[str | None, str | None, str | None],
                         seconds: int) -> None:
    starts, ends, last = (at(w) if w else None for w in window)
    assert time_in_session([(at(m), entry) for m, entry in moves], starts, ends, last,
                           now=at("23:00:00")) == seconds


def test_an_open_stay_never_counts_past_now() -> None:
    assert time_in_session([(at("10:00:00"), True)], None, at("12:00:00"), at("10:00:00"),
                           now=at("10:10:00")) == 600


# -- the store ---------------------------------------------------------------------------


@pytest.fixture
async def store(server_target):
    store = await ServerStore.open(server_target)
    await store.put_session(SessionInfo("s1", "One", False, capacity=2))
    await store.upsert_attendees([Attendee(c, c) for c in ("A1", "B2", "C3", "D4")])
    for door in ("door-1", "door-2"):
        await store.put_device(door, "s1")
    yield store
    await store.close()


DOOR1, DOOR2 = Device("door-1", "s1"), Device("door-2", "s1")


async def test_admissions_reach_the_change_stream_only_when_asked(store) -> None:
    cursor, _ = await store.changes_since("s1", 0, admissions=True)
    await store.store_scans(DOOR1, [scan("A1", "10:00:00"), scan("B2", "10:01:00")])
    await store.store_scans(DOOR2, [scan("A1", "10:02:00", direction="out"),
                                    scan("C3", "10:03:00", "unknown_code", "rejected")])
    after, changes = await store.changes_since("s1", cursor, admissions=True)
    assert [(c.kind, c.code, c.inside) for c in changes] == [("admission", "B2", True),
                                                              ("admission", "A1", False)]
    assert after == changes[-1].seq == cursor + 3  # A1 in, B2 in, A1 out: one seq each
    assert (await store.changes_since("s1", cursor))[1] == []
    assert (await store.changes_since("s2", cursor, admissions=True))[1] == []
    snapshot = await store.snapshot_with_admissions("s1")
    assert snapshot[0] == after and snapshot[4:] == (["B2"], ["A1"])
    assert snapshot[:4] == await store.snapshot("s1")


async def test_a_reentry_changes_nothing_the_doors_must_hear(store) -> None:
    before = store.presence_version("s1")
    await store.store_scans(DOOR1, [scan("A1", "10:00:00")])
    version = store.presence_version("s1")
    assert version != before  # the endpoint wakes the session's doors
    cursor, _ = await store.changes_since("s1", 0, admissions=True)
    await store.store_scans(DOOR2, [scan("A1", "10:05:00", "reentry"),
                                    scan("B2", "10:06:00", "unknown_code", "rejected")])
    assert await store.changes_since("s1", cursor, admissions=True) == (cursor, [])
    assert store.presence_version("s1") == version  # nobody is woken for nothing


async def test_double_admissions_both_orders_and_the_doors_policy(store) -> None:
    await store.note_hello("door-1", False)
    await store.note_hello("door-2", None)  # said nothing: counts as forbidding
    stored_first = scan("A1", "10:05:00")  # door-1 online, uploaded first
    await store.store_scans(DOOR1, [stored_first])
    late = scan("A1", "10:00:00")  # door-2 offline, admitted A1 earlier
    then = scan("A1", "10:10:00", "reentry")  # and again later, knowing its own
    await store.store_scans(DOOR2, [late, then])
    attendance = await store.attendance("s1")
    flags = {s["scan_id"]: s["double_admission"] for s in attendance["scans"]}
    assert flags[late.scan_id] is None
    assert flags[stored_first.scan_id] == (f"door door-2 admitted this code earlier (scan "
                                           f"{late.scan_id} at {at('10:00:00')})")
    assert flags[then.scan_id] is None  # a re-entry: the door knew it was no first
    assert attendance["double_admissions"] == [stored_first.scan_id]
    # A door that allows re-entry is never flagged.
    await store.note_hello("door-1", True)
    await store.store_scans(DOOR1, [scan("B2", "11:00:00")])
    await store.store_scans(DOOR2, [scan("B2", "10:00:00")])
    assert (await store.attendance("s1"))["double_admissions"] == [stored_first.scan_id]


async def test_over_capacity_with_two_doors(store) -> None:
    await store.store_scans(DOOR1, [scan("A1", "10:00:00"), scan("B2", "10:01:00")])
    offline = scan("C3", "10:02:00")  # door-2 did not know the room was full
    await store.store_scans(DOOR2, [offline])
    live = await store.attendance_live("s1")
    assert (live["inside"], live["capacity"], live["over_capacity"]) == (3, 2, 1)
    attendance = await store.attendance("s1")
    assert attendance["over_capacity"] == [offline.scan_id] and attendance["inside"] == 3
    [row] = [s for s in attendance["scans"] if s["scan_id"] == offline.scan_id]
    assert row["device_id"] == "door-2" and row["over_capacity"] == (
        "3 inside, past the capacity of 2")
    # Someone leaves: the next admission fits again.
    await store.store_scans(DOOR1, [scan("A1", "10:03:00", direction="out"),
                                    scan("B2", "10:04:00", direction="out")])
    await store.store_scans(DOOR2, [scan("D4", "10:05:00")])
    assert (await store.attendance_live("s1"))["over_capacity"] == 1


async def test_exits_are_not_admissions_in_any_count(store) -> None:
    await store.store_scans(DOOR1, [scan("A1", "10:00:00"), scan("B2", "10:00:30"),
                                    scan("A1", "10:20:00", direction="out"),
                                    scan("A1", "10:30:00", "reentry"),
                                    scan("C3", "10:40:00", direction="out")])
    await store.store_scans(DOOR2, [scan("D4", "10:50:00", "override",
                                         override_of="rejected-1")])
    live = await store.attendance_live("s1")
    assert (live["admitted"], live["reentries"], live["inside"], live["overrides"]) == (
        3, 1, 3, 1)
    assert [m for m, _ in live["arrivals_per_minute"]] == [at("10:00:00"), at("10:50:00")]
    attendance = await store.attendance("s1")
    assert (attendance["admitted"], attendance["inside"], attendance["overrides"]) == (3, 3, 1)
    # A1: 20 min, then back from 10:30 to the last scan (10:50); C3 only left: nothing.
    assert attendance["time_in_session"] == {"A1": 2400, "B2": 2970, "D4": 0}
    [override] = [s for s in attendance["scans"] if s["reason"] == "override"]
    assert override["override_of"] == "rejected-1" and override["direction"] == "in"
    overview = (await store.session_overview("s1"))[0]
    assert (overview["admitted"], overview["inside"], overview["capacity"]) == (3, 3, 2)
    page = {r["code"]: r for r in await store.attendance_export_page("s1")}
    assert (page["A1"]["reentries"], page["A1"]["time_in_session"]) == (1, 2400)
    assert page["C3"]["first_admitted_at"] is None and page["D4"]["overrides"] == 1


async def test_capacity_is_kept_and_sent_to_doors(store) -> None:
    cursor, _ = await store.changes_since("s1", 0)
    assert await store.put_session(SessionInfo("s1", "One", False, capacity=2)) is False
    assert await store.put_session(SessionInfo("s1", "One", False, capacity=None)) is False
    [change] = (await store.changes_since("s1", cursor))[1]
    assert change == Change(change.seq, "session", session=SessionInfo("s1", "One", False))
    await store.put_session(SessionInfo("s1", "One", False, capacity=0))
    assert (await store.snapshot("s1"))[1].capacity == 0
    assert [s["capacity"] for s in await store.sessions()] == [0]


async def test_the_migration_makes_everyone_admitted_before_inside(tmp_path) -> None:
    path = tmp_path / SERVER_FILE
    with sqlite3.connect(path) as db:
        before = next(i for i, m in enumerate(MIGRATIONS) if "CREATE TABLE presence" in m)
        for script in MIGRATIONS[:before]:
            db.executescript(script)
        db.execute(f"PRAGMA user_version = {before}")
        db.execute("INSERT INTO sessions VALUES ('s1', 'One', 0, NULL, NULL, 0, 1)")
        db.execute("UPDATE meta SET seq = 1")
        for n, (code, decision, when) in enumerate([
                ("A1", "admitted", "10:00:00"), ("A1", "admitted", "10:30:00"),
                ("B2", "admitted", "10:05:00"), ("C3", "rejected", "10:06:00")]):
            db.execute("INSERT INTO scans (scan_id, device_id, device_seq, session_id, code,"
                       " decision, reason, scanned_at, monotonic_ns, boot_id, received_at)"
                       " VALUES (?, 'door-1', ?, 's1', ?, ?, 'registered', ?, 1, 'b', ?)",
                       (f"x{n}", n, code, decision, at(when), at(when)))
    store = await ServerStore.open(tmp_path)
    try:
        cursor, changes = await store.changes_since("s1", 1, admissions=True)
        assert [(c.seq, c.code, c.inside) for c in changes] == [(2, "A1", True),
                                                                 (3, "B2", True)]
        assert cursor == 3 and (await store.attendance_live("s1"))["inside"] == 2
        # In at 10:00, still in at the last scan (10:30: C3 at 10:06 is earlier).
        assert (await store.attendance("s1"))["time_in_session"]["A1"] == 1800
    finally:
        await store.close()


@sqlite_only  # SQLite's query plans
@pytest.mark.parametrize("sql", [
    # not arrived: a registrant's entrance admissions
    "SELECT 1 FROM registrants AS r WHERE r.session_id = 's1' AND NOT EXISTS (SELECT 1"
    " FROM scans AS c WHERE c.session_id = 's1' AND c.decision = 'admitted'"
    " AND c.direction = 'in' AND c.code = r.code)",
    # distinct attendees admitted, each one's first admission
    "SELECT min(julianday(scanned_at)) FROM scans WHERE session_id = 's1'"
    " AND decision = 'admitted' AND direction = 'in' GROUP BY code",
    # an export page's admissions, exits and rejections by code
    "SELECT code, count(*) FROM scans WHERE session_id = 's1' AND decision = 'rejected'"
    " AND direction IN ('in', 'out') AND code IN ('A1', 'B2') GROUP BY code",
])
async def test_admission_counts_stay_index_only(store, sql: str) -> None:
    """Direction joined the admissions index between decision and code: the counts that
    were read from the index alone still are, each code found by the index."""
    async with store._read() as db:
        plan = " | ".join(r["detail"] for r in await db.fetchall(f"EXPLAIN QUERY PLAN {sql}"))
    assert "USING COVERING INDEX scans_session_code" in plan, plan
    assert "direction=?" in plan, plan
