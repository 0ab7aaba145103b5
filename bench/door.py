"""The door: frame-to-signal latency, registrant lookup, resident memory.

* Frame to signal: a frame is available in the camera's worker thread -> decoded
  there (as the door does it) -> back on the event loop -> looked up -> committed
  with ``synchronous=FULL`` -> LED on,
  against bare decode of the same frames; the goal is an overhead of at most
  one fsync plus 1 ms.
* Lookup: ``Store.facts`` (the door's one query, through aiosqlite) with 1,000,
  200,000 and 1,000,000 cached registrants; the peer is an in-memory Python set,
  which is what a door that loads its list into RAM would use.
* Memory: peak RSS of a real ``checkin door`` process with 1,000 and 200,000
  cached registrants: it must not grow with the list.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import sqlite3
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.report import Row, percentile
from checkin.badges import Look, render_badge, write_badge
from checkin.harness import ROOT, Device, door_config
from core.rules import SessionRules
from device.config import GpioConfig, ScannerConfig, parse_config
from device.door import Door
from device.indicators.signals import Indicators
from device.scanner.decoders import make_decoder
from sync.device_store import FACTS_SQL, Store

SESSION = SessionRules("bench", validate_registrants=True)


def codes(n: int) -> list[str]:
    return [f"ATT-{i:07d}" for i in range(n)]


async def _filled_store(folder: Path, n: int) -> Store:
    store = await Store.open(folder)
    everyone = codes(n)
    await store.replace_cache(SESSION, everyone, everyone[::2])
    return store


def _config(data_dir: Path) -> object:
    return parse_config(door_config("bench", data_dir=data_dir, scanner={"debounce_seconds": 0}),
                        data_dir / "door.toml")


def _fsync_seconds(folder: Path, rounds: int) -> float:
    times = []
    with open(folder / "fsync-probe", "wb") as f:
        for _ in range(rounds):
            f.write(b"x" * 4096)
            started = time.perf_counter()
            os.fsync(f.fileno())
            times.append(time.perf_counter() - started)
    return percentile(times, 50)


def _available_and_decoded(decoder, grey: np.ndarray) -> tuple[float, list[bytes]]:
    started = time.perf_counter()  # the capture returns the frame here
    return started, decoder.decode(grey)


async def frame_to_signal(quick: bool) -> list[Row]:
    n = 20 if quick else 200
    frames = [np.asarray(render_badge(c, Look(angle=i * 9 % 60), seed=i))
              for i, c in enumerate(codes(n))]
    decoder = make_decoder(ScannerConfig().decoder)  # the door's default
    with tempfile.TemporaryDirectory(dir=ROOT) as tmp:
        folder = Path(tmp)
        store = await _filled_store(folder, 1000)
        await store.close()
        indicators = Indicators.from_config(GpioConfig("mock", 17, 27, 22))
        door = Door(_config(folder), decoder, indicators, io.StringIO())
        await door._ensure_store()
        bare, piped = [], []
        for grey in frames:  # interleaved, so both see the same machine state
            started = time.perf_counter()
            decoder.decode(grey)
            bare.append(time.perf_counter() - started)
            # As in the door: the frame becomes available in the camera's worker thread,
            # is decoded there, and the payloads hop back to the event loop.
            started, payloads = await asyncio.to_thread(_available_and_decoded, decoder, grey)
            await door._handle_frame(time.monotonic_ns(), payloads)
            assert indicators.green.is_lit or indicators.red.is_lit
            piped.append(time.perf_counter() - started)
        indicators.close()
        await door.store.close()
        fsync = _fsync_seconds(folder, 50 if quick else 200)
    p50, p99 = percentile(piped, 50), percentile(piped, 99)
    overhead = p50 - percentile(bare, 50)
    return [
        Row("frame to LED on, p50", p50 * 1e3, percentile(bare, 50) * 1e3, "bare decode", "ms",
            "", None),
        Row("frame to LED on, p99", p99 * 1e3, percentile(bare, 99) * 1e3, "bare decode", "ms",
            "", None),
        Row("overhead over bare decode, p50", overhead * 1e3, (fsync + 0.001) * 1e3,
            "one fsync + 1 ms", "ms", "<= one fsync + 1 ms", overhead <= fsync + 0.001),
    ]


async def lookups(quick: bool) -> list[Row]:
    sizes = [1000, 200_000] if quick else [1000, 200_000, 1_000_000]
    rounds = 500 if quick else 5000
    rows = []
    for n in sizes:
        with tempfile.TemporaryDirectory(dir=ROOT) as tmp:
            store = await _filled_store(Path(tmp), n)
            probe = [f"ATT-{i:07d}" for i in np.random.default_rng(n).integers(0, 2 * n, rounds)]
            times = []
            for code in probe:
                started = time.perf_counter()
                await store.facts(code)
                times.append(time.perf_counter() - started)
            await store.close()
            query = _query_times(store.path, probe)
        in_memory = set(codes(n))
        peer = []
        for code in probe:
            started = time.perf_counter()
            _ = code in in_memory
            peer.append(time.perf_counter() - started)
        p99 = percentile(times, 99)
        goal = "p99 < 100 µs" if n == 200_000 else ""
        rows.append(Row(f"lookup, {n:,} registrants, p99", p99 * 1e6, percentile(peer, 99) * 1e6,
                        "in-memory set", "µs", goal, p99 < 100e-6 if goal else None))
        rows.append(Row(f"  of which the SQLite query, {n:,}, p99", percentile(query, 99) * 1e6,
                        percentile(peer, 99) * 1e6, "in-memory set", "µs", "", None))
    return rows


def _query_times(path: Path, probe: list[str]) -> list[float]:
    """The door's lookup query alone, without aiosqlite's hop to its database thread."""
    db = sqlite3.connect(path)
    times = []
    try:
        for code in probe:
            started = time.perf_counter()
            db.execute(FACTS_SQL, {"code": code}).fetchall()
            times.append(time.perf_counter() - started)
    finally:
        db.close()
    return times


def _door_peak_rss(n: int) -> float:
    """Peak RSS (MB) of a real `checkin door` run over a few frames with n registrants."""
    with tempfile.TemporaryDirectory(dir=ROOT) as tmp:
        device = Device(Path(tmp), "bench", camera={"fps": 30})

        async def fill() -> None:
            await (await _filled_store(device.data_dir, n)).close()

        asyncio.run(fill())
        for i in range(5):
            device.show(f"ATT-{i * 7:07d}", seed=i)
        door = device.start_door("--exit-when-done", pipe=False)
        peak_kb = 0
        while door.poll() is None:
            peak_kb = max(peak_kb, door.peak_rss_kb())
            time.sleep(0.01)
        if door.returncode != 0:
            raise RuntimeError(f"door exited {door.returncode} in the memory benchmark")
        return peak_kb / 1024


def memory(quick: bool) -> list[Row]:
    small, large = _door_peak_rss(1000), _door_peak_rss(200_000)
    return [Row("door peak RSS, 200,000 registrants", large, small, "1,000 registrants", "MB",
                "< 80 MB, flat in list size", large < 80 and large < small * 1.1)]


def _door_stream(folder: Path, images: int) -> None:
    """A camera's view as a door sees it: mostly nobody, now and then a phone."""
    blank = render_badge(None, seed=0)
    for i in range(images):
        path = folder / f"{i:05d}.png"
        if i % 4 == 0:
            write_badge(path, f"ATT-{i:07d}", Look(angle=i * 7 % 50), seed=i)
        else:
            blank.save(path)


def _door_rate(folder: Path, fps: float, images: int) -> tuple[float, float]:
    """(frames per second, share of one core) of a real door between its first and last
    decision, its camera an images: folder of *images* frames shown at *fps*."""
    device = Device(folder / f"door-{fps:g}", "bench", data_dir=folder / "data",
                    camera={"fps": fps, "frames_per_image": 1}, scanner={"debounce_seconds": 0})
    _door_stream(device.frames, images)
    door = device.start_door("--exit-when-done")
    assert door.stdout is not None
    marks = []  # (wall, cpu, image index) at each decision
    for line in door.stdout:
        index = int(json.loads(line)["code"].removeprefix("ATT-"))
        with contextlib.suppress(OSError):
            marks.append((time.perf_counter(), door.cpu_seconds(), index))
    if door.wait() != 0 or len(marks) < 3:
        raise RuntimeError(f"door exited {door.returncode} in the frame-rate benchmark")
    (wall0, cpu0, first), (wall1, cpu1, last) = marks[0], marks[-1]
    return (last - first) / (wall1 - wall0), (cpu1 - cpu0) / (wall1 - wall0)


def throughput(quick: bool) -> list[Row]:
    """The door's frame rate with the fastest camera the config allows, and its CPU share
    at 10 fps (the default) and 30 fps."""
    with tempfile.TemporaryDirectory(dir=ROOT) as tmp:
        folder = Path(tmp)

        async def fill() -> None:
            await (await _filled_store(folder / "data", 1000)).close()

        asyncio.run(fill())
        fastest, _ = _door_rate(folder, 120, 200 if quick else 1200)
        rates = [(fps, *_door_rate(folder, fps, 40 if quick else 10 * fps))
                 for fps in (10, 30)]
    rows = [Row("door frame rate, 120 fps camera (config maximum), 1 frame in 4 a badge",
                fastest, 30.0, "a 30 fps camera", "fps", ">= 30 fps", fastest >= 30)]
    rows += [Row(f"door CPU share at {fps} fps", share * 100, None, "", "% of a core", "", None)
             for fps, _, share in rates]
    return rows


def run(quick: bool) -> list[Row]:
    rows = asyncio.run(frame_to_signal(quick))
    rows += throughput(quick)
    rows += asyncio.run(lookups(quick))
    rows += memory(quick)
    return rows
