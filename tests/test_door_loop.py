"""The door loop in-process with a scripted camera: hiccups, flushes, recording order and
the debouncer frame by frame (a made-up clock)."""

from __future__ import annotations

import asyncio
import io
import json
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from checkin.badges import render_badge
from core.rules import SessionRules
from device.config import parse_config
from device.debounce import Debouncer
from device.door import Door
from device.indicators.signals import Indicators
from device.scanner.decoders import make_decoder
from device.scanner.frames import CameraError, CaptureTimeout, Frame, SourceExhausted
from sync.device_store import DoorStore, Store

SECOND = 1_000_000_000
BADGE = np.asarray(render_badge("A1"))
BLANK = np.full((480, 640), 200, np.uint8)


class ScriptedCamera:
    """A frame source that plays a script of frames and failures."""

    def __init__(self, script: list, step_ns: int = SECOND) -> None:
        self.script = list(script)
        self.step_ns = step_ns
        self.flushes = 0
        self.closed = 0
        self.clock = 0

    @contextmanager
    def capture(self, timeout: float):
        if not self.script:
            raise SourceExhausted
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        self.clock += self.step_ns
        yield Frame(step, self.clock)

    def flush(self) -> None:
        self.flushes += 1

    def close(self) -> None:
        self.closed += 1


def make_door(tmp_path: Path, cameras: list[ScriptedCamera], mocker) -> tuple[Door, io.StringIO]:
    config = parse_config({
        "device": {"id": "loop", "data_dir": str(tmp_path / "data")},
        "camera": {"source": "picamera2", "timeout": 0.5},
        "scanner": {"debounce_seconds": 0.5},
        "gpio": {"pin_factory": "mock", "green": 17, "red": 27, "buzzer": 22},
    }, tmp_path / "door.toml")
    mocker.patch("device.door.open_source", side_effect=cameras)
    mocker.patch("device.door.MAX_RETRY_SECONDS", 0.01)
    out = io.StringIO()
    return Door(config, make_decoder("zxing-cpp"), Indicators.from_config(config.gpio), out), out


async def fill(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "data")
    await store.replace_cache(SessionRules("s", True), ["A1"], ["A1"])
    await store.close()


async def test_timeouts_and_camera_errors_are_survived(tmp_path, mocker, caplog) -> None:
    await fill(tmp_path)
    first = ScriptedCamera([CaptureTimeout("no frame within 0.5 s"), BADGE,
                            CameraError("camera capture failed: EIO")])
    second = ScriptedCamera([np.zeros((480, 640), np.uint8), BADGE])
    door, out = make_door(tmp_path, [first, second], mocker)
    status = await door.run(exit_when_done=True)
    assert status == 0
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    # the second BADGE comes 2 simulated seconds later: past the debounce window
    assert [line["reason"] for line in lines] == ["registered", "reentry"]
    assert first.closed == 1 and second.closed == 1  # the failing camera was reopened
    assert door.stats.camera_errors == 1 and door.stats.frames == 3
    assert "no frame within 0.5 s; retrying" in caplog.text
    assert "camera capture failed: EIO; reopening the camera" in caplog.text


async def test_a_decision_flushes_the_camera_and_a_held_phone_is_one_scan(tmp_path,
                                                                        mocker) -> None:
    await fill(tmp_path)
    camera = ScriptedCamera([BADGE] * 4)  # one phone held for four frames
    door, out = make_door(tmp_path, [camera], mocker)
    door.debouncer.window_ns = 10 * SECOND
    await door.run(exit_when_done=True)
    assert len(out.getvalue().splitlines()) == 1
    assert camera.flushes == 1


async def test_a_camera_that_will_not_open_is_retried_until_stopped(tmp_path, mocker) -> None:
    door, out = make_door(tmp_path, [], mocker)
    attempts = mocker.patch("device.door.open_source", side_effect=CameraError("no camera"))
    task = asyncio.create_task(door.run())
    while attempts.call_count < 3:
        await asyncio.sleep(0.01)
    door.stop()
    assert await asyncio.wait_for(task, 10) == 0
    assert out.getvalue() == ""


async def test_a_phone_held_through_a_slow_commit_is_one_scan(tmp_path, mocker) -> None:
    """A phone held in view at 40 frames a second while each commit waits 2 s (behind the
    sync daemon's write lock, or a slow SD card): the next frame comes 2 s after the last,
    past the 0.5 s window, but the door never saw the phone leave. Before the fix each
    of these frames was a new scan (registered, reentry, reentry)."""
    await fill(tmp_path)
    camera = ScriptedCamera([BADGE] * 3, step_ns=SECOND // 40)
    door, out = make_door(tmp_path, [camera], mocker)
    insert = DoorStore._insert

    def slow_insert(store: DoorStore, scan):
        camera.clock += 2 * SECOND  # the commit waited that long
        return insert(store, scan)

    mocker.patch.object(DoorStore, "_insert", slow_insert)
    await door.run(exit_when_done=True)
    assert [json.loads(line)["reason"] for line in out.getvalue().splitlines()] == [
        "registered"]
    assert door.stats.frames == 3


async def test_a_phone_out_of_view_for_the_window_is_a_new_scan(tmp_path, mocker) -> None:
    await fill(tmp_path)
    # 0.2 s frames, 0.5 s window: out of view from 0.4 s (the first blank frame)
    camera = ScriptedCamera([BADGE, BLANK, BLANK, BADGE,           # back at 0.8: 0.4 s out
                             BLANK, BLANK, BLANK, BADGE, BADGE],   # back at 1.6: 0.6 s out
                            step_ns=SECOND // 5)
    door, out = make_door(tmp_path, [camera], mocker)
    await door.run(exit_when_done=True)
    assert [json.loads(line)["reason"] for line in out.getvalue().splitlines()] == [
        "registered", "reentry"]


# The debouncer on its own, frame by frame, with a made-up clock.

def test_the_debouncer_counts_absence_only_in_frames_it_looked_at() -> None:
    d = Debouncer(SECOND)
    assert d.frame([b"A"], 0) == [b"A"]
    assert d.frame([b"A"], 5 * SECOND) == []  # 5 s without a frame: still in view
    assert d.frame([], 6 * SECOND) == []      # gone from 6 s on
    assert d.frame([b"A"], 6 * SECOND + SECOND // 2) == []  # 0.5 s out: the same phone
    assert d.frame([], 7 * SECOND) == []
    assert d.frame([b"B", b"A"], 8 * SECOND - 1) == [b"B"]  # A out only from 7 s
    assert d.frame([b"B"], 9 * SECOND) == []
    assert d.frame([b"A"], 10 * SECOND) == [b"A"]  # out from 9 s, for the whole window
    assert d.frame([b"A", b"A"], 20 * SECOND) == []


def test_the_debouncer_without_a_window_counts_every_frame() -> None:
    d = Debouncer(0)
    assert d.frame([b"A"], 0) == [b"A"]
    assert d.frame([b"A", b"A"], 0) == [b"A"]


def test_the_debouncer_forgets_codes_out_of_view_for_the_window() -> None:
    d = Debouncer(SECOND)
    for i in range(1000):
        d.frame([str(i).encode()], i * SECOND)
    assert len(d._last_seen) <= 2 and len(d._gone_since) <= 2


@given(st.lists(st.tuples(st.sets(st.sampled_from([b"A", b"B", b"C"])),
                          st.integers(0, 3 * SECOND)), max_size=40),
       st.integers(1, 2 * SECOND))
def test_the_debouncer_matches_its_rule_over_the_frames_seen(frames, window: int) -> None:
    """A code is a new scan in a frame when no earlier frame had it, or when the frames
    since it was last in view lack it and the first of them is a window old or more:
    checked against the whole history, whatever the gaps between frames."""
    d, history, now = Debouncer(window), [], 0
    for payloads, gap in frames:
        now += gap
        expected = []
        for code in sorted(payloads):
            seen = [i for i, (_, codes) in enumerate(history) if code in codes]
            since = history[seen[-1] + 1:] if seen else []  # the frames without it since
            if not seen or (since and now - since[0][0] >= window):
                expected.append(code)
        assert d.frame(sorted(payloads), now) == expected
        history.append((now, payloads))
