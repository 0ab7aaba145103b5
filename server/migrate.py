"""``checkin server migrate``: copy a server's data into an empty database.

The way from one SQLite file to PostgreSQL (docs/scale-out.md), or back. Everything
the doors and the organizers rely on is copied as it is: the epoch, the change
sequence and every row's seq (a door connected before reconnects with its cursor and
carries on, no snapshot), registrant removals (tombstones) and the pruning horizon,
scans in the order they were stored, schedule links and the link secret their tokens
are made from (a link sent by email keeps working), presence and occupancy.

The copy is one write transaction on the target, read from one snapshot of the
source: it is all there or none of it is. The target must hold no data; the source is
not changed (except that an SQLite file of an older version is brought to the
current schema, as ``checkin server`` would on start). Stop the server first: scans
stored after the snapshot would not be copied.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path
from typing import Any

import psycopg

from core.database import StoreError
from core.private_files import write_private
from server.database import Connection, Database, RowError, open_database, redact
from server.schema import LINK_SECRET_FILE, MIGRATIONS_BY_KIND
from server.store import LINK_SECRET_NAME

#: The tables copied, in this order, each with the columns its rows are read in order of
#: (its primary key; scans: the order they were stored in, the dialect's ``position``).
#: A table not in this software's schema yet is passed over (source and target are both
#: at this software's version); one in the schema but not here is refused, so a table a
#: later migration adds is never left behind unsaid. ``meta`` is copied apart (its one
#: row is updated, not inserted).
TABLES: dict[str, tuple[str, ...]] = {
    "sessions": ("session_id",),
    "attendees": ("code",),
    "registrants": ("session_id", "code"),
    "devices": ("device_id",),
    "revoked_tokens": ("token_hash",),
    "clock_anchors": ("device_id", "boot_id"),
    "scans": (),  # by position
    "schedule_links": ("code",),
    "presence": ("session_id", "code"),
    "occupancy": ("session_id",),
}
#: Tables of a server database that are not data to copy: the row of ``meta`` is copied
#: apart, the schema's version is the target's own, the link secret is copied apart.
NOT_COPIED = frozenset({"meta", "schema_version", "secrets"})
#: Rows read, and inserted, at a time.
BATCH = 1000


class MigrationError(Exception):
    """The migration cannot be made (or was refused); nothing was written to the target."""


async def migrate(source_url: str, target_url: str) -> str:
    """Copy the server database at *source_url* into the empty one at *target_url*
    (each ``sqlite:///PATH`` or ``postgresql://...``); return a report for the operator.

    Raises :class:`MigrationError`, naming the database, when the source is missing or
    not a server's, a database cannot be opened, the target holds data, or a row is
    refused; the target is then as it was."""
    if _same(source_url, target_url):
        raise MigrationError(f"{redact(source_url)} is both the source and the target")
    await _check_source(source_url)
    source = await _open(source_url, "source")
    try:
        target = await _open(target_url, "target")
        try:
            counts, secret = await _copy(source, target)
        except StoreError as exc:  # a database failed mid-copy (gone, disk full, ...)
            raise MigrationError(f"{exc}; nothing was kept in {target.url}") from exc
        finally:
            await target.close()
    finally:
        await source.close()
    return _report(source.url, target.url, target.kind, counts, secret)


# -- opening ------------------------------------------------------------------------


def sqlite_path(url: str) -> Path:
    """The file of an ``sqlite:///PATH`` URL."""
    return Path(url.removeprefix("sqlite://")).absolute()


def _same(a: str, b: str) -> bool:
    if a.startswith("sqlite:") and b.startswith("sqlite:"):
        return sqlite_path(a).resolve() == sqlite_path(b).resolve()
    return a == b


async def _open(url: str, role: str) -> Database:
    try:
        return await open_database(url, MIGRATIONS_BY_KIND)
    except (StoreError, psycopg.Error, OSError) as exc:
        raise MigrationError(f"cannot open the {role} database {redact(url)}: {exc}") from exc


async def _check_source(url: str) -> None:
    """Refuse a source that is missing or is not a checkin server's database *before*
    opening it: opening would make one (an empty file, or the schema in any database)."""
    tables = await (asyncio.to_thread(_sqlite_tables, url) if url.startswith("sqlite:")
                    else _postgres_tables(url))
    if not {"meta", "scans"} <= tables:
        raise MigrationError(f"{redact(url)} is not a checkin server database (it has no "
                             "meta and scans tables)")


def _sqlite_tables(url: str) -> set[str]:
    path = sqlite_path(url)
    if not path.is_file():
        raise MigrationError(f"{redact(url)}: there is no file {path}")
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error as exc:
        raise MigrationError(f"{redact(url)} is not an SQLite database: {exc}") from exc


async def _postgres_tables(url: str) -> set[str]:
    try:
        async with await psycopg.AsyncConnection.connect(url, connect_timeout=30) as db:
            cursor = await db.execute(
                "SELECT table_name FROM information_schema.tables"
                " WHERE table_schema = current_schema()")
            return {r[0] for r in await cursor.fetchall()}
    except psycopg.Error as exc:
        raise MigrationError(f"cannot open the source database {redact(url)}: {exc}") from exc


# -- copying ------------------------------------------------------------------------


async def _copy(source: Database, target: Database) -> tuple[dict[str, int], bytes | None]:
    """Copy every table in one write transaction on *target*; return each table's row
    count and the link secret (``None``: the source never made one)."""
    async with source.read() as src, target.write() as dst:
        tables = [t for t in TABLES if t in await _known_tables(src, source)]
        await _refuse_unless_empty(dst, target, tables)
        await _copy_meta(src, dst)
        counts = {}
        for table in tables:
            key = TABLES[table] or (source.dialect.position,)
            counts[table] = await _copy_table(src, dst, table, key, target)
        for table, count in counts.items():  # before COMMIT: a short copy is never kept
            expected = await src.scalar(f"SELECT count(*) FROM {table}")
            if count != expected or await dst.scalar(f"SELECT count(*) FROM {table}") != count:
                raise MigrationError(
                    f"table {table}: {expected} row(s) in {source.url}, {count} copied, "
                    f"{await dst.scalar(f'SELECT count(*) FROM {table}')} in {target.url}: "
                    "nothing was kept")
        secret = await _read_secret(source, src)
        if secret is not None:
            await _write_secret(target, dst, secret)
    return counts, secret


async def _known_tables(src: Connection, source: Database) -> set[str]:
    """The source's tables; refused if one is neither copied nor known not to need it
    (it would be left behind without a word)."""
    if source.kind == "sqlite":
        names = await src.fetchall("SELECT name FROM sqlite_master WHERE type = 'table'"
                                   " AND name NOT LIKE 'sqlite%'")
    else:
        names = await src.fetchall("SELECT table_name AS name FROM information_schema.tables"
                                   " WHERE table_schema = current_schema()")
    found = {r["name"] for r in names}
    unknown = found - TABLES.keys() - NOT_COPIED
    if unknown:
        raise MigrationError(f"{source.url} has table(s) this software does not copy: "
                             f"{', '.join(sorted(unknown))} (a newer server's?)")
    return found


async def _refuse_unless_empty(dst: Connection, target: Database, tables: list[str]) -> None:
    """Refuse a target that holds anything: merging two servers' histories would give
    two rows one seq, and the doors of either would miss changes."""
    held = {table: await dst.scalar(f"SELECT count(*) FROM {table}") for table in tables}
    seq = await dst.scalar("SELECT seq FROM meta")
    if any(held.values()) or seq:
        rows = ", ".join(f"{n} {table}" for table, n in held.items() if n)
        raise MigrationError(
            f"the target {target.url} is not empty ({rows or 'no rows'}; change sequence at "
            f"{seq}): migrate into a new, empty database (e.g. createdb), nothing was written")


async def _copy_meta(src: Connection, dst: Connection) -> None:
    """Every column of meta's one row: the epoch, the sequence, the horizon, and whatever
    else a door's cache was made with (a key its cached values depend on): with all of
    them as they were, a door carries on without a snapshot."""
    meta = await src.fetchone("SELECT * FROM meta")
    assert meta is not None  # the schema's first migration makes the row
    columns = [c for c in meta if c != "singleton"]
    await dst.execute(f"UPDATE meta SET {', '.join(f'{c} = ?' for c in columns)}",
                      tuple(meta[c] for c in columns))


async def _copy_table(src: Connection, dst: Connection, table: str, key: tuple[str, ...],
                      target: Database) -> int:
    """Copy *table* :data:`BATCH` rows at a time, read in order of *key*; return how many."""
    # The key under names of our own: rowid is not among SELECT *'s columns, and scans'
    # position is made by the target (stored order is insertion order there too).
    keys = ", ".join(f"{column} AS key_{i}" for i, column in enumerate(key))
    order = ", ".join(f"key_{i}" for i in range(len(key)))
    after = f"({', '.join(key)}) > ({', '.join('?' for _ in key)})"
    copied = 0
    last: tuple[Any, ...] | None = None
    while True:
        where = "" if last is None else f" WHERE {after}"
        rows = [dict(r) for r in await src.fetchall(
            f"SELECT {keys}, * FROM {table}{where} ORDER BY {order} LIMIT {BATCH}",
            last or ())]
        if not rows:
            return copied
        last = tuple(rows[-1][f"key_{i}"] for i in range(len(key)))
        for row in rows:
            for i in range(len(key)):
                del row[f"key_{i}"]
            row.pop("position", None)
        await _insert(dst, table, rows, target)
        copied += len(rows)


async def _insert(dst: Connection, table: str, rows: list[dict[str, Any]],
                  target: Database) -> None:
    columns = list(rows[0])
    sql = (f"INSERT INTO {table} ({', '.join(columns)})"
           f" VALUES ({', '.join('?' for _ in columns)})")
    try:
        async with dst.savepoint():
            await dst.executemany(sql, [tuple(row[c] for c in columns) for row in rows])
        return
    except RowError:
        pass
    for row in rows:  # find the row refused, to name it
        try:
            async with dst.savepoint():
                await dst.execute(sql, tuple(row[c] for c in columns))
        except RowError as exc:
            raise MigrationError(f"{target.url} refused a row of table {table} ({row}): {exc};"
                                 " nothing was kept") from exc


# -- the link secret ------------------------------------------------------------------


async def _read_secret(database: Database, conn: Connection) -> bytes | None:
    if database.kind == "sqlite":
        path = sqlite_path(database.url).parent / LINK_SECRET_FILE
        try:
            text = await asyncio.to_thread(path.read_text, encoding="ascii")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise MigrationError(f"cannot read the link secret {path}: {exc}") from exc
        return _secret_bytes(text, str(path))
    value = await conn.scalar("SELECT value FROM secrets WHERE name = ?", (LINK_SECRET_NAME,))
    return None if value is None else _secret_bytes(value, f"{database.url} (secrets)")


def _secret_bytes(text: str, where: str) -> bytes | None:
    try:
        secret = bytes.fromhex(text.strip())
    except ValueError:
        secret = b""
    return secret if len(secret) >= 32 else None  # garbled: the server would make a new one


async def _write_secret(database: Database, conn: Connection, secret: bytes) -> None:
    if database.kind != "sqlite":
        await conn.execute("INSERT INTO secrets (name, value) VALUES (?, ?)"
                           " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                           (LINK_SECRET_NAME, secret.hex()))
        return
    path = sqlite_path(database.url).parent / LINK_SECRET_FILE
    try:
        await asyncio.to_thread(write_private, path, secret.hex() + "\n")
    except OSError as exc:
        raise MigrationError(f"cannot write the link secret {path}: {exc}") from exc


# -- the report ---------------------------------------------------------------------


def _report(source: str, target: str, kind: str, counts: dict[str, int],
            secret: bytes | None) -> str:
    width = max(len(t) for t in counts)
    lines = [f"copied {source} to {target}:"]
    lines += [f"  {table.ljust(width)}  {count:>10,}" for table, count in counts.items()]
    lines.append("  the epoch, the change sequence and every row's seq as they were: doors "
                  "carry on without a snapshot")
    lines.append("  link secret: copied (schedule links keep working)" if secret is not None
                 else "  link secret: none (the source never made a schedule link)")
    option = f"--database {target}" if kind != "sqlite" else \
        f"--data {sqlite_path(target).parent}"
    lines += [
        "next:",
        f"  1. start each server with {option} (keep the source as it is, as a backup)",
        "  2. give every server process the same admin token and web secret: copy the old "
        "data dir's admin-token and web-secret files into each one's --data dir, or set "
        "CHECKIN_ADMIN_TOKEN and CHECKIN_WEB_SECRET in each one's environment",
        "  3. point the doors at the servers (a load balancer, or several URLs in [server] "
        "url): see docs/scale-out.md",
    ]
    return "\n".join(lines)
