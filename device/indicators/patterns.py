"""What the door shows for each outcome: one distinct LED and buzzer pattern each.

A pattern is a tuple of :class:`Step` s, each setting all three outputs for a
duration; afterwards everything is off. The buzzer sounds on every rejection
and never on an admission, so door staff can tell by ear alone.

=====================  ==============================  ===========================
outcome                LEDs                            buzzer
=====================  ==============================  ===========================
admitted               green, steady 1.2 s             silent
re-entry               green, three blinks             silent
not registered /       red, steady 1.5 s               one long beep (0.6 s)
outside time window /
time unknown (refuse)
already admitted       red, steady 1.5 s               two short beeps
(re-entry forbidden)
full (at capacity)     red, steady 1.5 s               one long, then one short beep
unknown/invalid code   red, four fast blinks           three short beeps
not ready              red and green alternating       one short beep
staff override         green, two long pulses          silent
=====================  ==============================  ===========================
"""

from __future__ import annotations

from dataclasses import dataclass

from core.rules import Reason


@dataclass(frozen=True, slots=True)
class Step:
    green: bool
    red: bool
    buzzer: bool
    seconds: float


Pattern = tuple[Step, ...]


def _steps(*spec: tuple[str, float]) -> Pattern:
    """Build a pattern from ("GRB" letters that are on, seconds) pairs."""
    return tuple(Step("G" in on, "R" in on, "B" in on, seconds) for on, seconds in spec)


ADMITTED = _steps(("G", 1.2))
REENTRY = _steps(("G", 0.25), ("", 0.15), ("G", 0.25), ("", 0.15), ("G", 0.25))
NOT_REGISTERED = _steps(("RB", 0.6), ("R", 0.9))
ALREADY_ADMITTED = _steps(("RB", 0.15), ("R", 0.1), ("RB", 0.15), ("R", 1.1))
UNKNOWN_CODE = _steps(("RB", 0.1), ("", 0.1), ("RB", 0.1), ("", 0.1), ("RB", 0.1), ("", 0.1),
                      ("R", 0.1))
NOT_READY = _steps(("RB", 0.2), ("G", 0.25), ("R", 0.25), ("G", 0.25), ("R", 0.25))
FULL = _steps(("RB", 0.6), ("R", 0.2), ("RB", 0.15), ("R", 0.55))
OVERRIDE = _steps(("G", 0.6), ("", 0.2), ("G", 0.6))

PATTERNS: dict[Reason, Pattern] = {
    Reason.REGISTERED: ADMITTED,
    Reason.REENTRY: REENTRY,
    Reason.NOT_REGISTERED: NOT_REGISTERED,
    Reason.OUTSIDE_WINDOW: NOT_REGISTERED,
    # the window refused for want of a clock: the same "not now" as outside it
    Reason.TIME_UNKNOWN: NOT_REGISTERED,
    Reason.ALREADY_ADMITTED: ALREADY_ADMITTED,
    Reason.UNKNOWN_CODE: UNKNOWN_CODE,
    Reason.INVALID_CODE: UNKNOWN_CODE,
    Reason.NOT_READY: NOT_READY,
    Reason.FULL: FULL,
    Reason.OVERRIDE: OVERRIDE,
}
