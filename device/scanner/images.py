"""The ``images:PATH`` frame source: image files shown to the door as its camera view.

For demos, tests and technicians: point a door at a folder of badge photos and
it decides on them exactly as it would on the camera's frames. Images are read
one at a time (memory stays flat for any folder size), shown for
``frames_per_image`` frames each at ``fps``, in file-name order. An unreadable
file is logged and skipped.

A finite source (``checkin door --exit-when-done``) ends after the last image.
Otherwise the folder is followed like a camera pointed at a doorway: once every
image was shown, it shows an empty view (a blank frame) until an image whose
name sorts after the last one shown appears, and shows that. Write new images
under another suffix and rename them into place, so a half-written file is
never read.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from device.scanner.frames import CameraError, Frame, SourceExhausted

#: Never set: waiting on it paces the frames.
_PACER = threading.Event()

log = logging.getLogger(__name__)

#: File name suffixes read from a folder (anything Pillow reads; others are ignored).
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff",
                            ".pgm", ".ppm"})


class ImageError(Exception):
    """An image file cannot be read; the message names it and says why."""


def load_grey(path: Path | str) -> np.ndarray:
    """Read an image file as a 2-D ``uint8`` grey array, honouring EXIF rotation."""
    try:
        with Image.open(path) as image:
            return np.asarray(ImageOps.exif_transpose(image).convert("L"))
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a directory") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image Pillow can read") from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageError(f"{path}: cannot read image: {exc}") from None


def list_images(path: Path | str) -> list[Path]:
    """The image files at *path*: the file itself, or a folder's images by name."""
    path = Path(path)
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    return [path]


class ImagesSource:
    """Image files as a camera: each shown for *frames_per_image* frames at *fps*.

    With *follow*, never exhausted: see the module's description.
    """

    def __init__(self, path: Path | str, *, frames_per_image: int = 3, fps: float = 10.0,
                 follow: bool = False) -> None:
        if not Path(path).exists():
            raise CameraError(f"images:{path}: no such file or folder")
        self._path = Path(path)
        self._follow = follow
        self._frames = self._generate(frames_per_image)
        self._interval_ns = int(1e9 / max(fps, 1e-3))
        self._next_ns = time.monotonic_ns()

    def _generate(self, repeat: int) -> Iterator[np.ndarray]:
        last: str | None = None
        blank: np.ndarray | None = None
        while True:
            files = [f for f in list_images(self._path) if last is None or f.name > last]
            if not files and not self._follow:
                return
            if not files:
                if blank is None:
                    blank = np.full((480, 640), 200, dtype=np.uint8)
                yield blank
                continue
            for file in files:
                last = file.name
                try:
                    pixels = load_grey(file)
                except ImageError as exc:
                    log.warning("skipping unreadable image: %s", exc)
                    continue
                for _ in range(repeat):
                    yield pixels

    @contextmanager
    def capture(self, timeout: float) -> Iterator[Frame]:
        pixels = next(self._frames, None)
        if pixels is None:
            raise SourceExhausted
        self._pace()
        yield Frame(pixels, time.monotonic_ns())

    def _pace(self) -> None:
        delay = self._next_ns - time.monotonic_ns()
        if delay > 0:
            # A timed wait, not time.sleep: libfaketime (the field tests' shifted clock,
            # with DONT_FAKE_MONOTONIC=1) fails time.sleep's absolute monotonic
            # clock_nanosleep with EINVAL; a condition's wait measures the same clock.
            _PACER.wait(delay / 1e9)
        self._next_ns = max(self._next_ns, time.monotonic_ns()) + self._interval_ns

    def flush(self) -> None:
        """Nothing is queued in a file: the next frame is always a new one."""

    def close(self) -> None:
        self._frames.close()
