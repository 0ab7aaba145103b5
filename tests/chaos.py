"""The chaos run: the real system under network faults and kills, then a count.

A real ``checkin server``, several doors (each a real ``checkin sync`` and a real
``checkin door`` with an ``images:`` camera the harness keeps feeding badges) and,
between each daemon and the server, a :class:`FaultyLink` written here: a TCP
relay that can cut, reset, stall (black hole), delay and truncate a connection in
the middle of a frame, or make every link flap: reset every 20 to 80 ms for a while,
so the server's per-link tasks end at arbitrary points of their work. Each trial picks one
fault at random — or SIGKILLs a door, a daemon or the server — while doors scan and
organizers change registrants, then heals it. Afterwards every link is healed and
the harness checks:

- every scan any door printed is at the server exactly once (by scan id);
- no scan on any device is in a state other than stored, or quarantined with a reason;
- every device's registrant cache equals the server's;
- the server still takes writes through its API (a session and a registrant), at the
  end and after every trial (a later restart of the server would hide a server that
  had stopped writing).

``python -m tests.chaos [--trials N] [--doors N] [--seed S]`` (``make chaos``) runs
the full version and prints the figures; ``tests/test_chaos.py`` a short one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from checkin.badges import Look, render_badge
from tests.system import ADMIN, free_port, process_env, read_only_query

WAITING = "SELECT count(*) FROM scans WHERE upload_state = 'waiting'"
FAULTS = ("cut", "reset", "stall", "delay", "truncate", "flap", "kill-door", "kill-sync",
          "kill-server")
#: A flapping link is reset after a pause drawn from this range, in seconds ...
FLAP_SECONDS = (0.02, 0.08)
#: ... for a while drawn from this one: long enough for a few hundred resets of the links
#: of two doors (on the unfixed server of issue 10, about 1 in 100 left a transaction open).
FLAP_HOLD_SECONDS = (6.0, 12.0)


class FaultyLink:
    """A TCP relay between one daemon and the server, with faults on demand."""

    def __init__(self, upstream_port: int, rng: random.Random) -> None:
        self.upstream_port = upstream_port
        self.rng = rng
        self.port = 0
        self.mode = "ok"  # ok | down | stall | delay | truncate
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        self.drop(reset=True)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def drop(self, *, reset: bool) -> None:
        """End every relayed connection: a FIN (cut) or a RST (reset)."""
        for writer in list(self._open):
            if reset:
                writer.transport.abort()
            else:
                writer.close()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "down":
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.transport.abort()
            return
        self._open |= {writer, up_writer}
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            self._open -= {writer, up_writer}
            writer.transport.abort()
            up_writer.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                while self.mode == "stall":  # a black hole: bytes go nowhere for now
                    await asyncio.sleep(0.05)
                if self.mode == "delay":
                    await asyncio.sleep(self.rng.uniform(0.05, 0.4))
                if self.mode == "truncate" and len(data) > 1:
                    writer.write(data[:self.rng.randrange(1, len(data))])  # part of a frame
                    await writer.drain()
                    writer.transport.abort()
                    return
                writer.write(data)
                await writer.drain()
        writer.transport.abort()


@dataclass
class ChaosDoor:
    name: str
    root: Path
    link: FaultyLink
    sync: asyncio.subprocess.Process | None = None
    door: asyncio.subprocess.Process | None = None
    printed: list[dict[str, Any]] = field(default_factory=list)
    shown: int = 0
    readers: list[asyncio.Task] = field(default_factory=list)


class Chaos:
    def __init__(self, root: Path, doors: int, seed: int, log: Any = sys.stdout) -> None:
        self.root = root
        self.rng = random.Random(seed)
        self.port = free_port()
        self.api = httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.port}", timeout=10,
                                     headers={"Authorization": f"Bearer {ADMIN}"})
        self.server: asyncio.subprocess.Process | None = None
        self.doors = [ChaosDoor(f"door-{i}", root / f"door-{i}", FaultyLink(self.port, self.rng))
                      for i in range(doors)]
        self.counts: Counter[str] = Counter()
        self.log = log
        self.attendees = [f"ATT-{i:04d}" for i in range(200)]

    def say(self, text: str) -> None:
        print(text, file=self.log, flush=True)

    # -- processes ----------------------------------------------------------------

    async def start_server(self) -> None:
        self.server = await _spawn(["server", "--data", str(self.root / "server"), "--port",
                                    str(self.port)], self.root / "server.log")
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.TransportError):
                if (await self.api.get("/api/health")).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            await asyncio.sleep(0.05)

    async def start_sync(self, door: ChaosDoor) -> None:
        door.sync = await _spawn(["sync", "--config", str(door.root / "door.toml")],
                                 door.root / "sync.log")

    async def start_door(self, door: ChaosDoor) -> None:
        door.door = await _spawn(["door", "--config", str(door.root / "door.toml")],
                                 door.root / "door.log", stdout=asyncio.subprocess.PIPE)
        door.readers.append(asyncio.create_task(self._read(door, door.door)))

    async def _read(self, door: ChaosDoor, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        async for line in process.stdout:
            door.printed.append(json.loads(line))

    async def setup(self) -> None:
        await self.start_server()
        await self._call("POST", "/api/attendees",
                         [{"code": c, "name": c} for c in self.attendees])
        await self._call("PUT", "/api/sessions/s1", {"name": "Chaos", "validate_registrants":
                                                     True})
        for code in self.attendees[:100]:
            await self._call("PUT", f"/api/sessions/s1/registrants/{code}")
        for door in self.doors:
            (door.root / "frames").mkdir(parents=True)
            await door.link.start()
            token = (await self._call("PUT", f"/api/devices/{door.name}",
                                      {"session_id": "s1"}))["token"]
            (door.root / "device.token").write_text(token)
            (door.root / "door.toml").write_text(_config(door.name, door.link.port))
            await self.start_sync(door)
            await self.start_door(door)

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        answer = await self.api.request(method, path, json=body)
        if answer.status_code >= 400 and answer.status_code != 404:
            raise RuntimeError(f"{method} {path}: {answer.status_code} {answer.text}")
        return answer.json() if answer.content else None

    async def stop(self) -> None:
        for door in self.doors:
            for task in door.readers:
                task.cancel()
            for process in (door.door, door.sync):
                await _end(process, signal.SIGTERM)
            await door.link.close()
        await _end(self.server, signal.SIGTERM)
        await self.api.aclose()

    # -- activity -------------------------------------------------------------------

    async def scanning(self) -> None:
        """Badges keep arriving at every door; old ones leave the camera's folder."""
        while True:
            for door in self.doors:
                door.shown += 1
                code = self.rng.choice([*self.attendees, "ZZZ-UNKNOWN"])
                final = door.root / "frames" / f"{door.shown:06d}.png"
                part = final.with_suffix(".part")
                render_badge(code, Look(), seed=door.shown).save(part, format="PNG")
                part.rename(final)
                stale = door.root / "frames" / f"{door.shown - 8:06d}.png"
                stale.unlink(missing_ok=True)
            await asyncio.sleep(self.rng.uniform(0.15, 0.4))

    async def organizing(self) -> None:
        """Registrants come and go on the server (when it is up)."""
        while True:
            code = self.rng.choice(self.attendees)
            method = self.rng.choice(("PUT", "DELETE"))
            with contextlib.suppress(httpx.TransportError, RuntimeError):
                await self._call(method, f"/api/sessions/s1/registrants/{code}")
                self.counts["registrant changes"] += 1
            await asyncio.sleep(self.rng.uniform(0.05, 0.3))

    # -- faults -----------------------------------------------------------------------

    async def trial(self, number: int, fault: str | None = None) -> None:
        fault = fault or self.rng.choice(FAULTS)
        door = self.rng.choice(self.doors)
        hold = self.rng.uniform(0.3, 1.5)
        self.counts[fault] += 1
        where = "" if "server" in fault else "every link" if fault == "flap" else door.name
        self.say(f"  trial {number:3d}: {fault:<11} {where}")
        if fault in ("cut", "reset"):
            door.link.mode = "down"
            door.link.drop(reset=fault == "reset")
            await asyncio.sleep(hold)
        elif fault == "flap":
            # Every link (a flaky switch): reconnects are let through and cut again a few
            # tens of milliseconds later while the doors keep pushing, so the server's tasks
            # for a link are cancelled wherever they are (reading, in a transaction,
            # answering). Held longer than the others, for many connections to open and be
            # cut (a daemon retries within 0.5 s).
            seconds = self.rng.uniform(*FLAP_HOLD_SECONDS)
            await asyncio.gather(*(self._flap(each, seconds) for each in self.doors))
        elif fault in ("stall", "delay", "truncate"):
            door.link.mode = fault
            await asyncio.sleep(hold)
            if fault == "stall":
                door.link.drop(reset=True)  # a black hole ends when someone gives up on it
        elif fault == "kill-door":
            await _end(door.door, signal.SIGKILL)
            await asyncio.sleep(hold / 3)
            await self.start_door(door)
        elif fault == "kill-sync":
            await _end(door.sync, signal.SIGKILL)
            await asyncio.sleep(hold / 3)
            await self.start_sync(door)
        else:
            await _end(self.server, signal.SIGKILL)
            await asyncio.sleep(hold / 3)
            await self.start_server()
        door.link.mode = "ok"
        await asyncio.sleep(self.rng.uniform(0.2, 0.8))
        writes = await self.api_writes(f"CHECK-{number}")
        if writes != "ok":
            self.counts["API write failures after trials"] += 1
            self.say(f"             API writes after the trial {writes}")

    async def _flap(self, door: ChaosDoor, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            await asyncio.sleep(self.rng.uniform(*FLAP_SECONDS))
            door.link.drop(reset=True)
            self.counts["flap resets"] += 1

    # -- the count ----------------------------------------------------------------------

    async def settle(self, timeout: float = 90) -> None:
        """Heal everything and wait until every device is drained and up to date."""
        for door in self.doors:
            door.link.mode = "ok"
        deadline = time.monotonic() + timeout
        while not all(self._settled(d) for d in self.doors):
            if time.monotonic() > deadline:
                raise AssertionError("the system did not settle: " + "; ".join(
                    f"{d.name}: {_device(d, WAITING)} waiting" for d in self.doors)
                    + f"; API writes: {await self.api_writes('CHECK-SETTLE')}")
            await asyncio.sleep(0.2)

    def _settled(self, door: ChaosDoor) -> bool:
        waiting = _device(door, WAITING)
        cursor = _device(door, "SELECT cursor FROM sync_state")
        return waiting == [(0,)] and cursor == _server(self.root, "SELECT seq FROM meta")

    def verdict(self) -> dict[str, Any]:
        printed = [s["scan_id"] for d in self.doors for s in d.printed]
        stored = Counter(r[0] for r in _server(self.root, "SELECT scan_id FROM scans"))
        quarantined = {r[0] for d in self.doors for r in _device(
            d, "SELECT scan_id FROM scans WHERE upload_state = 'quarantined' AND "
               "upload_note IS NOT NULL AND upload_note != ''")}
        odd = sum(r[0] for d in self.doors for r in _device(
            d, "SELECT count(*) FROM scans WHERE upload_state NOT IN ('stored', 'quarantined')"
               " OR (upload_state = 'quarantined' AND coalesce(upload_note, '') = '')"))
        registrants = {r[0] for r in _server(
            self.root, "SELECT code FROM registrants WHERE session_id = 's1' AND deleted = 0")}
        diverged = sum({r[0] for r in _device(d, "SELECT code FROM registrants")} != registrants
                       for d in self.doors)
        return {
            "trials": sum(self.counts[f] for f in FAULTS),
            "kills": sum(self.counts[f] for f in FAULTS if f.startswith("kill")),
            "cuts": sum(self.counts[f] for f in ("cut", "reset", "stall", "truncate", "flap")),
            "flap resets": self.counts["flap resets"],
            "scans": len(printed),
            "lost": sum(1 for s in printed if s not in stored and s not in quarantined),
            "duplicated": sum(1 for s in printed if stored[s] > 1)
                          + (len(printed) - len(set(printed))),
            "quarantined": len(quarantined),
            "not stored or quarantined": odd,
            "caches differing from the server": diverged,
            "registrant changes": self.counts["registrant changes"],
            "API write failures after trials":
                self.counts["API write failures after trials"],
        }

    async def api_writes(self, label: str) -> str:
        """``"ok"`` if the server still takes writes through its API, else what failed.

        A new attendee *label*, registered for the doors' session, whose name changes:
        real writes (no-ops are not), and changes the doors receive like any other (their
        cursors still reach the server's sequence number).
        """
        writes = [("POST", "/api/attendees", [{"code": label, "name": label}]),
                  ("PUT", f"/api/sessions/s1/registrants/{label}", None),
                  ("PUT", "/api/sessions/s1", {"name": f"Chaos ({label})",
                                               "validate_registrants": True})]
        for method, path, body in writes:
            try:
                answer = await self.api.request(method, path, json=body)
            except httpx.TransportError as exc:
                return f"failed: {method} {path}: {exc!r}"
            if not 200 <= answer.status_code < 300:
                return f"failed: {method} {path}: {answer.status_code} {answer.text[:200]}"
        return "ok"


async def run(root: Path, trials: int, doors: int, seed: int, log: Any = sys.stdout, *,
              every_fault: bool = False) -> dict[str, Any]:
    """Run *trials* random trials (with *every_fault*: each kind of fault in turn first)."""
    chaos = Chaos(root, doors, seed, log)
    background: list[asyncio.Task] = []
    try:
        await chaos.setup()
        background = [asyncio.create_task(chaos.scanning()),
                      asyncio.create_task(chaos.organizing())]
        for number in range(1, trials + 1):
            in_turn = every_fault and number <= len(FAULTS)
            await chaos.trial(number, FAULTS[number - 1] if in_turn else None)
        for task in background:
            task.cancel()
        await asyncio.sleep(1.5)  # the last badges in view get decided
        await chaos.settle()
        figures = chaos.verdict()
        figures["api writes after"] = await chaos.api_writes("CHECK-END")
        return figures
    finally:
        for task in background:
            task.cancel()
        await chaos.stop()


def _config(name: str, port: int) -> str:
    return f"""[device]
id = "{name}"
data_dir = "data"
[camera]
source = "images:frames"
fps = 20
frames_per_image = 2
[scanner]
debounce_seconds = 0.05
[door]
heartbeat_seconds = 1
[gpio]
pin_factory = "mock"
green = 17
red = 27
buzzer = 22
[server]
url = "ws://127.0.0.1:{port}/sync"
token_file = "device.token"
retry_min_seconds = 0.1
retry_max_seconds = 0.5
auth_retry_seconds = 0.5
status_seconds = 0.5
"""


async def _spawn(args: list[str], log: Path,
                 stdout: int = asyncio.subprocess.DEVNULL) -> asyncio.subprocess.Process:
    with log.open("ab") as err:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "checkin.cli", *args, stdout=stdout, stderr=err,
            env=process_env())


async def _end(process: asyncio.subprocess.Process | None, signum: int) -> None:
    if process is None or process.returncode is not None:
        return
    process.send_signal(signum)
    try:
        await asyncio.wait_for(process.wait(), 20)
    except TimeoutError:
        process.kill()
        await process.wait()


def _device(door: ChaosDoor, sql: str, params: tuple = ()) -> list[tuple]:
    return read_only_query(door.root / "data" / "checkin.sqlite3", sql, params)


def _server(root: Path, sql: str) -> list[tuple]:
    return read_only_query(root / "server" / "server.sqlite3", sql)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos")
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--doors", type=int, default=3)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    args = parser.parse_args()
    print(f"chaos run: {args.trials} trials, {args.doors} doors, seed {args.seed}")
    with tempfile.TemporaryDirectory(prefix="checkin-chaos-") as tmp:
        figures = asyncio.run(run(Path(tmp), args.trials, args.doors, args.seed,
                                  every_fault=True))
    print("\n" + "\n".join(f"  {key:<34} {value}" for key, value in figures.items()))
    bad = figures["lost"] + figures["duplicated"] + figures["not stored or quarantined"] \
        + figures["caches differing from the server"] + (figures["api writes after"] != "ok") \
        + figures["API write failures after trials"]
    print("\nPASSED: nothing lost, nothing duplicated, every cache equal to the server's,"
          " the API still writes"
          if not bad else "\nFAILED")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
