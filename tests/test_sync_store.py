"""The daemon's side of the device store on a real file: cache and cursor move together,
the outbox is marked only by the server's answers, and status reads it all."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from checkin import status as status_command
from core.rules import Decision, Direction
from core.timesource import ClockAnchor
from sync.device_end import ApplyChanges, ApplySnapshot
from sync.device_schema import MIGRATIONS
from sync.device_store import (
    STORE_FILE,
    DoorStore,
    ScanRecord,
    UploadState,
    code_hash,
)
from sync.messages import Change, ScanResult, SessionInfo, code_key_id
from sync.store import DeviceStatus, SyncStore
from tests.conftest import CHECKIN
from tests.system import process_env

SESSION = SessionInfo("s1", "Workshop", True, "2026-11-28T09:00:00+00:00", None)


@pytest.fixture
async def store(tmp_path):
    store = await SyncStore.open(tmp_path)
    yield store
    await store.close()


def record(n: int, session: str = "s1") -> ScanRecord:
    return ScanRecord(f"scan-{n}", "A1", session, Decision.ADMITTED, "registered",
                      "2026-11-28T10:00:00+00:00", n, "boot")


async def test_a_snapshot_replaces_the_cache_with_its_cursor(store) -> None:
    await store.apply_snapshot(ApplySnapshot("e1", 7, SESSION, ["A1", "B2"], ["A1"]))
    facts = await store.facts("A1")
    assert facts.session_id == "s1" and facts.is_registrant and facts.session.starts_at
    state = await store.cache_state()
    assert (state.session_id, state.epoch, state.cursor) == ("s1", "e1", 7)
    await store.apply_snapshot(ApplySnapshot("e2", 3, None, ["C3"], []))
    assert (await store.facts("A1")).session is None
    assert (await store.cache_state()).epoch == "e2"
    status = await store.status()
    assert (status.attendees, status.registrants, status.cursor) == (1, 0, 3)


async def test_changes_apply_in_order_with_their_cursor(store) -> None:
    await store.apply_snapshot(ApplySnapshot("e1", 7, SESSION, ["A1", "B2"], ["A1"]))
    await store.apply_changes(ApplyChanges(10, [
        Change(8, "attendee", code="C3"),
        Change(9, "registrant", code="C3"),
        Change(10, "registrant", code="A1", deleted=True),
    ]))
    assert (await store.facts("C3")).is_registrant
    assert not (await store.facts("A1")).is_registrant
    assert (await store.cache_state()).cursor == 10
    await store.apply_changes(ApplyChanges(11, [Change(11, "session", session=None)]))
    assert (await store.facts("C3")).session is None
    assert (await store.status()).attendees == 3  # attendees stay for the next session


async def test_a_failed_apply_leaves_cache_and_cursor_as_they_were(store, tmp_path) -> None:
    await store.apply_snapshot(ApplySnapshot("e1", 7, SESSION, ["A1"], ["A1"]))
    b2 = code_hash(await held_key(store), "B2").hex()
    with sqlite3.connect(tmp_path / STORE_FILE) as db:  # sabotage one statement
        db.execute(f"CREATE TRIGGER no_b2 BEFORE INSERT ON attendees WHEN NEW.hash = x'{b2}'"
                   " BEGIN SELECT RAISE(ABORT, 'sabotaged'); END")
    with pytest.raises(Exception, match="sabotaged"):
        await store.apply_changes(ApplyChanges(9, [Change(8, "registrant", code="A1",
                                                          deleted=True),
                                                   Change(9, "attendee", code="B2")]))
    assert (await store.facts("A1")).is_registrant
    assert (await store.cache_state()).cursor == 7


async def test_the_outbox_is_marked_only_by_the_servers_answers(store) -> None:
    for n in range(1, 6):
        await store.record_scan(record(n))
    waiting = await store.waiting_scans(0, 3)
    assert [s.scan_id for s in waiting] == ["scan-1", "scan-2", "scan-3"]
    assert [s.scan_id for s in await store.waiting_scans(3, 10)] == ["scan-4", "scan-5"]
    await store.record_results([ScanResult("scan-1", "accepted"),
                                ScanResult("scan-2", "duplicate"),
                                ScanResult("scan-3", "refused", "not your session")])
    assert [s.scan_id for s in await store.waiting_scans(0, 10)] == ["scan-4", "scan-5"]
    assert [(s["scan_id"], s["upload_state"], s["upload_note"]) for s in await store.scans()] == [
        ("scan-1", UploadState.STORED, None), ("scan-2", UploadState.STORED, None),
        ("scan-3", UploadState.QUARANTINED, "not your session"),
        ("scan-4", UploadState.WAITING, None), ("scan-5", UploadState.WAITING, None)]
    status = await store.status()
    assert (status.scans_waiting, status.scans_stored, status.scans_quarantined) == (2, 2, 1)


async def test_the_link_state_is_kept_for_status(store) -> None:
    await store.note_link(connected=False, error="cannot reach the server")
    status = await store.status()
    assert not status.connected and status.last_error == "cannot reach the server"
    await store.note_link(connected=True)
    status = await store.status()
    assert status.connected and status.last_error is None and status.updated_at


def test_checkin_status_reports_the_device(tmp_path, make_config) -> None:
    config = make_config(extra='[server]\nurl = "ws://127.0.0.1:9/sync"\n'
                               'token_file = "t"\n')
    missing = subprocess.run([*CHECKIN, "status", "--config", str(config)], env=process_env(),
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and "no store at" in missing.stderr

    async def fill() -> None:
        store = await SyncStore.open(tmp_path / "data")
        await store.apply_snapshot(ApplySnapshot("e1", 7, SESSION, ["A1", "B2"], ["A1"]))
        await store.record_scan(record(1))
        await store.note_link(connected=True)
        await store.close()

    asyncio.run(fill())
    done = subprocess.run([*CHECKIN, "status", "--config", str(config)], env=process_env(),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = dict(line.split(":", 1) for line in done.stdout.splitlines())
    assert lines["session"].strip() == 's1 "Workshop" (Validate Registrants on)'
    assert lines["registrants cached"].strip() == "1 (attendees 2)"
    assert lines["inside"].strip() == "1 (no capacity set)"  # its own admission of A1
    assert lines["cursor"].strip() == "7 (server epoch e1)"
    assert lines["link"].strip() == "connected"
    assert lines["scans waiting"].strip() == "1"
    assert lines["scans quarantined"].strip() == "0"
    assert lines["last frame"].strip() == "never"
    assert "last sync" in lines


def test_status_shows_inside_against_the_capacity() -> None:
    status = DeviceStatus(
        session_id="s1", session_name="W", validate_registrants=True, attendees=0,
        registrants=0, epoch=None, cursor=0, connected=False, last_sync_at=None,
        last_error=None, updated_at=None, scans_waiting=0, scans_quarantined=0,
        scans_stored=0, last_frame_at=None, door_started_at=None, inside=3, capacity=40)
    assert status_command.inside(status) == "3 of capacity 40"
    assert status_command.inside(replace(status, inside=40)) == (
        "40 of capacity 40 (full: newcomers are refused)")
    assert status_command.inside(replace(status, session_id=None)) == "-"


async def test_concurrent_writers_on_one_connection_take_turns(store) -> None:
    """The daemon's reader, pusher and reporter all write through one connection."""
    big = [f"C{n}" for n in range(20_000)]
    await asyncio.gather(
        store.apply_snapshot(ApplySnapshot("e1", 9, SESSION, big, big)),
        *(store.note_link(connected=True) for _ in range(5)),
        store.record_scan(record(1)),
    )
    status = await store.status()
    assert (status.registrants, status.cursor, status.connected) == (20_000, 9, True)
    assert status.scans_waiting == 1


# -- issue 14: the other doors' admissions --

CAPPED = SessionInfo("s1", "Workshop", True, capacity=2)


def at_door(scan_id: str, code: str, direction: Direction = Direction.IN,
            override_of: str | None = None) -> ScanRecord:
    reason = "override" if override_of else "registered"
    return ScanRecord(scan_id, code, "s1", Decision.ADMITTED, reason,
                      "2026-11-28T10:00:00+00:00", 1, "boot", direction, override_of)


async def held_key(store: SyncStore) -> bytes:
    [row] = await store._db.execute_fetchall("SELECT code_key FROM sync_state")
    return row["code_key"]


async def inside(store: SyncStore, codes: str = "A1 B2 C3 D4") -> dict[str, bool]:
    """Who the store counts inside, by code (the store keeps hashes: of *codes*)."""
    key = await held_key(store)
    by_hash = {code_hash(key, code): code for code in codes.split()}
    rows = await store._db.execute_fetchall("SELECT hash, inside FROM admissions")
    return {by_hash[row["hash"]]: bool(row["inside"]) for row in rows}


async def test_admission_changes_move_presence_and_occupancy(store) -> None:
    await store.apply_snapshot(ApplySnapshot("e1", 7, CAPPED, ["A1", "B2", "C3"],
                                             ["A1", "B2", "C3"], [], []))
    await store.apply_changes(ApplyChanges(9, [Change(8, "admission", code="A1", inside=True),
                                               Change(9, "admission", code="B2", inside=True)]))
    facts = await store.facts("C3")
    assert (facts.occupancy, facts.admitted_before) == (2, False)
    await store.apply_changes(ApplyChanges(10, [Change(10, "admission", code="A1",
                                                       inside=False)]))
    a1 = await store.facts("A1")
    assert (a1.admitted_before, a1.inside, a1.occupancy) == (True, False, 1)
    status = await store.status()
    assert (status.inside, status.capacity, status.cursor) == (1, 2, 10)


async def test_a_snapshot_replaces_presence_over_own_waiting_scans(store) -> None:
    """The door's own scans not uploaded yet count where the snapshot says nothing of
    their code; where it does, the server's word stands until the door's own scans reach
    it (and change it: the server then sends the change)."""
    await store.apply_snapshot(ApplySnapshot("e1", 7, CAPPED, ["A1", "B2", "C3", "D4"],
                                             ["A1", "B2", "C3", "D4"], [], []))
    await store.record_scan(at_door("s-1", "C3"))      # the server has it (stored below)
    await store.record_scan(at_door("s-2", "D4"))      # not uploaded yet
    await store.record_scan(at_door("s-3", "B2"))      # not uploaded: in...
    await store.record_scan(at_door("s-4", "B2", Direction.OUT))  # ...then out, in that order
    await store.record_results([ScanResult("s-1", "accepted")])
    await store.apply_snapshot(ApplySnapshot("e1", 20, CAPPED, ["A1", "B2", "C3", "D4"],
                                             ["A1", "B2", "C3", "D4"], ["A1", "B2"], ["C3"]))
    # C3 and B2: the server's word (C3 left through another door; the door's own B2 in
    # and out have not reached the server yet); D4: this door's own, unknown to the server
    assert await inside(store) == {"A1": True, "B2": True, "C3": False, "D4": True}
    assert (await store.facts("A1")).occupancy == 3


async def test_a_snapshot_without_admissions_keeps_all_own_ones(store) -> None:
    """An older server shares no admissions: the door's own scans are all it knows."""
    await store.apply_snapshot(ApplySnapshot("e1", 7, SESSION, ["A1", "B2"], ["A1", "B2"]))
    await store.record_scan(at_door("s-1", "A1"))
    await store.record_scan(at_door("s-2", "B2"))
    await store.record_results([ScanResult("s-1", "accepted")])
    await store.apply_snapshot(ApplySnapshot("e1", 9, SESSION, ["A1", "B2"], ["A1", "B2"]))
    assert await inside(store) == {"A1": True, "B2": True}


async def test_another_session_starts_with_nobody_inside(store) -> None:
    await store.apply_snapshot(ApplySnapshot("e1", 7, SESSION, ["A1"], ["A1"], ["A1"], []))
    await store.apply_changes(ApplyChanges(8, [Change(8, "session", session=replace(
        SESSION, name="Workshop, renamed"))]))
    assert await inside(store) == {"A1": True}  # the same session: presence stays
    await store.apply_changes(ApplyChanges(9, [Change(9, "session", session=SessionInfo(
        "s2", "Other", False, capacity=5))]))
    assert await inside(store) == {}
    assert (await store.facts("A1")).session.capacity == 5
    await store.apply_changes(ApplyChanges(10, [Change(10, "admission", code="A1",
                                                       inside=True),
                                                Change(11, "session", session=None)]))
    assert await inside(store) == {} and (await store.status()).inside == 0


async def test_waiting_scans_carry_direction_and_override(store) -> None:
    await store.record_scan(at_door("s-1", "A1"))
    await store.record_scan(at_door("s-2", "A1", Direction.OUT))
    await store.record_scan(at_door("s-3", "A1", override_of="s-0"))
    scans = await store.waiting_scans(0, 10)
    assert [(s.direction, s.override_of) for s in scans] == [
        (None, None), ("out", None), (None, "s-0")]  # an entrance is left out on the wire


# -- issue 17: time sources and the clock anchor --


async def test_scans_record_their_time_source(store) -> None:
    await store.record_scan(record(1))
    await store.record_scan(replace(record(2), time_source="unknown"))
    assert [s["time_source"] for s in await store.scans()] == ["system", "unknown"]
    # Uploaded with it; "system" is left out of the frame (older servers read the scan).
    assert [s.time_source for s in await store.waiting_scans(0, 10)] == [None, "unknown"]
    with pytest.raises(Exception, match="CHECK"):
        await store.record_scan(replace(record(3), time_source="sundial"))


async def test_the_clock_anchor_is_kept_for_the_door_and_status(store, tmp_path) -> None:
    assert await store.clock_anchor() is None
    status = await store.status()
    assert status.clock_anchor is None and status.clock_offset_s is None
    assert status.revoked_at is None
    at = datetime(2026, 11, 28, 9, 0, 0, 123456, tzinfo=UTC)
    await store.note_clock(ClockAnchor(at, 5_000_000_000, "boot-1"), clock_offset_s=-2.5)
    anchor = ClockAnchor(at, 5_000_000_000, "boot-1")
    assert await store.clock_anchor() == anchor
    door = await DoorStore.open(tmp_path)
    try:
        assert await door.clock_anchor() == anchor
        later = ClockAnchor(at + timedelta(minutes=1), 65_000_000_000, "boot-1")
        await store.note_clock(later)  # a scan answer's: the welcome's offset stays
        assert await door.clock_anchor() == later
    finally:
        await door.close()
    status = await store.status()
    assert status.clock_anchor == later and status.clock_offset_s == -2.5


# -- issue 17: keyed hashes, never codes --

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
SECRET = SessionInfo("s1", "Workshop", True)


def secret_scan(n: int, code: str, decision: Decision = Decision.ADMITTED) -> ScanRecord:
    return ScanRecord(f"scan-{n}", code, "s1", decision,
                      "registered" if decision == Decision.ADMITTED else "not_registered",
                      "2026-11-28T10:00:00+00:00", n, "boot")


async def rows(store: SyncStore, sql: str) -> list[tuple]:
    return [tuple(row) for row in await store._db.execute_fetchall(sql)]


async def test_the_cache_holds_keyed_hashes_of_the_codes(store) -> None:
    await store.apply_snapshot(ApplySnapshot("e1", 7, SECRET, ["SECRET-A1", "SECRET-B2"],
                                             ["SECRET-A1"], ["SECRET-B2"], [], code_key=KEY))
    assert await rows(store, "SELECT hash FROM attendees ORDER BY hash") == sorted(
        [(code_hash(KEY, "SECRET-A1"),), (code_hash(KEY, "SECRET-B2"),)])
    assert await rows(store, "SELECT session_id, hash FROM registrants") == [
        ("s1", code_hash(KEY, "SECRET-A1"))]
    assert await rows(store, "SELECT hash, inside FROM admissions") == [
        (code_hash(KEY, "SECRET-B2"), 1)]
    assert len(code_hash(KEY, "SECRET-A1")) == 16
    assert (await store.cache_state()).key_id == code_key_id(KEY)
    facts = await store.facts("SECRET-A1")
    assert facts.is_attendee and facts.is_registrant and not facts.admitted_before
    assert (await store.facts("SECRET-B2")).inside
    assert not (await store.facts("SECRET-C3")).is_attendee
    await store.apply_changes(ApplyChanges(9, [
        Change(8, "registrant", code="SECRET-A1", deleted=True),
        Change(9, "attendee", code="SECRET-C3")]))
    assert (await store.facts("SECRET-C3")).is_attendee
    assert not (await store.facts("SECRET-A1")).is_registrant


async def test_a_scan_keeps_its_code_only_until_the_server_has_it(tmp_path) -> None:
    store = await SyncStore.open(tmp_path)
    await store.apply_snapshot(ApplySnapshot("e1", 7, SECRET, ["SECRET-A1", "SECRET-B2"],
                                             ["SECRET-A1", "SECRET-B2"], [], [], code_key=KEY))
    await store.record_scan(secret_scan(1, "SECRET-A1"))
    await store.record_scan(secret_scan(2, "SECRET-B2"))
    await store.record_scan(secret_scan(3, "SECRET-Q3", Decision.REJECTED))
    await store.record_results([ScanResult("scan-1", "accepted"),
                                ScanResult("scan-2", "duplicate"),
                                ScanResult("scan-3", "refused", "why")])
    await store.record_scan(secret_scan(4, "SECRET-W4"))
    codes = {s["scan_id"]: s["code"] for s in await store.scans()}
    assert codes == {"scan-1": code_hash(KEY, "SECRET-A1").hex(),
                     "scan-2": code_hash(KEY, "SECRET-B2").hex(),
                     "scan-3": "SECRET-Q3", "scan-4": "SECRET-W4"}  # for recovery
    # Stored scans still count for the door (by their hash).
    assert (await store.facts("SECRET-A1")).admitted_before
    await store.close()
    data = b"".join(p.read_bytes() for p in tmp_path.glob(f"{STORE_FILE}*"))
    assert b"SECRET-A1" not in data and b"SECRET-B2" not in data  # nowhere on the card
    assert b"SECRET-W4" in data and b"SECRET-Q3" in data


async def test_a_new_key_replaces_the_hashes_with_the_snapshot(store, tmp_path) -> None:
    await store.apply_snapshot(ApplySnapshot("e1", 7, SECRET, ["SECRET-A1", "SECRET-B2"],
                                             ["SECRET-A1", "SECRET-B2"], [], [], code_key=KEY))
    door = await DoorStore.open(tmp_path)
    try:
        assert (await door.facts("SECRET-A1")).is_registrant  # the door holds KEY now
        await store.record_scan(secret_scan(1, "SECRET-A1"))
        await store.record_scan(secret_scan(2, "SECRET-B2"))
        await store.record_results([ScanResult("scan-1", "accepted")])
        await store.apply_snapshot(ApplySnapshot("e2", 3, SECRET, ["SECRET-A1", "SECRET-B2"],
                                                 ["SECRET-A1", "SECRET-B2"], [], [],
                                                 code_key=OTHER_KEY))
        assert (await store.cache_state()).key_id == code_key_id(OTHER_KEY)
        # The door hashes with the new key at its next lookup.
        a1, b2 = await door.facts("SECRET-A1"), await door.facts("SECRET-B2")
        assert a1.is_registrant and not a1.admitted_before  # the server's word: not inside
        assert b2.inside and b2.occupancy == 1  # its own waiting scan, hashed again
        by_id = {s["scan_id"]: s for s in await store.scans()}
        assert by_id["scan-2"]["code_hash"] == code_hash(OTHER_KEY, "SECRET-B2")
        # The stored scan's code is gone: its hash under the new key cannot be known.
        assert by_id["scan-1"]["code_hash"] == b""
        assert by_id["scan-1"]["code"] == code_hash(KEY, "SECRET-A1").hex()
    finally:
        await door.close()


async def test_without_a_key_the_door_is_not_ready(store, tmp_path) -> None:
    await store.apply_snapshot(ApplySnapshot("e1", 7, SECRET, ["A1"], ["A1"], code_key=KEY))
    async with store.write():  # as a revocation leaves it, but with the session kept
        await store._db.execute("UPDATE sync_state SET code_key = NULL, key_id = NULL")
    assert (await store.facts("A1")).session is None
    door = await DoorStore.open(tmp_path)
    try:
        assert (await door.facts("A1")).session is None
    finally:
        await door.close()


async def test_the_upgrade_forgets_the_cached_codes(tmp_path) -> None:
    """A store of before the hashes (schema 6): the session, the cache and the epoch are
    forgotten (the door is not ready until a snapshot refills them hashed); the scans
    stay, and those the server has lose their codes when the key comes."""
    path = tmp_path / STORE_FILE
    with sqlite3.connect(path) as db:
        for script in MIGRATIONS[:6]:
            db.executescript(script)
        db.execute("PRAGMA user_version = 6")
        db.execute("INSERT INTO session (singleton, session_id, validate_registrants)"
                   " VALUES (1, 's1', 1)")
        db.executemany("INSERT INTO attendees (code) VALUES (?)",
                       [("SECRET-A1",), ("SECRET-B2",), ("SECRET-C3",)])
        db.executemany("INSERT INTO registrants (session_id, code) VALUES ('s1', ?)",
                       [("SECRET-A1",), ("SECRET-B2",), ("SECRET-C3",)])
        for n, (code, state) in enumerate([("SECRET-A1", "stored"), ("SECRET-B2", "waiting")]):
            db.execute("INSERT INTO scans (scan_id, code, session_id, decision, reason,"
                       " scanned_at, monotonic_ns, boot_id, upload_state)"
                       " VALUES (?, ?, 's1', 'admitted', 'registered', 't', 0, 'b', ?)",
                       (f"s{n}", code, state))
        db.execute("UPDATE sync_state SET epoch = 'e1', cursor = 42")
    db.close()
    store = await SyncStore.open(tmp_path)
    try:
        assert (await store.facts("SECRET-A1")).session is None
        state = await store.cache_state()
        assert (state.session_id, state.epoch, state.cursor, state.key_id) == (
            None, None, 0, None)
        status = await store.status()
        assert (status.attendees, status.registrants, status.inside) == (0, 0, 0)
        await store.apply_snapshot(ApplySnapshot("e1", 50, SECRET, ["SECRET-A1", "SECRET-B2"],
                                                 ["SECRET-A1", "SECRET-B2"], [], [],
                                                 code_key=KEY))
        assert [s["code"] for s in await store.scans()] == [
            code_hash(KEY, "SECRET-A1").hex(), "SECRET-B2"]
        assert (await store.facts("SECRET-B2")).inside  # its own waiting admission
    finally:
        await store.close()
    data = b"".join(p.read_bytes() for p in tmp_path.glob(f"{STORE_FILE}*"))
    assert b"SECRET-A1" not in data and b"SECRET-C3" not in data


# -- issue 17: a revoked device --


async def test_a_revoked_device_forgets_its_cache_and_keeps_every_scan(store, tmp_path) -> None:
    await store.apply_snapshot(ApplySnapshot("e1", 7, SECRET, ["SECRET-A1", "SECRET-B2"],
                                             ["SECRET-A1", "SECRET-B2"], ["SECRET-A1"], [],
                                             code_key=KEY))
    door = await DoorStore.open(tmp_path)
    try:
        assert (await door.facts("SECRET-A1")).inside
        for n, code in enumerate(["SECRET-A1", "SECRET-B2", "SECRET-C3"], 1):
            await store.record_scan(secret_scan(n, code))
        await store.record_results([ScanResult("scan-1", "accepted"),
                                    ScanResult("scan-3", "refused", "why")])
        assert await store.wipe_revoked() == (True, 2)  # B2 waiting, C3 quarantined
        assert await store.wipe_revoked() == (False, 2)  # again: nothing new
        assert (await door.facts("SECRET-B2")).session is None  # not_ready
        status = await store.status()
        assert (status.session_id, status.attendees, status.registrants, status.inside,
                status.epoch, status.cursor) == (None, 0, 0, 0, None, 0)
        assert status.revoked_at is not None
        assert (status.scans_waiting, status.scans_quarantined, status.scans_stored) == (1, 1, 1)
        assert await rows(store, "SELECT code_key, key_id FROM sync_state") == [(None, None)]
        assert [s["code"] for s in await store.scans()] == [
            code_hash(KEY, "SECRET-A1").hex(), "SECRET-B2", "SECRET-C3"]
        assert (await store.cache_state()).key_id is None
        # A new token later: welcomed, a fresh snapshot; revoked no more.
        await store.note_link(connected=False, error="refused")
        assert (await store.status()).revoked_at == status.revoked_at
        await store.note_link(connected=True)
        await store.apply_snapshot(ApplySnapshot("e1", 9, SECRET, ["SECRET-B2"], ["SECRET-B2"],
                                                 [], [], code_key=KEY))
        assert (await store.status()).revoked_at is None
        b2 = await door.facts("SECRET-B2")
        assert b2.is_registrant and b2.inside  # its own waiting admission counts again
    finally:
        await door.close()
