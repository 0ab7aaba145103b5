"""Cancelling a task at every await point of a transaction leaves the database as it found it.

aiosqlite runs each statement on its own thread: a statement whose awaiting task
is cancelled still runs there. The defect this guards against: a link's task
cancelled while it awaited ``BEGIN IMMEDIATE`` left a transaction open that
nothing ended, and every later write of the server failed ("cannot start a
transaction within a transaction") while its reader stayed on an old snapshot.

:class:`CancelAt` wraps a real connection and cancels the calling task at its
*n*-th statement, after the statement was handed to the database thread, which
is exactly when a real cancellation hurts. Each test runs an operation with
*n* = 1, 2, ... until it completes, and checks after each cancelled run that
the database holds either everything the operation writes or nothing of it,
that no transaction is left open, and that the next write and read work and see
the latest committed state.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sqlite3
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from core.clock import wall_now
from core.database import ReadTransaction, WriteTransaction, connect, run_to_end
from server.schema import SERVER_FILE
from server.store import Attendee, Device, ServerStore
from sync.device_end import ApplyChanges, ApplySnapshot
from sync.messages import Change, Scan, ScanResult, SessionInfo
from sync.store import SyncStore

#: The connection's methods that hand a statement to the database thread.
STATEMENTS = frozenset({"execute", "execute_fetchall", "executemany", "execute_insert"})


class CancelAt:
    """An aiosqlite connection that cancels a task at its *n*-th statement.

    The task is the one that ran the operation (``counter.task``), as when a link's
    task is cancelled: not a helper task the code under test made for itself.
    """

    def __init__(self, db: Any, counter: Counter, n: int) -> None:
        self._db = db
        self._counter = counter
        self._n = n

    def _statement(self) -> None:
        self._counter.statements += 1
        if self._counter.statements == self._n:
            task = self._counter.task or asyncio.current_task()
            assert task is not None
            # Delivered while the statement waits on the database thread.
            asyncio.get_running_loop().call_soon(task.cancel)

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._db, name)
        if name not in STATEMENTS:
            return attribute

        def statement(*args: Any) -> Any:
            self._statement()
            return attribute(*args)

        return statement


class Counter:
    """Statements run so far, and the task to cancel."""

    def __init__(self) -> None:
        self.statements = 0
        self.task: asyncio.Task | None = None

    def start(self, coroutine: Awaitable[Any]) -> asyncio.Task:
        self.task = asyncio.ensure_future(coroutine)
        return self.task


#: Columns that differ between two runs of the same operation.
TIMES = {"received_at", "last_seen_at", "revoked_at", "created_at", "last_sync_at",
         "updated_at", "deleted_at"}


def dump(path: Path) -> dict[str, list[tuple]]:
    """Every row of every table of the SQLite file at *path* (times left out), sorted."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'"
                                           " AND name NOT LIKE 'sqlite_%'")]
        state = {}
        for table in tables:
            columns = [f"{r[1]} IS NOT NULL" if r[1] == "token_hash" else r[1]  # random
                       for r in db.execute(f"PRAGMA table_info({table})") if r[1] not in TIMES]
            state[table] = sorted(map(tuple, db.execute(
                f"SELECT {', '.join(columns)} FROM {table}")), key=repr)
        return state


# -- the transaction classes on their own ------------------------------------------


MIGRATIONS = ("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT NOT NULL);",)


async def test_a_write_cancelled_at_any_statement_is_all_or_nothing(tmp_path) -> None:
    db = await connect(tmp_path / "t.sqlite3", MIGRATIONS)
    lock = asyncio.Lock()
    try:
        for n in range(1, 20):
            counter = Counter()
            wrapped = CancelAt(db, counter, n)

            async def write(key: int = n, conn: Any = wrapped) -> None:
                async with WriteTransaction(conn, tmp_path, lock) as tx:
                    await tx.execute("INSERT INTO t VALUES (?, 'a')", (key,))
                    await tx.execute("INSERT INTO t VALUES (?, 'b')", (key + 1000,))

            task = counter.start(write())
            with contextlib.suppress(asyncio.CancelledError):
                await task
            assert not db.in_transaction, f"transaction left open after cancel at {n}"
            rows = await db.execute_fetchall("SELECT k FROM t WHERE k IN (?, ?)", (n, n + 1000))
            assert len(rows) in (0, 2), f"half a transaction committed after cancel at {n}"
            assert task.cancelled() == (len(rows) == 0 or counter.statements >= n)
            async with WriteTransaction(db, tmp_path, lock) as tx:  # the next write works
                await tx.execute("INSERT INTO t VALUES (?, 'next')", (5000 + n,))
            if counter.statements < n:  # the write ran to the end without reaching statement n
                assert len(rows) == 2 and not task.cancelled()
                break
        else:
            pytest.fail("the write never completed")
    finally:
        await db.close()


async def test_a_read_cancelled_at_any_statement_leaves_no_snapshot_pinned(tmp_path) -> None:
    path = tmp_path / "t.sqlite3"
    writer = await connect(path, MIGRATIONS)
    reader = await connect(path, MIGRATIONS)
    read_lock, write_lock = asyncio.Lock(), asyncio.Lock()
    try:
        for n in range(1, 20):
            counter = Counter()
            wrapped = CancelAt(reader, counter, n)

            async def read(conn: Any = wrapped) -> None:
                async with ReadTransaction(conn, path, read_lock) as tx:
                    await tx.execute_fetchall("SELECT count(*) FROM t")
                    await tx.execute_fetchall("SELECT max(k) FROM t")

            task = counter.start(read())
            with contextlib.suppress(asyncio.CancelledError):
                await task
            assert not reader.in_transaction, f"read transaction left open after cancel at {n}"
            async with WriteTransaction(writer, path, write_lock) as tx:
                await tx.execute("INSERT INTO t VALUES (?, 'new')", (n,))
            async with ReadTransaction(reader, path, read_lock) as tx:  # sees the new row
                rows = await tx.execute_fetchall("SELECT v FROM t WHERE k = ?", (n,))
                assert [row["v"] for row in rows] == ["new"]
            if counter.statements < n:
                break
        else:
            pytest.fail("the read never completed")
    finally:
        await writer.close()
        await reader.close()


async def test_run_to_end_passes_the_cancellation_on_after_the_work_is_done() -> None:
    finished = []

    async def work() -> str:
        await asyncio.sleep(0.01)
        finished.append(True)
        return "done"

    task = asyncio.create_task(run_to_end(work()))
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.sleep(0)
    task.cancel()  # twice: still runs to the end
    with pytest.raises(asyncio.CancelledError):
        await task
    assert finished == [True]
    assert await run_to_end(work()) == "done"

    async def fail() -> None:
        raise ValueError("its own error")

    with pytest.raises(ValueError, match="its own error"):
        await run_to_end(fail())


# -- the server's store: every write and read it makes --------------------------------


def scan(code: str, scan_id: str | None = None) -> Scan:
    return Scan(scan_id or str(uuid.uuid4()), 1, code, "s1", "admitted", "registered",
                "2026-11-28T10:00:00+00:00", 5, "boot")


@pytest.fixture
async def server_template(tmp_path) -> Path:
    store = await ServerStore.open(tmp_path / "template")
    await store.put_session(SessionInfo("s1", "One", True))
    await store.upsert_attendees([Attendee(c, f"Name {c}") for c in ("A1", "B2", "C3")])
    await store.put_registrant("s1", "A1")
    await store.put_registrant("s1", "C3")
    await store.delete_registrant("s1", "C3")  # a tombstone to prune
    await store.put_device("door-1", "s1")
    await store.close()
    return tmp_path / "template" / SERVER_FILE


SCAN_IDS = [str(uuid.UUID(int=i)) for i in range(1, 4)]

WRITES: dict[str, Callable[[ServerStore], Awaitable[Any]]] = {
    "put_registrant": lambda s: s.put_registrant("s1", "B2"),
    "delete_registrant": lambda s: s.delete_registrant("s1", "A1"),
    "upsert_attendees": lambda s: s.upsert_attendees([Attendee("D4", "D"), Attendee("A1", "A")]),
    "put_session": lambda s: s.put_session(SessionInfo("s2", "Two", False)),
    "put_device": lambda s: s.put_device("door-2", "s1"),
    "revoke_device": lambda s: s.revoke_device("door-1"),
    "note_status": lambda s: s.note_status("door-1", {"cursor": 9}),
    "store_scans": lambda s: s.store_scans(Device("door-1", "s1"),
                                           [scan("A1", i) for i in SCAN_IDS]),
    "prune_tombstones": lambda s: s.prune_tombstones(100),
    "prune_tombstones_before": lambda s: s.prune_tombstones_before(
        wall_now() + timedelta(days=1)),
}
READS: dict[str, Callable[[ServerStore], Awaitable[Any]]] = {
    "renew_epoch": lambda s: s.renew_epoch(),  # a write, but its result is random
    "snapshot": lambda s: s.snapshot("s1"),
    "changes_since": lambda s: s.changes_since("s1", 0),
    "view": lambda s: s.view(Device("door-1", "s1")),
    "device_by_token": lambda s: s.device_by_token("no-such-token"),
    "sessions": lambda s: s.sessions(),
    "devices": lambda s: s.devices(),
    "attendance": lambda s: s.attendance("s1"),
}


async def _cancelled_run(template: Path, root: Path, n: int,
                         operation: Callable[[ServerStore], Awaitable[Any]]
                         ) -> tuple[ServerStore, bool, Path]:
    """Run *operation* on a fresh copy of *template*, cancelled at statement *n*; return
    the store (still open) and whether statement *n* was reached."""
    data = root / f"run-{n}"
    data.mkdir()
    shutil.copy(template, data / SERVER_FILE)
    store = await ServerStore.open(data)
    counter = Counter()
    database = store.database  # SQLite's: its writer and reader connections
    real_db, real_reader = database._writer, database._reader  # type: ignore[attr-defined]
    database._writer = CancelAt(real_db, counter, n)  # type: ignore[attr-defined]
    database._reader = CancelAt(real_reader, counter, n)  # type: ignore[attr-defined]
    task = counter.start(operation(store))
    with contextlib.suppress(asyncio.CancelledError):
        await task
    if store._scan_writer is not None:  # the group commit's own task
        with contextlib.suppress(asyncio.CancelledError):
            await store._scan_writer
    database._writer, database._reader = real_db, real_reader  # type: ignore[attr-defined]
    assert not real_db.in_transaction and not real_reader.in_transaction, \
        f"transaction left open after a cancel at statement {n}"
    return store, counter.statements >= n, data / SERVER_FILE


async def _still_works(store: ServerStore, n: int) -> None:
    """The next write commits and the next reads see it (nothing pinned or wedged)."""
    code = f"Z{n}"
    await store.upsert_attendees([Attendee(code, "After")])
    _, _, attendees, _ = await store.snapshot("s1")
    assert code in attendees
    results = await store.store_scans(Device("door-1", "s1"), [scan("A1")])
    assert [r.result for r in results] == ["accepted"]


@pytest.mark.parametrize("name", list(WRITES))
async def test_every_server_write_cancelled_anywhere_is_all_or_nothing(
        name: str, server_template: Path, tmp_path: Path) -> None:
    operation = WRITES[name]
    before = dump(server_template)
    reference = tmp_path / "reference"
    reference.mkdir()
    shutil.copy(server_template, reference / SERVER_FILE)
    store = await ServerStore.open(reference)
    await operation(store)
    await store.close()
    after = dump(reference / SERVER_FILE)
    assert after != before, "the operation must change something"
    for n in range(1, 60):
        store, reached, path = await _cancelled_run(server_template, tmp_path, n, operation)
        try:
            state = dump(path)
            for table in state:
                assert state[table] in (before[table], after[table]), (
                    f"{name} cancelled at statement {n}: table {table} half written")
            changed = {t for t in state if state[t] != before[t]}
            assert not changed or changed == {t for t in after if after[t] != before[t]}, (
                f"{name} cancelled at statement {n}: only {changed} written")
            await _still_works(store, n)
        finally:
            await store.close()
        if not reached:
            break
    else:
        pytest.fail(f"{name} never completed")


@pytest.mark.parametrize("name", list(READS))
async def test_every_server_read_cancelled_anywhere_leaves_the_reader_fresh(
        name: str, server_template: Path, tmp_path: Path) -> None:
    for n in range(1, 60):
        store, reached, _ = await _cancelled_run(server_template, tmp_path, n, READS[name])
        try:
            await _still_works(store, n)
        finally:
            await store.close()
        if not reached:
            break
    else:
        pytest.fail(f"{name} never completed")


async def test_a_cancelled_link_does_not_stop_the_others_scans(server_template: Path,
                                                               tmp_path: Path) -> None:
    """Two links push at once (one group commit); one is cancelled while it waits."""
    data = tmp_path / "live"
    data.mkdir()
    shutil.copy(server_template, data / SERVER_FILE)
    store = await ServerStore.open(data)
    try:
        first = asyncio.create_task(store.store_scans(Device("door-1", "s1"), [scan("A1")]))
        second = asyncio.create_task(store.store_scans(Device("door-1", "s1"), [scan("B2")]))
        await asyncio.sleep(0)
        first.cancel()
        results = await second
        assert [r.result for r in results] == ["accepted"]
        await _still_works(store, 0)
    finally:
        await store.close()


# -- the device's store, as the sync daemon writes it ---------------------------------


DEVICE_WRITES: dict[str, Callable[[SyncStore], Awaitable[Any]]] = {
    "apply_snapshot": lambda s: s.apply_snapshot(ApplySnapshot(
        "E1", 10, SessionInfo("s1", "One", True), ["A1", "B2"], ["A1"])),
    "apply_changes": lambda s: s.apply_changes(ApplyChanges(12, [
        Change(11, "attendee", "C3"), Change(12, "registrant", "C3")])),
    "record_results": lambda s: s.record_results([ScanResult("scan-1", "accepted")]),
    "note_link": lambda s: s.note_link(connected=True),
}


@pytest.mark.parametrize("name", list(DEVICE_WRITES))
async def test_every_device_store_write_cancelled_anywhere_is_all_or_nothing(
        name: str, tmp_path: Path) -> None:
    from sync.device_store import STORE_FILE, ScanRecord

    template = tmp_path / "template"
    store = await SyncStore.open(template)
    await store.apply_snapshot(ApplySnapshot("E1", 10, SessionInfo("s1", "One", True),
                                             ["A1"], []))
    await store.record_scan(ScanRecord("scan-1", "A1", "s1", "rejected", "not_registered",
                                       "2026-11-28T10:00:00+00:00", 1, "boot"))
    await store.close()
    operation = DEVICE_WRITES[name]
    before = dump(template / STORE_FILE)
    shutil.copytree(template, tmp_path / "reference")
    store = await SyncStore.open(tmp_path / "reference")
    await operation(store)
    await store.close()
    after = dump(tmp_path / "reference" / STORE_FILE)
    for n in range(1, 60):
        data = tmp_path / f"run-{n}"
        shutil.copytree(template, data)
        store = await SyncStore.open(data)
        counter = Counter()
        real = store._db
        store._db = CancelAt(real, counter, n)  # type: ignore[assignment]
        task = counter.start(operation(store))
        with contextlib.suppress(asyncio.CancelledError):
            await task
        store._db = real
        try:
            assert not real.in_transaction, f"{name}: transaction open after cancel at {n}"
            state = dump(data / STORE_FILE)
            for table in state:
                assert state[table] in (before[table], after[table]), (name, n, table)
            await store.note_link(connected=False)  # the next write works
        finally:
            await store.close()
        if counter.statements < n:
            break
    else:
        pytest.fail(f"{name} never completed")
