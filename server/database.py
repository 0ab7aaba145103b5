"""The server's database behind one interface: SQLite (one file) or PostgreSQL.

:class:`~server.store.ServerStore` writes its SQL once, with ``?`` positional or
``:name`` named parameters, and runs it through a :class:`Database`:

- :meth:`Database.write` is one write transaction, and write transactions are
  serialized across every process using the database (SQLite: ``BEGIN
  IMMEDIATE`` takes the file's write lock; PostgreSQL: the transaction takes
  an advisory lock before anything else). So the change sequence numbers taken
  with ``UPDATE meta SET seq = seq + n RETURNING seq`` are committed in order,
  and a door's cursor never skips a transaction that commits late;
- :meth:`Database.read` is one consistent snapshot;
- :meth:`Connection.notify` sends a small JSON message to every process's
  :meth:`Database.listen` callbacks if, and only if, the transaction commits.

:class:`Dialect` gives the few SQL fragments that differ (time arithmetic, case-
insensitive ``LIKE``, scans' insertion order, index hints). Cancellation never
leaves a transaction open: a cancelled task's transaction is rolled back, and
a PostgreSQL connection whose state is unknown is closed, not pooled again.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import functools
import json
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aiosqlite
import psycopg
from psycopg import pq, sql
from psycopg.adapt import Loader
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from core.database import ReadTransaction, StoreError, WriteTransaction, connect, run_to_end
from server.schema import SERVER_FILE
from sync.backoff import Backoff

log = logging.getLogger("checkin.server")

#: A row: ``row["column"]``, ``dict(row)``, ``Attendee(**row)`` (a dict on both backends, so
#: code that indexes rows by position fails on SQLite too).
Row = dict[str, Any]
#: Statement parameters: a sequence for ``?``, a mapping for ``:name``.
Params = Sequence[Any] | Mapping[str, Any]
#: A migration script, or a function making it when it is applied (for values that must
#: differ between databases, such as a new epoch).
Migration = str | Callable[[], str]
#: A notification callback: the payload given to :meth:`Connection.notify`, or
#: ``{"resync": True}`` when notifications may have been missed.
Listener = Callable[[dict[str, Any]], None]

#: The NOTIFY channel of every process of the server.
CHANNEL = "checkin"
#: The advisory lock key that serializes write transactions (and migrations).
WRITE_LOCK = 0x636865636B696E  # "checkin"
#: Largest JSON notification payload in bytes (PostgreSQL's limit is 8,000).
MAX_NOTIFY_BYTES = 7000


class RowError(Exception):
    """The database refused one row's data (raised inside :meth:`Connection.savepoint`).

    Outside a savepoint, a refused statement is a :class:`StoreError` on either backend
    (SQLite's own errors) or the Python error that binding the value raised.
    """


# -- dialects -------------------------------------------------------------------------


class Dialect(abc.ABC):
    """SQL fragments that differ between the backends."""

    #: Case-insensitive (ASCII at least) ``LIKE``.
    like: str
    #: A column giving scans' insertion order.
    position: str

    @abc.abstractmethod
    def instant(self, expr: str) -> str:
        """A comparable, orderable instant from a time stamp text (any UTC offset)."""

    @abc.abstractmethod
    def stamp(self, instant_expr: str) -> str:
        """An instant back as text ``YYYY-MM-DDTHH:MM:SS.mmmZ`` (UTC)."""

    @abc.abstractmethod
    def minute(self, instant_expr: str) -> str:
        """An instant's minute as text ``YYYY-MM-DDTHH:MM:00Z`` (UTC)."""

    @abc.abstractmethod
    def seconds_between(self, a: str, b: str) -> str:
        """Seconds (a float) from instant *b* to instant *a*."""

    @abc.abstractmethod
    def indexed_by(self, index: str) -> str:
        """A hint naming the index a query must use, where the backend takes one."""


class SqliteDialect(Dialect):
    like = "LIKE"
    position = "rowid"

    def instant(self, expr: str) -> str:
        return f"julianday({expr})"

    def stamp(self, instant_expr: str) -> str:
        return f"strftime('%Y-%m-%dT%H:%M:%fZ', {instant_expr})"

    def minute(self, instant_expr: str) -> str:
        return f"strftime('%Y-%m-%dT%H:%M:00Z', {instant_expr})"

    def seconds_between(self, a: str, b: str) -> str:
        return f"(({a}) - ({b})) * 86400.0"

    def indexed_by(self, index: str) -> str:
        return f"INDEXED BY {index}"


class PostgresDialect(Dialect):
    like = "ILIKE"
    position = "position"

    def instant(self, expr: str) -> str:
        return f"({expr})::timestamptz"

    def stamp(self, instant_expr: str) -> str:
        return f"""to_char(({instant_expr}) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')"""

    def minute(self, instant_expr: str) -> str:
        return f"""to_char(({instant_expr}) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI":00Z"')"""

    def seconds_between(self, a: str, b: str) -> str:
        return f"extract(epoch FROM ({a}) - ({b}))::float8"

    def indexed_by(self, index: str) -> str:
        return ""


# -- the interface --------------------------------------------------------------------


class Connection(abc.ABC):
    """One transaction's statements; valid only inside its transaction."""

    def __init__(self, writing: bool) -> None:
        self._writing = writing
        self._open = True
        self._savepoints = 0
        self.notices: list[dict[str, Any]] = []

    @abc.abstractmethod
    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        """Every row *sql* returns."""

    @abc.abstractmethod
    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        """The first row *sql* returns, or ``None``."""

    async def scalar(self, sql: str, params: Params = ()) -> Any:
        """The first column of the first row *sql* returns, or ``None``."""
        row = await self.fetchone(sql, params)
        return None if row is None else next(iter(row.values()))

    @abc.abstractmethod
    async def execute(self, sql: str, params: Params = ()) -> int:
        """Run *sql*; return how many rows it changed."""

    @abc.abstractmethod
    async def executemany(self, sql: str, rows: Iterable[Params]) -> None:
        """Run *sql* once per parameter set in *rows*."""

    @contextlib.asynccontextmanager
    async def savepoint(self) -> AsyncIterator[None]:
        """A savepoint: released on success, rolled back to on an error, which is then
        re-raised (a refused row as :class:`RowError`), leaving the transaction usable."""
        self._check()
        self._savepoints += 1
        name = f"checkin_{self._savepoints}"
        try:
            await self._savepoint_statement(f"SAVEPOINT {name}")
            try:
                yield
            except Exception:
                await self._savepoint_statement(f"ROLLBACK TO SAVEPOINT {name}")
                await self._savepoint_statement(f"RELEASE SAVEPOINT {name}")
                raise
            await self._savepoint_statement(f"RELEASE SAVEPOINT {name}")
        finally:
            self._savepoints -= 1

    def notify(self, payload: dict[str, Any]) -> None:
        """Send *payload* (JSON, under :data:`MAX_NOTIFY_BYTES`) to every process's
        :meth:`Database.listen` callbacks if, and only if, this transaction commits."""
        self._check()
        if not self._writing:
            raise RuntimeError("notify() needs a write transaction")
        self.notices.append(json.loads(_encode(payload)))  # what listeners get: JSON's types

    @abc.abstractmethod
    async def _savepoint_statement(self, sql: str) -> None: ...

    def _check(self) -> None:
        if not self._open:
            raise RuntimeError("connection used after its transaction ended")


class Database(abc.ABC):
    """A server database. Open with :func:`open_database`; :meth:`close` when done."""

    #: Where it is, for logs and errors (no password).
    url: str
    dialect: Dialect
    #: ``"sqlite"`` or ``"postgresql"``.
    kind: str

    @abc.abstractmethod
    def write(self) -> contextlib.AbstractAsyncContextManager[Connection]:
        """A write transaction; one at a time across every process using the database."""

    @abc.abstractmethod
    def read(self) -> contextlib.AbstractAsyncContextManager[Connection]:
        """A read-only transaction seeing one consistent snapshot."""

    @abc.abstractmethod
    async def listen(self, callback: Listener) -> None:
        """From now on, give *callback* every notification committed by any process
        (this one's too), and ``{"resync": True}`` when some may have been missed."""

    @abc.abstractmethod
    async def publish(self, payload: dict[str, Any]) -> None:
        """Send *payload* (as :meth:`Connection.notify` takes it) to every process's
        :meth:`listen` callbacks now: outside any transaction, never waiting for the
        write lock (news that is not data must not queue behind writes)."""

    @abc.abstractmethod
    async def close(self) -> None: ...


async def open_database(url: str, migrations: Mapping[str, Sequence[Migration]]) -> Database:
    """Open (creating and migrating if needed) the database at *url*.

    *url*: ``sqlite:///abs/path/file.sqlite3`` or ``postgresql://user@host:port/db``.
    *migrations*: each backend's history by kind (``"sqlite"``, ``"postgresql"``):
    script ``i`` takes the schema from version ``i`` to ``i + 1``. Raises
    :class:`StoreError` when the database cannot be opened or is newer than them.
    """
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        return await SqliteDatabase.open(_sqlite_path(url), migrations["sqlite"])
    if scheme in ("postgresql", "postgres"):
        return await PostgresDatabase.open(url, migrations["postgresql"])
    raise StoreError(f"unsupported database URL {redact(url)!r}: "
                     "use sqlite:///path or postgresql://user@host:port/db")


def database_url(data_dir: Path) -> str:
    """The default database: the SQLite file inside the data dir *data_dir*."""
    return "sqlite://" + str((Path(data_dir) / SERVER_FILE).absolute())


def redact(url: str) -> str:
    """*url* without its password (in the user part or in the query)."""
    parts = urlsplit(url)
    pairs = parse_qsl(parts.query)
    if parts.password is None and all(k != "password" for k, _ in pairs):
        return url
    netloc = parts.netloc
    if parts.password is not None:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.partition(':')[0]}@{host}"
    query = urlencode([(k, v) for k, v in pairs if k != "password"])
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _encode(payload: dict[str, Any]) -> str:
    """*payload* as a notification's JSON text; ValueError if it is too large."""
    text = json.dumps(payload, separators=(",", ":"))
    if len(text.encode()) >= MAX_NOTIFY_BYTES:
        raise ValueError(f"notification of {len(text.encode())} bytes is too large "
                         f"(at most {MAX_NOTIFY_BYTES - 1})")
    return text


def _sqlite_path(url: str) -> Path:
    return Path(url.removeprefix("sqlite://")).absolute()


# -- SQLite -----------------------------------------------------------------------------


def _dict_row(cursor: sqlite3.Cursor, row: tuple[Any, ...]) -> Row:
    # A plain dict, as psycopg's dict_row gives on PostgreSQL.
    return dict(zip([d[0] for d in cursor.description], row, strict=True))


#: What binding one row's values can make SQLite (or Python before it) raise.
_SQLITE_ROW_ERRORS = (sqlite3.Error, UnicodeError, ValueError, OverflowError)


class SqliteConnection(Connection):
    def __init__(self, db: aiosqlite.Connection, writing: bool) -> None:
        super().__init__(writing)
        self._db = db

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        self._check()
        with self._refusals():
            return list(await self._db.execute_fetchall(sql, params))

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        self._check()
        with self._refusals():
            async with self._db.execute(sql, params) as cursor:
                return await cursor.fetchone()

    async def execute(self, sql: str, params: Params = ()) -> int:
        self._check()
        with self._refusals():
            async with self._db.execute(sql, params) as cursor:
                return cursor.rowcount

    async def executemany(self, sql: str, rows: Iterable[Params]) -> None:
        self._check()
        with self._refusals():
            await self._db.executemany(sql, rows)

    async def _savepoint_statement(self, sql: str) -> None:
        await self._db.execute(sql)

    @contextlib.contextmanager
    def _refusals(self) -> Iterator[None]:
        """Inside a savepoint, a refused statement is a :class:`RowError`; outside,
        SQLite's error reaches the transaction, which names the file in a StoreError."""
        try:
            yield
        except _SQLITE_ROW_ERRORS as exc:
            if self._savepoints:
                raise RowError(str(exc)) from exc
            raise


class SqliteDatabase(Database):
    """One SQLite file: a writer connection and a reader connection (WAL lets reads
    proceed during a write), each used by one transaction at a time."""

    kind = "sqlite"
    dialect = SqliteDialect()

    def __init__(self, path: Path, writer: aiosqlite.Connection,
                 reader: aiosqlite.Connection) -> None:
        self.path = path
        self.url = "sqlite://" + str(path)
        self._writer = writer
        self._reader = reader
        self._write_lock = asyncio.Lock()
        self._read_lock = asyncio.Lock()
        self._listeners: list[Listener] = []

    @classmethod
    async def open(cls, path: Path, migrations: Sequence[Migration]) -> SqliteDatabase:
        scripts = [m() if callable(m) else m for m in migrations]
        writer = await connect(path, scripts)
        try:
            reader = await connect(path, scripts)
        except BaseException:
            await writer.close()
            raise
        for db in (writer, reader):
            db.row_factory = _dict_row
        # Reads stay reads, as on PostgreSQL (READ ONLY): a write there is a bug.
        await reader.execute("PRAGMA query_only = ON")
        return cls(path, writer, reader)

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[Connection]:
        transaction = _Write(self._writer, self.path, self._write_lock)
        conn = SqliteConnection(self._writer, writing=True)
        try:
            async with transaction:
                try:
                    yield conn
                finally:
                    conn._open = False
        finally:
            if transaction.committed:  # also when the task was cancelled during COMMIT
                self._deliver(conn.notices)

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[Connection]:
        async with ReadTransaction(self._reader, self.path, self._read_lock) as db:
            conn = SqliteConnection(db, writing=False)
            try:
                yield conn
            finally:
                conn._open = False

    async def listen(self, callback: Listener) -> None:
        self._listeners.append(callback)

    async def publish(self, payload: dict[str, Any]) -> None:
        self._deliver([json.loads(_encode(payload))])

    def _deliver(self, notices: list[dict[str, Any]]) -> None:
        # Later, as a notification from PostgreSQL would come: never inside the writer's
        # own call, which may still hold locks of its own.
        loop = asyncio.get_running_loop()
        for payload in notices:
            for callback in list(self._listeners):
                loop.call_soon(_call, callback, json.loads(json.dumps(payload)))

    async def close(self) -> None:
        self._listeners.clear()
        await self._writer.close()
        await self._reader.close()


class _Write(WriteTransaction):
    """A write transaction that says whether its COMMIT succeeded (``committed``): its
    notifications are due then, even if the task was cancelled while it ran."""

    committed = False

    async def _finish(self, exc_type: type | None, exc: BaseException | None) -> None:
        await super()._finish(exc_type, exc)
        self.committed = exc_type is None  # returned normally: COMMIT succeeded


def _call(callback: Listener, payload: dict[str, Any]) -> None:
    try:
        callback(payload)
    except Exception:
        log.exception("notification callback %r failed", callback)


# -- PostgreSQL -------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def postgres_sql(sql: str) -> str:
    """*sql* written for SQLite's parameters in psycopg's: ``?`` -> ``%s``, ``:name`` ->
    ``%(name)s``, a literal ``%`` -> ``%%``; quoted text, quoted names, comments and
    ``::`` casts are left alone (but their ``%`` doubled, as psycopg reads every one)."""
    out: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c in "'\"":  # a literal or a quoted name: up to its closing quote ('' escapes it)
            end = sql.find(c, i + 1)
            while end != -1 and sql.startswith(c, end + 1):
                end = sql.find(c, end + 2)
            end = n if end == -1 else end + 1
            out.append(sql[i:end].replace("%", "%%"))
            i = end
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            end = n if end == -1 else end
            out.append(sql[i:end].replace("%", "%%"))
            i = end
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            end = n if end == -1 else end + 2
            out.append(sql[i:end].replace("%", "%%"))
            i = end
        elif sql.startswith("::", i):
            out.append("::")
            i += 2
        elif c == ":" and i + 1 < n and (sql[i + 1].isalpha() or sql[i + 1] == "_"):
            end = i + 1
            while end < n and (sql[end].isalnum() or sql[end] == "_"):
                end += 1
            out.append(f"%({sql[i + 1:end]})s")
            i = end
        elif c == "?":
            out.append("%s")
            i += 1
        elif c == "%":
            out.append("%%")
            i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


#: Errors that mean the database refused a statement's data (or its text could not be
#: encoded): inside a savepoint, a :class:`RowError`.
_PG_ROW_ERRORS = (psycopg.DataError, psycopg.IntegrityError, psycopg.ProgrammingError,
                  psycopg.NotSupportedError, UnicodeError, ValueError, OverflowError)
#: Every connection's settings (the URL's own parameters kept).
_CONNECT_OPTIONS: dict[str, Any] = {"autocommit": True, "row_factory": dict_row,
                                    "connect_timeout": 10}


class _NumericLoader(Loader):
    """``numeric`` (what ``sum``/``avg`` of integers give) as SQLite gives it: an int when
    whole, else a float, never a Decimal the rest of the code would not expect."""

    def load(self, data: Any) -> int | float:
        value = Decimal(bytes(data).decode())
        if value.is_finite() and value == value.to_integral_value():
            return int(value)
        return float(value)


async def _configure(conn: psycopg.AsyncConnection[Any]) -> None:
    """Set up a new pooled connection: times without an offset are UTC (as SQLite's
    julianday takes them), and numeric results come as SQLite gives them."""
    await conn.execute("SET TIME ZONE 'UTC'")
    # psycopg prepares a statement after its fifth run; PostgreSQL's generic plan for it
    # then searches a 500-value "code IN (...)" row by row (storing 50,000 scans took
    # 53 s instead of 12.5 s): always plan for the values given.
    await conn.execute("SET plan_cache_mode = force_custom_plan")
    conn.adapters.register_loader("numeric", _NumericLoader)


class PostgresConnection(Connection):
    def __init__(self, conn: psycopg.AsyncConnection[Row], database: PostgresDatabase,
                 writing: bool) -> None:
        super().__init__(writing)
        self._conn = conn
        self._database = database

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        self._check()
        with self._refusals():
            cursor = await self._conn.execute(postgres_sql(sql), params)
            return await cursor.fetchall()

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        self._check()
        with self._refusals():
            cursor = await self._conn.execute(postgres_sql(sql), params)
            return await cursor.fetchone()

    async def execute(self, sql: str, params: Params = ()) -> int:
        self._check()
        with self._refusals():
            cursor = await self._conn.execute(postgres_sql(sql), params)
            return cursor.rowcount

    async def executemany(self, sql: str, rows: Iterable[Params]) -> None:
        self._check()
        rows = list(rows)
        if not rows:
            return
        with self._refusals():
            async with self._conn.cursor() as cursor:
                await cursor.executemany(postgres_sql(sql), rows)

    async def _savepoint_statement(self, sql: str) -> None:
        with self._refusals():
            await self._conn.execute(sql)

    @contextlib.contextmanager
    def _refusals(self) -> Iterator[None]:
        try:
            yield
        except _PG_ROW_ERRORS as exc:
            if self._savepoints:
                raise RowError(str(exc)) from exc
            if isinstance(exc, psycopg.Error):
                raise self._database.error("write" if self._writing else "read", exc) from exc
            raise
        except psycopg.Error as exc:
            raise self._database.error("write" if self._writing else "read", exc) from exc


class PostgresDatabase(Database):
    """A PostgreSQL database through a pool of connections.

    Each process's writes wait for each other on an :class:`asyncio.Lock` first (one
    pooled connection waits for the advisory lock, not ten), then for other processes'
    on ``pg_advisory_xact_lock``, which the transaction holds until it ends. Writes run
    READ COMMITTED: each statement sees everything committed before the lock was
    granted. Reads run REPEATABLE READ READ ONLY: one snapshot for the whole read.
    """

    kind = "postgresql"
    dialect = PostgresDialect()

    def __init__(self, url: str, pool: AsyncConnectionPool) -> None:
        self._conninfo = url
        self.url = redact(url)
        self._pool = pool
        self._write_lock = asyncio.Lock()
        self._listeners: list[Listener] = []
        self._listener: asyncio.Task[None] | None = None
        self._listen_lock = asyncio.Lock()
        self._listen_conn: psycopg.AsyncConnection[Any] | None = None
        #: Seconds the listener waits before reconnecting (tests shorten it).
        self.backoff = Backoff(minimum=0.2, maximum=5.0)

    @classmethod
    async def open(cls, url: str, migrations: Sequence[Migration]) -> PostgresDatabase:
        safe = redact(url)
        try:
            conn = await psycopg.AsyncConnection.connect(url, **_CONNECT_OPTIONS)
        except psycopg.Error as exc:
            raise StoreError(f"cannot open store {safe}: {exc}") from exc
        try:
            await _migrate(conn, safe, migrations)
        except psycopg.Error as exc:
            raise StoreError(f"cannot open store {safe}: {exc}") from exc
        finally:
            await conn.close()
        pool = AsyncConnectionPool(
            url, min_size=2, max_size=10, kwargs=_CONNECT_OPTIONS, open=False,
            configure=_configure, check=AsyncConnectionPool.check_connection, name="checkin")
        await pool.open()
        return cls(url, pool)

    def error(self, verb: str, exc: BaseException) -> StoreError:
        """The StoreError for *exc*, naming the database."""
        return StoreError(f"cannot {verb} store {self.url}: {exc}")

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[Connection]:
        async with self._write_lock, self._transaction(
                "BEGIN ISOLATION LEVEL READ COMMITTED", writing=True) as conn:
            yield conn

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[Connection]:
        async with self._transaction(
                "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", writing=False) as conn:
            yield conn

    @contextlib.asynccontextmanager
    async def _transaction(self, begin: str, writing: bool) -> AsyncIterator[Connection]:
        verb = "write" if writing else "read"
        try:
            raw = await self._pool.getconn()  # psycopg_pool takes it back if cancelled
        except psycopg.Error as exc:
            raise self.error(verb, exc) from exc
        conn = PostgresConnection(raw, self, writing)
        try:
            try:
                # A writer takes the lock first thing (one round trip with BEGIN): what it
                # reads next is what the previous writer left, and its seqs come after.
                await raw.execute(f"{begin}; SELECT pg_advisory_xact_lock({WRITE_LOCK})"
                                  if writing else begin)
            except psycopg.Error as exc:
                raise self.error(verb, exc) from exc
            yield conn
            # Run to its end even if cancelled: committed or not, never left half-way.
            await run_to_end(self._commit(raw, conn))
        finally:
            conn._open = False
            await run_to_end(self._give_back(raw))

    async def _commit(self, raw: psycopg.AsyncConnection[Row], conn: Connection) -> None:
        # The notifications go with the COMMIT, in one round trip (the write lock is held
        # meanwhile); PostgreSQL sends them only if the COMMIT succeeds.
        notify = sql.SQL("SELECT pg_notify({}, {}); ")
        statement = sql.Composed([notify.format(CHANNEL, json.dumps(payload))
                                  for payload in conn.notices] + [sql.SQL("COMMIT")])
        try:
            await raw.execute(statement)
        except psycopg.Error as exc:
            raise self.error("write" if conn._writing else "read", exc) from exc

    async def _give_back(self, raw: psycopg.AsyncConnection[Row]) -> None:
        """Return *raw* to the pool idle, or closed when its state is unknown (the pool
        then replaces it)."""
        status = raw.pgconn.transaction_status
        if status in (pq.TransactionStatus.INTRANS, pq.TransactionStatus.INERROR):
            try:
                await raw.execute("ROLLBACK")
            except psycopg.Error:
                await raw.close()
        elif status != pq.TransactionStatus.IDLE:  # a statement still running, or broken
            await raw.close()
        await self._pool.putconn(raw)

    async def listen(self, callback: Listener) -> None:
        async with self._listen_lock:  # one listening connection, however many callers
            if self._listener is None:
                self._listen_conn = await self._listen_connect()
                self._listener = asyncio.create_task(self._listen_loop())
            self._listeners.append(callback)

    async def publish(self, payload: dict[str, Any]) -> None:
        text = _encode(payload)
        try:
            raw = await self._pool.getconn()
        except psycopg.Error as exc:
            raise self.error("notify", exc) from exc
        try:  # the pool's connections are in autocommit: sent at once
            await raw.execute("SELECT pg_notify(%s, %s)", (CHANNEL, text))
        except psycopg.Error as exc:
            raise self.error("notify", exc) from exc
        finally:
            await run_to_end(self._give_back(raw))

    async def _listen_connect(self) -> psycopg.AsyncConnection[Any]:
        try:
            conn = await psycopg.AsyncConnection.connect(self._conninfo, **_CONNECT_OPTIONS)
        except psycopg.Error as exc:
            raise self.error("listen to", exc) from exc
        try:
            await conn.execute(f"LISTEN {CHANNEL}")
        except psycopg.Error as exc:
            await conn.close()
            raise self.error("listen to", exc) from exc
        return conn

    async def _listen_loop(self) -> None:
        while True:
            conn = self._listen_conn
            assert conn is not None
            try:
                async for note in conn.notifies():
                    self._deliver(note.payload)
            except Exception as exc:  # whatever it was, listening must go on
                log.warning("lost the notification connection to %s: %s", self.url, exc)
            with contextlib.suppress(Exception):
                await conn.close()
            self._listen_conn = None
            while self._listen_conn is None:
                await asyncio.sleep(self.backoff.failure())
                try:
                    self._listen_conn = await self._listen_connect()
                except StoreError as exc:
                    log.warning("%s", exc)
            self.backoff.success()
            log.info("listening to %s again", self.url)
            self._deliver(json.dumps({"resync": True}))

    def _deliver(self, text: str) -> None:
        try:
            payload = json.loads(text)
        except ValueError:
            log.warning("notification that is not JSON ignored: %.100r", text)
            return
        for callback in list(self._listeners):
            _call(callback, payload)

    async def close(self) -> None:
        self._listeners.clear()
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        if self._listen_conn is not None:
            await self._listen_conn.close()
            self._listen_conn = None
        await self._pool.close()


async def _migrate(conn: psycopg.AsyncConnection[Any], url: str,
                   migrations: Sequence[Migration]) -> None:
    """Bring the schema to ``len(migrations)`` in one transaction under the write lock:
    processes starting together migrate one after the other (the later ones find
    nothing left to do)."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version ("
            " singleton INTEGER PRIMARY KEY CHECK (singleton = 1), version INTEGER NOT NULL)")
        row = await (await conn.execute("SELECT version FROM schema_version")).fetchone()
        version = row["version"] if row else 0
        if version > len(migrations):
            raise StoreError(
                f"store {url} has schema version {version}, newer than this "
                f"software's {len(migrations)}: upgrade the software")
        for migration in migrations[version:]:
            await conn.execute(migration() if callable(migration) else migration)
        if version != len(migrations):
            await conn.execute(
                "INSERT INTO schema_version (singleton, version) VALUES (1, %s)"
                " ON CONFLICT (singleton) DO UPDATE SET version = excluded.version",
                (len(migrations),))
