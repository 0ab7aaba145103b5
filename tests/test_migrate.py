"""``checkin server migrate``: a server's data, made through the real store in an SQLite
file, copied into a real PostgreSQL database (the run's throwaway cluster) and back;
the store on the copy answers exactly as on the original, and the doors' cursors carry
on. A target that holds data, a missing source and a file that is not a server's are
refused with nothing written."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

from checkin.harness import Postgres, run
from server.database import Connection, open_database
from server.migrate import BATCH, NOT_COPIED, TABLES, MigrationError, migrate
from server.schema import LINK_SECRET_FILE, MIGRATIONS_BY_KIND, SERVER_FILE
from server.store import Attendee, Device, ServerStore
from sync.device_store import STORE_FILE
from sync.messages import Scan, SessionInfo
from sync.store import SyncStore

# More attendees than one batch, so the copy goes on from a key more than once.
ATTENDEES = [f"M{i:05d}" for i in range(2 * BATCH + 500)]
FRONT, SIDE, EXIT = Device("front", "s1"), Device("side", "s1"), Device("exit", "s1")
_names = itertools.count(1)


@pytest.fixture
def pg_url(postgres: Postgres) -> Any:
    """A new, empty PostgreSQL database of the test's own (no schema yet), dropped after."""
    name = f"migrate_{next(_names)}_{uuid.uuid4().hex[:8]}"
    yield postgres.create_database(name)
    postgres.drop_database(name)


def sqlite_url(folder: Path) -> str:
    return f"sqlite://{(folder / SERVER_FILE).absolute()}"


def scan(code: str, minute: int, *, seq: int, direction: str | None = None,
         decision: str = "admitted", reason: str = "registered") -> Scan:
    return Scan(str(uuid.uuid4()), seq, code, "s1", decision, reason,
                f"2026-12-01T09:{minute:02d}:00+00:00", 1_000 + seq, "boot-1",
                direction=direction)


async def make_event(folder: Path) -> dict[str, Any]:
    """A server's data of every kind, made as the API would; what the test needs of it."""
    store = await ServerStore.open(folder)
    try:
        await store.put_session(SessionInfo("s1", "Keynote", True, "2026-12-01T09:00:00Z",
                                            "2026-12-01T10:00:00Z", capacity=500))
        await store.put_session(SessionInfo("s2", "Workshop", False))
        await store.put_session(SessionInfo("gone", "Cancelled", False))
        await store.delete_session("gone")
        await store.upsert_attendees([Attendee(c, f"Attendee {c}", f"{c}@example.org")
                                      for c in ATTENDEES])
        await store.put_registrants("s1", ATTENDEES[:1500])
        await store.put_registrants("s2", ATTENDEES[:10])
        await store.delete_registrant("s1", ATTENDEES[0])  # a removal, pruned below
        pruned = (await store.changes_since("s1", 0))[0]
        assert await store.prune_tombstones(pruned) == 1
        await store.delete_registrant("s1", ATTENDEES[1])  # a removal the doors still need
        tokens = {}
        for device in (FRONT, SIDE, EXIT):
            tokens[device.device_id], _ = await store.put_device(device.device_id, "s1")
        await store.put_device("retired", "s2")
        await store.revoke_device("retired")
        await store.note_hello("front", True)
        await store.note_status("front", {"battery": "ok"})
        # Admissions at two doors (one a double admission), an exit, a rejection, and
        # more scans than one batch, in several pushes.
        await store.store_scans(FRONT, [scan(c, i % 60, seq=i + 1)
                                        for i, c in enumerate(ATTENDEES[2:1102])])
        await store.store_scans(SIDE, [scan(ATTENDEES[2], 30, seq=1),
                                       scan("NOBODY", 31, seq=2, decision="rejected",
                                            reason="unknown_code")])
        out = scan(ATTENDEES[3], 40, seq=1, direction="out")
        await store.store_scans(EXIT, [out])
        link = await store.schedule_link(ATTENDEES[5])
        await store.schedule_link(ATTENDEES[6])
        await store.revoke_schedule_link(ATTENDEES[6])
        horizon = pruned
        cursor = (await store.changes_since("s1", horizon))[0]
    finally:
        await store.close()
    return {"tokens": tokens, "link": link, "horizon": horizon, "cursor": cursor, "exit": out}


async def answers(target: Path | str, event: dict[str, Any]) -> dict[str, Any]:
    """What the store at *target* answers the doors and the organizers."""
    store = await ServerStore.open(target)
    horizon = event["horizon"]
    try:
        return {
            "epoch": store.epoch,
            "view": await store.view(FRONT),
            "sessions": await store.sessions(),
            "snapshot": await store.snapshot_with_admissions("s1"),
            "snapshot s2": await store.snapshot("s2"),
            "behind the horizon": await store.changes_since("s1", horizon - 1),
            "changes": await store.changes_since("s1", horizon, admissions=True),
            "changes s2": await store.changes_since("s2", horizon),
            "attendance": await store.attendance("s1"),
            "export": await store.attendance_export_page("s1", limit=5000),
            "scans": await store.scans_export_page(None, limit=5000),
            "devices": await store.devices(),
            "by token": [await store.device_by_token(t) for t in event["tokens"].values()],
            "link": await store.attendee_by_schedule_token(event["link"]),
            "same link": await store.schedule_link(ATTENDEES[5]) == event["link"],
            "overview": await store.session_overview(),
        }
    finally:
        await store.close()


async def table_names(db: Connection, kind: str) -> set[str]:
    if kind == "sqlite":
        rows = await db.fetchall("SELECT name FROM sqlite_master"
                                 " WHERE type = 'table' AND name NOT LIKE 'sqlite%'")
    else:
        rows = await db.fetchall("SELECT table_name AS name FROM information_schema.tables"
                                 " WHERE table_schema = current_schema()")
    return {r["name"] for r in rows}


async def row_counts(url: str) -> dict[str, int]:
    """Each copied table's rows (those of this software's schema), and meta's seq."""
    database = await open_database(url, MIGRATIONS_BY_KIND)
    try:
        async with database.read() as db:
            present = await table_names(db, database.kind)
            counts = {t: await db.scalar(f"SELECT count(*) FROM {t}")
                      for t in TABLES if t in present}
            counts["seq"] = await db.scalar("SELECT seq FROM meta")
            return counts
    finally:
        await database.close()


async def meta_row(url: str) -> dict[str, Any]:
    database = await open_database(url, MIGRATIONS_BY_KIND)
    try:
        async with database.read() as db:
            return dict(await db.fetchone("SELECT * FROM meta") or {})
    finally:
        await database.close()


async def test_a_server_migrated_to_postgresql_and_back_answers_the_same(
        tmp_path: Path, pg_url: str) -> None:
    event = await make_event(tmp_path / "old")
    before = await answers(tmp_path / "old", event)
    assert before["behind the horizon"] is None
    assert before["link"] is not None and before["same link"]

    report = await migrate(sqlite_url(tmp_path / "old"), pg_url)

    assert await answers(pg_url, event) == before
    counts = await row_counts(pg_url)
    for table in set(counts) - {"seq"}:
        assert f"  {table}" in report
    # Every column of meta: the epoch and seq, and what the doors' caches depend on.
    assert await meta_row(pg_url) == await meta_row(sqlite_url(tmp_path / "old"))
    assert f"{counts['attendees']:,}" in report and counts["attendees"] == len(ATTENDEES)
    assert counts["scans"] == 1103
    assert "--database" in report and "CHECKIN_ADMIN_TOKEN" in report

    # And back into a new SQLite file, the link secret written beside it.
    await migrate(pg_url, sqlite_url(tmp_path / "back"))
    assert (tmp_path / "back" / LINK_SECRET_FILE).read_text() == \
        (tmp_path / "old" / LINK_SECRET_FILE).read_text()
    assert await answers(tmp_path / "back", event) == before


async def test_doors_carry_on_from_their_cursor_after_a_migration(
        tmp_path: Path, pg_url: str) -> None:
    event = await make_event(tmp_path / "old")
    await migrate(sqlite_url(tmp_path / "old"), pg_url)
    store = await ServerStore.open(pg_url)
    try:
        await store.put_registrant("s1", ATTENDEES[1900])
        # A door in sync before the migration hears of exactly the new change, with the
        # next seq after the old server's last: no snapshot, nothing skipped or repeated.
        cursor, changes = await store.changes_since("s1", event["cursor"])
        assert [(c.seq, c.kind, c.code) for c in changes] == [
            (event["cursor"] + 1, "registrant", ATTENDEES[1900])]
        assert cursor == event["cursor"] + 1
    finally:
        await store.close()
    scans = (await row_counts(pg_url))["scans"]
    store = await ServerStore.open(pg_url)
    try:
        # A scan the door pushes again (its answer was lost in the move) is stored once.
        [again] = await store.store_scans(EXIT, [event["exit"]])
        assert again.result == "duplicate"
    finally:
        await store.close()
    assert (await row_counts(pg_url))["scans"] == scans


async def test_a_target_that_holds_data_is_refused_and_left_as_it_was(
        tmp_path: Path, pg_url: str) -> None:
    await make_event(tmp_path / "old")
    other = await ServerStore.open(pg_url)
    try:
        await other.put_session(SessionInfo("mine", "Already here", False))
        epoch = other.epoch
    finally:
        await other.close()
    before = await row_counts(pg_url)

    with pytest.raises(MigrationError, match="not empty") as refused:
        await migrate(sqlite_url(tmp_path / "old"), pg_url)

    assert "1 sessions" in str(refused.value) and pg_url.rsplit("/", 1)[1] in str(refused.value)
    assert await row_counts(pg_url) == before
    again = await ServerStore.open(pg_url)
    try:
        assert again.epoch == epoch
        assert [s["session_id"] for s in await again.sessions()] == ["mine"]
    finally:
        await again.close()


async def test_a_target_with_a_used_sequence_and_no_rows_is_refused_too(
        tmp_path: Path, pg_url: str) -> None:
    """Its doors may hold seqs the copy would give again (its rows pruned, say)."""
    await make_event(tmp_path / "old")
    database = await open_database(pg_url, MIGRATIONS_BY_KIND)
    try:
        async with database.write() as db:
            await db.execute("UPDATE meta SET seq = 7")
    finally:
        await database.close()
    with pytest.raises(MigrationError, match="change sequence at 7"):
        await migrate(sqlite_url(tmp_path / "old"), pg_url)


async def test_a_missing_source_or_one_that_is_not_a_servers_is_refused(
        tmp_path: Path, pg_url: str) -> None:
    missing = tmp_path / "nowhere" / SERVER_FILE
    with pytest.raises(MigrationError, match="there is no file"):
        await migrate(f"sqlite://{missing}", pg_url)
    assert not missing.parent.exists()  # not made by trying

    door = await SyncStore.open(tmp_path / "door")  # a door's store: SQLite, not a server's
    await door.close()
    door_file = tmp_path / "door" / STORE_FILE
    with pytest.raises(MigrationError, match="not a checkin server database"):
        await migrate(f"sqlite://{door_file}", pg_url)

    text = tmp_path / "notes.sqlite3"
    text.write_text("not a database at all, but long enough to have a header " * 10)
    with pytest.raises(MigrationError, match="not an SQLite database"):
        await migrate(f"sqlite://{text}", pg_url)

    # An empty PostgreSQL database is no server's either, and stays empty.
    with pytest.raises(MigrationError, match="not a checkin server database"):
        await migrate(pg_url, sqlite_url(tmp_path / "new"))
    assert not (tmp_path / "new").exists()
    with pytest.raises(MigrationError, match="both the source and the target"):
        await migrate(sqlite_url(tmp_path / "old"), sqlite_url(tmp_path / "old"))
    async with await psycopg.AsyncConnection.connect(pg_url) as db:
        cursor = await db.execute("SELECT count(*) FROM information_schema.tables"
                                  " WHERE table_schema = current_schema()")
        assert await cursor.fetchone() == (0,)


async def test_a_database_that_cannot_be_opened_is_named(tmp_path: Path,
                                                          postgres: Postgres) -> None:
    await make_event(tmp_path / "old")
    absent = postgres.url("no_such_database")
    with pytest.raises(MigrationError, match=r"cannot open the target database .*no_such"):
        await migrate(sqlite_url(tmp_path / "old"), absent)


async def test_every_table_of_either_schema_is_copied(tmp_path: Path, pg_url: str) -> None:
    """A table added by a later migration must be copied, or said to be left out."""
    for url in (sqlite_url(tmp_path), pg_url):
        database = await open_database(url, MIGRATIONS_BY_KIND)
        try:
            async with database.read() as db:
                names = await table_names(db, database.kind)
        finally:
            await database.close()
        assert names <= TABLES.keys() | NOT_COPIED, url


def test_checkin_server_migrate_copies_refuses_and_checks_its_urls(
        tmp_path: Path, pg_url: str) -> None:
    asyncio.run(make_event(tmp_path / "old"))
    source = sqlite_url(tmp_path / "old")

    done = run("server", "migrate", "--from", source, "--to", pg_url)
    assert done.returncode == 0, done.stderr
    assert "attendees" in done.stdout and f"{len(ATTENDEES):,}" in done.stdout
    assert f"--database {pg_url}" in done.stdout

    again = run("server", "migrate", "--from", source, "--to", pg_url)
    assert again.returncode == 1
    assert "not empty" in again.stderr and again.stdout == ""

    wrong = run("server", "migrate", "--from", source, "--to", "mysql://db/checkin")
    assert wrong.returncode == 2
    assert "expected sqlite:///PATH or postgresql://" in wrong.stderr


async def test_a_row_the_target_refuses_is_named_and_nothing_is_kept(
        tmp_path: Path, pg_url: str) -> None:
    """SQLite keeps what its column types would refuse (text in an INTEGER column, as an
    old bug might have left); PostgreSQL does not: the whole copy is undone."""
    await make_event(tmp_path / "old")
    with contextlib.closing(sqlite3.connect(tmp_path / "old" / SERVER_FILE)) as db, db:
        db.execute("UPDATE scans SET monotonic_ns = 'soon' WHERE rowid = 1050")
    with pytest.raises(MigrationError, match=r"refused a row of table scans.*'soon'"):
        await migrate(sqlite_url(tmp_path / "old"), pg_url)
    assert set((await row_counts(pg_url)).values()) == {0}
