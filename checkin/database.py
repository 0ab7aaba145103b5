"""SQLite files through aiosqlite: opening, versioned migrations, write transactions.

Both stores of the system — the device's (shared by the door and the sync
daemon) and the central server's — open their files the same way: WAL,
``synchronous = FULL`` (a committed transaction survives power loss), a busy
timeout, migrations under ``PRAGMA user_version`` applied in one
``BEGIN IMMEDIATE`` transaction (two processes starting together cannot both
migrate) and short ``BEGIN IMMEDIATE`` write transactions (a deferred one
upgraded to a write gets SQLITE_BUSY at once, ignoring the timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiosqlite

#: Connection settings for every store.
PRAGMAS: tuple[str, ...] = (
    "PRAGMA journal_mode = WAL",
    "PRAGMA synchronous = FULL",
    "PRAGMA busy_timeout = 5000",
    "PRAGMA foreign_keys = ON",
)


class StoreError(Exception):
    """A store cannot be opened or written; the message says why and where."""


async def connect(path: Path, migrations: Sequence[str]) -> aiosqlite.Connection:
    """Open (creating and migrating if needed) the SQLite file at *path*."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create data dir {path.parent}: {exc.strerror}") from exc
    try:
        # Probe first: when aiosqlite's own connect fails, its worker thread outlives
        # the error and reports into an event loop that may be gone by then.
        await asyncio.to_thread(_probe, path)
        db = await aiosqlite.connect(path, isolation_level=None)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open store {path}: {exc}") from exc
    try:
        for pragma in PRAGMAS:
            await db.execute(pragma)
        await _migrate(db, path, migrations)
    except sqlite3.Error as exc:
        await db.close()
        raise StoreError(f"cannot open store {path}: {exc}") from exc
    except StoreError:
        await db.close()
        raise
    return db


def _probe(path: Path) -> None:
    sqlite3.connect(path).close()


async def _migrate(db: aiosqlite.Connection, path: Path, migrations: Sequence[str]) -> None:
    async with WriteTransaction(db, path, asyncio.Lock()):  # nobody else has *db* yet
        version = await scalar(db, "PRAGMA user_version")
        if version > len(migrations):
            raise StoreError(
                f"store {path} has schema version {version}, newer than this "
                f"software's {len(migrations)}: upgrade the software"
            )
        for script in migrations[version:]:
            for statement in _statements(script):
                await db.execute(statement)
        if version != len(migrations):
            await db.execute(f"PRAGMA user_version = {len(migrations)}")


async def scalar(db: aiosqlite.Connection, sql: str, params: Any = ()) -> Any:
    """The first column of the first row of *sql*, or ``None``."""
    async with db.execute(sql, params) as cursor:
        row = await cursor.fetchone()
    return row[0] if row else None


class WriteTransaction:
    """``async with WriteTransaction(db, path, lock):`` — one ``BEGIN IMMEDIATE`` transaction.

    *lock* is the connection's own: every statement of every coroutine goes
    through the one aiosqlite connection, so without it a second coroutine's
    transaction would start inside the first ("cannot start a transaction
    within a transaction") or its statements would join it. Commits on
    success, rolls back on any exception; SQLite errors come out as
    :class:`StoreError` naming the file.
    """

    def __init__(self, db: aiosqlite.Connection, path: Path, lock: asyncio.Lock) -> None:
        self._db = db
        self._path = path
        self._lock = lock

    async def __aenter__(self) -> aiosqlite.Connection:
        await self._lock.acquire()
        try:
            await self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            self._lock.release()
            raise StoreError(f"cannot write store {self._path}: {exc}") from exc
        except BaseException:
            self._lock.release()
            raise
        return self._db

    async def __aexit__(self, exc_type: type | None, exc: BaseException | None, tb: Any) -> None:
        try:
            await self._finish(exc_type, exc)
        finally:
            self._lock.release()

    async def _finish(self, exc_type: type | None, exc: BaseException | None) -> None:
        if exc_type is None:
            try:
                await self._db.execute("COMMIT")
                return
            except sqlite3.Error as commit_error:
                await self._rollback()
                raise StoreError(f"cannot write store {self._path}: {commit_error}") from None
        await self._rollback()
        if isinstance(exc, sqlite3.Error):
            raise StoreError(f"cannot write store {self._path}: {exc}") from exc

    async def _rollback(self) -> None:
        # SQLite may already have rolled back on its own (e.g. on SQLITE_FULL).
        with contextlib.suppress(sqlite3.Error):
            await self._db.execute("ROLLBACK")


def _statements(script: str) -> list[str]:
    statements, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    return [s for s in statements if s]
