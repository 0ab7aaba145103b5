"""Issue 13's backend: the live fan-out (server/live.py), the live numbers the store gives
the pages (attendance_live, not_arrived, door_overview) on a real SQLite file, and the
status fields a door sends for its clock and its silence."""

from __future__ import annotations

import asyncio
import json
import tracemalloc
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from core.rules import Decision, Reason
from server.endpoint import status_record
from server.live import CHANGED, Live, session_topic
from server.store import Attendee, Device, NotFound, ServerStore
from sync.messages import Scan, SessionInfo, Status, encode, parse_device_message

# -- Live ------------------------------------------------------------------------------


async def test_publish_reaches_every_subscriber_once_per_topic() -> None:
    live = Live()
    first, second = live.subscribe(), live.subscribe()
    assert len(live) == 2
    live.publish("session:a", "sessions")
    live.publish("session:a")  # published again before read: kept once
    assert await first.get_all() == {"session:a", "sessions"}
    assert [await second.get(), await second.get()] == ["session:a", "sessions"]
    assert len(first) == len(second) == 0
    live.publish()  # nothing: nobody woken
    assert len(first) == 0


async def test_a_slow_subscriber_never_grows_it_coalesces_to_changed() -> None:
    live = Live(limit=16)
    slow, fast = live.subscribe(), live.subscribe()
    tracemalloc.start()
    try:
        for i in range(1000):  # warm up, then measure
            live.publish(session_topic(f"s{i}"), "sessions", "doors")
            assert await fast.get_all()
        before = tracemalloc.get_traced_memory()[0]
        for i in range(100_000):
            live.publish(session_topic(f"s{i}"), "sessions", "doors")
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(slow) == 1 and slow.overflows == 1
    assert grown < 64 * 1024  # bounded: not 100,000 topics (megabytes) waiting
    assert await slow.get() == CHANGED
    live.publish("doors")  # and once read, it gets topics again
    assert await slow.get() == "doors"
    assert len(fast) == 16 or fast.overflows == 1


async def test_unsubscribe_and_close() -> None:
    live = Live()
    async with live.subscribe() as sub:
        assert len(live) == 1
        live.publish("doors")
    assert len(live) == 0 and sub.closed
    assert await sub.get() == "doors"  # what was pending is still read
    with pytest.raises(StopAsyncIteration):
        await sub.get()
    live.publish("doors")  # a closed subscription takes nothing
    assert len(sub) == 0

    other = live.subscribe()
    waiting = asyncio.create_task(other.get())
    await asyncio.sleep(0)
    live.close()  # the server stops: a waiting page stream ends
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(waiting, 5)
    assert len(live) == 0


async def test_async_for_and_cancelling_a_wait_loses_nothing() -> None:
    live = Live()
    sub = live.subscribe()
    waiting = asyncio.create_task(sub.get())
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    live.publish("session:x")  # published after the cancelled wait: still there
    seen = []
    async for topic in sub:
        seen.append(topic)
        if topic == "session:x":
            live.publish("doors")
        else:
            sub.close()
    assert seen == ["session:x", "doors"]

    # A wait cancelled just as a topic arrives leaves the topic for the next wait.
    sub = live.subscribe()
    waiting = asyncio.create_task(sub.get())
    await asyncio.sleep(0)
    live.publish("sessions")
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert await asyncio.wait_for(sub.get(), 5) == "sessions"


async def test_many_waiting_subscribers_wake_on_one_publish() -> None:
    live = Live()
    subs = [live.subscribe() for _ in range(200)]
    waiting = [asyncio.create_task(s.get()) for s in subs]
    await asyncio.sleep(0)
    live.publish("session:a")
    assert await asyncio.wait_for(asyncio.gather(*waiting), 5) == ["session:a"] * 200
    for s in subs:
        s.close()
    assert len(live) == 0


# -- Status: sent_at, status_seconds, clock offset --------------------------------------


def _status(**extra: object) -> Status:
    return Status(software="1.0", cursor=3, scans_waiting=2, scans_quarantined=0,
                  last_frame_at=None, **extra)  # type: ignore[arg-type]


def test_status_fields_are_optional_and_left_out_when_unset() -> None:
    old = encode(_status())
    assert "sent_at" not in old and "status_seconds" not in old
    assert parse_device_message(old) == _status()
    new = _status(sent_at="2026-11-28T10:00:00.000+01:00", status_seconds=15.0)
    text = encode(new)
    assert json.loads(text)["sent_at"] == "2026-11-28T10:00:00.000+01:00"
    assert parse_device_message(text) == new
    for bad in ({"sent_at": "yesterday"}, {"sent_at": "2026-11-28T10:00:00"},
                {"status_seconds": 0}, {"status_seconds": -1}, {"status_seconds": "15"},
                {"status_seconds": True}):
        body = json.loads(old) | bad
        with pytest.raises(Exception, match="status: ") as caught:
            parse_device_message(json.dumps(body))
        assert next(iter(bad)) in str(caught.value)


def test_the_server_keeps_the_clock_offset_with_the_status() -> None:
    received = datetime(2026, 11, 28, 9, 0, 0, tzinfo=UTC)
    ahead = status_record(_status(sent_at="2026-11-28T10:00:07.500+01:00",
                                  status_seconds=15.0), received)
    assert ahead["clock_offset_s"] == 7.5 and ahead["status_seconds"] == 15.0
    behind = status_record(_status(sent_at=(received - timedelta(seconds=90)).isoformat()),
                           received)
    assert behind["clock_offset_s"] == -90.0
    assert status_record(_status(), received)["clock_offset_s"] is None


# -- the store's live numbers, on a real file --------------------------------------------

_BOOT = "boot-1"


def _scan(n: int, code: str, session: str | None, decision: str, reason: str,
          at: str, device: str = "door-1") -> Scan:
    return Scan(scan_id=f"{device}-{n}", seq=n, code=code, session_id=session,
                decision=decision, reason=reason, scanned_at=at, monotonic_ns=n,
                boot_id=_BOOT)


@pytest.fixture
async def store(server_target: Path | str) -> AsyncIterator[ServerStore]:
    store = await ServerStore.open(server_target)
    await store.upsert_attendees([Attendee(f"A{i}", f"Person {i}", f"p{i}@example.org")
                                  for i in range(10)] + [Attendee("ZZ", "=HYPERLINK(1)")])
    await store.put_session(SessionInfo("s1", "Keynote", True))
    await store.put_session(SessionInfo("s2", "Workshop", False))
    await store.put_registrants("s1", [f"A{i}" for i in range(6)])
    yield store
    await store.close()


# -- the publish calls: a door's connection, status and scans; the API's changes --------


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_doors_and_the_api_publish_what_changed(tmp_path: Path, database: str | None) -> None:
    from starlette.testclient import TestClient

    from server.app import create_app
    from sync.device_end import CacheState, DeviceEnd, RecordResults

    app = create_app(tmp_path, "admin-token", database=database)
    admin = {"Authorization": "Bearer admin-token"}
    with TestClient(app) as client:
        live = getattr(app.state, "live", None)
        if live is None:  # until the app wires it in
            live = app.state.live = Live()
        sub = live.subscribe()

        def seen() -> set[str]:
            topics = set()
            while len(sub):
                topics.add(asyncio.run(sub.get()))
            return topics

        assert client.put("/api/sessions/s1", json={"name": "One", "validate_registrants":
                                                     False}, headers=admin).status_code == 201
        assert seen() == {"session:s1", "sessions"}
        client.post("/api/attendees", json=[{"code": "A1", "name": "Ann"}], headers=admin)
        assert seen() == {CHANGED}
        client.put("/api/sessions/s1/registrants/A1", headers=admin)
        assert seen() == {"session:s1", "sessions"}
        token = client.put("/api/devices/door-1", json={"session_id": "s1"},
                           headers=admin).json()["token"]
        assert seen() == {"doors", "session:s1"}

        end = DeviceEnd("door-1", "test", CacheState(None, None, 0))
        with client.websocket_connect("/sync", headers={"Authorization": f"Bearer {token}"}
                                      ) as ws:
            def until(kind: type) -> object:
                while True:
                    for frame in end.data_to_send():
                        ws.send_text(frame)
                    end.receive(ws.receive_text())
                    for action in end.actions():
                        if isinstance(action, kind):
                            return action

            from sync.device_end import ApplySnapshot
            until(ApplySnapshot)
            assert seen() == {"doors", "session:s1"}  # connected
            now = datetime.now(UTC).isoformat()
            end.send_scans([_scan(1, "A1", "s1", Decision.ADMITTED, Reason.REGISTERED, now)])
            until(RecordResults)
            assert seen() == {"session:s1", "sessions"}
            end.send_scans([_scan(1, "A1", "s1", Decision.ADMITTED, Reason.REGISTERED, now)])
            until(RecordResults)  # a duplicate changes nothing
            assert seen() == {"sessions"}
            ahead = (datetime.now(UTC) + timedelta(seconds=30)).isoformat()
            end.send_status(scans_waiting=4, scans_quarantined=1, last_frame_at=None,
                            sent_at=ahead, status_seconds=2.0)
            for frame in end.data_to_send():
                ws.send_text(frame)
            status = None
            for _ in range(1000):
                status = client.get("/api/devices", headers=admin).json()[0]["status"]
                if status and "clock_offset_s" in status:
                    break
            assert status is not None and status["status_seconds"] == 2.0
            assert 25 < status["clock_offset_s"] <= 30
            assert "doors" in seen()
        for _ in range(1000):  # the disconnect is published once the link ends
            if "doors" in seen():
                break
            asyncio.run(asyncio.sleep(0.01))
        else:
            raise AssertionError("no 'doors' after the door disconnected")
        client.delete("/api/devices/door-1", headers=admin)
        assert "doors" in seen()


ADMIT, REJECT = Decision.ADMITTED, Decision.REJECTED


async def test_attendance_live_counts_a_session(store: ServerStore) -> None:
    empty = await store.attendance_live("s1")
    assert empty == {"session_id": "s1", "name": "Keynote", "registered": 6, "admitted": 0,
                     "reentries": 0, "rejected": 0, "rejected_by_reason": {},
                     "not_arrived": 6, "arrivals_per_minute": [], "scans": 0, "flagged": 0,
                     "last_scan_at": None, "inside": 0, "capacity": None, "overrides": 0,
                     "over_capacity": 0, "double_admissions": 0, "times_reconstructed": 0,
                     "times_unknown": 0}
    door1 = Device("door-1", "s1")
    door2 = Device("door-2", "s1")
    await store.store_scans(door1, [
        _scan(1, "A0", "s1", ADMIT, Reason.REGISTERED, "2026-11-28T10:00:05.000+01:00"),
        _scan(2, "A1", "s1", ADMIT, Reason.REGISTERED, "2026-11-28T09:00:50.000+00:00"),
        _scan(3, "A0", "s1", ADMIT, Reason.REENTRY, "2026-11-28T09:05:00.000+00:00"),
        _scan(4, "A7", "s1", REJECT, Reason.NOT_REGISTERED, "2026-11-28T09:06:00.000Z"),
        _scan(5, "A8", "s1", REJECT, Reason.NOT_REGISTERED, "2026-11-28T09:06:01.000Z"),
        _scan(6, "??", "s1", REJECT, Reason.UNKNOWN_CODE, "2026-11-28T09:06:02.000Z"),
        _scan(7, "A9", "s1", ADMIT, Reason.REGISTERED, "2026-11-28T09:07:00.000Z"),
    ])
    # Another door, offline meanwhile, admitted A1 first (by its clock) and A2.
    await store.store_scans(door2, [
        _scan(1, "A1", "s1", ADMIT, Reason.REGISTERED, "2026-11-28T09:00:30.000Z", "door-2"),
        _scan(2, "A2", "s1", ADMIT, Reason.REGISTERED, "2026-11-28T10:02:00.000+01:00",
              "door-2"),
    ])
    await store.store_scans(Device("door-3", "s2"), [
        _scan(1, "A3", "s2", ADMIT, Reason.REGISTERED, "2026-11-28T09:00:00Z", "door-3")])
    live = await store.attendance_live("s1")
    assert live["registered"] == 6 and live["admitted"] == 4  # A0 A1 A2 A9
    assert live["reentries"] == 2  # A0 again, A1 at a second door
    assert live["rejected"] == 3
    assert live["rejected_by_reason"] == {"not_registered": 2, "unknown_code": 1}
    assert live["not_arrived"] == 3  # A3 A4 A5: A3 came to the other session only
    assert live["arrivals_per_minute"] == [["2026-11-28T09:00:00Z", 2],
                                           ["2026-11-28T09:02:00Z", 1],
                                           ["2026-11-28T09:07:00Z", 1]]
    assert live["scans"] == 9
    assert live["flagged"] == 1  # A9 admitted though not a registrant: the audit flags it
    assert live["last_scan_at"] == "2026-11-28T09:07:00.000Z"
    assert (await store.attendance_live("s2"))["admitted"] == 1
    with pytest.raises(NotFound):
        await store.attendance_live("nope")
    # The old route's answer keeps every field it had (issue 14 added some).
    old = await store.attendance("s1")
    assert set(old) >= {"session_id", "registered", "admitted", "rejected", "scans"}


async def test_not_arrived_lists_registrants_never_admitted(store: ServerStore) -> None:
    await store.store_scans(Device("door-1", "s1"), [
        _scan(1, "A0", "s1", ADMIT, Reason.REGISTERED, "2026-11-28T09:00:00Z"),
        _scan(2, "A1", "s1", REJECT, Reason.OUTSIDE_WINDOW, "2026-11-28T09:00:00Z"),
        _scan(3, "A2", "s2", ADMIT, Reason.REGISTERED, "2026-11-28T09:00:00Z")])
    total, page = await store.not_arrived("s1")
    assert total == 5 and [a.code for a in page] == ["A1", "A2", "A3", "A4", "A5"]
    assert page[0] == Attendee("A1", "Person 1", "p1@example.org")
    total, page = await store.not_arrived("s1", limit=2, offset=2)
    assert total == 5 and [a.code for a in page] == ["A3", "A4"]
    assert (await store.not_arrived("s1", "PERSON 4"))[0] == 1
    assert (await store.not_arrived("s1", "p5@"))[1][0].code == "A5"
    assert (await store.not_arrived("s1", "%"))[0] == 0
    await store.remove_registrants("s1", ["A5"])
    assert (await store.not_arrived("s1"))[0] == 4
    assert await store.not_arrived("s2") == (0, [])
    with pytest.raises(NotFound):
        await store.not_arrived("nope")


async def test_door_overview(store: ServerStore) -> None:
    await store.put_device("door-b", "s1")
    await store.put_device("door-a", "s2")
    await store.put_device("door-c", "s2")
    await store.revoke_device("door-c")
    assert await store.door_overview() == [
        {"device_id": d, "session_id": s, "revoked": d == "door-c", "last_seen_at": None,
         "software": None, "scans_waiting": None, "scans_quarantined": None,
         "last_frame_at": None, "clock_offset_s": None, "status_seconds": None}
        for d, s in (("door-a", "s2"), ("door-b", "s1"), ("door-c", "s2"))]
    received = datetime.now(UTC)
    sent = (received - timedelta(seconds=3)).isoformat()
    await store.note_status("door-b", status_record(
        _status(sent_at=sent, status_seconds=2.0), received))
    await store.note_status("door-a", status_record(_status(), received))  # an older door
    a, b, _ = await store.door_overview()
    assert b["software"] == "1.0" and b["scans_waiting"] == 2 and b["scans_quarantined"] == 0
    assert b["clock_offset_s"] == -3.0 and b["status_seconds"] == 2.0
    assert b["last_seen_at"] is not None
    assert a["scans_waiting"] == 2 and a["clock_offset_s"] is None
    assert a["status_seconds"] is None


async def test_live_queries_use_indexes_at_event_scale(tmp_path: Path) -> None:
    """50,000 registrants and 100,000 scans: the queries look scans up by index, never
    read the table once per registrant."""
    store = await ServerStore.open(tmp_path)
    try:
        codes = [f"C{i:05d}" for i in range(50_000)]
        await store.upsert_attendees([Attendee(c, f"Name {c}") for c in codes])
        await store.put_session(SessionInfo("big", "Plenary", True))
        await store.put_registrants("big", codes)
        base = datetime(2026, 11, 28, 8, 0, tzinfo=UTC)
        for start in range(0, 100_000, 1000):
            await store.store_scans(Device("door-1", "big"), [
                _scan(n, codes[(n * 7) % 40_000], "big",
                      ADMIT if n % 5 else REJECT,
                      Reason.REGISTERED if n % 5 else Reason.OUTSIDE_WINDOW,
                      (base + timedelta(seconds=n // 10)).isoformat())
                for n in range(start, start + 1000)])
        live = await store.attendance_live("big")
        assert live["scans"] == 100_000 and live["rejected"] == 20_000
        assert live["admitted"] + live["not_arrived"] == 50_000
        assert live["not_arrived"] >= 10_000
        total, page = await store.not_arrived("big", limit=50)
        assert total == live["not_arrived"] and len(page) == 50
        async with store._read() as db:
            for sql in ("SELECT 1 FROM registrants AS r WHERE r.session_id = 'big' AND"
                        " NOT EXISTS (SELECT 1 FROM scans AS c WHERE c.session_id = 'big'"
                        " AND c.code = r.code AND c.decision = 'admitted')",):
                plan = " | ".join(r["detail"] for r in await db.fetchall(
                    f"EXPLAIN QUERY PLAN {sql}"))
                assert "USING COVERING INDEX scans_session_code" in plan, plan
    finally:
        await store.close()


def test_a_real_daemon_reports_its_clock_and_interval(tmp_path: Path, server, devices) -> None:
    """A real ``checkin sync`` fills the new status fields; the server keeps its offset."""
    from tests.system import Device as Door
    from tests.system import wait_for

    server.api("PUT", "/api/sessions/s1", {"name": "Talk", "validate_registrants": False},
               expect=201)
    door = Door(tmp_path / "door-1", "door-1", server.sync_url)
    door.token_file.write_text(server.provision("door-1", "s1") + "\n")
    devices.append(door)
    door.start_sync()

    def status() -> dict | None:
        return server.api("GET", "/api/devices", expect=200)[0]["status"]

    wait_for(lambda: (status() or {}).get("sent_at") is not None, what="a status with sent_at")
    found = status()
    assert found is not None and found["status_seconds"] == 1.0
    # the same machine's clock: off by the time the status took to arrive, no more
    assert abs(found["clock_offset_s"]) < 5
