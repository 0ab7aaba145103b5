"""The device store's schema: one SQLite file shared by the door and the sync daemon.

Versioned with ``PRAGMA user_version``; :data:`MIGRATIONS` holds one script per
version, applied in order inside one ``BEGIN IMMEDIATE`` transaction so that two
processes starting together cannot both migrate.

Personal data stays off the device: codes and what the decision needs, no names
or emails.
"""

from __future__ import annotations

from core.codes import MAX_RECORDED_CODE

#: ``MIGRATIONS[i]`` takes the schema from version ``i`` to ``i + 1``.
MIGRATIONS: tuple[str, ...] = (
    """
    -- The session this device is assigned to. Present only once a full registrant
    -- list for it has been synced: until then the door answers not_ready.
    CREATE TABLE session (
        singleton            INTEGER PRIMARY KEY CHECK (singleton = 1),
        session_id           TEXT NOT NULL,
        name                 TEXT NOT NULL DEFAULT '',
        validate_registrants INTEGER NOT NULL CHECK (validate_registrants IN (0, 1)),
        starts_at            TEXT,
        ends_at              TEXT
    );

    -- Every attendee code of the event (needed when Validate Registrants is off).
    CREATE TABLE attendees (
        code TEXT PRIMARY KEY
    ) WITHOUT ROWID;

    -- The registrants of the device's session.
    CREATE TABLE registrants (
        session_id TEXT NOT NULL,
        code       TEXT NOT NULL,
        PRIMARY KEY (session_id, code)
    ) WITHOUT ROWID;

    -- Every decision the door made: the outbox the sync daemon uploads.
    CREATE TABLE scans (
        seq          INTEGER PRIMARY KEY AUTOINCREMENT,  -- per-device sequence
        scan_id      TEXT NOT NULL UNIQUE,               -- made at scan time
        code         TEXT NOT NULL,                      -- the code, or a safe rendering of garbage
        session_id   TEXT,
        decision     TEXT NOT NULL CHECK (decision IN ('admitted', 'rejected')),
        reason       TEXT NOT NULL,
        scanned_at   TEXT NOT NULL,                      -- device wall time, ISO 8601 with offset
        monotonic_ns INTEGER NOT NULL,
        boot_id      TEXT NOT NULL,
        upload_state TEXT NOT NULL DEFAULT 'waiting'
                     CHECK (upload_state IN ('waiting', 'stored', 'quarantined')),
        upload_note  TEXT                                -- why a scan was quarantined
    );
    CREATE INDEX scans_admitted ON scans (session_id, code) WHERE decision = 'admitted';
    CREATE INDEX scans_waiting ON scans (seq) WHERE upload_state = 'waiting';

    -- What the sync daemon knows of the server (written by the daemon only).
    CREATE TABLE sync_state (
        singleton    INTEGER PRIMARY KEY CHECK (singleton = 1),
        epoch        TEXT,
        cursor       INTEGER NOT NULL DEFAULT 0,
        connected    INTEGER NOT NULL DEFAULT 0,
        last_sync_at TEXT,
        last_error   TEXT
    );
    INSERT INTO sync_state (singleton) VALUES (1);

    -- What the door process is doing (written by the door only).
    CREATE TABLE door_state (
        singleton     INTEGER PRIMARY KEY CHECK (singleton = 1),
        started_at    TEXT,
        last_frame_at TEXT,
        frames        INTEGER NOT NULL DEFAULT 0
    );
    INSERT INTO door_state (singleton) VALUES (1);
    """,
    """
    -- When the sync daemon last wrote its state: tells a live link from a stale flag
    -- left by a daemon that died.
    ALTER TABLE sync_state ADD COLUMN updated_at TEXT;
    """,
    f"""
    -- Before codes were bounded, a hostile badge's rendering could be longer than the
    -- sync protocol carries, and its scan (with every scan behind it) never left the
    -- door: cut such codes as the door now records them, so that they can be uploaded.
    UPDATE scans SET code = substr(code, 1, {MAX_RECORDED_CODE - 1}) || '…'
    WHERE length(code) > {MAX_RECORDED_CODE};
    """,
)
