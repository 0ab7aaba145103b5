"""The server's side of issue 17 on each storage: the event's code key, revoked tokens
(4004, not 4001), and re-timing scans whose door did not know the time."""

from __future__ import annotations

import asyncio
import json
import re
import uuid

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from server.database import database_url, open_database
from server.schema import MIGRATIONS_BY_KIND
from server.store import Device, NotFound, ServerStore
from sync.messages import SessionInfo, code_key_id
from tests.system import Server

HEX64 = re.compile(r"[0-9a-f]{64}")


@pytest.fixture
async def store(server_target):
    store = await ServerStore.open(server_target)
    await store.put_session(SessionInfo("s1", "One", True))
    yield store
    await store.close()


# -- the code key ----------------------------------------------------------------------


async def test_a_new_database_has_a_code_key_renewed_with_the_epoch(store) -> None:
    view = await store.view(Device("door-1", "s1"))
    assert HEX64.fullmatch(view.code_key or "")
    assert view.key_id == code_key_id(bytes.fromhex(view.code_key))
    again = await store.view(Device("door-1", "s1"))
    assert again.code_key == view.code_key  # kept, not made per read
    epoch = await store.renew_epoch()
    renewed = await store.view(Device("door-1", "s1"))
    assert renewed.epoch == epoch != view.epoch
    assert HEX64.fullmatch(renewed.code_key or "") and renewed.code_key != view.code_key


async def test_two_databases_have_different_keys(server_targets) -> None:
    keys = []
    for name in ("a", "b"):
        store = await ServerStore.open(server_targets(name))
        keys.append((await store.view(Device("d", None))).code_key)
        await store.close()
    assert keys[0] != keys[1]


async def test_migrating_a_database_of_the_previous_version_gives_it_a_key(
        storage, server_target) -> None:
    url = database_url(server_target) if storage == "sqlite" else server_target
    older = {kind: migrations[:-1] for kind, migrations in MIGRATIONS_BY_KIND.items()}
    database = await open_database(url, older)
    async with database.write() as db:
        await db.execute("INSERT INTO devices (device_id, session_id, token_hash, created_at)"
                         " VALUES ('door-1', NULL, 'h', '2026-11-28T10:00:00.000Z')")
        await db.execute(
            "INSERT INTO scans (scan_id, device_id, device_seq, session_id, code, decision,"
            " reason, scanned_at, monotonic_ns, boot_id, received_at)"
            " VALUES ('old-1', 'door-1', 1, NULL, 'A1', 'rejected', 'not_ready',"
            " '2026-11-28T10:00:00+00:00', 5, 'boot', '2026-11-28T10:00:01.000Z')")
    await database.close()
    store = await ServerStore.open(server_target)
    try:
        view = await store.view(Device("door-1", None))
        assert HEX64.fullmatch(view.code_key or "")
        async with store.database.read() as db:
            row = await db.fetchone("SELECT time_source, time_corrected, device_scanned_at"
                                    " FROM scans WHERE scan_id = 'old-1'")
        assert row == {"time_source": "system", "time_corrected": None,
                       "device_scanned_at": None}
    finally:
        await store.close()


# -- revoked tokens ----------------------------------------------------------------------


async def test_a_revoked_token_is_remembered_and_a_new_one_is_given_on_provisioning(
        store) -> None:
    first, _ = await store.put_device("door-1", "s1")
    assert first and not await store.token_revoked(first)
    await store.revoke_device("door-1")
    assert await store.device_by_token(first) is None
    assert await store.token_revoked(first)
    assert not await store.token_revoked("a-typo")  # unknown is not revoked
    with pytest.raises(NotFound):
        await store.revoke_device("door-1")  # nothing valid left to revoke

    second, _ = await store.put_device("door-1", "s1")  # provisioned again
    assert second and second != first
    assert await store.device_by_token(second) == Device("door-1", "s1")
    assert await store.token_revoked(first) and not await store.token_revoked(second)
    await store.revoke_device("door-1")
    assert await store.token_revoked(first) and await store.token_revoked(second)
    devices = {d["device_id"]: d for d in await store.devices()}
    assert devices["door-1"]["revoked_at"] is not None


# -- on a real server ------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory, module_database):
    server = Server(tmp_path_factory.mktemp("field") / "server",
                    database=module_database).start()
    server.api("PUT", "/api/sessions/s1", {"name": "One", "validate_registrants": True})
    server.api("POST", "/api/attendees", [{"code": "A1", "name": "Ann"}])
    server.api("PUT", "/api/sessions/s1/registrants/A1", expect=None)
    yield server
    server.kill()


def provision(server: Server) -> tuple[str, str]:
    device_id = f"door-{uuid.uuid4().hex[:8]}"
    return device_id, server.provision(device_id, "s1")


def open_ws(server: Server, token: str):
    return connect(server.sync_url, additional_headers={"Authorization": f"Bearer {token}"})


async def closed_with(websocket) -> tuple[int, str]:
    with pytest.raises(ConnectionClosed):
        while True:
            await asyncio.wait_for(websocket.recv(), 10)
    return websocket.close_code, websocket.close_reason


def hello(device_id: str, **fields) -> str:
    return json.dumps({"type": "hello", "v": 1, "device_id": device_id, "software": "test",
                       "session_id": None, "epoch": None, "cursor": 0, **fields})


async def welcome(websocket, device_id: str, **fields) -> dict:
    await websocket.send(hello(device_id, **fields))
    answer = json.loads(await asyncio.wait_for(websocket.recv(), 10))
    assert answer["type"] == "welcome"
    return answer


async def test_a_revoked_token_is_closed_with_4004_and_an_unknown_one_with_4001(
        server) -> None:
    device_id, token = provision(server)
    async with open_ws(server, token) as websocket:
        await welcome(websocket, device_id)
        server.api("DELETE", f"/api/devices/{device_id}", expect=204)
        assert await closed_with(websocket) == (4004, "device revoked")  # while connected
    async with open_ws(server, token) as websocket:
        assert await closed_with(websocket) == (4004, "device revoked")  # and at connection
    async with open_ws(server, token + "x") as websocket:
        assert await closed_with(websocket) == (4001, "unknown device token")  # a typo
    new = server.provision(device_id, "s1")  # provisioned again: a new token works
    assert new != token
    async with open_ws(server, new) as websocket:
        await welcome(websocket, device_id)
    async with open_ws(server, token) as websocket:  # the old one stays revoked
        assert (await closed_with(websocket))[0] == 4004


async def test_a_hashing_door_gets_the_key_and_a_snapshot_unless_its_key_is_the_servers(
        server) -> None:
    device_id, token = provision(server)
    async with open_ws(server, token) as websocket:  # an older door: no key
        older = await welcome(websocket, device_id)
    assert "code_key" not in older
    async with open_ws(server, token) as websocket:
        first = await welcome(websocket, device_id, hashes=True)
    key = first["code_key"]
    assert HEX64.fullmatch(key) and first["resync"] is True
    cursor = first["cursor"]
    async with open_ws(server, token) as websocket:  # in sync, with the server's key
        same = await welcome(websocket, device_id, hashes=True, session_id="s1",
                             epoch=first["epoch"], cursor=cursor,
                             key_id=code_key_id(bytes.fromhex(key)))
    assert same["code_key"] == key and same["resync"] is False
    async with open_ws(server, token) as websocket:  # in sync, but hashed with another key
        other = await welcome(websocket, device_id, hashes=True, session_id="s1",
                              epoch=first["epoch"], cursor=cursor, key_id="0" * 16)
    assert other["code_key"] == key and other["resync"] is True
