"""Which server the sync daemon connects to next, and whether it waits first: pure.

``[server] url`` may list several server processes (on one database, so any of them
serves any door). The daemon tries them in order, wrapping around: when one cannot be
reached or its link drops, it tries the next at once, since that is another server
and the door is back soonest; only when every URL has failed since the last wait does
it wait (the backoff, :mod:`sync.backoff`). So each URL gets at most one attempt
between two waits, whatever happens: a cluster whose servers all accept and then drop
the link at once (their database is down) sees from each door no more attempts than
one server did before, per server. A welcome does not start a new round; it resets
the backoff's series (the daemon's business), so the wait after a round that follows
a long good link is the shortest one. With one URL every failure waits, as before.
"""

from __future__ import annotations

from collections.abc import Sequence


class Rotation:
    """The URL to try (:attr:`current`) and what a failure means for the next attempt."""

    def __init__(self, urls: Sequence[str]) -> None:
        if not urls:
            raise ValueError("no server URL")
        self.urls = tuple(urls)
        self._index = 0
        #: URLs that failed since the last wait (or the start).
        self._failed = 0

    @property
    def current(self) -> str:
        return self.urls[self._index]

    def failed(self, *, waiting: bool = False) -> bool:
        """The current URL could not be reached, or its link dropped: move to the next.

        Returns whether to wait before trying it: ``True`` once every URL has failed since
        the last wait. *waiting*: the caller waits anyway (the token was refused: another
        server shares the database and would refuse it too), which starts a new round.
        """
        self._index = (self._index + 1) % len(self.urls)
        self._failed += 1
        if waiting or self._failed >= len(self.urls):
            self._failed = 0
            return True
        return False
