"""The device store: adapters over the one SQLite file on the Pi.

The door and the sync daemon each open their own :class:`Store` (aiosqlite) on
the same file (WAL mode). Every write is a short ``BEGIN IMMEDIATE`` transaction
or a single autocommit statement, so each process sees the other's commits on
its next query without a restart.

The door's hot path does not go through aiosqlite: :class:`DoorStore` is a plain
``sqlite3`` connection on a thread the door owns, and one call there looks the
code up, decides and records the scan (docs/performance.md says why).

The cache keeps no attendee code, only its keyed hash (:func:`code_hash`, with the
server's per-event code key in ``sync_state``): a card read elsewhere gives no badge.
Each store object holds the key in memory (:class:`HeldKey`), reads it once and again
only when a lookup finds the store holds another (the daemon stored a new one).
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import hmac
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from itertools import repeat
from pathlib import Path
from typing import Any, Self, TypeVar

import aiosqlite

from core.database import PRAGMAS, StoreError, WriteTransaction, connect
from core.rules import Decision, Direction, Facts, Reason, SessionRules
from core.timesource import ClockAnchor
from sync.device_schema import MIGRATIONS
from sync.messages import CODE_KEY_BYTES, code_key_id

__all__ = ["ANCHOR_SQL", "FACTS_SQL", "HASH_BYTES", "KEY_SQL", "REAPPLY_OWN", "STORE_FILE",
           "UPSERT_ADMISSION", "UPSERT_SESSION", "CodeHasher", "Decided", "DoorStore",
           "HashedCache", "HeldKey",
           "ScanRecord", "SessionRow", "Store", "StoreError", "UploadState", "anchor_of",
           "code_hash", "facts_of", "hash_cache", "new_code_key", "store_key",
           "write_cache"]

T = TypeVar("T")

#: The store's file name inside the device's data dir.
STORE_FILE = "checkin.sqlite3"


class UploadState(enum.StrEnum):
    """Where a recorded scan is on its way to the server (``scans.upload_state``)."""

    #: Not yet stored by the server: the sync daemon uploads it.
    WAITING = "waiting"
    #: The server stored it (or already had it).
    STORED = "stored"
    #: The server refused it; ``upload_note`` says why. Never uploaded again.
    QUARANTINED = "quarantined"


@dataclass(frozen=True, slots=True)
class ScanRecord:
    """One decision, as the door records it before it signals it."""

    scan_id: str
    code: str
    session_id: str | None
    decision: Decision
    reason: str
    scanned_at: str
    monotonic_ns: int
    boot_id: str
    #: ``out`` at an exit door.
    direction: Direction = Direction.IN
    #: For a staff override: the id of the rejected scan it overrules.
    override_of: str | None = None
    #: Where *scanned_at* came from: ``system``, ``server`` or ``unknown``
    #: (:class:`core.timesource.TimeSource`'s values).
    time_source: str = "system"


#: Bytes of a code's keyed hash as the store keeps it.
HASH_BYTES = 16


def code_hash(key: bytes, code: str) -> bytes:
    """What the store keeps of *code*: HMAC-SHA256 with the code *key*, its first
    :data:`HASH_BYTES` bytes. (:class:`CodeHasher` makes the same, faster, for many.)"""
    return hmac.digest(key, code.encode("utf-8", "surrogatepass"), "sha256")[:HASH_BYTES]


class CodeHasher:
    """:func:`code_hash` with one key, its two SHA-256 pad states computed once: each code
    then costs two state copies and two updates (about 0.9 µs instead of 2.7 µs), which
    counts for a snapshot of 200,000 codes and on the door's hot path."""

    __slots__ = ("_inner", "_outer")

    def __init__(self, key: bytes) -> None:
        block = (hashlib.sha256(key).digest() if len(key) > 64 else key).ljust(64, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))

    def __call__(self, code: str) -> bytes:
        inner = self._inner.copy()
        inner.update(code.encode("utf-8", "surrogatepass"))
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()[:HASH_BYTES]


def new_code_key() -> bytes:
    """A code key of this device's own, for a cache filled without the server's (tests,
    tools, a server that sends none)."""
    return os.urandom(CODE_KEY_BYTES)


#: Every connection to the store overwrites deleted content with zeros: a scan's code
#: replaced by its hash, a cache replaced, leave nothing readable in free space.
SECURE_DELETE = "PRAGMA secure_delete = ON"

#: The key the store holds, and its id.
KEY_SQL = "SELECT code_key, key_id FROM sync_state"


class HeldKey:
    """The code key a store object holds in memory, as last read from the store."""

    __slots__ = ("_hasher", "key", "key_id")

    def __init__(self) -> None:
        self.key: bytes | None = None
        self.key_id: str | None = None
        self._hasher: CodeHasher | None = None

    def load(self, row: Any) -> None:
        """Take the key from a :data:`KEY_SQL` row."""
        self.key, self.key_id = (row["code_key"], row["key_id"]) if row else (None, None)
        self._hasher = CodeHasher(self.key) if self.key is not None else None

    def hash(self, code: str | None) -> bytes | None:
        """*code*'s hash with the key held; ``None`` without a code or a key."""
        if code is None or self._hasher is None:
            return None
        return self._hasher(code)


# The decision is written into the text, not bound: the partial index scans_admitted
# serves only a query whose condition matches its own literally. Every part is an index
# lookup or a one-row read (occupancy is kept by triggers): nothing is counted here.
# key_id tells the caller whether it hashed with the key the store holds.
FACTS_SQL = f"""
SELECT s.session_id, s.validate_registrants, s.starts_at, s.ends_at, s.capacity, y.key_id,
       EXISTS (SELECT 1 FROM attendees WHERE hash = :hash) AS is_attendee,
       EXISTS (SELECT 1 FROM registrants WHERE session_id = s.session_id AND hash = :hash)
           AS is_registrant,
       (SELECT inside FROM admissions WHERE hash = :hash) AS presence,
       EXISTS (SELECT 1 FROM scans WHERE session_id = s.session_id AND code_hash = :hash
               AND decision = '{Decision.ADMITTED}') AS admitted_here,
       (SELECT inside FROM occupancy) AS occupancy
FROM session AS s CROSS JOIN sync_state AS y
"""


def facts_of(rows: Iterable[sqlite3.Row]) -> Facts:
    """The :class:`Facts` in the rows :data:`FACTS_SQL` returned."""
    row = next(iter(rows), None)
    if row is None or row["key_id"] is None:  # no key: nothing cached can be looked up
        return Facts(session=None)
    session = SessionRules(
        session_id=row["session_id"],
        validate_registrants=bool(row["validate_registrants"]),
        starts_at=_parse_time(row["starts_at"]),
        ends_at=_parse_time(row["ends_at"]),
        capacity=row["capacity"],
    )
    # Admitted before: by any door the server told of, or by this one (its own scans
    # count even before the server has them).
    return Facts(session, is_attendee=bool(row["is_attendee"]),
                 is_registrant=bool(row["is_registrant"]),
                 admitted_before=row["presence"] is not None or bool(row["admitted_here"]),
                 inside=bool(row["presence"]), occupancy=row["occupancy"] or 0)


#: The clock anchor the sync daemon recorded last (one row, every column NULL before it).
ANCHOR_SQL = ("SELECT anchor_server_time, anchor_monotonic_ns, anchor_boot_id"
              " FROM sync_state")


def anchor_of(rows: Iterable[sqlite3.Row]) -> ClockAnchor | None:
    """The :class:`ClockAnchor` in the rows :data:`ANCHOR_SQL` returned, if any."""
    row = next(iter(rows), None)
    if row is None or row["anchor_server_time"] is None:
        return None
    return ClockAnchor(datetime.fromisoformat(row["anchor_server_time"]),
                       row["anchor_monotonic_ns"], row["anchor_boot_id"])


@dataclass(frozen=True, slots=True)
class Decided:
    """What :meth:`DoorStore.decide_and_record` did: the facts looked up, the reason
    decided and the scan's seq, or ``seq=None`` and *error* when it could not be written."""

    facts: Facts
    reason: Reason
    seq: int | None
    error: str | None = None


class _OwnThread:
    """One thread running the calls it is given, in order: the leanest hop there is
    (a queue put there, a ``call_soon_threadsafe`` back), as aiosqlite's own thread."""

    def __init__(self, name: str) -> None:
        self._calls: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def call(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._calls.put((loop, future, fn, args))
        return future

    def _work(self) -> None:
        while (item := self._calls.get()) is not None:
            loop, future, fn, args = item
            try:
                result = fn(*args)
            except BaseException as exc:  # handed to the caller, whatever it is
                loop.call_soon_threadsafe(_fail, future, exc)
            else:
                loop.call_soon_threadsafe(_settle, future, result)

    def stop(self) -> None:
        """Finish the calls queued, then end the thread."""
        self._calls.put(None)
        self._thread.join()


def _settle(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():  # its awaiter may have been cancelled meanwhile
        future.set_result(result)


def _fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


class DoorStore:
    """The door's own connection to the store, used on one thread of its own.

    One :meth:`decide_and_record` call is one hop to that thread: look the code up,
    decide, record the scan (one autocommit statement: committed and fsynced, the
    door's own presence row updated by a trigger in the same statement) and hop back.
    Open it after :meth:`Store.open` has migrated the file.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._thread = _OwnThread("door-store")
        self._db: sqlite3.Connection | None = None
        self._key = HeldKey()
        #: The code last looked up and its hash (the scan recorded next reuses it).
        self._looked_up: tuple[str | None, bytes | None] = (None, None)

    @classmethod
    async def open(cls, data_dir: Path | str) -> Self:
        store = cls(Path(data_dir) / STORE_FILE)
        try:
            await store.run(store._connect)
        except StoreError:
            store._thread.stop()
            raise
        return store

    def _connect(self) -> None:
        db = sqlite3.connect(self.path, isolation_level=None)
        try:
            db.row_factory = sqlite3.Row
            for pragma in (*PRAGMAS, SECURE_DELETE):
                db.execute(pragma)
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version != len(MIGRATIONS):
                raise sqlite3.DatabaseError(
                    f"schema version {version}, this software's is {len(MIGRATIONS)}")
        except BaseException:
            db.close()
            raise
        self._db = db

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the store's thread, where it may call the ``*_in_thread``
        methods (the door captures, decodes and decides there in one hop)."""
        try:
            return await self._thread.call(fn, *args)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot use store {self.path}: {exc}") from exc

    async def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            await self.run(db.close)
        self._thread.stop()

    async def facts(self, code: str | None) -> Facts:
        """What the decision needs to know about *code* (the lookup alone)."""
        return await self.run(self.facts_in_thread, code)

    async def decide_and_record(
        self, code: str | None, judge: Callable[[Facts], Reason],
        record: Callable[[Facts, Reason], ScanRecord],
    ) -> Decided:
        """Look *code* up, decide with ``judge(facts)``, commit ``record(facts, reason)``.

        *judge* and *record* run on the store's thread: keep them pure and quick. A
        lookup that fails raises :class:`StoreError`; a write that fails is returned
        as ``Decided(seq=None, error=...)``, with what was looked up and decided.
        """
        return await self.run(self.decide_and_record_in_thread, code, judge, record)

    async def record(self, scan: ScanRecord) -> int:
        """Commit *scan* durably (e.g. a staff override); return its seq."""
        return await self.run(self._record, scan)

    async def clock_anchor(self) -> ClockAnchor | None:
        """The clock anchor the sync daemon recorded last (``None``: never one)."""
        return await self.run(self.clock_anchor_in_thread)

    def clock_anchor_in_thread(self) -> ClockAnchor | None:
        """:meth:`clock_anchor`, called on the store's thread (inside :meth:`run`): one
        read of one row, cheap enough once a second on the door's own thread."""
        return anchor_of(self._open_db().execute(ANCHOR_SQL).fetchall())

    def facts_in_thread(self, code: str | None) -> Facts:
        """:meth:`facts`, called on the store's thread (inside :meth:`run`)."""
        return self._lookup(code)[0]

    def _open_db(self) -> sqlite3.Connection:
        if self._db is None:
            raise sqlite3.ProgrammingError("the store is closed")
        return self._db

    def _lookup(self, code: str | None) -> tuple[Facts, bytes | None]:
        """The facts about *code* and its hash, with the key the store holds: the query
        says which key that is, and only when it is not the one held (the daemon stored
        another with a new snapshot) is the key read again and the code looked up again."""
        db = self._open_db()
        digest = self._key.hash(code)
        rows = db.execute(FACTS_SQL, {"hash": digest}).fetchall()
        if rows and rows[0]["key_id"] != self._key.key_id:
            self._key.load(db.execute(KEY_SQL).fetchone())
            digest = self._key.hash(code)
            rows = db.execute(FACTS_SQL, {"hash": digest}).fetchall()
        elif not rows and self._key.key is not None:
            self._key.load(None)  # no session (say the device was revoked): hold no key
        self._looked_up = (code, digest)
        return facts_of(rows), digest

    def _record(self, scan: ScanRecord) -> int:
        """Insert *scan* alone (not after a lookup): its hash with the key stored now."""
        self._key.load(self._open_db().execute(KEY_SQL).fetchone())
        self._looked_up = (None, None)
        return self._insert(scan)

    def _insert(self, scan: ScanRecord) -> int:
        # The code looked up just before was hashed with the key checked then; anything
        # else (a garbage payload's rendering) with the key held.
        code, digest = self._looked_up
        if code is None or scan.code != code:
            digest = self._key.hash(scan.code)
        seq = self._open_db().execute(_INSERT_SCAN, _scan_row(scan, digest)).lastrowid
        assert seq is not None
        return seq

    def decide_and_record_in_thread(
        self, code: str | None, judge: Callable[[Facts], Reason],
        record: Callable[[Facts, Reason], ScanRecord],
    ) -> Decided:
        """:meth:`decide_and_record`, called on the store's thread (inside :meth:`run`;
        elsewhere sqlite3 refuses the connection)."""
        try:
            facts, _ = self._lookup(code)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read store {self.path}: {exc}") from exc
        reason = judge(facts)
        try:
            return Decided(facts, reason, self._insert(record(facts, reason)))
        except sqlite3.Error as exc:
            return Decided(facts, reason, None, f"cannot write store {self.path}: {exc}")


class Store:
    """One connection to the device store. Use :meth:`open`, then :meth:`close`."""

    def __init__(self, db: aiosqlite.Connection, path: Path) -> None:
        self._db = db
        self.path = path
        self._write_lock = asyncio.Lock()
        self._key = HeldKey()

    @classmethod
    async def open(cls, data_dir: Path | str) -> Self:
        """Open (creating and migrating if needed) the store in *data_dir*."""
        path = Path(data_dir) / STORE_FILE
        db = await connect(path, MIGRATIONS)
        try:
            await db.execute(SECURE_DELETE)
        except sqlite3.Error as exc:
            await db.close()
            raise StoreError(f"cannot open store {path}: {exc}") from exc
        return cls(db, path)

    async def close(self) -> None:
        await self._db.close()

    def write(self) -> WriteTransaction:
        """``async with store.write():`` — one ``BEGIN IMMEDIATE`` transaction."""
        return WriteTransaction(self._db, self.path, self._write_lock)

    # -- the door's side -------------------------------------------------

    async def facts(self, code: str | None) -> Facts:
        """Everything the decision needs to know about *code*, in one query.

        With ``code=None`` (an invalid payload) only the session is looked up. The code
        is hashed with the key held, read again only when the store holds another (as
        :class:`DoorStore` does).
        """
        try:  # one round trip to the database thread (the door itself uses DoorStore)
            rows = await self._db.execute_fetchall(FACTS_SQL, {"hash": self._key.hash(code)})
            if rows and rows[0]["key_id"] != self._key.key_id:
                await self._load_key()
                rows = await self._db.execute_fetchall(FACTS_SQL,
                                                       {"hash": self._key.hash(code)})
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read store {self.path}: {exc}") from exc
        return facts_of(rows)

    async def _load_key(self) -> HeldKey:
        """Read the key the store holds now into :attr:`_key`."""
        self._key.load(next(iter(await self._db.execute_fetchall(KEY_SQL)), None))
        return self._key

    async def clock_anchor(self) -> ClockAnchor | None:
        """The clock anchor the sync daemon recorded last (``None``: never one)."""
        try:
            return anchor_of(await self._db.execute_fetchall(ANCHOR_SQL))
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read store {self.path}: {exc}") from exc

    async def record_scan(self, scan: ScanRecord) -> int:
        """Commit *scan* durably; return its per-device sequence number.

        One statement in autocommit mode is its own transaction, committed (and
        fsynced) before it returns: one round trip to the database thread on the
        door's hot path instead of three (``BEGIN``, ``INSERT``, ``COMMIT``).
        """
        async with self._write_lock:
            try:
                key = await self._load_key()
                row = await self._db.execute_insert(_INSERT_SCAN,
                                                    _scan_row(scan, key.hash(scan.code)))
            except sqlite3.Error as exc:
                raise StoreError(f"cannot write store {self.path}: {exc}") from exc
        return row[0]  # last_insert_rowid(): the scan's seq

    async def record_scans(self, scans: Iterable[ScanRecord]) -> None:
        """Commit several scans in one transaction (a backlog made elsewhere, for tools,
        tests and benchmarks; the door records each scan with :meth:`record_scan`)."""
        async with self.write():
            key = await self._load_key()
            await self._db.executemany(_INSERT_SCAN, [_scan_row(scan, key.hash(scan.code))
                                                      for scan in scans])

    async def note_door(self, *, started_at: str | None = None, last_frame_at: str | None = None,
                        frames: int = 0) -> None:
        """Record what the door is doing, for ``checkin status``."""
        async with self.write():
            await self._db.execute(
                "UPDATE door_state SET started_at = COALESCE(?, started_at),"
                " last_frame_at = COALESCE(?, last_frame_at), frames = frames + ?",
                (started_at, last_frame_at, frames),
            )

    # -- the cache, as the sync daemon (or a test) fills it ---------------

    async def replace_cache(
        self,
        session: SessionRules,
        attendees: Iterable[str],
        registrants: Iterable[str],
        *,
        name: str = "",
        admissions: Iterable[str] | None = None,
        exits: Iterable[str] | None = None,
    ) -> None:
        """Replace the whole cache with a full snapshot, in one transaction (see
        :func:`write_cache` for *admissions* and *exits*), hashed with the key the store
        holds (one of its own if it holds none: for tests and tools)."""
        cache = hash_cache(await self.key_to_hash_with(), attendees, registrants,
                           admissions, exits)
        async with self.write():
            await store_key(self._db, cache.key)
            await write_cache(self._db, cache, {
                "session_id": session.session_id, "name": name,
                "validate_registrants": int(session.validate_registrants),
                "starts_at": _format_time(session.starts_at),
                "ends_at": _format_time(session.ends_at),
                "capacity": session.capacity,
            })

    async def key_to_hash_with(self, key: bytes | None = None) -> bytes:
        """The key a new cache is to be hashed with: *key* (the server's), else the key
        the store holds, else a new one of this device's own (stored with the cache)."""
        if key is not None:
            return key
        return (await self._load_key()).key or new_code_key()

    async def scans(self) -> list[dict[str, Any]]:
        """Every recorded scan, oldest first (for status, tests and tools)."""
        return [dict(row) for row in
                await self._db.execute_fetchall("SELECT * FROM scans ORDER BY seq")]


#: The session row, by column: what :func:`write_cache` is given.
SessionRow = dict[str, Any]

#: Inserts or replaces the one session row from a :data:`SessionRow`.
UPSERT_SESSION = (
    "INSERT INTO session (singleton, session_id, name, validate_registrants, starts_at,"
    " ends_at, capacity) VALUES (1, :session_id, :name, :validate_registrants, :starts_at,"
    " :ends_at, :capacity)"
    " ON CONFLICT (singleton) DO UPDATE SET session_id = excluded.session_id,"
    " name = excluded.name, validate_registrants = excluded.validate_registrants,"
    " starts_at = excluded.starts_at, ends_at = excluded.ends_at,"
    " capacity = excluded.capacity"
)

#: Sets one attendee's presence (``?`` code hash, ``?`` inside). An upsert, never
#: ``INSERT OR REPLACE``: a replacing delete fires no trigger, and occupancy would drift.
UPSERT_ADMISSION = ("INSERT INTO admissions (hash, inside) VALUES (?, ?)"
                    " ON CONFLICT (hash) DO UPDATE SET inside = excluded.inside")

#: Applies this door's own admissions and exits of its session again, in the order it
#: made them; with ``{waiting}`` only those the server does not have yet. (A scan whose
#: hash under the key held is unknown, ``code_hash`` NULL or empty, cannot count.)
REAPPLY_OWN = f"""
INSERT INTO admissions (hash, inside)
SELECT code_hash, direction = '{Direction.IN}' FROM scans
WHERE decision = '{Decision.ADMITTED}' AND session_id = (SELECT session_id FROM session)
AND length(code_hash) > 0
{{waiting}}
ORDER BY seq
ON CONFLICT (hash) DO UPDATE SET inside = excluded.inside
"""
# The state is written into the text: the partial index scans_waiting serves only a
# query whose condition matches its own literally.
_WAITING_ONLY = f"AND upload_state = '{UploadState.WAITING}'"


@dataclass(frozen=True, slots=True)
class HashedCache:
    """A whole cache's codes as the store keeps them: hashed with *key*, each list sorted
    (a B-tree filled in key order appends to its last page; hashes come in random order).
    Made by :func:`hash_cache` before the write transaction, so the door's commits wait
    for the inserts alone, not for the hashing too."""

    key: bytes
    attendees: list[bytes]
    registrants: list[bytes]
    #: ``None``: the server shares no admissions (see :func:`write_cache`).
    admissions: list[bytes] | None = None
    exits: list[bytes] | None = None


def hash_cache(key: bytes, attendees: Iterable[str], registrants: Iterable[str],
               admissions: Iterable[str] | None = None,
               exits: Iterable[str] | None = None) -> HashedCache:
    """The codes of a snapshot hashed with *key*, for :func:`write_cache`."""
    hasher = CodeHasher(key)

    def hashed(codes: Iterable[str]) -> list[bytes]:
        return sorted(set(map(hasher, codes)))

    return HashedCache(key, hashed(attendees), hashed(registrants),
                       None if admissions is None else hashed(admissions),
                       None if exits is None else hashed(exits))


async def write_cache(db: aiosqlite.Connection, cache: HashedCache,
                      session: SessionRow | None) -> None:
    """Replace the cache's rows with *cache*'s, inside the caller's write transaction,
    after :func:`store_key` stored its key.

    *session* holds the session row's columns (``session_id``, ``name``,
    ``validate_registrants``, ``starts_at``, ``ends_at``, ``capacity``), or is
    ``None`` for a device without a session (the door then answers not_ready).

    The cache's *admissions* (inside now) and *exits* (left since) are the session's
    presence as the server knows it; this door's own scans the server does not have yet
    are applied over it, so an admission not yet uploaded is never forgotten. Both
    ``None`` (a server that shares no admissions): the door's own scans are all it knows.
    """
    await db.execute("DELETE FROM session")
    await db.execute("DELETE FROM attendees")
    await db.execute("DELETE FROM registrants")
    await db.execute("DELETE FROM admissions")
    await db.executemany("INSERT OR IGNORE INTO attendees (hash) VALUES (?)",
                         zip(cache.attendees))
    if session is None:
        return
    await db.execute(UPSERT_SESSION, {"capacity": None} | session)
    await db.executemany("INSERT OR IGNORE INTO registrants (session_id, hash) VALUES (?, ?)",
                         zip(repeat(session["session_id"]), cache.registrants))
    shared = cache.admissions is not None or cache.exits is not None
    # This door's own scans first, the snapshot's rows over them: a scan the server
    # already holds is in the snapshot (with anything later, say another door's exit),
    # and one it does not hold yet comes back as a change once stored, if it changes
    # who is inside. Replayed over the snapshot, a scan in flight as the snapshot was
    # made would stand over the later exit for good (found by the model test).
    await db.execute(REAPPLY_OWN.format(waiting=_WAITING_ONLY if shared else ""))
    await db.executemany(UPSERT_ADMISSION, zip(cache.admissions or (), repeat(1)))
    await db.executemany(UPSERT_ADMISSION, zip(cache.exits or (), repeat(0)))


async def store_key(db: aiosqlite.Connection, key: bytes | None) -> bytes:
    """The key to hash the cache with from now on, inside the caller's write transaction
    (which then replaces the whole cache): *key* (the server's), or with ``None`` the key
    stored, or a new one of this device's own when none is.

    A key other than the one stored (or than none) is stored, and the scans' hashes are
    made again with it: those the server does not have yet, and those stored while no
    key was held (their codes replaced by the hash now); the others' codes are gone
    already, so their old hash is dropped (``x''``: unknown under this key).
    """
    rows = await db.execute_fetchall(KEY_SQL)
    stored = next(iter(rows))["code_key"]
    if key is None:
        key = stored or new_code_key()
    if key == stored:
        return key
    await db.execute("UPDATE sync_state SET code_key = ?, key_id = ?", (key, code_key_id(key)))
    await db.execute(f"UPDATE scans SET code_hash = x'' WHERE upload_state = '{UploadState.STORED}'"
                     " AND length(code_hash) > 0")
    rows = await db.execute_fetchall(
        "SELECT seq, code, upload_state FROM scans"
        f" WHERE code_hash IS NULL OR upload_state <> '{UploadState.STORED}'")
    hasher = CodeHasher(key)
    hashes = [(row["seq"], row["code"], row["upload_state"] == UploadState.STORED,
               hasher(row["code"])) for row in rows]
    await db.executemany("UPDATE scans SET code_hash = ? WHERE seq = ?",
                         [(digest, seq) for seq, _, stored_, digest in hashes if not stored_])
    await db.executemany("UPDATE scans SET code_hash = ?, code = ? WHERE seq = ?",
                         [(digest, digest.hex(), seq) for seq, _, stored_, digest in hashes
                          if stored_])
    return key


_INSERT_SCAN = ("INSERT INTO scans (scan_id, code, session_id, decision, reason, scanned_at,"
                " monotonic_ns, boot_id, direction, override_of, time_source, code_hash)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")


def _scan_row(scan: ScanRecord, digest: bytes | None) -> tuple[Any, ...]:
    return (scan.scan_id, scan.code, scan.session_id, scan.decision, scan.reason,
            scan.scanned_at, scan.monotonic_ns, scan.boot_id, scan.direction, scan.override_of,
            scan.time_source, digest)


def _parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _format_time(value: datetime | None) -> str | None:
    return value.isoformat() if value else None
