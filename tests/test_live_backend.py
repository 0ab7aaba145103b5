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
from server.store import Attendee, ServerStore
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


# -- the store's live numbers -------------------------------------------------------------

_BOOT = "boot-1"


def _scan(n: int, code: str, session: str | None, decision: str, reason: str,
          at: str, device: str = "door-1") -> Scan:
    return Scan(scan_id=f"{device}-{n}", seq=n, code=code, session_id=session,
                decision=decision, reason=reason, scanned_at=at, monotonic_ns=n,
                boot_id=_BOOT)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[ServerStore]:
    store = await ServerStore.open(tmp_path)
    await store.upsert_attendees([Attendee(f"A{i}", f"Person {i}", f"p{i}@example.org")
                                  for i in range(10)] + [Attendee("ZZ", "=HYPERLINK(1)")])
    await store.put_session(SessionInfo("s1", "Keynote", True))
    await store.put_session(SessionInfo("s2", "Workshop", False))
    await store.put_registrants("s1", [f"A{i}" for i in range(6)])
    yield store
    await store.close()


# -- the publish calls: a door's connection, status and scans; the API's changes --------


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_doors_and_the_api_publish_what_changed(tmp_path: Path) -> None:
    from starlette.testclient import TestClient

    from server.app import create_app
    from sync.device_end import CacheState, DeviceEnd, RecordResults

    app = create_app(tmp_path, "admin-token")
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
