"""What one server process tells the others on the same database, and hears from them.

Several ``checkin server`` processes may share one PostgreSQL database, each
holding some of the doors' connections. Data needs no relay (every process
reads the same database) but news does: a registrant added through one process
must reach the doors connected to every other at once, a revoked device must
be closed wherever it is connected, and the organizers' live pages must move
whichever process stored the scan. The store's writes notify the other
processes of the data they changed (``{"origin", "seq", "session",
"admissions"}``, sent if and only if the transaction commits); the
:class:`Relay` carries the rest — the hub's events and the live pages'
topics — over the same notifications, and hands what it hears to the
:class:`~server.hub.Hub` and :class:`~server.live.Live` of this process.

A notification missed (the listening connection was lost) is answered by a
resync: every link reads the changes since its own cursor, every live page
reads everything again, and this process says again which devices it holds.
Everything the relay keeps is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from core.database import StoreError
from server.hub import REPEAT_SECONDS, Hub
from server.live import CHANGED, DEFAULT_LIMIT, Live

log = logging.getLogger("checkin.server")

#: Most bytes of one notification's JSON (PostgreSQL refuses 8,000 and more).
MAX_PAYLOAD = 7000
#: Most events waiting to be sent; beyond it the oldest are dropped (and said so).
MAX_WAITING = 2000
#: Seconds the live pages' topics are gathered before they are sent as one event.
LIVE_SECONDS = 0.25
#: Seconds before sending again after the database refused a notification.
RETRY_SECONDS = 1.0
#: Most hub events being acted on at once (each may close a connection).
MAX_ACTING = 64

Publish = Callable[[dict[str, Any]], Awaitable[None]]


class Relay:
    """This process's end of the news between server processes.

    *publish* sends one payload to every process listening (this one included);
    *origin* names this process, so it ignores its own news; *live* is its live pages'
    fan-out. Call :meth:`heard` with
    every payload the database delivers, :meth:`start` once the event loop runs and
    :meth:`close` at the end.
    """

    def __init__(self, publish: Publish, origin: str, live: Live) -> None:
        self._publish = publish
        self.origin = origin
        #: The doors connected to this process, telling the others through this relay.
        self.hub = Hub(self.tell)
        self.live = live
        live.forward = self.topics
        self._waiting: deque[dict[str, Any]] = deque(maxlen=MAX_WAITING)
        self._topics: dict[str, None] = {}
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._acting: set[asyncio.Task[None]] = set()
        self.dropped = 0
        #: Payloads heard from other processes, and resyncs (for tests and benchmarks).
        self.heard_count = 0
        self.resyncs = 0

    # -- what this process tells --------------------------------------------------

    def tell(self, event: dict[str, Any]) -> None:
        """Send *event* to the other processes soon; never waits, never fails."""
        if len(self._waiting) == self._waiting.maxlen:
            self.dropped += 1
            log.warning("relay: %d event(s) waiting for the database, dropping the oldest",
                        len(self._waiting))
        self._waiting.append(event)
        self._wake.set()

    def topics(self, topics: tuple[str, ...]) -> None:
        """The live pages' *topics* changed here: tell the other processes' pages (gathered
        for :data:`LIVE_SECONDS`, at most :data:`~server.live.DEFAULT_LIMIT` distinct)."""
        if CHANGED in self._topics:
            return
        self._topics.update(dict.fromkeys(topics))
        if len(self._topics) > DEFAULT_LIMIT:
            self._topics = {CHANGED: None}

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._send()), asyncio.create_task(self._gather()),
                       asyncio.create_task(self._repeat())]

    async def close(self) -> None:
        for task in [*self._tasks, *self._acting]:
            task.cancel()
        for task in [*self._tasks, *self._acting]:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def _send(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._waiting:
                events = list(self._waiting)
                self._waiting.clear()
                for payload in payloads(self.origin, events):
                    try:
                        await self._publish(payload)
                    except StoreError as exc:
                        log.warning("relay: cannot tell the other server processes: %s", exc)
                        # Those not sent yet go first when the database answers again.
                        self._waiting.extendleft(reversed(payload["events"]))
                        await asyncio.sleep(RETRY_SECONDS)
                        break

    async def _gather(self) -> None:
        while True:
            await asyncio.sleep(LIVE_SECONDS)
            if self._topics:
                topics, self._topics = list(self._topics), {}
                self.tell({"event": "live", "topics": topics})

    async def _repeat(self) -> None:
        while True:
            await asyncio.sleep(REPEAT_SECONDS)
            self.tell(self.hub.holding())

    # -- what this process hears ------------------------------------------------------

    def heard(self, payload: dict[str, Any]) -> None:
        """A notification from the database (of any process, this one's too)."""
        if payload.get("resync"):
            self.resyncs += 1
            log.info("relay: notifications may have been missed: every door and page "
                     "reads again")
            self.hub.changed(None)
            self.live.offer(CHANGED)
            self.tell(self.hub.holding())
            return
        if payload.get("origin") == self.origin:
            return
        self.heard_count += 1
        if "seq" in payload:  # data another process committed
            session = payload.get("session")
            self.hub.changed(session if isinstance(session, str) else None,
                             admissions=bool(payload.get("admissions")))
        events = payload.get("events")
        for event in events if isinstance(events, list) else ():
            if not isinstance(event, dict):
                continue
            if event.get("event") == "live":
                topics = event.get("topics")
                if isinstance(topics, list):
                    self.live.offer(*(str(t) for t in topics[:DEFAULT_LIMIT + 1]))
            elif len(self._acting) < MAX_ACTING:
                task = asyncio.create_task(self.hub.receive(event | {
                    "origin": payload.get("origin")}))
                self._acting.add(task)
                task.add_done_callback(self._acting.discard)
            else:
                log.warning("relay: too many events being acted on, dropping %r", event)


def payloads(origin: str, events: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """*events* in payloads ``{"origin", "events"}`` of at most :data:`MAX_PAYLOAD` bytes
    of JSON each, in order; an event listing more devices than fit is split."""
    head = len(json.dumps({"origin": origin, "events": []}))
    batch: list[dict[str, Any]] = []
    size = head
    for piece in _pieces(events, MAX_PAYLOAD - head):
        length = len(json.dumps(piece)) + 2
        if batch and size + length > MAX_PAYLOAD:
            yield {"origin": origin, "events": batch}
            batch, size = [], head
        batch.append(piece)
        size += length
    if batch:
        yield {"origin": origin, "events": batch}


def _pieces(events: list[dict[str, Any]], room: int) -> Iterator[dict[str, Any]]:
    for event in events:
        devices = event.get("devices")
        if len(json.dumps(event)) <= room:
            yield event
            continue
        if not isinstance(devices, list) or len(devices) < 2:
            log.error("relay: an event too large to send, dropped: %.200r", event)
            continue
        half = len(devices) // 2
        yield from _pieces([event | {"devices": devices[:half]},
                            event | {"devices": devices[half:]}], room)
