"""The ``/sync`` websocket of a real ``checkin server``, spoken to by a test client.

Each bad input closes that one connection with a close code the daemon
understands; a well-behaved device connected beside it keeps being served.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from datetime import UTC, datetime

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from sync.device_end import ApplyChanges, ApplySnapshot, CacheState, DeviceEnd
from sync.messages import Scan
from tests.system import Server, SyncClient


@pytest.fixture(scope="module")
def server(tmp_path_factory, module_database):
    server = Server(tmp_path_factory.mktemp("ws") / "server", database=module_database).start()
    server.api("PUT", "/api/sessions/s1", {"name": "One", "validate_registrants": True})
    server.api("PUT", "/api/sessions/s2", {"name": "Two", "validate_registrants": False})
    server.api("POST", "/api/attendees", [{"code": "A1", "name": "Ann"}])
    yield server
    server.kill()


def device(server: Server, session: str = "s1") -> tuple[str, str]:
    device_id = f"door-{uuid.uuid4().hex[:8]}"
    return device_id, server.provision(device_id, session)


def open_ws(server: Server, token: str | None, **kwargs):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return connect(server.sync_url, additional_headers=headers, **kwargs)


async def closed_with(websocket) -> tuple[int, str]:
    with pytest.raises(ConnectionClosed):
        while True:
            await asyncio.wait_for(websocket.recv(), 10)
    return websocket.close_code, websocket.close_reason


def scan(session: str | None = "s1", scan_id: str | None = None) -> Scan:
    return Scan(scan_id or str(uuid.uuid4()), 1, "A1", session, "admitted", "registered",
                datetime.now(UTC).isoformat(), 1, "boot")


@pytest.mark.parametrize("token", [None, "wrong-token"])
async def test_without_a_valid_token_the_connection_is_closed_with_4001(server, token) -> None:
    async with open_ws(server, token) as websocket:
        code, reason = await closed_with(websocket)
    assert code == 4001 and "token" in reason


@pytest.mark.parametrize(("frame", "words"), [
    ("{not json", "not valid JSON"),
    (b"\x00\x01binary", "binary frame"),
    (json.dumps({"type": "launch"}), "unknown message type"),
    (json.dumps({"type": "scans", "batch": 1, "scans": []}), "before hello"),
    (json.dumps({"type": "hello", "v": 1, "device_id": 7}), "device_id"),
    (json.dumps([1, 2]), "JSON object"),
    ("[" * 10_000 + "]" * 10_000, "not valid JSON"),
])
async def test_a_malformed_frame_closes_that_connection_with_a_protocol_error(
        server, frame, words) -> None:
    _, token = device(server)
    async with open_ws(server, token) as websocket:
        await websocket.send(frame)
        code, reason = await closed_with(websocket)
    assert code == 1002 and words in reason


async def test_hello_naming_another_device_is_refused(server) -> None:
    _, token = device(server)
    other, _ = device(server)
    async with open_ws(server, token) as websocket:
        await websocket.send(json.dumps({"type": "hello", "v": 1, "device_id": other,
                                         "software": "x", "session_id": None, "epoch": None,
                                         "cursor": 0}))
        code, reason = await closed_with(websocket)
    assert code == 1002 and "token" in reason


async def test_an_oversized_frame_closes_with_1009(server) -> None:
    _, token = device(server)
    async with open_ws(server, token, max_size=None) as websocket:
        await websocket.send("x" * (2 << 20))
        code, _ = await closed_with(websocket)
    assert code == 1009


async def test_scans_are_idempotent_and_bound_to_their_device_and_session(server) -> None:
    device_id, token = device(server)
    thief_id, thief_token = device(server)
    mine = scan()
    async with open_ws(server, token) as ws, open_ws(server, thief_token) as thief_ws:
        client, thief = SyncClient(ws, device_id), SyncClient(thief_ws, thief_id)
        await client.until(ApplySnapshot)
        await thief.until(ApplySnapshot)
        first = await client.push(mine)
        assert [r.result for r in first.results] == ["accepted"]
        again = await client.push(mine)  # a retry after a lost answer
        assert [r.result for r in again.results] == ["duplicate"]
        replayed = await thief.push(mine)  # another device replays the id
        assert replayed.results[0].result == "refused"
        assert "another device" in replayed.results[0].reason
        foreign = await client.push(scan("s2"))  # a session it is not assigned to
        assert foreign.results[0].result == "refused" and "'s2'" in foreign.results[0].reason
        unassigned = await client.push(scan(None))  # decided not_ready before any sync: a fact
        assert unassigned.results[0].result == "accepted"
    stored = server.attendance("s1")["scans"]
    assert [(s["scan_id"], s["device_id"]) for s in stored] == [(mine.scan_id, device_id)]
    assert server.attendance("s2")["scans"] == []


async def test_a_second_connection_of_a_device_replaces_the_first(server) -> None:
    device_id, token = device(server)
    async with open_ws(server, token) as old, open_ws(server, token) as new:
        code, reason = await closed_with(old)
        assert code == 4003 and "newer connection" in reason
        client = SyncClient(new, device_id)
        await client.until(ApplySnapshot)
        result = await client.push(scan())
        assert result.results[0].result == "accepted"


async def test_bad_peers_do_not_disturb_a_connected_device(server) -> None:
    device_id, token = device(server)
    async with open_ws(server, token) as websocket:
        good = SyncClient(websocket, device_id)
        await good.until(ApplySnapshot)
        for _ in range(20):  # a flood of bad connections
            async with open_ws(server, "wrong") as bad:
                await closed_with(bad)
        _, other_token = device(server)
        async with open_ws(server, other_token) as bad:
            await bad.send("garbage")
            await closed_with(bad)
        server.api("PUT", "/api/sessions/s1/registrants/A1", expect=201)
        change = await good.until(ApplyChanges)
        assert [(c.kind, c.code, c.deleted) for c in change.changes] == [
            ("registrant", "A1", False)]
    server.api("DELETE", "/api/sessions/s1/registrants/A1", expect=204)


async def test_an_admission_at_one_door_reaches_the_sessions_other_doors(server) -> None:
    """Issue 14: doors whose hello asks for admissions hear of each other's at once (the
    hub's fan-out after the scans are stored); an older door is sent none; the hello's
    allow_reentry lets the audit flag an admission another door's earlier one refuses."""
    session = f"s-{uuid.uuid4().hex[:8]}"
    server.api("PUT", f"/api/sessions/{session}", {"name": "Doors", "validate_registrants":
                                                    False, "capacity": 1})
    (one_id, one_token), (two_id, two_token), (old_id, old_token) = (
        device(server, session) for _ in range(3))
    async with (open_ws(server, one_token) as ws1, open_ws(server, two_token) as ws2,
                open_ws(server, old_token) as ws3):
        one, two, old = SyncClient(ws1, one_id), SyncClient(ws2, two_id), SyncClient(ws3, old_id)
        for client in (one, two):
            client.end = DeviceEnd(client.end.device_id, "test", CacheState(None, None, 0),
                                   admissions=True, allow_reentry=False)
        for client in (one, two, old):
            snapshot = await client.until(ApplySnapshot)
            assert snapshot.session is not None and snapshot.session.capacity == 1
        first = scan(session)
        await one.push(first)
        change = await two.until(ApplyChanges, timeout=5)
        assert [(c.kind, c.code, c.inside) for c in change.changes] == [("admission", "A1",
                                                                        True)]
        # Door two, offline before, uploads its own earlier admission of A1.
        earlier = Scan(str(uuid.uuid4()), 1, "A1", session, "admitted", "registered",
                       "2020-01-01T00:00:00+00:00", 1, "boot")
        await two.push(earlier)
        await old.flush()
        with contextlib.suppress(TimeoutError):
            while True:  # the older door may hear that the cursor moved, never admissions
                changed = await old.until(ApplyChanges, timeout=1)
                assert all(c.kind != "admission" for c in changed.changes)
    attendance = server.attendance(session)
    assert attendance["double_admissions"] == [first.scan_id]
    assert attendance["inside"] == 1 and attendance["over_capacity"] == []


def test_the_hub_wakes_only_the_doors_that_apply_admissions_for_an_admission() -> None:
    """Who is inside changed: only the session's doors that apply admissions are woken (an
    older door would read the change stream for nothing); other changes wake them all."""
    from server.hub import Hub

    class Link:
        def __init__(self, device_id: str, session_id: str, wants: bool) -> None:
            self.device_id, self.session_id, self.wants_admissions = device_id, session_id, wants
            self.woken = 0

        def changed(self) -> None:
            self.woken += 1

        async def close(self, code: int, reason: str) -> None:
            pass

    hub = Hub()
    links = [Link("new", "s1", True), Link("old", "s1", False), Link("other", "s2", True)]
    for link in links:
        asyncio.run(hub.attach(link, replaced_code=4003))
    hub.changed("s1", admissions=True)
    assert [link.woken for link in links] == [1, 0, 0]
    hub.changed("s1")
    assert [link.woken for link in links] == [2, 1, 0]
