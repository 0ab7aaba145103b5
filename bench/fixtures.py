"""What the sync benchmarks stand on: an event in a server's store, a door's store that
was in sync and then recorded a backlog, and a real ``checkin sync`` supervised as
systemd would. Everything is written through the stores' own methods; the processes
and their files are the harness's (checkin/harness.py)."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from checkin.harness import ROOT, Device, Server, WaitFailed, until
from core.rules import Decision, Reason
from server.store import Attendee, ServerStore
from server.store import Device as ServerDevice
from sync.device_end import ApplySnapshot
from sync.device_store import ScanRecord
from sync.messages import SessionInfo
from sync.store import SyncStore

SESSION = "bench"
#: The session every door of the benchmarks is at.
SESSION_INFO = SessionInfo(SESSION, "Bench session", True)
#: A crashed daemon is started again after this long, as systemd/checkin-sync.service does,
#: at most this many times in one measurement.
RESTART_SECONDS = 2.0
MAX_RESTARTS = 3


def codes(prefix: str, n: int) -> list[str]:
    return [f"{prefix}-{i:07d}" for i in range(n)]


async def populate(data_dir: Path, attendees: list[str],
                   registrants: list[str]) -> tuple[str, int]:
    """Fill a server's data dir before it starts, through its store (as the API would,
    in bulk); return its (epoch, last seq)."""
    store = await ServerStore.open(data_dir)
    try:
        if attendees:
            await store.upsert_attendees([Attendee(c, f"Attendee {c}") for c in attendees])
        await store.put_session(SESSION_INFO)
        await store.put_registrants(SESSION, registrants)
        view = await store.view(ServerDevice("bench", SESSION))
    finally:
        await store.close()
    return view.epoch, view.cursor


@dataclass(frozen=True)
class Event:
    """A real ``checkin server`` with an event in its store, in a folder of its own."""

    folder: Path
    server: Server
    epoch: str
    #: The server's last seq: where a door in sync has its cursor.
    seq: int


@contextlib.contextmanager
def event(attendees: list[str], registrants: list[str]) -> Iterator[Event]:
    """A server whose store holds *attendees* and *registrants* of :data:`SESSION` before it
    starts, in a temporary folder (removed afterwards) on the repository's disk."""
    with tempfile.TemporaryDirectory(dir=ROOT) as tmp:
        folder = Path(tmp)
        epoch, seq = asyncio.run(populate(folder / "server", attendees, registrants))
        with Server(folder / "server", timeout=60) as server:
            yield Event(folder, server, epoch, seq)


async def fill_door(data_dir: Path, cached: list[str], epoch: str, cursor: int,
                    scans: list[str]) -> None:
    """A door that was in sync with the server, then recorded *scans* offline."""
    store = await SyncStore.open(data_dir)
    try:
        await store.apply_snapshot(ApplySnapshot(epoch=epoch, cursor=cursor, session=SESSION_INFO,
                                                 attendees=cached, registrants=cached))
        start = datetime.now().astimezone() - timedelta(hours=2)
        await store.record_scans(
            ScanRecord(str(uuid.uuid4()), code, SESSION, Decision.ADMITTED,
                       Reason.REGISTERED, (start + timedelta(milliseconds=100 * i)).isoformat(),
                       1_000_000_000 + i * 100_000_000, "bench-boot")
            for i, code in enumerate(scans))
    finally:
        await store.close()


class GaveUp(WaitFailed):
    """The daemon kept crashing: the measurement could not finish."""


class Daemon:
    """A real ``checkin sync`` for a door of its own, provisioned on *server*.

    Supervised as systemd would: when it exits, it is started again after
    :data:`RESTART_SECONDS` (which the measurement then includes), and each
    crash is kept in :attr:`crashes`.
    """

    def __init__(self, folder: Path, server: Server, device_id: str) -> None:
        self.device = Device(folder, device_id, server_url=server.sync_url)
        self.device.token_file.write_text(server.provision(device_id, SESSION)
                                          + "\n")
        self.data_dir = self.device.data_dir
        self.store_file = self.device.store_file
        self.crashes: list[str] = []
        self.peak_kb = 0
        self.troubles = 0  # warnings and errors in its log, counted when it stops

    def start(self) -> None:
        self.device.start_sync()

    def supervise(self) -> None:
        """Start the daemon again if it exited; give up after :data:`MAX_RESTARTS`."""
        process = self.device.sync
        assert process is not None
        if process.poll() is None:
            return
        last = process.tail(1)
        self.crashes.append(f"exit {process.returncode}: {last}")
        print(f"  checkin sync crashed (exit {process.returncode}): {last}", file=sys.stderr,
              flush=True)
        if len(self.crashes) > MAX_RESTARTS:
            raise GaveUp(f"checkin sync crashed {len(self.crashes)} times; last: {last}")
        time.sleep(RESTART_SECONDS)
        self.start()

    def stop(self) -> None:
        if self.device.sync is not None:
            self.sample()
            self.device.sync.stop(timeout=10)
            with contextlib.suppress(OSError):
                log = self.device.sync_log.read_text(errors="replace").splitlines()
                self.troubles = sum(" WARNING " in x or " ERROR " in x for x in log)

    async def until(self, check: Callable[[], Any], timeout: float, what: str,
                    interval: float = 0.005) -> Any:
        """:func:`checkin.harness.until` *check*, the daemon supervised meanwhile."""
        def supervised() -> Any:
            self.supervise()
            self.sample()
            return check()

        return await until(supervised, timeout, what, interval=interval)

    async def start_until(self, check: Callable[[], Any], timeout: float, what: str,
                          interval: float = 0.005) -> tuple[float, float, str]:
        """Start the daemon and wait until *check* (see :meth:`until`); return when it was
        started (``time.perf_counter()``), the seconds since, and why it did not finish if it
        did not (a metric suffix, else ``""``)."""
        unfinished = ""
        started = time.perf_counter()
        try:
            self.start()
            await self.until(check, timeout, what, interval)
        except WaitFailed as exc:
            unfinished = self.why(exc)
        return started, time.perf_counter() - started, unfinished

    async def open_store(self, timeout: float = 30) -> SyncStore:
        """The daemon's store, once the daemon has made it."""
        await self.until(self.store_file.exists, timeout, "the daemon to make its store")
        return await SyncStore.open(self.data_dir)

    def sample(self) -> None:
        process = self.device.sync
        if process is not None and process.poll() is None:
            self.peak_kb = max(self.peak_kb, process.peak_rss_kb())

    def peak_rss_mb(self) -> float:
        """The peak RSS of the daemon, over its restarts."""
        self.sample()
        return self.peak_kb / 1024

    def why(self, exc: WaitFailed) -> str:
        """A metric suffix saying why a measurement did not finish."""
        if isinstance(exc, GaveUp):
            return f" (did not finish: {len(self.crashes)} crashes)"
        return f" (did not finish in time, {len(self.crashes)} crashes)"

