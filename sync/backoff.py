"""How long the sync daemon waits before reconnecting: jittered exponential backoff.

Pure and seeded for tests. Ordinary failures (server down, network gone) start
short and double up to a ceiling; an authentication refusal (unknown or
revoked token) starts at a much longer delay, because only a technician can
fix it and hammering the server helps nobody. Jitter spreads the reconnects of
a hundred doors after a server restart. :meth:`Backoff.success` resets both.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    minimum: float = 0.5
    maximum: float = 30.0
    auth_minimum: float = 30.0
    auth_maximum: float = 300.0
    rng: random.Random = field(default_factory=random.Random)
    _failures: int = 0
    _auth: bool = False

    def failure(self, *, auth: bool = False) -> float:
        """The delay before the next attempt after one more failure."""
        if auth != self._auth:  # a new kind of trouble starts its own series
            self._auth, self._failures = auth, 0
        low, high = (self.auth_minimum, self.auth_maximum) if auth else (self.minimum,
                                                                          self.maximum)
        ceiling = min(high, low * 2 ** min(self._failures, 32))
        self._failures += 1
        # Equal jitter: never less than half the nominal delay, so a refused
        # token really does slow down, and never in lockstep with other doors.
        return ceiling / 2 + self.rng.uniform(0, ceiling / 2)

    def success(self) -> None:
        self._failures = 0
