"""Seeing one phone once: the door ignores a payload it decided a moment ago.

A pure state machine over monotonic timestamps, tested without a camera.
"""

from __future__ import annotations


class Debouncer:
    """Tells a new presentation of a code from the same phone still in view.

    A code seen again less than *window_ns* after it was last seen is the same
    phone held in front of the camera: :meth:`is_new` answers ``False`` and the
    window slides on, so a phone held still for a minute is one scan. A code
    must leave the view for the whole window before it counts again.

    Memory stays bounded: entries older than the window are dropped as new
    codes arrive.
    """

    def __init__(self, window_ns: int) -> None:
        if window_ns < 0:
            raise ValueError("debounce window must not be negative")
        self.window_ns = window_ns
        self._last_seen: dict[bytes, int] = {}

    def is_new(self, payload: bytes, now_ns: int) -> bool:
        """Record a sighting of *payload* at monotonic *now_ns*; say if it is a new scan."""
        last = self._last_seen.get(payload)
        self._last_seen[payload] = now_ns
        if last is not None and now_ns - last < self.window_ns:
            return False
        self._expire(now_ns)
        return True

    def _expire(self, now_ns: int) -> None:
        stale = [p for p, t in self._last_seen.items() if now_ns - t >= self.window_ns]
        for payload in stale:
            if self._last_seen[payload] != now_ns:
                del self._last_seen[payload]
