"""The sync daemon in the field (issue 17), against a scripted server end in this process:
the clock anchors it records, the time source it uploads, the keyed hashes it keeps and
what it does when the server says the device is revoked."""

from __future__ import annotations

import asyncio
import json
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
from device.config import DoorConfig
from sync.config import ServerConfig
from sync.daemon import SyncDaemon
from sync.device_store import ScanRecord
from sync.messages import (
    ScanOutcome,
    ScanResult,
    ScanResults,
    SessionInfo,
    Snapshot,
    Welcome,
    encode,
)
from sync.store import SyncStore

SESSION = SessionInfo("s1", "Workshop", True)
THREE_DAYS_AGO = datetime.now(UTC) - timedelta(days=3)


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
    hellos: list[dict[str, Any]] = field(default_factory=list)
    scans: list[dict[str, Any]] = field(default_factory=list)
    port: int = 0

    async def handle(self, websocket: ServerConnection) -> None:
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
            await websocket.send(encode(ScanResults(
                batch=message["batch"],
                results=[ScanResult(s["scan_id"], ScanOutcome.ACCEPTED)
                         for s in message["scans"]],
                server_time=self.server_time().isoformat())))


@dataclass
class _Config:
    device_id: str
    data_dir: Path
    server: ServerConfig
    door: DoorConfig


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
        daemon = SyncDaemon(_Config("door-1", tmp_path / "data", server, DoorConfig()), store)
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
    fake = await served(FakeServer(server_time=lambda: THREE_DAYS_AGO))
    before = monotonic_ns()
    _, store = await daemon_for(fake)
    await until(store.clock_anchor, 20, "an anchor")
    anchor = await store.clock_anchor()
    assert anchor.server_time == THREE_DAYS_AGO and anchor.boot_id == boot_id()
    assert before <= anchor.monotonic_ns <= monotonic_ns()
    status = await store.status()
    # This device's wall clock is three days ahead of that server's.
    assert status.clock_offset_s == pytest.approx(timedelta(days=3).total_seconds(), abs=60)
    assert status.clock_anchor == anchor

    later = THREE_DAYS_AGO + timedelta(hours=1)
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
