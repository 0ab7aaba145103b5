"""``checkin recover --config FILE --store PATH`` with real processes: a dead door's store
(its files as the door left them when it died: a SIGKILLed door, its -wal beside it)
uploaded under a newly provisioned unit's device and token, each scan once; a second run
finds them all already stored; scans for another session refused and reported (exit 1);
scans the dead unit had uploaded without hearing the answer counted as already stored;
what is not a door store, a refused token or no server: exit 2 with a clear message. The
original files are never written (their hashes before and after)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import signal
import sqlite3
import ssl
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from checkin import harness
from checkin.recover import OTHER_DEVICE_REASON, Report, _Retry, classify, give_up
from core.rules import Decision
from sync.device_store import STORE_FILE, ScanRecord, Store
from sync.messages import Scan, ScanOutcome, ScanResult
from tests.system import Device, Server, free_port, private_ca, process_env, wait_for


@pytest.fixture(scope="module")
def storage() -> str:
    """On SQLite alone: recovery speaks the sync protocol, which runs on both storages in
    test_sync_endpoint and test_scale_out; what it decides does not depend on the storage."""
    return "sqlite"


# -- the pure part -------------------------------------------------------------------


def _scan(scan_id: str, session_id: str | None = "s1") -> Scan:
    return Scan(scan_id=scan_id, seq=1, code="A1", session_id=session_id, decision="admitted",
                reason="registered", scanned_at="2026-11-28T09:00:00+00:00", monotonic_ns=1,
                boot_id="b")


def test_a_scan_another_device_stored_first_is_already_stored() -> None:
    assert classify(ScanResult("x", ScanOutcome.ACCEPTED)) == "accepted"
    assert classify(ScanResult("x", ScanOutcome.DUPLICATE)) == "already stored"
    assert classify(ScanResult.refused("x", OTHER_DEVICE_REASON)) == "already stored"
    assert classify(ScanResult.refused("x", "scan is for session 's2'")) == "refused"


def test_the_exit_status_is_0_only_when_every_waiting_scan_is_stored() -> None:
    scans = [_scan("a"), _scan("b"), _scan("c", "s2")]
    report = Report(Path("old.sqlite3"), "door-new", scans, [])
    assert report.exit_status() == 1  # nothing answered yet
    report.take(scans[:2], [ScanResult("a", ScanOutcome.ACCEPTED),
                            ScanResult("b", ScanOutcome.DUPLICATE)])
    assert [s.scan_id for s in report.unanswered] == ["c"]
    assert report.exit_status() == 1
    report.take(scans[2:], [ScanResult.refused("c", "scan is for session 's2'")])
    assert report.exit_status() == 1 and report.unanswered == []
    assert "refused:        1\n  c (session s2, scanned 2026-11-28T09:00:00+00:00): scan is " \
           "for session 's2'" in report.text()
    assert Report(Path("o"), "d", [], []).exit_status() == 0  # nothing waiting: all stored


def test_giving_up_says_why_and_what_to_do() -> None:
    lost = [_Retry("ws://a/sync: connection lost"), _Retry("ws://b/sync: refused")]
    assert give_up(lost, "door-new") == (
        "cannot upload: the server cannot be reached (ws://a/sync: connection lost; "
        "ws://b/sync: refused)")
    # The unit's own sync daemon and recovery take the device's one link in turns.
    replaced = [*lost, _Retry("ws://a/sync: closed (4003: ...)", replaced=True)]
    assert give_up(replaced, "door-new").startswith(
        "another connection of device door-new keeps replacing this one (close 4003): stop "
        "that unit's sync daemon while recovering")


# -- real processes ------------------------------------------------------------------


def recover(device: Device, store: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    done = harness.run("recover", "--config", str(device.config), "--store", str(store),
                       *extra, env=process_env(), timeout=120)
    assert "Traceback" not in done.stderr, done.stderr
    return done


def recover_json(device: Device, store: Path) -> tuple[int, dict[str, Any]]:
    done = recover(device, store, "--json")
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout)


def hashes(store: Path) -> dict[str, str]:
    """The store's files (main, -wal, -shm) and their SHA-256."""
    return {part.name: hashlib.sha256(part.read_bytes()).hexdigest()
            for part in sorted(store.parent.glob(f"{store.name}*"))}


def event(server: Server) -> None:
    for session in ("s1", "s2"):
        server.api("PUT", f"/api/sessions/{session}",
                   {"name": session, "validate_registrants": True}, expect=201)
    server.api("POST", "/api/attendees", [{"code": c, "name": c} for c in ("A1", "B2", "C3")],
               expect=200)
    server.api("PUT", "/api/sessions/s1/registrants/A1", expect=201)
    server.api("PUT", "/api/sessions/s1/registrants/B2", expect=201)


def unit(tmp_path: Path, server: Server, device_id: str, session: str,
         devices: list[Device]) -> Device:
    """A door unit provisioned on *server* for *session* (nothing started)."""
    device = Device(tmp_path / device_id, device_id, server.sync_url)
    device.token_file.write_text(server.provision(device_id, session) + "\n")
    devices.append(device)
    return device


def record(data_dir: Path, *scans: ScanRecord) -> None:
    async def write() -> None:
        store = await Store.open(data_dir)
        try:
            await store.record_scans(scans)
        finally:
            await store.close()

    asyncio.run(write())


def made(code: str, session_id: str | None, decision: Decision = Decision.ADMITTED,
         reason: str = "registered", time_source: str = "system") -> ScanRecord:
    return ScanRecord(scan_id=str(uuid.uuid4()), code=code, session_id=session_id,
                      decision=decision, reason=reason,
                      scanned_at="2026-11-28T09:00:00.000+00:00", monotonic_ns=10**9,
                      boot_id="old-boot", time_source=time_source)


def test_a_dead_doors_waiting_scans_are_uploaded_once_under_the_new_unit(
        tmp_path: Path, server: Server, devices: list[Device]) -> None:
    event(server)
    old = unit(tmp_path, server, "door-old", "s1", devices)
    old.start_sync()
    wait_for(lambda: old.registrants() == {"A1", "B2"}, 60, "the old door's snapshot",
             process=old.sync)
    old.stop_sync()  # offline from here: its scans wait on its card
    lines = old.start_live_door()
    decided = []
    for code in ("A1", "B2", "C3"):
        old.show(code)
        decided.append(lines.next(what=f"{code} decided"))
    assert [d["reason"] for d in decided] == ["registered", "registered", "not_registered"]
    assert old.door_process is not None
    old.door_process.stop(signal.SIGKILL)  # the Pi dies: its -wal is left as it was
    assert (old.data_dir / f"{STORE_FILE}-wal").stat().st_size > 0
    assert old.waiting() == 3
    # The card, mounted on a laptop: the files as they were (a copy, so that nothing this
    # test does later to the old door's folder can touch them).
    card = tmp_path / "card"
    card.mkdir()
    for part in old.data_dir.glob(f"{STORE_FILE}*"):
        shutil.copy2(part, card / part.name)
    store = card / STORE_FILE
    before = hashes(store)
    assert f"{STORE_FILE}-wal" in before

    new = unit(tmp_path, server, "door-new", "s1", devices)
    status, report = recover_json(new, store)
    assert status == 0, report
    assert (report["waiting"], report["accepted"], report["already_stored"]) == (3, 3, 0)
    assert (report["refused"], report["quarantined"], report["unanswered"]) == ([], [], [])
    assert (report["device_id"], report["session_id"]) == ("door-new", "s1")
    scans = server.attendance("s1")["scans"]
    assert sorted(s["scan_id"] for s in scans) == sorted(d["scan_id"] for d in decided)
    assert {s["device_id"] for s in scans} == {"door-new"}
    assert {s["code"]: s["reason"] for s in scans} == {
        "A1": "registered", "B2": "registered", "C3": "not_registered"}

    again = recover(new, store)  # the text report this time
    assert again.returncode == 0, again.stdout + again.stderr
    assert "accepted:       0\nalready stored: 3\nrefused:        0\n" in again.stdout
    assert "every waiting scan is on the server (3 of 3)" in again.stdout
    assert len(server.attendance("s1")["scans"]) == 3
    assert hashes(store) == before  # the card's files were never written

    # Copied without its -shm (SQLite makes another): the same scans, all stored.
    bare = tmp_path / "bare"
    bare.mkdir()
    for suffix in ("", "-wal"):
        shutil.copy2(card / f"{STORE_FILE}{suffix}", bare / f"{STORE_FILE}{suffix}")
    status, report = recover_json(new, bare / STORE_FILE)
    assert (status, report["waiting"], report["already_stored"]) == (0, 3, 3), report


def test_scans_for_another_session_are_refused_and_reported(
        tmp_path: Path, server: Server, devices: list[Device]) -> None:
    event(server)
    data_dir = tmp_path / "card"
    s2 = [made("A1", "s2"), made("C3", "s2", Decision.REJECTED, "not_registered")]
    not_ready = made("B2", None, Decision.REJECTED, "not_ready")
    quarantined = made("A1", "s9")
    record(data_dir, *s2, not_ready, quarantined)
    store = data_dir / STORE_FILE
    # One scan the server refused before: it stays where it is and is listed.
    with sqlite3.connect(store) as db:
        db.execute("UPDATE scans SET upload_state = 'quarantined', upload_note = 'old reason'"
                   " WHERE scan_id = ?", (quarantined.scan_id,))
    db.close()
    before = hashes(store)

    new = unit(tmp_path, server, "door-new", "s1", devices)
    done = recover(new, store)
    assert done.returncode == 1, done.stdout + done.stderr
    out = done.stdout
    assert "waiting:        3 (session s2: 2, session none: 1)" in out
    assert f"quarantined:    1 (refused before; not uploaded)\n  {quarantined.scan_id} " \
           "(session s9, scanned 2026-11-28T09:00:00.000+00:00): old reason" in out
    assert "accepted:       1\nalready stored: 0\nrefused:        2\n" in out
    for scan in s2:
        assert f"  {scan.scan_id} (session s2, " in out
    assert "scan is for session 's2' but device 'door-new' is assigned to 's1'" in out
    assert "2 of 3 waiting scan(s) are NOT on the server" in out
    assert hashes(store) == before
    # The not_ready scan (no session) is a fact the server keeps; the others are not there.
    status, report = recover_json(new, store)
    assert status == 1
    assert (report["accepted"], report["already_stored"], len(report["refused"])) == (0, 1, 2)
    assert {r["scan_id"] for r in report["refused"]} == {s.scan_id for s in s2}
    assert [q["scan_id"] for q in report["quarantined"]] == [quarantined.scan_id]
    assert server.attendance("s1")["scans"] == []
    assert server.attendance("s2")["scans"] == []


def test_a_backlog_goes_in_batches_each_scan_once(
        tmp_path: Path, server: Server, devices: list[Device]) -> None:
    event(server)
    card = tmp_path / "card"
    backlog = [made(f"X{i}", "s1", Decision.REJECTED, "unknown_code") for i in range(1201)]
    record(card, *backlog)
    new = unit(tmp_path, server, "door-new", "s1", devices)
    status, report = recover_json(new, card / STORE_FILE)
    assert status == 0, str(report)[:2000]
    assert (report["waiting"], report["accepted"]) == (1201, 1201)  # 3 batches of <= 500
    scans = server.attendance("s1")["scans"]
    assert sorted(s["scan_id"] for s in scans) == sorted(s.scan_id for s in backlog)


def test_scans_the_dead_unit_uploaded_unanswered_count_as_stored(
        tmp_path: Path, server: Server, devices: list[Device]) -> None:
    """The dead unit pushed its scans and died before the answer: its card still says
    waiting; the server has them (from the old device): already stored, exit 0."""
    event(server)
    old = unit(tmp_path, server, "door-old", "s1", devices)
    scans = [made("A1", "s1"), made("B2", "s1")]
    record(old.data_dir, *scans)
    card = tmp_path / "card"
    card.mkdir()
    shutil.copy2(old.store_file, card / STORE_FILE)  # the card as it was before the push
    old.start_sync()
    wait_for(lambda: old.waiting() == 0, 60, "the old unit's upload", process=old.sync)
    old.stop_sync()

    new = unit(tmp_path, server, "door-new", "s1", devices)
    status, report = recover_json(new, card / STORE_FILE)
    assert status == 0, report
    assert (report["accepted"], report["already_stored"], report["refused"]) == (0, 2, [])
    assert sorted(s["device_id"] for s in server.attendance("s1")["scans"]) == [
        "door-old", "door-old"]


def test_what_cannot_be_recovered_exits_2_with_a_clear_message(
        tmp_path: Path, server: Server, devices: list[Device]) -> None:
    event(server)
    new = unit(tmp_path, server, "door-new", "s1", devices)
    card = tmp_path / "card"
    record(card, made("A1", "s1", time_source="unknown"))  # the old unit booted offline
    store = card / STORE_FILE

    def refused(device: Device, path: Path, message: str) -> None:
        done = recover(device, path)
        assert done.returncode == 2, done.stdout + done.stderr
        assert message in done.stderr, done.stderr
        assert done.stdout == ""

    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_bytes(b"this is not a database at all\n" * 200)
    before = hashes(garbage)
    refused(new, garbage, f"checkin recover: {garbage} is not a checkin door store")
    assert hashes(garbage) == before
    refused(new, server.store_file, f"{server.store_file} is not a checkin door store")
    refused(new, tmp_path / "nowhere.sqlite3", "nowhere.sqlite3: no such file")
    refused(new, card, "not a file")

    typo = Device(tmp_path / "typo", "door-new", server.sync_url)
    typo.token_file.write_text("not-the-token\n")
    refused(typo, store, "refused the token in")
    revoked = unit(tmp_path, server, "door-gone", "s1", devices)
    server.api("DELETE", "/api/devices/door-gone")
    refused(revoked, store, "door-gone")
    nobody = Device(tmp_path / "nobody", "door-new", f"ws://127.0.0.1:{free_port()}/sync",
                    retry_max_seconds=0.2)
    nobody.token_file.write_text("any\n")
    refused(nobody, store, "the server cannot be reached")
    no_config = recover(new, store)  # (the good one still works: nothing above spoiled it)
    assert no_config.returncode == 0, no_config.stdout + no_config.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("[device]\nid = 'x y'\n")
    done = harness.run("recover", "--config", str(bad), "--store", str(store),
                       env=process_env(), timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    [scan] = server.attendance("s1")["scans"]
    assert scan["time_source"] == "unknown"  # uploaded as the old unit recorded it


def test_recovery_over_tls_trusts_the_configs_ca_only(tmp_path: Path) -> None:
    ca_file, cert_file, key_file = private_ca(tmp_path)
    with Server(tmp_path / "server", tls=(str(cert_file), str(key_file)),
                verify=ssl.create_default_context(cafile=str(ca_file))) as server:
        event(server)
        card = tmp_path / "card"
        record(card, made("A1", "s1"))
        token = server.provision("door-new", "s1")
        doubting = Device(tmp_path / "doubting", "door-new", server.sync_url)
        doubting.token_file.write_text(token + "\n")
        done = recover(doubting, card / STORE_FILE)
        assert done.returncode == 2, done.stdout + done.stderr
        assert f"TLS with {server.sync_url} failed: " in done.stderr
        assert "check [server] ca_file (now the system CAs)" in done.stderr
        trusting = Device(tmp_path / "trusting", "door-new", server.sync_url,
                          ca_file=str(ca_file))
        trusting.token_file.write_text(token + "\n")
        status, report = recover_json(trusting, card / STORE_FILE)
        assert (status, report["accepted"]) == (0, 1), report
        assert len(server.attendance("s1")["scans"]) == 1
