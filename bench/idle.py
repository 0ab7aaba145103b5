"""Idle CPU: what a door unit costs while nobody walks through its door.

A real ``checkin door`` whose camera is an ``images:`` folder with no badge in it (it shows
a blank frame at 10 fps, the Pi camera's rate, and decodes each one) and its real ``checkin
sync`` connected to a real ``checkin server``, in sync with the session and nothing to
upload. The CPU time of both processes (user + system, every thread, from
``/proc/PID/stat``) over a window, as a share of one core.

"Decode excluded": the door's CPU minus what decoding its blank frames costs, measured here
in this process with the door's own decoder on the same frame (CPU time of the calling
thread) and multiplied by the frames the door saw in the window. The decoder's share
belongs to the camera's rate and the decoder, not to the door's loop or the daemon.

The figure before issue 14 (the daemon looked for new scans every 50 ms) was measured with
this benchmark on the code of commit e69ea8d, on the 2-vCPU development VM:
:data:`BEFORE_DAEMON_PERCENT` and :data:`BEFORE_TOTAL_PERCENT`.
"""

from __future__ import annotations

import sqlite3
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.fixtures import SESSION, codes, event
from bench.report import Row
from checkin.harness import Device, Process, Server, wait_for
from device.config import ScannerConfig
from device.scanner.decoders import make_decoder
from sync.device_store import STORE_FILE

#: The Pi camera's rate, at which the door decodes frames while idle.
FPS = 10.0
#: The goal: door + daemon, decode excluded, in percent of one core.
GOAL_PERCENT = 2.0
#: ``python -m bench.idle`` on commit e69ea8d (daemon polling every 50 ms), 30 s windows (two
#: runs: daemon 1.37 % both times, total 2.27 % and 2.34 %),
#: 200,000 registrants, the 2-vCPU development VM, 2026-12-01.
BEFORE_DAEMON_PERCENT = 1.37
BEFORE_TOTAL_PERCENT = 2.30


@dataclass(frozen=True)
class Idle:
    """CPU shares (percent of one core) over one window."""

    door: float
    door_decode: float
    daemon: float
    frames: int

    @property
    def total_without_decode(self) -> float:
        return self.door - self.door_decode + self.daemon


def decode_seconds_per_frame(rounds: int) -> float:
    """CPU seconds the door's decoder takes on one blank frame (as the idle camera shows)."""
    decoder = make_decoder(ScannerConfig().decoder)
    blank = np.full((480, 640), 200, dtype=np.uint8)  # device/scanner/images.py's blank view
    for _ in range(5):
        decoder.decode(blank)
    started = time.thread_time()
    for _ in range(rounds):
        decoder.decode(blank)
    return (time.thread_time() - started) / rounds


def _door(folder: Path, server: Server) -> Device:
    device = Device(folder, "door-idle", server_url=server.sync_url,
                    camera={"fps": FPS}, server={"retry_min_seconds": 0.1})
    device.token_file.write_text(server.provision("door-idle", SESSION) + "\n")
    return device


def _in_sync(device: Device) -> bool:
    path = device.data_dir / STORE_FILE
    if not path.exists():
        return False
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            row = db.execute("SELECT session_id FROM session").fetchone()
    except sqlite3.OperationalError:
        return False
    return row is not None


def _cpu(process: Process) -> float:
    process_alive(process)
    return process.cpu_seconds()


def process_alive(process: Process) -> None:
    if process.poll() is not None:
        raise RuntimeError(f"{process} exited {process.returncode}\n{process.tail()}")


def measure_idle(window: float, registrants: int, settle: float = 3.0) -> Idle:
    """Start a server, a door and its daemon, wait until they are in sync and idle, and
    take the CPU of both over *window* seconds."""
    everyone = codes("IDLE", registrants)
    per_frame = decode_seconds_per_frame(50)
    with event(everyone, everyone) as bench:
        device = _door(bench.folder / "door", bench.server)
        try:
            device.start_sync()
            door = device.start_door(pipe=False)
            assert device.sync is not None
            wait_for(lambda: _in_sync(device), 120, "the daemon's first sync",
                     process=device.sync, interval=0.2)
            time.sleep(settle)  # the snapshot's writes and the door's start-up behind us
            door_before, sync_before = _cpu(door), _cpu(device.sync)
            started = time.perf_counter()
            time.sleep(window)
            door_after, sync_after = _cpu(door), _cpu(device.sync)
            elapsed = time.perf_counter() - started
        finally:
            device.stop()
    frames = round(elapsed * FPS)  # the images: source paces itself at the camera's rate
    return Idle(door=100 * (door_after - door_before) / elapsed,
                door_decode=100 * per_frame * frames / elapsed,
                daemon=100 * (sync_after - sync_before) / elapsed,
                frames=frames)


def run(quick: bool) -> list[Row]:
    window, registrants = (5.0, 1000) if quick else (30.0, 200_000)
    idle = measure_idle(window, registrants)
    print(f"  idle: door {idle.door:.2f} % (decoding {idle.door_decode:.2f} % of it), "
          f"daemon {idle.daemon:.2f} % of a core over {window:g} s", file=sys.stderr, flush=True)
    before_daemon = BEFORE_DAEMON_PERCENT or None
    before_total = BEFORE_TOTAL_PERCENT or None
    label = "50 ms poll (before)"
    return [
        Row(f"idle CPU, door + daemon, decode excluded ({registrants:,} registrants)",
            idle.total_without_decode, before_total, label, "% of a core",
            f"< {GOAL_PERCENT:g} %", idle.total_without_decode < GOAL_PERCENT),
        Row("  of it: sync daemon", idle.daemon, before_daemon, label, "% of a core", "", None),
        Row("  door, decoding included (10 fps blank frames)", idle.door, None, "",
            "% of a core", "", None),
    ]


def main() -> int:
    quick = "--quick" in sys.argv[1:]
    from bench.report import show
    print(show(run(quick)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
