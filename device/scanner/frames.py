"""Frame sources: where the door's grey images come from.

Every source has the same small interface (:class:`FrameSource`): the door
asks for the next frame with a timeout, decodes it inside the ``with`` block
(the pixels may be a view of a camera buffer, valid only there), and calls
:meth:`FrameSource.flush` after a decision so a frame captured before the
decision is not decoded again.

``source`` in the ``[camera]`` config table picks one:

* ``"picamera2"`` — the Pi camera (:mod:`device.scanner.picamera`);
* ``"images:PATH"`` — an image file or a folder of them, each shown as the
  camera view for ``frames_per_image`` frames (:mod:`device.scanner.images`).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import numpy as np

    from device.config import CameraConfig


class SourceExhausted(Exception):
    """A finite source (``images:``) has shown every frame."""


class CaptureTimeout(Exception):
    """No frame arrived within the timeout; the door retries."""


class CameraError(Exception):
    """The camera failed; the message says how. The door logs it and retries."""


@dataclass(frozen=True, slots=True)
class Frame:
    """One grey image: a 2-D ``uint8`` array (possibly a strided view) and when it arrived."""

    pixels: np.ndarray
    at_ns: int


class FrameSource(Protocol):
    def capture(self, timeout: float) -> AbstractContextManager[Frame]:
        """The next frame, valid inside the ``with`` block.

        Raises :class:`SourceExhausted`, :class:`CaptureTimeout` or :class:`CameraError`.
        """
        ...

    def flush(self) -> None:
        """Make the next :meth:`capture` return a frame taken after this call."""
        ...

    def close(self) -> None: ...


def open_source(config: CameraConfig, *, finite: bool = False) -> FrameSource:
    """Open the frame source named by ``config.source``.

    *finite*: an ``images:`` folder ends after its last image instead of being
    followed for new ones.
    """
    images = config.images_path
    if images is not None:
        from device.scanner.images import ImagesSource

        return ImagesSource(images, frames_per_image=config.frames_per_image, fps=config.fps,
                            follow=not finite)
    from device.scanner.picamera import Picamera2Source

    return Picamera2Source(config)
