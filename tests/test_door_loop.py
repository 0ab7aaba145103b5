"""The door loop in-process with a scripted camera: hiccups, flushes and recording order."""

from __future__ import annotations

import asyncio
import io
import json
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from checkin.badges import render_badge
from core.rules import SessionRules
from device.config import parse_config
from device.door import Door
from device.indicators.signals import Indicators
from device.scanner.decoders import make_decoder
from device.scanner.frames import CameraError, CaptureTimeout, Frame, SourceExhausted
from sync.device_store import Store

BADGE = np.asarray(render_badge("A1"))


class ScriptedCamera:
    """A frame source that plays a script of frames and failures."""

    def __init__(self, script: list) -> None:
        self.script = list(script)
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
        self.clock += 1_000_000_000
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
    door.debouncer.window_ns = 10 * 1_000_000_000
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
