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
    """,    """
    -- The doors acting as one (issue 14). Who of the session is inside: the other
    -- doors' admissions and exits as the server shares them, and this door's own the
    -- moment it records them (the trigger scans_presence below). One row per attendee
    -- ever admitted to the session: inside = 1 inside now, 0 left through an exit.
    CREATE TABLE admissions (
        code   TEXT PRIMARY KEY,
        inside INTEGER NOT NULL CHECK (inside IN (0, 1))
    ) WITHOUT ROWID;

    -- How many admissions rows say inside, kept by triggers: the door's hot path reads
    -- one row instead of counting up to a session's worth of them.
    CREATE TABLE occupancy (
        singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
        inside    INTEGER NOT NULL DEFAULT 0
    );
    INSERT INTO occupancy (singleton) VALUES (1);
    CREATE TRIGGER admissions_inserted AFTER INSERT ON admissions WHEN new.inside
    BEGIN
        UPDATE occupancy SET inside = inside + 1;
    END;
    CREATE TRIGGER admissions_deleted AFTER DELETE ON admissions WHEN old.inside
    BEGIN
        UPDATE occupancy SET inside = inside - 1;
    END;
    CREATE TRIGGER admissions_updated AFTER UPDATE OF inside ON admissions
    WHEN new.inside <> old.inside
    BEGIN
        UPDATE occupancy SET inside = inside + new.inside - old.inside;
    END;

    -- Most people inside at once (NULL: no limit).
    ALTER TABLE session ADD COLUMN capacity INTEGER;
    -- 'out': a scan at an exit door. override_of: the rejected scan a staff override
    -- overrules.
    ALTER TABLE scans ADD COLUMN direction TEXT NOT NULL DEFAULT 'in'
        CHECK (direction IN ('in', 'out'));
    ALTER TABLE scans ADD COLUMN override_of TEXT;

    -- This door's own admissions and exits count at once, in the statement that records
    -- them (the door's one write per scan stays one statement).
    CREATE TRIGGER scans_presence AFTER INSERT ON scans
    WHEN new.decision = 'admitted' AND new.session_id IS (SELECT session_id FROM session)
    BEGIN
        INSERT INTO admissions (code, inside) VALUES (new.code, new.direction = 'in')
        ON CONFLICT (code) DO UPDATE SET inside = excluded.inside;
    END;

    -- The admissions this door made before it knew of admissions rows.
    INSERT INTO admissions (code, inside)
    SELECT DISTINCT code, 1 FROM scans
    WHERE decision = 'admitted' AND session_id = (SELECT session_id FROM session);

    -- The other doors' admissions made before this upgrade are behind this door's cursor:
    -- the server sends admissions after it only. Forgetting the epoch brings one snapshot,
    -- which carries them all.
    UPDATE sync_state SET epoch = NULL;
    """,
    """
    -- The server the sync daemon is connected to, or tried last (issue 16: [server] url
    -- may list several): checkin status and the doctor name it.
    ALTER TABLE sync_state ADD COLUMN server_url TEXT;
    """,
    """
    -- Where each scan's time came from (issue 17): 'system' the synchronised system clock,
    -- 'server' the server's time carried forward on the monotonic clock from the last
    -- exchange with the server in this boot, 'unknown' neither (a Pi booted offline).
    ALTER TABLE scans ADD COLUMN time_source TEXT NOT NULL DEFAULT 'system'
        CHECK (time_source IN ('system', 'server', 'unknown'));

    -- The clock anchor the sync daemon takes at each welcome (and each scan answer that
    -- carries the server's time): the server's time at a moment of this device's
    -- monotonic clock in one boot. The door carries it forward when its clock is not
    -- synchronised.
    ALTER TABLE sync_state ADD COLUMN anchor_server_time TEXT;
    ALTER TABLE sync_state ADD COLUMN anchor_monotonic_ns INTEGER;
    ALTER TABLE sync_state ADD COLUMN anchor_boot_id TEXT;
    -- This device's wall clock minus the server's at the last welcome, in seconds.
    ALTER TABLE sync_state ADD COLUMN clock_offset_s REAL;
    -- When the server closed the link saying this device is revoked (close 4004); NULL
    -- once a welcome came again.
    ALTER TABLE sync_state ADD COLUMN revoked_at TEXT;
    """,
    """
    -- Keyed hashes instead of codes (issue 17): a card read elsewhere gives no badge that
    -- opens a door. The cache keeps HMAC-SHA256(code key, code), its first 16 bytes, of
    -- every code; the key is the server's per-event key (sync_state.code_key). The cached
    -- codes are forgotten with the epoch (and the session: until a snapshot refills the
    -- cache, hashed, the door answers not_ready); the scans keep their codes until the
    -- server has them (then code holds the hash's hex, the sync daemon sees to it).
    -- Deleted content is overwritten with zeros, not left in free pages (every store
    -- connection says so too: sync.device_store.SECURE_DELETE).
    PRAGMA secure_delete = ON;
    DROP TRIGGER scans_presence;
    DROP TABLE admissions;  -- with its triggers, made again below
    DROP TABLE attendees;
    DROP TABLE registrants;
    DELETE FROM session;
    UPDATE occupancy SET inside = 0;

    CREATE TABLE attendees (
        hash BLOB PRIMARY KEY
    ) WITHOUT ROWID;
    CREATE TABLE registrants (
        session_id TEXT NOT NULL,
        hash       BLOB NOT NULL,
        PRIMARY KEY (session_id, hash)
    ) WITHOUT ROWID;
    CREATE TABLE admissions (
        hash   BLOB PRIMARY KEY,
        inside INTEGER NOT NULL CHECK (inside IN (0, 1))
    ) WITHOUT ROWID;
    CREATE TRIGGER admissions_inserted AFTER INSERT ON admissions WHEN new.inside
    BEGIN
        UPDATE occupancy SET inside = inside + 1;
    END;
    CREATE TRIGGER admissions_deleted AFTER DELETE ON admissions WHEN old.inside
    BEGIN
        UPDATE occupancy SET inside = inside - 1;
    END;
    CREATE TRIGGER admissions_updated AFTER UPDATE OF inside ON admissions
    WHEN new.inside <> old.inside
    BEGIN
        UPDATE occupancy SET inside = inside + new.inside - old.inside;
    END;

    -- The scan's code hashed with the key held when it was recorded (NULL: no key then;
    -- x'': a key held since cannot tell, its code already replaced by an older hash).
    ALTER TABLE scans ADD COLUMN code_hash BLOB;
    DROP INDEX scans_admitted;
    CREATE INDEX scans_admitted ON scans (session_id, code_hash) WHERE decision = 'admitted';
    CREATE TRIGGER scans_presence AFTER INSERT ON scans
    WHEN new.decision = 'admitted' AND new.session_id IS (SELECT session_id FROM session)
        AND length(new.code_hash) > 0
    BEGIN
        INSERT INTO admissions (hash, inside) VALUES (new.code_hash, new.direction = 'in')
        ON CONFLICT (hash) DO UPDATE SET inside = excluded.inside;
    END;

    -- The server's code key (32 bytes) and its id (first 16 hex digits of its SHA-256,
    -- sent in the hello); NULL before the first snapshot and after a revocation.
    ALTER TABLE sync_state ADD COLUMN code_key BLOB;
    ALTER TABLE sync_state ADD COLUMN key_id TEXT;
    UPDATE sync_state SET epoch = NULL, cursor = 0;
    """,
)
