"""Issue 10's defects, each with a test that failed before its fix.

1. A hostile badge recorded as a code longer than the protocol carries wedged the
   door's upload queue; a bad scan failed its whole frame.
2. Cancelled transactions (tests/test_transactions.py).
3. Unbounded work per connection: queued statuses, unanswered batches, idle HTTP.
4. A lone surrogate failed every device's scans in the same group commit.
5. Token lookups saw an older snapshot inside another coroutine's read transaction.
6. Clocks: the daemon warns, the server flags scans made online by a clock that is off.

The whole chain, badge to server, with real processes is in tests/test_hostile_e2e.py.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import socket
import tempfile
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from core.codes import MAX_RECORDED_CODE
from core.database import connect as open_db
from core.rules import SessionRules
from device.config import parse_config
from device.door import Door
from device.indicators.signals import Indicators
from device.scanner.decoders import make_decoder
from server.audit import clock_flag
from server.endpoint import MAX_UNFINISHED_ACTIONS
from server.store import Attendee, Device, ServerStore
from sync.daemon import clock_warning
from sync.device_end import CacheState, DeviceEnd, RecordResults, Welcomed
from sync.device_schema import MIGRATIONS as DEVICE_MIGRATIONS
from sync.device_store import STORE_FILE
from sync.messages import (
    CLOSE_POLICY,
    MAX_PENDING_BATCHES,
    Flooding,
    Hello,
    Scan,
    ScanOutcome,
    ScanResult,
    Scans,
    SessionInfo,
    Status,
    encode,
    fit_batch,
    parse_device_message,
)
from sync.server_end import (
    ClockAnchor,
    NoteStatus,
    SendChanges,
    SendSnapshot,
    ServerEnd,
    ServerView,
    StoreScans,
)
from sync.store import SyncStore
from tests.conftest import fill_store
from tests.system import Server, wait_for

T0 = "2026-11-28T10:00:00+00:00"
#: When the tests' frames reach the server end (it reads no clock).
NOW = datetime.fromisoformat(T0)


def scan(scan_id: str | None = None, **overrides: Any) -> Scan:
    values: dict[str, Any] = {
        "scan_id": scan_id or str(uuid.uuid4()), "seq": 1, "code": "A1", "session_id": "s1",
        "decision": "admitted", "reason": "registered", "scanned_at": T0,
        "monotonic_ns": 5, "boot_id": "boot"}
    return Scan(**(values | overrides))


def live_end(session: str = "s1") -> ServerEnd:
    end = ServerEnd(ServerView("door-1", session, "E1", 10))
    end.receive(encode(Hello(device_id="door-1", software="t", session_id=session,
                             epoch="E1", cursor=10)), NOW)
    assert end.actions() == [SendChanges(10)]
    end.send_changes(10, 10, [])
    end.data_to_send()
    return end


# -- 1. a bad scan never wedges the queue ---------------------------------------


def test_a_bad_scan_is_refused_alone_and_the_rest_of_its_batch_is_stored() -> None:
    device = DeviceEnd("door-1", "t", CacheState("s1", "E1", 10))
    server = live_end()
    device.receive(json.dumps({"type": "welcome", "v": 1, "device_id": "door-1",
                               "session_id": "s1", "epoch": "E1", "cursor": 10,
                               "server_time": T0, "resync": False}))
    assert [type(a) for a in device.actions()] == [Welcomed]
    device.data_to_send()
    good, bad, good2 = scan("good-1"), scan("bad-1", code="x" * 800), scan("good-2")
    device.send_scans([good, bad, good2])  # as an older door could have recorded it
    for frame in device.data_to_send():
        server.receive(frame, NOW)  # no ProtocolError: the frame is fine, one scan is not
    [action] = server.actions()
    assert isinstance(action, StoreScans)
    assert action.scans == [good, good2]
    [refused] = action.refused
    assert refused.scan_id == "bad-1" and refused.result == "refused"
    assert "code" in refused.reason and f"at most {MAX_RECORDED_CODE}" in refused.reason
    server.send_results(action.batch, [ScanResult("good-1", ScanOutcome.ACCEPTED),
                                       ScanResult("good-2", ScanOutcome.ACCEPTED),
                                       *action.refused])
    for frame in server.data_to_send():
        device.receive(frame)
    [record] = device.actions()
    assert isinstance(record, RecordResults)
    assert {r.scan_id: r.stored for r in record.results} == {
        "good-1": True, "good-2": True, "bad-1": False}


async def test_codes_recorded_before_the_bound_are_cut_so_they_can_be_uploaded(
        tmp_path: Path) -> None:
    path = tmp_path / STORE_FILE
    old = await open_db(path, DEVICE_MIGRATIONS[:2])  # the schema before the bound
    long_code = "\\x01" * 200  # how the old door recorded 200 bytes of 0x01
    await old.execute(
        "INSERT INTO scans (scan_id, code, session_id, decision, reason, scanned_at,"
        " monotonic_ns, boot_id) VALUES ('old-1', ?, 's1', 'rejected', 'invalid_code', ?,"
        " 1, 'b'), ('old-2', 'A1', 's1', 'admitted', 'registered', ?, 2, 'b')",
        (long_code, T0, T0))
    await old.close()
    store = await SyncStore.open(tmp_path)
    try:
        waiting = await store.waiting_scans(0, 10)
    finally:
        await store.close()
    assert [s.scan_id for s in waiting] == ["old-1", "old-2"]
    assert len(waiting[0].code) == MAX_RECORDED_CODE and waiting[0].code.endswith("…")
    assert waiting[1].code == "A1"
    parsed = parse_device_message(encode(Scans(batch=1, scans=fit_batch(waiting))))
    assert parsed.scans == waiting  # every one of them is now a scan the server takes


# The whole chain in one process, on real stores: whatever a camera reads, the door
# records a scan the protocol carries and the server stores.


class Chain:
    """A door, its device store as the sync daemon reads it, both protocol ends, and
    the server's store: every piece real but the sockets."""

    def __init__(self, root: Path) -> None:
        data = root / "device"
        fill_store(data, SessionRules("s1", True), ["A1", "B2"], ["A1"])
        config = parse_config({
            "device": {"id": "door-1", "data_dir": str(data)},
            "camera": {"source": "picamera2"},
            "gpio": {"pin_factory": "mock", "green": 17, "red": 27, "buzzer": 22},
        }, root / "door.toml")
        self.indicators = Indicators.from_config(config.gpio)
        self.door = Door(config, make_decoder("zxing-cpp"), self.indicators, io.StringIO())
        self.root = root
        self.runner = asyncio.Runner()
        self.sync_store: SyncStore = self.runner.run(SyncStore.open(data))
        self.server: ServerStore = self.runner.run(self._server())
        self.batch = 0

    async def _server(self) -> ServerStore:
        server = await ServerStore.open(self.root / "server")
        await server.put_session(SessionInfo("s1", "One", True))
        await server.upsert_attendees([Attendee("A1", "Ann"), Attendee("B2", "Bob")])
        return server

    def close(self) -> None:
        self.indicators.close()
        for store in (self.door.store, self.sync_store, self.server):
            if store is not None:
                self.runner.run(store.close())
        self.runner.close()

    async def through(self, raw: bytes) -> list[ScanResult]:
        await self.door.handle_payload(raw)
        waiting = fit_batch(await self.sync_store.waiting_scans(0, 1000))
        device = DeviceEnd("door-1", "t", await self.sync_store.cache_state())
        server = live_end()
        device.receive(json.dumps({"type": "welcome", "v": 1, "device_id": "door-1",
                                   "session_id": "s1", "epoch": "E1", "cursor": 10,
                                   "server_time": T0, "resync": True}))
        device.data_to_send()
        device.send_scans(waiting)
        [frame] = device.data_to_send()
        server.receive(frame, NOW)  # must never raise: a refused frame wedges the queue
        [action] = server.actions()
        assert isinstance(action, StoreScans) and action.refused == []
        results = await self.server.store_scans(Device("door-1", "s1"), action.scans)
        server.send_results(action.batch, results)
        for answer in server.data_to_send():
            device.receive(answer)
        [record] = [a for a in device.actions() if isinstance(a, RecordResults)]
        await self.sync_store.record_results(record.results)
        return record.results


def test_whatever_a_badge_holds_reaches_the_server_through_the_whole_chain() -> None:
    with tempfile.TemporaryDirectory() as root:
        chain = Chain(Path(root))
        try:
            @settings(max_examples=150, deadline=None,
                      suppress_health_check=[HealthCheck.too_slow])
            @given(st.binary(max_size=3000)
                   | st.text(max_size=1500).map(lambda t: t.encode("utf-8", "surrogatepass"))
                   | st.sampled_from([b"\x01" * 150, bytes(range(256)) * 4, b"A1",
                                      "\u202eA1\x00".encode(), b"\xed\xa0\x80" * 100,
                                      ("\U0001f600" * 700).encode()]))
            def check(raw: bytes) -> None:
                results = chain.runner.run(chain.through(raw))
                assert results and all(r.result == ScanOutcome.ACCEPTED for r in results), results

            check()
        finally:
            chain.close()


# -- 3. bounded work per connection -------------------------------------------------


def status(cursor: int) -> str:
    return encode(Status(software="t", cursor=cursor, scans_waiting=0, scans_quarantined=0,
                         last_frame_at=None))


def test_statuses_waiting_to_be_written_coalesce_to_the_latest() -> None:
    end = live_end()
    for cursor in range(30_000):
        end.receive(status(cursor), NOW)
    assert end.backlog == 1
    [action] = end.actions()
    assert isinstance(action, NoteStatus) and action.status.cursor == 29_999


def test_more_unanswered_batches_than_the_cap_is_a_flood_closed_with_1008() -> None:
    end = live_end()
    for batch in range(1, MAX_PENDING_BATCHES + 1):
        end.receive(encode(Scans(batch=batch, scans=[scan()])), NOW)
    with pytest.raises(Flooding, match=f"more than {MAX_PENDING_BATCHES} scan batches") as info:
        end.receive(encode(Scans(batch=99, scans=[scan()])), NOW)
    assert info.value.close_code == CLOSE_POLICY == 1008
    # answering one makes room for one more: the cap is on what waits, not a total
    action = end.actions()[0]
    end.send_results(action.batch, [ScanResult(action.scans[0].scan_id, ScanOutcome.ACCEPTED)])
    end.receive(encode(Scans(batch=100, scans=[scan()])), NOW)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = Server(tmp_path_factory.mktemp("reliability") / "server").start("-v")
    server.api("PUT", "/api/sessions/s1", {"name": "One", "validate_registrants": True})
    server.api("POST", "/api/attendees", [{"code": "A1", "name": "Ann"}])
    yield server
    server.kill()


def device_token(server: Server) -> tuple[str, str]:
    device_id = f"door-{uuid.uuid4().hex[:8]}"
    return device_id, server.provision(device_id, "s1")


def peak_memory_kib(pid: int) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", text).group(1))


async def hello(websocket, device_id: str) -> None:
    await websocket.send(encode(Hello(device_id=device_id, software="t", session_id=None,
                                      epoch=None, cursor=0)))
    async with asyncio.timeout(10):
        while json.loads(await websocket.recv()).get("last") is not True:
            pass  # welcome, then the snapshot's parts


def blast(websocket, frames: list[str]) -> None:
    """Write *frames* in one go, so the server gets them together, faster than any
    store can write."""
    for frame in frames:
        websocket.protocol.send_text(frame.encode())
    websocket.transport.write(b"".join(websocket.protocol.data_to_send()))


async def test_a_flood_of_statuses_costs_bounded_work_and_memory(server: Server,
                                                                 capsys) -> None:
    device_id, token = device_token(server)
    before = peak_memory_kib(server.process.pid)
    async with connect(server.sync_url, additional_headers={
            "Authorization": f"Bearer {token}"}, max_size=None) as websocket:
        await hello(websocket, device_id)
        for start in range(0, 30_000, 1000):
            blast(websocket, [status(c) for c in range(start, start + 1000)])
            await websocket.drain()  # TCP backpressure while the server holds off reading
        # A batch after the flood is answered once every status before it was taken.
        last = scan(session_id="s1")
        await websocket.send(encode(Scans(batch=1, scans=[last])))
        async with asyncio.timeout(60):
            while json.loads(await websocket.recv()).get("type") != "scan_results":
                pass
    after = peak_memory_kib(server.process.pid)
    [device] = [d for d in server.api("GET", "/api/devices", expect=200)
                if d["device_id"] == device_id]
    assert device["status"]["cursor"] == 29_999  # the latest status is what was kept
    line = wait_for(lambda: re.search(rf"device {device_id} disconnected \(at most (\d+) "
                                      r"actions waited at once\)", server.log.read_text()),
                    what="the disconnect line")
    peak = int(line.group(1))
    assert peak <= MAX_UNFINISHED_ACTIONS + 1
    with capsys.disabled():
        print(f"\n30,000 status frames: at most {peak} actions queued at once; server peak "
              f"memory {before // 1024} -> {after // 1024} MiB")
    assert after - before < 64 * 1024  # nothing queued per frame


async def test_pushing_more_batches_than_the_cap_is_closed_with_1008(server: Server) -> None:
    device_id, token = device_token(server)
    async with connect(server.sync_url, additional_headers={
            "Authorization": f"Bearer {token}"}) as websocket:
        await hello(websocket, device_id)
        blast(websocket, [encode(Scans(batch=b, scans=[scan()])) for b in range(1, 21)])
        with pytest.raises(ConnectionClosed):
            async with asyncio.timeout(20):
                while True:
                    await websocket.recv()
    assert websocket.close_code == CLOSE_POLICY
    assert f"more than {MAX_PENDING_BATCHES} scan batches" in websocket.close_reason
    # the server is fine: the next connection of that device is served
    async with connect(server.sync_url, additional_headers={
            "Authorization": f"Bearer {token}"}) as websocket:
        await hello(websocket, device_id)


def test_idle_and_half_sent_http_connections_are_closed(server: Server) -> None:
    """uvicorn alone waits forever for a request head: these would pile up unauthenticated."""
    port = int(server.url.rsplit(":", 1)[1])
    idle = socket.create_connection(("127.0.0.1", port))
    half = socket.create_connection(("127.0.0.1", port))
    half.sendall(b"GET /api/health HTTP/1.1\r\nHost: x\r\n")  # no blank line: never ends
    try:
        for sock in (idle, half):
            sock.settimeout(60)  # the server's deadline is 10 s; this only stops a hang
            assert sock.recv(1024) == b"", "the server should have closed the connection"
        assert server.client.get("/api/health").status_code == 200
    finally:
        idle.close()
        half.close()


# -- 4. one device's bad text never fails another's scans ----------------------------


async def test_a_batch_that_cannot_be_stored_is_refused_alone_in_the_group_commit(
        server_target: Path | str) -> None:
    store = await ServerStore.open(server_target)
    try:
        await store.put_session(SessionInfo("s1", "One", True))
        await store.put_session(SessionInfo("s2", "Two", True))
        # A lone surrogate as an older server let through: no database can store it.
        poisoned = [scan("p-ok", code="A1"), scan("p-bad", code="\ud800")]
        other = [scan("o-1", code="A1", session_id="s2")]
        first, second = await asyncio.gather(
            store.store_scans(Device("door-1", "s1"), poisoned),
            store.store_scans(Device("door-2", "s2"), other))  # one group commit
        assert [(r.scan_id, r.result) for r in first] == [("p-ok", "accepted"),
                                                          ("p-bad", "refused")]
        assert "cannot store" in first[1].reason
        assert [(r.scan_id, r.result) for r in second] == [("o-1", "accepted")]
        stored = {s["scan_id"] for s in (await store.attendance("s1"))["scans"]}
        stored |= {s["scan_id"] for s in (await store.attendance("s2"))["scans"]}
        assert stored == {"p-ok", "o-1"}
    finally:
        await store.close()


def test_lone_surrogates_in_an_api_body_are_a_400_naming_the_field(server: Server) -> None:
    for body in ('[{"code": "A7", "name": "\\ud800"}]',
                 '[{"code": "A7", "name": "Ann", "email": "\\udfff@example.org"}]'):
        answer = server.client.post("/api/attendees", content=body,
                                    headers={"Content-Type": "application/json"})
        assert answer.status_code == 400, answer.text
        assert "lone surrogate" in answer.json()["error"]
    answer = server.client.put("/api/sessions/s9", content='{"name": "\\ud83d", '
                               '"validate_registrants": true}')
    assert answer.status_code == 400 and "name" in answer.json()["error"]


# -- 5. auth sees committed state --------------------------------------------------


async def test_a_revoked_token_is_refused_even_during_another_read(
        server_target: Path | str) -> None:
    store = await ServerStore.open(server_target)
    try:
        await store.put_session(SessionInfo("s1", "One", True))
        token, _ = await store.put_device("door-1", "s1")
        reading, release = asyncio.Event(), asyncio.Event()

        async def long_read() -> None:  # e.g. a snapshot for another door
            async with store._read() as db:
                await db.fetchall("SELECT count(*) FROM devices")  # snapshot taken
                reading.set()
                await release.wait()

        reader = asyncio.create_task(long_read())
        await reading.wait()
        await store.revoke_device("door-1")
        lookup = asyncio.create_task(store.device_by_token(token))
        await asyncio.sleep(0.05)
        release.set()
        await reader
        assert await lookup is None
    finally:
        await store.close()


# -- 6. clocks ---------------------------------------------------------------------


def test_the_daemon_warns_when_its_clock_is_off_from_the_servers() -> None:
    server = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
    assert clock_warning(server.isoformat(), server + timedelta(seconds=4)) is None
    behind = clock_warning(server.isoformat(), server - timedelta(hours=72))
    assert behind and "259200.0 s behind" in behind and "NTP" in behind
    # the same instants spelled with other offsets: compared as instants, not as text
    ahead = clock_warning(server.astimezone(timezone(timedelta(hours=2))).isoformat(),
                          (server + timedelta(seconds=30)).astimezone(
                              timezone(timedelta(hours=-5))))
    assert ahead and "30.0 s ahead of the server's" in ahead


def test_scans_made_online_by_a_clock_that_is_off_are_flagged() -> None:
    hello_at = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
    anchor = ClockAnchor("boot-1", 1_000_000_000, hello_at)
    later = {"boot_id": "boot-1", "monotonic_ns": 61_000_000_000}  # 60 s after the hello
    right = scan(scanned_at=(hello_at + timedelta(seconds=61)).isoformat(), **later)
    assert clock_flag(right, anchor) is None
    slow = scan(scanned_at=(hello_at - timedelta(days=3)).isoformat(), **later)
    assert clock_flag(slow, anchor) == ("device clock 259260.0 s behind the server's when "
                                        "scanned online")
    fast = scan(scanned_at=(hello_at + timedelta(seconds=90)).isoformat(), **later)
    assert "30.0 s ahead of" in clock_flag(fast, anchor)
    # made before the hello (offline, uploaded late) or in another boot: not judged
    assert clock_flag(scan(scanned_at=T0, boot_id="boot-1", monotonic_ns=5), anchor) is None
    assert clock_flag(scan(scanned_at=T0, boot_id="boot-0", monotonic_ns=2 * 10**12),
                      anchor) is None
    assert clock_flag(slow, None) is None


def test_the_hello_carries_the_devices_clocks_and_leaves_them_out_when_unknown() -> None:
    end = DeviceEnd("door-1", "t", CacheState(None, None, 0), boot_id="boot-1",
                    monotonic_ns=42)
    [frame] = end.data_to_send()
    assert json.loads(frame)["boot_id"] == "boot-1" and json.loads(frame)["monotonic_ns"] == 42
    server = ServerEnd(ServerView("door-1", "s1", "E1", 0))
    server.receive(frame, NOW)
    assert server.anchor == ClockAnchor("boot-1", 42, NOW)  # the hello's time, as given
    assert server.actions() == [SendSnapshot()]
    [old_style] = DeviceEnd("door-1", "t", CacheState(None, None, 0)).data_to_send()
    assert "boot_id" not in json.loads(old_style)  # as hellos were before: old servers read it


async def test_the_server_stores_the_clock_flag_of_an_online_scan(
        server_target: Path | str) -> None:
    store = await ServerStore.open(server_target)
    try:
        await store.put_session(SessionInfo("s1", "One", True))
        now = datetime.now(UTC)
        anchor = ClockAnchor("boot-1", 10, now)
        off = scan("off-1", scanned_at=(now - timedelta(hours=1)).isoformat(),
                   boot_id="boot-1", monotonic_ns=20)
        await store.store_scans(Device("door-1", "s1"), [off], anchor)
        [row] = (await store.attendance("s1"))["scans"]
        assert row["clock_flag"].startswith("device clock 3600.0 s behind")
    finally:
        await store.close()

