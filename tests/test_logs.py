"""Logs: text as before on a terminal; under systemd no timestamps of ours and a syslog
priority on every line; ``--log-format json`` one object per line with the extra fields;
one line per door decision and per sync event."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from checkin.harness import Process, decisions, process_env, wait_for
from checkin.logs import (
    JournalFormatter,
    JsonFormatter,
    extras,
    formatter,
    priority,
    under_journald,
)
from tests.conftest import CHECKIN
from tests.system import Device, Server

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d")


def record(level: int = logging.INFO, message: str = "hello %s", args: tuple = ("door",),
           **extra: object) -> logging.LogRecord:
    made = logging.LogRecord("checkin.test", level, __file__, 1, message, args, None)
    made.__dict__.update(extra)
    return made


# -- pure ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("level", "expected"), [
    (logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6),
    (logging.DEBUG, 7), (logging.INFO + 1, 4), (1, 7), (60, 2)])
def test_priorities(level: int, expected: int) -> None:
    assert priority(level) == expected


@pytest.mark.parametrize(("value", "expected"), [
    ("8:1234", True), ("8:1235", False), ("9:1234", False), ("", False), ("8", False),
    ("8:", False), (":1234", False), ("x:y", False), ("8:1234:5", False)])
def test_journal_stream_must_match_stderr(value: str, expected: bool) -> None:
    assert under_journald({"JOURNAL_STREAM": value}, 8, 1234) is expected
    assert under_journald({}, 8, 1234) is False


def test_the_journal_format_has_no_time_and_prefixes_every_line() -> None:
    line = JournalFormatter().format(record(logging.WARNING, "one\ntwo %s"))
    assert line == "<4>checkin.test: one\n<4>two door"
    try:
        raise ValueError("boom")
    except ValueError:
        failed = record(logging.ERROR, "failed", ())
        failed.exc_info = sys.exc_info()
    lines = JournalFormatter().format(failed).split("\n")
    assert lines[0] == "<3>checkin.test: failed" and len(lines) > 3
    assert all(line.startswith("<3>") for line in lines)
    assert not TIMESTAMP.search(line)


def test_json_has_the_four_fields_and_the_extras() -> None:
    line = JsonFormatter().format(record(scan_id="s-1", recorded=True, count=3,
                                         path=Path("/x"), logger="not this one"))
    data = json.loads(line)
    assert "\n" not in line
    assert data.pop("ts").endswith("+00:00")
    assert data == {"level": "INFO", "logger": "checkin.test", "message": "hello door",
                    "scan_id": "s-1", "recorded": True, "count": 3, "path": "/x"}


def test_json_carries_the_exception_and_odd_text() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        failed = record(logging.ERROR, "code %s", ("\x1b[2J\u2028é",))
        failed.exc_info = sys.exc_info()
    line = JsonFormatter().format(failed)
    assert "\n" not in line and "\x1b" not in line
    data = json.loads(line)
    assert data["message"] == "code \x1b[2J\u2028é"
    assert "ValueError: boom" in data["exception"]


def test_extras_are_only_what_the_call_added() -> None:
    assert extras(record()) == {}
    assert extras(record(event="x")) == {"event": "x"}


def test_formats() -> None:
    assert isinstance(formatter("json", journald=True), JsonFormatter)
    assert isinstance(formatter("text", journald=True), JournalFormatter)
    plain = formatter("text", journald=False).format(record())
    assert TIMESTAMP.match(plain) and plain.endswith(" INFO checkin.test: hello door")
    with pytest.raises(ValueError, match="expected text or json"):
        formatter("xml", journald=False)


# -- real processes -----------------------------------------------------------------------


@pytest.fixture
def door_folder(tmp_path: Path) -> Device:
    """A door with two badges to decide and a token readable by others (a warning)."""
    device = Device(tmp_path / "door-1", "door-1", "ws://127.0.0.1:9/sync")
    device.token_file.write_text("token\n")
    device.show("A1")
    device.show("B2")
    return device


def run_door(device: Device, *args: str, stderr: Path, env: dict[str, str] | None = None,
             ) -> subprocess.CompletedProcess[str]:
    with stderr.open("w") as sink:
        done = subprocess.run([*CHECKIN, *args, "door", "--config", str(device.config),
                               "--exit-when-done"], stdout=subprocess.PIPE, stderr=sink,
                              text=True, env=env or process_env(), timeout=120)
    assert done.returncode == 0, stderr.read_text()
    assert "Traceback" not in stderr.read_text()
    return done


def journal_env(path: Path) -> dict[str, str]:
    """The environment systemd gives a unit whose stderr is the journal: here, *path*."""
    path.touch()
    info = os.stat(path)
    return process_env(JOURNAL_STREAM=f"{info.st_dev}:{info.st_ino}")


def test_under_journald_no_timestamps_and_priorities(door_folder: Device,
                                                     tmp_path: Path) -> None:
    stderr = tmp_path / "journal"
    done = run_door(door_folder, stderr=stderr, env=journal_env(stderr))
    lines = stderr.read_text().splitlines()
    assert lines and all(re.match(r"<[2-7]>\S+: ", line) for line in lines), lines
    assert not any(TIMESTAMP.search(line) for line in lines), lines
    assert any(line.startswith("<4>checkin.door: [server] token_file") for line in lines)
    told = [line for line in lines if line.startswith("<6>device.door: A1: ")]
    assert len(told) == 1, lines
    assert len(decisions(done.stdout)) == 2  # stdout as ever


def test_a_journal_stream_of_another_file_is_not_the_journal(door_folder: Device,
                                                             tmp_path: Path) -> None:
    """A process started from a unit, its stderr sent elsewhere, keeps the variable."""
    stderr = tmp_path / "stderr"
    run_door(door_folder, stderr=stderr, env=journal_env(tmp_path / "other"))
    lines = stderr.read_text().splitlines()
    assert lines and all(TIMESTAMP.match(line) for line in lines), lines
    assert any(" WARNING checkin.door: [server] token_file" in line for line in lines)


def test_json_logs_one_line_per_decision_with_its_fields(door_folder: Device,
                                                         tmp_path: Path) -> None:
    stderr = tmp_path / "stderr"
    done = run_door(door_folder, "--log-format", "json", stderr=stderr,
                    env=journal_env(stderr))  # json stays json under journald
    records = [json.loads(line) for line in stderr.read_text().splitlines()]
    assert all({"ts", "level", "logger", "message"} <= r.keys() for r in records)
    told = [r for r in records if r.get("event") == "decision"]
    printed = decisions(done.stdout)
    assert [r["code"] for r in told] == [d["code"] for d in printed] == ["A1", "B2"]
    for logged, line in zip(told, printed, strict=True):
        assert logged["level"] == "INFO" and logged["logger"] == "device.door"
        for key in ("scan_id", "device_id", "session_id", "code", "decision", "reason",
                    "direction", "recorded"):
            assert logged[key] == line[key], key
    assert any(r["level"] == "WARNING" and "token_file" in r["message"] for r in records)


def test_json_logs_each_sync_event(tmp_path: Path, server: Server, devices: list) -> None:
    server.api("PUT", "/api/sessions/s1", {"name": "Workshop", "validate_registrants": True},
               expect=201)
    server.api("POST", "/api/attendees", [{"code": c, "name": c} for c in ("A1", "B2")],
               expect=200)
    server.api("PUT", "/api/sessions/s1/registrants/A1", expect=201)
    device = Device(tmp_path / "door-1", "door-1", server.sync_url)
    device.token_file.write_text(server.provision("door-1", "s1") + "\n")
    devices.append(device)
    device.sync = Process(["--log-format", "json", "sync", "--config", str(device.config)],
                          device.sync_log, env=process_env())

    def events() -> list[dict]:
        lines = device.log().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")
                and line.endswith("}")]

    def of(kind: str) -> list[dict]:
        return [e for e in events() if e.get("event") == kind]

    wait_for(lambda: of("snapshot"), what="snapshot logged", process=device.sync)
    connected = of("connected")[0]
    assert {k: connected[k] for k in ("level", "logger", "device_id", "session_id",
                                      "resync", "cursor")} == {
        "level": "INFO", "logger": "checkin.sync", "device_id": "door-1", "session_id": "s1",
        "resync": True, "cursor": 0}
    snapshot = of("snapshot")[0]
    assert (snapshot["session_id"], snapshot["registrants"], snapshot["attendees"]) == (
        "s1", 1, 2)
    server.api("PUT", "/api/sessions/s1/registrants/B2", expect=201)
    changes = wait_for(lambda: of("changes"), what="changes logged", process=device.sync)
    assert changes[0]["count"] == 1 and changes[0]["cursor"] > snapshot["cursor"]
    assert len(device.door("A1", "B2")) == 2
    batch = wait_for(lambda: of("batch"), what="batch logged", process=device.sync)
    assert sum(b["stored"] for b in batch) == 2 and all(b["refused"] == 0 for b in batch)

    server.api("DELETE", "/api/devices/door-1", expect=204)  # its token is revoked
    gone = wait_for(lambda: of("disconnected"), what="disconnect logged", process=device.sync)
    assert gone[0]["level"] == "WARNING" and gone[0]["close_code"] is not None
    assert gone[0]["reason"] in gone[0]["message"] and gone[0]["retry_seconds"] > 0
    # Revoked (close 4004, issue 17): the cache is wiped, an error says the scans are kept.
    [revoked] = of("revoked")
    assert revoked["level"] == "ERROR" and revoked["scans_kept"] == 0
    assert all(e["level"] in ("DEBUG", "INFO", "WARNING") for e in events()
               if e.get("event") != "revoked")


def test_the_servers_own_warnings_are_json_too(tmp_path: Path) -> None:
    """uvicorn's lines (here: a request that is not HTTP) go through our handler."""
    server = Server(tmp_path / "server")
    server.process = Process(["--log-format", "json", "server", "--data",
                              str(server.data_dir), "--port", str(server.port)],
                             server.log, env=server.environment())
    try:
        wait_for(server.healthy, what="server up", process=server.process)
        with socket.create_connection(("127.0.0.1", server.port)) as raw:
            raw.sendall(b"\x16\x03\x01 not http\r\n\r\n")
            raw.recv(1024)

        def uvicorn_lines() -> list[dict]:
            return [r for line in server.log.read_text().splitlines()
                    if line.startswith("{") and (r := json.loads(line))["logger"].startswith(
                        "uvicorn")]

        told = wait_for(uvicorn_lines, what="uvicorn's warning", process=server.process)
        assert told[0]["level"] == "WARNING" and "Invalid HTTP request" in told[0]["message"]
    finally:
        server.kill()


@pytest.mark.parametrize("argv", [
    ["--log-format", "json", "sync", "--config", "door.toml"],
    ["sync", "--config", "door.toml", "--log-format", "json"],
    ["door", "--log-format", "json", "--config", "door.toml"],
    ["server", "--log-format", "json"],
])
def test_log_format_goes_before_the_command_or_after_a_long_running_one(argv) -> None:
    from checkin.cli import _parser

    assert _parser().parse_args(argv).log_format == "json"
    assert _parser().parse_args(argv[2:] if argv[0] == "--log-format" else
                                [a for a in argv if a not in ("--log-format", "json")]
                                ).log_format == "text"
