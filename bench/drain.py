"""Drain: a door that was in sync, went offline and recorded a backlog of waiting scans;
a real ``checkin sync`` from process start until none is waiting, then the server's
attendance must hold every one of them."""

from __future__ import annotations

import asyncio
import sys

from bench.fixtures import SESSION, Daemon, codes, event, fill_door
from bench.report import Row
from sync.store import SyncStore


async def _drain(daemon: Daemon, n: int) -> tuple[float, str, tuple[int, int]]:
    """(seconds until no scan waits; why it did not finish, if it did not; the scans
    stored and quarantined on the device)."""
    store = await SyncStore.open(daemon.data_dir)

    async def drained() -> bool:
        return not await store.waiting_scans(0, 1)

    try:
        _, elapsed, unfinished = await daemon.start_until(drained, 60, f"draining {n:,} scans",
                                                          interval=0.01)
        status = await store.status()
    finally:
        await store.close()
        daemon.stop()
    return elapsed, unfinished, (status.scans_stored, status.scans_quarantined)


def measure(quick: bool) -> tuple[list[Row], Daemon]:
    """Rows for draining a backlog; and the daemon that drained it."""
    n = 2000 if quick else 50_000
    everyone = codes("ATT", n)
    with event(everyone, everyone) as bench:
        daemon = Daemon(bench.folder / "door", bench.server, "door-drain")
        asyncio.run(fill_door(daemon.data_dir, everyone, bench.epoch, bench.seq, everyone))
        elapsed, unfinished, states = asyncio.run(_drain(daemon, n))
        attendance = bench.server.attendance(SESSION)
    stored = len(attendance["scans"])
    if not unfinished and (states != (n, 0) or attendance["admitted"] != n):
        raise RuntimeError(f"drain: device (stored, quarantined) {states}, server "
                           f"{stored} scans / {attendance['admitted']} admitted; expected {n}")
    print(f"  drain of {n:,}: " + ("gave up; " if unfinished else "") +
          f"{daemon.troubles} warnings/errors in the daemon's log", file=sys.stderr,
          flush=True)
    return [
        Row(f"drain {n:,} waiting scans, from daemon start{unfinished}", elapsed, None, "",
            "s", "< 10 s", not unfinished and elapsed < 10),
        Row("  scans in the server's attendance", stored, None, "", "scans", f"= {n:,}",
            stored == n),
    ], daemon
