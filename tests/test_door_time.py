"""The door's time source (issue 17) through a real ``checkin door`` process: system when
the clock is synchronised (timesyncd's marker, here in a tmp dir), the server's carried on
the monotonic clock from the daemon's anchor in this boot, else unknown, and a session
window with the time unknown decided by ``[door] unknown_time``. The clocks are real;
faketime's three days behind is tests/test_field_time.py's."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from core.clock import boot_id
from core.rules import SessionRules
from core.timesource import ClockAnchor
from sync.store import SyncStore
from tests.conftest import fill_store, read_scans
from tests.test_door import FAST, frames, run_door

NOW = datetime.now(UTC)
#: A session that ended an hour ago by this machine's clock.
ENDED = SessionRules("talk", False, NOW - timedelta(hours=3), NOW - timedelta(hours=1))
#: A session running three days from now: inside only by a server three days ahead.
LATER = SessionRules("later", False, NOW + timedelta(days=3, hours=-1),
                     NOW + timedelta(days=3, hours=1))


def timesync(tmp_path: Path, env: dict[str, str], *, synced: bool) -> dict[str, str]:
    """Point the door at a timesyncd marker in *tmp_path*: there, or its folder alone."""
    marker = tmp_path / "timesync" / "synchronized"
    marker.parent.mkdir(exist_ok=True)
    if synced:
        marker.touch()
    return env | {"CHECKIN_TIMESYNC_FILE": str(marker)}


def anchor(data_dir: Path, server_time: datetime, boot: str) -> None:
    """Record a clock anchor as the sync daemon does on a welcome."""

    async def note() -> None:
        store = await SyncStore.open(data_dir)
        try:
            await store.note_clock(ClockAnchor(server_time, time.monotonic_ns(), boot))
        finally:
            await store.close()

    asyncio.run(note())


def test_a_synchronised_clock_is_the_systems(tmp_path, make_config, subprocess_env) -> None:
    config = make_config(f"images:{frames(tmp_path / 'frames', 'A1')}")
    fill_store(tmp_path / "data", ENDED, ["A1"], [])
    anchor(tmp_path / "data", NOW + timedelta(days=3), boot_id())  # not used: the clock is
    _, lines, _ = run_door(config, timesync(tmp_path, subprocess_env, synced=True))
    assert [(d["reason"], d["time_source"]) for d in lines] == [("outside_window", "system")]
    assert abs(datetime.fromisoformat(lines[0]["at"]) - datetime.now(UTC)) < timedelta(hours=1)
    assert read_scans(tmp_path / "data")[0]["time_source"] == "system"


@pytest.mark.parametrize(("policy", "reason"), [("admit", "registered"),
                                                ("refuse", "time_unknown")])
def test_with_the_time_unknown_a_window_is_the_policys(tmp_path, make_config, subprocess_env,
                                                       policy: str, reason: str) -> None:
    folder = frames(tmp_path / "frames", "A1", None, "A2")
    config = make_config(f"images:{folder}", extra=f'[door]\nunknown_time = "{policy}"\n' + FAST)
    fill_store(tmp_path / "data", ENDED, ["A1", "A2"], [])
    anchor(tmp_path / "data", NOW, "another-boot")  # an anchor of another boot says nothing
    status, lines, stderr = run_door(config, timesync(tmp_path, subprocess_env, synced=False))
    assert status == 0, stderr
    assert [(d["code"], d["decision"], d["reason"], d["time_source"]) for d in lines] == [
        (code, "admitted" if policy == "admit" else "rejected", reason, "unknown")
        for code in ("A1", "A2")]
    scans = read_scans(tmp_path / "data")
    assert [s["time_source"] for s in scans] == ["unknown", "unknown"]
    warnings = stderr.count("without knowing the time")
    assert warnings == (1 if policy == "admit" else 0), stderr  # once a minute at most


def test_without_a_window_the_time_does_not_matter(tmp_path, make_config,
                                                   subprocess_env) -> None:
    config = make_config(f"images:{frames(tmp_path / 'frames', 'A1')}",
                         extra='[door]\nunknown_time = "refuse"\n')
    fill_store(tmp_path / "data", SessionRules("open", False), ["A1"], [])
    _, lines, stderr = run_door(config, timesync(tmp_path, subprocess_env, synced=False))
    assert [(d["reason"], d["time_source"]) for d in lines] == [("registered", "unknown")]
    assert "without knowing the time" not in stderr


def test_an_anchor_of_this_boot_carries_the_servers_time(tmp_path, make_config,
                                                         subprocess_env) -> None:
    """The server three days ahead of this machine: the door's time is the server's (the
    window three days from now is open), and its scans say so."""
    config = make_config(f"images:{frames(tmp_path / 'frames', 'A1')}",
                         extra='[door]\nunknown_time = "refuse"\n')
    fill_store(tmp_path / "data", LATER, ["A1"], [])
    server_now = datetime.now(UTC) + timedelta(days=3)
    anchor(tmp_path / "data", server_now, boot_id())
    _, lines, _ = run_door(config, timesync(tmp_path, subprocess_env, synced=False))
    assert [(d["reason"], d["time_source"]) for d in lines] == [("registered", "server")]
    at = datetime.fromisoformat(lines[0]["at"])
    assert timedelta(0) <= at - server_now < timedelta(minutes=1)
    scan = read_scans(tmp_path / "data")[0]
    assert (scan["time_source"], scan["scanned_at"]) == ("server", lines[0]["at"])
