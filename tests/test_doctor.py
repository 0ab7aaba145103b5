"""``checkin doctor``: its verdicts (pure), and the command against a real server, a real
sync daemon and a mock-pin door with an ``images:`` camera, each failure made real."""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from checkin import doctor as doctor_module
from checkin import harness
from checkin.doctor import (
    MIN_FREE_BYTES,
    Check,
    StoreFacts,
    clock_check,
    data_dir_check,
    disk_check,
    frames_seen_check,
    render,
    session_checks,
    token_check,
)
from core.timesource import TimeSource
from device.indicators.mirror import read_pins
from device.selftest import CONTROL_SOCKET, NoDoor, request_self_test
from tests.system import Device, Server, private_ca, process_env, wait_for

NOW = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)

# -- verdicts -----------------------------------------------------------------------------


def test_clock_within_five_seconds_passes_and_beyond_fails() -> None:
    assert clock_check(NOW, (NOW - timedelta(seconds=4.9)).isoformat()).ok
    assert clock_check(NOW, (NOW + timedelta(seconds=4.9)).isoformat()).ok
    late = clock_check(NOW, (NOW - timedelta(seconds=6)).isoformat())
    assert not late.ok and "+6.00 s" in late.detail and "timedatectl" in (late.fix or "")
    assert not clock_check(NOW, None).ok
    assert not clock_check(NOW, "yesterday").ok


def test_the_clock_row_judges_the_doors_time_by_its_source() -> None:
    """The door's time as the door takes it (issue 17): the server's carried one passes
    and says how far the system clock is off; an unknown one fails whatever the offset."""
    server = (NOW - timedelta(seconds=0.5)).isoformat()
    carried = clock_check(NOW, server, TimeSource.SERVER, NOW - timedelta(days=3))
    assert carried.ok and "time source: the server's" in carried.detail
    assert "the system clock -259199.50 s" in carried.detail
    system = clock_check(NOW, server, TimeSource.SYSTEM, NOW)
    assert system.ok and "time source: the system clock, synchronised" in system.detail
    unknown = clock_check(NOW, server, TimeSource.UNKNOWN, NOW)
    assert not unknown.ok and "unknown" in unknown.detail
    assert "checkin-sync" in (unknown.fix or "") and "unknown_time" in (unknown.fix or "")


def test_disk_below_200_mb_or_5_percent_fails() -> None:
    gb = 2**30
    assert disk_check(Path("/d"), 10 * gb, 100 * gb).ok
    assert not disk_check(Path("/d"), MIN_FREE_BYTES - 1, 1 * gb).ok
    assert not disk_check(Path("/d"), 4 * gb, 100 * gb).ok  # 4 %


def test_token_verdicts_name_the_token_file_and_the_fix() -> None:
    token = Path("/etc/checkin/device.token")
    assert token_check(200, {"device_id": "front"}, "front", token).ok
    revoked = token_check(401, {"error": "..."}, "front", token)
    assert not revoked.ok and str(token) in revoked.detail
    assert "PUT /api/devices/front" in (revoked.fix or "")
    assert "upgrade the server" in (token_check(404, {}, "front", token).fix or "")
    other = token_check(200, {"device_id": "side"}, "front", token)
    assert not other.ok and "'side'" in other.detail


def test_session_and_registrants_against_the_store() -> None:
    store = StoreFacts(Path("s"), session_id="s1", registrants=3)
    assert [c.ok for c in session_checks("d", "s1", 3, store)] == [True, True]
    assert [c.ok for c in session_checks("d", "s1", 4, store)] == [True, False]
    assert [c.name for c in session_checks("d", None, None, store)] == ["session"]
    assert not session_checks("d", "s2", 3, store)[0].ok
    gone = session_checks("d", "s1", None, store)  # the server has no session s1
    assert [c.ok for c in gone] == [False] and "does not exist" in gone[0].detail


def test_frames_seen_recently_pass() -> None:
    assert frames_seen_check((NOW - timedelta(seconds=5)).isoformat(), NOW, 30).ok
    assert not frames_seen_check((NOW - timedelta(seconds=31)).isoformat(), NOW, 30).ok
    assert not frames_seen_check(None, NOW, 30).ok
    assert frames_seen_check(None, NOW, 30, frames=12).ok  # started within a heartbeat


def test_table_shows_each_fix_under_its_failure() -> None:
    table = render([Check("disk", True, "plenty"), Check("clock", False, "+9 s", "set it")])
    assert table.splitlines() == ["  ok  disk         plenty", "FAIL  clock        +9 s",
                                  "      " + " " * 13 + "fix: set it", "1 of 2 checks failed"]


# -- the command, with real processes ---------------------------------------------------


def doctor(device: Device, *extra: str) -> tuple[int, dict[str, Any]]:
    done = harness.run("doctor", "--config", str(device.config), "--json", *extra,
                       env=process_env(), timeout=60)
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, json.loads(done.stdout) if done.stdout else {}


def failing(report: dict[str, Any]) -> list[str]:
    return [c["name"] for c in report["checks"] if not c["ok"]]


def check(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in report["checks"] if c["name"] == name)


@pytest.fixture(scope="module")
def storage() -> str:
    """The server of these tests on SQLite alone: the doctor checks the door's side, which
    the server's storage does not change (conftest's runs the server on each)."""
    return "sqlite"


@pytest.fixture
def synced(tmp_path: Path, server: Server, devices: list[Device]) -> Device:
    """A door provisioned for session s1 (two registrants), its daemon synced."""
    server.api("PUT", "/api/sessions/s1", {"name": "Workshop", "validate_registrants": True},
               expect=201)
    server.api("POST", "/api/attendees", [{"code": c, "name": c} for c in ("A1", "A2")])
    for code in ("A1", "A2"):
        server.api("PUT", f"/api/sessions/s1/registrants/{code}", expect=201)
    device = Device(tmp_path / "front", "front", server.sync_url)
    device.token_file.write_text(server.provision("front", "s1") + "\n")
    device.token_file.chmod(0o600)
    devices.append(device)
    device.start_sync()
    wait_for(lambda: device.registrants() == {"A1", "A2"}, what="first snapshot")
    return device


def test_all_pass_beside_a_running_door_then_token_revoked_then_server_stopped(
        server: Server, synced: Device) -> None:
    synced.start_live_door()
    try:
        wait_for(lambda: (synced.data_dir / "door.control").exists(), what="control socket")
        status, report = doctor(synced)
        assert (status, failing(report)) == (0, []), report
        assert report["ok"] is True
        assert [c["name"] for c in report["checks"]] == [
            "config", "data dir", "store", "schema", "server", "tls", "token", "clock",
            "session", "registrants", "camera", "indicators", "disk"]
        assert "running door" in check(report, "indicators")["detail"]
        assert "running door" in check(report, "camera")["detail"]
        assert check(report, "registrants")["detail"].startswith("2 cached")
        assert "self-test" in synced.door_log.read_text()

        server.api("DELETE", "/api/devices/front", expect=204)
        status, report = doctor(synced)
        assert (status, failing(report)) == (1, ["token"]), report
        assert check(report, "token")["fix"]

        server.stop()
        status, report = doctor(synced)
        assert (status, failing(report)) == (1, ["server"]), report
        assert "cannot connect" in check(report, "server")["detail"]
    finally:
        synced.stop()


def test_without_a_door_it_plays_the_pins_and_decodes_a_badge(synced: Device) -> None:
    synced.show("A1")
    status, report = doctor(synced)
    assert (status, failing(report)) == (0, []), report
    assert "decoded A1" in check(report, "camera")["detail"]
    assert "played the self-test" in check(report, "indicators")["detail"]


def test_camera_folder_missing(synced: Device) -> None:
    shutil.rmtree(synced.frames)
    status, report = doctor(synced)
    # `checkin config check` finds it too (it checks the files the config names)
    assert (status, failing(report)) == (1, ["config", "camera"]), report
    assert "no such file or folder" in check(report, "camera")["detail"]
    assert "images:frames" in check(report, "config")["detail"]


def test_data_dir_that_cannot_be_written(synced: Device) -> None:
    # Root ignores modes, and these tests may run as root: a data dir that is a file
    # is unwritable for anyone (the door could not make its store there either).
    synced.stop_sync()
    shutil.rmtree(synced.data_dir)
    synced.data_dir.write_text("not a folder\n")
    status, report = doctor(synced)
    assert status == 1
    assert {"data dir", "store"} <= set(failing(report)), report
    assert "not a folder" in check(report, "data dir")["detail"]


def test_table_text_and_an_unusable_config(tmp_path: Path, synced: Device) -> None:
    done = harness.run("doctor", "--config", str(synced.config), env=process_env(), timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1] == "all 13 checks passed"
    broken = tmp_path / "broken.toml"
    broken.write_text("[device]\nid = 'x'\n")
    done = harness.run("doctor", "--config", str(broken), env=process_env(), timeout=60)
    assert done.returncode == 2
    assert "[camera] is missing" in done.stderr and "Traceback" not in done.stderr


def test_tls_verified_with_the_ca_file_and_refused_without(tmp_path: Path) -> None:
    ca_file, cert_file, key_file = private_ca(tmp_path)
    server = Server(tmp_path / "server", tls=(str(cert_file), str(key_file)),
                    verify=ssl.create_default_context(cafile=str(ca_file)))
    with server:
        server.api("PUT", "/api/sessions/s1", {"name": "Hall", "validate_registrants": False},
                   expect=201)
        token = server.provision("front", "s1")
        trusting = Device(tmp_path / "trusting", "front", server.sync_url, ca_file=str(ca_file))
        unaware = Device(tmp_path / "unaware", "front", server.sync_url)
        for device in (trusting, unaware):
            device.token_file.write_text(token + "\n")
            device.token_file.chmod(0o600)
        _, report = doctor(trusting)
        assert check(report, "tls")["ok"] and str(ca_file) in check(report, "tls")["detail"]
        assert check(report, "token")["ok"], report
        status, report = doctor(unaware)
        assert status == 1 and check(report, "server")["ok"]
        tls = check(report, "tls")
        assert not tls["ok"] and "ca_file" in tls["fix"], tls
        assert "token" not in [c["name"] for c in report["checks"]]


def test_api_device_answers_only_a_device_token(server: Server) -> None:
    server.api("PUT", "/api/sessions/s1", {"name": "Hall", "validate_registrants": True},
               expect=201)
    token = server.provision("front", "s1")
    url = f"{server.url}/api/device"
    answer = httpx.get(url, headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200
    body = answer.json()
    assert (body["device_id"], body["session_id"], body["registrants"]) == ("front", "s1", 0)
    assert abs((datetime.fromisoformat(body["server_time"]) - datetime.now(UTC))
               .total_seconds()) < 60
    for headers in ({}, {"Authorization": "Bearer nope"}, server.headers):  # admin's is not one
        assert httpx.get(url, headers=headers).status_code == 401
    server.api("DELETE", "/api/devices/front", expect=204)
    assert httpx.get(url, headers={"Authorization": f"Bearer {token}"}).status_code == 401


def test_a_stale_control_socket_means_no_door(tmp_path: Path) -> None:
    with pytest.raises(NoDoor):
        request_self_test(tmp_path)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stale.bind(str(tmp_path / CONTROL_SOCKET))
    stale.close()  # a door killed by SIGKILL leaves its socket file behind
    with pytest.raises(NoDoor, match="stale"):
        request_self_test(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [CONTROL_SOCKET]  # no reply socket left


def test_the_running_door_plays_the_self_test_on_its_pins(tmp_path: Path) -> None:
    """What a technician sees: the request (as the doctor sends it) drives the door's own
    pins, mirrored into a file (mock pins): green, red, buzzer, then all three."""
    door = harness.Device(tmp_path, "front", gpio={"mirror_file": "pins"})
    door.start_door("-v", env=process_env())
    try:
        wait_for(lambda: (door.data_dir / CONTROL_SOCKET).exists(), what="control socket",
                 process=door.door_process)
        reply = request_self_test(door.data_dir)
        assert reply["self_test"] == "playing"
        green, red, buzzer = (harness.PINS[k] for k in ("green", "red", "buzzer"))
        seen: set[tuple[bool, bool, bool]] = set()
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and len(seen) < 5:
            pins = read_pins(tmp_path / "pins")
            seen.add((pins[green], pins[red], pins[buzzer]))
            time.sleep(0.01)
        assert {(True, False, False), (False, True, False), (False, False, True),
                (True, True, True)} <= seen, seen
    finally:
        door.stop()


def test_data_dir_of_another_user_says_whom_to_run_as(tmp_path: Path, monkeypatch) -> None:
    # Root (these tests' user here) writes anywhere: the refusal is made by hand.
    def refused(**_: object) -> None:
        raise PermissionError(13, "Permission denied")

    assert data_dir_check(tmp_path).ok
    monkeypatch.setattr(doctor_module.tempfile, "NamedTemporaryFile", refused)
    refusal = data_dir_check(tmp_path)
    assert not refusal.ok and "sudo -u checkin" in (refusal.fix or "")
    assert data_dir_check(tmp_path / "nowhere").detail.endswith("has run with this config)")
