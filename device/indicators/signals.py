"""The door's green LED, red LED and buzzer, driven through gpiozero.

Patterns (:mod:`device.indicators.patterns`) play in the background as an
asyncio task; a new decision pre-empts the one still showing. The first step
is applied before :meth:`Indicators.show` returns, so the LED is on the moment
the decision is made, not a loop iteration later. The door goes one better:
:meth:`Indicators.light` sets the first step from the thread that committed the
scan, before the event loop hears of it.

Example, without hardware::

    indicators = Indicators.from_config(GpioConfig("mock", green=17, red=27, buzzer=22))
    indicators.show(Reason.REGISTERED)     # green LED on for 1.2 s
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from gpiozero import LED, Button, Buzzer

from device.indicators.patterns import PATTERNS, Pattern, Step

if TYPE_CHECKING:
    from gpiozero import Factory

    from core.rules import Reason
    from device.config import GpioConfig


class IndicatorError(Exception):
    """The LEDs or buzzer cannot be set up; the message says why."""


def make_pin_factory(name: str, work_dir: Path | None = None,
                     mirror_file: Path | None = None) -> Factory:
    """gpiozero's pin factory *name*: ``"lgpio"`` on a Pi, ``"mock"`` anywhere else.

    With *mirror_file* (mock only), the pins mirror their levels into that file.
    """
    if name == "mock" and mirror_file is not None:
        from device.indicators.mirror import mirrored_mock_factory

        try:
            return mirrored_mock_factory(mirror_file)
        except OSError as exc:
            raise IndicatorError(f"cannot open pin mirror file {mirror_file}: "
                                 f"{exc.strerror}") from None
    if name == "mock":
        from gpiozero.pins.mock import MockFactory

        return MockFactory()
    if name == "lgpio":
        if work_dir is not None:
            # lgpio writes its notification pipes into LG_WD, which must be writable.
            os.environ.setdefault("LG_WD", str(work_dir))
        try:
            from gpiozero.pins.lgpio import LGPIOFactory

            return LGPIOFactory()
        except Exception as exc:  # ImportError off a Pi, or lgpio's own errors on one
            raise IndicatorError(f"cannot use the lgpio pin factory: {exc}") from None
    raise IndicatorError(f"unknown pin factory {name!r}")


#: Everything off: the end of every pattern.
OFF = Step(False, False, False, 0)
#: A push button's contacts settle within this long; edges closer together are one press.
BUTTON_BOUNCE_SECONDS = 0.05


class Indicators:
    """Green LED, red LED and buzzer, showing one pattern at a time; and the staff's
    override button (an input on the same pins, :attr:`button`), if the door has one."""

    def __init__(self, green: LED, red: LED, buzzer: Buzzer,
                 button: Button | None = None) -> None:
        self.green, self.red, self.buzzer = green, red, buzzer
        self.button = button
        self._playing: asyncio.Task[None] | None = None
        self._lock = threading.Lock()
        #: A decision was lit from another thread and :meth:`show` has not taken it over
        #: yet: the pattern still playing leaves the pins alone meanwhile.
        self._lit = False

    @classmethod
    def from_config(cls, gpio: GpioConfig, work_dir: Path | None = None) -> Indicators:
        factory = make_pin_factory(gpio.pin_factory, work_dir, gpio.mirror_file)
        try:
            outputs = (
                LED(gpio.green, active_high=gpio.active_high, pin_factory=factory),
                LED(gpio.red, active_high=gpio.active_high, pin_factory=factory),
                Buzzer(gpio.buzzer, active_high=gpio.active_high, pin_factory=factory),
            )
        except Exception as exc:  # gpiozero raises many kinds: pin in use, no such pin...
            raise IndicatorError(f"cannot set up LEDs and buzzer: {exc}") from None
        if gpio.override_button is None:
            return cls(*outputs)
        try:  # a push button to ground, on the pin's pull-up: pressed reads low
            button = Button(gpio.override_button, pull_up=True,
                            bounce_time=BUTTON_BOUNCE_SECONDS, pin_factory=factory)
        except Exception as exc:
            for device in outputs:
                device.close()
            raise IndicatorError(f"cannot set up the override button on pin "
                                 f"{gpio.override_button}: {exc}") from None
        return cls(*outputs, button)

    def light(self, reason: Reason) -> None:
        """Set *reason*'s first step now, from any thread: the door's store thread lights
        the LED the moment the scan is committed, without waiting for the event loop to
        wake. :meth:`show`, on the loop, must follow: it plays the pattern."""
        with self._lock:
            self._lit = True
            self._apply(PATTERNS[reason][0])

    def show(self, reason: Reason) -> None:
        """Show *reason*'s pattern, pre-empting whatever is showing. Needs a running loop."""
        self.show_pattern(PATTERNS[reason])

    def show_pattern(self, pattern: Pattern) -> None:
        self._cancel()
        with self._lock:
            self._lit = False
            self._apply(pattern[0])
        self._playing = asyncio.get_running_loop().create_task(self._play(pattern))

    async def _play(self, pattern: Pattern) -> None:
        await asyncio.sleep(pattern[0].seconds)
        for step in (*pattern[1:], OFF):
            with self._lock:
                if self._lit:  # a newer decision is on the pins: its show() comes next
                    return
                self._apply(step)
            await asyncio.sleep(step.seconds)

    async def idle(self) -> None:
        """Wait until the pattern showing has finished."""
        if self._playing is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._playing

    def _apply(self, step: Step) -> None:
        for device, on in ((self.green, step.green), (self.red, step.red),
                           (self.buzzer, step.buzzer)):
            if on:
                device.on()
            else:
                device.off()

    def _cancel(self) -> None:
        if self._playing is not None and not self._playing.done():
            self._playing.cancel()
        self._playing = None

    def off(self) -> None:
        with self._lock:
            self._apply(OFF)

    def close(self) -> None:
        """Stop any pattern, turn everything off and release the pins."""
        self._cancel()
        for device in (self.green, self.red, self.buzzer):
            with contextlib.suppress(Exception):
                device.off()
            device.close()
        if self.button is not None:
            self.button.close()
