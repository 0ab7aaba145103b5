"""server/database.py: one interface over SQLite and PostgreSQL, tested on both.

Each test taking ``url`` runs on each storage (a fresh SQLite file, or a fresh
PostgreSQL database of the session's throwaway cluster). The PostgreSQL-only tests
are about what only several processes on one PostgreSQL can do: serialized writes
across processes (the gap-free change sequence), notifications between them, and the
listener's reconnection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import psycopg
import pytest

from core.database import StoreError
from server.database import (
    Connection,
    Database,
    RowError,
    database_url,
    open_database,
    postgres_sql,
    redact,
)
from server.schema import MIGRATIONS_BY_KIND, SERVER_FILE
from sync.backoff import Backoff

# -- pure parts --------------------------------------------------------------------


@pytest.mark.parametrize(("sql", "expected"), [
    ("SELECT * FROM t WHERE a = ? AND b = ?", "SELECT * FROM t WHERE a = %s AND b = %s"),
    ("UPDATE t SET a = :a WHERE b = :b_2", "UPDATE t SET a = %(a)s WHERE b = %(b_2)s"),
    ("SELECT x::text, y::timestamptz FROM t WHERE z = :z",
     "SELECT x::text, y::timestamptz FROM t WHERE z = %(z)s"),
    ("SELECT '?' , ':name', 'it''s ? :x' FROM t WHERE a = ?",
     "SELECT '?' , ':name', 'it''s ? :x' FROM t WHERE a = %s"),
    ("SELECT a FROM t WHERE b LIKE ? ESCAPE '\\'", "SELECT a FROM t WHERE b LIKE %s ESCAPE '\\'"),
    ("SELECT 5 % 2, 'a%b' FROM t", "SELECT 5 %% 2, 'a%%b' FROM t"),
    ("""SELECT to_char(x, 'YYYY-MM-DD"T"HH24') AS "a?b" FROM t WHERE c = ?""",
     """SELECT to_char(x, 'YYYY-MM-DD"T"HH24') AS "a?b" FROM t WHERE c = %s"""),
    ("SELECT 1 -- a comment? :no\nFROM t WHERE a = ?",
     "SELECT 1 -- a comment? :no\nFROM t WHERE a = %s"),
    ("SELECT /* ? :x % */ a FROM t", "SELECT /* ? :x %% */ a FROM t"),
    ("SELECT a[1:2] FROM t", "SELECT a[1:2] FROM t"),
    ("SELECT 'unterminated ?", "SELECT 'unterminated ?"),
])
def test_placeholders_are_translated_outside_quotes_comments_and_casts(
        sql: str, expected: str) -> None:
    assert postgres_sql(sql) == expected


def test_translation_is_cached() -> None:
    sql = "SELECT ? AS cached_once"
    assert postgres_sql(sql) is postgres_sql(sql)


@pytest.mark.parametrize(("url", "expected"), [
    ("postgresql://checkin:s3cret@db.example:5433/checkin",
     "postgresql://checkin@db.example:5433/checkin"),
    ("postgresql://checkin@db.example/checkin?password=s3cret&sslmode=require",
     "postgresql://checkin@db.example/checkin?sslmode=require"),
    ("postgresql://db.example/checkin", "postgresql://db.example/checkin"),
    ("sqlite:///srv/checkin/server.sqlite3", "sqlite:///srv/checkin/server.sqlite3"),
])
def test_redact_removes_passwords(url: str, expected: str) -> None:
    assert redact(url) == expected


def test_database_url_is_the_sqlite_file_in_the_data_dir(tmp_path: Path) -> None:
    assert database_url(tmp_path) == f"sqlite://{tmp_path / SERVER_FILE}"


# -- both backends -------------------------------------------------------------------


@pytest.fixture
def url(database: str | None, tmp_path: Path) -> str:
    """The test's own database on its storage (SQLite file, or PostgreSQL database)."""
    return database_url(tmp_path) if database is None else database


@contextlib.asynccontextmanager
async def opened(url: str) -> AsyncIterator[Database]:
    db = await open_database(url, MIGRATIONS_BY_KIND)
    try:
        yield db
    finally:
        await db.close()


async def put(conn: Connection, code: str, seq: int = 0) -> None:
    await conn.execute("INSERT INTO attendees (code, name, seq) VALUES (?, ?, ?)",
                       (code, f"name of {code}", seq))


async def test_rows_read_by_column_name(url: str) -> None:
    async with opened(url) as db:
        async with db.write() as conn:
            await put(conn, "A1", 1)
            await conn.executemany(
                "INSERT INTO attendees (code, name, email, seq) VALUES (:code, :name, :email, 2)",
                [{"code": "B2", "name": "Bea", "email": "b@x"},
                 {"code": "C3", "name": "Cy", "email": None}])
            await conn.executemany("INSERT INTO attendees (code, name, seq) VALUES (?, ?, ?)", [])
            assert await conn.execute("UPDATE attendees SET seq = seq + 1 WHERE seq = ?",
                                      (2,)) == 2
        async with db.read() as conn:
            rows = await conn.fetchall("SELECT code, name, email FROM attendees ORDER BY code")
            assert rows == [{"code": "A1", "name": "name of A1", "email": None},
                            {"code": "B2", "name": "Bea", "email": "b@x"},
                            {"code": "C3", "name": "Cy", "email": None}]
            assert await conn.fetchone("SELECT code FROM attendees WHERE seq = 3"
                                       " ORDER BY code") == {"code": "B2"}
            assert await conn.fetchone("SELECT code FROM attendees WHERE seq = 99") is None
            assert await conn.scalar("SELECT count(*) FROM attendees") == 3
            assert await conn.scalar("SELECT code FROM attendees WHERE seq = 99") is None
            assert await conn.scalar("SELECT count(*) FROM attendees WHERE name LIKE '%e%'"
                                     " AND code != :not", {"not": "A1"}) == 1
        assert db.url == redact(url)


async def test_write_rolled_back_on_error(url: str) -> None:
    async with opened(url) as db:
        with pytest.raises(KeyError):
            async with db.write() as conn:
                await put(conn, "A1")
                raise KeyError("x")
        async with db.read() as conn:
            assert await conn.scalar("SELECT count(*) FROM attendees") == 0
        with pytest.raises(RuntimeError):
            await conn.scalar("SELECT 1")  # outside its transaction


async def test_a_refused_statement_outside_a_savepoint_is_a_store_error(url: str) -> None:
    async with opened(url) as db:
        with pytest.raises(StoreError) as caught:
            async with db.write() as conn:
                await put(conn, "A1")
                await put(conn, "A1")  # primary key
        assert db.url.removeprefix("sqlite://") in str(caught.value)  # SQLite: its file
        async with db.read() as conn:
            assert await conn.scalar("SELECT count(*) FROM attendees") == 0


@pytest.mark.parametrize("bad", [
    ("dup", 1),              # primary key
    ("nul\0byte", 1),        # PostgreSQL text cannot hold NUL (SQLite keeps it)
    ("bad\udc80", 1),        # a lone surrogate cannot be encoded
    ("big", 2 ** 70),        # too large for any integer column
])
async def test_a_refused_row_in_a_savepoint_is_a_row_error_and_the_rest_commits(
        url: str, bad: tuple[str, int]) -> None:
    async with opened(url) as db:
        async with db.write() as conn:
            await put(conn, "dup")
            refused = False
            try:
                async with conn.savepoint():
                    await put(conn, "in-savepoint")
                    async with conn.savepoint():  # nested
                        await put(conn, *bad)
            except RowError:
                refused = True
            await put(conn, "after")
        async with db.read() as conn:
            codes = {r["code"] for r in await conn.fetchall("SELECT code FROM attendees")}
        if refused:
            assert codes == {"dup", "after"}
        else:  # SQLite stores a NUL in text
            assert bad[0] == "nul\0byte" and db.kind == "sqlite"
            assert codes == {"dup", "in-savepoint", bad[0], "after"}


async def test_savepoint_undoes_its_work_on_any_error(url: str) -> None:
    async with opened(url) as db:
        async with db.write() as conn:
            with pytest.raises(LookupError):
                async with conn.savepoint():
                    await put(conn, "undone")
                    raise LookupError
            await put(conn, "kept")
        async with db.read() as conn:
            assert await conn.fetchall("SELECT code FROM attendees") == [{"code": "kept"}]


async def test_read_sees_one_snapshot(url: str) -> None:
    async with opened(url) as db, opened(url) as other:
        async with db.read() as conn:
            assert await conn.scalar("SELECT seq FROM meta") == 0
            async with other.write() as writer:
                await writer.execute("UPDATE meta SET seq = 5")
            assert await conn.scalar("SELECT seq FROM meta") == 0
        async with db.read() as conn:
            assert await conn.scalar("SELECT seq FROM meta") == 5


async def test_reads_cannot_write(url: str) -> None:
    async with opened(url) as db:
        with pytest.raises(StoreError):
            async with db.read() as conn:
                await conn.execute("UPDATE meta SET seq = 5")
        with pytest.raises(RuntimeError):
            async with db.read() as conn:
                conn.notify({"seq": 1})


async def test_notify_delivered_after_commit_only(url: str) -> None:
    got: list[dict] = []
    arrived = asyncio.Event()

    def heard(payload: dict) -> None:
        got.append(payload)
        arrived.set()

    async with opened(url) as db:
        await db.listen(heard)
        with pytest.raises(KeyError):
            async with db.write() as conn:
                conn.notify({"seq": 1, "rolled": "back"})
                raise KeyError
        async with db.write() as conn:
            conn.notify({"seq": 2, "session": None, "codes": ("a", "b")})
            await asyncio.sleep(0)
            assert got == []  # not before the commit
        await arrived.wait()
        assert got == [{"seq": 2, "session": None, "codes": ["a", "b"]}]
        with pytest.raises(ValueError):
            async with db.write() as conn:
                conn.notify({"big": "x" * 7000})


async def test_dialect_time_functions_agree(url: str) -> None:
    async with opened(url) as db:
        d = db.dialect
        async with db.read() as conn:
            row = await conn.fetchone(
                f"SELECT {d.stamp(d.instant('?'))} AS stamp, {d.minute(d.instant('?'))} AS minute,"
                f" {d.seconds_between(d.instant('?'), d.instant('?'))} AS seconds",
                ("2026-12-02T03:04:05.678+01:00", "2026-12-02T03:04:59.999Z",
                 "2026-12-02T02:05:36.178Z", "2026-12-02T02:04:05.678Z"))
            assert row["stamp"] == "2026-12-02T02:04:05.678Z"
            assert row["minute"] == "2026-12-02T03:04:00Z"
            assert row["seconds"] == pytest.approx(90.5, abs=0.01)
            stamps = ["2026-12-02T10:00:00Z", "2026-12-02T10:30:00+01:00",
                      "2026-12-02T09:45:00.5Z"]
            latest = await conn.scalar(
                f"SELECT {d.stamp('max(' + d.instant('t') + ')')} FROM ("
                + " UNION ALL ".join(["SELECT ? AS t"] * 3) + ") AS times", stamps)
            assert latest == "2026-12-02T10:00:00.000Z"
            assert await conn.scalar(
                f"SELECT count(*) FROM attendees {d.indexed_by('attendees_seq')}"
                " WHERE seq > ?", (0,)) == 0
            assert await conn.scalar(f"SELECT 'AbC' {d.like} ?", ("%bc",))


async def test_migrations_applied_once_and_newer_schema_refused(url: str) -> None:
    async with opened(url) as db, db.read() as conn:
        epoch = await conn.scalar("SELECT epoch FROM meta")
    async with opened(url) as db, db.read() as conn:  # nothing to apply: same epoch
        assert await conn.scalar("SELECT epoch FROM meta") == epoch
        assert len(epoch) == 16
    older = {kind: migrations[:-1] for kind, migrations in MIGRATIONS_BY_KIND.items()}
    if not older["postgresql"]:
        older["postgresql"] = ()
    with pytest.raises(StoreError, match="newer than this software"):
        await open_database(url, older)


async def test_cancelled_transactions_leave_nothing_behind(url: str) -> None:
    """Tasks cancelled at every point of a transaction (waiting for the lock, in BEGIN,
    in a statement, in COMMIT): each transaction is whole or absent, its notification
    sent if and only if it committed, and afterwards the database writes and reads as
    usual, with no transaction left open."""
    heard: list[dict] = []
    async with opened(url) as db:
        await db.listen(heard.append)

        async def writer(tag: int) -> None:
            async with db.write() as conn:
                conn.notify({"tag": tag})
                for i in range(3):
                    await put(conn, f"{tag}-{i}", tag)
                    await conn.scalar(SLOW)  # a statement the cancel finds running

        async def reader() -> None:
            async with db.read() as conn:
                await conn.fetchall("SELECT * FROM attendees")
                await conn.scalar(SLOW)

        for tag in range(60):
            tasks = [asyncio.create_task(writer(tag)), asyncio.create_task(reader())]
            for _ in range(tag % 4):  # the first steps, then on into the statements
                await asyncio.sleep(0)
            await asyncio.sleep(0.002 * (tag % 30))
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        async with db.write() as conn:
            await put(conn, "after")
            conn.notify({"tag": "last"})
        async with db.read() as conn:
            counts = await conn.fetchall("SELECT seq, count(*) AS n FROM attendees GROUP BY seq")
        assert {r["n"] for r in counts if r["seq"] != 0} <= {3}
        await _until(lambda: _true({"tag": "last"} in heard))
        assert sorted(h["tag"] for h in heard[:-1]) == sorted(
            r["seq"] for r in counts if r["seq"] != 0)
        if db.kind == "postgresql":
            async with db.read() as conn:  # the pool's other connections: none in a transaction
                assert await conn.fetchall(
                    "SELECT state, query FROM pg_stat_activity WHERE datname = current_database()"
                    " AND pid != pg_backend_pid() AND state != 'idle'") == []
                assert await conn.scalar("SELECT count(*) FROM pg_locks"
                                         " WHERE locktype = 'advisory'") == 0


#: A statement that takes a while on both backends (some milliseconds).
SLOW = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 20000)"
        " SELECT count(*) FROM c")


async def test_integer_sums_are_ints_and_averages_floats(url: str) -> None:
    async with opened(url) as db:
        async with db.write() as conn:
            await conn.executemany("INSERT INTO attendees (code, name, seq) VALUES (?, 'n', ?)",
                                   [("a", 1), ("b", 2)])
        async with db.read() as conn:
            row = await conn.fetchone("SELECT sum(seq) AS total, avg(seq) AS mean FROM attendees")
        assert row == {"total": 3, "mean": 1.5}
        assert type(row["total"]) is int


# -- PostgreSQL: several processes on one database --------------------------------------


#: A test on PostgreSQL alone (what it checks needs several connections to one server).
postgresql_only = pytest.mark.parametrize("storage", ["postgresql"], indirect=True)


@pytest.fixture
def pg_url(database: str | None) -> str:
    assert database is not None
    return database


async def _waiting_for_lock(url: str) -> bool:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cursor = await conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
        return (await cursor.fetchone())[0] > 0


async def _until(condition: Callable[[], Awaitable[bool]]) -> None:
    while not await condition():
        await asyncio.sleep(0.01)


async def _changes_since(db: Database, since: int) -> tuple[int, list[int]]:
    """A door's view: (cursor, seqs above *since*), from one snapshot."""
    async with db.read() as conn:
        cursor = await conn.scalar("SELECT seq FROM meta")
        seqs = [r["seq"] for r in await conn.fetchall(
            "SELECT seq FROM attendees WHERE seq > ? ORDER BY seq", (since,))]
    return cursor, seqs


@postgresql_only
async def test_writes_serialized_across_processes_so_a_cursor_never_skips(
        pg_url: str) -> None:
    """Two Database objects, as two server processes would have: a writer holds its
    transaction open after taking a seq; another process's writer waits for it (it cannot
    take seq 2 and commit before seq 1 does), so a door's cursor misses nothing."""
    async with opened(pg_url) as one, opened(pg_url) as two:
        took, release = asyncio.Event(), asyncio.Event()

        async def slow_writer() -> None:
            async with one.write() as conn:
                seq = await conn.scalar("UPDATE meta SET seq = seq + 1 RETURNING seq")
                await put(conn, "slow", seq)
                took.set()
                await release.wait()

        async def quick_writer() -> None:
            async with two.write() as conn:
                seq = await conn.scalar("UPDATE meta SET seq = seq + 1 RETURNING seq")
                await put(conn, "quick", seq)

        slow = asyncio.create_task(slow_writer())
        await took.wait()
        quick = asyncio.create_task(quick_writer())
        await _until(lambda: _waiting_for_lock(pg_url))  # the second process waits
        assert not quick.done()
        cursor, seen = await _changes_since(two, 0)  # a door syncs meanwhile
        assert (cursor, seen) == (0, [])
        release.set()
        await asyncio.gather(slow, quick)
        cursor, more = await _changes_since(two, cursor)
        assert (cursor, seen + more) == (2, [1, 2])


@postgresql_only
async def test_an_unserialized_sequence_would_skip(pg_url: str) -> None:
    """The same race with a naive sequence (nextval, no lock): the later writer commits
    seq 2 first, the door's cursor moves to 2, and seq 1 committed after it is never
    seen. What the advisory lock prevents."""
    async with opened(pg_url) as db:
        async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as setup:
            await setup.execute("CREATE SEQUENCE naive_seq")
        async with await psycopg.AsyncConnection.connect(pg_url) as slow, \
                await psycopg.AsyncConnection.connect(pg_url) as quick:
            await slow.execute("INSERT INTO attendees (code, name, seq)"
                               " VALUES ('slow', 's', nextval('naive_seq'))")
            await quick.execute("INSERT INTO attendees (code, name, seq)"
                                " VALUES ('quick', 'q', nextval('naive_seq'))")
            await quick.commit()
            _, seen = await _changes_since(db, 0)
            cursor = max(seen)  # the door moves its cursor to the last seq it got
            await slow.commit()
        _, more = await _changes_since(db, cursor)
        assert seen + more == [2]  # seq 1 skipped for good
        async with db.read() as conn:
            assert await conn.scalar("SELECT count(*) FROM attendees") == 2


@postgresql_only
async def test_cancel_while_waiting_for_another_process(pg_url: str) -> None:
    async with opened(pg_url) as one, opened(pg_url) as two:
        took, release = asyncio.Event(), asyncio.Event()

        async def holder() -> None:
            async with one.write() as conn:
                await put(conn, "held", 1)
                took.set()
                await release.wait()

        async def waiter() -> None:
            async with two.write() as conn:
                await put(conn, "never", 2)

        held = asyncio.create_task(holder())
        await took.wait()
        waiting = asyncio.create_task(waiter())
        await _until(lambda: _waiting_for_lock(pg_url))
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        release.set()
        await held
        async with two.write() as conn:
            await put(conn, "after", 3)
        async with two.read() as conn:
            codes = [r["code"] for r in await conn.fetchall(
                "SELECT code FROM attendees ORDER BY seq")]
        assert codes == ["held", "after"]


@postgresql_only
async def test_notify_reaches_other_processes_on_commit_only(pg_url: str) -> None:
    heard: dict[str, list[dict]] = {"one": [], "two": []}

    def listener(name: str) -> Callable[[dict], None]:
        return heard[name].append

    async with opened(pg_url) as one, opened(pg_url) as two:
        await one.listen(listener("one"))
        await two.listen(listener("two"))
        with pytest.raises(KeyError):
            async with one.write() as conn:
                conn.notify({"seq": 1})
                raise KeyError
        async with one.write() as conn:
            conn.notify({"seq": 2, "origin": "one"})
            conn.notify({"text": "O'Brien \\ \"quoted\" é ? :x %s"})
        async with two.write() as conn:
            conn.notify({"seq": 3, "last": True})
        await _until(lambda: _true(len(heard["one"]) == len(heard["two"]) == 3))
        expected = [{"seq": 2, "origin": "one"}, {"text": "O'Brien \\ \"quoted\" é ? :x %s"},
                    {"seq": 3, "last": True}]
        assert heard == {"one": expected, "two": expected}


async def _true(value: bool) -> bool:
    return value


@postgresql_only
async def test_listener_reconnects_and_asks_for_a_resync(pg_url: str) -> None:
    heard: list[dict] = []
    async with opened(pg_url) as db:
        db.backoff = Backoff(minimum=0.01, maximum=0.05)  # type: ignore[attr-defined]
        await db.listen(heard.append)
        async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as admin:
            cursor = await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND query = 'LISTEN checkin'")
            assert [r[0] for r in await cursor.fetchall()] == [True]
        await _until(lambda: _true({"resync": True} in heard))
        async with db.write() as conn:
            conn.notify({"seq": 9})
        await _until(lambda: _true({"seq": 9} in heard))
        assert heard == [{"resync": True}, {"seq": 9}]


@postgresql_only
async def test_processes_starting_together_migrate_once(pg_url: str) -> None:
    dbs = await asyncio.gather(*(open_database(pg_url, MIGRATIONS_BY_KIND) for _ in range(4)))
    try:
        epochs = set()
        for db in dbs:
            async with db.read() as conn:
                epochs.add(await conn.scalar("SELECT epoch FROM meta"))
                assert await conn.scalar("SELECT version FROM schema_version") == len(
                    MIGRATIONS_BY_KIND["postgresql"])
                assert await conn.scalar("SELECT count(*) FROM meta") == 1
        assert len(epochs) == 1
    finally:
        for db in dbs:
            await db.close()


async def test_unreachable_postgres_is_a_store_error_without_the_password() -> None:
    url = "postgresql://checkin:s3cret@127.0.0.1:1/checkin"
    with pytest.raises(StoreError) as caught:
        await open_database(url, MIGRATIONS_BY_KIND)
    assert "postgresql://checkin@127.0.0.1:1/checkin" in str(caught.value)
    assert "s3cret" not in str(caught.value)


@postgresql_only
async def test_a_connection_lost_mid_transaction_is_a_store_error_and_is_replaced(
        pg_url: str) -> None:
    async with opened(pg_url) as db:
        with pytest.raises(StoreError) as caught:
            async with db.write() as conn:
                await put(conn, "lost", 1)
                await conn.scalar("SELECT pg_terminate_backend(pg_backend_pid())")
        assert pg_url in str(caught.value)
        for i in range(12):  # more than the pool holds: every connection it gives works
            async with db.write() as conn:
                await put(conn, f"after-{i}", 2)
        async with db.read() as conn:
            assert await conn.scalar("SELECT count(*) FROM attendees") == 12


async def test_a_door_cursor_misses_nothing_under_concurrent_writers(url: str) -> None:
    """Writers of two Database objects (two processes) take seqs concurrently, some
    holding their transaction open a while after taking them, while a door keeps
    advancing its cursor: every seq is seen, once, in order."""
    async with opened(url) as one, opened(url) as two:
        done = asyncio.Event()

        async def writer(db: Database, name: str) -> None:
            for i in range(25):
                async with db.write() as conn:
                    count = 1 + i % 3
                    last = await conn.scalar("UPDATE meta SET seq = seq + ? RETURNING seq",
                                             (count,))
                    await conn.executemany(
                        "INSERT INTO attendees (code, name, seq) VALUES (?, 'n', ?)",
                        [(f"{name}-{i}-{k}", last - count + 1 + k) for k in range(count)])
                    await asyncio.sleep(0.001 * (i % 4))  # committed late, or not

        async def door() -> list[int]:
            cursor, seen = 0, []
            while True:
                finished = done.is_set()  # read once more after the writers are done
                cursor, more = await _changes_since(two, cursor)
                seen += more
                if finished:
                    return seen
                await asyncio.sleep(0)

        reading = asyncio.create_task(door())
        await asyncio.gather(*(writer(db, f"{db_name}{n}") for n in range(2)
                               for db, db_name in ((one, "one"), (two, "two"))))
        done.set()
        seen = await reading
        taken = 4 * sum(1 + i % 3 for i in range(25))
        assert seen == list(range(1, taken + 1))


@postgresql_only
async def test_postgres_schema_has_sqlite_tables_and_columns(pg_url: str, tmp_path: Path) -> None:
    """POSTGRES_MIGRATIONS is SQLite's last schema: the same tables, the same columns in
    the same order (and the same indexes), plus PostgreSQL's own ``secrets`` and
    ``schema_version``; ``scans.position`` stands for SQLite's rowid."""
    async with opened(database_url(tmp_path)) as lite, lite.read() as conn:
        tables = [r["name"] for r in await conn.fetchall(
            "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        sqlite_columns = {t: [r["name"] for r in await conn.fetchall(
            f"SELECT name FROM pragma_table_info('{t}') ORDER BY cid")] for t in tables}
        sqlite_indexes = {r["name"] for r in await conn.fetchall(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")}
    async with opened(pg_url) as pg, pg.read() as conn:
        rows = await conn.fetchall(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = 'public' ORDER BY table_name, ordinal_position")
        pg_indexes = {r["indexname"] for r in await conn.fetchall(
            "SELECT indexname FROM pg_indexes WHERE schemaname = 'public'")}
    pg_columns: dict[str, list[str]] = {}
    for r in rows:
        pg_columns.setdefault(r["table_name"], []).append(r["column_name"])
    assert pg_columns.pop("secrets") == ["name", "value"]
    assert pg_columns.pop("schema_version") == ["singleton", "version"]
    # position came with PostgreSQL's version 1; columns added since follow it.
    pg_columns["scans"].remove("position")
    assert pg_columns == sqlite_columns
    assert sqlite_indexes <= pg_indexes


async def test_publish_is_delivered_at_once_even_while_a_write_is_open(url: str) -> None:
    heard: list[dict] = []
    async with opened(url) as db, opened(url) as other:
        await db.listen(heard.append)
        async with other.write() as conn:  # another process holds the write lock
            conn.notify({"seq": 1})
            await db.publish({"event": "disconnect", "device": "door-1"})
            await _until(lambda: _true(heard == [{"event": "disconnect", "device": "door-1"}]))
            await conn.execute("UPDATE meta SET seq = 1")
        if db.kind == "postgresql":  # SQLite: each Database hears only its own
            await _until(lambda: _true(len(heard) == 2))
            assert heard[1] == {"seq": 1}
        with pytest.raises(ValueError):
            await db.publish({"big": "x" * 7000})


@postgresql_only
async def test_door_times_postgres_cannot_read_are_refused_with_their_scan(
        pg_url: str) -> None:
    """Python's fromisoformat takes times PostgreSQL cannot cast: such a scan is refused
    (a RowError in the store's savepoint), never stored to break every time query."""
    insert = ("INSERT INTO scans (scan_id, device_id, device_seq, code, decision, reason,"
              " scanned_at, monotonic_ns, boot_id, received_at)"
              " VALUES (?, 'd', 1, 'A1', 'admitted', 'registered', ?, 1, 'b', ?)")
    good = "2026-11-28T10:00:00.000Z"
    async with opened(pg_url) as db:
        async with db.write() as conn:
            for i, odd in enumerate(["2026-W48-6T10:00:00Z", "2026-11-28T10Z",
                                     "2026-11-28T10:00:00,5+00:00"]):
                for scanned, received in ((odd, good), (good, odd)):
                    with pytest.raises(RowError):
                        async with conn.savepoint():
                            await conn.execute(insert, (f"odd-{i}", scanned, received))
            await conn.execute(insert, ("good", good, good))
        async with db.read() as conn:
            assert await conn.scalar(
                f"SELECT {db.dialect.stamp('max(' + db.dialect.instant('scanned_at') + ')')}"
                " FROM scans") == good


async def test_times_without_an_offset_are_utc_whatever_the_database_says(url: str) -> None:
    if url.startswith("postgresql"):
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as admin:
            await admin.execute("DO $$ BEGIN EXECUTE format("
                                "'ALTER DATABASE %I SET TimeZone = ''America/New_York''',"
                                " current_database()); END $$")
    async with opened(url) as db, db.read() as conn:
        d = db.dialect
        assert await conn.scalar(f"SELECT {d.stamp(d.instant('?'))}",
                                 ("2026-12-02T02:04:05",)) == "2026-12-02T02:04:05.000Z"
