"""The door process: camera -> decode -> decide -> record durably -> signal.

The imperative shell around :func:`core.rules.decide`. Order matters: a
scan is committed to the store *before* the LEDs, the buzzer and the output
line say anything, and a scan that cannot be recorded is signalled
``not_ready``: the door never admits anyone it cannot count.

Each frame is one hop to the door's own database thread
(:class:`sync.device_store.DoorStore`) and back: there the frame is captured and
decoded (zxing-cpp releases the GIL) and each new payload looked up, decided and
committed, so the event loop stays free and the LED waits for no other thread.
The rest of the store (the door's status notes) is reached through aiosqlite.
After signalling, the door pokes the sync daemon (:mod:`sync.wake`), off the
frame-to-LED path.

Each decision takes its time from the best source the door has
(:func:`core.timesource.door_time`): the system clock when synchronised, else the server's
time carried on the monotonic clock from the sync daemon's last anchor in this boot, else
the system clock, said unknown (a session window is then the ``[door] unknown_time``
policy's). The marker and the anchor are read at most once a second, before a capture
rather than between a payload and its LED.

The staff's override button (``[gpio] override_button``) admits the person the door
last rejected, within ``[door] override_seconds``: a new scan with reason
``override`` linked to the rejected one (:mod:`device.override`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sqlite3
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import partial
from typing import TextIO

from core import __version__
from core.clock import boot_id, monotonic_ns, wall_now
from core.codes import printable
from core.rules import Decision, Direction, Facts, Policy, Reason, decide
from core.timesource import ClockAnchor, TimeSource, door_time, synchronized
from device.config import DeviceConfig
from device.debounce import Debouncer
from device.indicators.signals import Indicators
from device.notify import notify
from device.override import Overrides, PressFile, Rejection, press_mock_pin
from device.scanner.decoders import Decoder
from device.scanner.frames import (
    CameraError,
    CaptureTimeout,
    FrameSource,
    SourceExhausted,
    open_source,
)
from device.scanner.payload import parse_payload
from device.selftest import SELF_TEST, ControlListener
from sync.device_store import Decided, DoorStore, ScanRecord, Store, StoreError
from sync.wake import Poker

log = logging.getLogger(__name__)

#: The fields of a decision's log line (as ``extra``: --log-format json shows them).
_DECISION_FIELDS = ("scan_id", "device_id", "session_id", "code", "decision", "reason",
                    "direction", "time_source", "recorded", "override_of")
#: Longest pause between attempts to reopen a failing camera or store.
MAX_RETRY_SECONDS = 10.0
#: How often the door asks again whether its clock is synchronised and for the daemon's
#: clock anchor (both cheap; the time between changes little).
TIME_REFRESH_NS = 1_000_000_000
#: Least time between two warnings that the door admits without knowing the time.
UNKNOWN_TIME_WARNING_NS = 60_000_000_000


@dataclass(frozen=True, slots=True)
class TimeFacts:
    """What the door last read about its time: the system clock synchronised, and the
    sync daemon's clock anchor; read at monotonic *read_ns*."""

    synchronized: bool
    anchor: ClockAnchor | None
    read_ns: int


@dataclass(frozen=True, slots=True)
class Outcome:
    """One new payload, decided and recorded (or not) on the store's thread."""

    scan_id: str
    code: str
    #: The door's time of the decision (ISO 8601), from *time_source*.
    at: str
    time_source: TimeSource
    #: What was wrong with an invalid payload.
    detail: str | None
    decided: Decided


@dataclass
class DoorStats:
    frames: int = 0
    decisions: int = 0
    unrecorded: int = 0
    camera_errors: int = 0
    overrides: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)


class Door:
    """One door: wires a frame source, a decoder, the store and the indicators."""

    def __init__(self, config: DeviceConfig, decoder: Decoder, indicators: Indicators,
                 out: TextIO) -> None:
        self.config = config
        self.decoder = decoder
        self.indicators = indicators
        self.out = out
        self.policy = Policy(
            allow_reentry=config.door.allow_reentry,
            open_before=timedelta(minutes=config.door.open_before_minutes),
            direction=config.door.direction,
            unknown_time=config.door.unknown_time,
        )
        self.debouncer = Debouncer(int(config.scanner.debounce_seconds * 1e9))
        self.overrides = Overrides(int(config.door.override_seconds * 1e9))
        self.stats = DoorStats()
        self.store: Store | None = None
        self.desk: DoorStore | None = None
        self.poker = Poker(config.data_dir)
        self.control = ControlListener(config.data_dir, self.self_test)
        self._stopping = asyncio.Event()
        self._ready_sent = False
        self._presses: set[asyncio.Task[Reason | None]] = set()
        self._time: TimeFacts | None = None
        self._unknown_time_warned_ns: int | None = None

    def stop(self) -> None:
        """Ask the loop to finish the frame in hand and return."""
        notify("STOPPING=1")  # systemd: the unit is stopping, not hung
        self._stopping.set()

    async def run(self, *, exit_when_done: bool = False) -> int:
        """Run until stopped (or, with *exit_when_done*, until the source runs out)."""
        source = None
        await self._ensure_desk()
        await self._note(started_at=wall_now().isoformat())
        if not self.control.open():  # the door runs on; only `checkin doctor` misses it
            log.warning("cannot bind the control socket %s: checkin doctor cannot ask "
                        "this door for its self-test", self.control.path)
        last_note_ns, frames_since_note = monotonic_ns(), 0
        retry = 0.5
        press_file = self._wire_button()
        try:
            while not self._stopping.is_set():
                if source is None:
                    source = await self._open_source(retry, finite=exit_when_done)
                    if source is None:
                        retry = min(retry * 2, MAX_RETRY_SECONDS)
                        continue
                try:
                    at_ns, outcomes = await self._next_frame(source)
                except SourceExhausted:
                    log.info("frame source exhausted")
                    if exit_when_done:
                        break
                    await self._stopping.wait()
                    break
                except CaptureTimeout as exc:
                    log.warning("%s; retrying", exc)
                    continue
                except CameraError as exc:
                    self.stats.camera_errors += 1
                    log.error("%s; reopening the camera", exc)
                    self._close_source(source)
                    source = None
                    await self._sleep(retry)
                    continue
                retry = 0.5
                self._frame_seen()
                frames_since_note += 1
                if self._signal_all(outcomes):
                    source.flush()
                if at_ns - last_note_ns >= self.config.door.heartbeat_seconds * 1e9:
                    await self._note(last_frame_at=wall_now().isoformat(), frames=frames_since_note)
                    last_note_ns, frames_since_note = at_ns, 0
            if frames_since_note:
                await self._note(last_frame_at=wall_now().isoformat(), frames=frames_since_note)
            await self.indicators.idle()
        finally:
            if press_file is not None:
                await press_file.stop()
            if self.indicators.button is not None:
                self.indicators.button.when_pressed = None
            for task in list(self._presses):
                with contextlib.suppress(Exception):
                    await task
            self._close_source(source)
            self.control.close()
            self.indicators.close()
            self.poker.close()
            await self._close_store()
        return 1 if self.stats.unrecorded and exit_when_done else 0

    def self_test(self) -> dict[str, object]:
        """`checkin doctor` asked (device/selftest.py): play the self-test pattern and say
        what the door is doing."""
        self.indicators.show_pattern(SELF_TEST)
        log.info("self-test pattern playing (asked by checkin doctor)")
        return {"self_test": "playing", "frames": self.stats.frames,
                "decisions": self.stats.decisions, "camera_errors": self.stats.camera_errors}

    def _wire_button(self) -> PressFile | None:
        """Route the override button's presses (gpiozero calls from its own thread) to
        the loop; start the press file's watcher (mock pins, tests) if configured."""
        button = self.indicators.button
        if button is None:
            return None
        loop = asyncio.get_running_loop()

        def pressed() -> None:
            loop.call_soon_threadsafe(self.press, monotonic_ns())

        button.when_pressed = pressed
        path = self.config.gpio.press_file
        if path is None:
            return None
        press_file = PressFile(path, lambda: press_mock_pin(button.pin))
        press_file.start()
        log.info("override button %d pressed by each byte appended to %s (mock pins)",
                 self.config.gpio.override_button, path)
        return press_file

    async def _close_store(self) -> None:
        if self.desk is not None:
            await self.desk.close()
            self.desk = None
        if self.store is not None:
            await self.store.close()
            self.store = None

    def _capture(self, source: FrameSource) -> tuple[int, list[bytes]]:
        # on a worker thread: the store's, or asyncio's while the store is not open
        with source.capture(self.config.camera.timeout) as frame:
            return frame.at_ns, self.decoder.decode(frame.pixels)

    def _frame_seen(self) -> None:
        self.stats.frames += 1
        if not self._ready_sent:  # systemd: the door is up once a frame arrived
            notify("READY=1")
            self._ready_sent = True
        notify("WATCHDOG=1")

    async def _next_frame(self, source: FrameSource) -> tuple[int, list[Outcome]]:
        """Capture and decode the next frame, and decide and record each new payload in
        it: one hop to the store's thread and back (the door's own thread, where the
        store's connection lives), so the LED waits for no other thread."""
        desk = self.desk
        if desk is not None:
            return await desk.run(self._capture_and_decide, source, desk)
        # No store yet: capture anywhere, then try to open it for each new payload.
        at_ns, payloads = await asyncio.to_thread(self._capture, source)
        return at_ns, [await self._decide(raw) for raw in self.debouncer.frame(payloads, at_ns)]

    def _capture_and_decide(self, source: FrameSource,
                            desk: DoorStore) -> tuple[int, list[Outcome]]:
        self._time_facts(desk)  # before the capture: never between a payload and its LED
        at_ns, payloads = self._capture(source)  # on the store's thread
        # Every frame looked at goes to the debouncer, empty or not: a code counts again
        # only after frames without it, never because this frame's decision was slow.
        new = self.debouncer.frame(payloads, at_ns)
        return at_ns, [self._decide_here(desk, raw) for raw in new]

    async def _handle_frame(self, at_ns: int, payloads: list[bytes]) -> bool:
        """Decide, record and signal the new payloads of a frame already decoded (tests
        hand the door frames this way, with no word of the frames between: the time
        since a code's last sighting counts as out of view); say whether any was new."""
        new = [raw for raw in payloads if self.debouncer.is_new(raw, at_ns)]
        return self._signal_all([await self._decide(raw) for raw in new])

    async def handle_payload(self, raw: bytes) -> Reason:
        """Decide, record and signal one new payload; return the reason signalled."""
        return self._signal(await self._decide(raw))

    async def _decide(self, raw: bytes) -> Outcome:
        desk = await self._ensure_desk()
        if desk is None:
            return self._decide_here(None, raw)
        return await desk.run(self._decide_here, desk, raw)

    def _time_facts(self, desk: DoorStore | None) -> TimeFacts:
        """What the door knows of its time, read again if older than a second (on the
        store's thread, where the anchor's connection lives)."""
        known, now_ns = self._time, monotonic_ns()
        if known is not None and now_ns - known.read_ns < TIME_REFRESH_NS:
            return known
        anchor = known.anchor if known is not None else None
        if desk is not None:
            try:
                anchor = desk.clock_anchor_in_thread()
            except (sqlite3.Error, ValueError) as exc:  # keep the last one
                log.warning("cannot read the clock anchor: %s", exc)
        self._time = TimeFacts(synchronized(), anchor, now_ns)
        return self._time

    def _now(self, known: TimeFacts) -> tuple[TimeSource, datetime, int]:
        """The door's best time now, where it came from, and the monotonic time."""
        wall, mono = wall_now(), monotonic_ns()
        source, now = door_time(known.synchronized, known.anchor, wall, mono, boot_id())
        return source, now, mono

    def _decide_here(self, desk: DoorStore | None, raw: bytes) -> Outcome:
        """Look up, decide and record one payload, on the store's thread."""
        payload = parse_payload(raw)
        source, now, mono = self._now(self._time_facts(desk))
        known = source is not TimeSource.UNKNOWN
        scan_id = str(uuid.uuid4())
        code = payload.code if payload.code is not None else printable(raw)
        direction = self.policy.direction

        def judge(facts: Facts) -> Reason:
            return decide(payload.valid, replace(facts, time_known=known), self.policy, now)

        def record(facts: Facts, reason: Reason) -> ScanRecord:
            return ScanRecord(
                scan_id=scan_id, code=code, session_id=facts.session_id,
                decision=reason.decision, reason=reason.value, scanned_at=now.isoformat(),
                monotonic_ns=mono, boot_id=boot_id(), direction=direction,
                time_source=source.value)

        try:
            if desk is None:
                raise StoreError("the store is not open")
            decided = desk.decide_and_record_in_thread(payload.code, judge, record)
        except StoreError as exc:
            decided = Decided(Facts(session=None), Reason.NOT_READY, None, str(exc))
        # Committed (or not): the LED says so now, from this thread; the loop plays the
        # rest of the pattern and prints the line when it hears of it.
        self.indicators.light(decided.reason if decided.seq is not None else Reason.NOT_READY)
        return Outcome(scan_id, code, now.isoformat(), source, payload.error, decided)

    def _signal_all(self, outcomes: list[Outcome]) -> bool:
        for outcome in outcomes:
            self._signal(outcome)
        return bool(outcomes)

    def _signal(self, outcome: Outcome) -> Reason:
        """Show, print and count a recorded decision (or not_ready if it was not
        recorded); then let the sync daemon know, off the frame-to-LED path."""
        decided = outcome.decided
        reason = decided.reason if decided.seq is not None else Reason.NOT_READY
        if decided.seq is None:
            log.error("cannot record the scan of %s (%s): signalling not_ready", outcome.code,
                      decided.error)
            self.stats.unrecorded += 1
        self.indicators.show(reason)
        self._emit(outcome.scan_id, decided.seq, outcome.code, decided.facts.session_id,
                   reason, outcome.at, outcome.time_source, outcome.detail,
                   self.policy.direction)
        self._count(reason)
        if outcome.time_source is TimeSource.UNKNOWN and reason.admitted:
            self._warn_unknown_time(decided.facts)
        session_id = decided.facts.session_id
        if session_id is not None and self.overrides.may_override(
                reason, decided.seq is not None, session_id):
            self.overrides.rejected(Rejection(outcome.scan_id, outcome.code, session_id,
                                              reason, monotonic_ns()))
        if decided.seq is not None:
            self.poker.poke()
        return reason

    def _warn_unknown_time(self, facts: Facts) -> None:
        """An admission the session's window could not check: say so in the log, at
        most once a minute (a door booted offline decides many)."""
        session = facts.session
        if session is None or (session.starts_at is None and session.ends_at is None):
            return
        now_ns = monotonic_ns()
        last = self._unknown_time_warned_ns
        if last is not None and now_ns - last < UNKNOWN_TIME_WARNING_NS:
            return
        self._unknown_time_warned_ns = now_ns
        log.warning("admitting to session %s without knowing the time: the system clock is "
                    "not synchronised and the sync daemon has not reached the server since "
                    "boot, so the session's time window is not checked ([door] unknown_time "
                    "= \"admit\"); scans say time_source unknown and the server re-times them",
                    session.session_id)

    def press(self, at_ns: int) -> None:
        """The override button was pressed at monotonic *at_ns* (called on the loop)."""
        task = asyncio.get_running_loop().create_task(self.override(at_ns))
        self._presses.add(task)
        task.add_done_callback(self._presses.discard)

    async def override(self, at_ns: int) -> Reason | None:
        """Admit the person of the latest rejection, if it was within the window and not
        overridden yet: record a new scan (reason ``override``), then signal it."""
        rejection = self.overrides.press(at_ns)
        if rejection is None:
            again = self.overrides.already_overridden(at_ns)
            log.info("override button pressed with no rejection in the last %g s: nothing to "
                     "override%s", self.config.door.override_seconds,
                     " (the latest was overridden already)" if again else "")
            return None
        desk = await self._ensure_desk()
        known = self._time
        if desk is not None and (known is None
                                 or monotonic_ns() - known.read_ns >= TIME_REFRESH_NS):
            with contextlib.suppress(StoreError):
                known = await desk.run(self._time_facts, desk)
        source, now, mono = self._now(known or TimeFacts(synchronized(), None, 0))
        scan = ScanRecord(
            scan_id=str(uuid.uuid4()), code=rejection.code, session_id=rejection.session_id,
            decision=Decision.ADMITTED, reason=Reason.OVERRIDE, scanned_at=now.isoformat(),
            monotonic_ns=mono, boot_id=boot_id(), direction=Direction.IN,
            override_of=rejection.scan_id, time_source=source.value)
        seq: int | None = None
        reason = Reason.OVERRIDE
        try:
            if desk is None:
                raise StoreError("the store is not open")
            seq = await desk.record(scan)
        except StoreError as exc:
            log.error("cannot record the override of %s (%s): signalling not_ready",
                      rejection.code, exc)
            self.overrides.undo(rejection)
            self.stats.unrecorded += 1
            reason = Reason.NOT_READY
        self.indicators.show(reason)
        self._emit(scan.scan_id, seq, scan.code, scan.session_id, reason, scan.scanned_at,
                   source, None, Direction.IN, override_of=rejection.scan_id)
        self._count(reason)
        if seq is not None:
            log.info("override: %s admitted by staff (overrules scan %s, %s)", scan.code,
                     rejection.scan_id, rejection.reason)
            self.stats.overrides += 1
            self.poker.poke()
        return reason

    def _count(self, reason: Reason) -> None:
        self.stats.decisions += 1
        self.stats.by_reason[reason.value] = self.stats.by_reason.get(reason.value, 0) + 1

    def _emit(self, scan_id: str, seq: int | None, code: str, session_id: str | None,
              reason: Reason, at: str, time_source: TimeSource, error: str | None,
              direction: Direction, *, override_of: str | None = None) -> None:
        line = {
            "scan_id": scan_id,
            "seq": seq,
            "device_id": self.config.device_id,
            "code": code,
            "session_id": session_id,
            "decision": reason.decision,
            "reason": reason.value,
            "direction": direction.value,
            "at": at,
            "time_source": time_source.value,
            "recorded": seq is not None,
        }
        if override_of is not None:
            line["override_of"] = override_of
        if error is not None:
            line["detail"] = error
        self.out.write(json.dumps(line, ensure_ascii=False) + "\n")
        self.out.flush()
        # The same decision for the journal (or --log-format json), one line.
        log.info("%s: %s (%s), %s, session %s, scan %s%s", code, reason.decision,
                 reason.value, direction.value, session_id, scan_id,
                 "" if seq is not None else ", not recorded",
                 extra={"event": "decision", **{k: line[k] for k in _DECISION_FIELDS if k in line}})

    async def _ensure_store(self) -> Store | None:
        if self.store is None:
            try:
                self.store = await Store.open(self.config.data_dir)
            except StoreError as exc:
                log.error("%s: the door will signal not_ready until it can record", exc)
        return self.store

    async def _ensure_desk(self) -> DoorStore | None:
        """The door's own database thread, opened once the store is (it migrates)."""
        if self.desk is None and await self._ensure_store() is not None:
            try:
                self.desk = await DoorStore.open(self.config.data_dir)
            except StoreError as exc:
                log.error("%s: the door will signal not_ready until it can record", exc)
        return self.desk

    async def _note(self, **fields: object) -> None:
        if self.store is None:
            return
        try:
            await self.store.note_door(**fields)
        except StoreError as exc:
            log.warning("cannot note door status: %s", exc)

    async def _open_source(self, retry: float, *, finite: bool) -> FrameSource | None:
        try:
            return await asyncio.to_thread(partial(open_source, self.config.camera,
                                                   finite=finite))
        except CameraError as exc:
            if self.config.camera.images_path is not None:
                raise  # a missing image folder does not fix itself
            log.error("%s; retrying in %.1f s", exc, retry)
            await self._sleep(retry)
            return None

    @staticmethod
    def _close_source(source: FrameSource | None) -> None:
        if source is not None:
            try:
                source.close()
            except Exception as exc:  # a failing camera may fail to close too
                log.warning("closing the camera failed: %s", exc)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)


async def run_door(config: DeviceConfig, decoder: Decoder, indicators: Indicators,
                   out: TextIO, *, exit_when_done: bool = False) -> int:
    """Run a door until SIGTERM/SIGINT (or the source runs out); return the exit status."""
    door = Door(config, decoder, indicators, out)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, door.stop)
    log.info("door %s starting (checkin %s, decoder %s, camera %s)", config.device_id,
             __version__, decoder.name, config.camera.source)
    try:
        return await door.run(exit_when_done=exit_when_done)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        log.info("door %s stopped: %s", config.device_id, door.stats)
