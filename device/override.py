"""The staff's override button: a press soon after a rejection admits that person.

:class:`Overrides` is the pure part, tested without pins or clocks: it keeps the
door's latest rejection that may be overridden and answers a press (at a
monotonic time passed in) with the rejection to overrule — once per rejection,
and only within the window (``[door] override_seconds``).

A rejection may be overridden when it was recorded, has a session and a valid
code: not ``invalid_code`` (nobody to admit) nor ``not_ready`` (the door cannot
count them). Rejections that may not be overridden leave the latest one that may
in place, so a stray unreadable code does not take staff's override away.

:class:`PressFile` is a test-only control for mock pins (``[gpio] press_file``):
each byte appended to that file presses the mock button once, through the pin
itself (driven low, then high), so a door running as another process is
pressed exactly as a real button would press it::

    with open(press_file, "ab") as f:
        f.write(b"p")            # one press
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.rules import Reason

log = logging.getLogger(__name__)

#: Rejections a press can never overrule.
NOT_OVERRIDABLE = frozenset({Reason.INVALID_CODE, Reason.NOT_READY})
#: How often :class:`PressFile` looks at its file (mock pins only, never on a Pi).
PRESS_FILE_INTERVAL = 0.05


@dataclass(frozen=True, slots=True)
class Rejection:
    """A recorded rejection staff may overrule."""

    scan_id: str
    code: str
    session_id: str
    reason: Reason
    #: Monotonic time of the rejection, in nanoseconds.
    at_ns: int


class Overrides:
    """Which rejection a press of the override button overrules, if any."""

    def __init__(self, window_ns: int) -> None:
        self.window_ns = window_ns
        self._latest: Rejection | None = None
        self._overridden: set[str] = set()

    @staticmethod
    def may_override(reason: Reason, recorded: bool, session_id: str | None) -> bool:
        return (not reason.admitted and recorded and session_id is not None
                and reason not in NOT_OVERRIDABLE)

    def rejected(self, rejection: Rejection) -> None:
        """The door rejected someone (a rejection that :meth:`may_override`)."""
        self._latest = rejection
        self._overridden.clear()  # only the latest can be overruled: forget the rest

    def press(self, now_ns: int) -> Rejection | None:
        """The button was pressed at *now_ns*: the rejection to overrule, or ``None``
        (none within the window, or it was overridden already)."""
        latest = self._latest
        if latest is None or now_ns - latest.at_ns > self.window_ns:
            return None
        if latest.scan_id in self._overridden:
            return None
        self._overridden.add(latest.scan_id)
        return latest

    def already_overridden(self, now_ns: int) -> bool:
        """Whether the latest rejection, within the window, was overridden already (for
        the log line of a second press)."""
        latest = self._latest
        return (latest is not None and now_ns - latest.at_ns <= self.window_ns
                and latest.scan_id in self._overridden)

    def undo(self, rejection: Rejection) -> None:
        """The override of *rejection* could not be recorded: a new press may try again."""
        self._overridden.discard(rejection.scan_id)


class PressFile:
    """Presses a mock button once per byte appended to *path* (tests and the demo).

    The file is looked at every :data:`PRESS_FILE_INTERVAL` seconds by a task on the
    door's loop; bytes already in it when the door starts do not count.
    """

    def __init__(self, path: Path, press: Callable[[], Any]) -> None:
        self.path = path
        self._press = press
        self._seen = _size(path)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(PRESS_FILE_INTERVAL)
            size = _size(self.path)
            if size < self._seen:  # truncated or replaced: start counting again
                self._seen = size
            while self._seen < size:
                self._seen += 1
                self._press()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def press_mock_pin(pin: Any) -> None:
    """Press a button wired to ground on a mock pin: drive it low, then high again."""
    pin.drive_low()
    pin.drive_high()


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0
