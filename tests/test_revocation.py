"""A lost or stolen door unit, end to end with real processes (issue 17): its device revoked
on the server, its sync daemon's next connection (closed with 4004) wipes the cached
attendees, registrants, admissions and session and keeps every scan; ``checkin status``
says revoked and how many scans are kept; the door then answers not_ready; a newly
provisioned unit's ``checkin recover`` uploads the scans from a copy of the card. A token
the server never issued (a typo: 4001) wipes nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from checkin import harness
from sync.device_store import STORE_FILE
from tests.system import Device, Server, process_env, wait_for


@pytest.fixture(scope="module")
def storage() -> str:
    """On SQLite alone: the server's revocation runs on both storages in its own tests
    (test_sync_endpoint, test_scale_out); this is the door's side."""
    return "sqlite"


def event(server: Server) -> None:
    server.api("PUT", "/api/sessions/s1", {"name": "s1", "validate_registrants": True},
               expect=201)
    server.api("POST", "/api/attendees", [{"code": c, "name": c} for c in ("A1", "B2", "C3")],
               expect=200)
    for code in ("A1", "B2"):
        server.api("PUT", f"/api/sessions/s1/registrants/{code}", expect=201)


def synced_unit(tmp_path: Path, server: Server, device_id: str,
                devices: list[Device]) -> Device:
    """A unit provisioned for s1, its daemon running and its cache synced."""
    device = Device(tmp_path / device_id, device_id, server.sync_url)
    device.token_file.write_text(server.provision(device_id, "s1") + "\n")
    devices.append(device)
    device.start_sync()
    wait_for(lambda: len(device.registrants()) == 2, 60,
             f"{device_id}'s snapshot", process=device.sync)
    return device


def cached(device: Device) -> dict[str, list]:
    """What the unit's store holds of the event, table by table."""
    return {table: device.query(f"SELECT * FROM {table}")
            for table in ("attendees", "registrants", "admissions", "session")}


def scan_count(device: Device) -> int:
    return device.query("SELECT count(*) FROM scans")[0][0]


def status_text(device: Device) -> str:
    done = harness.run("status", "--config", str(device.config), env=process_env(),
                       timeout=60)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    return done.stdout


def test_a_revoked_unit_wipes_its_cache_keeps_its_scans_and_they_are_recovered(
        tmp_path: Path, server: Server, devices: list[Device]) -> None:
    event(server)
    lost = synced_unit(tmp_path, server, "door-lost", devices)
    uploaded = lost.door("C3")  # online: stored on the server
    wait_for(lambda: lost.waiting() == 0, 60, "C3 uploaded", process=lost.sync)
    lost.stop_sync()  # the link goes; scans made now wait on the card
    waiting = lost.door("A1", "B2")
    assert [d["reason"] for d in waiting] == ["registered", "registered"]
    assert lost.waiting() == 2
    full = cached(lost)
    assert len(full["attendees"]) == 3 and len(full["session"]) == 1

    server.api("DELETE", "/api/devices/door-lost")  # reported stolen: revoked
    lost.start_sync()
    wait_for(lambda: lost.query("SELECT revoked_at FROM sync_state")[0][0] is not None, 60,
             "the daemon to learn it is revoked", process=lost.sync)
    assert cached(lost) == {"attendees": [], "registrants": [], "admissions": [],
                            "session": []}
    assert scan_count(lost) == 3 and lost.waiting() == 2  # every scan kept
    assert lost.query("SELECT code_key, epoch FROM sync_state") == [(None, None)]
    # The waiting ones with their codes (recovery uploads them); the stored one as a hash.
    assert sorted(lost.query("SELECT code FROM scans WHERE upload_state = 'waiting'")) == [
        ("A1",), ("B2",)]
    assert lost.query("SELECT code FROM scans WHERE upload_state = 'stored'") != [("C3",)]
    assert "revoked" in lost.log()
    text = status_text(lost)
    assert "revoked" in text and "2 scan(s) kept for recovery" in text, text
    status = lost.status()
    assert status["revoked_at"] is not None and status["scans_waiting"] == 2, status
    assert lost.sync is not None and lost.sync.poll() is None  # it keeps retrying

    after = lost.door("A1")  # whoever holds the unit now: it admits nobody
    assert [(d["decision"], d["reason"]) for d in after] == [("rejected", "not_ready")]
    lost.stop_sync()

    # The unit came back broken (or its card was found): its scans go up from a copy
    # under a new unit provisioned for the session.
    card = tmp_path / "card"
    card.mkdir()
    for part in lost.data_dir.glob(f"{STORE_FILE}*"):
        shutil.copy2(part, card / part.name)
    new = Device(tmp_path / "door-new", "door-new", server.sync_url)
    new.token_file.write_text(server.provision("door-new", "s1") + "\n")
    done = harness.run("recover", "--config", str(new.config), "--store",
                       str(card / STORE_FILE), "--json", env=process_env(), timeout=120)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert (report["waiting"], report["accepted"], report["refused"]) == (3, 3, []), report
    scans = {s["scan_id"]: s for s in server.attendance("s1")["scans"]}
    assert set(scans) == {d["scan_id"] for d in uploaded + waiting}  # each once
    assert [scans[d["scan_id"]]["device_id"] for d in waiting] == ["door-new", "door-new"]
    assert scans[uploaded[0]["scan_id"]]["device_id"] == "door-lost"


def test_an_unknown_token_wipes_nothing(tmp_path: Path, server: Server,
                                        devices: list[Device]) -> None:
    """A typo in the token file (or a token from another server) is 4001, not 4004: the
    door keeps deciding on its cache."""
    event(server)
    door = synced_unit(tmp_path, server, "door-typo", devices)
    door.stop_sync()
    before = cached(door)
    door.token_file.write_text("not-the-token\n")
    door.start_sync()
    wait_for(lambda: "4001" in (door.query("SELECT last_error FROM sync_state")[0][0] or ""),
             60, "the daemon to be refused", process=door.sync)
    assert cached(door) == before
    assert door.query("SELECT revoked_at FROM sync_state") == [(None,)]
    assert "kept for recovery" not in status_text(door)
    assert [d["reason"] for d in door.door("A1")] == ["registered"]
