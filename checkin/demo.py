"""``checkin demo``: the whole system on this machine, as a newcomer first sees it.

A central server with a demo event, and two doors — each a real ``checkin sync``
and a real ``checkin door`` process with its own data dir, config and token,
its camera an ``images:`` folder the demo drops phone-screen badges into. The
terminal shows every decision, each door's LEDs and buzzer as its mock pins
have them (mirrored into a file by the pins themselves), its link and its
scans waiting. One door is cut off from the server for a while and its backlog
drains when the link comes back; a registrant added on the server is admitted
at the door seconds later. At the end: the attendance as the server has it.

``--once`` exits when the scenario is over, 0 only if every scripted outcome
happened; otherwise the system keeps running until Ctrl-C.
"""

from __future__ import annotations

import asyncio
import functools
import json
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from checkin.badges import Look
from checkin.harness import PINS, Device, Process, Server, WaitFailed, stop_all, until
from checkin.linkproxy import LinkProxy
from checkin.status import link_state
from core.clock import wall_now
from device.indicators.mirror import read_pins
from sync.store import DeviceStatus, SyncStore

ATTENDEES = {
    "ATT-0001": "Ada Lovelace", "ATT-0002": "Alan Turing", "ATT-0003": "Grace Hopper",
    "ATT-0004": "Edsger Dijkstra", "ATT-0005": "Barbara Liskov", "ATT-0006": "Ken Thompson",
}
SESSIONS = {
    "workshop": ("Workshop: QR codes on a Raspberry Pi", True, ["ATT-0001", "ATT-0002"]),
    "keynote": ("Opening keynote", False, ["ATT-0001", "ATT-0002", "ATT-0003", "ATT-0004"]),
}
#: Late registrant the organizer adds mid-run.
LATE = "ATT-0005"
#: What the server must count at the end: (registered, admitted, rejected, scans).
EXPECTED_COUNTS = {"workshop": (3, 3, 4, 9), "keynote": (4, 2, 1, 4)}
#: Waiting for something to happen: checked every 0.1 s.
_until = functools.partial(until, interval=0.1)


@dataclass(frozen=True)
class Show:
    """What a door's camera is shown, and what the door must answer (None: nothing)."""

    payload: str | bytes
    expect: str
    caption: str
    held: bool = False  # the phone stays in view twice as long: one decision only


AT_THE_WORKSHOP = [
    Show("ATT-0001", "registered", "a registrant shows her phone and keeps holding it up",
         held=True),
    Show("ATT-0003", "not_registered", "an attendee not registered for the workshop"),
    Show("https://tickets.example/t/ATT-0002", "registered", "a ticket URL on a phone"),
    Show("ATT-0001", "reentry", "the first one comes back from the coffee break"),
    Show("ATT-9999", "unknown_code", "a badge from another event"),
    Show(b"\x00\xff\x1b[2J%%garbage", "invalid_code", "a QR code that is not a badge"),
]
WORKSHOP_OFFLINE = [
    Show("ATT-0004", "not_registered", "offline: a non-registrant"),
    Show("ATT-0002", "reentry", "offline: a registrant back in"),
]
AT_THE_KEYNOTE = [
    Show("ATT-0006", "registered", "Validate Registrants off: any attendee gets in"),
    Show("ATT-0003", "registered", "another attendee"),
    Show("ATT-0006", "reentry", "back from the hallway"),
    Show("ATT-7777", "unknown_code", "a code from another event"),
]
LATE_ARRIVAL = [Show(LATE, "registered", "the late registrant arrives")]


class DemoFailed(Exception):
    """A scripted outcome did not happen."""


class Console:
    """The demo's terminal: one line per event, stamped with seconds since the start."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.color = sys.stdout.isatty()

    def line(self, who: str, text: str) -> None:
        print(f"{time.monotonic() - self.start:6.1f}s  {who:<9} {text}", flush=True)

    def heading(self, text: str) -> None:
        print(f"\n── {text} " + "─" * max(0, 70 - len(text)), flush=True)

    def paint(self, text: str, color: str) -> str:
        codes = {"green": "32", "red": "31", "yellow": "33", "dim": "2", "bold": "1"}
        return f"\033[{codes[color]}m{text}\033[0m" if self.color else text


class Door(Device):
    """One door of the demo: its files and processes (the harness's), its link to the
    server, and what it decided."""

    def __init__(self, name: str, session: str, root: Path, proxy: LinkProxy) -> None:
        super().__init__(
            root, f"door-{name}", server_url=f"ws://127.0.0.1:{proxy.port}/sync",
            comment=f'Door "{name}" of the demo: a real config file, as a technician writes it.',
            # A held phone is 8 frames at 10 fps: 2 s between two sightings still counts as
            # the same phone on a machine too busy to decode every frame in time, and a
            # re-entry two steps later (at least 3.2 s on) is still a new scan.
            camera={"fps": 10, "frames_per_image": 4}, scanner={"debounce_seconds": 2.0},
            door={"heartbeat_seconds": 1}, gpio={"mirror_file": "pins"},
            server={"retry_min_seconds": 0.2, "retry_max_seconds": 1.0, "status_seconds": 1})
        self.name = name
        self.session = session
        self.proxy = proxy
        self.decisions: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.made: list[dict[str, Any]] = []

    def hold_up(self, payload: str | bytes, copies: int = 1) -> None:
        """A phone in front of the camera, tilted a little, for *copies* frames' worth."""
        for _ in range(copies):
            self.show(payload, Look(angle=((self.shown + 1) * 13) % 30 - 15))


class Demo:
    def __init__(self, root: Path, console: Console) -> None:
        self.root = root
        self.console = console
        # In a session of its own, as every process here: Ctrl-C reaches the demo, which
        # stops them in order.
        self.server = Server(root / "server", own_session=True)
        self.token = self.server.admin_token
        self.url = self.server.url
        self.api = self.server.async_client(timeout=30)
        self.doors: dict[str, Door] = {}
        self.tasks: list[asyncio.Task] = []
        self.stores: dict[str, SyncStore] = {}

    # -- the system --------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.to_thread(self.server.start)
        await self._load_event()
        for name, session in (("workshop", "workshop"), ("keynote", "keynote")):
            self.doors[name] = await self._provision(name, session)

    async def start_doors(self) -> None:
        for door in self.doors.values():
            await self._start_door(door)

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        answer = await self.api.request(method, path, json=body)
        if answer.status_code >= 300:
            raise DemoFailed(f"{method} {path}: {answer.status_code} {answer.text}")
        return answer.json() if answer.content else None

    async def _load_event(self) -> None:
        await self._call("POST", "/api/attendees",
                         [{"code": c, "name": n} for c, n in ATTENDEES.items()])
        for session, (title, validate, registrants) in SESSIONS.items():
            await self._call("PUT", f"/api/sessions/{session}",
                             {"name": title, "validate_registrants": validate})
            for code in registrants:
                await self._call("PUT", f"/api/sessions/{session}/registrants/{code}")

    async def signin_link(self) -> str:
        """A one-time link that signs a browser in to the dashboard (the server makes it
        for the admin token; opening it does not spend it, its form does)."""
        answer = await self._call("POST", "/signin/once?next=/live")
        return str(answer["url"])

    async def _provision(self, name: str, session: str) -> Door:
        proxy = LinkProxy("127.0.0.1", self.server.port)
        await proxy.start()
        door = Door(name, session, self.root / f"door-{name}", proxy)
        token = (await self._call("PUT", f"/api/devices/{door.device_id}",
                                  {"session_id": session}))["token"]
        door.token_file.write_text(token + "\n")
        return door

    async def _start_door(self, door: Door) -> None:
        door.start_sync(own_session=True)
        process = door.start_door(own_session=True)
        self.tasks.append(asyncio.create_task(self._read_decisions(door, process)))
        await _until(door.store_file.exists, 30, f"door {door.name} to make its store")
        self.stores[door.name] = await SyncStore.open(door.data_dir)
        self.tasks += [asyncio.create_task(self._watch_pins(door)),
                       asyncio.create_task(self._watch_link(door))]

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        processes = [p for d in self.doors.values() for p in (d.door_process, d.sync)]
        await asyncio.to_thread(stop_all, [*processes, self.server.process], 15)
        for door in self.doors.values():
            await door.proxy.close()
        for store in self.stores.values():
            await store.close()
        await self.api.aclose()
        self.server.client.close()

    # -- what the terminal shows ----------------------------------------------------

    async def _read_decisions(self, door: Door, process: Process) -> None:
        async for raw in process.lines():
            scan = json.loads(raw)
            door.made.append(scan)
            admitted = scan["decision"] == "admitted"
            verdict = self.console.paint("ADMIT " if admitted else "REJECT",
                                         "green" if admitted else "red")
            name = ATTENDEES.get(scan["code"], "")
            self.console.line(door.name, f"{verdict} {scan['reason']:<15} {scan['code'][:32]}"
                                         f"  {name}")
            await door.decisions.put(scan)

    async def _watch_pins(self, door: Door) -> None:
        last = None
        mirror = door.root / "pins"  # [gpio] mirror_file
        while True:
            pins = read_pins(mirror)
            state = tuple(pins[PINS[k]] for k in ("green", "red", "buzzer"))
            if state != last and last is not None:
                green, red, buzzer = state
                self.console.line(door.name, self.console.paint(
                    f"  LEDs   green {'●' if green else '○'}  red {'●' if red else '○'}  "
                    f"buzzer {'♪' if buzzer else '·'}", "dim"))
            last = state
            await asyncio.sleep(0.01)

    async def _watch_link(self, door: Door) -> None:
        last = None
        while True:
            link, waiting = await self.link(door)
            if (link, waiting) != last:
                colour = "green" if link == "connected" else "yellow"
                self.console.line(door.name, self.console.paint(
                    f"  link {link}, {waiting} scan(s) waiting to upload", colour))
                last = (link, waiting)
            await asyncio.sleep(0.2)

    async def link(self, door: Door) -> tuple[str, int]:
        """The door's link state and scans waiting, as ``checkin status`` reads them."""
        status = await self.store_status(door)
        return link_state(status, wall_now(), 3.0), status.scans_waiting

    async def store_status(self, door: Door) -> DeviceStatus:
        """The door's status, read from its store as ``checkin status`` reads it."""
        return await self.stores[door.name].status()

    # -- the scenario ------------------------------------------------------------------

    async def run_scenario(self) -> None:
        c = self.console
        for door in self.doors.values():
            await _until(lambda d=door: self._synced(d), 30, f"door {door.name} to sync")
        c.heading("At the workshop door (Validate Registrants on)")
        await self.play(self.doors["workshop"], AT_THE_WORKSHOP)

        c.heading("The workshop door loses its link to the server")
        workshop = self.doors["workshop"]
        workshop.proxy.cut()
        await _until(lambda: self._link_is(workshop, "disconnected"), 30, "the link to drop")
        await self.play(workshop, WORKSHOP_OFFLINE)
        c.heading("Meanwhile at the keynote door (Validate Registrants off)")
        await self.play(self.doors["keynote"], AT_THE_KEYNOTE)

        c.heading("The workshop door's link comes back: its backlog drains")
        backlog = (await self.store_status(workshop)).scans_waiting
        restored = time.monotonic()
        workshop.proxy.restore()
        await _until(lambda: self._drained(workshop), 60, "the backlog to drain")
        c.line("workshop", f"  backlog of {backlog} scan(s) delivered "
                           f"{time.monotonic() - restored:.1f} s after the link came back")

        c.heading(f"The organizer adds {ATTENDEES[LATE]} to the workshop")
        added = time.monotonic()
        await self._call("PUT", f"/api/sessions/workshop/registrants/{LATE}")
        await _until(lambda: self._cached(workshop, LATE), 30, "the change to reach the door")
        c.line("workshop", f"  in the door's cache {1000 * (time.monotonic() - added):.0f} ms "
                           "after the organizer's request")
        await self.play(workshop, LATE_ARRIVAL)

        for door in self.doors.values():
            await _until(lambda d=door: self._drained(d), 60, "every scan to reach the server")
        await self.check_attendance()

    async def play(self, door: Door, script: list[Show]) -> None:
        for step in script:
            self.console.line(door.name, self.console.paint(f"camera: {step.caption}", "bold"))
            door.hold_up(step.payload, copies=2 if step.held else 1)
            try:
                scan = await asyncio.wait_for(door.decisions.get(), 20)
            except TimeoutError:
                raise DemoFailed(f"door {door.name} made no decision on: {step.caption}") \
                    from None
            if scan["reason"] != step.expect:
                raise DemoFailed(f"door {door.name} answered {scan['reason']} to "
                                 f"{step.caption!r}, expected {step.expect}")
            await asyncio.sleep(1.6)  # let the pattern play; a held phone would decide again
            if not door.decisions.empty():
                raise DemoFailed(f"door {door.name} decided twice on: {step.caption}")
            if step.held:
                self.console.line(door.name, "  (phone still in view: ignored, not scanned "
                                             "twice)")

    async def _synced(self, door: Door) -> bool:
        status = await self.store_status(door)
        if status.session_id != door.session:
            return False
        self.console.line(door.name, f"  synced: session {door.session!r}, "
                                     f"{status.registrants} registrants, {status.attendees} "
                                     "attendees cached")
        return True

    async def _link_is(self, door: Door, state: str) -> bool:
        return (await self.link(door))[0] == state

    async def _drained(self, door: Door) -> bool:
        link, waiting = await self.link(door)
        return link == "connected" and waiting == 0

    async def _cached(self, door: Door, code: str) -> bool:
        """Whether the door would find *code* a registrant: its own lookup, on its store."""
        return (await self.stores[door.name].facts(code)).is_registrant

    async def check_attendance(self) -> None:
        self.console.heading("Attendance, as the server has it")
        problems = []
        for door in self.doors.values():
            att = await self._call("GET", f"/api/sessions/{door.session}/attendance")
            got = (att["registered"], att["admitted"], att["rejected"], len(att["scans"]))
            flagged = sum(s["disagreement"] is not None for s in att["scans"])
            print(f"  {door.session:<9} registered {got[0]}, admitted {got[1]}, rejected "
                  f"{got[2]}, {got[3]} scans ({flagged} flagged for review)")
            if got != EXPECTED_COUNTS[door.session]:
                problems.append(f"{door.session}: counts {got}, expected "
                                f"{EXPECTED_COUNTS[door.session]}")
            stored = sorted(s["scan_id"] for s in att["scans"])
            if stored != sorted(s["scan_id"] for s in door.made):
                problems.append(f"{door.session}: the server's scans are not exactly the "
                                "door's, each once")
        if problems:
            raise DemoFailed("; ".join(problems))
        made = sum(len(d.made) for d in self.doors.values())
        print(f"\nEvery one of the {made} decisions reached the server exactly once, "
              "including those made offline.")


async def _main(once: bool) -> int:
    # Ctrl-C and SIGTERM end the demo through its cleanup (its doors run in sessions of
    # their own, so nothing else stops them), even where SIGINT was inherited as ignored,
    # as in a shell's background job.
    main_task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, main_task.cancel)
    console = Console()
    with tempfile.TemporaryDirectory(prefix="checkin-demo-") as tmp:
        demo = Demo(Path(tmp), console)
        print("checkin demo: a central server and two doors, each a real sync daemon and a "
              "real door process,\nwith cameras fed phone-screen badges. Files and logs: "
              f"{tmp}\n")
        try:
            await demo.start()
            print(f"  server   {demo.url}  (organizer API; admin token {demo.token})")
            print(f"  live     {demo.url}/live  (the organizers' dashboard: sessions, doors)")
            print(f"  sign in  {await demo.signin_link()}  (opens the dashboard; works once)")
            for door in demo.doors.values():
                title, validate, _ = SESSIONS[door.session]
                print(f"  {door.name:<8} door-{door.name}, session {door.session!r} "
                      f"({title}; Validate Registrants {'on' if validate else 'off'})")
            console.heading("The doors start and sync their registrant lists")
            await demo.start_doors()
            await demo.run_scenario()
            if once:
                print("\nAll scripted outcomes happened.")
                return 0
            print(f"\nThe system keeps running: try the API at {demo.url} "
                  "(docs/api.md). Ctrl-C stops everything.")
            await asyncio.Event().wait()
            return 0
        except (DemoFailed, WaitFailed) as exc:
            print(f"\ndemo FAILED: {exc}\n(logs were in {tmp})", file=sys.stderr)
            _show_logs(Path(tmp))
            return 1
        finally:
            await demo.stop()
            print("Stopped every process.", flush=True)


def _show_logs(root: Path) -> None:
    for log in sorted(root.rglob("*.log")):
        lines = log.read_text(errors="replace").splitlines()[-8:]
        print(f"--- {log.relative_to(root)} (last lines)", file=sys.stderr)
        for line in lines:
            print(f"    {line}", file=sys.stderr)


def main(once: bool = False) -> int:
    """Run the demo; with *once*, exit 0 only if every scripted outcome happened."""
    try:
        return asyncio.run(_main(once))
    except (KeyboardInterrupt, asyncio.CancelledError):  # stopped by Ctrl-C or SIGTERM
        return 0
