"""The news between server processes on one database: the hub's events and the live
pages' topics (server/relay.py, server/hub.py), with a fake database in between."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from core.database import StoreError
from server import relay as relay_module
from server.hub import REMOTE_SECONDS, Hub
from server.live import CHANGED, Live
from server.relay import MAX_PAYLOAD, Relay, payloads


class Link:
    def __init__(self, device_id: str, session_id: str | None = "s1",
                 wants_admissions: bool = True) -> None:
        self.device_id, self.session_id = device_id, session_id
        self.wants_admissions = wants_admissions
        self.woken = 0
        self.closed: tuple[int, str] | None = None

    def changed(self) -> None:
        self.woken += 1

    async def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)


class Database:
    """Delivers every published payload to every process's relay, as NOTIFY does (the
    sender's own included); can be made to refuse."""

    def __init__(self) -> None:
        self.relays: list[Relay] = []
        self.refusing = False
        self.sent: list[dict[str, Any]] = []

    async def publish(self, payload: dict[str, Any]) -> None:
        if self.refusing:
            raise StoreError("database gone")
        assert len(json.dumps(payload)) <= MAX_PAYLOAD
        self.sent.append(payload)
        for relay in self.relays:
            relay.heard(json.loads(json.dumps(payload)))

    def process(self, origin: str) -> Relay:
        relay = Relay(self.publish, origin, Live())
        self.relays.append(relay)
        relay.start()
        return relay


async def settle(*relays: Relay) -> None:
    """Let the relays send and act on what is waiting."""
    for _ in range(20):
        await asyncio.sleep(0)
    await asyncio.sleep(relay_module.LIVE_SECONDS * 1.5)
    for _ in range(20):
        await asyncio.sleep(0)


@pytest.fixture
def database() -> Database:
    return Database()


async def test_a_device_revoked_through_one_process_is_closed_by_the_process_holding_it(
        database) -> None:
    one, two = database.process("one"), database.process("two")
    door = Link("door-1")
    await two.hub.attach(door, replaced_code=4003)
    await settle(one, two)
    assert "door-1" in one.hub.connected() and "door-1" not in one.hub.local()
    await one.hub.disconnect("door-1", 4001, "device token revoked")
    await settle(one, two)
    assert door.closed == (4001, "device token revoked")
    two.hub.detach(door)
    await settle(one, two)
    assert "door-1" not in one.hub.connected()
    await one.close(), await two.close()


async def test_a_device_connecting_to_another_process_closes_its_stale_link(database) -> None:
    one, two = database.process("one"), database.process("two")
    stale, fresh = Link("door-1"), Link("door-1")
    await one.hub.attach(stale, replaced_code=4003)
    await two.hub.attach(fresh, replaced_code=4003)
    await settle(one, two)
    assert stale.closed is not None and stale.closed[0] == 4003
    assert fresh.closed is None
    await one.close(), await two.close()


async def test_a_session_created_again_closes_its_doors_in_every_process(database) -> None:
    one, two = database.process("one"), database.process("two")
    here, there, elsewhere = Link("a", "s1"), Link("b", "s1"), Link("c", "s2")
    await one.hub.attach(here, replaced_code=4003)
    await two.hub.attach(there, replaced_code=4003)
    await two.hub.attach(elsewhere, replaced_code=4003)
    await one.hub.session_saved("s1", created=True, code=4003)
    await settle(one, two)
    assert here.closed and there.closed and elsewhere.closed is None
    await one.close(), await two.close()


async def test_data_another_process_committed_wakes_the_doors_it_concerns(database) -> None:
    one = database.process("one")
    s1, s2, old = Link("a", "s1"), Link("b", "s2"), Link("c", "s1", wants_admissions=False)
    for link in (s1, s2, old):
        await one.hub.attach(link, replaced_code=4003)
    one.heard({"origin": "two", "seq": 7, "session": "s1", "admissions": True})
    assert (s1.woken, s2.woken, old.woken) == (1, 0, 0)
    one.heard({"origin": "two", "seq": 8, "session": None, "admissions": False})
    assert (s1.woken, s2.woken, old.woken) == (2, 1, 1)
    one.heard({"origin": "one", "seq": 9, "session": None, "admissions": False})  # its own
    assert (s1.woken, s2.woken, old.woken) == (2, 1, 1)
    await one.close()


async def test_a_resync_wakes_every_door_and_page_and_repeats_what_it_holds(database) -> None:
    one, two = database.process("one"), database.process("two")
    door = Link("door-1")
    await one.hub.attach(door, replaced_code=4003)
    page = one.live.subscribe()
    one.heard({"resync": True})
    assert door.woken == 1 and await page.get() == CHANGED
    await settle(one, two)
    assert "door-1" in two.hub.connected()
    await one.close(), await two.close()


async def test_live_topics_reach_the_other_processes_pages_gathered(database) -> None:
    one, two = database.process("one"), database.process("two")
    page = two.live.subscribe()
    for _ in range(50):
        one.live.publish("session:s1", "doors")
    await settle(one, two)
    assert await page.get_all() == {"session:s1", "doors"}
    assert sum(1 for p in database.sent for e in p["events"] if e["event"] == "live") == 1
    many = tuple(f"session:{i}" for i in range(500))
    one.live.publish(*many)
    await settle(one, two)
    assert await page.get_all() == {CHANGED}
    await one.close(), await two.close()


async def test_a_device_another_process_held_expires_unless_repeated() -> None:
    now = [0.0]
    hub = Hub(clock=lambda: now[0])
    await hub.receive({"event": "holding", "devices": ["a", "b"]})
    assert hub.connected() == {"a", "b"}
    now[0] += REMOTE_SECONDS - 1
    await hub.receive({"event": "holding", "devices": ["a"]})
    now[0] += 2
    assert hub.connected() == {"a"}


async def test_a_stale_link_closed_in_one_process_leaves_the_device_held_by_another(
        database) -> None:
    one, two, three = (database.process(name) for name in ("one", "two", "three"))
    stale, fresh = Link("door-1"), Link("door-1")
    await one.hub.attach(stale, replaced_code=4003)
    await settle(one, two, three)
    await two.hub.attach(fresh, replaced_code=4003)
    await settle(one, two, three)
    one.hub.detach(stale)  # closed as stale: its "detached" reaches the others
    await settle(one, two, three)
    assert "door-1" in three.hub.connected() and "door-1" in one.hub.connected()
    await one.close(), await two.close(), await three.close()


@pytest.mark.parametrize("event", [
    {"event": "disconnect", "devices": ["a"]},  # no code
    {"event": "disconnect", "devices": ["a"], "code": "x", "reason": "r"},
    {"event": "disconnect_session"},
    {"event": "attached", "devices": "a"},
    {"event": "from-the-future"},
    {},
])
async def test_malformed_or_unknown_events_are_ignored(event) -> None:
    hub = Hub()
    link = Link("a")
    await hub.attach(link, replaced_code=4003)
    await hub.receive(event)
    assert link.closed is None and hub.connected() == {"a"}


def test_payloads_fit_a_notification_and_keep_the_order() -> None:
    events = [{"event": "live", "topics": [f"session:{i}"]} for i in range(400)]
    events.insert(200, {"event": "holding", "devices": [f"door-{i:05d}" for i in range(3000)]})
    sent = list(payloads("p" * 16, events))
    assert len(sent) > 1
    assert all(len(json.dumps(p)) <= MAX_PAYLOAD for p in sent)
    flat = [e for p in sent for e in p["events"]]
    assert [e["topics"] for e in flat if e["event"] == "live"] == [e["topics"] for e in
                                                                   events if "topics" in e]
    assert [d for e in flat if e["event"] == "holding" for d in e["devices"]] == \
        [f"door-{i:05d}" for i in range(3000)]


def test_an_event_too_large_to_send_is_dropped_not_retried_forever() -> None:
    assert list(payloads("p", [{"event": "live", "topics": ["x" * MAX_PAYLOAD]}])) == []


async def test_events_wait_while_the_database_refuses_and_go_when_it_answers(
        database, monkeypatch) -> None:
    monkeypatch.setattr(relay_module, "RETRY_SECONDS", 0.05)
    one, two = database.process("one"), database.process("two")
    database.refusing = True
    await one.hub.attach(Link("door-1"), replaced_code=4003)
    await settle(one, two)
    assert "door-1" not in two.hub.connected()
    database.refusing = False
    await settle(one, two)
    assert "door-1" in two.hub.connected()
    await one.close(), await two.close()


async def test_waiting_events_are_bounded(monkeypatch) -> None:
    monkeypatch.setattr(relay_module, "MAX_WAITING", 10)
    relay = Relay(lambda payload: asyncio.sleep(0), "one", Live())  # never started
    for i in range(25):
        relay.tell({"event": "detached", "devices": [str(i)]})
    assert relay.dropped == 15
