"""The sync daemon in the field (issue 17), against a scripted server end in this process:
the clock anchors it records, the time source it uploads, the keyed hashes it keeps and
what it does when the server says the device is revoked."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

from checkin.harness import until
from core.clock import boot_id, monotonic_ns
from core.rules import Decision
from sync.config import ServerConfig
from sync.daemon import SyncDaemon
from sync.device_store import ScanRecord, code_hash
from sync.messages import (
    CLOSE_REVOKED,
    CLOSE_UNAUTHORIZED,
    ScanOutcome,
    ScanResult,
    ScanResults,
    SessionInfo,
    Snapshot,
    Welcome,
    code_key_id,
    encode,
)
from sync.store import SyncStore
from tests.system import DaemonSettings

SESSION = SessionInfo("s1", "Workshop", True)


@dataclass
class FakeServer:
    """A server end that welcomes, sends a snapshot and answers every scan stored.

    *welcome* makes the welcome's fields from the hello; *close* (a close code), when
    set, ends each connection right after the hello instead.
    """

    server_time: Callable[[], datetime] = lambda: datetime.now(UTC)
    welcome: Callable[[dict[str, Any]], dict[str, Any]] = lambda hello: {}
    attendees: list[str] = field(default_factory=lambda: ["A1", "B2"])
    registrants: list[str] = field(default_factory=lambda: ["A1"])
    close: int | None = None
    #: ``False``: scans are taken and never answered (they stay waiting).
    scans_answered: bool = True
    hellos: list[dict[str, Any]] = field(default_factory=list)
    scans: list[dict[str, Any]] = field(default_factory=list)
    port: int = 0
    links: list[ServerConnection] = field(default_factory=list)

    async def drop(self) -> None:
        """Close every link (a server restarting): the daemon reconnects."""
        for websocket in self.links:
            await websocket.close(1012, "restarting")

    async def handle(self, websocket: ServerConnection) -> None:
        self.links.append(websocket)
        hello = json.loads(await websocket.recv())
        self.hellos.append(hello)
        if self.close is not None:
            await websocket.close(self.close, "device revoked")
            return
        values = {"device_id": hello["device_id"], "session_id": SESSION.session_id,
                  "epoch": "E1", "cursor": 5, "server_time": self.server_time().isoformat(),
                  "resync": True} | self.welcome(hello)
        await websocket.send(encode(Welcome(**values)))
        if values["resync"]:
            await websocket.send(encode(Snapshot(
                epoch=values["epoch"], cursor=values["cursor"], part=0, last=True,
                session=SESSION, attendees=self.attendees, registrants=self.registrants,
                admissions=[], exits=[])))
        async for frame in websocket:
            message = json.loads(frame)
            if message["type"] != "scans":
                continue
            self.scans.extend(message["scans"])
            if not self.scans_answered:
                continue
            await websocket.send(encode(ScanResults(
                batch=message["batch"],
                results=[ScanResult(s["scan_id"], ScanOutcome.ACCEPTED)
                         for s in message["scans"]],
                server_time=self.server_time().isoformat())))


@pytest.fixture
async def served() -> AsyncIterator[Callable[[FakeServer], Any]]:
    """Start a :class:`FakeServer` on a free port; stop it after the test."""
    servers = []

    async def start(fake: FakeServer) -> FakeServer:
        server = await serve(fake.handle, "127.0.0.1", 0)
        fake.port = server.sockets[0].getsockname()[1]
        servers.append(server)
        return fake

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


@pytest.fixture
async def daemon_for(tmp_path: Path) -> AsyncIterator[Callable[[FakeServer], Any]]:
    """Run a daemon (in this process) against a fake server; stop it after the test."""
    running: list[tuple[SyncDaemon, asyncio.Task[None], SyncStore]] = []

    async def start(fake: FakeServer) -> tuple[SyncDaemon, SyncStore]:
        token = tmp_path / "token"
        token.write_text("t")
        server = ServerConfig(url=(f"ws://127.0.0.1:{fake.port}/sync",), token_file=token,
                              retry_min_seconds=0.05, retry_max_seconds=0.1,
                              auth_retry_seconds=0.2, status_seconds=30)
        store = await SyncStore.open(tmp_path / "data")
        daemon = SyncDaemon(DaemonSettings(tmp_path / "data", server), store)
        running.append((daemon, asyncio.create_task(daemon.run()), store))
        return daemon, store

    yield start
    for daemon, task, store in running:
        daemon.stop()
        await task
        await store.close()


def a_scan(n: int, code: str = "A1", time_source: str = "system") -> ScanRecord:
    return ScanRecord(f"scan-{n}", code, "s1", Decision.ADMITTED, "registered",
                      "2026-11-28T10:00:00+00:00", monotonic_ns(), boot_id(),
                      time_source=time_source)


# -- clock anchors and time sources -----------------------------------------------------


async def test_each_welcome_and_answer_anchors_the_doors_clock(served, daemon_for) -> None:
    # Three days before now, not before the module was imported (a long run's collection).
    three_days_ago = datetime.now(UTC) - timedelta(days=3)
    fake = await served(FakeServer(server_time=lambda: three_days_ago))
    before = monotonic_ns()
    _, store = await daemon_for(fake)
    await until(store.clock_anchor, 20, "an anchor")
    anchor = await store.clock_anchor()
    assert anchor.server_time == three_days_ago and anchor.boot_id == boot_id()
    assert before <= anchor.monotonic_ns <= monotonic_ns()
    status = await store.status()
    # This device's wall clock is three days ahead of that server's.
    assert status.clock_offset_s == pytest.approx(timedelta(days=3).total_seconds(), abs=60)
    assert status.clock_anchor == anchor

    later = three_days_ago + timedelta(hours=1)
    fake.server_time = lambda: later
    await store.record_scan(a_scan(1, time_source="unknown"))
    await until(lambda: fake.scans, 20, "the scan uploaded")
    assert fake.scans[0]["time_source"] == "unknown"
    await until(lambda: _anchored_at(store, later), 20, "the answer's anchor")
    assert (await store.status()).clock_offset_s == status.clock_offset_s  # the welcome's


async def _anchored_at(store: SyncStore, at: datetime) -> bool:
    anchor = await store.clock_anchor()
    return anchor is not None and anchor.server_time == at


async def test_a_system_time_scan_is_uploaded_without_the_field(served, daemon_for) -> None:
    fake = await served(FakeServer())
    _, store = await daemon_for(fake)
    await store.record_scan(a_scan(1))
    await until(lambda: fake.scans, 20, "the scan uploaded")
    assert "time_source" not in fake.scans[0]


# -- keyed hashes -----------------------------------------------------------------------

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


def keyed(key: bytes) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A server whose code key is *key*: a snapshot when the hello names another."""
    return lambda hello: {"code_key": key.hex() if hello.get("hashes") else None,
                          "resync": hello.get("key_id") != code_key_id(key)}


async def test_the_welcomes_key_hashes_the_cache(served, daemon_for) -> None:
    fake = await served(FakeServer(welcome=keyed(KEY)))
    _, store = await daemon_for(fake)
    await until(lambda: _key_id(store, code_key_id(KEY)), 20, "the snapshot")
    assert fake.hellos[0]["hashes"] is True and "key_id" not in fake.hellos[0]
    assert (await store.facts("A1")).is_registrant
    await store.record_scan(a_scan(1, code="A1"))
    await until(lambda: _codes(store, code_hash(KEY, "A1").hex()), 20,
                "the code replaced by its hash once stored")
    assert fake.scans[0]["code"] == "A1"  # the server gets the code itself

    # The next connection names the key: changes only. Then the server's key changes
    # (a new epoch): the snapshot hashes the cache with the new one.
    fake.welcome = keyed(OTHER_KEY)
    await fake.drop()  # the daemon reconnects
    await until(lambda: _key_id(store, code_key_id(OTHER_KEY)), 20, "the new key")
    assert fake.hellos[1]["key_id"] == code_key_id(KEY)
    assert (await store.facts("A1")).is_registrant


async def _key_id(store: SyncStore, key_id: str) -> bool:
    return (await store.cache_state()).key_id == key_id


async def _codes(store: SyncStore, *codes: str) -> bool:
    return [s["code"] for s in await store.scans()] == list(codes)


# -- revocation -------------------------------------------------------------------------


async def test_a_revoked_device_wipes_its_cache_keeps_its_scans_and_resumes(
        served, daemon_for, caplog) -> None:
    caplog.set_level(logging.INFO, logger="checkin.sync")
    fake = await served(FakeServer(welcome=keyed(KEY)))
    _, store = await daemon_for(fake)
    await until(lambda: _key_id(store, code_key_id(KEY)), 20, "the snapshot")
    fake.scans_answered = False  # the server stops answering: the scans stay waiting
    await store.record_scan(a_scan(1, code="A1"))
    await until(lambda: fake.scans, 20, "the scan pushed")

    fake.close = CLOSE_REVOKED  # the organizer revokes the device
    await fake.drop()
    await until(lambda: _revoked(store), 20, "the wipe")
    status = await store.status()
    assert (status.session_id, status.registrants, status.attendees, status.epoch) == (
        None, 0, 0, None)
    assert (await store.cache_state()).key_id is None
    assert [s["code"] for s in await store.scans()] == ["A1"]  # kept for recovery
    assert (await store.facts("A1")).session is None  # the door: not_ready
    [record] = [r for r in caplog.records if getattr(r, "event", "") == "revoked"]
    line = record.getMessage()
    assert "revoked" in line and "1 scan(s)" in line and "kept for recovery" in line
    assert record.levelno == logging.ERROR and record.scans_kept == 1
    hellos = len(fake.hellos)
    await until(lambda: len(fake.hellos) >= hellos + 2, 20, "retries")  # still trying
    assert fake.hellos[-1]["epoch"] is None and "key_id" not in fake.hellos[-1]

    fake.close = None  # a new token: welcomed again, a fresh snapshot
    fake.scans_answered = True
    await until(lambda: _key_id(store, code_key_id(KEY)), 20, "the fresh snapshot")
    await until(lambda: _codes(store, code_hash(KEY, "A1").hex()), 20, "the scan stored")
    status = await store.status()
    assert status.revoked_at is None and status.registrants == 1


async def _revoked(store: SyncStore) -> bool:
    return (await store.status()).revoked_at is not None


async def test_an_unknown_token_wipes_nothing(served, daemon_for) -> None:
    """4001 (a typo in the token, say) is not a revocation: the cache stays."""
    fake = await served(FakeServer(welcome=keyed(KEY)))
    _, store = await daemon_for(fake)
    await until(lambda: _key_id(store, code_key_id(KEY)), 20, "the snapshot")
    fake.close = CLOSE_UNAUTHORIZED
    await fake.drop()
    hellos = len(fake.hellos)
    await until(lambda: len(fake.hellos) >= hellos + 2, 20, "refused twice")
    status = await store.status()
    assert status.revoked_at is None and status.registrants == 1
    assert (await store.facts("A1")).is_registrant
