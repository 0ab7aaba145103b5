"""The Pi camera as a frame source, through picamera2.

One small YUV420 stream; the Y plane *is* the grey image, so the decoder reads
``m.array[:height, :width]`` inside ``MappedArray`` without a copy. Every
capture has a timeout, and after a decision the next capture is flushed so a
frame taken before the decision is not decoded again.

picamera2 comes from apt on Raspberry Pi OS (``python3-picamera2``), not from
PyPI; it is imported here, lazily, so everything else runs anywhere.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from device.config import CameraConfig
from device.scanner.frames import CameraError, CaptureTimeout, Frame

_INSTALL_HINT = (
    "picamera2 is not importable: on Raspberry Pi OS install it with "
    "'apt install python3-picamera2' and create the venv with --system-site-packages"
)


class Picamera2Source:
    """The Pi camera, configured from the ``[camera]`` table."""

    def __init__(self, config: CameraConfig) -> None:
        try:
            from picamera2 import MappedArray, Picamera2
        except ImportError as exc:
            raise CameraError(f"{_INSTALL_HINT} ({exc})") from None
        self._mapped_array = MappedArray
        self._size = (config.width, config.height)
        self._flush_next = False
        try:
            self._camera = Picamera2()
            self._camera.configure(self._camera.create_video_configuration(
                main={"size": self._size, "format": "YUV420"},
                controls=self._controls(config, self._camera.camera_controls),
            ))
            self._camera.start()
        except Exception as exc:  # libcamera raises bare RuntimeErrors and more
            raise CameraError(f"cannot start the camera: {exc}") from None

    @staticmethod
    def _controls(config: CameraConfig, available: dict[str, Any]) -> dict[str, Any]:
        frame_us = int(1_000_000 / config.fps)
        controls: dict[str, Any] = {"FrameDurationLimits": (frame_us, frame_us)}
        if "AfMode" in available:  # only Camera Module 3 and other autofocus lenses
            from libcamera import controls as lc

            modes = {"continuous": lc.AfModeEnum.Continuous, "manual": lc.AfModeEnum.Manual,
                     "auto": lc.AfModeEnum.Auto}
            controls["AfMode"] = modes[config.autofocus]
            if config.autofocus == "manual":
                controls["LensPosition"] = config.lens_position
        if config.exposure_time_us:
            controls["ExposureTime"] = config.exposure_time_us
        if config.analogue_gain:
            controls["AnalogueGain"] = config.analogue_gain
        return controls

    @contextmanager
    def capture(self, timeout: float) -> Iterator[Frame]:
        flush, self._flush_next = self._flush_next, False
        try:
            request = self._camera.capture_request(wait=timeout, flush=flush or None)
        except TimeoutError:
            raise CaptureTimeout(f"no frame from the camera within {timeout:g} s") from None
        except Exception as exc:
            raise CameraError(f"camera capture failed: {exc}") from None
        try:
            width, height = self._size
            with self._mapped_array(request, "main") as mapped:
                yield Frame(mapped.array[:height, :width], time.monotonic_ns())
        finally:
            request.release()

    def flush(self) -> None:
        self._flush_next = True

    def close(self) -> None:
        try:
            self._camera.stop()
        finally:
            self._camera.close()
