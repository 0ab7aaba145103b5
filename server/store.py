"""The central server's store: every query of the server, over a :class:`Database`.

The SQL is written once for both backends (``server/database.py``): SQLite, one file
in the data dir (the default), or PostgreSQL, shared by several server processes.
Writes are serialized across every process, one transaction at a time, so the change
sequence numbers they take are committed in order; reads that must be consistent (a
snapshot and its cursor, changes and theirs) run in one read transaction. A write
that takes sequence numbers notifies every server process (``listen``), once per
session it changed, when it commits: so the process a door is connected to can wake
it, whichever process made the change.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import functools
import hashlib
import hmac
import json
import logging
import secrets
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from core.clock import wall_stamp
from core.database import StoreError
from core.private_files import write_private
from core.rules import Decision, Direction, Reason
from server.audit import clock_flag, disagreement
from server.database import (
    Connection,
    Database,
    Dialect,
    Row,
    RowError,
    database_url,
    open_database,
)
from server.presence import (
    AdmissionAudit,
    Presence,
    PriorAdmission,
    audit_admissions,
    instant,
    time_in_session,
)
from server.retime import (
    Corrected,
    StoredScan,
    Timing,
    anchor_from_row,
    anchor_row,
    retime,
    retime_stored,
)
from server.schema import LINK_SECRET_FILE, MIGRATIONS_BY_KIND
from server.tokens import new_token, token_hash
from sync.messages import CODE_KEY_BYTES, Change, Scan, ScanOutcome, ScanResult, SessionInfo
from sync.server_end import ClockAnchor, ServerView, judge_scans

log = logging.getLogger("checkin.server")


class NotFound(Exception):
    """The thing asked for does not exist (HTTP 404)."""


class Conflict(Exception):
    """The change would break a rule (HTTP 409)."""


@dataclass(frozen=True, slots=True)
class Attendee:
    code: str
    name: str
    email: str | None = None


@dataclass(frozen=True, slots=True)
class Device:
    device_id: str
    session_id: str | None


class ServerStore:
    """The server's data. Use :meth:`open`, then :meth:`close`."""

    def __init__(self, database: Database, epoch: str, data_dir: Path | None) -> None:
        self.database = database
        #: Where the data is, for logs and errors (no password).
        self.url = database.url
        #: The SQLite file, for tools that read it directly; ``None`` on PostgreSQL.
        self.path: Path | None = getattr(database, "path", None)
        self.epoch = epoch
        #: This store's name in the notifications it sends (``listen`` callbacks tell
        #: their own process's news from the others' by it).
        self.origin = secrets.token_hex(8)
        self._data_dir = data_dir  # the link secret's home on SQLite
        self._link_secret: bytes | None = None  # read (or made) when a link is first needed
        #: The current write transaction's news: {session (None: every device): admissions
        #: only}. One write transaction at a time per store (Database.write), so one dict.
        self._news: dict[str | None, bool] = {}
        self._scan_queue: list[tuple[Device, list[Scan], ClockAnchor | None,
                                     asyncio.Future[list[ScanResult]]]] = []
        self._scan_writer: asyncio.Task[None] | None = None
        self._presence_versions: dict[str, int] = {}
        #: changes_since reads under way, by (session, cursor, admissions): their number
        #: (see read_mark) and their task, shared by callers woken before they started.
        self._shared_reads: dict[tuple[str | None, int, bool], _SharedRead] = {}
        self._reads_started = 0

    @classmethod
    async def open(cls, target: Path | str) -> ServerStore:
        """Open the store: *target* is a data dir (the SQLite file inside it, made if
        there is none) or a database URL (``sqlite:///path`` or ``postgresql://...``)."""
        if isinstance(target, str) and "://" in target:
            url = target
            data_dir = (Path(url.removeprefix("sqlite://")).parent
                        if url.startswith("sqlite://") else None)
        else:
            data_dir = Path(target)
            url = database_url(data_dir)
        database = await open_database(url, MIGRATIONS_BY_KIND)
        try:
            async with database.read() as db:
                epoch = await db.scalar("SELECT epoch FROM meta")
        except BaseException:
            await database.close()
            raise
        return cls(database, epoch, data_dir)

    async def close(self) -> None:
        await self.database.close()

    async def listen(self, callback: Callable[[dict[str, Any]], None]) -> None:
        """From now on, give *callback* every notification of every server process on
        this database (this one's too): ``{"seq", "session", "admissions", "origin"}``
        after a write that took sequence numbers (``session`` ``None``: news for every
        device), what :meth:`publish` sent, or ``{"resync": True}`` when some may have
        been missed."""
        await self.database.listen(callback)

    async def publish(self, event: dict[str, Any]) -> None:
        """Send *event* (a small JSON object) to every server process's :meth:`listen`
        callbacks now, with this store's ``origin``: news that is not data (a device to
        disconnect, wherever it is connected), which never waits for the writes."""
        await self.database.publish({**event, "origin": self.origin})

    async def renew_epoch(self) -> str:
        """Give the database a new epoch: every device resyncs from a snapshot.

        For a database restored from a backup: its history may differ from what
        the doors applied, and a door whose cursor happens to be below the
        restored one would otherwise never learn of the rows it lost.
        """
        async with self._write() as db:
            # The code key with it: the doors' hashed caches are replaced by the snapshot
            # anyway, and a lost door's card no longer matches the event's codes.
            self.epoch = await db.scalar(
                "UPDATE meta SET epoch = ?, code_key = ? RETURNING epoch",
                (secrets.token_hex(8), secrets.token_hex(CODE_KEY_BYTES)))
        return self.epoch

    @property
    def _dialect(self) -> Dialect:
        return self.database.dialect

    async def _analyze_after_bulk(self, db: Connection, table: str, changed: int) -> None:
        """Refresh PostgreSQL's statistics of *table* after *changed* rows changed at once
        (an import): autovacuum does it only a minute or so later, and meanwhile the
        planner, taking the session's 50,000 new registrants for a handful, reads every
        admission once per registrant (the live page took minutes). SQLite plans without
        statistics, as the store's queries are written for."""
        if changed >= _BULK_ROWS and self.database.kind == "postgresql":
            await db.execute(f"ANALYZE {table}")

    def _matching(self, query: str, prefix: str) -> tuple[str, list[str]]:
        """:func:`_matching` on this database."""
        if "\x00" in query and self.database.kind == "postgresql":
            return "(1 = 0)", []  # its text holds no NUL (it refuses one): nothing matches
        return _matching(query, prefix, self._dialect.like)

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[Connection]:
        """One write transaction; the news of the seqs it took (:meth:`_next_seqs`) is
        sent with it, one notification per session, when it commits."""
        async with self.database.write() as db:
            self._news = {}
            yield db
            if self._news:
                last = await db.scalar("SELECT seq FROM meta")  # the last this txn took
                for session_id, admissions in self._news.items():
                    db.notify({"seq": last, "session": session_id,
                               "admissions": admissions, "origin": self.origin})
                self._news = {}

    def _read(self) -> contextlib.AbstractAsyncContextManager[Connection]:
        """One read transaction: every read goes through it, so none joins another
        coroutine's transaction and sees its older snapshot."""
        return self.database.read()

    async def _next_seqs(self, db: Connection, count: int, session_id: str | None, *,
                         admissions: bool = False) -> int:
        """Reserve *count* sequence numbers for changes to *session_id* (``None``: every
        device's, e.g. attendees); return the first. *admissions*: the changes are presence
        rows, which only doors applying admissions are told."""
        last = await db.scalar("UPDATE meta SET seq = seq + ? RETURNING seq", (count,))
        self._news[session_id] = self._news.get(session_id, True) and admissions
        return last - count + 1

    # -- sessions ------------------------------------------------------------------

    async def put_session(self, session: SessionInfo) -> bool:
        """Create or update a session; say whether it was created."""
        async with self._write() as db:
            rows = await db.fetchall(
                "SELECT name, validate_registrants, starts_at, ends_at, capacity, deleted"
                " FROM sessions WHERE session_id = ?", (session.session_id,))
            new = {"name": session.name,
                   "validate_registrants": int(session.validate_registrants),
                   "starts_at": session.starts_at, "ends_at": session.ends_at,
                   "capacity": session.capacity, "deleted": 0}
            old = next(iter(rows), None)
            if old is not None and dict(old) == new:
                return False
            seq = await self._next_seqs(db, 1, session.session_id)
            await db.execute(
                "INSERT INTO sessions (session_id, name, validate_registrants, starts_at, ends_at,"
                " capacity, deleted, seq) VALUES (:session_id, :name, :validate_registrants,"
                " :starts_at, :ends_at, :capacity, 0, :seq) ON CONFLICT (session_id) DO UPDATE"
                " SET name = excluded.name, validate_registrants = excluded.validate_registrants,"
                " starts_at = excluded.starts_at, ends_at = excluded.ends_at,"
                " capacity = excluded.capacity, deleted = 0, seq = excluded.seq",
                new | {"session_id": session.session_id, "seq": seq})
            if old is not None and old["deleted"] == 1:
                await self._retell_presence(db, session.session_id)
            return old is None or old["deleted"] == 1

    async def _retell_presence(self, db: Connection, session_id: str) -> None:
        """A deleted session comes back: its doors forgot who was inside when it went (and
        hear only of rows changed since): each presence row gets a new seq, after the
        session's own."""
        codes = [r["code"] for r in await db.fetchall(
            "SELECT code FROM presence WHERE session_id = ? ORDER BY seq", (session_id,))]
        if codes:
            first = await self._next_seqs(db, len(codes), session_id, admissions=True)
            await db.executemany(
                "UPDATE presence SET seq = ? WHERE session_id = ? AND code = ?",
                [(first + i, session_id, code) for i, code in enumerate(codes)])

    async def delete_session(self, session_id: str) -> None:
        async with self._write() as db:
            await self._live_session(db, session_id)
            registrants = await _registered(db, session_id)
            if registrants:
                raise Conflict(
                    f"session {session_id!r} still has {registrants} registrant(s): remove "
                    "every registrant before deleting the session")
            seq = await self._next_seqs(db, 1, session_id)
            await db.execute("UPDATE sessions SET deleted = 1, seq = ? WHERE session_id = ?",
                             (seq, session_id))

    async def _live_session(self, db: Connection, session_id: str) -> None:
        if not await db.scalar("SELECT 1 FROM sessions WHERE session_id = ? AND deleted = 0",
                               (session_id,)):
            raise NotFound(f"no session {session_id!r}")

    async def sessions(self) -> list[dict[str, Any]]:
        async with self._read() as db:
            rows = await db.fetchall(
                "SELECT session_id, name, validate_registrants, starts_at, ends_at, capacity,"
                " (SELECT count(*) FROM registrants AS r WHERE r.session_id = s.session_id"
                "  AND r.deleted = 0) AS registrants"
                " FROM sessions AS s WHERE deleted = 0 ORDER BY session_id")
        return [dict(r) | {"validate_registrants": bool(r["validate_registrants"])}
                for r in rows]

    # -- attendees and registrants -------------------------------------------------

    async def upsert_attendees(self, attendees: list[Attendee], *,
                               keep_emails: bool = False) -> tuple[int, int]:
        """Insert new attendees and update the others; return (created, updated).
        *keep_emails*: an attendee given without an email keeps the one they have (a CSV
        file with no email, or a blank one, is not a request to erase it)."""
        latest = {a.code: a for a in attendees}  # the last of repeated codes wins
        async with self._write() as db:
            existing = set()
            codes = list(latest)
            for start in range(0, len(codes), 500):
                chunk = codes[start:start + 500]
                rows = await db.fetchall(
                    f"SELECT code FROM attendees WHERE code IN ({_marks(chunk)})", chunk)
                existing.update(r["code"] for r in rows)
            new = [a for a in latest.values() if a.code not in existing]
            first = await self._next_seqs(db, len(new), None) if new else 0
            await db.executemany(
                "INSERT INTO attendees (code, name, email, seq) VALUES (?, ?, ?, ?)",
                [(a.code, a.name, a.email, first + i) for i, a in enumerate(new)])
            # A name or email change is not the doors' business: no new seq.
            await db.executemany(
                "UPDATE attendees SET name = ?, email = COALESCE(?, email) WHERE code = ?"
                if keep_emails else "UPDATE attendees SET name = ?, email = ? WHERE code = ?",
                [(a.name, a.email, a.code) for a in latest.values() if a.code in existing])
            await self._analyze_after_bulk(db, "attendees", len(new))
        return len(new), len(latest) - len(new)

    async def put_registrant(self, session_id: str, code: str) -> bool:
        """Add *code* to the session's registrants; say whether it was new."""
        async with self._write() as db:
            await self._live_session(db, session_id)
            if not await db.scalar("SELECT 1 FROM attendees WHERE code = ?", (code,)):
                raise NotFound(f"no attendee with code {code!r}: add the attendee first "
                               "(POST /api/attendees)")
            if await _is_registrant(db, session_id, code):
                return False
            seq = await self._next_seqs(db, 1, session_id)
            await db.execute(_PUT_REGISTRANT, (session_id, code, seq))
            return True

    async def put_registrants(self, session_id: str, codes: Iterable[str]) -> int:
        """Add *codes* to the session's registrants in one transaction (a list imported at
        once); return how many were new. Every code must be an attendee's."""
        wanted = list(dict.fromkeys(codes))
        async with self._write() as db:
            await self._live_session(db, session_id)
            registered = set()
            for start in range(0, len(wanted), 500):
                chunk = wanted[start:start + 500]
                attendees = {r["code"] for r in await db.fetchall(
                    f"SELECT code FROM attendees WHERE code IN ({_marks(chunk)})", chunk)}
                if missing := [c for c in chunk if c not in attendees]:
                    raise NotFound(f"no attendee with code {missing[0]!r}: add the attendee "
                                   "first (POST /api/attendees)")
                registered.update(r["code"] for r in await db.fetchall(
                    "SELECT code FROM registrants WHERE session_id = ? AND deleted = 0"
                    f" AND code IN ({_marks(chunk)})", [session_id, *chunk]))
            new = [c for c in wanted if c not in registered]
            first = await self._next_seqs(db, len(new), session_id) if new else 0
            await db.executemany(_PUT_REGISTRANT, [(session_id, c, first + i)
                                                   for i, c in enumerate(new)])
            await self._analyze_after_bulk(db, "registrants", len(new))
        return len(new)

    async def remove_registrants(self, session_id: str, codes: list[str] | None = None) -> int:
        """Remove *codes* (``None``: every registrant) from the session's registrants in one
        transaction ("Delete All"); return how many were removed. Codes that are not
        registrants are passed over."""
        async with self._write() as db:
            await self._live_session(db, session_id)
            if codes is None:
                gone = [r["code"] for r in await db.fetchall(
                    "SELECT code FROM registrants WHERE session_id = ? AND deleted = 0",
                    (session_id,))]
            else:
                wanted, gone = list(dict.fromkeys(codes)), []
                for start in range(0, len(wanted), _CHUNK):
                    chunk = wanted[start:start + _CHUNK]
                    gone += [r["code"] for r in await db.fetchall(
                        "SELECT code FROM registrants WHERE session_id = ? AND deleted = 0"
                        f" AND code IN ({_marks(chunk)})", [session_id, *chunk])]
            if not gone:
                return 0
            first, stamp = await self._next_seqs(db, len(gone), session_id), wall_stamp()
            # Each removal gets a seq of its own: a door's cursor may stop between any two.
            await db.executemany(
                "UPDATE registrants SET deleted = 1, deleted_at = ?, seq = ?"
                " WHERE session_id = ? AND code = ?",
                [(stamp, first + i, session_id, code) for i, code in enumerate(gone)])
            await self._analyze_after_bulk(db, "registrants", len(gone))
        return len(gone)

    async def search_attendees(self, query: str = "", *, limit: int = 50,
                               offset: int = 0) -> tuple[int, list[Attendee]]:
        """(how many attendees match *query*, one page of them by name then code). The
        query matches anywhere in the code, the name or the email, ignoring ASCII case."""
        condition, params = self._matching(query, "")
        where = f"WHERE {condition}" if condition else ""
        async with self._read() as db:
            total = await db.scalar(f"SELECT count(*) FROM attendees {where}", params)
            rows = await db.fetchall(
                f"SELECT code, name, email FROM attendees {where}"
                " ORDER BY name, code LIMIT ? OFFSET ?", [*params, limit, max(offset, 0)])
        return total, [Attendee(**r) for r in rows]

    async def registrants_page(self, session_id: str, query: str = "", *, limit: int = 50,
                               offset: int = 0) -> tuple[int, list[Attendee]]:
        """(how many of the session's registrants match *query*, one page of them by name
        then code): the Registrants box, which stays fast at 50,000."""
        condition, params = self._matching(query, "a.")
        # Attendees in name order (the attendees_name index: no sort of 50,000 rows), each
        # checked against the session's registrants by primary key.
        registered = ("FROM attendees AS a WHERE EXISTS (SELECT 1 FROM registrants AS r"
                      " WHERE r.session_id = ? AND r.code = a.code AND r.deleted = 0)"
                      + (f" AND {condition}" if condition else ""))
        async with self._read() as db:
            if not await db.scalar("SELECT 1 FROM sessions WHERE session_id = ?"
                                   " AND deleted = 0", (session_id,)):
                raise NotFound(f"no session {session_id!r}")
            total = (await db.scalar(f"SELECT count(*) {registered}", [session_id, *params])
                     if condition else await _registered(db, session_id))
            rows = await db.fetchall(
                f"SELECT a.code, a.name, a.email {registered} ORDER BY a.name, a.code"
                " LIMIT ? OFFSET ?", [session_id, *params, limit, max(offset, 0)])
        return total, [Attendee(**r) for r in rows]

    async def existing_codes(self, codes: list[str]) -> set[str]:
        """Which of *codes* are attendees' codes."""
        async with self._read() as db:
            return await _codes_among(db, "SELECT code FROM attendees WHERE", [], codes)

    async def codes_by_email(self) -> dict[str, str]:
        """{email folded to lower case: attendee code} for every attendee with an email;
        an email several attendees share maps to ``""``: it cannot say which one is meant.
        (One pass over the table: emails are not indexed, and an import asks for many.)"""
        found: dict[str, str] = {}
        async with self._read() as db:
            for r in await db.fetchall(
                    "SELECT code, email FROM attendees WHERE email IS NOT NULL"):
                key = r["email"].strip().casefold()
                found[key] = "" if key in found else r["code"]
        return found

    async def registered_among(self, session_id: str, codes: list[str]) -> set[str]:
        """Which of *codes* are already the session's registrants."""
        async with self._read() as db:
            return await _codes_among(
                db, "SELECT code FROM registrants WHERE session_id = ? AND deleted = 0 AND",
                [session_id], codes)

    async def session_exists(self, session_id: str) -> bool:
        async with self._read() as db:
            return bool(await db.scalar("SELECT 1 FROM sessions WHERE session_id = ?"
                                        " AND deleted = 0", (session_id,)))

    async def session_overview(self, session_id: str | None = None) -> list[dict[str, Any]]:
        """Every live session (or only *session_id*: one session's page need not count
        every other's registrants and scans), soonest first (those without a time last),
        with how many registrants it has, how many distinct attendees were admitted (through
        an entrance), its ``capacity`` (``None``: no limit) and how many are ``inside`` now."""
        only = "" if session_id is None else " AND session_id = ?"
        async with self._read() as db:
            rows = await db.fetchall(
                "SELECT session_id, name, starts_at, ends_at, validate_registrants, capacity,"
                " (SELECT count(*) FROM registrants AS r WHERE r.session_id = s.session_id"
                "  AND r.deleted = 0) AS registered,"
                " (SELECT count(DISTINCT code) FROM scans AS c WHERE c.session_id = s.session_id"
                "  AND c.decision = ? AND c.direction = 'in') AS admitted,"
                " coalesce((SELECT inside FROM occupancy AS o"
                "  WHERE o.session_id = s.session_id), 0) AS inside"
                f" FROM sessions AS s WHERE deleted = 0{only}"
                " ORDER BY starts_at IS NULL, starts_at, name, session_id",
                [Decision.ADMITTED] + ([] if session_id is None else [session_id]))
        return [dict(r) | {"validate_registrants": bool(r["validate_registrants"])}
                for r in rows]

    # -- schedule links --------------------------------------------------------------

    async def schedule_link(self, code: str) -> str:
        """The attendee's schedule-link token, made if they have none. Only its hash is
        stored; the token is made again, whenever asked, from the link secret (a file
        beside an SQLite database, not in it; a row of its own on PostgreSQL, shared by
        every server process) and the link's nonce."""
        secret = await self._secret()
        async with self._write() as db:
            if not await db.scalar("SELECT 1 FROM attendees WHERE code = ?", (code,)):
                raise NotFound(f"no attendee with code {code!r}")
            rows = await db.fetchall(
                "SELECT nonce, token_hash FROM schedule_links WHERE code = ?", (code,))
            if rows:
                token = _link_token(secret, code, rows[0]["nonce"])
                if token_hash(token) == rows[0]["token_hash"]:
                    return token
                # The link secret is not the one the link was made with (a data dir restored
                # without it): that link cannot be made again, so it is replaced.
            nonce = secrets.token_hex(16)
            token = _link_token(secret, code, nonce)
            await db.execute(
                "INSERT INTO schedule_links (code, nonce, token_hash, created_at)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (code) DO UPDATE SET nonce = excluded.nonce,"
                " token_hash = excluded.token_hash, created_at = excluded.created_at",
                (code, nonce, token_hash(token), wall_stamp()))
            return token

    async def revoke_schedule_link(self, code: str) -> None:
        """Revoke the attendee's schedule link: its token stops working, and the next
        :meth:`schedule_link` makes a new one."""
        async with self._write() as db:
            await db.execute("DELETE FROM schedule_links WHERE code = ?", (code,))

    async def attendee_by_schedule_token(self, token: str) -> Attendee | None:
        async with self._read() as db:
            rows = await db.fetchall(
                "SELECT a.code, a.name, a.email FROM schedule_links AS l"
                " JOIN attendees AS a ON a.code = l.code WHERE l.token_hash = ?",
                (token_hash(token),))
        row = next(iter(rows), None)
        return Attendee(**row) if row else None

    async def attendee_schedule(self, code: str) -> list[dict[str, Any]]:
        """Every live session, soonest first, each with whether *code* is a registrant."""
        async with self._read() as db:
            if not await db.scalar("SELECT 1 FROM attendees WHERE code = ?", (code,)):
                raise NotFound(f"no attendee with code {code!r}")
            rows = await db.fetchall(
                "SELECT session_id, name, starts_at, ends_at, validate_registrants,"
                " EXISTS (SELECT 1 FROM registrants AS r WHERE r.session_id = s.session_id"
                "  AND r.code = ? AND r.deleted = 0) AS registered"
                " FROM sessions AS s WHERE deleted = 0"
                " ORDER BY starts_at IS NULL, starts_at, name, session_id", (code,))
        return [dict(r) | {"validate_registrants": bool(r["validate_registrants"]),
                           "registered": bool(r["registered"])} for r in rows]

    async def _secret(self) -> bytes:
        if self._link_secret is None:
            self._link_secret = (
                await self._stored_secret() if self._data_dir is None else
                await asyncio.to_thread(_read_or_make_secret, self._data_dir / LINK_SECRET_FILE))
        return self._link_secret

    async def _stored_secret(self) -> bytes:
        """The link secret in the database's ``secrets`` table (PostgreSQL: every server
        process makes the same links), made there if there is none."""
        async with self._read() as db:
            secret = _secret_from_hex(await db.scalar(
                "SELECT value FROM secrets WHERE name = ?", (LINK_SECRET_NAME,)))
        if secret is not None:
            return secret
        async with self._write() as db:  # another process may have made it meanwhile
            secret = _secret_from_hex(await db.scalar(
                "SELECT value FROM secrets WHERE name = ?", (LINK_SECRET_NAME,)))
            if secret is None:
                secret = secrets.token_bytes(32)
                await db.execute(
                    "INSERT INTO secrets (name, value) VALUES (?, ?) ON CONFLICT (name)"
                    " DO UPDATE SET value = excluded.value", (LINK_SECRET_NAME, secret.hex()))
        return secret

    async def delete_registrant(self, session_id: str, code: str) -> None:
        async with self._write() as db:
            await self._live_session(db, session_id)
            if not await _is_registrant(db, session_id, code):
                raise NotFound(f"{code!r} is not a registrant of session {session_id!r}")
            seq = await self._next_seqs(db, 1, session_id)
            await db.execute("UPDATE registrants SET deleted = 1, deleted_at = ?, seq = ?"
                             " WHERE session_id = ? AND code = ?",
                             (wall_stamp(), seq, session_id, code))

    async def prune_tombstones(self, upto_seq: int) -> int:
        """Forget registrant removals at or below *upto_seq*; devices behind it will get a
        snapshot. Return how many were forgotten."""
        async with self._write() as db:
            return await _prune(db, upto_seq)

    async def prune_tombstones_before(self, cutoff: datetime) -> int:
        """Forget registrant removals made before *cutoff* (an aware time), and any older
        by seq; devices whose cursor is behind them will get a snapshot. Return how many
        were forgotten."""
        async with self._write() as db:
            when = self._dialect.instant  # times compared as instants: any UTC offset
            upto = await db.scalar(
                "SELECT max(seq) FROM registrants WHERE deleted = 1"
                f" AND {when('deleted_at')} < {when('?')}",
                (cutoff.isoformat(timespec="milliseconds"),))
            return 0 if upto is None else await _prune(db, upto)

    # -- devices ---------------------------------------------------------------------

    async def put_device(self, device_id: str, session_id: str) -> tuple[str | None, str | None]:
        """Create or reassign a device; return (its token if created, its previous session)."""
        async with self._write() as db:
            await self._live_session(db, session_id)
            rows = await db.fetchall(
                "SELECT session_id, token_hash FROM devices WHERE device_id = ?", (device_id,))
            old = next(iter(rows), None)
            if old is not None and old["token_hash"] is not None:
                await db.execute("UPDATE devices SET session_id = ? WHERE device_id = ?",
                                 (session_id, device_id))
                return None, old["session_id"]
            token = new_token()  # new, or revoked and provisioned again
            await db.execute(
                "INSERT INTO devices (device_id, session_id, token_hash, created_at)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (device_id) DO UPDATE"
                " SET session_id = excluded.session_id,"
                " token_hash = excluded.token_hash, revoked_at = NULL",
                (device_id, session_id, token_hash(token), wall_stamp()))
            return token, old["session_id"] if old else None

    async def revoke_device(self, device_id: str) -> None:
        """Revoke the device's token. Its hash is remembered (:meth:`token_revoked`): a
        door still holding it is told it was revoked (and wipes its codes), where an
        unknown token (a typo) is only refused. Provisioning the device again
        (:meth:`put_device`) gives it a new token; the old one stays revoked."""
        stamp = wall_stamp()
        async with self._write() as db:
            old = await db.scalar("SELECT token_hash FROM devices WHERE device_id = ?"
                                  " AND token_hash IS NOT NULL", (device_id,))
            if old is None:
                raise NotFound(f"no device {device_id!r} with a valid token")
            await db.execute(
                "INSERT INTO revoked_tokens (token_hash, device_id, revoked_at) VALUES (?, ?, ?)"
                " ON CONFLICT (token_hash) DO NOTHING", (old, device_id, stamp))
            await db.execute(
                "UPDATE devices SET token_hash = NULL, revoked_at = ? WHERE device_id = ?",
                (stamp, device_id))

    async def token_revoked(self, token: str) -> bool:
        """Whether *token* was some device's and was revoked (not merely unknown)."""
        async with self._read() as db:
            return bool(await db.scalar("SELECT 1 FROM revoked_tokens WHERE token_hash = ?",
                                        (token_hash(token),)))

    async def device_by_token(self, token: str) -> Device | None:
        async with self._read() as db:
            rows = await db.fetchall(
                "SELECT device_id, session_id FROM devices WHERE token_hash = ?",
                (token_hash(token),))
        row = next(iter(rows), None)
        return Device(**row) if row else None

    async def devices(self) -> list[dict[str, Any]]:
        async with self._read() as db:
            rows = await db.fetchall(
                "SELECT device_id, session_id, created_at, revoked_at, last_seen_at, status"
                " FROM devices ORDER BY device_id")
        return [dict(r) | {"status": json.loads(r["status"]) if r["status"] else None}
                for r in rows]

    async def note_hello(self, device_id: str, allow_reentry: bool | None,
                         anchor: ClockAnchor | None = None) -> set[str | None]:
        """Keep what the device's latest hello said of its re-entry policy (``None``: it
        did not say, which the audit counts as forbidding) and its clocks: *anchor* (the
        server's time of the hello, with its monotonic time and boot) becomes the
        device's anchor for that boot, and re-times the device's stored scans of that
        boot whose time was still unknown (:func:`server.retime.retime_stored`). Return
        the sessions whose scans were re-timed (for the live pages)."""
        async with self._write() as db:
            await db.execute("UPDATE devices SET allow_reentry = ? WHERE device_id = ?",
                             (None if allow_reentry is None else int(allow_reentry),
                              device_id))
            if anchor is None:
                return set()
            await db.execute(
                "INSERT INTO clock_anchors (device_id, boot_id, monotonic_ns, server_time)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (device_id, boot_id) DO UPDATE"
                " SET monotonic_ns = excluded.monotonic_ns,"
                " server_time = excluded.server_time", (device_id, *anchor_row(anchor)))
            rows = await db.fetchall(
                # The literal, not a parameter: the planner uses the partial index
                # scans_time_unknown only when the query's condition is its own.
                "SELECT scan_id, session_id, scanned_at, monotonic_ns, boot_id FROM scans"
                " WHERE device_id = ? AND boot_id = ? AND time_corrected = 'unknown'",
                (device_id, anchor.boot_id))
            timings = retime_stored((StoredScan(r["scan_id"], r["scanned_at"],
                                                r["monotonic_ns"], r["boot_id"])
                                     for r in rows), anchor)
            await db.executemany(
                "UPDATE scans SET scanned_at = ?, device_scanned_at = ?, time_corrected = ?"
                " WHERE scan_id = ?",
                [(t.scanned_at, t.device_scanned_at, t.time_corrected, scan_id)
                 for scan_id, t in timings.items()])
        return {r["session_id"] for r in rows if r["scan_id"] in timings}

    async def note_status(self, device_id: str, status: dict[str, Any] | None) -> None:
        async with self._write() as db:
            await db.execute(
                "UPDATE devices SET last_seen_at = ?, status = COALESCE(?, status)"
                " WHERE device_id = ?",
                (wall_stamp(), json.dumps(status) if status is not None else None, device_id))

    # -- what devices sync ----------------------------------------------------------

    async def view(self, device: Device) -> ServerView:
        async with self._read() as db:
            meta = await _meta(db)
        # Read, not remembered: another server process on the database may have renewed it.
        self.epoch = meta["epoch"]
        return ServerView(device.device_id, device.session_id, self.epoch, meta["seq"],
                          meta["horizon"], meta["code_key"])

    async def snapshot(self, session_id: str | None) -> tuple[int, SessionInfo | None,
                                                               list[str], list[str]]:
        """(cursor, session, attendee codes, registrant codes), consistent with each other."""
        async with self._read() as db:
            return await _snapshot(db, session_id)

    async def snapshot_with_admissions(self, session_id: str | None) -> tuple[
            int, SessionInfo | None, list[str], list[str], list[str], list[str]]:
        """:meth:`snapshot` and, as of the same cursor, the session's presence: (...,
        codes inside now, codes admitted who left through an exit since)."""
        async with self._read() as db:
            head = await _snapshot(db, session_id)
            rows = [] if head[1] is None else await db.fetchall(
                "SELECT code, inside FROM presence WHERE session_id = ?", (session_id,))
        return (*head, [r["code"] for r in rows if r["inside"]],
                [r["code"] for r in rows if not r["inside"]])

    def read_mark(self) -> int:
        """A mark for :meth:`changes_since`'s *fresh_after*: the reads started from now on
        are after it."""
        return self._reads_started

    async def changes_since(self, session_id: str | None, since: int,
                            admissions: bool = False, *,
                            fresh_after: int | None = None) -> tuple[int, list[Change]] | None:
        """(cursor, every change after *since* that concerns the session), in seq order;
        ``None`` when deletions after *since* were pruned (the device needs a snapshot).
        *admissions*: include the session's presence rows (kind ``admission``), for a
        device that applies them (its hello said so).

        *fresh_after* (a :meth:`read_mark`): the caller may share the answer of the same
        read (same session, cursor and kind) started after that mark — it sees every
        commit made before it. After a change, the hundreds of doors of a session at the
        same cursor then cost one read, not one each (their wake-up is the mark: a commit
        after a shared read began wakes them again)."""
        key = (session_id, since, admissions)
        shared = self._shared_reads.get(key)
        if shared is None or fresh_after is None or shared.number <= fresh_after:
            self._reads_started += 1
            task = asyncio.ensure_future(self._changes_since(session_id, since, admissions))
            shared = self._shared_reads[key] = _SharedRead(self._reads_started, task)
            task.add_done_callback(functools.partial(self._read_done, key, shared))
        shared.waiting += 1
        try:
            # Shielded: a caller that goes away does not cancel the others' read...
            return await asyncio.shield(shared.task)
        except asyncio.CancelledError:
            shared.waiting -= 1
            if shared.waiting == 0 and not shared.task.done():
                # ...but the last one does, and waits for it to end its transaction: a
                # cancelled call leaves the store as it found it.
                shared.task.cancel()
                await asyncio.wait((shared.task,))
            raise

    def _read_done(self, key: tuple[str | None, int, bool], shared: _SharedRead,
                   task: asyncio.Future[Any]) -> None:
        if self._shared_reads.get(key) is shared:
            del self._shared_reads[key]
        if not task.cancelled():
            task.exception()  # retrieved: every caller may have gone away meanwhile

    async def _changes_since(self, session_id: str | None, since: int,
                             admissions: bool) -> tuple[int, list[Change]] | None:
        presence = (" UNION ALL SELECT seq, 'admission', code, inside FROM presence"
                    "  WHERE session_id = :session AND seq > :since" if admissions else "")
        async with self._read() as db:
            meta = await _meta(db)
            if since < meta["horizon"]:
                return None
            rows = await db.fetchall(
                "SELECT seq, 'attendee' AS kind, code, 0 AS deleted FROM attendees"
                "  WHERE seq > :since"
                " UNION ALL SELECT seq, 'registrant', code, deleted FROM registrants"
                "  WHERE session_id = :session AND seq > :since"
                " UNION ALL SELECT seq, 'session', session_id, deleted FROM sessions"
                "  WHERE session_id = :session AND seq > :since"
                + presence + " ORDER BY seq", {"since": since, "session": session_id})
            changes = []
            for row in rows:
                if row["kind"] == "session":  # the session's id is in the code column
                    changes.append(Change(row["seq"], row["kind"],
                                          session=await _session_info(db, row["code"])))
                elif row["kind"] == "admission":  # inside is in the deleted column
                    changes.append(Change(row["seq"], row["kind"], code=row["code"],
                                          inside=bool(row["deleted"])))
                else:
                    changes.append(Change(row["seq"], row["kind"], code=row["code"],
                                          deleted=bool(row["deleted"])))
        return meta["seq"], changes

    # -- scans ------------------------------------------------------------------------

    async def store_scans(self, device: Device, scans: list[Scan],
                          anchor: ClockAnchor | None = None) -> list[ScanResult]:
        """Store a device's scans idempotently by scan id; say what became of each.

        Batches that arrive while a write is under way are committed together in
        the next transaction (group commit): with hundreds of doors pushing, one
        fsync serves them all instead of each waiting its turn for its own.
        *anchor* (the device's clocks at its hello) lets the audit flag scans made
        online by a device clock that was off (:func:`clock_flag`).
        """
        answer: asyncio.Future[list[ScanResult]] = asyncio.get_running_loop().create_future()
        self._scan_queue.append((device, scans, anchor, answer))
        if self._scan_writer is None or self._scan_writer.done():
            self._scan_writer = asyncio.create_task(self._write_scan_queue())
        return await answer

    async def _write_scan_queue(self) -> None:
        while self._scan_queue:
            group, self._scan_queue = self._scan_queue, []
            try:
                async with self._write() as db:
                    answers = [await self._insert_batch(db, device, scans, anchor)
                               for device, scans, anchor, _ in group]
            except Exception as exc:  # the commit failed: every batch of the group with it
                for *_, future in group:
                    if not future.done():
                        future.set_exception(exc)
                continue
            except BaseException:  # cancelled (the server stops): nobody may wait forever
                for *_, future in group + self._scan_queue:
                    if not future.done():
                        future.set_exception(StoreError(f"store {self.url} is closing"))
                self._scan_queue = []
                raise
            for (*_, future), results in zip(group, answers, strict=True):
                if not future.done():  # its link may have gone away meanwhile
                    future.set_result(results)

    async def _insert_batch(self, db: Connection, device: Device,
                            scans: list[Scan], anchor: ClockAnchor | None) -> list[ScanResult]:
        """One device's batch inside the group's transaction, in a savepoint of its own:
        a batch that fails is undone alone (then stored scan by scan, refusing only the
        scans that fail), never failing another device's batch in the same commit."""
        try:
            async with db.savepoint():
                return await self._insert_scans(db, device, scans, anchor)
        except _ROW_ERRORS:
            pass
        results = []
        for scan in scans:
            try:
                async with db.savepoint():
                    results += await self._insert_scans(db, device, [scan], anchor)
            except _ROW_ERRORS as exc:
                log.error("device %s: scan %s cannot be stored: %s", device.device_id,
                          scan.scan_id, exc)
                results.append(ScanResult.refused(
                    scan.scan_id, f"the server cannot store this scan: {exc}"))
        return results

    async def _insert_scans(self, db: Connection, device: Device,
                            scans: list[Scan], anchor: ClockAnchor | None) -> list[ScanResult]:
        ids = [s.scan_id for s in scans]
        received = wall_stamp()
        owners = {r["scan_id"]: r["device_id"] for r in await db.fetchall(
            f"SELECT scan_id, device_id FROM scans WHERE scan_id IN ({_marks(ids)})", ids)}
        results = judge_scans(scans, device.device_id, device.session_id, owners)
        accepted = [s for s, r in zip(scans, results, strict=True)
                    if r.result == ScanOutcome.ACCEPTED]
        # Scans whose door did not know the time are re-timed before anything reads
        # their time (the audit, presence): scanned_at is the server's reckoning.
        timings = await self._timings(db, device.device_id, accepted, anchor)
        accepted = [s if timings[s.scan_id].time_corrected is None
                    else dataclasses.replace(s, scanned_at=timings[s.scan_id].scanned_at)
                    for s in accepted]
        flags = await self._disagreements(db, accepted)
        audit = await self._audit_admissions(db, device, accepted)
        await db.executemany(
            "INSERT INTO scans (scan_id, device_id, device_seq, session_id, code, decision,"
            " reason, scanned_at, monotonic_ns, boot_id, received_at, disagreement, clock_flag,"
            " direction, override_of, double_admission, over_capacity, time_source,"
            " time_corrected, device_scanned_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(s.scan_id, device.device_id, s.seq, s.session_id, s.code, s.decision, s.reason,
              s.scanned_at, s.monotonic_ns, s.boot_id, received, flag,
              # Only a door that trusted its system clock is judged on it.
              clock_flag(s, anchor) if s.source == "system" else None,
              s.direction or Direction.IN, s.override_of, audit.double.get(s.scan_id),
              audit.over_capacity.get(s.scan_id), s.source,
              timings[s.scan_id].time_corrected, timings[s.scan_id].device_scanned_at)
             for s, flag in zip(accepted, flags, strict=True)])
        await self._write_presence(db, device.session_id, audit)
        await db.execute("UPDATE devices SET last_seen_at = ? WHERE device_id = ?",
                         (received, device.device_id))
        return results

    async def _timings(self, db: Connection, device_id: str, scans: list[Scan],
                       anchor: ClockAnchor | None) -> dict[str, Timing]:
        """How each of *scans* is stored (:func:`server.retime.retime`), from the latest
        anchor of its boot: the connection's own *anchor* (its hello's), else the one
        stored from an earlier hello."""
        boots = sorted({s.boot_id for s in scans if s.time_source == "unknown"}
                       - ({anchor.boot_id} if anchor else set()))
        anchors = {r["boot_id"]: anchor_from_row(r["boot_id"], r["monotonic_ns"],
                                                 r["server_time"])
                   for r in (await db.fetchall(
                       "SELECT boot_id, monotonic_ns, server_time FROM clock_anchors"
                       f" WHERE device_id = ? AND boot_id IN ({_marks(boots)})",
                       [device_id, *boots]) if boots else [])}
        if anchor is not None:
            anchors[anchor.boot_id] = anchor
        return {s.scan_id: retime(s.scanned_at, s.time_source, s.monotonic_ns, s.boot_id,
                                  anchors.get(s.boot_id)) for s in scans}

    def presence_version(self, session_id: str | None) -> int:
        """A number that changes whenever stored scans change who is inside the session
        (a presence row new or changed: news for its doors), once they are committed or
        about to be: compared before and after :meth:`store_scans`."""
        return self._presence_versions.get(session_id, 0) if session_id else 0

    async def _audit_admissions(self, db: Connection, device: Device,
                                scans: list[Scan]) -> AdmissionAudit:
        """Read what :func:`audit_admissions` needs about the batch's admitted codes (a
        few statements per batch, never per scan: a backlog of 50,000 drains as fast)."""
        session_id = device.session_id
        # Every admission (audit_admissions tells entries from exits, once per scan).
        moving = [s for s in scans if s.decision == Decision.ADMITTED and s.session_id]
        if session_id is None or not moving:
            return AdmissionAudit()
        codes = list(dict.fromkeys(s.code for s in moving))
        presence: dict[str, Presence] = {}
        prior: list[PriorAdmission] = []
        for start in range(0, len(codes), _CHUNK):
            chunk = codes[start:start + _CHUNK]
            presence.update((r["code"], Presence(bool(r["inside"]), r["at"], r["seq"]))
                            for r in await db.fetchall(
                "SELECT code, inside, at, seq FROM presence WHERE session_id = ?"
                f" AND code IN ({_marks(chunk)})", [session_id, *chunk]))
            prior += [PriorAdmission(r["scan_id"], r["device_id"], r["code"], r["scanned_at"],
                                     r["reason"], r["double_admission"] is not None,
                                     _maybe_bool(r["allow_reentry"]))
                      for r in await db.fetchall(
                "SELECT s.scan_id, s.device_id, s.code, s.scanned_at, s.reason,"
                " s.double_admission, d.allow_reentry FROM scans AS s"
                " LEFT JOIN devices AS d ON d.device_id = s.device_id"
                " WHERE s.session_id = ? AND s.decision = ? AND s.direction = 'in'"
                f" AND s.code IN ({_marks(chunk)}) AND s.device_id != ?",
                [session_id, Decision.ADMITTED, *chunk, device.device_id])]
        facts = (await db.fetchall(
            "SELECT (SELECT allow_reentry FROM devices WHERE device_id = :device) AS reentry,"
            " (SELECT capacity FROM sessions WHERE session_id = :session) AS capacity,"
            " coalesce((SELECT inside FROM occupancy WHERE session_id = :session), 0)"
            "  AS inside", {"device": device.device_id, "session": session_id}))[0]
        return audit_admissions(moving, device.device_id, _maybe_bool(facts["reentry"]),
                                presence, prior, facts["inside"], facts["capacity"])

    async def _write_presence(self, db: Connection, session_id: str | None,
                              audit: AdmissionAudit) -> None:
        """Store the batch's presence (a new seq for each row a door must hear of) and
        the flags it put on scans stored before."""
        told = [code for code, (_, _, tell) in audit.presence.items() if tell]
        if told and session_id is not None:
            self._presence_versions[session_id] = self._presence_versions.get(session_id, 0) + 1
        first = (await self._next_seqs(db, len(told), session_id, admissions=True)
                 if told else 0)
        seqs = {code: first + i for i, code in enumerate(told)}
        await db.executemany(
            "INSERT INTO presence (session_id, code, inside, at, seq) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (session_id, code) DO UPDATE SET inside = excluded.inside,"
            " at = excluded.at,"
            " seq = CASE WHEN excluded.seq < 0 THEN presence.seq ELSE excluded.seq END",
            [(session_id, code, int(inside), at, seqs.get(code, -1))  # -1: keeps its seq
             for code, (inside, at, _) in audit.presence.items()])
        if audit.presence:  # the batch's count, from the one it read in this transaction
            await db.execute(
                "INSERT INTO occupancy (session_id, inside) VALUES (?, ?)"
                " ON CONFLICT (session_id) DO UPDATE SET inside = excluded.inside",
                (session_id, audit.occupancy))
        await db.executemany(
            "UPDATE scans SET double_admission = ? WHERE scan_id = ?"
            " AND double_admission IS NULL",
            [(flag, scan_id) for scan_id, flag in audit.earlier_doubles.items()])

    async def _disagreements(self, db: Connection, scans: list[Scan]) -> list[str | None]:
        if not scans:
            return []
        codes = sorted({s.code for s in scans})
        attendees = {r["code"] for r in await db.fetchall(
            f"SELECT code FROM attendees WHERE code IN ({_marks(codes)})", codes)}
        registrants: set[tuple[str | None, str]] = set()
        # By session (a device's batch names one): the primary key finds each code, where
        # "code IN" alone read every session's registrants for every batch.
        for session_id in {s.session_id for s in scans if s.session_id is not None}:
            registrants.update((session_id, r["code"]) for r in await db.fetchall(
                "SELECT code FROM registrants WHERE session_id = ? AND deleted = 0"
                f" AND code IN ({_marks(codes)})", [session_id, *codes]))
        validate = {r["session_id"]: r["validate_registrants"] for r in await db.fetchall(
            "SELECT session_id, validate_registrants FROM sessions")}
        return [disagreement(s, bool(validate.get(s.session_id, False)), s.code in attendees,
                             (s.session_id, s.code) in registrants) for s in scans]

    async def attendance(self, session_id: str) -> dict[str, Any]:
        """A session's attendance: ``admitted`` counts distinct attendees admitted through
        an entrance (an exit is not an admission), ``inside`` the people inside now,
        ``overrides`` the staff overrides; ``over_capacity`` and ``double_admissions`` list
        the ids of the scans the audit flagged; ``time_in_session`` is each admitted
        attendee's seconds in the session (:func:`server.presence.time_in_session`)."""
        async with self._read() as db:
            rows = await db.fetchall(
                "SELECT starts_at, ends_at, coalesce((SELECT inside FROM occupancy"
                "  WHERE session_id = :session), 0) AS inside"
                " FROM sessions WHERE session_id = :session", {"session": session_id})
            session = next(iter(rows), None)
            if session is None:
                raise NotFound(f"no session {session_id!r}")
            registered = await _registered(db, session_id)
            counts = (await db.fetchall(
                "SELECT count(DISTINCT code) FILTER (WHERE decision = :admitted"
                "  AND direction = 'in') AS admitted,"
                " count(*) FILTER (WHERE decision = :rejected) AS rejected,"
                " count(*) FILTER (WHERE reason = :override) AS overrides,"
                " count(*) FILTER (WHERE time_corrected = :reconstructed) AS reconstructed,"
                " count(*) FILTER (WHERE time_corrected = :unknown) AS unknown"
                " FROM scans WHERE session_id = :session",
                {"admitted": Decision.ADMITTED, "rejected": Decision.REJECTED,
                 "override": Reason.OVERRIDE, "session": session_id,
                 "reconstructed": Corrected.RECONSTRUCTED, "unknown": Corrected.UNKNOWN}))[0]
            rows = await db.fetchall(
                "SELECT scan_id, code, device_id, decision, reason, scanned_at, received_at,"
                " disagreement, clock_flag, direction, override_of, double_admission,"
                " over_capacity, time_source, time_corrected, device_scanned_at"
                " FROM scans WHERE session_id = ?"
                " ORDER BY scanned_at, device_id, device_seq", (session_id,))
        scans = [dict(r) for r in rows]
        return {"session_id": session_id, "registered": registered,
                "admitted": counts["admitted"], "rejected": counts["rejected"],
                "inside": session["inside"], "overrides": counts["overrides"],
                "times_reconstructed": counts["reconstructed"],
                "times_unknown": counts["unknown"],
                "over_capacity": [s["scan_id"] for s in scans if s["over_capacity"]],
                "double_admissions": [s["scan_id"] for s in scans if s["double_admission"]],
                "time_in_session": _times_in_session(scans, session["starts_at"],
                                                     session["ends_at"]),
                "scans": scans}

    # -- the organizers' live pages ---------------------------------------------------

    async def attendance_live(self, session_id: str) -> dict[str, Any]:
        """A session's live numbers (the attendance page and the event overview).

        ``admitted`` counts distinct attendees, ``reentries`` every admission after an
        attendee's first, ``not_arrived`` the current registrants never admitted;
        ``arrivals_per_minute`` is ``[[minute in UTC, attendees first admitted in it], ...]``
        by the doors' clocks; ``flagged`` counts the scans the audit flagged (the server
        would have decided otherwise, or the door's clock was off). Admissions are counted
        through entrances only (an exit is not an admission). ``inside`` is the people
        inside now, ``capacity`` the session's (``None``: no limit), ``overrides`` the staff
        overrides, ``over_capacity`` and ``double_admissions`` the admissions the audit
        flagged as past the capacity or as refused by another door's earlier admission.
        ``times_reconstructed`` and ``times_unknown`` count the scans whose door did not
        know the time, re-timed by the server or not yet (:mod:`server.retime`).
        """
        params = {"session": session_id, "admitted": Decision.ADMITTED,
                  "rejected": Decision.REJECTED}
        d = self._dialect
        async with self._read() as db:
            rows = await db.fetchall(
                "SELECT name, capacity, (SELECT count(*) FROM registrants"
                "  WHERE session_id = :session AND deleted = 0) AS registered,"
                " (SELECT count(*) FROM registrants AS r WHERE r.session_id = :session"
                "  AND r.deleted = 0 AND NOT EXISTS (SELECT 1 FROM scans AS c"
                "   WHERE c.session_id = :session AND c.decision = :admitted"
                "   AND c.direction = 'in' AND c.code = r.code)) AS not_arrived,"
                " coalesce((SELECT inside FROM occupancy WHERE session_id = :session), 0)"
                "  AS inside"
                " FROM sessions WHERE session_id = :session", params)
            session = next(iter(rows), None)
            if session is None:
                raise NotFound(f"no session {session_id!r}")
            # Counted from the indexes where they hold the columns: a session of 100,000
            # scans is read in a few short passes, none sorting the table's rows.
            # The last scan's time as UTC text, whose order is the times' order.
            last = d.stamp(f"max({d.instant('scanned_at')})")
            kinds = await db.fetchall(
                f"SELECT decision, direction, count(*) AS n, {last} AS last"
                " FROM scans WHERE session_id = :session GROUP BY decision, direction", params)
            reasons = await db.fetchall(
                "SELECT reason, count(*) AS n FROM scans WHERE session_id = :session"
                " AND decision = :rejected GROUP BY reason ORDER BY n DESC, reason", params)
            flags = (await db.fetchall(
                "SELECT count(*) FILTER (WHERE disagreement IS NOT NULL"
                "  OR clock_flag IS NOT NULL) AS flagged,"
                " count(*) FILTER (WHERE reason = :override) AS overrides,"
                " count(*) FILTER (WHERE over_capacity IS NOT NULL) AS over_capacity,"
                " count(*) FILTER (WHERE double_admission IS NOT NULL) AS double_admissions,"
                " count(*) FILTER (WHERE time_corrected = 'reconstructed') AS reconstructed,"
                " count(*) FILTER (WHERE time_corrected = 'unknown') AS unknown"
                f" FROM scans {d.indexed_by('scans_session')} WHERE session_id = :session",
                params | {"override": Reason.OVERRIDE}))[0]
            # Each attendee's first admission, from the index alone (session, decision,
            # direction, code, scanned_at): their count is the distinct attendees admitted.
            arrivals = await db.fetchall(
                f"SELECT {d.minute('first_at')} AS at_minute, count(*) AS n"
                f" FROM (SELECT min({d.instant('scanned_at')}) AS first_at FROM scans"
                "  WHERE session_id = :session AND decision = :admitted"
                "  AND direction = 'in' GROUP BY code) AS firsts"
                " WHERE first_at IS NOT NULL GROUP BY at_minute ORDER BY at_minute", params)
            last_scan_at = max((k["last"] for k in kinds if k["last"] is not None), default=None)
        admitted = sum(r["n"] for r in arrivals)
        admissions = sum(k["n"] for k in kinds
                         if k["decision"] == Decision.ADMITTED and k["direction"] == Direction.IN)
        rejected = {r["reason"]: r["n"] for r in reasons}
        return {"session_id": session_id, "name": session["name"],
                "registered": session["registered"], "admitted": admitted,
                "reentries": admissions - admitted, "rejected": sum(rejected.values()),
                "rejected_by_reason": rejected, "not_arrived": session["not_arrived"],
                "arrivals_per_minute": [[r["at_minute"], r["n"]] for r in arrivals],
                "scans": sum(k["n"] for k in kinds),
                "flagged": flags["flagged"], "last_scan_at": last_scan_at,
                "inside": session["inside"], "capacity": session["capacity"],
                "overrides": flags["overrides"], "over_capacity": flags["over_capacity"],
                "double_admissions": flags["double_admissions"],
                "times_reconstructed": flags["reconstructed"], "times_unknown": flags["unknown"]}

    async def not_arrived(self, session_id: str, query: str = "", *, limit: int = 50,
                          offset: int = 0) -> tuple[int, list[Attendee]]:
        """(how many of the session's registrants matching *query* were never admitted,
        one page of them by name then code)."""
        condition, params = self._matching(query, "a.")
        waiting = ("FROM attendees AS a WHERE EXISTS (SELECT 1 FROM registrants AS r"
                   " WHERE r.session_id = ? AND r.code = a.code AND r.deleted = 0)"
                   " AND NOT EXISTS (SELECT 1 FROM scans AS c WHERE c.session_id = ?"
                   " AND c.decision = ? AND c.direction = 'in' AND c.code = a.code)"
                   + (f" AND {condition}" if condition else ""))
        head = [session_id, session_id, Decision.ADMITTED, *params]
        async with self._read() as db:
            if not await db.scalar("SELECT 1 FROM sessions WHERE session_id = ?",
                                   (session_id,)):
                raise NotFound(f"no session {session_id!r}")
            total = await db.scalar(f"SELECT count(*) {waiting}", head)
            rows = await db.fetchall(
                f"SELECT a.code, a.name, a.email {waiting} ORDER BY a.name, a.code"
                " LIMIT ? OFFSET ?", [*head, limit, max(offset, 0)])
        return total, [Attendee(**r) for r in rows]

    async def door_overview(self) -> list[dict[str, Any]]:
        """Every device, by id, with what its latest status said: ``clock_offset_s`` (its
        clock minus the server's) and ``status_seconds`` are ``None`` when unknown."""
        async with self._read() as db:
            rows = await db.fetchall(
                "SELECT device_id, session_id, revoked_at IS NOT NULL AS revoked,"
                " last_seen_at, status FROM devices ORDER BY device_id")
        doors = []
        for r in rows:
            try:
                status = json.loads(r["status"]) if r["status"] else {}
            except ValueError:
                status = {}
            if not isinstance(status, dict):
                status = {}
            doors.append({
                "device_id": r["device_id"], "session_id": r["session_id"],
                "revoked": bool(r["revoked"]), "last_seen_at": r["last_seen_at"],
                **{key: status.get(key) for key in (
                    "software", "scans_waiting", "scans_quarantined", "last_frame_at",
                    "clock_offset_s", "status_seconds")}})
        return doors

    # -- exports, a page at a time ------------------------------------------------------
    #
    # Each page is its own short read transaction: a slow download never holds the one
    # read connection (nor old WAL frames) for longer than a page takes to read.

    async def attendance_export_page(self, session_id: str, after: str = "",
                                     limit: int = 500) -> list[dict[str, Any]]:
        """The next *limit* attendees (by code, after *after*) who are the session's
        registrants or were scanned for it: ``code, name, email`` (``None`` for a code
        no attendee has), ``registered``, ``first_admitted_at`` (the door's time) and
        ``door`` of their first admission by time, ``reentries``, ``rejected``,
        ``overrides`` and ``time_in_session`` (seconds), and the first admission's
    ``time_source``, ``time_corrected`` and ``device_scanned_at`` (its time re-timed by
    the server: :mod:`server.retime`). Admissions are entrances'."""
        params = {"session": session_id, "after": after, "limit": limit}
        d = self._dialect
        async with self._read() as db:
            window = await db.fetchone(
                "SELECT starts_at, ends_at FROM sessions WHERE session_id = :session", params)
            codes = [r["code"] for r in await db.fetchall(
                "SELECT code FROM registrants WHERE session_id = :session AND deleted = 0"
                " AND code > :after UNION SELECT code FROM scans"
                " WHERE session_id = :session AND code > :after"
                " ORDER BY code LIMIT :limit", params)]
            if not codes:
                return []
            marks, head = _marks(codes), [session_id, *codes]
            people = {r["code"]: r for r in await db.fetchall(
                f"SELECT code, name, email FROM attendees WHERE code IN ({marks})", codes)}
            registered = {r["code"] for r in await db.fetchall(
                "SELECT code FROM registrants WHERE session_id = ? AND deleted = 0"
                f" AND code IN ({marks})", head)}
            # "direction IN": the index (session, decision, direction, code) finds each code.
            # In order of storing: the first of two admissions at the same time wins.
            admissions = await db.fetchall(
                "SELECT code, decision, direction, reason, scanned_at, device_id, time_source,"
                " time_corrected, device_scanned_at FROM scans"
                " WHERE session_id = ? AND decision = ? AND direction IN ('in', 'out')"
                f" AND code IN ({marks}) ORDER BY {d.position}",
                [session_id, Decision.ADMITTED, *codes])
            admitted = _first_admissions(admissions)
            moves = _moves(admissions)
            # An open stay of a session without an end counts to its last scan: read (the
            # whole session's index) only when this page may need it.
            latest = d.stamp(f"max({d.instant('scanned_at')})")
            last = None if window is None or window["ends_at"] or not moves else await db.scalar(
                f"SELECT {latest} FROM scans WHERE session_id = ?", (session_id,))
            rejected = {r["code"]: r["n"] for r in await db.fetchall(
                "SELECT code, count(*) AS n FROM scans WHERE session_id = ? AND decision = ?"
                f" AND direction IN ('in', 'out') AND code IN ({marks}) GROUP BY code",
                [session_id, Decision.REJECTED, *codes])}
        rows, now = [], wall_stamp()
        for code in codes:
            person, first = people.get(code), admitted.get(code)
            rows.append({"code": code, "name": person["name"] if person else None,
                         "email": person["email"] if person else None,
                         "registered": code in registered,
                         "first_admitted_at": first["scanned_at"] if first else None,
                         "door": first["device_id"] if first else None,
                         "reentries": first["n"] - 1 if first else 0,
                         "rejected": rejected.get(code, 0),
                         "overrides": first["overrides"] if first else 0,
                         "time_in_session": time_in_session(
                             moves[code], window["starts_at"], window["ends_at"], last, now)
                         if first and window and code in moves else 0,
                         **{key: first[key] if first else None for key in _TIMING_KEYS}})
        return rows

    async def scans_export_page(self, session_id: str | None = None, after: int = 0,
                                limit: int = 1000) -> tuple[int, list[dict[str, Any]]]:
        """(the position to go on from, the next *limit* scans after position *after*) in
        the order the server stored them, of every session or of *session_id*. Each scan
        says whether it was ``uploaded_late`` (received more than
        :data:`LATE_UPLOAD_SECONDS` after the door made it, by the two clocks)."""
        d = self._dialect
        late = d.seconds_between(d.instant("received_at"), d.instant("scanned_at"))
        only = "" if session_id is None else " AND session_id = :session"
        async with self._read() as db:
            rows = await db.fetchall(
                f"SELECT {d.position} AS position, scan_id, device_id, session_id, code,"
                " decision, reason, scanned_at, received_at, disagreement, clock_flag,"
                " direction, override_of, double_admission, over_capacity,"
                f" {late} > :late AS uploaded_late, time_source, time_corrected,"
                " device_scanned_at"
                f" FROM scans WHERE {d.position} > :after{only}"
                f" ORDER BY {d.position} LIMIT :limit",
                {"after": after, "session": session_id, "limit": limit,
                 "late": LATE_UPLOAD_SECONDS})
        return (rows[-1]["position"] if rows else after,
                [dict(r) | {"uploaded_late": bool(r["uploaded_late"])} for r in rows])


@dataclasses.dataclass(slots=True)
class _SharedRead:
    """A :meth:`ServerStore.changes_since` read under way: its number (see ``read_mark``),
    its task and how many callers wait for it."""

    number: int
    task: asyncio.Future[tuple[int, list[Change]] | None]
    waiting: int = 0


#: A scan received more than this many seconds after the door made it was uploaded late
#: (the door was offline, or its clock is off).
LATE_UPLOAD_SECONDS = 60.0


async def _session_info(db: Connection, session_id: str | None) -> SessionInfo | None:
    if session_id is None:
        return None
    rows = await db.fetchall(
        "SELECT session_id, name, validate_registrants, starts_at, ends_at, capacity"
        " FROM sessions WHERE session_id = ? AND deleted = 0", (session_id,))
    row = next(iter(rows), None)
    if row is None:
        return None
    return SessionInfo(**dict(row) | {"validate_registrants": bool(row["validate_registrants"])})


async def _snapshot(db: Connection, session_id: str | None) -> tuple[
        int, SessionInfo | None, list[str], list[str]]:
    cursor = await db.scalar("SELECT seq FROM meta")
    session = await _session_info(db, session_id)
    attendees = [r["code"] for r in await db.fetchall("SELECT code FROM attendees")]
    registrants = [] if session is None else [r["code"] for r in await db.fetchall(
        "SELECT code FROM registrants WHERE session_id = ? AND deleted = 0", (session_id,))]
    return cursor, session, attendees, registrants


async def _prune(db: Connection, upto_seq: int) -> int:
    pruned = await db.execute(
        "DELETE FROM registrants WHERE deleted = 1 AND seq <= ?", (upto_seq,))
    await db.execute("UPDATE meta SET horizon = CASE WHEN horizon < :upto THEN :upto"
                     " ELSE horizon END", {"upto": upto_seq})
    return pruned


async def _meta(db: Connection) -> Row:
    """The last seq given out, the horizon (tombstones at or below it were pruned), the
    epoch and the code key (hex)."""
    return (await db.fetchall("SELECT seq, horizon, epoch, code_key FROM meta"))[0]


async def _registered(db: Connection, session_id: str) -> int:
    """How many current (not deleted) registrants the session has."""
    return await db.scalar("SELECT count(*) FROM registrants WHERE session_id = ?"
                           " AND deleted = 0", (session_id,))


async def _is_registrant(db: Connection, session_id: str, code: str) -> bool:
    return bool(await db.scalar("SELECT 1 FROM registrants WHERE session_id = ? AND code = ?"
                                " AND deleted = 0", (session_id, code)))


#: Rows changed in one write from which the store refreshes PostgreSQL's statistics of
#: the table (:meth:`ServerStore._analyze_after_bulk`).
_BULK_ROWS = 1000

#: Most values in one ``IN (...)`` list (SQLite allows 32,766 parameters; smaller
#: statements keep each step short).
_CHUNK = 500


def _matching(query: str, prefix: str, like: str) -> tuple[str, list[str]]:
    """A condition matching *query* anywhere in an attendee's code, name or email
    (``%`` and ``_`` in it match themselves) with the dialect's case-insensitive *like*,
    and its parameters; ``""`` for no query."""
    query = query.strip()
    if not query:
        return "", []
    pattern = "%" + query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    clause = " OR ".join(f"{prefix}{column} {like} ? ESCAPE '\\'"
                         for column in ("code", "name", "email"))
    return f"({clause})", [pattern] * 3


def _link_token(secret: bytes, code: str, nonce: str) -> str:
    digest = hmac.new(secret, f"{code}\0{nonce}".encode("utf-8", "surrogatepass"),
                      hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _secret_from_hex(text: str | None) -> bytes | None:
    """A link secret kept as hex text, or ``None`` when there is none (or too short)."""
    try:
        secret = bytes.fromhex(text or "")
    except ValueError:
        return None
    return secret if len(secret) >= 32 else None


def _read_or_make_secret(path: Path) -> bytes:
    """The link secret in *path*, made (readable by its owner only) if there is none."""
    try:
        secret = bytes.fromhex(path.read_text(encoding="ascii").strip())
    except (FileNotFoundError, ValueError):
        secret = b""
    if len(secret) < 32:
        secret = secrets.token_bytes(32)
        write_private(path, secret.hex() + "\n")
    return secret


#: A registrant added (or a removed one back), with its seq.
_PUT_REGISTRANT = (
    "INSERT INTO registrants (session_id, code, deleted, seq) VALUES (?, ?, 0, ?)"
    " ON CONFLICT (session_id, code) DO UPDATE SET deleted = 0, deleted_at = NULL,"
    " seq = excluded.seq")

#: The ``secrets`` row holding the link secret (PostgreSQL).
LINK_SECRET_NAME = "link"

#: What one row can make the database refuse inside a savepoint (RowError: a value it
#: cannot store, such as a NUL in text on PostgreSQL or an integer past 64 bits), and
#: what Python raises binding a value (text it cannot encode).
_ROW_ERRORS = (RowError, UnicodeError, ValueError, OverflowError)


async def _codes_among(db: Connection, select: str, params: list[Any],
                       codes: Iterable[str]) -> set[str]:
    """The codes among *codes* that ``select ... code IN (...)`` finds, asked in chunks
    (a statement's parameters are capped: 32,766 on SQLite, 65,535 on PostgreSQL)."""
    found: set[str] = set()
    wanted = list(dict.fromkeys(codes))
    for start in range(0, len(wanted), _CHUNK):
        chunk = wanted[start:start + _CHUNK]
        found.update(r["code"] for r in await db.fetchall(
            f"{select} code IN ({_marks(chunk)})", [*params, *chunk]))
    return found


def _first_admissions(scans: Iterable[Row]) -> dict[str, dict[str, Any]]:
    """{code: its first admission through an entrance by door time (``scanned_at``,
    ``device_id``), with ``n`` its admissions and ``overrides`` those of them that were
    staff overrides}, from scan rows (in storing order: the first of equal times wins)."""
    firsts: dict[str, dict[str, Any]] = {}
    for s in scans:
        if s["decision"] != Decision.ADMITTED or s["direction"] != Direction.IN:
            continue
        at, override = instant(s["scanned_at"]), int(s["reason"] == Reason.OVERRIDE)
        first = firsts.get(s["code"])
        timing = {key: s[key] for key in _TIMING_KEYS}
        if first is None:
            firsts[s["code"]] = {"scanned_at": s["scanned_at"], "device_id": s["device_id"],
                                 "instant": at, "n": 1, "overrides": override, **timing}
            continue
        first["n"] += 1
        first["overrides"] += override
        if at < first["instant"]:
            first.update(scanned_at=s["scanned_at"], device_id=s["device_id"], instant=at,
                         **timing)
    return firsts


#: What a scan row says of its time besides ``scanned_at`` (:mod:`server.retime`).
_TIMING_KEYS = ("time_source", "time_corrected", "device_scanned_at")


def _moves(scans: Iterable[dict[str, Any]]) -> dict[str, list[tuple[str, bool]]]:
    """Each code's entries (True) and exits (False) by door time, from scan rows."""
    moves: dict[str, list[tuple[str, bool]]] = {}
    for s in scans:
        if s["decision"] != Decision.ADMITTED:
            continue
        if s["direction"] == Direction.IN:
            moves.setdefault(s["code"], []).append((s["scanned_at"], True))
        elif s["reason"] == Reason.REGISTERED:
            moves.setdefault(s["code"], []).append((s["scanned_at"], False))
    return moves


def _times_in_session(scans: list[dict[str, Any]], starts_at: str | None,
                      ends_at: str | None) -> dict[str, int]:
    """{code: seconds in the session} for every code with an entry among *scans* (all of
    the session's: the last of them bounds a stay still open when the session has no end)."""
    last = max(scans, key=lambda s: instant(s["scanned_at"]))["scanned_at"] if scans else None
    now = wall_stamp()
    return {code: time_in_session(moves, starts_at, ends_at, last, now)
            for code, moves in _moves(scans).items() if any(entry for _, entry in moves)}


def _maybe_bool(value: Any) -> bool | None:
    return None if value is None else bool(value)


def _marks(values: Iterable[Any]) -> str:
    return ",".join("?" for _ in values)

