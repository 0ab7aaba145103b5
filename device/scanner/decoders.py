"""QR decoders behind one interface: grey pixels in, raw payloads out.

Three are available, chosen by ``[scanner] decoder``:

* ``"pipeline"`` (the default) — the project's own: zxing-cpp, then two cheaper
  fallbacks for what it misses (:class:`PipelineDecoder`). On the zxing-cpp
  sample corpus it reads every code either library reads (116 of 141) in under
  twice zxing-cpp's time (``make bench`` measures it again).
* ``"zxing-cpp"`` — reads strided numpy views without copying and releases the
  GIL; 112 of 141 in about a seventh of pyzbar's time.
* ``"pyzbar"`` — ZBar through ctypes; needs the system library ``libzbar0``.

Only QR codes are looked for: 1-D symbologies in camera noise are a classic
source of phantom reads.
"""

from __future__ import annotations

import ctypes
from typing import Protocol

import numpy as np

_ZBAR_CFG_BINARY = 4


class Decoder(Protocol):
    name: str

    def decode(self, grey: np.ndarray) -> list[bytes]:
        """Every QR payload found in a 2-D ``uint8`` image, as raw bytes."""
        ...


class ZxingDecoder:
    """zxing-cpp's ``read_barcodes``, restricted to QR codes."""

    name = "zxing-cpp"

    def __init__(self) -> None:
        import zxingcpp

        self._read = zxingcpp.read_barcodes
        self._formats = (zxingcpp.BarcodeFormat.QRCode, zxingcpp.BarcodeFormat.MicroQRCode)

    def decode(self, grey: np.ndarray) -> list[bytes]:
        return [b.bytes for b in self._read(grey, formats=self._formats) if b.valid]


class PyzbarDecoder:
    """ZBar through pyzbar's ctypes bindings, restricted to QR codes.

    pyzbar 0.1.9's own ``decode()`` fails on current ZBar releases (it cannot
    map their "unknown orientation" value) and copies the image; this calls the
    same C functions directly and keeps one scanner for every frame. One
    instance must not be used from two threads at once.
    """

    name = "pyzbar"

    def __init__(self) -> None:
        from pyzbar import wrapper
        from pyzbar.pyzbar import _FOURCC  # the fourcc of 8-bit grey, from pyzbar itself

        self._zbar = wrapper
        self._grey_format = _FOURCC["L800"]
        self._scanner = wrapper.zbar_image_scanner_create()
        configure = wrapper.zbar_image_scanner_set_config
        all_symbols, qr = 0, wrapper.ZBarSymbol.QRCODE
        configure(self._scanner, all_symbols, wrapper.ZBarConfig.CFG_ENABLE, 0)
        configure(self._scanner, qr, wrapper.ZBarConfig.CFG_ENABLE, 1)
        # ZBAR_CFG_BINARY (ZBar >= 0.23, unknown to pyzbar's enum): hand back the raw
        # bytes instead of guessing a character set and re-encoding them as UTF-8.
        configure(self._scanner, qr, _ZBAR_CFG_BINARY, 1)

    def decode(self, grey: np.ndarray) -> list[bytes]:
        zbar = self._zbar
        pixels = np.ascontiguousarray(grey, dtype=np.uint8)
        height, width = pixels.shape
        image = zbar.zbar_image_create()
        try:
            zbar.zbar_image_set_format(image, self._grey_format)
            zbar.zbar_image_set_size(image, width, height)
            zbar.zbar_image_set_data(image, pixels.ctypes.data_as(ctypes.c_void_p), pixels.size,
                                     None)
            zbar.zbar_scan_image(self._scanner, image)
            found, symbol = [], zbar.zbar_image_first_symbol(image)
            while symbol:
                found.append(ctypes.string_at(zbar.zbar_symbol_get_data(symbol),
                                              zbar.zbar_symbol_get_data_length(symbol)))
                symbol = zbar.zbar_symbol_next(symbol)
            return found
        finally:
            zbar.zbar_image_destroy(image)

    def __del__(self) -> None:
        scanner = getattr(self, "_scanner", None)
        if scanner:
            self._zbar.zbar_image_scanner_destroy(scanner)


class PipelineDecoder:
    """The project's own pipeline: zxing-cpp, then what it misses, cheapest first.

    1. zxing-cpp with its default (local average) binarizer: reads nearly
       everything, fast; a frame it reads ends here.
    2. zxing-cpp again with a global-histogram binarizer, which reads evenly lit
       codes the local binarizer breaks up (soft-focus phone screens).
    3. ZBar, only when one of the passes saw a QR symbol it could not read
       (a checksum error): ZBar's different sampling reads some of those, and
       frames with nothing in view never pay for it.

    Without ``libzbar0`` the third stage is left out.
    """

    name = "pipeline"

    def __init__(self) -> None:
        import zxingcpp

        self._read = zxingcpp.read_barcodes
        self._formats = (zxingcpp.BarcodeFormat.QRCode, zxingcpp.BarcodeFormat.MicroQRCode)
        self._global = zxingcpp.Binarizer.GlobalHistogram
        try:
            self._zbar: PyzbarDecoder | None = PyzbarDecoder()
        except ImportError:  # pyzbar raises ImportError when libzbar0 is missing
            self._zbar = None

    def decode(self, grey: np.ndarray) -> list[bytes]:
        first = self._read(grey, formats=self._formats, return_errors=True)
        found = [b.bytes for b in first if b.valid]
        if found:
            return found
        second = self._read(grey, formats=self._formats, binarizer=self._global,
                            return_errors=True)
        found = [b.bytes for b in second if b.valid]
        if found:
            return found
        if self._zbar is None:
            return []
        for box in _boxes([*first, *second], grey.shape):  # symbols seen but not read
            found = self._zbar.decode(grey[box])
            if found:
                return found
        return []


def _boxes(symbols: list, shape: tuple[int, ...]) -> list[tuple[slice, slice]]:
    """The regions around the symbols zxing-cpp located, with a quiet-zone margin.

    ZBar's time grows with the pixels it scans: given only a symbol's region it
    costs a fraction of a whole frame. Overlapping regions (the same symbol seen
    by both passes) are merged, so ZBar looks at each place once.
    """
    merged: list[list[int]] = []  # [top, bottom, left, right]
    for symbol in symbols:
        corners = symbol.position
        points = (corners.top_left, corners.top_right, corners.bottom_left, corners.bottom_right)
        xs, ys = [p.x for p in points], [p.y for p in points]
        margin = max(max(xs) - min(xs), max(ys) - min(ys)) // 4 + 8
        box = [max(0, min(ys) - margin), min(shape[0], max(ys) + margin),
               max(0, min(xs) - margin), min(shape[1], max(xs) + margin)]
        for other in merged:
            if box[0] < other[1] and other[0] < box[1] and box[2] < other[3] and other[2] < box[3]:
                other[:] = [min(box[0], other[0]), max(box[1], other[1]),
                            min(box[2], other[2]), max(box[3], other[3])]
                break
        else:
            merged.append(box)
    return [(slice(top, bottom), slice(left, right)) for top, bottom, left, right in merged]


def make_decoder(name: str) -> Decoder:
    """The decoder called *name* (one of ``device.config.DECODERS``)."""
    if name == "pipeline":
        return PipelineDecoder()
    if name == "zxing-cpp":
        return ZxingDecoder()
    if name == "pyzbar":
        return PyzbarDecoder()
    raise ValueError(f"unknown decoder {name!r}")
