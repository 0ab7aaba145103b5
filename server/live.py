"""In-process fan-out of "something changed" to the organizers' live pages.

The store and the API tell :class:`Live` which topics changed (``"session:<id>"``,
``"doors"``, ``"sessions"``); every page stream holds a :class:`Subscription` and,
woken by it, reads the numbers again from the store. Only topics travel, never data,
so a subscription is a small set: a topic published again before the page read it
is kept once (coalescing), and a subscriber that falls behind by more than
``limit`` distinct topics is left with the single topic :data:`CHANGED` ("read
everything again"). Memory per subscriber is bounded whatever the publishers do,
and :meth:`Live.publish` never waits.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from types import TracebackType

#: What a subscriber that fell behind gets instead of its many topics: read everything.
CHANGED = "changed"
#: Most distinct topics a subscription holds before it coalesces to :data:`CHANGED`.
DEFAULT_LIMIT = 64


def session_topic(session_id: str) -> str:
    return f"session:{session_id}"


class Subscription:
    """One page stream's view of :class:`Live`: an async iterator of topic strings.

    ``async for topic in subscription`` (or ``await subscription.get()``, or
    ``await subscription.get_all()`` for every waiting topic at once). Close it
    (``close()``, or use it as an async context manager) to unsubscribe. Waiting is
    safe to cancel: a topic is taken only once the wait is over.
    """

    def __init__(self, live: Live, limit: int) -> None:
        self._live = live
        self._limit = limit
        self._pending: dict[str, None] = {}  # insertion-ordered set
        self._ready = asyncio.Event()
        self.closed = False
        #: How many times this subscription coalesced to CHANGED (for tests and benchmarks).
        self.overflows = 0

    def __len__(self) -> int:
        """How many topics wait to be read."""
        return len(self._pending)

    def _offer(self, topics: tuple[str, ...]) -> None:
        if self.closed:
            return
        if CHANGED not in self._pending:
            for topic in topics:
                self._pending[topic] = None
            if len(self._pending) > self._limit:
                self._pending = {CHANGED: None}
                self.overflows += 1
        self._ready.set()

    async def get(self) -> str:
        """The next topic, waiting for one. Raises :class:`StopAsyncIteration` once closed."""
        while not self._pending:
            if self.closed:
                raise StopAsyncIteration
            self._ready.clear()
            await self._ready.wait()
        topic = next(iter(self._pending))
        del self._pending[topic]
        return topic

    async def get_all(self) -> frozenset[str]:
        """Every waiting topic at once (at least one), waiting for one."""
        first = await self.get()
        rest, self._pending = self._pending, {}
        return frozenset((first, *rest))

    def __aiter__(self) -> AsyncIterator[str]:
        return self

    async def __anext__(self) -> str:
        return await self.get()

    def close(self) -> None:
        """Unsubscribe; a waiting :meth:`get` ends (with what was pending read first)."""
        if not self.closed:
            self.closed = True
            self._live._drop(self)
            self._ready.set()

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.close()


class Live:
    """Every live page stream of this server process."""

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        self._limit = limit
        self._subscriptions: set[Subscription] = set()
        #: Topics published so far (for tests and benchmarks).
        self.published = 0
        #: Where published topics go besides this process (:meth:`server.relay.Relay.topics`).
        self.forward: Callable[[tuple[str, ...]], None] | None = None

    def __len__(self) -> int:
        """How many subscriptions are open."""
        return len(self._subscriptions)

    def subscribe(self, limit: int | None = None) -> Subscription:
        subscription = Subscription(self, self._limit if limit is None else limit)
        self._subscriptions.add(subscription)
        return subscription

    def publish(self, *topics: str) -> None:
        """Tell every subscriber that *topics* changed, here and (through :attr:`forward`)
        in the other server processes on the same database. Never waits, never fails."""
        if topics and self.forward is not None:
            self.forward(topics)
        self.offer(*topics)

    def offer(self, *topics: str) -> None:
        """Tell this process's subscribers that *topics* changed (news from another
        process, or from this one). Never waits, never fails."""
        if not topics:
            return
        self.published += len(topics)
        for subscription in list(self._subscriptions):
            subscription._offer(topics)

    def _drop(self, subscription: Subscription) -> None:
        self._subscriptions.discard(subscription)

    def close(self) -> None:
        """End every subscription (the server stops)."""
        for subscription in list(self._subscriptions):
            subscription.close()
