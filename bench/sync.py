"""Sync: how fresh the doors' lists are, initial sync, draining a backlog, load, memory.

Every figure is taken against a real ``checkin server`` subprocess on 127.0.0.1.

* Freshness: an organizer's ``PUT`` of a registrant (the clock starts just
  before the request is sent) until the change is in a door's cache. With one
  door, a real ``checkin sync`` subprocess, whose SQLite store is polled in a
  tight loop of read-only queries (so the figure includes the daemon's
  committed write); with many doors, simulated ones in this process (a
  :class:`DeviceEnd` each over a websocket), each change counting until the
  *last* door has the ``changes`` message. The peers poll: pretixSCAN every
  30 s, alf.io-PI every 5 s; their expected staleness is half of that.
* Initial sync: a real ``checkin sync`` from process start until its store
  holds the session and every registrant, against a server holding as many
  attendees and registrants (written into its SQLite file before it starts).
* Drain: a door that was in sync, went offline and recorded a backlog of
  waiting scans; a real ``checkin sync`` from process start until none is
  waiting, then the server's attendance must hold every one of them.
* Load: hundreds of simulated doors connected to one server at once (in
  worker processes), each pushing one scan a second; time from sending a
  ``scans`` batch to receiving its ``scan_results``; every scan sent must be
  stored.
* Memory: peak RSS (VmHWM) of the sync daemon in the initial sync and the
  drain, and of the server under the load.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import multiprocessing
import os
import queue
import random
import resource
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

from bench.door import _high_water_kb
from bench.report import Row, percentile
from core.rules import SessionRules
from server.schema import SERVER_FILE
from server.store import Attendee, ServerStore
from sync.device_end import (
    ApplyChanges,
    CacheState,
    DeviceEnd,
    DeviceState,
    RecordResults,
)
from sync.device_store import STORE_FILE, Store
from sync.messages import MAX_SERVER_MESSAGE, Scan, SessionInfo

REPO = Path(__file__).resolve().parent.parent
ADMIN_TOKEN = "bench-admin-token"
SESSION = "bench"
#: The peers poll; a change waits half a poll interval on average.
PRETIX_STALENESS_MS = 15_000.0
ALFIO_STALENESS_MS = 2_500.0
#: Doors per worker process in the load benchmark.
DOORS_PER_WORKER = 250
#: A crashed daemon is started again after this long, as systemd/checkin-sync.service does,
#: at most this many times in one measurement.
RESTART_SECONDS = 2.0
MAX_RESTARTS = 3


def codes(prefix: str, n: int) -> list[str]:
    return [f"{prefix}-{i:07d}" for i in range(n)]


# -- processes ------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = dict(os.environ, CHECKIN_ADMIN_TOKEN=ADMIN_TOKEN, PYTHONPATH=str(REPO))
    env.pop("NOTIFY_SOCKET", None)
    return env


def _stop(proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class _Unfinished(RuntimeError):
    """What was waited for did not happen in time."""


class _GaveUp(_Unfinished):
    """The daemon kept crashing: the measurement could not finish."""


def _wait_for(check: Callable[[], Any], timeout: float, what: str,
              proc: subprocess.Popen[bytes] | None = None, log: Path | None = None,
              interval: float = 0.005) -> Any:
    """Poll *check* until it returns something truthy; fail with the process's log."""
    deadline = time.perf_counter() + timeout
    while True:
        result = check()
        if result:
            return result
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: process exited {proc.returncode}:\n"
                               f"{_tail(log) if log else ''}")
        if time.perf_counter() > deadline:
            raise _Unfinished(f"{what}: not within {timeout} s\n{_tail(log) if log else ''}")
        time.sleep(interval)


class _Server:
    """A real ``checkin server`` subprocess on a free port of 127.0.0.1."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = _free_port()
        self.log = data_dir.parent / f"{data_dir.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.api = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=60,
                                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/sync"

    def __enter__(self) -> _Server:
        try:
            with open(self.log, "wb") as log:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "checkin.cli", "server", "--data", str(self.data_dir),
                     "--host", "127.0.0.1", "--port", str(self.port)],
                    cwd=REPO, env=_env(), stdout=log, stderr=subprocess.STDOUT)
            _wait_for(self._healthy, 30, "checkin server start", self.proc, self.log, 0.05)
        except BaseException:
            self.__exit__()
            raise
        return self

    def _healthy(self) -> bool:
        try:
            return self.api.get("/api/health").status_code == 200
        except httpx.TransportError:
            return False

    def __exit__(self, *exc: object) -> None:
        self.api.close()
        if self.proc is not None:
            _stop(self.proc)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        response = self.api.request(method, path, json=body)
        if response.status_code >= 300:
            raise RuntimeError(f"{method} {path}: HTTP {response.status_code} {response.text}")
        return response.json() if response.content else None

    def provision(self, device_id: str) -> str:
        return self.call("PUT", f"/api/devices/{device_id}", {"session_id": SESSION})["token"]

    def peak_rss_mb(self) -> float:
        assert self.proc is not None
        return _high_water_kb(self.proc.pid) / 1024

    def cpu_seconds(self) -> float:
        """CPU time the server has used so far (all its threads)."""
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _Daemon:
    """A real ``checkin sync`` subprocess for a device folder with its own config.

    Supervised as systemd would: when it exits, it is started again after
    :data:`RESTART_SECONDS` (which the measurement then includes), and each
    crash is kept in :attr:`crashes`.
    """

    def __init__(self, folder: Path, server: _Server, device_id: str, token: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.data_dir = folder / "data"
        self.store = self.data_dir / STORE_FILE
        self.log = folder / "sync.log"
        (folder / "token").write_text(token + "\n")
        self.config = folder / "door.toml"
        self.config.write_text(
            f'[device]\nid = "{device_id}"\ndata_dir = "{self.data_dir}"\n'
            '[camera]\nsource = "images:/dev/null"\n'
            '[gpio]\npin_factory = "mock"\ngreen = 17\nred = 27\nbuzzer = 22\n'
            f'[server]\nurl = "{server.url}"\ntoken_file = "{folder / "token"}"\n')
        self.proc: subprocess.Popen[bytes] | None = None
        self.crashes: list[str] = []
        self.peak_kb = 0
        self.troubles = 0  # warnings and errors in its log, counted when it stops

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "checkin.cli", "sync", "--config", str(self.config)],
                cwd=REPO, env=_env(), stdout=log, stderr=subprocess.STDOUT)

    def supervise(self) -> None:
        """Start the daemon again if it exited; give up after :data:`MAX_RESTARTS`."""
        assert self.proc is not None
        if self.proc.poll() is None:
            return
        last = _tail(self.log, 1)
        self.crashes.append(f"exit {self.proc.returncode}: {last}")
        print(f"  checkin sync crashed (exit {self.proc.returncode}): {last}", file=sys.stderr,
              flush=True)
        if len(self.crashes) > MAX_RESTARTS:
            raise _GaveUp(f"checkin sync crashed {len(self.crashes)} times; last: {last}")
        time.sleep(RESTART_SECONDS)
        self.start()

    def stop(self) -> None:
        if self.proc is not None:
            self.sample()
            _stop(self.proc)
            with contextlib.suppress(OSError):
                log = self.log.read_text(errors="replace").splitlines()
                self.troubles = sum(" WARNING " in x or " ERROR " in x for x in log)

    def wait_for(self, check: Callable[[], Any], timeout: float, what: str,
                 interval: float = 0.005) -> Any:
        def supervised() -> Any:
            self.supervise()
            self.sample()
            return check()

        return _wait_for(supervised, timeout, what, None, self.log, interval)

    def sample(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.peak_kb = max(self.peak_kb, _high_water_kb(self.proc.pid))

    def peak_rss_mb(self) -> float:
        """The peak RSS of the daemon, over its restarts."""
        self.sample()
        return self.peak_kb / 1024


class _StoreReader:
    """Read-only queries on a device store that the daemon may not have made yet."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.db: sqlite3.Connection | None = None

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> tuple[Any, ...] | None:
        """The first row, or ``None`` while the file or its tables are not there yet."""
        try:
            if self.db is None:
                if not self.path.exists():
                    return None
                self.db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
            return self.db.execute(sql, params).fetchone()
        except sqlite3.Error:
            self.close()
            return None

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None


async def _populate(folder: Path, attendees: list[str], registrants: list[str]) -> tuple[str, int]:
    """Fill a server data dir before the server starts; return its (epoch, last seq).

    Attendees and the session go through the server's store; registrants (one
    HTTP call each through the API) go in with one insert, each with its own seq.
    """
    store = await ServerStore.open(folder)
    try:
        if attendees:
            await store.upsert_attendees([Attendee(c, f"Attendee {c}") for c in attendees])
        await store.put_session(SessionInfo(SESSION, "Bench session", True))
        epoch = store.epoch
    finally:
        await store.close()
    db = sqlite3.connect(folder / SERVER_FILE)
    try:
        with db:
            first = db.execute("SELECT seq FROM meta").fetchone()[0] + 1
            db.executemany(
                "INSERT INTO registrants (session_id, code, deleted, seq) VALUES (?, ?, 0, ?)",
                ((SESSION, c, first + i) for i, c in enumerate(registrants)))
            db.execute("UPDATE meta SET seq = ?", (first + len(registrants) - 1,))
            seq = db.execute("SELECT seq FROM meta").fetchone()[0]
    finally:
        db.close()
    return epoch, seq


# -- simulated doors ------------------------------------------------------------------


@dataclass
class _SimDoor:
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
                    self.accepted += sum(r.result == "accepted" for r in action.results)
            if self.end.state is DeviceState.READY:
                self.ready.set()

    async def _flush(self) -> None:
        assert self.ws is not None
        for frame in self.end.data_to_send():
            await self.ws.send(frame)

    async def push(self, code: str) -> None:
        now = datetime.now().astimezone()
        scan = Scan(str(uuid.uuid4()), self.next_seq, code, SESSION, "admitted", "registered",
                    now.isoformat(), time.monotonic_ns(), "bench-boot")
        self.next_seq += 1
        batch = self.end.send_scans([scan])
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


async def _open_all(doors: list[_SimDoor], url: str, at_once: int = 50) -> None:
    for start in range(0, len(doors), at_once):
        async with asyncio.timeout(120):
            await asyncio.gather(*(d.open(url) for d in doors[start:start + at_once]))


# -- freshness ------------------------------------------------------------------------


def _daemon_freshness(folder: Path, server: _Server,
                      fresh: list[str]) -> tuple[list[float], _Daemon]:
    """Seconds from each PUT to its registrant being in a real daemon's store."""
    daemon = _Daemon(folder, server, "door-1", server.provision("door-1"))
    reader = _StoreReader(daemon.store)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Length": "0"}
    try:
        daemon.start()
        daemon.wait_for(lambda: reader.query("SELECT session_id FROM session"), 30,
                        "daemon's first sync")
        conn.request("GET", "/api/health")
        conn.getresponse().read()
        times = []
        for code in fresh:
            deadline = time.perf_counter() + 10
            started = time.perf_counter()
            conn.request("PUT", f"/api/sessions/{SESSION}/registrants/{code}", headers=headers)
            while reader.query("SELECT 1 FROM registrants WHERE code = ?", (code,)) is None:
                daemon.supervise()
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"registrant {code} not at the door after 10 s\n"
                                       f"{_tail(daemon.log)}")
            times.append(time.perf_counter() - started)
            response = conn.getresponse()
            response.read()
            if response.status != 201:
                raise RuntimeError(f"PUT registrant {code}: HTTP {response.status}")
            time.sleep(random.uniform(0.02, 0.05))
        return times, daemon
    finally:
        conn.close()
        reader.close()
        daemon.stop()


async def _fleet_freshness(server: _Server, tokens: dict[str, str],
                           fresh: list[str]) -> tuple[list[float], list[float]]:
    """Seconds from each PUT until the first, and the last, simulated door has the change."""
    doors = [_SimDoor(d, t) for d, t in tokens.items()]
    try:
        await _open_all(doors, server.url)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=30,
                                     headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as api:
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


def freshness(quick: bool) -> tuple[list[Row], _Daemon]:
    """Rows for freshness; and the real daemon that took part."""
    changes, fleets = (5, (10,)) if quick else (30, (100, 500))
    everyone = codes("FRESH", 1000 + (1 + len(fleets)) * changes)
    _raise_fd_limit(2 * max(fleets) + 200)
    results: list[tuple[str, list[float]]] = []
    with tempfile.TemporaryDirectory(dir=REPO) as tmp:
        folder = Path(tmp)
        asyncio.run(_populate(folder / "server", everyone, everyone[:1000]))
        with _Server(folder / "server") as server:
            one, daemon = _daemon_freshness(folder / "door-1", server,
                                            everyone[1000:1000 + changes])
            results.append(("1 door (checkin sync)", one))
            tokens = {f"sim-{i:03d}": server.provision(f"sim-{i:03d}")
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


# -- initial sync ---------------------------------------------------------------------


def initial_sync(quick: bool) -> tuple[list[Row], _Daemon]:
    """Rows for the initial sync; and the daemon that made it."""
    n = 5000 if quick else 100_000
    everyone = codes("ATT", n)
    with tempfile.TemporaryDirectory(dir=REPO) as tmp:
        folder = Path(tmp)
        _, seq = asyncio.run(_populate(folder / "server", everyone, everyone))
        with _Server(folder / "server") as server:
            daemon = _Daemon(folder / "door", server, "door-init", server.provision("door-init"))
            reader = _StoreReader(daemon.store)
            opened: list[float] = []  # when the daemon had made its store: start-up done
            welcomed: list[float] = []  # when it noted the server's welcome

            def synced() -> bool:
                if not opened and daemon.store.exists():
                    opened.append(time.perf_counter())
                row = reader.query("SELECT connected, cursor FROM sync_state")
                if row and row[0] and not welcomed:
                    welcomed.append(time.perf_counter())
                return bool(row) and row[1] >= seq

            unfinished = ""
            try:
                started = time.perf_counter()
                daemon.start()
                daemon.wait_for(synced, 60, f"initial sync of {n:,} registrants")
            except _Unfinished as exc:
                unfinished = _why(exc, daemon)
            finally:
                elapsed = time.perf_counter() - started
                counts = reader.query(
                    "SELECT (SELECT count(*) FROM session WHERE session_id = ?),"
                    " (SELECT count(*) FROM registrants), (SELECT count(*) FROM attendees)",
                    (SESSION,))
                reader.close()
                daemon.stop()
    if not unfinished and counts != (1, n, n):
        raise RuntimeError(f"initial sync: store holds (session, registrants, attendees) "
                           f"{counts}, expected (1, {n}, {n})")
    startup = (opened[0] if opened else started + elapsed) - started
    welcome = (welcomed[0] if welcomed else started + elapsed) - started
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


def _why(exc: _Unfinished, daemon: _Daemon) -> str:
    """A metric suffix saying why a measurement did not finish."""
    if isinstance(exc, _GaveUp):
        return f" (did not finish: {len(daemon.crashes)} crashes)"
    return f" (did not finish in time, {len(daemon.crashes)} crashes)"


# -- drain ----------------------------------------------------------------------------


async def _fill_door(data_dir: Path, cached: list[str], epoch: str, cursor: int,
                     scans: list[str]) -> None:
    """A door that was in sync with the server, then recorded *scans* offline."""
    store = await Store.open(data_dir)
    try:
        await store.replace_cache(SessionRules(SESSION, True), cached, cached,
                                  name="Bench session")
    finally:
        await store.close()
    start = datetime.now().astimezone() - timedelta(hours=2)
    db = sqlite3.connect(data_dir / STORE_FILE)
    try:
        with db:
            db.execute("UPDATE sync_state SET epoch = ?, cursor = ?", (epoch, cursor))
            db.executemany(
                "INSERT INTO scans (scan_id, code, session_id, decision, reason, scanned_at,"
                " monotonic_ns, boot_id) VALUES (?, ?, ?, 'admitted', 'registered', ?, ?, ?)",
                ((str(uuid.uuid4()), code, SESSION,
                  (start + timedelta(milliseconds=100 * i)).isoformat(),
                  1_000_000_000 + i * 100_000_000, "bench-boot")
                 for i, code in enumerate(scans)))
    finally:
        db.close()


def drain(quick: bool) -> tuple[list[Row], _Daemon]:
    """Rows for draining a backlog; and the daemon that drained it."""
    n = 2000 if quick else 50_000
    everyone = codes("ATT", n)
    with tempfile.TemporaryDirectory(dir=REPO) as tmp:
        folder = Path(tmp)
        epoch, seq = asyncio.run(_populate(folder / "server", everyone, everyone))
        with _Server(folder / "server") as server:
            daemon = _Daemon(folder / "door", server, "door-drain", server.provision("door-drain"))
            asyncio.run(_fill_door(daemon.data_dir, everyone, epoch, seq, everyone))
            reader = _StoreReader(daemon.store)
            unfinished = ""
            try:
                started = time.perf_counter()
                daemon.start()
                daemon.wait_for(lambda: reader.query(
                    "SELECT count(*) FROM scans WHERE upload_state = 'waiting'") == (0,),
                    60, f"draining {n:,} scans", interval=0.01)
            except _Unfinished as exc:
                unfinished = _why(exc, daemon)
            finally:
                elapsed = time.perf_counter() - started
                states = reader.query(
                    "SELECT count(*) FILTER (WHERE upload_state = 'stored'),"
                    " count(*) FILTER (WHERE upload_state = 'quarantined') FROM scans")
                reader.close()
                daemon.stop()
            attendance = server.call("GET", f"/api/sessions/{SESSION}/attendance")
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


# -- load -----------------------------------------------------------------------------


def _raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        limit = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))


def _load_worker(url: str, tokens: dict[str, str], epoch: str, cursor: int,
                 scan_codes: list[str], seconds: int, out: Any, go: Any) -> None:
    """One worker process: connect its doors, say so, wait for go, push, report."""
    _raise_fd_limit(len(tokens) + 100)
    try:
        out.put(("done", asyncio.run(_load_doors(url, tokens, epoch, cursor, scan_codes,
                                                 seconds, out, go))))
    except BaseException as exc:  # report, don't leave the parent waiting
        out.put(("error", f"{type(exc).__name__}: {exc}"))


async def _load_doors(url: str, tokens: dict[str, str], epoch: str, cursor: int,
                      scan_codes: list[str], seconds: int, out: Any, go: Any) -> dict[str, Any]:
    # The doors were in sync before: they reconnect with their cursor, no snapshot.
    doors = [_SimDoor(d, t, CacheState(SESSION, epoch, cursor)) for d, t in tokens.items()]
    loop = asyncio.get_running_loop()
    try:
        await _open_all(doors, url)
        out.put(("ready", len(doors)))
        await loop.run_in_executor(None, go.wait)
        cpu, wall = time.process_time(), time.perf_counter()
        start = loop.time()
        rng = random.Random(url + next(iter(tokens)))

        async def scan_every_second(index: int, door: _SimDoor) -> None:
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


def load(quick: bool) -> tuple[list[Row], float]:
    """Rows for the load; and the server's peak RSS in MB."""
    n_doors, seconds = (20, 3) if quick else (500, 20)
    workers = max(1, -(-n_doors // DOORS_PER_WORKER))
    everyone = codes("ATT", 1000)
    _raise_fd_limit(2 * n_doors + 200)  # the server inherits it
    with tempfile.TemporaryDirectory(dir=REPO) as tmp:
        folder = Path(tmp)
        epoch, seq = asyncio.run(_populate(folder / "server", everyone, everyone))
        with _Server(folder / "server") as server:
            tokens = [(f"load-{i:03d}", server.provision(f"load-{i:03d}"))
                      for i in range(n_doors)]
            context = multiprocessing.get_context("spawn")
            out, go = context.Queue(), context.Event()
            procs = [context.Process(
                target=_load_worker, daemon=True,
                args=(server.url, dict(tokens[w::workers]), epoch, seq, everyone, seconds,
                      out, go)) for w in range(workers)]
            started: list[Any] = []
            finished = False
            try:
                for p in procs:
                    p.start()
                    started.append(p)
                ready = sum(_collect(out, "ready", workers, 180))
                connected = server.call("GET", "/api/health")["devices_connected"]
                if ready != n_doors or connected != n_doors:
                    raise RuntimeError(f"load: {ready} doors ready, {connected} connected, "
                                       f"of {n_doors}")
                cpu, wall = server.cpu_seconds(), time.perf_counter()
                go.set()
                results = _collect(out, "done", workers, seconds + 180)
                server_busy = (server.cpu_seconds() - cpu) / (time.perf_counter() - wall)
                peak = server.peak_rss_mb()
                finished = True
            finally:
                for p in started:
                    p.join(10 if finished else 0)
                    if p.is_alive():
                        p.kill()
                        p.join()
            attendance = server.call("GET", f"/api/sessions/{SESSION}/attendance")
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


def _collect(out: Any, kind: str, count: int, timeout: float) -> list[Any]:
    """*count* messages of *kind* from the workers, or fail with a worker's error."""
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        try:
            what, value = out.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            raise RuntimeError(f"load: workers silent for {timeout} s (waiting for {kind})") \
                from None
        if what == "error":
            raise RuntimeError(f"load worker failed: {value}")
        if what == kind:
            got.append(value)
    return got


# -- all of it ------------------------------------------------------------------------


def run(quick: bool) -> list[Row]:
    rows, fresh_daemon = freshness(quick)
    synced, sync_daemon = initial_sync(quick)
    drained, drain_daemon = drain(quick)
    loaded, server_peak = load(quick)
    rows += synced + drained + loaded
    n_sync, n_drain, n_doors = (5000, 2000, 20) if quick else (100_000, 50_000, 500)
    sync_peak, drain_peak = sync_daemon.peak_rss_mb(), drain_daemon.peak_rss_mb()
    crashes = sum(len(d.crashes) for d in (fresh_daemon, sync_daemon, drain_daemon))
    rows += [
        Row(f"sync daemon peak RSS, initial sync of {n_sync:,}", sync_peak, None, "", "MB",
            "< 80 MB", sync_peak < 80),
        Row(f"sync daemon peak RSS, draining {n_drain:,} scans", drain_peak, None, "", "MB",
            "< 80 MB", drain_peak < 80),
        Row(f"server peak RSS, {n_doors} doors pushing scans", server_peak, None, "", "MB", "",
            None),
        Row("sync daemon crashes (each restarted after 2 s)",
            crashes, None, "", "crashes", "none", crashes == 0),
    ]
    return rows
