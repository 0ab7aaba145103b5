"""The picamera2 adapter, with pytest-mock standing in for the library at its boundary."""

from __future__ import annotations

import sys
import types
from contextlib import contextmanager

import numpy as np
import pytest

from device.config import CameraConfig
from device.scanner.frames import CameraError, CaptureTimeout

WIDTH, HEIGHT, STRIDE = 640, 480, 768


@pytest.fixture
def picamera2(mocker):
    """Fake ``picamera2`` and ``libcamera`` modules; returns the Picamera2 instance mock."""
    camera = mocker.MagicMock(name="Picamera2()")
    camera.camera_controls = {"AfMode": (0, 2, 0), "LensPosition": (0.0, 15.0, 1.0)}
    # YUV420 as picamera2 maps it: Y plane rows (with stride padding) then U and V.
    buffer = np.zeros((HEIGHT * 3 // 2, STRIDE), dtype=np.uint8)
    buffer[:HEIGHT, :WIDTH] = 200

    @contextmanager
    def mapped_array(request, stream):
        assert stream == "main"
        yield types.SimpleNamespace(array=buffer)

    fake_picamera2 = types.ModuleType("picamera2")
    fake_picamera2.Picamera2 = mocker.MagicMock(return_value=camera)
    fake_picamera2.MappedArray = mapped_array
    fake_libcamera = types.ModuleType("libcamera")
    fake_libcamera.controls = types.SimpleNamespace(
        AfModeEnum=types.SimpleNamespace(Manual=0, Auto=1, Continuous=2))
    mocker.patch.dict(sys.modules, {"picamera2": fake_picamera2, "libcamera": fake_libcamera})
    camera.buffer = buffer
    return camera


def open_camera(**settings):
    from device.scanner.picamera import Picamera2Source

    return Picamera2Source(CameraConfig(source="picamera2", **settings))


def test_one_small_yuv420_stream_with_autofocus_and_frame_rate(picamera2) -> None:
    open_camera(fps=30, autofocus="continuous")
    picamera2.create_video_configuration.assert_called_once()
    kwargs = picamera2.create_video_configuration.call_args.kwargs
    assert kwargs["main"] == {"size": (WIDTH, HEIGHT), "format": "YUV420"}
    assert kwargs["controls"]["AfMode"] == 2
    assert kwargs["controls"]["FrameDurationLimits"] == (33333, 33333)
    assert "ExposureTime" not in kwargs["controls"]
    picamera2.start.assert_called_once()


def test_manual_focus_and_exposure_come_from_config(picamera2) -> None:
    open_camera(autofocus="manual", lens_position=2.5, exposure_time_us=8000, analogue_gain=2.0)
    controls = picamera2.create_video_configuration.call_args.kwargs["controls"]
    assert controls["AfMode"] == 0 and controls["LensPosition"] == 2.5
    assert controls["ExposureTime"] == 8000 and controls["AnalogueGain"] == 2.0


def test_a_fixed_focus_camera_gets_no_autofocus_controls(picamera2) -> None:
    picamera2.camera_controls = {}
    open_camera()
    assert "AfMode" not in picamera2.create_video_configuration.call_args.kwargs["controls"]


def test_the_frame_is_the_y_plane_without_a_copy_and_the_request_is_released(picamera2) -> None:
    source = open_camera()
    with source.capture(timeout=1.5) as frame:
        assert frame.pixels.shape == (HEIGHT, WIDTH)
        assert np.shares_memory(frame.pixels, picamera2.buffer)
        assert int(frame.pixels.max()) == 200
    picamera2.capture_request.assert_called_once_with(wait=1.5, flush=None)
    picamera2.capture_request.return_value.release.assert_called_once()


def test_flush_makes_the_next_capture_wait_for_a_new_frame(picamera2) -> None:
    source = open_camera()
    source.flush()
    with source.capture(timeout=1.0):
        pass
    with source.capture(timeout=1.0):
        pass
    flushes = [c.kwargs["flush"] for c in picamera2.capture_request.call_args_list]
    assert flushes == [True, None]


def test_a_capture_timeout_is_reported_as_such(picamera2) -> None:
    picamera2.capture_request.side_effect = TimeoutError
    source = open_camera()
    with pytest.raises(CaptureTimeout, match="within 2 s"), source.capture(timeout=2):
        pass


def test_a_camera_failure_is_a_camera_error(picamera2) -> None:
    picamera2.capture_request.side_effect = RuntimeError("Device or resource busy")
    source = open_camera()
    with pytest.raises(CameraError, match="resource busy"), source.capture(timeout=1):
        pass


def test_the_request_is_released_when_decoding_fails(picamera2) -> None:
    source = open_camera()
    with pytest.raises(ZeroDivisionError), source.capture(timeout=1):
        1 / 0  # noqa: B018
    picamera2.capture_request.return_value.release.assert_called_once()


def test_a_camera_that_will_not_start_is_a_camera_error(picamera2) -> None:
    picamera2.start.side_effect = RuntimeError("Camera __init__ sequence did not complete")
    with pytest.raises(CameraError, match="cannot start the camera"):
        open_camera()


def test_close_stops_and_closes_the_camera(picamera2) -> None:
    open_camera().close()
    picamera2.stop.assert_called_once()
    picamera2.close.assert_called_once()


def test_without_picamera2_installed_the_error_says_how_to_install_it(mocker) -> None:
    mocker.patch.dict(sys.modules, {"picamera2": None})
    with pytest.raises(CameraError, match="apt install python3-picamera2"):
        open_camera()
