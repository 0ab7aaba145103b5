"""Seeing one phone once: the door ignores a payload it decided a moment ago.

A pure state machine over monotonic timestamps, tested without a camera.
"""

from __future__ import annotations

from collections.abc import Iterable


class Debouncer:
    """Tells a new presentation of a code from the same phone still in view.

    The door reports every frame it looked at (:meth:`frame`), with the payloads
    decoded in it. A code is out of view from the first frame it is missing from,
    and counts as a new scan only once it has been out of view for the whole
    window, or the first time it is seen. Time the door spent not looking (a slow
    commit, a busy machine) between two frames that both show the code is not time
    out of view: a phone held still for a minute is one scan, however long the
    door took over any one frame.

    :meth:`is_new` judges a lone sighting with no word of the frames around it
    (frames handed in already decoded): there a code seen again less than the
    window after it was last seen is the same phone, and the window slides on.

    Memory stays bounded: codes out of view for the window are forgotten.
    """

    def __init__(self, window_ns: int) -> None:
        if window_ns < 0:
            raise ValueError("debounce window must not be negative")
        self.window_ns = window_ns
        self._last_seen: dict[bytes, int] = {}
        #: When each code seen before was first missing from a frame (frames only).
        self._gone_since: dict[bytes, int] = {}

    def frame(self, payloads: Iterable[bytes], at_ns: int) -> list[bytes]:
        """The door looked at a frame taken at monotonic *at_ns* and decoded *payloads*
        in it (none: nobody in view, or nothing readable); return the new scans."""
        in_view = list(dict.fromkeys(payloads))
        if self.window_ns == 0:  # no debounce: every sighting counts
            return in_view
        new = []
        for payload in in_view:
            gone = self._gone_since.pop(payload, None)
            if payload not in self._last_seen or (
                    gone is not None and at_ns - gone >= self.window_ns):
                new.append(payload)
            self._last_seen[payload] = at_ns
        seen = set(in_view)
        for payload in self._last_seen:
            if payload not in seen:
                self._gone_since.setdefault(payload, at_ns)
        for payload in [p for p, t in self._gone_since.items() if at_ns - t >= self.window_ns]:
            del self._gone_since[payload]
            del self._last_seen[payload]
        return new

    def is_new(self, payload: bytes, now_ns: int) -> bool:
        """Record a lone sighting of *payload* at monotonic *now_ns*; say if it is a new
        scan (the time since its last sighting counts as out of view)."""
        last = self._last_seen.get(payload)
        self._last_seen[payload] = now_ns
        self._gone_since.pop(payload, None)
        if last is not None and now_ns - last < self.window_ns:
            return False
        self._expire(now_ns)
        return True

    def _expire(self, now_ns: int) -> None:
        stale = [p for p, t in self._last_seen.items() if now_ns - t >= self.window_ns]
        for payload in stale:
            if self._last_seen[payload] != now_ns:
                del self._last_seen[payload]
                self._gone_since.pop(payload, None)
