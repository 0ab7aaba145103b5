"""``checkin demo``: a door on this machine, fed a scripted stream of phone-screen badges.

The real door code runs with an ``images:`` camera and gpiozero's MockFactory; the
terminal shows each decision and the LEDs and buzzer as read from the mock pins.
(The whole system, with server and sync daemons, is the subject of a later issue.)
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from pathlib import Path

from checkin.badges import Look, write_badge
from device.config import parse_config
from device.decision import SessionRules
from device.door import run_door
from device.indicators.signals import Indicators
from device.scanner.decoders import make_decoder
from device.store import Store

#: (what the camera shows, what the door should answer, caption); None: nobody in view.
SCRIPT: list[tuple[str | bytes | None, str | None, str]] = [
    ("ATT-0001", "registered", "a registrant shows her phone"),
    ("ATT-0001", None, "...and keeps holding it in view (ignored)"),
    (None, None, ""),
    ("https://tickets.example/t/ATT-0002", "registered", "a registrant's ticket URL"),
    ("ATT-0003", "not_registered", "an attendee not registered for this workshop"),
    (None, None, ""),
    ("ATT-0001", "reentry", "the first one comes back from a break"),
    ("ATT-9999", "unknown_code", "a code from another event"),
    (b"\x00\xff\x1b[2Jgarbage", "invalid_code", "garbage"),
]


class _Terminal:
    """The door's stdout, shown to a person."""

    def __init__(self) -> None:
        self.reasons: list[str] = []

    def write(self, text: str) -> None:
        for line in text.splitlines():
            scan = json.loads(line)
            self.reasons.append(scan["reason"])
            mark = "ADMIT " if scan["decision"] == "admitted" else "REJECT"
            print(f"  {mark} {scan['reason']:<15} {scan['code']}", flush=True)

    def flush(self) -> None:
        pass


async def _watch(indicators: Indicators) -> None:
    last = None
    while True:
        state = (indicators.green.pin.state, indicators.red.pin.state,
                 indicators.buzzer.pin.state)
        if state != last:
            g, r, b = state
            print(f"      pins: green {'●' if g else '○'}  red {'●' if r else '○'}  "
                  f"buzzer {'♪' if b else '·'}", flush=True)
            last = state
        await asyncio.sleep(0.02)


async def _run(folder: Path) -> int:
    config = parse_config({
        "device": {"id": "demo-door", "data_dir": str(folder / "data")},
        "camera": {"source": f"images:{folder / 'frames'}", "fps": 10, "frames_per_image": 6},
        "scanner": {"debounce_seconds": 1.0},
        "gpio": {"pin_factory": "mock", "green": 17, "red": 27, "buzzer": 22},
    }, folder / "door.toml")
    store = await Store.open(config.data_dir)
    await store.replace_cache(SessionRules("workshop-1", validate_registrants=True),
                              ["ATT-0001", "ATT-0002", "ATT-0003"], ["ATT-0001", "ATT-0002"])
    await store.close()
    indicators = Indicators.from_config(config.gpio)
    terminal = _Terminal()
    watcher = asyncio.create_task(_watch(indicators))
    status = await run_door(config, make_decoder("zxing-cpp"), indicators, terminal,
                            exit_when_done=True)
    watcher.cancel()
    expected = [reason for _, reason, _ in SCRIPT if reason]
    if status != 0 or terminal.reasons != expected:
        print(f"demo FAILED: expected {expected}, got {terminal.reasons}", file=sys.stderr)
        return 1
    print(f"\nAll {len(expected)} scripted outcomes happened, each recorded before it was "
          "signalled.")
    return 0


def main() -> int:
    """Run the scenario once; 0 only if every scripted outcome happened."""
    with tempfile.TemporaryDirectory(prefix="checkin-demo-") as tmp:
        folder = Path(tmp)
        (folder / "frames").mkdir()
        print("Session 'workshop-1', Validate Registrants on; the camera shows:")
        for i, (payload, _, caption) in enumerate(SCRIPT):
            write_badge(folder / "frames" / f"{i:02d}.png", payload, Look(angle=(i * 11) % 40),
                        seed=i)
            if caption:
                print(f"  {i:2d}. {caption}")
        print()
        return asyncio.run(_run(folder))
