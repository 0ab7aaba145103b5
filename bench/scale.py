"""Scale-out: one server process on SQLite against one, two and four on PostgreSQL.

The same event (attendees, a session's registrants, a device for every door) is made
once through the server's store in an SQLite file, then copied with ``checkin server
migrate``'s own :func:`server.migrate.migrate` into each configuration's database (an
SQLite file again, or a fresh PostgreSQL database of a throwaway cluster,
:class:`checkin.harness.Postgres`, fsync on): every configuration starts from the same
rows, and the doors from the same cursor (no snapshot).

Then, per configuration, real ``checkin server`` processes (the harness's) and the
simulated doors of :mod:`bench.simulated` in worker processes, each door connected to
one of the server processes in turn:

* **freshness**: an organizer's ``PUT`` of a registrant through the *first* process (the
  clock starts just before the request) until *every* door, on every process, has the
  change. Doors of the other processes hear of it through the database's notifications
  (server/relay.py). Worker processes take arrival times from ``time.perf_counter``,
  CLOCK_MONOTONIC on Linux: one clock for every process of the machine.
* **scans per second, sustained**: every door pushes a batch of :data:`BATCH` admissions,
  waits for its results and pushes the next, for a window; the scans accepted over the
  time from the start until the last answer. Every accepted scan must be in the
  database afterwards, once.
* **server memory**: the peak RSS (VmHWM) of the server processes, summed (PostgreSQL's
  own processes not included).

Ratios are against SQLite with one process. Where PostgreSQL's binaries are missing the
benchmark says so and measures SQLite alone. On the 2-vCPU development VM the doors'
workers, the server processes and PostgreSQL share two cores: more processes cannot
add CPU there, so the figures show what the database and the relay cost, not what
more machines would give.
"""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing
import random
import secrets
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.fixtures import SESSION, SESSION_INFO, codes
from bench.report import Row, percentile
from bench.simulated import SimDoor, collect, open_all, raise_fd_limit
from checkin.harness import ROOT, Postgres, Server, stop_all
from server.database import open_database
from server.migrate import migrate
from server.schema import MIGRATIONS_BY_KIND
from server.store import Attendee, ServerStore
from server.store import Device as ServerDevice
from sync.device_end import CacheState

#: Doors per worker process.
DOORS_PER_WORKER = 250
#: Scans in each batch a door pushes.
BATCH = 10
#: The issue's contract: a change made through one process reaches a door on another
#: within 1 s.
GOAL_MS = 1000.0
#: The configuration the others are compared with.
BASELINE = "SQLite, 1 process"


@dataclass(frozen=True)
class Plan:
    doors: int
    processes: tuple[int, ...]  # PostgreSQL configurations: server processes each
    changes: int  # registrant changes timed for freshness
    seconds: float  # the scans' window
    registrants: int

    @classmethod
    def of(cls, quick: bool) -> Plan:
        if quick:
            return cls(doors=50, processes=(1, 2), changes=3, seconds=1.0, registrants=1000)
        return cls(doors=2000, processes=(1, 2, 4), changes=20, seconds=10.0,
                   registrants=20_000)


@dataclass(frozen=True)
class Figures:
    label: str
    freshness: list[float]  # seconds, one per change
    scans_per_second: float
    accepted: int
    stored: int
    peak_rss_mb: float


@dataclass(frozen=True)
class Template:
    """The event every configuration starts from: an SQLite file made through the store."""

    url: str
    tokens: dict[str, str]  # device id -> token
    epoch: str
    seq: int
    registrants: list[str]
    fresh: list[str]  # attendees, not registrants: each configuration adds them


async def _make_template(folder: Path, plan: Plan) -> Template:
    everyone = codes("SCALE", plan.registrants + plan.changes)
    registrants, fresh = everyone[:plan.registrants], everyone[plan.registrants:]
    store = await ServerStore.open(folder)
    try:
        await store.upsert_attendees([Attendee(c, f"Attendee {c}") for c in everyone])
        await store.put_session(SESSION_INFO)
        await store.put_registrants(SESSION, registrants)
        tokens = {}
        for i in range(plan.doors):
            token, _ = await store.put_device(f"scale-{i:04d}", SESSION)
            assert token is not None
            tokens[f"scale-{i:04d}"] = token
        view = await store.view(ServerDevice("bench", SESSION))
    finally:
        await store.close()
    url = f"sqlite://{(folder / 'server.sqlite3').resolve()}"
    return Template(url, tokens, view.epoch, view.cursor, registrants, fresh)


# -- the doors' worker processes ------------------------------------------------------


def _worker(doors: list[tuple[str, str, str]], epoch: str, cursor: int, fresh: list[str],
            scan_codes: list[str], seconds: float, out: Any, go: Any) -> None:
    """One worker process: connect its doors (url, device id, token), say so, report when
    each of *fresh* is at every one of them, wait for go, push scans, report."""
    raise_fd_limit(len(doors) + 100)
    try:
        out.put(("done", asyncio.run(_doors(doors, epoch, cursor, fresh, scan_codes, seconds,
                                            out, go))))
    except BaseException as exc:  # report, don't leave the parent waiting
        out.put(("error", f"{type(exc).__name__}: {exc}"))


async def _doors(doors: list[tuple[str, str, str]], epoch: str, cursor: int,
                 fresh: list[str], scan_codes: list[str], seconds: float, out: Any,
                 go: Any) -> dict[str, Any]:
    # The doors were in sync before: they reconnect with their cursor, no snapshot.
    sims = [SimDoor(d, t, CacheState(SESSION, epoch, cursor)) for _, d, t in doors]
    by_url = itertools.groupby(sorted(zip((u for u, _, _ in doors), sims, strict=True),
                                      key=lambda pair: pair[0]), key=lambda pair: pair[0])
    try:
        for url, group in by_url:
            await open_all([door for _, door in group], url)
        out.put(("ready", len(sims)))
        for code in fresh:
            async with asyncio.timeout(60):
                while not all(code in d.arrived for d in sims):
                    for d in sims:
                        d.check()
                    await asyncio.sleep(0.002)
            out.put(("arrived", (code, max(d.arrived[code] for d in sims))))
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, go.wait)
        started = time.perf_counter()
        end = started + seconds
        rng = random.Random(doors[0][1])

        async def keep_pushing(door: SimDoor) -> None:
            while time.perf_counter() < end:
                door.answered.clear()
                await door.push_batch(rng.sample(scan_codes, BATCH))
                while door.sent:
                    door.check()
                    await door.answered.wait()
                    door.answered.clear()

        async with asyncio.timeout(seconds + 120):
            await asyncio.gather(*(keep_pushing(d) for d in sims))
        return {"started": started, "finished": time.perf_counter(),
                "accepted": sum(d.accepted for d in sims),
                "sent": sum(d.next_seq - 1 for d in sims)}
    finally:
        await asyncio.gather(*(d.close() for d in sims))


# -- one configuration ----------------------------------------------------------------


@dataclass
class Fleet:
    """The worker processes of one configuration's doors."""

    processes: list[Any]
    out: Any
    go: Any

    def stop(self, finished: bool) -> None:
        for p in self.processes:
            p.join(10 if finished else 0)
            if p.is_alive():
                p.kill()
                p.join()


def _start_fleet(template: Template, urls: list[str], plan: Plan) -> Fleet:
    doors = [(urls[i % len(urls)], device, token)
             for i, (device, token) in enumerate(template.tokens.items())]
    workers = max(1, -(-len(doors) // DOORS_PER_WORKER))
    context = multiprocessing.get_context("spawn")
    fleet = Fleet([], context.Queue(), context.Event())
    for w in range(workers):
        process = context.Process(
            target=_worker, daemon=True,
            args=(doors[w::workers], template.epoch, template.seq, template.fresh,
                  template.registrants, plan.seconds, fleet.out, fleet.go))
        process.start()
        fleet.processes.append(process)
    return fleet


def _measure(label: str, url: str | None, data_dirs: list[Path], template: Template,
             plan: Plan, admin_token: str) -> Figures:
    """Start the servers of one configuration, its doors, and take its figures."""
    began = time.perf_counter()
    servers = [Server(d, database=url, admin_token=admin_token, timeout=60) for d in data_dirs]
    fleet: Fleet | None = None
    finished = False
    try:
        with ThreadPoolExecutor(len(servers)) as starting:  # each waits until it answers
            list(starting.map(lambda server: server.start(timeout=60), servers))
        fleet = _start_fleet(template, [s.sync_url for s in servers], plan)
        workers = len(fleet.processes)
        ready = sum(collect(fleet.out, "ready", workers, 300, "scale"))
        connected = sum(s.api("GET", "/api/health")["devices_connected"] for s in servers)
        if ready != plan.doors or connected != plan.doors:
            raise RuntimeError(f"scale, {label}: {ready} doors ready, {connected} connected, "
                               f"of {plan.doors}")
        times = []
        for code in template.fresh:
            started = time.perf_counter()
            servers[0].api("PUT", f"/api/sessions/{SESSION}/registrants/{code}", expect=201)
            arrived = collect(fleet.out, "arrived", workers, 120, "scale")
            times.append(max(at for c, at in arrived if c == code) - started)
            time.sleep(random.uniform(0.02, 0.05))
        fleet.go.set()
        results = collect(fleet.out, "done", workers, plan.seconds + 300, "scale")
        peak_mb = sum(s.process.peak_rss_kb() for s in servers if s.process) / 1024
        finished = True
    finally:
        if fleet is not None:
            fleet.stop(finished)
        stop_all(s.process for s in servers)
        for server in servers:
            server.client.close()
    accepted = sum(r["accepted"] for r in results)
    elapsed = max(r["finished"] for r in results) - min(r["started"] for r in results)
    stored = asyncio.run(_count_scans(url or f"sqlite://{data_dirs[0].resolve()}"
                                                  "/server.sqlite3"))
    figures = Figures(label, times, accepted / elapsed, accepted, stored, peak_mb)
    print(f"  scale, {plan.doors} doors, {label}: freshness p50 "
          f"{percentile(times, 50) * 1e3:.0f} ms, p99 {percentile(times, 99) * 1e3:.0f} ms; "
          f"{figures.scans_per_second:,.0f} scans/s ({accepted:,} accepted, {stored:,} stored);"
          f" servers' peak RSS {peak_mb:.0f} MB ({time.perf_counter() - began:.0f} s)",
          file=sys.stderr, flush=True)
    return figures


async def _count_scans(url: str) -> int:
    database = await open_database(url, MIGRATIONS_BY_KIND)
    try:
        async with database.read() as db:
            return await db.scalar("SELECT count(*) FROM scans")
    finally:
        await database.close()


# -- every configuration ----------------------------------------------------------------


def measure(plan: Plan) -> list[Figures]:
    raise_fd_limit(2 * plan.doors + 500)  # the servers inherit it
    admin_token = secrets.token_urlsafe(16)
    results = []
    with tempfile.TemporaryDirectory(dir=ROOT) as tmp:
        folder = Path(tmp)
        template = asyncio.run(_make_template(folder / "template", plan))
        target = f"sqlite://{(folder / 'sqlite' / 'server.sqlite3').resolve()}"
        asyncio.run(migrate(template.url, target))
        results.append(_measure(BASELINE, None, [folder / "sqlite"], template, plan,
                                admin_token))
        if (why := Postgres.available()) is not None:
            print(f"  scale: PostgreSQL NOT MEASURED: {why}", file=sys.stderr, flush=True)
            return results
        # A folder of its own in /tmp: as root, PostgreSQL runs as the postgres user, who
        # may not enter this one.
        with Postgres() as cluster:  # fsync on, as SQLite's synchronous = FULL
            for n in plan.processes:
                url = cluster.create_database(f"scale_{n}")
                asyncio.run(migrate(template.url, url))
                label = f"PostgreSQL, {n} process{'es' if n > 1 else ''}"
                results.append(_measure(label, url, [folder / f"pg-{n}-{i}"
                                                     for i in range(n)], template, plan,
                                        admin_token))
    return results


def rows(plan: Plan, results: list[Figures]) -> list[Row]:
    base = results[0]
    out = []
    doors = f"{plan.doors:,} doors"
    for f in results:
        peer = None if f is base else base
        name = BASELINE if peer else ""
        p99 = percentile(f.freshness, 99) * 1e3
        out += [
            Row(f"scale, {doors}, {f.label}: freshness p99 ({plan.changes})", p99,
                percentile(base.freshness, 99) * 1e3 if peer else None, name, "ms",
                f"p99 < {GOAL_MS / 1000:g} s", p99 < GOAL_MS),
            Row(f"scale, {doors}, {f.label}: scans/s sustained", f.scans_per_second,
                base.scans_per_second if peer else None, name, "scans/s", "", None),
            Row(f"scale, {doors}, {f.label}: servers' peak RSS", f.peak_rss_mb,
                base.peak_rss_mb if peer else None, name, "MB", "", None),
        ]
    accepted = sum(f.accepted for f in results)
    stored = sum(f.stored for f in results)
    out.append(Row(f"  scale: scans stored of {accepted:,} accepted (every configuration)",
                   stored, None, "", "scans", f"= {accepted:,}",
                   all(f.stored == f.accepted for f in results)))
    return out


def run(quick: bool) -> list[Row]:
    plan = Plan.of(quick)
    return rows(plan, measure(plan))


def main() -> int:
    """``python -m bench.scale [--quick] [--doors N] [--processes 1,2,4]``: this benchmark
    alone, its plan changed (fewer doors for a trial, more processes on a bigger machine)."""
    import argparse
    import dataclasses

    from bench.report import show
    parser = argparse.ArgumentParser(prog="python -m bench.scale")
    parser.add_argument("--quick", action="store_true", help="the CI smoke run's plan")
    parser.add_argument("--doors", type=int, help="simulated doors")
    parser.add_argument("--processes", help="PostgreSQL configurations, e.g. 1,2,4")
    args = parser.parse_args()
    plan = Plan.of(args.quick)
    if args.doors:
        plan = dataclasses.replace(plan, doors=args.doors)
    if args.processes:
        plan = dataclasses.replace(plan, processes=tuple(
            int(n) for n in args.processes.split(",")))
    print(show(rows(plan, measure(plan))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
