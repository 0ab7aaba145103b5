"""Mock pins that mirror their state into a file, for showing a door from another process.

gpiozero's :class:`~gpiozero.pins.mock.MockPin` keeps its state in the door
process's memory. With ``[gpio] mirror_file`` set (mock pin factory only),
each pin also writes its level into that file the moment it changes: one
character per BCM pin 0-27, ``"1"`` high, ``"0"`` low. The demo reads it to
show every door's LEDs and buzzer live — the pins' own state, not the door's
log of what it meant to show.
"""

from __future__ import annotations

import os
from pathlib import Path

from gpiozero.pins.mock import MockFactory, MockPin

#: BCM pins 0..27, one character each.
PIN_COUNT = 28


class PinMirror:
    """The mirror file: written by the door's pins, read by whoever shows them."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        os.pwrite(self._fd, b"0" * PIN_COUNT, 0)

    def set(self, pin: int, high: bool) -> None:
        if 0 <= pin < PIN_COUNT:
            os.pwrite(self._fd, b"1" if high else b"0", pin)

    def close(self) -> None:
        os.close(self._fd)


def read_pins(path: Path | str) -> dict[int, bool]:
    """The pin levels a mirror file holds (all low if it is not there yet)."""
    try:
        data = Path(path).read_bytes()[:PIN_COUNT]
    except FileNotFoundError:
        data = b""
    return {pin: data[pin:pin + 1] == b"1" for pin in range(PIN_COUNT)}


def mirrored_mock_factory(path: Path | str) -> MockFactory:
    """A :class:`MockFactory` whose pins mirror their levels into *path*."""
    mirror = PinMirror(path)

    class MirroredMockPin(MockPin):
        def _change_state(self, value: bool) -> bool:
            changed = super()._change_state(value)
            mirror.set(_bcm(self), value)
            return changed

    return MockFactory(pin_class=MirroredMockPin)


def _bcm(pin: MockPin) -> int:
    name = pin.info.name  # "GPIO17"
    return int(name[4:]) if name.startswith("GPIO") and name[4:].isdigit() else -1
