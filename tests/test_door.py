"""The door process end to end: a real ``checkin door`` subprocess, an ``images:`` camera,
a pre-filled store on disk, and its stdout read as the contract says."""

from __future__ import annotations

import json
import resource
import signal
import sqlite3
import subprocess
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest

from checkin.badges import Look, write_badge
from checkin.harness import decisions, run
from core.rules import SessionRules
from device.config import DECODERS
from sync.device_store import STORE_FILE
from tests.conftest import CHECKIN, fill_store, read_scans

FAST = """
[scanner]
debounce_seconds = 0.15
"""
SESSION = SessionRules("workshop-1", validate_registrants=True)
CONTRACT_KEYS = {"scan_id", "code", "session_id", "decision", "reason", "at", "time_source"}


def frames(folder: Path, *payloads: str | bytes | None) -> Path:
    folder.mkdir(exist_ok=True)
    for i, payload in enumerate(payloads):
        write_badge(folder / f"{i:02d}.png", payload, Look(angle=7 * i), seed=i)
    return folder


def run_door(config: Path, env: dict, **kwargs) -> tuple[int, list[dict], str]:
    done = run("door", "--config", str(config), "--exit-when-done", env=env, **kwargs)
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, decisions(done.stdout), done.stderr


def test_the_door_decides_records_and_prints_every_outcome(tmp_path, make_config,
                                                           subprocess_env) -> None:
    folder = frames(
        tmp_path / "frames",
        "A1",                                   # registrant: admitted
        "A1",                                   # same phone still in view: ignored
        None,                                   # nothing in view
        "B2",                                   # attendee, not a registrant
        "ZZZ-404",                              # not an attendee of the event
        b"\x00\xffgarbage\x1b",                 # binary garbage
        "https://tickets.example/t/A2",         # registrant, as a URL
        None,
        "A1",                                   # back after the debounce window: re-entry
    )
    (folder / "04b-broken.png").write_bytes(b"\x89PNG not really")
    config = make_config(f"images:{folder}", extra=FAST)
    fill_store(tmp_path / "data", SESSION, ["A1", "A2", "B2"], ["A1", "A2"])

    status, lines, stderr = run_door(config, subprocess_env)

    assert status == 0, stderr
    assert [(d["code"], d["decision"], d["reason"]) for d in lines] == [
        ("A1", "admitted", "registered"),
        ("B2", "rejected", "not_registered"),
        ("ZZZ-404", "rejected", "unknown_code"),
        ("\\x00\\xffgarbage\\x1b", "rejected", "invalid_code"),
        ("A2", "admitted", "registered"),
        ("A1", "admitted", "reentry"),
    ]
    for line in lines:
        assert line.keys() >= CONTRACT_KEYS
        assert line["session_id"] == "workshop-1"
        assert line["recorded"] is True
        assert datetime.fromisoformat(line["at"]).utcoffset() is not None
    assert "not UTF-8" in lines[3]["detail"]
    assert "04b-broken.png" in stderr and "skipping unreadable image" in stderr
    scans = read_scans(tmp_path / "data")
    assert [s["scan_id"] for s in scans] == [d["scan_id"] for d in lines]
    assert [s["seq"] for s in scans] == [d["seq"] for d in lines]
    assert {s["upload_state"] for s in scans} == {"waiting"}
    assert all(s["boot_id"] and s["monotonic_ns"] > 0 for s in scans)


def test_without_a_synced_list_the_door_is_not_ready_but_records(tmp_path, make_config,
                                                                subprocess_env) -> None:
    config = make_config(f"images:{frames(tmp_path / 'frames', 'A1')}")
    status, lines, _ = run_door(config, subprocess_env)
    assert status == 0
    assert [(d["decision"], d["reason"], d["session_id"]) for d in lines] == [
        ("rejected", "not_ready", None)]
    assert len(read_scans(tmp_path / "data")) == 1


def test_reentry_can_be_forbidden(tmp_path, make_config, subprocess_env) -> None:
    config = make_config(f"images:{frames(tmp_path / 'frames', 'A1', None, None, 'A1')}",
                         extra="[door]\nallow_reentry = false\n" + FAST)
    fill_store(tmp_path / "data", SessionRules("s", False), ["A1"], [])
    _, lines, _ = run_door(config, subprocess_env)
    assert [d["reason"] for d in lines] == ["registered", "already_admitted"]


def test_an_unusable_data_dir_signals_not_ready_and_admits_nobody(tmp_path, make_config,
                                                                 subprocess_env) -> None:
    (tmp_path / "data").write_text("a file where the data dir should be")
    config = make_config(f"images:{frames(tmp_path / 'frames', 'A1', 'A2')}")
    status, lines, stderr = run_door(config, subprocess_env)
    assert status == 1  # some scans could not be recorded
    assert [(d["decision"], d["reason"], d["recorded"]) for d in lines] == [
        ("rejected", "not_ready", False)] * 2
    assert "cannot create data dir" in stderr


def _limit_file_size() -> None:
    # A full disk, as SQLite sees it: every write past this size fails (EFBIG).
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))


def test_a_full_disk_signals_not_ready_and_admits_nobody(tmp_path, make_config,
                                                         subprocess_env) -> None:
    fill_store(tmp_path / "data", SESSION, ["A1"], ["A1"])
    config = make_config(f"images:{frames(tmp_path / 'frames', 'A1')}")
    status, lines, stderr = run_door(config, subprocess_env, preexec_fn=_limit_file_size)
    assert status == 1
    assert [(d["decision"], d["reason"], d["recorded"]) for d in lines] == [
        ("rejected", "not_ready", False)]
    assert "not_ready" in stderr
    assert read_scans(tmp_path / "data") == []


def test_sigterm_stops_the_door_cleanly(tmp_path, make_config, subprocess_env) -> None:
    config = make_config(f"images:{frames(tmp_path / 'frames', 'A1')}")
    config.write_text(config.read_text().replace("frames_per_image = 2",
                                                 "frames_per_image = 10000"))
    fill_store(tmp_path / "data", SESSION, ["A1"], ["A1"])
    door = subprocess.Popen([*CHECKIN, "door", "--config", str(config)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=subprocess_env)
    try:
        first = json.loads(door.stdout.readline())
        assert first["reason"] == "registered"
        door.send_signal(signal.SIGTERM)
        started = time.monotonic()
        assert door.wait(timeout=30) == 0
        assert time.monotonic() - started < 30
    finally:
        door.kill()
    stderr = door.stderr.read()
    assert "Traceback" not in stderr and "stopped" in stderr
    assert len(read_scans(tmp_path / "data")) == 1


def test_a_badge_held_while_a_commit_waits_for_the_store_is_one_scan(tmp_path, make_config,
                                                                    subprocess_env) -> None:
    """Once the door has recorded A1, another connection holds the store's write lock for
    1.5 s (as a busy sync daemon or a slow SD card would): B2's commit waits for it, and
    B2's second frame comes more than the 0.5 s window after its first. The door never
    saw B2 leave the view: one scan (before the fix, B2 was decided twice)."""
    folder = frames(tmp_path / "frames", "A1", None, None, None, None, "B2")
    config = make_config(f"images:{folder}", extra="[scanner]\ndebounce_seconds = 0.5\n")
    fill_store(tmp_path / "data", SESSION, ["A1", "B2"], ["A1"])
    done = threading.Event()

    def hold_the_lock_after_the_first_scan() -> None:
        db = sqlite3.connect(tmp_path / "data" / STORE_FILE, isolation_level=None, timeout=30)
        try:
            while not done.is_set():
                if db.execute("SELECT count(*) FROM scans").fetchone()[0]:
                    db.execute("BEGIN IMMEDIATE")
                    time.sleep(1.5)
                    db.execute("COMMIT")
                    return
                time.sleep(0.001)
        finally:
            db.close()

    holder = threading.Thread(target=hold_the_lock_after_the_first_scan)
    holder.start()
    try:
        status, lines, stderr = run_door(config, subprocess_env)
    finally:
        done.set()
        holder.join()
    assert status == 0, stderr
    assert [(d["code"], d["reason"]) for d in lines] == [
        ("A1", "registered"), ("B2", "not_registered")]
    assert len(read_scans(tmp_path / "data")) == 2


def test_a_missing_image_folder_is_reported(tmp_path, make_config, subprocess_env) -> None:
    status, lines, stderr = run_door(make_config("images:nowhere"), subprocess_env)
    assert status == 1 and lines == []
    assert "no such file or folder" in stderr


@pytest.mark.parametrize("decoder", DECODERS)
def test_either_decoder_runs_the_door(tmp_path, make_config, subprocess_env, decoder) -> None:
    config = make_config(f"images:{frames(tmp_path / 'frames', 'A1')}",
                         extra=f'[scanner]\ndecoder = "{decoder}"\n')
    fill_store(tmp_path / "data", SESSION, ["A1"], ["A1"])
    _, lines, stderr = run_door(config, subprocess_env)
    assert [d["reason"] for d in lines] == ["registered"]
    assert f"decoder {decoder}" in stderr
