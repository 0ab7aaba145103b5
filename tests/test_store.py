"""The device store on real files, with two connections standing in for two processes."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import pytest

from core.database import connect, scalar
from core.rules import Decision, Direction, Facts, Policy, Reason, SessionRules, decide
from sync.device_schema import MIGRATIONS
from sync.device_store import (
    STORE_FILE,
    DoorStore,
    ScanRecord,
    Store,
    StoreError,
    UploadState,
)

SESSION = SessionRules("keynote", validate_registrants=True)


def scan(code: str = "A1", decision: Decision = Decision.ADMITTED,
         reason: str = "registered") -> ScanRecord:
    return ScanRecord(str(uuid.uuid4()), code, "keynote", decision, reason,
                      "2026-11-28T10:00:00+01:00", 123, "boot-1")


async def test_a_new_store_is_migrated_in_wal_mode_with_full_sync(tmp_path: Path) -> None:
    store = await Store.open(tmp_path)
    try:
        assert await scalar(store._db, "PRAGMA user_version") == len(MIGRATIONS)
        assert await scalar(store._db, "PRAGMA journal_mode") == "wal"
        assert await scalar(store._db, "PRAGMA synchronous") == 2  # FULL
        assert await scalar(store._db, "PRAGMA busy_timeout") == 5000
    finally:
        await store.close()
    # reopening an up-to-date store migrates nothing and keeps the data
    store = await Store.open(tmp_path)
    await store.close()


async def test_rows_are_read_by_column_name(tmp_path: Path) -> None:
    store = await Store.open(tmp_path)
    try:
        rows = await store._db.execute_fetchall("SELECT 1 AS one")
        assert [row["one"] for row in rows] == [1]
    finally:
        await store.close()


async def test_the_decision_and_upload_state_enums_are_the_schemas_words(tmp_path: Path) -> None:
    """The schema's CHECK constraints take every enum value and nothing else."""
    store = await Store.open(tmp_path)
    await store.close()
    with sqlite3.connect(tmp_path / STORE_FILE) as db:
        for n, (decision, state) in enumerate(
                (d, u) for d in [*Decision, "maybe"] for u in [*UploadState, "lost"]):
            insert = ("INSERT INTO scans (scan_id, code, decision, reason, scanned_at,"
                      " monotonic_ns, boot_id, upload_state) VALUES (?, 'A1', ?, 'r', 't', 0,"
                      " 'b', ?)", (f"s{n}", str(decision), str(state)))
            if decision == "maybe" or state == "lost":
                with pytest.raises(sqlite3.IntegrityError):
                    db.execute(*insert)
            else:
                db.execute(*insert)
        db.execute("INSERT INTO scans (scan_id, code, decision, reason, scanned_at, monotonic_ns,"
                   " boot_id) VALUES ('new', 'A1', 'admitted', 'r', 't', 0, 'b')")
        new = db.execute("SELECT upload_state FROM scans WHERE scan_id = 'new'").fetchone()[0]
    assert new == UploadState.WAITING  # a recorded scan waits for upload


async def test_facts_before_any_sync_say_not_ready(tmp_path: Path) -> None:
    store = await Store.open(tmp_path)
    try:
        facts = await store.facts("A1")
        assert facts.session is None
    finally:
        await store.close()


async def test_facts_reflect_the_cache_and_past_admissions(tmp_path: Path) -> None:
    store = await Store.open(tmp_path)
    try:
        await store.replace_cache(SESSION, ["A1", "A2", "A3"], ["A1", "A2"])
        a1 = await store.facts("A1")
        assert a1.session == SESSION
        assert (a1.is_attendee, a1.is_registrant, a1.admitted_before) == (True, True, False)
        a3 = await store.facts("A3")
        assert (a3.is_attendee, a3.is_registrant) == (True, False)
        nobody = await store.facts("ZZ")
        assert (nobody.is_attendee, nobody.is_registrant) == (False, False)
        await store.record_scan(scan("A1"))
        await store.record_scan(scan("A2", Decision.REJECTED, "outside_window"))
        assert (await store.facts("A1")).admitted_before
        assert not (await store.facts("A2")).admitted_before  # a rejection is no admission
        assert (await store.facts(None)).session == SESSION
    finally:
        await store.close()


async def test_scans_get_increasing_sequence_numbers_and_wait_for_upload(tmp_path: Path) -> None:
    store = await Store.open(tmp_path)
    try:
        seqs = [await store.record_scan(scan(f"A{i}")) for i in range(5)]
        assert seqs == sorted(seqs) and len(set(seqs)) == 5
        rows = await store.scans()
        assert [r["seq"] for r in rows] == seqs
        assert {r["upload_state"] for r in rows} == {"waiting"}
    finally:
        await store.close()


async def test_a_duplicate_scan_id_is_refused_and_nothing_half_written(tmp_path: Path) -> None:
    store = await Store.open(tmp_path)
    try:
        record = scan()
        await store.record_scan(record)
        with pytest.raises(StoreError, match="UNIQUE"):
            await store.record_scan(record)
        assert len(await store.scans()) == 1
        await store.record_scan(scan())  # the connection is still usable
    finally:
        await store.close()


async def test_the_door_sees_the_daemons_changes_without_reopening(tmp_path: Path) -> None:
    door, daemon = await Store.open(tmp_path), await Store.open(tmp_path)
    try:
        assert (await door.facts("A1")).session is None
        await daemon.replace_cache(SESSION, ["A1"], [])
        facts = await door.facts("A1")
        assert facts.session == SESSION and not facts.is_registrant
        await daemon.replace_cache(SESSION, ["A1"], ["A1"])
        assert (await door.facts("A1")).is_registrant
    finally:
        await door.close()
        await daemon.close()


async def test_two_connections_write_at_the_same_time_without_losing_anything(
        tmp_path: Path) -> None:
    door, daemon = await Store.open(tmp_path), await Store.open(tmp_path)
    try:
        async def scans() -> None:
            for i in range(100):
                await door.record_scan(scan(f"S{i}"))

        async def snapshots() -> None:
            for i in range(20):
                await daemon.replace_cache(SESSION, [f"A{j}" for j in range(i * 50)], ["A1"])

        await asyncio.gather(scans(), snapshots())
        assert len(await door.scans()) == 100
        assert (await door.facts("A949")).is_attendee
    finally:
        await door.close()
        await daemon.close()


async def test_a_committed_scan_survives_a_process_that_never_closed(tmp_path: Path) -> None:
    code = (
        "import asyncio, sys\n"
        "sys.path.insert(0, sys.argv[2])\n"
        "from tests.test_store import scan\n"
        "from sync.device_store import Store\n"
        "async def main():\n"
        "    store = await Store.open(sys.argv[1])\n"
        "    await store.record_scan(scan('KILLED'))\n"
        "    import os; os._exit(9)  # no close, no checkpoint\n"
        "asyncio.run(main())\n"
    )
    repo = Path(__file__).resolve().parent.parent
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", code, str(tmp_path),
                                                str(repo))
    assert await proc.wait() == 9
    store = await Store.open(tmp_path)
    try:
        assert [r["code"] for r in await store.scans()] == ["KILLED"]
    finally:
        await store.close()


async def test_a_store_from_newer_software_is_refused(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / STORE_FILE) as db:
        db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    with pytest.raises(StoreError, match="newer than this software"):
        await Store.open(tmp_path)


@pytest.fixture
def read_only_dir(tmp_path: Path):
    """A folder the store cannot write to: chmod for users, a read-only tmpfs for root."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o500)
        yield folder
        folder.chmod(0o700)
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here: {mounted.stderr.decode().strip()}")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


async def test_a_read_only_data_dir_is_reported(read_only_dir: Path) -> None:
    with pytest.raises(StoreError, match="cannot open store"):
        await Store.open(read_only_dir)


async def test_an_uncreatable_data_dir_is_reported(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(StoreError, match="cannot create data dir"):
        await Store.open(tmp_path / "file" / "data")


async def test_a_corrupt_store_file_is_reported(tmp_path: Path) -> None:
    (tmp_path / STORE_FILE).write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="cannot open store"):
        await Store.open(tmp_path)


# -- issue 14: the doors' shared presence, occupancy, exits and the door's own thread --


def at_door(code: str, direction: Direction = Direction.IN, decision: Decision = Decision.ADMITTED,
            reason: str = "registered", session: str = "keynote") -> ScanRecord:
    return ScanRecord(str(uuid.uuid4()), code, session, decision, reason,
                      "2026-11-28T10:00:00+01:00", 123, "boot-1", direction)


async def test_facts_count_shared_admissions_exits_and_own_scans(tmp_path: Path) -> None:
    store = await Store.open(tmp_path)
    try:
        await store.replace_cache(replace(SESSION, capacity=3), ["A1", "A2", "A3", "A4"],
                                  ["A1", "A2", "A3", "A4"], admissions=["A1", "A2"],
                                  exits=["A3"])
        a1, a3, a4 = [await store.facts(c) for c in ("A1", "A3", "A4")]
        assert (a1.admitted_before, a1.inside, a1.occupancy) == (True, True, 2)
        assert (a3.admitted_before, a3.inside) == (True, False)  # left through an exit
        assert (a4.admitted_before, a4.inside) == (False, False)
        assert a4.session is not None and a4.session.capacity == 3
        # this door's own admission counts at once, an exit takes one out again
        await store.record_scan(at_door("A4"))
        assert (await store.facts("A4")).inside and (await store.facts("A4")).occupancy == 3
        await store.record_scan(at_door("A1", Direction.OUT))
        a1 = await store.facts("A1")
        assert (a1.admitted_before, a1.inside, a1.occupancy) == (True, False, 2)
        # rejections and scans of another session change nothing
        await store.record_scan(at_door("A3", decision=Decision.REJECTED, reason="full"))
        await store.record_scan(at_door("A3", session="elsewhere"))
        assert (await store.facts("A3")).occupancy == 2
        assert not (await store.facts("A3")).inside
    finally:
        await store.close()


async def test_occupancy_is_kept_by_triggers_not_counted(tmp_path: Path) -> None:
    store = await Store.open(tmp_path)
    await store.close()
    with sqlite3.connect(tmp_path / STORE_FILE) as db:
        db.execute("INSERT INTO admissions VALUES ('A', 1), ('B', 1), ('C', 0)")
        db.execute("UPDATE admissions SET inside = 0 WHERE hash = 'A'")
        db.execute("UPDATE admissions SET inside = 1 WHERE hash = 'C'")
        db.execute("UPDATE admissions SET inside = 1 WHERE hash = 'C'")  # no change
        db.execute("INSERT INTO admissions VALUES ('B', 0) ON CONFLICT (hash)"
                   " DO UPDATE SET inside = excluded.inside")
        counted = db.execute("SELECT count(*) FROM admissions WHERE inside").fetchone()[0]
        kept = db.execute("SELECT inside FROM occupancy").fetchone()[0]
        assert kept == counted == 1
        db.execute("DELETE FROM admissions")
        assert db.execute("SELECT inside FROM occupancy").fetchone()[0] == 0


async def test_the_door_store_decides_and_records_in_one_call(tmp_path: Path) -> None:
    store = await Store.open(tmp_path)
    await store.replace_cache(replace(SESSION, capacity=1), ["A1", "A2"], ["A1", "A2"])
    door = await DoorStore.open(tmp_path)
    try:
        policy, now = Policy(), datetime.now().astimezone()

        def judge(facts: Facts) -> Reason:
            return decide(True, facts, policy, now)

        def record(code: str) -> Callable[[Facts, Reason], ScanRecord]:
            return lambda facts, reason: ScanRecord(
                str(uuid.uuid4()), code, facts.session_id, reason.decision, reason,
                now.isoformat(), 1, "boot")

        first = await door.decide_and_record("A1", judge, record("A1"))
        assert (first.reason, first.seq, first.facts.occupancy) == (Reason.REGISTERED, 1, 0)
        full = await door.decide_and_record("A2", judge, record("A2"))
        assert (full.reason, full.facts.occupancy) == (Reason.FULL, 1)
        again = await door.decide_and_record("A1", judge, record("A1"))
        assert again.reason is Reason.REENTRY  # inside already: adds nobody
        assert [s["reason"] for s in await store.scans()] == ["registered", "full", "reentry"]
        assert (await door.facts("A1")).inside
    finally:
        await door.close()
        await store.close()


async def test_a_door_store_write_that_fails_returns_what_was_decided(tmp_path: Path) -> None:
    store = await Store.open(tmp_path)
    await store.replace_cache(SESSION, ["A1"], ["A1"])
    await store.close()
    door = await DoorStore.open(tmp_path)
    try:
        taken = ScanRecord("same-id", "A1", "keynote", Decision.ADMITTED, "registered",
                           "2026-11-28T10:00:00+01:00", 1, "b")
        await door.record(taken)
        decided = await door.decide_and_record("A1", lambda f: Reason.REENTRY,
                                               lambda f, r: taken)
        assert decided.seq is None and "UNIQUE" in (decided.error or "")
        assert decided.facts.session_id == "keynote" and decided.reason is Reason.REENTRY
    finally:
        await door.close()


async def test_the_door_store_needs_a_migrated_file(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="schema version 0"):
        await DoorStore.open(tmp_path)


async def test_migrating_counts_the_admissions_made_before(tmp_path: Path) -> None:
    path = tmp_path / STORE_FILE
    with sqlite3.connect(path) as db:
        for script in MIGRATIONS[:3]:
            db.executescript(script)
        db.execute("PRAGMA user_version = 3")
        db.execute("INSERT INTO session (singleton, session_id, validate_registrants)"
                   " VALUES (1, 'keynote', 1)")
        for n, (code, decision) in enumerate([("A1", "admitted"), ("A1", "admitted"),
                                              ("A2", "rejected"), ("A3", "admitted")]):
            db.execute("INSERT INTO scans (scan_id, code, session_id, decision, reason,"
                       " scanned_at, monotonic_ns, boot_id) VALUES (?, ?, 'keynote', ?, 'r',"
                       " 't', 0, 'b')", (f"s{n}", code, decision))
        db.execute("UPDATE sync_state SET epoch = 'e1', cursor = 42")
    db.close()
    db = await connect(path, MIGRATIONS[:4])  # the schema that brought admissions
    try:
        rows = await db.execute_fetchall("SELECT code, inside FROM admissions")
        assert {row["code"]: row["inside"] for row in rows} == {"A1": 1, "A3": 1}
        assert await scalar(db, "SELECT inside FROM occupancy") == 2
        assert await scalar(db, "SELECT count(DISTINCT direction) FROM scans") == 1
        # The other doors' admissions before the upgrade are behind the cursor: the
        # forgotten epoch brings a snapshot that carries them.
        assert await scalar(db, "SELECT epoch FROM sync_state") is None
    finally:
        await db.close()
