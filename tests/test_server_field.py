"""The server's side of issue 17 on each storage: the event's code key, revoked tokens
(4004, not 4001), and re-timing scans whose door did not know the time."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from server.database import database_url, open_database
from server.schema import MIGRATIONS_BY_KIND
from server.store import Attendee, Device, NotFound, ServerStore
from sync.messages import Scan, Scans, SessionInfo, code_key_id, encode
from sync.server_end import ClockAnchor
from tests.system import Server

HEX64 = re.compile(r"[0-9a-f]{64}")
#: What a stored scan says of its time.
TIMING = ("scanned_at", "device_scanned_at", "time_source", "time_corrected")


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


# -- re-timing scans whose door did not know the time ----------------------------------

HELLO_AT = datetime(2026, 11, 28, 10, 0, 0, 250_000, tzinfo=timezone(timedelta(hours=1)))
#: A door three days behind, 500 s after its boot when it said hello.
BEHIND = "2026-11-25T08:59:00+00:00"
SECOND = 10**9


def field_scan(code: str, *, source: str | None = "unknown", mono: int = 440 * SECOND,
               boot: str = "boot-a", at: str = BEHIND, decision: str = "admitted",
               reason: str = "registered") -> Scan:
    return Scan(str(uuid.uuid4()), 1, code, "s1", decision, reason, at, mono, boot,
                time_source=source)


async def scans_by_id(store: ServerStore) -> dict[str, dict]:
    return {s["scan_id"]: s for s in (await store.attendance("s1"))["scans"]}


@pytest.fixture
async def door(store) -> Device:
    await store.upsert_attendees([Attendee(c, c) for c in ("A1", "B2", "C3")])
    await store.put_registrants("s1", ["A1", "B2", "C3"])
    await store.put_device("door-1", "s1")
    return Device("door-1", "s1")


async def test_unknown_times_are_re_timed_from_the_connections_anchor(store, door) -> None:
    anchor = ClockAnchor("boot-a", 500 * SECOND, HELLO_AT)
    before, after = field_scan("A1"), field_scan("B2", mono=560 * SECOND)
    other_boot = field_scan("C3", boot="boot-b")
    results = await store.store_scans(door, [before, after, other_boot], anchor)
    assert [r.result for r in results] == ["accepted"] * 3
    scans = await scans_by_id(store)
    assert {k: scans[before.scan_id][k] for k in TIMING} == {
        "scanned_at": "2026-11-28T08:59:00.250+00:00", "device_scanned_at": BEHIND,
        "time_source": "unknown", "time_corrected": "reconstructed"}
    assert scans[after.scan_id]["scanned_at"] == "2026-11-28T09:01:00.250+00:00"
    assert {k: scans[other_boot.scan_id][k] for k in TIMING} == {
        "scanned_at": BEHIND, "device_scanned_at": None, "time_source": "unknown",
        "time_corrected": "unknown"}
    # Three days off, yet no clock flag: the door said it did not know the time.
    assert all(s["clock_flag"] is None for s in scans.values())
    attendance = await store.attendance("s1")
    assert (attendance["times_reconstructed"], attendance["times_unknown"]) == (2, 1)


async def test_a_later_hello_of_the_boot_re_times_what_was_flagged(store, door) -> None:
    offline = [field_scan("A1"), field_scan("B2", mono=450 * SECOND, reason="registered")]
    other = field_scan("C3", boot="boot-b")
    await store.store_scans(door, [*offline, other])  # pushed with no anchor at all
    assert {s["time_corrected"] for s in (await scans_by_id(store)).values()} == {"unknown"}
    # Nothing to re-time for a boot without unknown scans; the anchor is kept all the same.
    assert await store.note_hello("door-1", None, ClockAnchor("boot-c", 5, HELLO_AT)) == set()
    assert await store.note_hello("door-1", None,
                                  ClockAnchor("boot-a", 500 * SECOND, HELLO_AT)) == {"s1"}
    scans = await scans_by_id(store)
    assert [scans[s.scan_id]["scanned_at"] for s in offline] == [
        "2026-11-28T08:59:00.250+00:00", "2026-11-28T08:59:10.250+00:00"]
    assert {scans[s.scan_id]["time_corrected"] for s in offline} == {"reconstructed"}
    assert {scans[s.scan_id]["device_scanned_at"] for s in offline} == {BEHIND}
    assert scans[other.scan_id]["time_corrected"] == "unknown"
    # Once reconstructed, a later anchor of the boot changes nothing.
    assert await store.note_hello("door-1", True,
                                  ClockAnchor("boot-a", 900 * SECOND, HELLO_AT)) == set()
    assert (await scans_by_id(store))[offline[0].scan_id]["scanned_at"] == \
        "2026-11-28T08:59:00.250+00:00"
    attendance = await store.attendance("s1")
    assert (attendance["times_reconstructed"], attendance["times_unknown"]) == (2, 1)
    # Attendance and exports use the corrected times.
    page = await store.attendance_export_page("s1")
    first = {r["code"]: r for r in page}["A1"]
    assert (first["first_admitted_at"], first["time_source"], first["time_corrected"],
            first["device_scanned_at"]) == ("2026-11-28T08:59:00.250+00:00", "unknown",
                                            "reconstructed", BEHIND)
    _, log = await store.scans_export_page("s1")
    assert {r["scan_id"]: (r["scanned_at"], r["time_corrected"]) for r in log}[
        offline[1].scan_id] == ("2026-11-28T08:59:10.250+00:00", "reconstructed")


async def test_a_stored_anchor_re_times_a_later_batch_of_the_boot(store, door) -> None:
    await store.note_hello("door-1", None, ClockAnchor("boot-a", 500 * SECOND, HELLO_AT))
    late = field_scan("A1")
    await store.store_scans(door, [late])  # another connection, without the hello's anchor
    assert (await scans_by_id(store))[late.scan_id]["scanned_at"] == \
        "2026-11-28T08:59:00.250+00:00"
    # Another device's anchor of a boot with the same id is not this device's.
    await store.put_device("door-2", "s1")
    theirs = field_scan("B2")
    await store.store_scans(Device("door-2", "s1"), [theirs])
    assert (await scans_by_id(store))[theirs.scan_id]["time_corrected"] == "unknown"


async def test_system_and_server_times_are_kept_and_only_system_ones_judged(store,
                                                                           door) -> None:
    anchor = ClockAnchor("boot-a", 500 * SECOND, HELLO_AT)
    system = field_scan("A1", source=None, mono=560 * SECOND)  # made online, 3 days off
    server = field_scan("B2", source="server", mono=560 * SECOND)
    await store.store_scans(door, [system, server], anchor)
    scans = await scans_by_id(store)
    assert {k: scans[system.scan_id][k] for k in TIMING} == {
        "scanned_at": BEHIND, "device_scanned_at": None, "time_source": "system",
        "time_corrected": None}
    assert "behind the server's" in scans[system.scan_id]["clock_flag"]
    assert {k: scans[server.scan_id][k] for k in TIMING} == {
        "scanned_at": BEHIND, "device_scanned_at": None, "time_source": "server",
        "time_corrected": None}
    assert scans[server.scan_id]["clock_flag"] is None
    attendance = await store.attendance("s1")
    assert (attendance["times_reconstructed"], attendance["times_unknown"]) == (0, 0)


async def test_presence_follows_the_corrected_times(store, door) -> None:
    """An exit made online after an admission whose door did not know the time (its
    wall time three days behind, later by text than nothing): the admission, re-timed
    before the exit, leaves the attendee out."""
    anchor = ClockAnchor("boot-a", 500 * SECOND, HELLO_AT)
    entry = field_scan("A1", at="2026-12-30T00:00:00+00:00")  # a wall clock far ahead
    exit_ = Scan(str(uuid.uuid4()), 2, "A1", "s1", "admitted", "registered",
                 "2026-11-28T09:05:00+00:00", 800 * SECOND, "boot-a", direction="out")
    await store.store_scans(door, [exit_], anchor)
    await store.store_scans(door, [entry], anchor)
    assert (await store.attendance("s1"))["inside"] == 0


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
    # The doctor's question says so too.
    revoked = server.client.get("/api/device", headers={"Authorization": f"Bearer {token}"})
    assert revoked.status_code == 401 and "device token revoked" in revoked.text
    typo = server.client.get("/api/device", headers={"Authorization": f"Bearer {token}x"})
    assert typo.status_code == 401 and "device token revoked" not in typo.text
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


def scan_frame(batch: int, *scans: Scan) -> str:
    return encode(Scans(batch=batch, scans=list(scans)))


async def answer(websocket, kind: str) -> dict:
    """The next frame of *kind* (snapshot and changes frames are passed over)."""
    while True:
        frame = json.loads(await asyncio.wait_for(websocket.recv(), 10))
        if frame["type"] == kind:
            return frame


async def test_a_door_that_booted_offline_has_its_scans_re_timed_by_a_real_server(
        server) -> None:
    """A door three days behind scans offline (time unknown), then its daemon says hello
    and pushes them: the server re-times them from the hello's clocks. Scans of an
    earlier boot, with no anchor yet, are flagged, then re-timed when a hello of that
    boot arrives."""
    device_id, token = provision(server)
    offline = [field_scan("A1", mono=440 * SECOND, boot="boot-2"),
               field_scan("A1", mono=470 * SECOND, boot="boot-2", reason="reentry")]
    earlier_boot = field_scan("A1", mono=30 * SECOND, boot="boot-1", reason="reentry")
    async with open_ws(server, token) as websocket:
        hello_answer = await welcome(websocket, device_id, boot_id="boot-2",
                                     monotonic_ns=500 * SECOND)
        await websocket.send(scan_frame(1, *offline, earlier_boot))
        results = await answer(websocket, "scan_results")
    assert [r["result"] for r in results["results"]] == ["accepted"] * 3
    hello_at = datetime.fromisoformat(hello_answer["server_time"])
    assert datetime.fromisoformat(results["server_time"]) >= hello_at

    def expected(seconds_before: int) -> str:
        return (hello_at - timedelta(seconds=seconds_before)).astimezone(UTC).isoformat(
            timespec="milliseconds")

    attendance = server.attendance("s1")
    scans = {s["scan_id"]: s for s in attendance["scans"]}
    assert [(scans[s.scan_id]["scanned_at"], scans[s.scan_id]["time_corrected"],
             scans[s.scan_id]["device_scanned_at"]) for s in offline] == [
        (expected(60), "reconstructed", BEHIND), (expected(30), "reconstructed", BEHIND)]
    assert scans[earlier_boot.scan_id]["time_corrected"] == "unknown"
    assert scans[earlier_boot.scan_id]["scanned_at"] == BEHIND

    # A hello of boot-1 (a daemon reconnecting in that boot) re-times its scan.
    async with open_ws(server, token) as websocket:
        again = await welcome(websocket, device_id, boot_id="boot-1",
                              monotonic_ns=90 * SECOND)
        await answer(websocket, "snapshot")  # the hello was noted before it was read
    scans = {s["scan_id"]: s for s in server.attendance("s1")["scans"]}
    assert scans[earlier_boot.scan_id]["time_corrected"] == "reconstructed"
    assert scans[earlier_boot.scan_id]["scanned_at"] == (
        datetime.fromisoformat(again["server_time"]) - timedelta(seconds=60)).astimezone(
        UTC).isoformat(timespec="milliseconds")
    attendance = server.attendance("s1")
    mine = [s for s in attendance["scans"] if s["device_id"] == device_id]
    assert len(mine) == 3 and attendance["times_unknown"] == 0
    assert attendance["times_reconstructed"] >= 3
    # The scan log says so too: its columns appended.
    log = list(csv.DictReader(io.StringIO(server.client.get("/api/scans.csv").text)))
    row = {r["scan_id"]: r for r in log}[offline[0].scan_id]
    assert (row["device_time"], row["time_source"], row["time_corrected"],
            row["device_scanned_at"]) == (expected(60), "unknown", "reconstructed", BEHIND)
