"""Load: hundreds of simulated doors (:mod:`bench.simulated`) connected to one server at
once, in worker processes, each pushing one scan a second; the time from sending a
``scans`` batch to receiving its ``scan_results``. Every scan sent must be stored."""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import sys
import time
from typing import Any

from bench.fixtures import SESSION, codes, event
from bench.report import Row, percentile
from bench.simulated import SimDoor, collect, open_all, raise_fd_limit
from sync.device_end import CacheState

#: Doors per worker process.
DOORS_PER_WORKER = 250


def _load_worker(url: str, tokens: dict[str, str], epoch: str, cursor: int,
                 scan_codes: list[str], seconds: int, out: Any, go: Any) -> None:
    """One worker process: connect its doors, say so, wait for go, push, report."""
    raise_fd_limit(len(tokens) + 100)
    try:
        out.put(("done", asyncio.run(_load_doors(url, tokens, epoch, cursor, scan_codes,
                                                 seconds, out, go))))
    except BaseException as exc:  # report, don't leave the parent waiting
        out.put(("error", f"{type(exc).__name__}: {exc}"))


async def _load_doors(url: str, tokens: dict[str, str], epoch: str, cursor: int,
                      scan_codes: list[str], seconds: int, out: Any, go: Any) -> dict[str, Any]:
    # The doors were in sync before: they reconnect with their cursor, no snapshot.
    doors = [SimDoor(d, t, CacheState(SESSION, epoch, cursor)) for d, t in tokens.items()]
    loop = asyncio.get_running_loop()
    try:
        await open_all(doors, url)
        out.put(("ready", len(doors)))
        await loop.run_in_executor(None, go.wait)
        cpu, wall = time.process_time(), time.perf_counter()
        start = loop.time()
        rng = random.Random(url + next(iter(tokens)))

        async def scan_every_second(index: int, door: SimDoor) -> None:
            offset = rng.random()  # spread the doors over the second
            for k in range(seconds):
                await asyncio.sleep(max(0.0, start + offset + k - loop.time()))
                await door.push(scan_codes[(index * seconds + k) % len(scan_codes)])

        await asyncio.gather(*(scan_every_second(i, d) for i, d in enumerate(doors)))
        async with asyncio.timeout(120):
            while any(d.sent for d in doors):
                for d in doors:
                    d.check()
                await asyncio.sleep(0.01)
        busy = (time.process_time() - cpu) / (time.perf_counter() - wall)
        return {"sent": sum(d.next_seq - 1 for d in doors),
                "accepted": sum(d.accepted for d in doors),
                "latencies": [x for d in doors for x in d.latencies], "cpu": busy}
    finally:
        await asyncio.gather(*(d.close() for d in doors))


def measure(quick: bool) -> tuple[list[Row], float]:
    """Rows for the load; and the server's peak RSS in MB."""
    n_doors, seconds = (20, 3) if quick else (500, 20)
    workers = max(1, -(-n_doors // DOORS_PER_WORKER))
    everyone = codes("ATT", 1000)
    raise_fd_limit(2 * n_doors + 200)  # the server inherits it
    with event(everyone, everyone) as bench:
        server, epoch, seq = bench.server, bench.epoch, bench.seq
        tokens = [(f"load-{i:03d}", server.provision(f"load-{i:03d}", SESSION))
                  for i in range(n_doors)]
        context = multiprocessing.get_context("spawn")
        out, go = context.Queue(), context.Event()
        procs = [context.Process(
            target=_load_worker, daemon=True,
            args=(server.sync_url, dict(tokens[w::workers]), epoch, seq, everyone, seconds,
                  out, go)) for w in range(workers)]
        started: list[Any] = []
        finished = False
        try:
            for p in procs:
                p.start()
                started.append(p)
            ready = sum(collect(out, "ready", workers, 180, "load"))
            connected = server.api("GET", "/api/health")["devices_connected"]
            if ready != n_doors or connected != n_doors:
                raise RuntimeError(f"load: {ready} doors ready, {connected} connected, "
                                   f"of {n_doors}")
            cpu, wall = server.process.cpu_seconds(), time.perf_counter()
            go.set()
            results = collect(out, "done", workers, seconds + 180, "load")
            server_busy = (server.process.cpu_seconds() - cpu) / (time.perf_counter() - wall)
            peak = server.process.peak_rss_kb() / 1024
            finished = True
        finally:
            for p in started:
                p.join(10 if finished else 0)
                if p.is_alive():
                    p.kill()
                    p.join()
        attendance = server.attendance(SESSION)
    sent = sum(r["sent"] for r in results)
    accepted = sum(r["accepted"] for r in results)
    latencies = [x for r in results for x in r["latencies"]]
    stored = len(attendance["scans"])
    busy = ", ".join(f"{r['cpu']:.0%}" for r in results)
    print(f"  load: {connected} doors connected; server busy {server_busy:.0%} of a core, "
          f"{workers} worker(s) {busy}", file=sys.stderr, flush=True)
    label = f"{n_doors} doors x 1 scan/s"
    return [
        Row(f"load, {label}: scans -> results, p50", percentile(latencies, 50) * 1e3, None,
            "", "ms", "", None),
        Row(f"load, {label}: scans -> results, p99", percentile(latencies, 99) * 1e3, None,
            "", "ms", "", None),
        Row(f"  scans stored of {sent:,} sent", stored, None, "", "scans", f"= {sent:,}",
            stored == sent and accepted == sent),
    ], peak


