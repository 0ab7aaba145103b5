"""The whole system end to end: real ``checkin server``, ``checkin sync`` and ``checkin door``
subprocesses on 127.0.0.1, each with its own files, as on site."""

from __future__ import annotations

import re
import shutil
import ssl
from pathlib import Path
from typing import Any

from tests.system import Device, Server, private_ca, wait_for


def event(server: Server, *, registrants: tuple[str, ...] = ("A1",)) -> None:
    server.api("PUT", "/api/sessions/s1", {"name": "Workshop", "validate_registrants": True},
               expect=201)
    server.api("POST", "/api/attendees", [{"code": c, "name": f"Attendee {c}"}
                                          for c in ("A1", "A2", "B2", "C3")], expect=200)
    for code in registrants:
        server.api("PUT", f"/api/sessions/s1/registrants/{code}", expect=201)


def door_device(tmp_path: Path, server: Server, devices: list, name: str = "door-1",
                session: str = "s1", **keys: Any) -> Device:
    # Each door run shows each badge once: a debounce of 1 s keeps a badge's second frame
    # one scan when a loaded machine's write delays it past the harness's usual 0.1 s.
    device = Device(tmp_path / name, name, server.sync_url,
                    **{"debounce_seconds": 1.0} | keys)
    device.token_file.write_text(server.provision(name, session) + "\n")
    devices.append(device)
    return device.start_sync()


def reasons(decisions: list[dict]) -> list[str]:
    return [d["reason"] for d in decisions]


def assert_each_scan_once(server: Server, session: str, decisions: list[dict]) -> None:
    stored = [s["scan_id"] for s in server.attendance(session)["scans"]]
    assert sorted(stored) == sorted(d["scan_id"] for d in decisions)


def test_registrant_changes_on_the_server_reach_the_door(tmp_path, server, devices) -> None:
    event(server)
    device = door_device(tmp_path, server, devices)
    wait_for(lambda: device.registrants() == {"A1"}, what="first snapshot")

    first = device.door("A1", "B2")
    assert reasons(first) == ["registered", "not_registered"]

    server.api("PUT", "/api/sessions/s1/registrants/B2", expect=201)
    wait_for(lambda: device.registrants() == {"A1", "B2"}, what="added registrant")
    second = device.door("B2")
    assert reasons(second) == ["registered"]

    server.api("DELETE", "/api/sessions/s1/registrants/A1", expect=204)
    wait_for(lambda: device.registrants() == {"B2"}, what="removed registrant")
    third = device.door("A1")
    assert reasons(third) == ["not_registered"]

    decisions = first + second + third
    wait_for(lambda: device.waiting() == 0, what="scans uploaded")
    attendance = server.attendance("s1")
    assert (attendance["registered"], attendance["admitted"], attendance["rejected"]) == (1, 2, 2)
    assert_each_scan_once(server, "s1", decisions)
    by_id = {s["scan_id"]: s for s in attendance["scans"]}
    for decision in decisions:
        stored = by_id[decision["scan_id"]]
        assert (stored["code"], stored["decision"], stored["reason"], stored["device_id"]) == (
            decision["code"], decision["decision"], decision["reason"], "door-1")
        assert stored["scanned_at"] == decision["at"]  # the device's time, not the server's
        assert stored["disagreement"] is None
    status = device.status()
    assert (status["link"], status["session_id"], status["registrants"]) == ("connected", "s1", 1)
    assert status["scans_stored"] == 4


def test_offline_door_keeps_deciding_and_every_scan_arrives_once(tmp_path, server,
                                                                 devices) -> None:
    event(server, registrants=("A1", "A2"))
    device = door_device(tmp_path, server, devices)
    wait_for(lambda: device.registrants() == {"A1", "A2"}, what="first snapshot")
    online = device.door("A1")

    server.stop()
    wait_for(lambda: device.status()["link"] == "disconnected", what="link down")
    offline = device.door("A2", "B2", "ZZZ-1", b"\x00garbage")
    assert reasons(offline) == ["registered", "not_registered", "unknown_code", "invalid_code"]
    assert all(d["recorded"] for d in offline)
    device.sync.kill()  # the daemon dies too while the server is away
    device.sync.wait()
    more = device.door("A1")
    assert reasons(more) == ["reentry"]
    assert device.waiting() == 5
    assert "disconnected" in device.status()["link"]

    server.start()  # same data dir, same port
    device.start_sync()
    wait_for(lambda: device.waiting() == 0, what="backlog delivered")
    decisions = online + offline + more
    assert_each_scan_once(server, "s1", decisions)
    assert set(device.upload_states().values()) == {"stored"}
    attendance = server.attendance("s1")
    assert (attendance["admitted"], attendance["rejected"]) == (2, 3)


def test_without_its_wake_socket_the_daemon_still_uploads(tmp_path, server, devices) -> None:
    """The door's poke is a hint: a daemon that cannot bind its socket (here: a data dir
    path too long for a Unix socket) says so and finds the scans by looking now and then."""
    event(server)
    device = Device(tmp_path / "door-1", "door-1", server.sync_url, data_dir="d" * 110)
    device.token_file.write_text(server.provision("door-1", "s1") + "\n")
    devices.append(device)
    device.start_sync()
    wait_for(lambda: device.registrants() == {"A1"}, what="first snapshot")
    decisions = device.door("A1", "B2")
    wait_for(lambda: device.waiting() == 0, what="scans uploaded without pokes")
    assert_each_scan_once(server, "s1", decisions)
    assert "instead of being woken by the door" in device.log()


def test_a_server_with_a_new_database_makes_the_device_resync(tmp_path, server, devices,
                                                              database_copies) -> None:
    event(server)
    device = door_device(tmp_path, server, devices)
    wait_for(lambda: device.registrants() == {"A1"}, what="first snapshot")
    old_epoch = device.status()["epoch"]

    server.stop()
    shutil.rmtree(server.data_dir)  # the database is replaced: a new epoch
    database_copies.replace()
    server.start()
    event(server, registrants=("B2", "C3"))
    device.token_file.write_text(server.provision("door-1", "s1"))  # technician re-provisions

    wait_for(lambda: device.registrants() == {"B2", "C3"}, what="resync from snapshot")
    status = device.status()
    assert status["epoch"] != old_epoch
    assert status["epoch"] == server.api("GET", "/api/health")["epoch"]
    assert "full resync" in device.log()
    assert reasons(device.door("A1", "C3")) == ["not_registered", "registered"]


def test_a_wrong_token_is_refused_and_retried_slowly_saying_why(tmp_path, server,
                                                                devices) -> None:
    event(server)
    device = Device(tmp_path / "door-1", "door-1", server.sync_url, auth_retry=0.6)
    devices.append(device)
    real = server.provision("door-1", "s1")
    device.token_file.write_text("not-the-token")
    device.start_sync()

    refusals = r"refused: unknown device token \(close 4001\).*retrying in ([\d.]+) s"
    wait_for(lambda: len(re.findall(refusals, device.log())) >= 3, what="three refusals")
    delays = [float(d) for d in re.findall(refusals, device.log())]
    assert all(d >= 0.3 for d in delays)  # half the auth minimum at least: never hammering
    assert delays[2] > delays[0]  # and backing off
    assert str(device.token_file) in device.log()  # says which file to fix
    assert device.sync.poll() is None  # still running
    assert device.status()["link"] == "disconnected"
    assert "refused" in device.status()["last_error"]

    device.token_file.write_text(real)  # fixed without restarting the daemon
    wait_for(lambda: device.registrants() == {"A1"}, timeout=30, what="sync after fixing token")

    server.api("DELETE", "/api/devices/door-1", expect=204)  # revoked
    wait_for(lambda: device.log().count("device revoked") >= 1, what="revocation")
    assert device.sync.poll() is None


def test_a_reassigned_device_resyncs_and_its_old_sessions_scans_are_quarantined(
        tmp_path, server, devices) -> None:
    event(server)
    server.api("PUT", "/api/sessions/s2", {"name": "Talk", "validate_registrants": False},
               expect=201)
    device = door_device(tmp_path, server, devices)
    wait_for(lambda: device.registrants() == {"A1"}, what="first snapshot")
    assert device.stop_sync() == 0

    server.api("PUT", "/api/devices/door-1", {"session_id": "s2"}, expect=200)
    stale = device.door("A1")  # decided on the s1 cache, offline
    assert reasons(stale) == ["registered"] and stale[0]["session_id"] == "s1"

    device.start_sync()
    wait_for(lambda: device.status()["session_id"] == "s2", what="snapshot of s2")
    wait_for(lambda: device.waiting() == 0, what="upload answered")
    status = device.status()
    assert status["scans_quarantined"] == 1 and status["scans_stored"] == 0
    note = device.query("SELECT upload_note FROM scans")[0][0]
    assert "assigned to 's2'" in note
    fresh = device.door("B2")  # the queue is not blocked by the quarantined scan
    assert reasons(fresh) == ["registered"]
    wait_for(lambda: device.waiting() == 0, what="later scan uploaded")
    assert_each_scan_once(server, "s2", fresh)
    assert server.attendance("s1")["scans"] == []


def test_sync_over_tls_with_a_private_ca(tmp_path, devices) -> None:
    ca_file, cert_file, key_file = private_ca(tmp_path)
    server = Server(tmp_path / "server", tls=(str(cert_file), str(key_file)),
                    verify=ssl.create_default_context(cafile=str(ca_file))).start()
    try:
        event(server)
        trusting = door_device(tmp_path, server, devices, "door-1",
                               ca_file=str(ca_file))
        doubting = door_device(tmp_path, server, devices, "door-2")
        wait_for(lambda: trusting.registrants() == {"A1"}, what="sync over wss")
        wait_for(lambda: "TLS with" in doubting.log()
                 and "CERTIFICATE_VERIFY_FAILED" in doubting.log(), what="TLS refusal")
        assert doubting.registrants() == set()
    finally:
        server.kill()


def test_a_database_restored_from_a_backup_gets_a_new_epoch_and_devices_resync(
        tmp_path, server, devices, database_copies) -> None:
    event(server)
    device = door_device(tmp_path, server, devices)
    wait_for(lambda: device.registrants() == {"A1"}, what="first snapshot")
    server.stop()
    backup = tmp_path / "backup"
    shutil.copytree(server.data_dir, backup)  # the technician's backup, taken while stopped
    database_copies.backup()
    server.start()
    for code in ("A2", "B2"):  # history the backup will not have
        server.api("PUT", f"/api/sessions/s1/registrants/{code}", expect=201)
    wait_for(lambda: device.registrants() == {"A1", "A2", "B2"}, what="changes")
    old_epoch = device.status()["epoch"]

    server.stop()
    shutil.rmtree(server.data_dir)
    shutil.copytree(backup, server.data_dir)
    database_copies.restore()
    server.start("--new-epoch")
    assert "new epoch" in server.log.read_text()
    # The restored server moves on past the door's cursor: changes alone would leave the
    # door with A2 and B2, which the restored list does not have.
    server.api("PUT", "/api/sessions/s1/registrants/C3", expect=201)
    server.api("DELETE", "/api/sessions/s1/registrants/A1", expect=204)
    server.api("PUT", "/api/sessions/s1/registrants/A1", expect=201)
    wait_for(lambda: device.registrants() == {"A1", "C3"}, what="resync after the restore")
    assert device.status()["epoch"] not in (old_epoch, None)
