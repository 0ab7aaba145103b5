"""Simulated doors: a door's sync side in this process, the real :class:`DeviceEnd` over a
real websocket and no store, for the benchmarks with many doors (freshness, load)."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import resource
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from bench.fixtures import SESSION
from core.rules import Decision, Reason
from sync.device_end import (
    ApplyChanges,
    CacheState,
    DeviceEnd,
    DeviceState,
    RecordResults,
)
from sync.messages import MAX_SERVER_MESSAGE, Scan, ScanOutcome


@dataclass
class SimDoor:
    """A door's sync side in this process: :class:`DeviceEnd` over a websocket, no store."""

    device_id: str
    token: str
    cache: CacheState = field(default_factory=lambda: CacheState(None, None, 0))
    arrived: dict[str, float] = field(default_factory=dict)  # code -> when its change came
    sent: dict[int, float] = field(default_factory=dict)  # batch -> when it was pushed
    latencies: list[float] = field(default_factory=list)
    accepted: int = 0
    next_seq: int = 1
    ws: ClientConnection | None = None
    reader: asyncio.Task[None] | None = None
    #: Set whenever a batch's results come (for doors that push again once answered).
    answered: asyncio.Event = field(default_factory=asyncio.Event)

    async def open(self, url: str) -> None:
        self.end = DeviceEnd(self.device_id, "bench", self.cache)
        self.ready = asyncio.Event()
        self.ws = await connect(
            url, additional_headers={"Authorization": f"Bearer {self.token}"},
            max_size=MAX_SERVER_MESSAGE, open_timeout=60, ping_interval=None,
            close_timeout=2)
        self.reader = asyncio.create_task(self._read())
        await self._flush()
        ready = asyncio.create_task(self.ready.wait())
        await asyncio.wait({ready, self.reader}, return_when=asyncio.FIRST_COMPLETED)
        if not self.ready.is_set():
            ready.cancel()
            self.check()

    async def _read(self) -> None:
        assert self.ws is not None
        async for frame in self.ws:
            now = time.perf_counter()
            self.end.receive(frame)
            for action in self.end.actions():
                if isinstance(action, ApplyChanges):
                    for change in action.changes:
                        if change.code is not None:
                            self.arrived.setdefault(change.code, now)
                elif isinstance(action, RecordResults):
                    self.latencies.append(now - self.sent.pop(action.batch))
                    self.accepted += sum(r.result == ScanOutcome.ACCEPTED for r in action.results)
                    self.answered.set()
            if self.end.state is DeviceState.READY:
                self.ready.set()

    async def _flush(self) -> None:
        assert self.ws is not None
        for frame in self.end.data_to_send():
            await self.ws.send(frame)

    async def push(self, code: str) -> None:
        await self.push_batch([code])

    async def push_batch(self, codes: list[str]) -> None:
        """Send one ``scans`` batch: an admission of each of *codes*, made now."""
        now = datetime.now().astimezone().isoformat()
        scans = []
        for code in codes:
            scans.append(Scan(str(uuid.uuid4()), self.next_seq, code, SESSION,
                              Decision.ADMITTED, Reason.REGISTERED, now, time.monotonic_ns(),
                              "bench-boot"))
            self.next_seq += 1
        batch = self.end.send_scans(scans)
        self.sent[batch] = time.perf_counter()
        await self._flush()

    def check(self) -> None:
        if self.reader is not None and self.reader.done():
            raise RuntimeError(f"door {self.device_id}: connection ended: "
                               f"{self.reader.exception() or 'closed by the server'}")

    async def close(self) -> None:
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await self.ws.close()
        if self.reader is not None:
            self.reader.cancel()
            with contextlib.suppress(BaseException):
                await self.reader


async def open_all(doors: list[SimDoor], url: str, at_once: int = 50) -> None:
    for start in range(0, len(doors), at_once):
        async with asyncio.timeout(120):
            await asyncio.gather(*(d.open(url) for d in doors[start:start + at_once]))


def raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        limit = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))


def collect(out: Any, kind: str, count: int, timeout: float, bench: str) -> list[Any]:
    """*count* messages ``(kind, value)`` of *kind* from the worker processes of doors
    (on queue *out*), or fail with a worker's error; *bench* names the benchmark."""
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        try:
            what, value = out.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            raise RuntimeError(f"{bench}: workers silent for {timeout:g} s (waiting for "
                               f"{kind})") from None
        if what == "error":
            raise RuntimeError(f"{bench} worker failed: {value}")
        if what == kind:
            got.append(value)
    return got
