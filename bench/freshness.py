"""Freshness: how soon an organizer's change is in the doors' caches.

An organizer's ``PUT`` of a registrant (the clock starts just before the request is
sent) until the change is in a door's cache. With one door, a real ``checkin sync``
subprocess, whose store is asked in a tight loop with the door's own lookup
(``Store.facts``: the figure includes the daemon's committed write); with many doors,
simulated ones in this process (:mod:`bench.simulated`), each change counting until the
*last* door has the ``changes`` message. The peers poll: pretixSCAN every 30 s,
alf.io-PI every 5 s; their expected staleness is half of that.
"""

from __future__ import annotations

import asyncio
import http.client
import random
import sys
import time
from pathlib import Path

from bench.fixtures import SESSION, Daemon, codes, event
from bench.report import Row, percentile
from bench.simulated import SimDoor, open_all, raise_fd_limit
from checkin.harness import Server
from sync.store import SyncStore

#: The peers poll; a change waits half a poll interval on average.
PRETIX_STALENESS_MS = 15_000.0
ALFIO_STALENESS_MS = 2_500.0


async def _daemon_freshness(folder: Path, server: Server,
                            fresh: list[str]) -> tuple[list[float], Daemon]:
    """Seconds from each PUT to its registrant being in a real daemon's store."""
    daemon = Daemon(folder, server, "door-1")
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    headers = server.headers | {"Content-Length": "0"}
    store: SyncStore | None = None
    try:
        daemon.start()
        store = await daemon.open_store(30)

        async def synced() -> bool:
            return (await store.cache_state()).session_id is not None

        await daemon.until(synced, 30, "daemon's first sync")
        conn.request("GET", "/api/health")
        conn.getresponse().read()
        times = []
        for code in fresh:
            deadline = time.perf_counter() + 10
            started = time.perf_counter()
            conn.request("PUT", f"/api/sessions/{SESSION}/registrants/{code}", headers=headers)
            while not (await store.facts(code)).is_registrant:
                daemon.supervise()
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"registrant {code} not at the door after 10 s\n"
                                       f"{daemon.device.sync.tail()}")
            times.append(time.perf_counter() - started)
            response = conn.getresponse()
            response.read()
            if response.status != 201:
                raise RuntimeError(f"PUT registrant {code}: HTTP {response.status}")
            await asyncio.sleep(random.uniform(0.02, 0.05))
        return times, daemon
    finally:
        conn.close()
        if store is not None:
            await store.close()
        daemon.stop()


async def _fleet_freshness(server: Server, tokens: dict[str, str],
                           fresh: list[str]) -> tuple[list[float], list[float]]:
    """Seconds from each PUT until the first, and the last, simulated door has the change."""
    doors = [SimDoor(d, t) for d, t in tokens.items()]
    try:
        await open_all(doors, server.sync_url)
        async with server.async_client() as api:
            await api.get("/api/health")
            first, last = [], []
            for code in fresh:
                started = time.perf_counter()
                response = await api.put(f"/api/sessions/{SESSION}/registrants/{code}")
                if response.status_code != 201:
                    raise RuntimeError(f"PUT registrant {code}: HTTP {response.status_code}")
                async with asyncio.timeout(10):
                    while not all(code in d.arrived for d in doors):
                        for d in doors:
                            d.check()
                        await asyncio.sleep(0.002)
                first.append(min(d.arrived[code] for d in doors) - started)
                last.append(max(d.arrived[code] for d in doors) - started)
                await asyncio.sleep(random.uniform(0.02, 0.05))
        return first, last
    finally:
        await asyncio.gather(*(d.close() for d in doors))


def measure(quick: bool) -> tuple[list[Row], Daemon]:
    """Rows for freshness; and the real daemon that took part."""
    changes, fleets = (5, (10,)) if quick else (30, (100, 500))
    everyone = codes("FRESH", 1000 + (1 + len(fleets)) * changes)
    raise_fd_limit(2 * max(fleets) + 200)
    results: list[tuple[str, list[float]]] = []
    with event(everyone, everyone[:1000]) as bench:
        server = bench.server
        one, daemon = asyncio.run(_daemon_freshness(bench.folder / "door-1", server,
                                                    everyone[1000:1000 + changes]))
        results.append(("1 door (checkin sync)", one))
        tokens = {f"sim-{i:03d}": server.provision(f"sim-{i:03d}", SESSION)
                  for i in range(max(fleets))}
        for index, fleet in enumerate(fleets, start=2):
            fresh = everyone[1000 + (index - 1) * changes:1000 + index * changes]
            first, many = asyncio.run(_fleet_freshness(
                server, dict(list(tokens.items())[:fleet]), fresh))
            print(f"  freshness, {fleet} doors: the first door has a change after "
                  f"{percentile(first, 50) * 1e3:.1f} ms (p50), "
                  f"{percentile(first, 99) * 1e3:.1f} ms (p99)", file=sys.stderr, flush=True)
            results.append((f"last of {fleet} doors", many))
    rows = []
    for label, times in results:
        p50, p99 = percentile(times, 50) * 1e3, percentile(times, 99) * 1e3
        rows.append(Row(f"freshness, {label}, p50", p50, ALFIO_STALENESS_MS,
                        "alf.io-PI, 5 s poll", "ms", "", None))
        if times is one:
            rows.append(Row("  same p50, against pretixSCAN", p50, PRETIX_STALENESS_MS,
                            "pretixSCAN, 30 s poll", "ms", "", None))
        rows.append(Row(f"freshness, {label}, p99", p99, ALFIO_STALENESS_MS,
                        "alf.io-PI, 5 s poll", "ms", "p99 < 1 s", p99 < 1000))
    return rows, daemon
