"""QR decoders behind one interface: grey pixels in, raw payloads out.

Two are available, chosen by ``[scanner] decoder``:

* ``"zxing-cpp"`` (the default) — reads strided numpy views without copying and
  releases the GIL. On the zxing-cpp sample corpus it decodes 112 of 141 codes
  in a fifth of pyzbar's time (``make bench`` measures it again).
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


def make_decoder(name: str) -> Decoder:
    """The decoder called *name* (one of ``device.config.DECODERS``)."""
    if name == "zxing-cpp":
        return ZxingDecoder()
    if name == "pyzbar":
        return PyzbarDecoder()
    raise ValueError(f"unknown decoder {name!r}")
