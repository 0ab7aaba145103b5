"""End-to-end tests' view of the harness (checkin/harness.py): real ``checkin server``,
``sync`` and ``door`` processes on 127.0.0.1, each with its own files under the test's
tmp_path, the admin token the tests use, and read-only looks into the stores."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from checkin import harness
from checkin.badges import Look
from checkin.harness import DoorLines, decisions, free_port, wait_for
from device.config import DoorConfig
from server.schema import SERVER_FILE
from sync.config import ServerConfig
from sync.device_end import CacheState, DeviceEnd, RecordResults
from sync.device_store import code_hash
from sync.messages import Scan

__all__ = ["ADMIN", "Device", "DoorLines", "Server", "free_port", "private_ca",
           "process_env", "read_only_query", "store_dump", "wait_for"]

ADMIN = "test-admin-token"


class HashedCodes:
    """The keyed hashes a door's store holds (issue 17), asked about by code: equal to a
    set of codes when it holds exactly their hashes; ``code in`` hashes *code*."""

    def __init__(self, key: bytes | None, hashes: set[bytes]) -> None:
        self.key = key
        self.hashes = hashes

    def __contains__(self, code: object) -> bool:
        return (isinstance(code, str) and self.key is not None
                and code_hash(self.key, code) in self.hashes)

    def __len__(self) -> int:
        return len(self.hashes)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, HashedCodes):
            return self.hashes == other.hashes
        if isinstance(other, set | frozenset):
            return len(other) == len(self.hashes) and all(code in self for code in other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<{len(self.hashes)} hashed code(s)>"


class HashedPresence:
    """A door store's admissions (hash -> inside), asked about by code."""

    def __init__(self, key: bytes | None, inside: dict[bytes, bool]) -> None:
        self.key = key
        self.inside = inside

    def get(self, code: str) -> bool | None:
        return self.inside.get(code_hash(self.key, code)) if self.key is not None else None

    def __len__(self) -> int:
        return len(self.inside)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, dict):
            return len(other) == len(self.inside) and all(
                self.get(code) is value for code, value in other.items())
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<presence of {len(self.inside)} hashed code(s)>"


def read_only_query(store: Path | str, sql: str, params: tuple = ()) -> list[tuple]:
    """Rows of *sql* (``?`` parameters) on a store, opened read-only beside its owners: the
    SQLite file at path *store* (or in the data dir *store*), or the PostgreSQL database at
    URL *store* (a server's :attr:`~checkin.harness.Server.store_location`, a test's
    ``server_target``)."""
    if isinstance(store, str):
        with psycopg.connect(store) as db:
            db.read_only = True
            return db.execute(sql.replace("%", "%%").replace("?", "%s"), params).fetchall()
    with _read_only_sqlite(store) as db:
        return db.execute(sql, params).fetchall()


def _read_only_sqlite(store: Path) -> contextlib.closing[sqlite3.Connection]:
    path = store / SERVER_FILE if store.is_dir() else store
    return contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10))


def store_dump(store: Path | str) -> str:
    """Every row of every table of a store (as :func:`read_only_query` takes it), as text:
    to look for what must not be stored."""
    if isinstance(store, str):
        tables = [name for (name,) in read_only_query(
            store, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        return "\n".join(f"{table}: {row}" for table in tables
                         for row in read_only_query(store, f'SELECT * FROM "{table}"'))
    with _read_only_sqlite(store) as db:
        return "\n".join(db.iterdump())


def private_ca(folder: Path) -> tuple[Path, Path, Path]:
    """A private CA and a certificate it issued for 127.0.0.1, as files in *folder*:
    ``(ca.pem, cert.pem, key.pem)``. Skips the test where trustme is not installed."""
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ca_file, cert_file, key_file = (folder / n for n in ("ca.pem", "cert.pem", "key.pem"))
    ca.cert_pem.write_to_path(str(ca_file))
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    return ca_file, cert_file, key_file


def process_env() -> dict[str, str]:
    return harness.process_env(CHECKIN_ADMIN_TOKEN=ADMIN)


class Server(harness.Server):
    """A ``checkin server`` subprocess with the tests' admin token."""

    def __init__(self, data_dir: Path, port: int | None = None, *,
                 tls: tuple[str, str] | None = None, verify: Any = True,
                 database: str | None = None) -> None:
        super().__init__(data_dir, port, admin_token=ADMIN, tls=tls, verify=verify,
                         database=database)

    def environment(self) -> dict[str, str]:
        return process_env()  # this module's, looked up at each start: a test may patch it


class Device(harness.Device):
    """One door's files and processes, syncing with *sync_url* (one URL, or a list tried in
    order) quickly (*server*: more ``[server]`` keys; *door* and *gpio*: ``[door]`` and
    ``[gpio]`` keys)."""

    #: The mock override button of a door made with ``override=True``, and the file whose
    #: every appended byte presses it (``[gpio] press_file``).
    OVERRIDE_PIN = 5
    PRESS_FILE = "press"

    def __init__(self, root: Path, device_id: str, sync_url: str | list[str], *,
                 auth_retry: float = 0.5,
                 debounce_seconds: float = 0.1, door: Mapping[str, Any] | None = None,
                 override: bool = False, data_dir: str = "data", **server: Any) -> None:
        gpio = {"override_button": self.OVERRIDE_PIN, "press_file": self.PRESS_FILE} \
            if override else {}
        super().__init__(root, device_id, server_url=sync_url, data_dir=data_dir,
                         camera={"fps": 40, "frames_per_image": 2},
                         scanner={"debounce_seconds": debounce_seconds},
                         server={"retry_min_seconds": 0.1, "retry_max_seconds": 0.5,
                                 "status_seconds": 1, "auth_retry_seconds": auth_retry,
                                 **server},
                         door=dict(door or {}), gpio=gpio)
        self.press_file = root / self.PRESS_FILE
        self.lines: DoorLines | None = None

    def start_sync(self) -> Device:
        super().start_sync("-v", env=process_env())
        return self

    def stop_sync(self) -> int:
        assert self.sync is not None
        return self.sync.stop()

    def start_live_door(self) -> DoorLines:
        """Start ``checkin door`` for good (not ``--exit-when-done``): badges shown from
        now on are decided as they come; read the decisions with :attr:`lines`."""
        self.clear_frames()
        self.lines = DoorLines(self.start_door("-v", env=process_env()))
        return self.lines

    def press(self) -> None:
        """Press the door's (mock) override button once (a door made with ``override``)."""
        with self.press_file.open("ab") as presses:
            presses.write(b"p")

    def presence(self) -> HashedPresence:
        """Who this door's store counts inside (``True``) or gone out (``False``), asked
        by code (the store keeps their keyed hashes)."""
        return HashedPresence(self.code_key(), {
            digest: bool(inside)
            for digest, inside in self.query("SELECT hash, inside FROM admissions")})

    def code_key(self) -> bytes | None:
        """The code key the door's store hashes codes with (``None``: none yet)."""
        rows = self.query("SELECT code_key FROM sync_state")
        return rows[0][0] if rows else None

    def door(self, *payloads: str | bytes | None,
             look: Callable[[str | bytes | None], Look] = lambda payload: Look(),
             timeout: float = 120) -> list[dict[str, Any]]:
        """Show *payloads* to a fresh ``checkin door`` run (each badge drawn with
        *look*); return its decisions."""
        self.clear_frames()
        for index, payload in enumerate(payloads):
            self.show(payload, look(payload), seed=index)
        done = self.run_door(env=process_env(), timeout=timeout)
        assert done.returncode == 0, done.stderr
        assert "Traceback" not in done.stderr, done.stderr
        return decisions(done.stdout)

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        if not self.store_file.exists():
            return []
        try:
            return read_only_query(self.store_file, sql, params)
        except sqlite3.OperationalError:  # not migrated yet
            return []

    def registrants(self) -> HashedCodes:
        """The registrants this door's store holds, compared by code (it keeps hashes)."""
        return HashedCodes(self.code_key(),
                           {row[0] for row in self.query("SELECT hash FROM registrants")})

    def waiting(self) -> int:
        rows = self.query("SELECT count(*) FROM scans WHERE upload_state = 'waiting'")
        return rows[0][0] if rows else -1

    def upload_states(self) -> dict[str, str]:
        return dict(self.query("SELECT scan_id, upload_state FROM scans"))

    def status(self) -> dict[str, Any]:
        done = harness.run("status", "--config", str(self.config), "--json", env=process_env(),
                           timeout=60)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def log(self) -> str:
        return self.sync_log.read_text() if self.sync_log.exists() else ""


class SyncClient:
    """A device end over a real websocket: a well-behaved door that pushes scans as the
    daemon does (for tests that speak the protocol themselves)."""

    def __init__(self, websocket: Any, device_id: str) -> None:
        self.websocket = websocket
        self.end = DeviceEnd(device_id, "test", CacheState(None, None, 0))

    async def flush(self) -> None:
        for frame in self.end.data_to_send():
            await self.websocket.send(frame)

    async def until(self, kind: type, timeout: float = 20) -> Any:
        """Send what is queued, then take frames until an action of *kind* comes."""
        await self.flush()
        async with asyncio.timeout(timeout):
            while True:
                self.end.receive(await self.websocket.recv())
                for action in self.end.actions():
                    if isinstance(action, kind):
                        return action

    async def push(self, *scans: Scan) -> RecordResults:
        self.end.send_scans(list(scans))
        return await self.until(RecordResults)


@dataclass
class DaemonSettings:
    """What an in-process ``SyncDaemon`` needs of a device's config (``DaemonConfig``):
    a door ``door-1`` with its data in *data_dir* and the ``[server]`` section *server*."""

    data_dir: Path
    server: ServerConfig
    device_id: str = "door-1"
    door: DoorConfig = field(default_factory=DoorConfig)
