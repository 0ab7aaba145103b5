"""The device store: an aiosqlite adapter over the one SQLite file on the Pi.

The door and the sync daemon each open their own :class:`Store` on the same
file (WAL mode). Every write is a short ``BEGIN IMMEDIATE`` transaction, so
each process sees the other's commits on its next query without a restart.
"""

from __future__ import annotations

import asyncio
import enum
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Self

import aiosqlite

from core.database import StoreError, WriteTransaction, connect
from core.rules import Decision, Facts, SessionRules
from sync.device_schema import MIGRATIONS

__all__ = ["FACTS_SQL", "STORE_FILE", "UPSERT_SESSION", "ScanRecord", "SessionRow", "Store",
           "StoreError", "UploadState", "write_cache"]

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


# The decision is written into the text, not bound: the partial index scans_admitted
# serves only a query whose condition matches its own literally.
FACTS_SQL = f"""
SELECT s.session_id, s.validate_registrants, s.starts_at, s.ends_at,
       EXISTS (SELECT 1 FROM attendees WHERE code = :code) AS is_attendee,
       EXISTS (SELECT 1 FROM registrants WHERE session_id = s.session_id AND code = :code)
           AS is_registrant,
       EXISTS (SELECT 1 FROM scans WHERE session_id = s.session_id AND code = :code
               AND decision = '{Decision.ADMITTED}') AS admitted_before
FROM session AS s
"""


class Store:
    """One connection to the device store. Use :meth:`open`, then :meth:`close`."""

    def __init__(self, db: aiosqlite.Connection, path: Path) -> None:
        self._db = db
        self.path = path
        self._write_lock = asyncio.Lock()

    @classmethod
    async def open(cls, data_dir: Path | str) -> Self:
        """Open (creating and migrating if needed) the store in *data_dir*."""
        path = Path(data_dir) / STORE_FILE
        return cls(await connect(path, MIGRATIONS), path)

    async def close(self) -> None:
        await self._db.close()

    def write(self) -> WriteTransaction:
        """``async with store.write():`` — one ``BEGIN IMMEDIATE`` transaction."""
        return WriteTransaction(self._db, self.path, self._write_lock)

    # -- the door's side -------------------------------------------------

    async def facts(self, code: str | None) -> Facts:
        """Everything the decision needs to know about *code*, in one query.

        With ``code=None`` (an invalid payload) only the session is looked up.
        """
        try:  # one round trip to the database thread: this is on the door's hot path
            rows = await self._db.execute_fetchall(FACTS_SQL, {"code": code or ""})
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read store {self.path}: {exc}") from exc
        if not rows:
            return Facts(session=None)
        row = next(iter(rows))
        session = SessionRules(
            session_id=row["session_id"],
            validate_registrants=bool(row["validate_registrants"]),
            starts_at=_parse_time(row["starts_at"]),
            ends_at=_parse_time(row["ends_at"]),
        )
        return Facts(session, is_attendee=bool(row["is_attendee"]),
                     is_registrant=bool(row["is_registrant"]),
                     admitted_before=bool(row["admitted_before"]))

    async def record_scan(self, scan: ScanRecord) -> int:
        """Commit *scan* durably; return its per-device sequence number.

        One statement in autocommit mode is its own transaction, committed (and
        fsynced) before it returns: one round trip to the database thread on the
        door's hot path instead of three (``BEGIN``, ``INSERT``, ``COMMIT``).
        """
        async with self._write_lock:
            try:
                row = await self._db.execute_insert(_INSERT_SCAN, _scan_row(scan))
            except sqlite3.Error as exc:
                raise StoreError(f"cannot write store {self.path}: {exc}") from exc
        return row[0]  # last_insert_rowid(): the scan's seq

    async def record_scans(self, scans: Iterable[ScanRecord]) -> None:
        """Commit several scans in one transaction (a backlog made elsewhere, for tools,
        tests and benchmarks; the door records each scan with :meth:`record_scan`)."""
        async with self.write():
            await self._db.executemany(_INSERT_SCAN, [_scan_row(scan) for scan in scans])

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
    ) -> None:
        """Replace the whole cache with a full snapshot, in one transaction."""
        async with self.write():
            await write_cache(self._db, {
                "session_id": session.session_id, "name": name,
                "validate_registrants": int(session.validate_registrants),
                "starts_at": _format_time(session.starts_at),
                "ends_at": _format_time(session.ends_at),
            }, attendees, registrants)

    async def scans(self) -> list[dict[str, Any]]:
        """Every recorded scan, oldest first (for status, tests and tools)."""
        return [dict(row) for row in
                await self._db.execute_fetchall("SELECT * FROM scans ORDER BY seq")]


#: The session row, by column: what :func:`write_cache` is given.
SessionRow = dict[str, Any]

#: Inserts or replaces the one session row from a :data:`SessionRow`.
UPSERT_SESSION = (
    "INSERT INTO session (singleton, session_id, name, validate_registrants, starts_at,"
    " ends_at) VALUES (1, :session_id, :name, :validate_registrants, :starts_at, :ends_at)"
    " ON CONFLICT (singleton) DO UPDATE SET session_id = excluded.session_id,"
    " name = excluded.name, validate_registrants = excluded.validate_registrants,"
    " starts_at = excluded.starts_at, ends_at = excluded.ends_at"
)


async def write_cache(
    db: aiosqlite.Connection,
    session: SessionRow | None,
    attendees: Iterable[str],
    registrants: Iterable[str],
) -> None:
    """Replace the cache's rows, inside the caller's write transaction.

    *session* holds the session row's columns (``session_id``, ``name``,
    ``validate_registrants``, ``starts_at``, ``ends_at``), or is ``None`` for a
    device without a session (the door then answers not_ready).
    """
    await db.execute("DELETE FROM session")
    await db.execute("DELETE FROM attendees")
    await db.execute("DELETE FROM registrants")
    await db.executemany(
        "INSERT OR IGNORE INTO attendees (code) VALUES (?)", ((c,) for c in attendees)
    )
    if session is None:
        return
    await db.execute(UPSERT_SESSION, session)
    await db.executemany(
        "INSERT OR IGNORE INTO registrants (session_id, code) VALUES (?, ?)",
        ((session["session_id"], c) for c in registrants),
    )


_INSERT_SCAN = ("INSERT INTO scans (scan_id, code, session_id, decision, reason, scanned_at,"
                " monotonic_ns, boot_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")


def _scan_row(scan: ScanRecord) -> tuple[Any, ...]:
    return (scan.scan_id, scan.code, scan.session_id, scan.decision, scan.reason,
            scan.scanned_at, scan.monotonic_ns, scan.boot_id)


def _parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _format_time(value: datetime | None) -> str | None:
    return value.isoformat() if value else None
