"""Decoding: codes read and time per frame, zxing-cpp vs pyzbar (and OpenCV if installed),
on the QR corpus and on generated 640x480 phone-screen frames."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from bench.report import Row, median
from checkin.badges import Look, render_badge
from device.scanner.decoders import make_decoder
from device.scanner.images import load_grey

CORPUS = Path(__file__).resolve().parent.parent.parent / "shared/corpora/qr/zxing-cpp-samples"
LOOKS = [Look(), Look(angle=30), Look(blur=1.5), Look(contrast=0.3), Look(glare=True),
         Look(moire=True), Look(angle=-60, module_px=4, blur=0.8), Look(angle=180, contrast=0.5)]


def corpus() -> list[tuple[np.ndarray, bytes]]:
    lines = (CORPUS / "manifest.tsv").read_text().splitlines()[1:]
    rows = [line.split("\t") for line in lines]
    return [(load_grey(CORPUS / image), (CORPUS / text).read_bytes()) for image, text, *_ in rows]


def phone_frames(count: int) -> list[tuple[np.ndarray, bytes | None]]:
    frames = []
    for i in range(count):
        if i % 4 == 3:  # a door mostly sees no code at all
            frames.append((np.asarray(render_badge(None, seed=i)), None))
        else:
            code = f"https://tickets.example/t/ATT-{i:05d}"
            frames.append((np.asarray(render_badge(code, LOOKS[i % len(LOOKS)], seed=i)),
                           code.encode()))
    return frames


def _opencv():
    try:
        import cv2
    except ImportError:
        return None
    detector = cv2.QRCodeDetector()

    def decode(grey: np.ndarray) -> list[bytes]:
        text, _, _ = detector.detectAndDecode(grey)
        return [text.encode()] if text else []

    return decode


def score(decode, frames) -> tuple[int, float]:
    """(codes read correctly, median seconds per frame)."""
    found, times = 0, []
    for grey, expected in frames:
        started = time.perf_counter()
        got = decode(grey)
        times.append(time.perf_counter() - started)
        found += expected in got if expected is not None else not got
    return found, median(times)


def run(quick: bool) -> list[Row]:
    sets = {"corpus": corpus(), "phone 640x480": phone_frames(16 if quick else 120)}
    decoders = {"zxing-cpp": make_decoder("zxing-cpp").decode,
                "pyzbar": make_decoder("pyzbar").decode}
    opencv = _opencv()
    if opencv is not None:
        decoders["opencv"] = opencv
    rows = []
    for name, frames in sets.items():
        results = {d: score(fn, frames) for d, fn in decoders.items()}
        (zx_found, zx_time), (pz_found, pz_time) = results["zxing-cpp"], results["pyzbar"]
        rows.append(Row(f"decode {name}: correct of {len(frames)}", zx_found, pz_found,
                        "pyzbar", "frames", "default decoder reads most", zx_found >= pz_found))
        rows.append(Row(f"decode {name}: time per frame", zx_time * 1e3, pz_time * 1e3,
                        "pyzbar", "ms", "default decoder fastest", zx_time <= pz_time))
        if "opencv" in results:
            cv_found, cv_time = results["opencv"]
            rows.append(Row(f"decode {name}: correct (vs OpenCV)", zx_found, cv_found, "opencv",
                            "frames", "", None))
            rows.append(Row(f"decode {name}: time (vs OpenCV)", zx_time * 1e3, cv_time * 1e3,
                            "opencv", "ms", "", None))
    return rows
