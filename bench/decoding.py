"""Decoding: codes read and time per frame for the project's pipeline, zxing-cpp, pyzbar
and OpenCV's QR detector (if installed), on the QR corpus and on generated 640x480
phone-screen frames (rotated, blurred, low contrast, glare, moiré, and no code at all)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from bench.report import Row
from checkin.badges import Look, render_badge
from device.scanner.decoders import make_decoder
from device.scanner.images import load_grey

CORPUS = Path(__file__).resolve().parent.parent / "tests" / "corpus" / "zxing-cpp-samples"
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


def _opencv():  # -> a decode function, or None when OpenCV is not installed
    try:
        import cv2
    except ImportError:
        return None
    detector = cv2.QRCodeDetector()

    def decode(grey: np.ndarray) -> list[bytes]:
        try:
            text, _, _ = detector.detectAndDecode(grey)
        except UnicodeDecodeError:  # OpenCV hands back text: binary payloads are lost
            return [b"\x00(undecodable)"]
        except cv2.error:  # e.g. "mode 13 not implemented" on some symbols
            return []
        return [text.encode()] if text else []

    return decode


def score(decoders: dict, frames) -> dict[str, tuple[list[bool], float]]:
    """Per decoder: (whether each frame was read correctly, mean seconds per frame).

    Decoders take turns frame by frame, so all of them see the same machine state
    (a decoder measured first, alone, pays for a cold CPU). The mean, not the
    median: a pipeline's fallbacks run on a minority of frames and the median
    would hide what they cost.
    """
    correct = {name: [] for name in decoders}
    spent = dict.fromkeys(decoders, 0.0)
    for grey, expected in frames:
        for name, decode in decoders.items():
            started = time.perf_counter()
            got = decode(grey)
            spent[name] += time.perf_counter() - started
            correct[name].append(expected in got if expected is not None else not got)
    return {name: (correct[name], spent[name] / len(frames)) for name in decoders}


def run(quick: bool) -> list[Row]:
    sets = {"corpus": corpus(), "phone 640x480": phone_frames(16 if quick else 120)}
    decoders = {name: make_decoder(name).decode for name in ("pipeline", "zxing-cpp", "pyzbar")}
    opencv = _opencv()
    if opencv is not None:
        decoders["opencv"] = opencv
    rows = []
    for name, frames in sets.items():
        score(decoders, frames[:8])  # warm up: first calls load tables and caches
        rows += _rows(name, len(frames), score(decoders, frames))
    if opencv is None:
        rows.append(Row("decode: OpenCV QR detector not installed (pip install "
                        "opencv-python-headless, or make bench)", 0, None, "", "", "", None))
    return rows


def _rows(name: str, count: int, results: dict[str, tuple[list[bool], float]]) -> list[Row]:
    def found(decoder: str) -> int:
        return sum(results[decoder][0])

    def ms(decoder: str) -> float:
        return results[decoder][1] * 1e3

    either = sum(z or p for z, p in zip(results["zxing-cpp"][0], results["pyzbar"][0],
                                        strict=True))
    rows = [
        Row(f"decode {name}: pipeline, correct of {count}", found("pipeline"), either,
            "zxing-cpp or pyzbar", "frames", ">= either library", found("pipeline") >= either),
        Row(f"decode {name}: pipeline, time per frame", ms("pipeline"), ms("zxing-cpp"),
            "zxing-cpp", "ms", "< 2x zxing-cpp", ms("pipeline") < 2 * ms("zxing-cpp")),
    ]
    for peer in ("zxing-cpp", "pyzbar", "opencv"):
        if peer in results:
            rows.append(Row(f"  {name}: correct, pipeline vs {peer}", found("pipeline"),
                            found(peer), peer, "frames", "", None))
            rows.append(Row(f"  {name}: time per frame, pipeline vs {peer}", ms("pipeline"),
                            ms(peer), peer, "ms", "", None))
    return rows
