"""``checkin demo``: the whole system on this machine, checked outcome by outcome,
and stopped cleanly by Ctrl-C."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

from tests.conftest import CHECKIN


def demo_processes(root: str) -> list[str]:
    """Command lines of live processes working in the demo's folder."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if root in cmdline and "pytest" not in cmdline:
            found.append(cmdline)
    return found


def test_demo_once_runs_every_scripted_outcome(subprocess_env) -> None:
    done = subprocess.run([*CHECKIN, "demo", "--once"], capture_output=True, text=True,
                          env=subprocess_env, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    for reason in ("registered", "not_registered", "reentry", "unknown_code", "invalid_code"):
        assert reason in out
    assert "buzzer ♪" in out and "red ●" in out and "green ●" in out  # from the mock pins
    assert "link disconnected, 2 scan(s) waiting" in out  # the cut door kept recording
    assert "(phone still in view: ignored" in out
    assert re.search(r"in the door's cache \d+ ms after the organizer's request", out)
    assert "workshop  registered 3, admitted 3, rejected 4, 9 scans" in out
    assert "keynote   registered 4, admitted 2, rejected 1, 4 scans" in out
    assert "reached the server exactly once" in out
    assert "All scripted outcomes happened." in out
    assert "Traceback" not in done.stderr
    root = re.search(r"Files and logs: (\S+)", out).group(1)
    assert not Path(root).exists()
    assert demo_processes(root) == []


def test_ctrl_c_stops_every_process(subprocess_env, tmp_path) -> None:
    out = tmp_path / "demo.out"
    with out.open("w") as sink:
        demo = subprocess.Popen([*CHECKIN, "demo"], stdout=sink, stderr=subprocess.STDOUT,
                                env=subprocess_env)
    try:
        deadline = time.monotonic() + 240
        while "Ctrl-C stops everything" not in out.read_text():
            assert demo.poll() is None, out.read_text()
            assert time.monotonic() < deadline, out.read_text()
            time.sleep(0.2)
        root = re.search(r"Files and logs: (\S+)", out.read_text()).group(1)
        assert len(demo_processes(root)) == 5  # server, and a sync and a door per door
        demo.send_signal(signal.SIGINT)
        try:  # a timeout to stop a hang, not a speed limit: processes stop within 15 s
            assert demo.wait(timeout=120) == 0
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the demo did not stop; still running: "
                                 f"{demo_processes(root)}\n{out.read_text()}") from None
    finally:
        if demo.poll() is None:
            demo.kill()
    text = out.read_text()
    assert "Stopped every process." in text and "Traceback" not in text
    assert demo_processes(root) == []
