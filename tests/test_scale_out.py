"""Several ``checkin server`` processes on one PostgreSQL database, doors spread over them
(issue 16's contract): a change made through one process reaches a door connected to
another; attendance read through any process counts every scan once; a process killed
while a door pushes hands the door to another with nothing lost and nothing twice.

Real subprocesses: two servers, the doors' sync daemons and doors, PostgreSQL from
Debian's package (the ``postgres`` fixture: skipped loudly where it is missing, failed
in CI).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from core.rules import Decision
from sync.device_store import ScanRecord, Store
from tests.system import Device, Server, wait_for

CODES = ("A1", "A2", "B2", "C3")


@pytest.fixture
def servers(postgres, tmp_path: Path) -> Iterator[tuple[Server, Server]]:
    """Two server processes on one new PostgreSQL database, each with its own data dir
    (the admin token comes from the environment, as it would on two machines)."""
    url = postgres.create_database(f"scale_{uuid.uuid4().hex[:8]}")
    first = Server(tmp_path / "first", database=url)
    second = Server(tmp_path / "second", database=url)
    try:
        first.start()
        second.start()
        yield first, second
    finally:
        first.kill()
        second.kill()


def event(server: Server, registrants: tuple[str, ...] = ("A1",)) -> None:
    server.api("PUT", "/api/sessions/s1", {"name": "Workshop", "validate_registrants": True},
               expect=201)
    server.api("POST", "/api/attendees", [{"code": c, "name": f"Attendee {c}"}
                                          for c in CODES], expect=200)
    for code in registrants:
        server.api("PUT", f"/api/sessions/s1/registrants/{code}", expect=201)


def door(tmp_path: Path, name: str, urls: list[str], token: str,
         devices: list[Device]) -> Device:
    # A debounce of 1 s: each door run shows each badge once (see test_sync_e2e).
    device = Device(tmp_path / name, name, urls, debounce_seconds=1.0,
                    door={"allow_reentry": False})
    device.token_file.write_text(token + "\n")
    devices.append(device)
    return device.start_sync()


def connected_to(device: Device, server: Server) -> bool:
    status = device.status()
    return status["link"] == "connected" and status["server_url"] == server.sync_url


def stored_ids(server: Server) -> list[str]:
    return [s["scan_id"] for s in server.attendance("s1")["scans"]]


def test_doors_on_two_processes_act_as_on_one(tmp_path: Path, servers, devices) -> None:
    first, second = servers
    event(first)
    here = door(tmp_path, "door-1", [first.sync_url], first.provision("door-1", "s1"), devices)
    there = door(tmp_path, "door-2", [second.sync_url], first.provision("door-2", "s1"),
                 devices)
    wait_for(lambda: here.registrants() == there.registrants() == {"A1"}, what="snapshots")
    wait_for(lambda: connected_to(there, second), what="door-2 on the second process")

    # A change through the first process reaches the door on the second.
    first.api("PUT", "/api/sessions/s1/registrants/B2", expect=201)
    wait_for(lambda: there.registrants() == {"A1", "B2"}, what="registrant on door-2")
    # And one through the second reaches the door on the first.
    second.api("DELETE", "/api/sessions/s1/registrants/A1", expect=204)
    wait_for(lambda: here.registrants() == {"B2"}, what="removal on door-1")

    # An admission at the door on the first process reaches the door on the second.
    admitted = here.door("B2")
    assert [d["reason"] for d in admitted] == ["registered"]
    wait_for(lambda: there.presence() == {"B2": True}, what="door-2 knows B2 is inside")
    refused = there.door("B2")
    assert [d["reason"] for d in refused] == ["already_admitted"]
    wait_for(lambda: here.waiting() == there.waiting() == 0, what="scans uploaded")

    # Attendance through either process counts every scan once.
    made = sorted(d["scan_id"] for d in admitted + refused)
    for server in servers:
        assert sorted(stored_ids(server)) == made
        assert server.attendance("s1")["admitted"] == 1
    # Each process lists both doors as connected, wherever they are.
    for server in servers:
        wait_for(lambda server=server: all(
            d["connected"] for d in server.api("GET", "/api/devices")), what="both connected")

    # A device revoked through the first process is closed by the second, which holds it.
    first.api("DELETE", "/api/devices/door-2", expect=204)
    wait_for(lambda: there.status()["link"] != "connected", what="door-2 closed")
    assert "revoked" in there.log()


def test_a_process_killed_mid_push_hands_its_doors_to_the_other(
        tmp_path: Path, servers, devices) -> None:
    first, second = servers
    event(first, registrants=CODES)
    token = first.provision("door-1", "s1")
    device = Device(tmp_path / "door-1", "door-1", [first.sync_url, second.sync_url])
    device.token_file.write_text(token + "\n")
    devices.append(device)
    made = asyncio.run(backlog(device, 3000))

    device.start_sync()
    wait_for(lambda: device.waiting() < len(made), what="the push under way",
             process=device.sync)
    first.kill()
    assert device.waiting() > 0, "the whole backlog went before the kill: push a bigger one"
    wait_for(lambda: device.waiting() == 0, timeout=120, what="every scan uploaded",
             process=device.sync)
    assert connected_to(device, second)
    stored = stored_ids(second)
    assert len(stored) == len(set(stored)) == len(made)
    assert set(stored) == set(made)


async def backlog(device: Device, count: int) -> list[str]:
    """*count* admissions recorded in the door's store while it was offline."""
    store = await Store.open(device.data_dir)
    try:
        scans = [ScanRecord(str(uuid.uuid4()), CODES[i % len(CODES)], "s1", Decision.ADMITTED,
                            "registered", datetime.now(UTC).isoformat(), i, "boot-1")
                 for i in range(count)]
        await store.record_scans(scans)
    finally:
        await store.close()
    return [s.scan_id for s in scans]
