"""A Pi without a clock, with real processes (issue 17): the door and its sync daemon run
under Debian's ``faketime`` three days behind (the monotonic clock left real, as on a Pi
whose wall clock is wrong: ``DONT_FAKE_MONOTONIC=1``) and timesyncd's marker missing
(``CHECKIN_TIMESYNC_FILE`` in a tmp dir), against a server with the real time:

(a) a door booted offline (no anchor of this boot) decides a session window by
    ``[door] unknown_time``: admit, then refuse; its scans say ``time_source`` unknown;
(b) the daemon then syncs: the server re-times those scans from the hello's anchor of the
    same boot (attendance shows the real times, marked reconstructed);
(c) with the daemon's anchor from a welcome in this boot the door's scans say
    ``server`` and carry the real time, although the process clock is three days behind;
(d) the wall clock stepped during a run (a file-driven offset) changes no decision taken
    on the server-carried time.
"""

from __future__ import annotations

import glob
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from core.clock import boot_id
from tests.system import Device, Server, wait_for

#: Where Debian's libfaketime is (the ``faketime`` package depends on it).
LIBFAKETIME = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1")
                     + glob.glob("/usr/lib/faketime/libfaketime.so.1"))
#: How far the door's reconstructed or carried times may be from the real time.
CLOSE = timedelta(seconds=5)

pytestmark = pytest.mark.skipif(
    shutil.which("faketime") is None or not LIBFAKETIME,
    reason="Debian's faketime is not installed (scripts/system-packages.sh installs it)")


@pytest.fixture(scope="module")
def storage() -> str:
    """The server on SQLite alone: the door's side is tested here; the server re-times on
    both storages in its own tests."""
    return "sqlite"


def unsynchronised(tmp_path: Path) -> tuple[str, ...]:
    """``env`` arguments: timesyncd runs and has not synchronised (its folder without the
    marker), and libfaketime leaves the monotonic clock real."""
    marker = tmp_path / "timesync" / "synchronized"
    marker.parent.mkdir(exist_ok=True)
    return ("env", f"CHECKIN_TIMESYNC_FILE={marker}", "DONT_FAKE_MONOTONIC=1")


def three_days_behind(tmp_path: Path) -> tuple[str, ...]:
    """What ``faketime -f -3d`` does, without its wrapper process: the wrapper forks and
    waits, so a signal to it would not reach the door or the daemon (``env`` execs)."""
    return (*unsynchronised(tmp_path), f"LD_PRELOAD={LIBFAKETIME[0]}", "FAKETIME=-3d")


def stepped(tmp_path: Path, offset_file: Path) -> tuple[str, ...]:
    """A clock offset read from *offset_file* at every call (``FAKETIME_NO_CACHE``):
    writing another offset there steps the process's wall clock."""
    return (*unsynchronised(tmp_path), f"LD_PRELOAD={LIBFAKETIME[0]}",
            f"FAKETIME_TIMESTAMP_FILE={offset_file}", "FAKETIME_NO_CACHE=1")


def test_faketime_shifts_the_wall_clock_alone(tmp_path: Path) -> None:
    """The shifted clock as the door and the daemon get it, as ``faketime -f -3d`` gives
    it: the wall clock three days behind, the monotonic clock real (as on a Pi)."""
    script = "import time; print(time.time(), time.monotonic())"
    for prefix in (three_days_behind(tmp_path),
                   ("env", "DONT_FAKE_MONOTONIC=1", "faketime", "-f", "-3d")):
        done = subprocess.run([*prefix, sys.executable, "-c", script], capture_output=True,
                              text=True, check=True, env=os.environ, timeout=60)
        wall, mono = map(float, done.stdout.split())
        assert wall == pytest.approx(time.time() - 3 * 86400, abs=60), (prefix, done.stdout)
        assert mono == pytest.approx(time.monotonic(), abs=60), (prefix, done.stdout)


def close_to(stamp: str, real: datetime, slack: timedelta = CLOSE) -> bool:
    return abs(datetime.fromisoformat(stamp) - real) <= slack


def test_a_door_three_days_behind(tmp_path: Path, server: Server,
                                  devices: list[Device]) -> None:
    real = datetime.now(UTC)
    server.api("PUT", "/api/sessions/s1", {
        "name": "Keynote", "validate_registrants": True,
        "starts_at": (real - timedelta(hours=1)).isoformat(),
        "ends_at": (real + timedelta(hours=2)).isoformat()}, expect=201)
    codes = ["A1", "A2", "A3", "A4", "A5"]
    server.api("POST", "/api/attendees", [{"code": c, "name": c} for c in codes])
    for code in codes:
        server.api("PUT", f"/api/sessions/s1/registrants/{code}", expect=201)
    device = Device(tmp_path / "door", "door-field", server.sync_url,
                    door={"unknown_time": "admit"})
    device.token_file.write_text(server.provision("door-field", "s1") + "\n")
    device.token_file.chmod(0o600)
    device.command_prefix = three_days_behind(tmp_path)
    devices.append(device)

    # Synced once, in an earlier boot: the cache is there, the anchor is of no use now.
    device.start_sync()
    wait_for(lambda: len(device.registrants()) == len(codes), what="first snapshot",
             process=device.sync)
    device.stop_sync()
    with sqlite3.connect(device.store_file) as db:
        db.execute("UPDATE sync_state SET anchor_boot_id = 'an-earlier-boot'")

    # (a) booted offline: the window is the policy's.
    before = datetime.now(UTC)
    admit = device.door("A1")
    device.config.write_text(device.config.read_text().replace(
        'unknown_time = "admit"', 'unknown_time = "refuse"'))
    refuse = device.door("A2")
    after = datetime.now(UTC)
    assert [(d["code"], d["decision"], d["reason"], d["time_source"])
            for d in admit + refuse] == [("A1", "admitted", "registered", "unknown"),
                                         ("A2", "rejected", "time_unknown", "unknown")]
    for line in admit + refuse:  # the process's own clock, three days behind
        assert close_to(line["at"], before - timedelta(days=3), after - before + CLOSE)
    assert sorted(device.upload_states().values()) == ["waiting", "waiting"]
    assert {row[0] for row in device.query("SELECT time_source FROM scans")} == {"unknown"}

    # (b) the daemon syncs: the server re-times them from the hello's anchor of this boot.
    device.start_sync()
    wait_for(lambda: device.waiting() == 0, what="the offline scans uploaded",
             process=device.sync)
    retimed = check_retimed(server, before, after)

    # (c) an anchor from a welcome in this boot: the server's time, carried.
    wait_for(lambda: device.status().get("anchor_boot_id") == boot_id(),
             what="the welcome's anchor", process=device.sync)
    real = datetime.now(UTC)
    [carried] = device.door("A3")
    assert (carried["reason"], carried["time_source"]) == ("registered", "server")
    assert close_to(carried["at"], real, datetime.now(UTC) - real + CLOSE)
    status = device.status()  # (checkin status itself runs on the real clock)
    assert status["time_source"] in ("server", "system")
    assert status["clock_offset_s"] == pytest.approx(-3 * 86400, abs=60)
    wait_for(lambda: device.waiting() == 0, what="A3 uploaded", process=device.sync)
    stored = next(s for s in server.attendance("s1")["scans"] if s["code"] == "A3")
    assert stored["scanned_at"] == carried["at"] or close_to(stored["scanned_at"], real,
                                                             CLOSE)

    # (d) the wall clock stepped during a run: decisions on the server's time stand.
    offset = tmp_path / "faketime-offset"
    offset.write_text("-3d\n")
    device.command_prefix = stepped(tmp_path, offset)
    lines = device.start_live_door()
    try:
        decided = []
        for code, step in (("A4", "+0"), ("A5", "-10d"), ("A1", "+2d")):
            real = datetime.now(UTC)
            device.show(code)
            decided.append(lines.next())
            assert close_to(decided[-1]["at"], real, datetime.now(UTC) - real + CLOSE)
            offset.write_text(f"{step}\n")
            device.show(None)
    finally:
        assert device.door_process is not None
        device.door_process.stop()
    assert [(d["code"], d["reason"], d["time_source"]) for d in decided] == [
        ("A4", "registered", "server"), ("A5", "registered", "server"),
        ("A1", "reentry", "server")]
    ats = [datetime.fromisoformat(d["at"]) for d in decided]
    assert ats == sorted(ats)
    if not retimed:
        pytest.xfail("(b) the server re-timing (server/retime.py, helper P's) has not "
                     "landed: attendance's scans have no time_corrected")


def check_retimed(server: Server, before: datetime, after: datetime) -> bool:
    """Attendance shows the offline scans at their real times, marked reconstructed
    (``False``: the server does not re-time yet; the rest of the test runs on)."""
    scans = {s["code"]: s for s in server.attendance("s1")["scans"]}
    if any("time_corrected" not in scan for scan in scans.values()):
        return False
    for code in ("A1", "A2"):
        scan = scans[code]
        assert scan["time_corrected"] == "reconstructed", scan
        assert scan["time_source"] == "unknown", scan
        assert close_to(scan["scanned_at"], before, after - before + CLOSE), scan
        assert close_to(scan["device_scanned_at"], before - timedelta(days=3),
                        after - before + CLOSE), scan
    return True
