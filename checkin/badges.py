"""Phone-screen badge frames: what the door camera sees when an attendee shows a QR code.

Used by the tests, the benchmarks and the demo to make camera-like 640x480
grey frames from a payload, with the distortions real phones bring: rotation,
blur, low contrast, glare and moiré from a screen filmed by a camera.
Needs ``segno`` (the ``demo`` and ``test`` extras).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


@dataclass(frozen=True, slots=True)
class Look:
    """How the phone is held and how its screen comes out on camera."""

    angle: float = 0.0          # degrees, counter-clockwise
    blur: float = 0.0           # Gaussian radius in pixels
    contrast: float = 1.0       # 1 = black on white; 0.3 = washed out
    glare: bool = False         # a bright reflection across the screen
    moire: bool = False         # screen-pixel interference
    module_px: int = 6          # size of one QR module on the frame
    offset: tuple[int, int] = (0, 0)


FRAME_SIZE = (640, 480)


def render_badge(payload: str | bytes | None, look: Look = Look(), *,
                 size: tuple[int, int] = FRAME_SIZE, seed: int = 0) -> Image.Image:
    """A grey camera frame of a phone showing *payload* as a QR code (``None``: no code)."""
    rng = np.random.default_rng(seed)
    frame = Image.new("L", size, 90)
    phone = _phone(payload, look.module_px)
    phone = phone.rotate(look.angle, expand=True, fillcolor=90, resample=Image.BICUBIC)
    x = (size[0] - phone.width) // 2 + look.offset[0]
    y = (size[1] - phone.height) // 2 + look.offset[1]
    frame.paste(phone, (x, y))
    pixels = np.asarray(frame, dtype=np.float32)
    if look.moire:
        yy, xx = np.mgrid[0 : size[1], 0 : size[0]]
        pixels = pixels * (0.85 + 0.15 * np.sin(xx * 1.7 + yy * 0.4) ** 2)
    if look.contrast != 1.0:
        pixels = 128 + (pixels - 128) * look.contrast
    if look.glare:
        yy, xx = np.mgrid[0 : size[1], 0 : size[0]]
        spot = np.exp(-(((xx - size[0] * 0.6) ** 2) + (yy - size[1] * 0.4) ** 2) / (2 * 60.0**2))
        pixels = pixels + 140 * spot
    pixels = pixels + rng.normal(0, 4, pixels.shape)  # sensor noise
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "L")
    return image.filter(ImageFilter.GaussianBlur(look.blur)) if look.blur else image


def _phone(payload: str | bytes | None, module_px: int) -> Image.Image:
    """A phone (dark bezel, white screen) with the QR code, or a blank screen."""
    if payload is None:
        qr = Image.new("L", (25 * module_px, 25 * module_px), 255)
    else:
        import segno

        # Bytes go in byte mode, as they are: left to guess, segno reads some byte pairs
        # as Shift-JIS kanji and re-encodes them. Text that is not ASCII goes as UTF-8.
        if isinstance(payload, str) and not payload.isascii():
            payload = payload.encode("utf-8", "surrogatepass")
        mode = "byte" if isinstance(payload, bytes) else None
        qr = segno.make(payload, error="m", micro=False, mode=mode)
        matrix = np.array(qr.matrix, dtype=np.uint8)
        modules = np.pad(matrix, 4)  # the quiet zone
        qr = Image.fromarray(((1 - modules) * 255).astype(np.uint8), "L")
        qr = qr.resize((qr.width * module_px, qr.height * module_px), Image.NEAREST)
    width, height = qr.width + 40, int((qr.width + 40) * 1.9)
    phone = Image.new("L", (width, height), 25)
    draw = ImageDraw.Draw(phone)
    draw.rounded_rectangle((8, 8, width - 8, height - 8), radius=16, fill=245)
    phone.paste(qr, ((width - qr.width) // 2, (height - qr.height) // 2))
    return phone


def write_badge(path: Path | str, payload: str | bytes | None, look: Look = Look(),
                seed: int = 0) -> Path:
    """Render a badge frame and save it (format from the suffix); return the path."""
    path = Path(path)
    render_badge(payload, look, seed=seed).save(path)
    return path
