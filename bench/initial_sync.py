"""Initial sync: a real ``checkin sync`` from process start until its store holds the
session and every registrant, against a server holding as many attendees and
registrants (put into its store before it starts)."""

from __future__ import annotations

import asyncio
import sys
import time

from bench.fixtures import SESSION, Daemon, codes, event
from bench.report import Row
from sync.store import SyncStore


class _Watch:
    """The daemon's store as the initial sync fills it, read through the store's methods."""

    def __init__(self, daemon: Daemon, seq: int) -> None:
        self.daemon = daemon
        self.seq = seq
        self.store: SyncStore | None = None
        self.opened: list[float] = []  # when the daemon had made its store: start-up done
        self.welcomed: list[float] = []  # when it noted the server's welcome

    async def synced(self) -> bool:
        if self.store is None:
            if not self.daemon.store_file.exists():
                return False
            self.opened.append(time.perf_counter())
            self.store = await SyncStore.open(self.daemon.data_dir)
        if not self.welcomed:  # until then the store is empty: its status costs nothing
            status = await self.store.status()
            if status.connected:
                self.welcomed.append(time.perf_counter())
            return status.cursor >= self.seq
        return (await self.store.cache_state()).cursor >= self.seq

    async def counts(self) -> tuple[int, int, int] | None:
        """(sessions, registrants, attendees) in the store."""
        if self.store is None:
            return None
        status = await self.store.status()
        return int(status.session_id == SESSION), status.registrants, status.attendees

    async def close(self) -> None:
        if self.store is not None:
            await self.store.close()


async def _initial_sync(daemon: Daemon, n: int,
                        seq: int) -> tuple[float, float, float, str, tuple | None]:
    """(seconds until the store was made, the welcome noted, the snapshot applied; why it
    did not finish, if it did not; what the store then holds)."""
    watch = _Watch(daemon, seq)
    try:
        started, elapsed, unfinished = await daemon.start_until(
            watch.synced, 60, f"initial sync of {n:,} registrants")
        counts = await watch.counts()
    finally:
        await watch.close()
        daemon.stop()
    startup = (watch.opened[0] if watch.opened else started + elapsed) - started
    welcome = (watch.welcomed[0] if watch.welcomed else started + elapsed) - started
    return startup, welcome, elapsed, unfinished, counts


def measure(quick: bool) -> tuple[list[Row], Daemon]:
    """Rows for the initial sync; and the daemon that made it."""
    n = 5000 if quick else 100_000
    everyone = codes("ATT", n)
    with event(everyone, everyone) as bench:
        daemon = Daemon(bench.folder / "door", bench.server, "door-init")
        startup, welcome, elapsed, unfinished, counts = asyncio.run(
            _initial_sync(daemon, n, bench.seq))
    if not unfinished and counts != (1, n, n):
        raise RuntimeError(f"initial sync: store holds (session, registrants, attendees) "
                           f"{counts}, expected (1, {n}, {n})")
    print(f"  initial sync of {n:,}: store opened after {startup:.3f} s, welcome noted after "
          f"{welcome:.3f} s, " + (f"gave up after {elapsed:.3f} s" if unfinished else
                                  f"snapshot applied after {elapsed:.3f} s") +
          f"; {daemon.troubles} warnings/errors in the daemon's log", file=sys.stderr,
          flush=True)
    return [
        Row(f"initial sync, {n:,} registrants + attendees{unfinished}", elapsed, None, "",
            "s", "< 5 s", not unfinished and elapsed < 5),
        Row("  of which daemon start-up (until it opens its store)", startup, None, "", "s", "",
            None),
    ], daemon
