"""Registrants' removals are kept ``--keep-deleted-days`` and then forgotten: by the
store, by the server's periodic task, from the command line; doors behind a forgotten
removal get a snapshot."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest

from checkin import cli
from core.clock import wall_now
from core.database import StoreError, connect
from server import app as server_app
from server.schema import KEEP_DELETED_DAYS, MIGRATIONS, SERVER_FILE
from server.store import Attendee, Device, ServerStore
from sync.messages import Hello, SessionInfo
from sync.server_end import needs_snapshot
from tests.system import read_only_query


@pytest.fixture
async def store(server_target: Path | str):
    store = await ServerStore.open(server_target)
    await store.put_session(SessionInfo("s1", "One", True))
    await store.upsert_attendees([Attendee(c, f"Name {c}") for c in ("A1", "B2", "C3")])
    yield store
    await store.close()


def backdate(store: Path | str, code: str, days: float) -> None:
    """Make *code*'s removal *days* old (from another connection, as if long ago) in the
    store at *store* (a data dir, or a PostgreSQL database's URL)."""
    when = (wall_now() - timedelta(days=days)).isoformat(timespec="milliseconds")
    if isinstance(store, str):
        with psycopg.connect(store) as pg:
            pg.execute("UPDATE registrants SET deleted_at = %s WHERE code = %s", (when, code))
        return
    with sqlite3.connect(store / SERVER_FILE) as db:
        db.execute("UPDATE registrants SET deleted_at = ? WHERE code = ?", (when, code))
    db.close()


async def removed(store: ServerStore, *codes: str) -> int:
    """Add then remove *codes*; return the cursor after the first removal's add."""
    for code in codes:
        await store.put_registrant("s1", code)
    cursor, _ = await store.changes_since("s1", 0)
    for code in codes:
        await store.delete_registrant("s1", code)
    return cursor


async def test_removals_older_than_the_cutoff_are_forgotten_and_the_others_kept(
        store, server_target) -> None:
    cursor = await removed(store, "A1", "B2")
    a1_seq = cursor + 1
    backdate(server_target, "A1", days=31)
    assert await store.prune_tombstones_before(wall_now() - timedelta(days=30)) == 1
    view = await store.view(Device("d", "s1"))
    assert view.horizon == a1_seq  # the forgotten removal's seq
    # A door that had synced up to before A1's removal needs a snapshot now...
    behind = Hello(device_id="d", software="t", session_id="s1", epoch=store.epoch,
                   cursor=cursor)
    assert needs_snapshot(behind, view) and await store.changes_since("s1", cursor) is None
    # ...one that had seen it still gets the removal it has not seen, B2's.
    _, changes = await store.changes_since("s1", a1_seq)
    assert [(c.code, c.deleted) for c in changes] == [("B2", True)]
    assert await store.prune_tombstones_before(wall_now() - timedelta(days=30)) == 0
    assert await store.prune_tombstones_before(wall_now() + timedelta(seconds=1)) == 1


async def test_a_registrant_added_again_is_no_removal_to_forget(store, server_target) -> None:
    await removed(store, "A1")
    backdate(server_target, "A1", days=31)
    assert await store.put_registrant("s1", "A1") is True
    assert read_only_query(server_target, "SELECT deleted, deleted_at FROM registrants") == [
        (0, None)]
    assert await store.prune_tombstones_before(wall_now()) == 0
    assert (await store.view(Device("d", "s1"))).horizon == 0


async def test_removals_made_before_the_upgrade_count_from_the_upgrade(tmp_path: Path) -> None:
    old = await connect(tmp_path / SERVER_FILE, MIGRATIONS[:2])  # the schema before deleted_at
    await old.execute("INSERT INTO registrants (session_id, code, deleted, seq)"
                      " VALUES ('s1', 'A1', 1, 5), ('s1', 'B2', 0, 6)")
    await old.close()
    store = await ServerStore.open(tmp_path)
    try:
        assert await store.prune_tombstones_before(wall_now() - timedelta(minutes=5)) == 0
        assert await store.prune_tombstones_before(wall_now() + timedelta(seconds=1)) == 1
        assert (await store.view(Device("d", "s1"))).horizon == 5
    finally:
        await store.close()


async def test_the_pruning_task_prunes_at_once_and_then_periodically(store,
                                                                   server_target) -> None:
    await removed(store, "A1")
    backdate(server_target, "A1", days=8)
    task = asyncio.create_task(server_app.prune_tombstones(store, timedelta(days=7), every=0.05))
    try:
        await wait_until(lambda: store.view(Device("d", "s1")), lambda v: v.horizon > 0)
        await store.put_registrant("s1", "B2")
        await store.delete_registrant("s1", "B2")
        await asyncio.sleep(0.2)  # several rounds: B2's removal is days from old enough
        _, changes = await store.changes_since("s1", (await store.view(Device("d", "s1"))).horizon)
        assert [(c.code, c.deleted) for c in changes][-1] == ("B2", True)
        backdate(server_target, "B2", days=7.01)
        # B2's removal, the last change, is forgotten on a later round.
        await wait_until(lambda: store.view(Device("d", "s1")), lambda v: v.horizon == v.cursor)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_the_pruning_task_survives_a_store_error(store, caplog) -> None:
    calls = 0
    real = store.prune_tombstones_before

    async def failing_once(cutoff):
        nonlocal calls
        calls += 1
        if calls == 1:
            raise StoreError("disk full")
        return await real(cutoff)

    store.prune_tombstones_before = failing_once  # type: ignore[method-assign]
    task = asyncio.create_task(server_app.prune_tombstones(store, timedelta(0), every=0.01))
    try:
        await wait_until(lambda: _value(calls), lambda n: n >= 3)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert "cannot prune removed registrants: disk full" in caplog.text


async def test_the_server_prunes_from_its_start_with_its_retention(
        tmp_path: Path, database: str | None, server_target: Path | str) -> None:
    store = await ServerStore.open(server_target)
    await store.put_session(SessionInfo("s1", "One", True))
    await store.upsert_attendees([Attendee("A1", "Ada"), Attendee("B2", "Bob")])
    await removed(store, "A1", "B2")
    await store.close()
    backdate(server_target, "A1", days=3)
    app = server_app.create_app(tmp_path, "admin-token", keep_deleted=timedelta(days=2),
                                database=database)
    async with app.router.lifespan_context(app):
        running: ServerStore = app.state.store
        await wait_until(lambda: running.view(Device("d", "s1")), lambda v: v.horizon > 0)
        _, changes = await running.changes_since("s1", (await running.view(
            Device("d", "s1"))).horizon)
        assert [(c.code, c.deleted) for c in changes] == [("B2", True)]  # 0 days old: kept
    # The task ended with the lifespan: nothing is left running on the closed store.
    assert not [t for t in asyncio.all_tasks() if t.get_coro().__name__ == "prune_tombstones"]


def test_the_servers_default_retention_is_the_commands() -> None:
    assert cli._parser().parse_args(["server"]).keep_deleted_days == KEEP_DELETED_DAYS == 30


@pytest.mark.parametrize(("given", "days"), [("0", 0), ("7", 7), ("36500", 36500)])
def test_keep_deleted_days_reaches_the_server(monkeypatch, given: str, days: int) -> None:
    seen = {}

    def run_server(data_dir, host, port, **options) -> int:
        seen.update(options, data_dir=data_dir)
        return 0

    monkeypatch.setattr(server_app, "run_server", run_server)
    assert cli.main(["server", "--data", "d", "--keep-deleted-days", given]) == 0
    assert seen["keep_deleted"] == timedelta(days=days) and seen["data_dir"] == Path("d")


@pytest.mark.parametrize("given", ["-1", "36501", "1.5", "thirty", ""])
def test_keep_deleted_days_must_be_a_whole_number_of_days(capsys, given: str) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["server", "--keep-deleted-days", given])
    assert exit_.value.code == cli.EXIT_CONFIG
    assert "--keep-deleted-days: expected a whole number of days from 0 to 36500" in (
        capsys.readouterr().err)


async def _value(value):
    return value


async def wait_until(read, done, timeout: float = 5.0):
    """Poll ``await read()`` until ``done(value)``; return the value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await read()
        if done(value):
            return value
        if loop.time() > deadline:
            raise AssertionError(f"still {value!r} after {timeout} s")
        await asyncio.sleep(0.02)
