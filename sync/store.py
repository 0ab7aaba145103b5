"""The sync daemon's side of the device store (the same file the door uses).

:class:`SyncStore` adds to :class:`sync.device_store.Store` what the daemon does:
apply a snapshot or changes together with the cursor they bring, in one
transaction; read the scans waiting to upload; record the server's answer per
scan; and keep the daemon's state for ``checkin status``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from core.clock import wall_stamp
from core.rules import Direction
from core.timesource import ClockAnchor
from sync.device_end import ApplyChanges, ApplySnapshot, CacheState
from sync.device_store import (
    REAPPLY_OWN,
    UPSERT_SESSION,
    CodeHasher,
    SessionRow,
    Store,
    UploadState,
    hash_cache,
    store_key,
    write_cache,
)
from sync.messages import Change, Scan, ScanResult, SessionInfo

# An entrance's direction goes on the wire as nothing (older servers read the scan).
_SCAN_COLUMNS = ("scan_id, seq, code, session_id, decision, reason, scanned_at, monotonic_ns,"
                 f" boot_id, nullif(direction, '{Direction.IN}') AS direction, override_of,"
                 " nullif(time_source, 'system') AS time_source")


@dataclass(frozen=True, slots=True)
class DeviceStatus:
    """Everything ``checkin status`` shows, read in one go."""

    session_id: str | None
    session_name: str | None
    validate_registrants: bool | None
    attendees: int
    registrants: int
    epoch: str | None
    cursor: int
    connected: bool
    last_sync_at: str | None
    last_error: str | None
    updated_at: str | None
    scans_waiting: int
    scans_quarantined: int
    scans_stored: int
    last_frame_at: str | None
    door_started_at: str | None
    #: People the door counts inside its session now (the server's word and its own).
    inside: int = 0
    #: The session's capacity; ``None``: no limit (or no session).
    capacity: int | None = None
    #: The server the sync daemon is connected to (``connected``), else the one it tried
    #: last; ``None`` before its first attempt.
    server_url: str | None = None
    #: The last clock anchor (see :attr:`clock_anchor`), column by column.
    anchor_server_time: str | None = None
    anchor_monotonic_ns: int | None = None
    anchor_boot_id: str | None = None
    #: This device's wall clock minus the server's at the last welcome, in seconds
    #: (positive: ahead); ``None`` before the first welcome.
    clock_offset_s: float | None = None
    #: When the server said this device is revoked (close 4004; its cache was wiped,
    #: its scans kept for recovery); ``None`` when it is not (or was welcomed since).
    revoked_at: str | None = None

    @property
    def clock_anchor(self) -> ClockAnchor | None:
        """The server's time at a moment of this device's monotonic clock, as the sync
        daemon recorded it last (``None``: never)."""
        if self.anchor_server_time is None:
            return None
        return ClockAnchor(datetime.fromisoformat(self.anchor_server_time),
                           self.anchor_monotonic_ns or 0, self.anchor_boot_id or "")


class SyncStore(Store):
    """The device store as the sync daemon uses it."""

    async def cache_state(self) -> CacheState:
        rows = await self._db.execute_fetchall(
            "SELECT (SELECT session_id FROM session) AS session_id, epoch, cursor, key_id"
            " FROM sync_state")
        return CacheState(**next(iter(rows)))

    async def apply_snapshot(self, snapshot: ApplySnapshot) -> None:
        """Replace the cache (hashed with the snapshot's code key, or the key held) and
        store the snapshot's epoch and cursor, atomically. The codes are hashed before the
        transaction: the door's commits wait for the inserts alone."""
        cache = await asyncio.to_thread(
            hash_cache, await self.key_to_hash_with(snapshot.code_key), snapshot.attendees,
            snapshot.registrants, snapshot.admissions, snapshot.exits)
        async with self.write():
            await store_key(self._db, cache.key)
            await write_cache(self._db, cache, _session_row(snapshot.session))
            await self._set_cursor(snapshot.cursor, snapshot.epoch)

    async def apply_changes(self, changes: ApplyChanges) -> None:
        """Apply changes in seq order (hashed with the key held) and store the new cursor,
        atomically."""
        db = self._db
        async with self.write():
            hasher = CodeHasher(await store_key(db, None))
            for change in session_first(changes.changes):
                digest = hasher(change.code) if change.code is not None else None
                if change.kind == "session":
                    await _apply_session(db, change.session)
                elif change.kind == "admission":
                    await _apply_admission(db, digest, change.inside)
                elif change.kind == "attendee" and change.deleted:
                    await db.execute("DELETE FROM attendees WHERE hash = ?", (digest,))
                elif change.kind == "attendee":
                    await db.execute("INSERT OR IGNORE INTO attendees (hash) VALUES (?)",
                                     (digest,))
                elif change.deleted:
                    await db.execute("DELETE FROM registrants WHERE hash = ?", (digest,))
                else:
                    await db.execute("INSERT OR IGNORE INTO registrants (session_id, hash)"
                                     " SELECT session_id, ? FROM session", (digest,))
            await self._set_cursor(changes.cursor)

    async def _set_cursor(self, cursor: int, epoch: str | None = None) -> None:
        await self._db.execute(
            "UPDATE sync_state SET cursor = ?1, epoch = COALESCE(?2, epoch), last_sync_at = ?3,"
            " updated_at = ?3", (cursor, epoch, wall_stamp()))

    async def waiting_scans(self, after_seq: int, limit: int) -> list[Scan]:
        """Scans not yet stored by the server with seq above *after_seq*, oldest first."""
        # The state is written into the text, not bound: the partial index scans_waiting
        # serves only a query whose condition matches its own literally.
        rows = await self._db.execute_fetchall(
            f"SELECT {_SCAN_COLUMNS} FROM scans WHERE upload_state = '{UploadState.WAITING}'"
            " AND seq > ? ORDER BY seq LIMIT ?", (after_seq, limit))
        return [Scan(**row) for row in rows]

    async def record_results(self, results: list[ScanResult]) -> None:
        """Mark stored scans stored and refused scans quarantined with the reason.

        A stored scan's code is replaced by its hash (hex): the card keeps the codes of
        scans still waiting only. (Without a hash yet, no key was held: the code is
        replaced when the first key comes, :func:`sync.device_store.store_key`.)
        """
        async with self.write():
            await self._db.executemany(
                "UPDATE scans SET upload_state = ?,"
                " code = CASE WHEN length(code_hash) > 0 THEN lower(hex(code_hash)) ELSE code END"
                " WHERE scan_id = ?",
                [(UploadState.STORED, r.scan_id) for r in results if r.stored])
            await self._db.executemany(
                "UPDATE scans SET upload_state = ?, upload_note = ? WHERE scan_id = ?",
                [(UploadState.QUARANTINED, r.reason or "refused by the server", r.scan_id)
                 for r in results if not r.stored])
            await self._db.execute("UPDATE sync_state SET last_sync_at = ?1, updated_at = ?1",
                                   (wall_stamp(),))

    async def note_link(self, *, connected: bool, error: str | None = None,
                        server_url: str | None = None) -> None:
        """Record the link's state (and why it is down) for ``checkin status``, with the
        server it is to (or was last tried: *server_url* ``None`` keeps the one noted).
        Connected (welcomed) the device is not revoked any more."""
        async with self.write():
            await self._db.execute(
                "UPDATE sync_state SET connected = ?1, last_error = ?2, updated_at = ?3,"
                " server_url = coalesce(?4, server_url),"
                " revoked_at = CASE WHEN ?1 THEN NULL ELSE revoked_at END",
                (int(connected), error, wall_stamp(), server_url))

    async def wipe_revoked(self) -> tuple[bool, int]:
        """The server revoked this device: forget every cached code (attendees,
        registrants, admissions), the key, the session and the epoch, in one transaction,
        and note when (the first time). Every scan is kept, for ``checkin recover``; the
        door answers not_ready. Return whether the device was newly revoked, and how many
        scans it keeps that the server does not have (waiting and quarantined)."""
        async with self.write():
            db = self._db
            rows = await db.execute_fetchall(
                "SELECT revoked_at IS NULL AS newly,"
                f" (SELECT count(*) FROM scans WHERE upload_state <> '{UploadState.STORED}')"
                " AS kept FROM sync_state")
            newly, kept = next(iter(rows))
            for table in ("session", "attendees", "registrants", "admissions"):
                await db.execute(f"DELETE FROM {table}")
            await db.execute(
                "UPDATE sync_state SET code_key = NULL, key_id = NULL, epoch = NULL,"
                " cursor = 0, revoked_at = coalesce(revoked_at, ?1), updated_at = ?1",
                (wall_stamp(),))
        return bool(newly), kept

    async def note_clock(self, anchor: ClockAnchor, *,
                         clock_offset_s: float | None = None) -> None:
        """Record the server's time at a moment of this device's monotonic clock (the door
        carries it forward while its clock is not synchronised) and, from a welcome, how
        far this device's wall clock is off the server's (*clock_offset_s*; ``None``
        keeps the one noted)."""
        async with self.write():
            await self._db.execute(
                "UPDATE sync_state SET anchor_server_time = ?, anchor_monotonic_ns = ?,"
                " anchor_boot_id = ?, clock_offset_s = coalesce(?, clock_offset_s)",
                (anchor.server_time.isoformat(timespec="microseconds"), anchor.monotonic_ns,
                 anchor.boot_id, clock_offset_s))

    async def status(self) -> DeviceStatus:
        rows = await self._db.execute_fetchall(_STATUS_SQL)
        return DeviceStatus(**next(iter(rows)))


_STATUS_SQL = f"""
SELECT s.session_id, s.name AS session_name, s.validate_registrants,
       (SELECT count(*) FROM attendees) AS attendees,
       (SELECT count(*) FROM registrants) AS registrants,
       y.epoch, y.cursor, y.connected, y.last_sync_at, y.last_error, y.updated_at,
       (SELECT count(*) FROM scans WHERE upload_state = '{UploadState.WAITING}')
           AS scans_waiting,
       (SELECT count(*) FROM scans WHERE upload_state = '{UploadState.QUARANTINED}')
           AS scans_quarantined,
       (SELECT count(*) FROM scans WHERE upload_state = '{UploadState.STORED}')
           AS scans_stored,
       d.last_frame_at, d.started_at AS door_started_at,
       (SELECT inside FROM occupancy) AS inside, s.capacity, y.server_url,
       y.anchor_server_time, y.anchor_monotonic_ns, y.anchor_boot_id, y.clock_offset_s,
       y.revoked_at
FROM sync_state AS y CROSS JOIN door_state AS d LEFT JOIN session AS s
"""


def session_first(changes: list[Change]) -> list[Change]:
    """*changes* in seq order, but the session's own first: the rest are of that session.

    A row comes in its latest state at its latest seq, so a session deleted, created again,
    given registrants and then renamed arrives with its registrants before it: applied in
    seq order on a door that had no session, they would have nothing to belong to. (A
    deleted session has no registrants, so none can need the old session instead.)
    """
    return sorted(changes, key=lambda change: change.kind != "session")


def _session_row(session: SessionInfo | None) -> SessionRow | None:
    if session is None:
        return None
    return {"session_id": session.session_id, "name": session.name,
            "validate_registrants": int(session.validate_registrants),
            "starts_at": session.starts_at, "ends_at": session.ends_at,
            "capacity": session.capacity}


async def _apply_session(db: Any, session: SessionInfo | None) -> None:
    if session is None:  # the session was deleted: the door has nothing to admit to
        await db.execute("DELETE FROM session")
        await db.execute("DELETE FROM registrants")
        await db.execute("DELETE FROM admissions")
        return
    rows = await db.execute_fetchall("SELECT session_id FROM session")
    await db.execute(UPSERT_SESSION, _session_row(session))
    if [r["session_id"] for r in rows] != [session.session_id]:
        # Another session: who is inside the old one says nothing about the new one.
        await db.execute("DELETE FROM admissions")
        await db.execute(REAPPLY_OWN.format(waiting=""))


async def _apply_admission(db: Any, digest: bytes | None, inside: bool) -> None:
    """Another door's admission or exit (or this door's own, back from the server), by
    its code's hash; only while the door has a session (they are that session's), as
    registrants."""
    await db.execute("INSERT INTO admissions (hash, inside) SELECT ?, ?"
                     " WHERE EXISTS (SELECT 1 FROM session)"
                     " ON CONFLICT (hash) DO UPDATE SET inside = excluded.inside",
                     (digest, int(inside)))

