"""The central server's schema: one SQLite file in the server's data dir, or PostgreSQL.

Every row a device caches carries ``seq``, the server-wide sequence number of
its last change; deletions stay as tombstones (``deleted = 1``) so a device's
cursor can always be answered with "every row whose seq is above it". Registrant
tombstones older than the server's retention are pruned; ``meta.horizon`` then
says which cursors are too old to be answered that way (those devices get a
snapshot). The epoch is made once, with the file: a server whose database was
replaced has a new epoch, and every device resyncs from a snapshot.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

#: Issue 17's tables and columns, the same on both storages (PostgreSQL's text with the
#: "C" collation and BIGINT integers, as in its version 1).
_ISSUE_17 = """
    -- Tokens revoked (a device revoked, or provisioned again): a connection with one is
    -- closed with 4004, and the door wipes its codes; an unknown token stays 4001.
    CREATE TABLE revoked_tokens (
        token_hash TEXT PRIMARY KEY,
        device_id  TEXT NOT NULL,
        revoked_at TEXT NOT NULL
    );

    -- Each device's latest clock anchor per boot: the server's time when a hello arrived,
    -- with the hello's monotonic clock (server/retime.py).
    CREATE TABLE clock_anchors (
        device_id    TEXT NOT NULL,
        boot_id      TEXT NOT NULL,
        monotonic_ns INTEGER NOT NULL,
        server_time  TEXT NOT NULL,
        PRIMARY KEY (device_id, boot_id)
    );

    -- Where the door's time came from (system, server, unknown); a scan whose time was
    -- unknown is re-timed: scanned_at corrected, the door's own kept in device_scanned_at,
    -- time_corrected 'reconstructed' (or 'unknown' until an anchor of its boot arrives).
    ALTER TABLE scans ADD COLUMN time_source TEXT NOT NULL DEFAULT 'system';
    ALTER TABLE scans ADD COLUMN time_corrected TEXT;
    ALTER TABLE scans ADD COLUMN device_scanned_at TEXT;
    CREATE INDEX scans_time_unknown ON scans (device_id, boot_id)
        WHERE time_corrected = 'unknown';
"""

#: ``MIGRATIONS[i]`` takes the schema from version ``i`` to ``i + 1``.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE meta (
        singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
        epoch     TEXT NOT NULL,
        seq       INTEGER NOT NULL DEFAULT 0,     -- last change sequence number given out
        horizon   INTEGER NOT NULL DEFAULT 0      -- tombstones at or below it were pruned
    );
    INSERT INTO meta (singleton, epoch) VALUES (1, lower(hex(randomblob(8))));

    CREATE TABLE sessions (
        session_id           TEXT PRIMARY KEY,
        name                 TEXT NOT NULL,
        validate_registrants INTEGER NOT NULL,
        starts_at            TEXT,
        ends_at              TEXT,
        deleted              INTEGER NOT NULL DEFAULT 0,
        seq                  INTEGER NOT NULL
    );

    CREATE TABLE attendees (
        code  TEXT PRIMARY KEY,
        name  TEXT NOT NULL,
        email TEXT,
        seq   INTEGER NOT NULL
    );
    CREATE INDEX attendees_seq ON attendees (seq);

    CREATE TABLE registrants (
        session_id TEXT NOT NULL,
        code       TEXT NOT NULL,
        deleted    INTEGER NOT NULL DEFAULT 0,
        seq        INTEGER NOT NULL,
        PRIMARY KEY (session_id, code)
    ) WITHOUT ROWID;
    CREATE INDEX registrants_seq ON registrants (session_id, seq);

    CREATE TABLE devices (
        device_id    TEXT PRIMARY KEY,
        session_id   TEXT,
        token_hash   TEXT UNIQUE,          -- NULL once revoked
        created_at   TEXT NOT NULL,
        revoked_at   TEXT,
        last_seen_at TEXT,
        status       TEXT                  -- the device's last status message (JSON)
    );

    -- Scans as the doors made them: the device's time and verdict, never re-decided.
    CREATE TABLE scans (
        scan_id      TEXT PRIMARY KEY,
        device_id    TEXT NOT NULL,
        device_seq   INTEGER NOT NULL,
        session_id   TEXT,
        code         TEXT NOT NULL,
        decision     TEXT NOT NULL,
        reason       TEXT NOT NULL,
        scanned_at   TEXT NOT NULL,
        monotonic_ns INTEGER NOT NULL,
        boot_id      TEXT NOT NULL,
        received_at  TEXT NOT NULL,
        disagreement TEXT                  -- what the server would have decided, if not the same
    );
    CREATE INDEX scans_session ON scans (session_id, scanned_at);
    """,
    """
    -- How far off the device's clock was when it made a scan online, if it was off.
    ALTER TABLE scans ADD COLUMN clock_flag TEXT;
    """,
    """
    -- When a registrant was removed: its tombstone is pruned once it is older than the
    -- server's retention (checkin server --keep-deleted-days). Removals made before
    -- this column existed count from the upgrade.
    ALTER TABLE registrants ADD COLUMN deleted_at TEXT;
    UPDATE registrants SET deleted_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
    WHERE deleted = 1;
    """,
    """
    -- An attendee's own schedule link (the seed's link in the confirmation email). Its
    -- token is never stored: it is made again from the server's link secret (a file in
    -- the data dir, not in this database) and the nonce; only its SHA-256 is kept, to
    -- find the attendee by a token. Deleting the row revokes the link.
    CREATE TABLE schedule_links (
        code       TEXT PRIMARY KEY,
        nonce      TEXT NOT NULL,
        token_hash TEXT NOT NULL UNIQUE,
        created_at TEXT NOT NULL
    );
    -- The directory and the Registrants box list attendees by name, a page at a time.
    CREATE INDEX attendees_name ON attendees (name, code);
    """,
    """
    -- The organizers' live pages and exports look a session's scans up by attendee: who
    -- of 50,000 registrants was never admitted, each attendee's first admission.
    CREATE INDEX scans_session_code ON scans (session_id, decision, code, scanned_at);
    """,
    """
    -- The doors of a session act as one: capacity, exits, overrides, and what the audit
    -- finds when doors decided alone while offline (server/presence.py).
    ALTER TABLE sessions ADD COLUMN capacity INTEGER;          -- NULL: no limit
    ALTER TABLE scans ADD COLUMN direction TEXT NOT NULL DEFAULT 'in';  -- 'out' at an exit
    ALTER TABLE scans ADD COLUMN override_of TEXT;             -- the rejected scan overruled
    ALTER TABLE scans ADD COLUMN double_admission TEXT;        -- another door admitted first
    ALTER TABLE scans ADD COLUMN over_capacity TEXT;           -- it took the count past it
    ALTER TABLE devices ADD COLUMN allow_reentry INTEGER;      -- from its latest hello; NULL
                                                               -- unknown (counts as forbidding)
    -- Admissions are counted by entrance only (an exit is not an admission): the column
    -- joins the index, so those counts stay index-only.
    DROP INDEX scans_session_code;
    CREATE INDEX scans_session_code ON scans
        (session_id, decision, direction, code, scanned_at);

    -- Each attendee's latest presence in a session (inside, or out through an exit), a
    -- fact shared with the session's doors in the change stream like registrants.
    CREATE TABLE presence (
        session_id TEXT NOT NULL,
        code       TEXT NOT NULL,
        inside     INTEGER NOT NULL,
        at         TEXT NOT NULL,       -- the door time of the scan it comes from
        seq        INTEGER NOT NULL,
        PRIMARY KEY (session_id, code)
    ) WITHOUT ROWID;
    CREATE INDEX presence_seq ON presence (session_id, seq);

    -- People inside per session, kept by triggers: the audit and the live pages read one
    -- row instead of counting a session's presence rows at every admission.
    CREATE TABLE occupancy (
        session_id TEXT PRIMARY KEY,
        inside     INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TRIGGER presence_added AFTER INSERT ON presence BEGIN
        INSERT INTO occupancy (session_id, inside) VALUES (NEW.session_id, NEW.inside)
        ON CONFLICT (session_id) DO UPDATE SET inside = inside + NEW.inside;
    END;
    CREATE TRIGGER presence_changed AFTER UPDATE OF inside ON presence
    WHEN OLD.inside != NEW.inside BEGIN
        UPDATE occupancy SET inside = inside + NEW.inside - OLD.inside
        WHERE session_id = NEW.session_id;
    END;
    CREATE TRIGGER presence_removed AFTER DELETE ON presence BEGIN
        UPDATE occupancy SET inside = inside - OLD.inside WHERE session_id = OLD.session_id;
    END;

    -- Admissions stored before: everyone admitted is inside (there were no exits), each
    -- row with a seq of its own.
    INSERT INTO presence (session_id, code, inside, at, seq)
    SELECT session_id, code, 1, scanned_at,
           (SELECT seq FROM meta) + row_number() OVER (ORDER BY session_id, code)
    FROM (SELECT session_id, code, scanned_at, max(julianday(scanned_at))
          FROM scans WHERE decision = 'admitted' AND session_id IS NOT NULL
          GROUP BY session_id, code);
    UPDATE meta SET seq = seq + (SELECT count(*) FROM presence);
    """,
    """
    -- The occupancy counter is written once per batch by the one writer of presence
    -- (ServerStore._write_presence, from the count it read in the same transaction): a
    -- trigger per presence row cost a statement per admission, and a drained backlog
    -- of 50,000 paid it 50,000 times.
    DROP TRIGGER presence_added;
    DROP TRIGGER presence_changed;
    DROP TRIGGER presence_removed;
    """,
    """
    -- Issue 17. The event's code key (32 random bytes, hex): doors keep HMAC-SHA256(key,
    -- code) instead of codes; made with the epoch and renewed with it (--new-epoch).
    ALTER TABLE meta ADD COLUMN code_key TEXT;
    UPDATE meta SET code_key = lower(hex(randomblob(32)));
    """ + _ISSUE_17,
)

def _postgres_v1() -> str:
    """The schema SQLite reaches at its last version (same tables, columns and names),
    for PostgreSQL, with a new epoch; and the secrets every server process shares."""
    return _POSTGRES_V1.replace("{epoch}", secrets.token_hex(8))


# Text compares and sorts byte by byte ("C"), as SQLite's BINARY does, whatever the
# database's own locale: pages keyed on (name, code) list the same order on both.
_POSTGRES_V1 = """
CREATE TABLE meta (
    singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
    epoch     TEXT NOT NULL,
    seq       BIGINT NOT NULL DEFAULT 0,
    horizon   BIGINT NOT NULL DEFAULT 0
);
INSERT INTO meta (singleton, epoch) VALUES (1, '{epoch}');

CREATE TABLE sessions (
    session_id           TEXT COLLATE "C" PRIMARY KEY,
    name                 TEXT COLLATE "C" NOT NULL,
    validate_registrants INTEGER NOT NULL,
    starts_at            TEXT COLLATE "C",
    ends_at              TEXT COLLATE "C",
    deleted              INTEGER NOT NULL DEFAULT 0,
    seq                  BIGINT NOT NULL,
    capacity             BIGINT
);

CREATE TABLE attendees (
    code  TEXT COLLATE "C" PRIMARY KEY,
    name  TEXT COLLATE "C" NOT NULL,
    email TEXT COLLATE "C",
    seq   BIGINT NOT NULL
);
CREATE INDEX attendees_seq ON attendees (seq);
CREATE INDEX attendees_name ON attendees (name, code);

CREATE TABLE registrants (
    session_id TEXT COLLATE "C" NOT NULL,
    code       TEXT COLLATE "C" NOT NULL,
    deleted    INTEGER NOT NULL DEFAULT 0,
    seq        BIGINT NOT NULL,
    deleted_at TEXT COLLATE "C",
    PRIMARY KEY (session_id, code)
);
CREATE INDEX registrants_seq ON registrants (session_id, seq);

CREATE TABLE devices (
    device_id     TEXT COLLATE "C" PRIMARY KEY,
    session_id    TEXT COLLATE "C",
    token_hash    TEXT COLLATE "C" UNIQUE,
    created_at    TEXT COLLATE "C" NOT NULL,
    revoked_at    TEXT COLLATE "C",
    last_seen_at  TEXT COLLATE "C",
    status        TEXT COLLATE "C",
    allow_reentry INTEGER
);

CREATE TABLE scans (
    scan_id          TEXT COLLATE "C" PRIMARY KEY,
    device_id        TEXT COLLATE "C" NOT NULL,
    device_seq       BIGINT NOT NULL,
    session_id       TEXT COLLATE "C",
    code             TEXT COLLATE "C" NOT NULL,
    decision         TEXT COLLATE "C" NOT NULL,
    reason           TEXT COLLATE "C" NOT NULL,
    scanned_at       TEXT COLLATE "C" NOT NULL,
    monotonic_ns     BIGINT NOT NULL,
    boot_id          TEXT COLLATE "C" NOT NULL,
    received_at      TEXT COLLATE "C" NOT NULL,
    disagreement     TEXT COLLATE "C",
    clock_flag       TEXT COLLATE "C",
    direction        TEXT COLLATE "C" NOT NULL DEFAULT 'in',
    override_of      TEXT COLLATE "C",
    double_admission TEXT COLLATE "C",
    over_capacity    TEXT COLLATE "C",
    -- Insertion order (SQLite's rowid): the organizers' scan feed pages by it.
    position         BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    -- Door times PostgreSQL cannot read are refused with their scan (Python's
    -- fromisoformat takes forms such as '2026-W48-6T10:00:00Z' that it cannot cast): one
    -- stored would fail every query of its session that compares times (SQLite's
    -- julianday reads it as NULL instead).
    CHECK ((scanned_at)::timestamptz IS NOT NULL),
    CHECK ((received_at)::timestamptz IS NOT NULL)
);
CREATE INDEX scans_session ON scans (session_id, scanned_at);
CREATE INDEX scans_session_code ON scans (session_id, decision, direction, code, scanned_at);

CREATE TABLE schedule_links (
    code       TEXT COLLATE "C" PRIMARY KEY,
    nonce      TEXT COLLATE "C" NOT NULL,
    token_hash TEXT COLLATE "C" NOT NULL UNIQUE,
    created_at TEXT COLLATE "C" NOT NULL
);

CREATE TABLE presence (
    session_id TEXT COLLATE "C" NOT NULL,
    code       TEXT COLLATE "C" NOT NULL,
    inside     INTEGER NOT NULL,
    at         TEXT COLLATE "C" NOT NULL,
    seq        BIGINT NOT NULL,
    PRIMARY KEY (session_id, code)
);
CREATE INDEX presence_seq ON presence (session_id, seq);

CREATE TABLE occupancy (
    session_id TEXT COLLATE "C" PRIMARY KEY,
    inside     INTEGER NOT NULL
);

-- Secrets every server process shares (SQLite keeps them as files in the data dir):
-- the link secret that schedule-link tokens are made from.
CREATE TABLE secrets (
    name  TEXT COLLATE "C" PRIMARY KEY,
    value TEXT NOT NULL
);
"""

def _postgres_v2() -> str:
    """SQLite's version 8 (issue 17) for PostgreSQL, with a new code key."""
    return (f"ALTER TABLE meta ADD COLUMN code_key TEXT COLLATE \"C\";\n"
            f"UPDATE meta SET code_key = '{secrets.token_hex(32)}';\n"
            + _ISSUE_17.replace("TEXT", 'TEXT COLLATE "C"').replace("INTEGER", "BIGINT"))


#: The server's history on PostgreSQL (``checkin server --database postgresql://...``),
#: applied by :func:`server.database.open_database` and counted in its
#: ``schema_version`` table: version 1 is SQLite's last version. Each entry is a
#: script, or a function making it when it is applied.
POSTGRES_MIGRATIONS: tuple[str | Callable[[], str], ...] = (_postgres_v1, _postgres_v2)

#: Every backend's history, by :attr:`server.database.Database.kind`: what
#: :func:`server.database.open_database` takes.
MIGRATIONS_BY_KIND: dict[str, tuple[str | Callable[[], str], ...]] = {
    "sqlite": MIGRATIONS,
    "postgresql": POSTGRES_MIGRATIONS,
}

#: The server store's file name inside its data dir.
SERVER_FILE = "server.sqlite3"
#: The file in the data dir holding the secret that schedule-link tokens are made from.
LINK_SECRET_FILE = "link-secret"

#: Default days a registrant's removal (its tombstone) is kept for doors that have not
#: synced it yet (``checkin server --keep-deleted-days``); a door offline for longer
#: gets a snapshot.
KEEP_DELETED_DAYS = 30
