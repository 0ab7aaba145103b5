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
from collections.abc import Awaitable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

T = TypeVar("T")

#: Connection settings for every store.
PRAGMAS: tuple[str, ...] = (
    # First: the journal_mode pragma needs the file's lock, and without a timeout set a
    # connection opened while another process writes (a door's daemon applying a long
    # snapshot) failed at once with "database is locked".
    "PRAGMA busy_timeout = 5000",
    "PRAGMA journal_mode = WAL",
    "PRAGMA synchronous = FULL",
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
    db.row_factory = sqlite3.Row  # every row of every store is read by column name
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


class Transaction:
    """``async with Transaction(db, path, lock):`` — one transaction on *db*, safe to cancel.

    *lock* is the connection's own: every statement of every coroutine goes
    through the one aiosqlite connection, so without it a second coroutine's
    transaction would start inside the first ("cannot start a transaction
    within a transaction") or its statements would join it. Commits on
    success, rolls back on any exception; SQLite errors come out as
    :class:`StoreError` naming the file.

    Cancellation leaves the connection as it found it. aiosqlite runs each
    statement on its own thread, and a statement whose awaiting task is
    cancelled still runs there: a cancelled ``BEGIN`` would leave a
    transaction open that nothing ends, and every later ``BEGIN`` on the
    connection would fail. So ``BEGIN``, ``COMMIT`` and ``ROLLBACK`` are run
    to the end whatever happens to the task awaiting them, a transaction a
    cancelled task began is rolled back, and the cancellation is passed on
    afterwards.
    """

    #: The statement that starts the transaction.
    begin = "BEGIN"
    #: What the transaction does, for error messages.
    verb = "read"

    def __init__(self, db: aiosqlite.Connection, path: Path, lock: asyncio.Lock) -> None:
        self._db = db
        self._path = path
        self._lock = lock

    async def __aenter__(self) -> aiosqlite.Connection:
        await self._lock.acquire()  # cancelled here, nothing was started
        try:
            await run_to_end(self._db.execute(self.begin))
        except BaseException as exc:
            # The BEGIN may have run although the task awaiting it was cancelled.
            await run_to_end(self._rollback())
            self._lock.release()
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"cannot {self.verb} store {self._path}: {exc}") from exc
            raise
        return self._db

    async def __aexit__(self, exc_type: type | None, exc: BaseException | None, tb: Any) -> None:
        try:
            await run_to_end(self._finish(exc_type, exc))
        finally:
            self._lock.release()

    async def _finish(self, exc_type: type | None, exc: BaseException | None) -> None:
        if exc_type is None:
            try:
                await self._db.execute("COMMIT")
                return
            except sqlite3.Error as commit_error:
                await self._rollback()
                raise StoreError(
                    f"cannot {self.verb} store {self._path}: {commit_error}") from None
        await self._rollback()
        if isinstance(exc, sqlite3.Error):
            raise StoreError(f"cannot {self.verb} store {self._path}: {exc}") from exc

    async def _rollback(self) -> None:
        # SQLite may already have rolled back on its own (e.g. on SQLITE_FULL), or the
        # BEGIN never ran: a ROLLBACK without a transaction is an error to ignore.
        with contextlib.suppress(sqlite3.Error):
            await self._db.execute("ROLLBACK")


class WriteTransaction(Transaction):
    """A ``BEGIN IMMEDIATE`` transaction: it takes the file's write lock at once.

    A deferred transaction upgraded to a write by its first statement gets
    SQLITE_BUSY at once when another process holds the lock, ignoring the busy
    timeout; an immediate one waits for it.
    """

    begin = "BEGIN IMMEDIATE"
    verb = "write"


class ReadTransaction(Transaction):
    """A deferred transaction for reads that must agree with each other (one snapshot).

    Ending it (even without a write) lets the next one see what was committed
    since: a connection left inside a read transaction stays pinned to an old
    snapshot of the file.
    """


async def run_to_end(awaitable: Awaitable[T]) -> T:
    """Await *awaitable* to its end even if the awaiting task is cancelled meanwhile.

    The cancellation is not lost: it is raised once *awaitable* has finished
    (its own result or error is then dropped, as a cancelled caller cannot use it).
    """
    task = asyncio.ensure_future(awaitable)
    cancelled = False
    while not task.done():
        try:
            await asyncio.wait((task,))  # never cancels *task* itself
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return task.result()


def _statements(script: str) -> list[str]:
    statements, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    return [s for s in statements if s]
