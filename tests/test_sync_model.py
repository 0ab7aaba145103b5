"""A model-based test of the sync protocol: both sans-I/O ends, a model server, a model door.

Hypothesis drives a :class:`~hypothesis.stateful.RuleBasedStateMachine` through
connections, cuts, crashes, server history resets, organizer changes and door
scans, with the real :class:`DeviceEnd` and :class:`ServerEnd` in the middle and
pure in-memory models around them, driven the way ``sync/daemon.py`` and
``server/endpoint.py`` drive the ends:

- :class:`ModelServer` keeps what ``server/store.py`` keeps (one seq counter,
  rows with their latest seq, tombstones, scans by id with their owner, and each
  attendee's presence in a session: inside or out, by the latest door time, with
  a new seq when it changes) and answers ``snapshot``, ``changes_since`` and
  ``store_scans`` with the same semantics (``store_scans`` through the real
  :func:`judge_scans`). One per epoch: a history reset starts a new one with
  fresh data and none of the scans.
- :class:`ModelDoor` is the device's disk: the cache (applied one action at a
  time, atomically, like ``SyncStore``, with the session's admissions: the
  server's, and its own the moment it makes them) and the outbox of scans.
- Another door of the session (``door-2``) admits and lets out attendees,
  sometimes uploading late (an earlier door time than what the server holds).
- :class:`Link` is one connection: two queues of frames in flight, and the
  server's pump (its actions, each read from the store and then answered in two
  steps, with organizer changes and hub pushes free to land in between).

Two networks. :class:`TcpSyncModel` is faithful to a websocket: frames arrive
in order, exactly once, until the connection is cut, which can happen at any
time (network, server crash, device crash, a 4002 close after a reassignment);
a ``ProtocolError`` there is a bug. :class:`LossySyncModel` also drops,
duplicates and reorders frames inside a connection; each fault must end in a
``ProtocolError`` (the connection closes, both ends are discarded) or do no harm.

Checked after every step: no scan is stored twice on one server; a scan the
device marked stored is stored, as this device's, on the server (epoch) that
said so; every answer about a scan tells the truth; outbox states are
waiting/stored/quarantined (with a reason) and never change once final; the
protocol ends agree with the cache they sit on; and a healthy link with nothing
left in flight has brought the cache up to date (push, not poll). At the end of
every run, and now and then in between, the network turns perfect: the link
that is up runs until quiet, then a fresh one does, and no scan is left waiting,
and the cache (session, attendees, registrants, admissions, epoch, cursor) is the
server's.

What building the model turned up is pinned down by the fixed sequences at the end.
``CHECKIN_MODEL_EXAMPLES`` (e.g. 2000) makes the runs heavier (``make chaos``).
"""

from __future__ import annotations

import asyncio
import copy
import os
import shutil
import sqlite3
import sys
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import sync.device_end
import sync.server_end
from core.rules import Reason
from server.app import create_app
from server.hub import Hub
from server.store import Attendee, Device, ServerStore
from sync.daemon import MAX_BATCHES_IN_FLIGHT
from sync.device_end import (
    ApplyChanges,
    ApplySnapshot,
    CacheState,
    DeviceEnd,
    DeviceState,
    RecordResults,
    Welcomed,
)
from sync.messages import (
    CLOSE_REASSIGNED,
    CLOSE_REVOKED,
    Change,
    Changes,
    ProtocolError,
    Scan,
    ScanOutcome,
    ScanResult,
    SessionInfo,
    Snapshot,
    Welcome,
    encode,
    parse_server_message,
)
from sync.server_end import (
    NoteStatus,
    SendChanges,
    SendSnapshot,
    ServerEnd,
    ServerView,
    StoreScans,
    judge_scans,
)
from sync.store import SyncStore, session_first

DEVICE = "door-1"
OTHER_DEVICE = "door-9"
#: Another door of the device's session, whose admissions the device must come to know.
SECOND_DOOR = "door-2"
SOFTWARE = "checkin-model"
T0 = "2026-11-28T10:00:00+01:00"
#: When frames reach the server end (the model has no clock; nothing here depends on it).
NOW = datetime.fromisoformat(T0)
CODES = ("A1", "A2", "A3", "A4", "A5")
SESSIONS = ("S1", "S2", "S3")
NAMES = ("Keynote", "Workshop")
#: Codes per snapshot part and changes message in the model runs (20,000 in
#: production): small, so that multi-part snapshots and split changes happen.
CHUNK = 2
WAITING, STORED, QUARANTINED = "waiting", "stored", "quarantined"
#: Frames a settle may take before the model calls the link stuck.
QUIET_LIMIT = 5_000

EXAMPLES = int(os.environ.get("CHECKIN_MODEL_EXAMPLES") or 0)
SETTINGS = settings(
    max_examples=EXAMPLES or 200,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# -- the model server ------------------------------------------------------------------


@dataclass
class SessionRow:
    info: SessionInfo
    deleted: bool
    seq: int


def door_time(tick: int) -> str:
    """The door time of the model's *tick*: later ticks are later instants."""
    return (NOW + timedelta(seconds=tick)).isoformat()


@dataclass
class PresenceRow:
    inside: bool
    at: str  # door time of the scan it comes from
    seq: int


@dataclass
class ModelServer:
    """What ``ServerStore`` keeps, in memory; one instance per epoch (database file)."""

    epoch: str
    seq: int = 0
    horizon: int = 0
    sessions: dict[str, SessionRow] = field(default_factory=dict)
    attendees: dict[str, int] = field(default_factory=dict)  # code -> seq (never deleted)
    registrants: dict[tuple[str, str], tuple[bool, int]] = field(default_factory=dict)
    devices: dict[str, str] = field(default_factory=dict)  # device -> assigned session
    scans: dict[str, tuple[str, Scan]] = field(default_factory=dict)  # id -> (owner, scan)
    inserted: list[str] = field(default_factory=list)  # every scan id ever inserted
    presence: dict[tuple[str, str], PresenceRow] = field(default_factory=dict)

    def _next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def view(self, device_id: str) -> ServerView:
        return ServerView(device_id, self.devices[device_id], self.epoch, self.seq, self.horizon)

    def session_info(self, session_id: str | None) -> SessionInfo | None:
        row = self.sessions.get(session_id) if session_id is not None else None
        return row.info if row is not None and not row.deleted else None

    def live_registrants(self, session_id: str | None) -> set[str]:
        return {code for (sid, code), (deleted, _) in self.registrants.items()
                if sid == session_id and not deleted}

    def session_presence(self, session_id: str | None) -> dict[str, bool]:
        return {code: row.inside for (sid, code), row in self.presence.items()
                if sid == session_id}

    # ServerStore.snapshot_with_admissions: (cursor, session, attendees, registrants,
    # codes inside, codes gone out)
    def snapshot(self, session_id: str | None) -> tuple[int, SessionInfo | None, list[str],
                                                         list[str], list[str], list[str]]:
        session = self.session_info(session_id)
        registrants = [] if session is None else sorted(self.live_registrants(session_id))
        presence = self.session_presence(session_id) if session is not None else {}
        return (self.seq, session, sorted(self.attendees), registrants,
                sorted(c for c, inside in presence.items() if inside),
                sorted(c for c, inside in presence.items() if not inside))

    # ServerStore.changes_since: every row above *since*, in its latest state, by seq;
    # None when deletions after *since* were pruned
    def changes_since(self, session_id: str | None, since: int,
                      admissions: bool = True) -> tuple[int, list[Change]] | None:
        if since < self.horizon:
            return None
        changes = [Change(seq, "attendee", code=code, deleted=False)
                   for code, seq in self.attendees.items() if seq > since]
        changes += [Change(seq, "registrant", code=code, deleted=deleted)
                    for (sid, code), (deleted, seq) in self.registrants.items()
                    if sid == session_id and seq > since]
        row = self.sessions.get(session_id) if session_id is not None else None
        if row is not None and row.seq > since:
            changes.append(Change(row.seq, "session", session=self.session_info(session_id)))
        if admissions:
            changes += [Change(p.seq, "admission", code=code, inside=p.inside)
                        for (sid, code), p in self.presence.items()
                        if sid == session_id and p.seq > since]
        return self.seq, sorted(changes, key=lambda c: c.seq)

    # ServerStore's presence rule (server/presence.py): the latest door time wins, a tie
    # goes to the scan received last; a new seq only when the doors must hear of it: the
    # row is new or changed, or an older scan uploaded late says otherwise (its door
    # counts the code as that scan says).
    def note_presence(self, scan: Scan) -> None:
        if scan.decision != "admitted" or scan.session_id is None:
            return
        inside = scan.direction != "out"
        if not inside and scan.reason != Reason.REGISTERED:
            return
        key = (scan.session_id, scan.code)
        row = self.presence.get(key)
        at = datetime.fromisoformat(scan.scanned_at)
        if row is not None and at < datetime.fromisoformat(row.at):
            if row.inside != inside:
                row.seq = self._next_seq()
            return
        changed = row is None or row.inside != inside
        self.presence[key] = PresenceRow(inside, scan.scanned_at,
                                         self._next_seq() if changed else row.seq)

    # ServerStore.store_scans (judged by the device's session as the link saw it at connect)
    def store_scans(self, device_id: str, session_id: str | None,
                    scans: list[Scan]) -> list[ScanResult]:
        owners = {s.scan_id: self.scans[s.scan_id][0] for s in scans if s.scan_id in self.scans}
        results = judge_scans(scans, device_id, session_id, owners)
        for scan, result in zip(scans, results, strict=True):
            owner = owners.get(scan.scan_id)
            # The answer must tell the truth, or the device drops or re-pushes wrongly.
            if result.result == ScanOutcome.ACCEPTED:
                assert owner is None and scan.session_id in (None, session_id), (scan, result)
                self.scans[scan.scan_id] = (device_id, scan)
                self.inserted.append(scan.scan_id)
                self.note_presence(scan)
            elif result.result == ScanOutcome.DUPLICATE:
                assert owner == device_id, (scan, result, owner)
            else:
                assert result.result == ScanOutcome.REFUSED and result.reason, result
                assert owner not in (None, device_id) or (
                    owner is None and scan.session_id not in (None, session_id)), (scan, result)
        return results

    # -- organizer changes (ServerStore's rules; a refused change is a no-op here) ----

    def add_attendee(self, code: str) -> bool:
        if code in self.attendees:
            return False  # a name change is not the doors' business: no new seq
        self.attendees[code] = self._next_seq()
        return True

    def put_session(self, info: SessionInfo) -> bool:
        """Create or update a session; say whether it was created (or brought back)."""
        row = self.sessions.get(info.session_id)
        if row is not None and not row.deleted and row.info == info:
            return False
        self.sessions[info.session_id] = SessionRow(info, False, self._next_seq())
        if row is not None and row.deleted:  # back: its doors hear of who is inside again
            for (sid, _), presence in sorted(self.presence.items(), key=lambda i: i[1].seq):
                if sid == info.session_id:
                    presence.seq = self._next_seq()
        return row is None or row.deleted

    def delete_session(self, session_id: str) -> bool:
        row = self.sessions.get(session_id)
        if row is None or row.deleted or self.live_registrants(session_id):
            return False  # 404, or 409 "still has registrants"
        row.deleted, row.seq = True, self._next_seq()
        return True

    def put_registrant(self, session_id: str, code: str) -> bool:
        if (self.session_info(session_id) is None or code not in self.attendees
                or code in self.live_registrants(session_id)):
            return False
        self.registrants[(session_id, code)] = (False, self._next_seq())
        return True

    def delete_registrant(self, session_id: str, code: str) -> bool:
        if self.session_info(session_id) is None or code not in self.live_registrants(session_id):
            return False
        self.registrants[(session_id, code)] = (True, self._next_seq())
        return True

    def prune_tombstones(self, upto: int) -> None:
        self.registrants = {key: (deleted, seq) for key, (deleted, seq) in self.registrants.items()
                            if not (deleted and seq <= upto)}
        self.horizon = max(self.horizon, upto)


@st.composite
def server_data(draw: st.DrawFn) -> dict:
    """Fresh data for a new server database (first start, or a history reset)."""
    attendees = sorted(draw(st.sets(st.sampled_from(CODES))))
    sessions = sorted(draw(st.sets(st.sampled_from(SESSIONS), min_size=1)))
    return {
        "start_seq": draw(st.integers(0, 25)),
        "attendees": attendees,
        "sessions": {sid: (draw(st.sampled_from(NAMES)), draw(st.booleans())) for sid in sessions},
        "registrants": {sid: sorted(draw(st.sets(st.sampled_from(attendees)))) if attendees
                        else [] for sid in sessions},
        "device_session": draw(st.sampled_from(sessions)),
    }


def build_server(epoch: str, data: dict) -> ModelServer:
    server = ModelServer(epoch, seq=data["start_seq"])
    for code in data["attendees"]:
        server.add_attendee(code)
    for sid, (name, validate) in data["sessions"].items():
        server.put_session(SessionInfo(sid, name, validate))
        for code in data["registrants"][sid]:
            server.put_registrant(sid, code)
    server.devices[DEVICE] = data["device_session"]
    return server


# -- the model device: its disk --------------------------------------------------------


@dataclass
class OutboxScan:
    scan: Scan
    state: str = WAITING
    reason: str | None = None
    #: Epochs whose server answered accepted/duplicate (harness bookkeeping).
    stored_in: set[str] = field(default_factory=set)
    #: The first final state it reached (it must never leave it).
    final: str | None = None


@dataclass
class ModelDoor:
    """The device store as the door and the daemon share it: cache + outbox."""

    session: SessionInfo | None = None
    attendees: set[str] = field(default_factory=set)
    registrants: set[str] = field(default_factory=set)
    epoch: str | None = None
    cursor: int = 0
    outbox: dict[str, OutboxScan] = field(default_factory=dict)  # in scan seq order
    #: The session's admissions: code -> inside (True) or gone out (False).
    admissions: dict[str, bool] = field(default_factory=dict)

    def cache_state(self) -> CacheState:
        return CacheState(self.session.session_id if self.session else None, self.epoch,
                          self.cursor)

    # SyncStore.apply_snapshot (write_cache + cursor and epoch)
    def apply_snapshot(self, action: ApplySnapshot) -> None:
        self.session = action.session
        self.attendees = set(action.attendees)
        self.registrants = set(action.registrants) if action.session is not None else set()
        self.epoch, self.cursor = action.epoch, action.cursor
        self.admissions = {}
        if action.session is not None:  # its own scans first, the snapshot's rows over them
            shared = action.admissions is not None or action.exits is not None
            self.reapply_own(waiting_only=shared)
            self.admissions.update(dict.fromkeys(action.admissions or (), True))
            self.admissions.update(dict.fromkeys(action.exits or (), False))

    # REAPPLY_OWN (sync/device_store.py): this door's admissions of its session, in order
    def reapply_own(self, *, waiting_only: bool) -> None:
        for entry in self.outbox.values():
            if not waiting_only or entry.state == WAITING:
                self.note_own(entry.scan)

    # the scans_presence trigger: an admission counts the moment the door records it
    def note_own(self, scan: Scan) -> None:
        if (scan.decision == "admitted" and self.session is not None
                and scan.session_id == self.session.session_id):
            self.admissions[scan.code] = scan.direction != "out"

    # SyncStore.apply_changes (the session's own change first)
    def apply_changes(self, action: ApplyChanges) -> None:
        for change in session_first(action.changes):
            if change.kind == "session":
                before, self.session = self.session, change.session
                if change.session is None:
                    self.registrants.clear()
                    self.admissions.clear()
                elif before is None or before.session_id != change.session.session_id:
                    self.admissions.clear()
                    self.reapply_own(waiting_only=False)
            elif change.kind == "admission" and self.session is not None:
                self.admissions[change.code] = change.inside
            elif change.kind == "attendee" and change.deleted:
                self.attendees.discard(change.code)
            elif change.kind == "attendee":
                self.attendees.add(change.code)
            elif change.deleted:
                self.registrants.discard(change.code)
            elif self.session is not None:  # INSERT ... SELECT session_id FROM session
                self.registrants.add(change.code)
        self.cursor = action.cursor

    # SyncStore.record_results (updates whatever state the scan is in, like the SQL)
    def record_results(self, results: list[ScanResult], epoch: str) -> None:
        for result in results:
            entry = self.outbox[result.scan_id]
            if result.stored:
                entry.state, entry.reason = STORED, None
                entry.stored_in.add(epoch)
            else:
                entry.state = QUARANTINED
                entry.reason = result.reason or "refused by the server"
            entry.final = entry.final or entry.state

    def waiting(self, after_seq: int = -1) -> list[Scan]:
        return [e.scan for e in self.outbox.values()
                if e.state == WAITING and e.scan.seq > after_seq]

    def decide(self, code: str) -> Reason:
        if self.session is None:
            return Reason.NOT_READY
        if code not in self.attendees:
            return Reason.UNKNOWN_CODE
        if self.session.validate_registrants and code not in self.registrants:
            return Reason.NOT_REGISTERED
        return Reason.REGISTERED


# -- one connection --------------------------------------------------------------------


@dataclass
class Link:
    device: DeviceEnd
    server: ServerEnd
    view: ServerView
    to_server: list[str] = field(default_factory=list)
    to_device: list[str] = field(default_factory=list)
    #: The server end's actions not carried out yet (the endpoint's pump).
    pending: list[sync.server_end.ServerAction] = field(default_factory=list)
    #: The action the pump is carrying out, with what it read (or stored) for it: the
    #: endpoint awaits the store between the two, and organizer changes land meanwhile.
    reading: tuple[sync.server_end.ServerAction, Any] | None = None
    #: Scans at or below this seq were pushed on this link (the daemon's pushed_seq).
    pushed_seq: int = 0
    #: A frame was dropped, duplicated or reordered (impossible over TCP).
    tainted: bool = False
    #: The server closed it (reassigned) but the close has not taken effect yet.
    doomed: bool = False

    @property
    def busy(self) -> bool:
        return bool(self.pending) or self.reading is not None


class ProtocolBroken(AssertionError):
    """A ProtocolError on a connection whose frames were delivered as TCP delivers them."""


# -- the state machine -----------------------------------------------------------------


class TcpSyncModel(RuleBasedStateMachine):
    """Door, daemon and server over websockets: in order, exactly once, cut at any time."""

    def __init__(self) -> None:
        super().__init__()
        self.servers: dict[str, ModelServer] = {}
        self.server: ModelServer | None = None
        self.door = ModelDoor()
        self.link: Link | None = None
        #: StoreScans a dying link's pump had already taken on: (epoch, view, action).
        self.zombies: list[tuple[str, ServerView, StoreScans]] = []
        self.backup: ModelServer | None = None
        self.scan_count = 0
        self.second_door_scans = 0
        #: The model's clock: every scan, at either door, happens one tick later.
        self.tick = 0
        self.boot = 1

    # -- plumbing --------------------------------------------------------------------

    def _next_epoch(self) -> str:
        return f"E{len(self.servers) + 1}"

    def _restart_server(self, server: ModelServer) -> None:
        """The server process restarts on another database: the link dies with it."""
        self._cut()
        self.zombies.clear()  # lost with the old process
        self.server = self.servers[server.epoch] = server

    def _connect(self) -> None:
        assert self.server is not None and self.link is None
        view = self.server.view(DEVICE)
        end = DeviceEnd(DEVICE, SOFTWARE, self.door.cache_state(), admissions=True,
                        allow_reentry=False)
        self.link = Link(end, ServerEnd(view), view)
        self._flush()

    def _cut(self, *, zombies: bool = False) -> None:
        """The connection ends: frames in flight are lost, both ends discarded."""
        link, self.link = self.link, None
        if link is not None and zombies:
            self.zombies += [(link.view.epoch, link.view, a) for a in link.pending
                             if isinstance(a, StoreScans)]

    def _flush(self) -> None:
        link = self.link
        assert link is not None
        link.to_server += link.device.data_to_send()
        link.to_device += link.server.data_to_send()
        link.pending += link.server.actions()

    def _protocol_error(self, link: Link, exc: ProtocolError) -> None:
        if not link.tainted:
            raise ProtocolBroken(f"protocol error on a faithful connection: {exc}") from exc
        self._cut()

    def _deliver_to_server(self, frame: str) -> None:
        link = self.link
        assert link is not None
        try:
            link.server.receive(frame, NOW)
        except ProtocolError as exc:
            self._protocol_error(link, exc)
            return
        self._flush()

    def _pump_one(self) -> None:
        """Half of ``DeviceLink._carry_out``: read (or store) for the next action, or answer.

        The endpoint awaits the store between the two halves, so organizer changes
        can be committed after a snapshot or changes were read and before they are
        sent: that is what ``ServerEnd``'s dirty flag is for.
        """
        link, server = self.link, self.server
        assert link is not None and server is not None and server.epoch == link.view.epoch
        session_id = link.view.session_id  # the link's device row, read at connect
        if link.reading is None:
            action = link.pending.pop(0)
            if isinstance(action, SendSnapshot):
                link.reading = action, server.snapshot(session_id)
            elif isinstance(action, SendChanges):
                found = server.changes_since(session_id, action.since,
                                             link.server.wants_admissions)
                if found is None:  # history pruned: closed (4002), a snapshot on reconnect
                    self._cut(zombies=True)
                    return
                link.reading = action, found
            elif isinstance(action, StoreScans):
                link.reading = action, self._store_scans(DEVICE, session_id, action.scans)
            else:
                assert isinstance(action, NoteStatus), action
            return
        (action, answer), link.reading = link.reading, None
        if isinstance(action, SendSnapshot):
            link.server.send_snapshot(*answer)
        elif isinstance(action, SendChanges):
            link.server.send_changes(action.since, *answer)
        else:
            link.server.send_results(action.batch, answer)
        self._flush()

    def _deliver_to_device(self, frame: str) -> None:
        """The daemon's ``_read``: receive, carry out every action, send what is queued."""
        link = self.link
        assert link is not None
        try:
            link.device.receive(frame)
        except ProtocolError as exc:
            self._protocol_error(link, exc)
            return
        for action in link.device.actions():
            self._carry_out_on_device(action, link)
        self._flush()

    def _carry_out_on_device(self, action: sync.device_end.DeviceAction, link: Link) -> None:
        if isinstance(action, ApplySnapshot):
            self.door.apply_snapshot(action)
        elif isinstance(action, ApplyChanges):
            self.door.apply_changes(action)
        elif isinstance(action, RecordResults):
            self.door.record_results(action.results, link.view.epoch)
        else:
            assert isinstance(action, Welcomed), action

    def _can_push(self) -> bool:
        link = self.link
        return (link is not None and link.device.state is not DeviceState.AWAIT_WELCOME
                and link.device.batches_in_flight < MAX_BATCHES_IN_FLIGHT
                and bool(self.door.waiting(link.pushed_seq)))

    def _push(self, limit: int) -> None:
        """The daemon's ``_push``: the next waiting scans not pushed on this link yet."""
        link = self.link
        assert link is not None
        scans = self.door.waiting(link.pushed_seq)[:limit]
        link.device.send_scans(scans)
        link.pushed_seq = scans[-1].seq
        self._flush()

    def _hub_changed(self, session_id: str | None) -> None:
        """``Hub.changed``: tell the link if its session (or every session) changed."""
        link = self.link
        if link is not None and (session_id is None or link.view.session_id == session_id):
            link.server.changed()
            self._flush()

    def _run_until_quiet(self) -> None:
        """Deliver everything, pump everything, push everything, until nothing moves."""
        for _ in range(QUIET_LIMIT):
            link = self.link
            if link is None:  # the server closed it (4002: history pruned)
                return
            if link.to_server:
                self._deliver_to_server(link.to_server.pop(0))
            elif link.busy:
                self._pump_one()
            elif link.to_device:
                self._deliver_to_device(link.to_device.pop(0))
            elif self._can_push():
                self._push(500)
            else:
                return
        raise AssertionError(f"the link never went quiet in {QUIET_LIMIT} steps")

    def _store_scans(self, device_id: str, session_id: str | None,
                     scans: list[Scan]) -> list[ScanResult]:
        """``ServerStore.store_scans``, then, if presence changed, the endpoint's word to
        the hub after the commit: every link of the session hears of it (the sender too)."""
        before = self.server.seq
        results = self.server.store_scans(device_id, session_id, scans)
        if self.server.seq != before and session_id is not None:
            self._hub_changed(session_id)
        return results

    def _commit_zombies(self) -> None:
        zombies, self.zombies = self.zombies, []
        for epoch, view, action in zombies:
            if epoch == self.server.epoch:  # a reset server lost them with its process
                self._store_scans(DEVICE, view.session_id, action.scans)

    # -- rules: setup and the door -----------------------------------------------------

    @initialize(data=server_data())
    def start_server(self, data: dict) -> None:
        self._restart_server(build_server(self._next_epoch(), data))

    @rule(code=st.sampled_from((*CODES, "X9")))
    def door_scans(self, code: str) -> None:
        """The door decides on its cache and records the scan, connected or not."""
        self.scan_count += 1
        self.tick += 1
        reason = self.door.decide(code)
        scan = Scan(scan_id=f"scan-{self.scan_count}", seq=self.scan_count, code=code,
                    session_id=self.door.session.session_id if self.door.session else None,
                    decision=reason.decision, reason=reason.value,
                    scanned_at=door_time(self.tick), monotonic_ns=self.scan_count,
                    boot_id=f"boot-{self.boot}")
        self.door.outbox[scan.scan_id] = OutboxScan(scan)
        self.door.note_own(scan)

    @rule(code=st.sampled_from(CODES), out=st.booleans(), late=st.integers(0, 3))
    def second_door(self, code: str, out: bool, late: int) -> None:
        """Another door of the device's session admits *code*, or lets it out; with
        *late*, the scan was made *late* ticks ago (that door was offline) and reaches
        the server only now: the server shares it with the session's doors."""
        self._second_door(code, out, late)

    def _second_door(self, code: str, out: bool, late: int) -> None:
        server = self.server
        session_id = server.devices[DEVICE]
        self.tick += 1
        if server.session_info(session_id) is None:
            return  # no door admits anyone to a deleted session
        self.second_door_scans += 1
        n = self.second_door_scans
        scan = Scan(scan_id=f"second-{server.epoch}-{n}", seq=n, code=code,
                    session_id=session_id, decision="admitted", reason="registered",
                    scanned_at=door_time(self.tick - late), monotonic_ns=n, boot_id="boot-2",
                    direction="out" if out else None)
        server.scans[scan.scan_id] = (SECOND_DOOR, scan)
        server.inserted.append(scan.scan_id)
        server.note_presence(scan)
        self._hub_changed(session_id)

    # -- rules: the connection ---------------------------------------------------------

    @precondition(lambda self: self.link is None)
    @rule(data=st.data())
    def connect(self, data: st.DataObject) -> None:
        """The daemon (re)connects: a new link, then maybe a first burst of traffic."""
        self._connect()
        self._burst(data, 0)

    @precondition(lambda self: self.link is not None and self.link.to_server)
    @rule(pump=st.booleans())
    def deliver_to_server(self, pump: bool) -> None:
        self._deliver_to_server(self.link.to_server.pop(0))
        while pump and self.link is not None and self.link.busy:
            self._pump_one()

    @precondition(lambda self: self.link is not None and self.link.busy)
    @rule()
    def server_pump(self) -> None:
        self._pump_one()

    @precondition(lambda self: self.link is not None and self.link.to_device)
    @rule()
    def deliver_to_device(self) -> None:
        self._deliver_to_device(self.link.to_device.pop(0))

    @precondition(lambda self: self._can_push())
    @rule(limit=st.integers(1, 3))
    def push_scans(self, limit: int) -> None:
        self._push(limit)

    @precondition(lambda self: self.link is not None
                  and self.link.device.state is not DeviceState.AWAIT_WELCOME)
    @rule()
    def report_status(self) -> None:
        outbox = self.door.outbox.values()
        self.link.device.send_status(
            scans_waiting=sum(e.state == WAITING for e in outbox),
            scans_quarantined=sum(e.state == QUARANTINED for e in outbox),
            last_frame_at=T0)
        self._flush()

    @rule(data=st.data())
    def exchange(self, data: st.DataObject) -> None:
        """A burst of traffic: a few events, each drawn from what can happen next.

        With no link up, the daemon's backoff has run out: it connects first.
        """
        if self.link is None:
            self._connect()
        self._burst(data, 1)

    def _burst(self, data: st.DataObject, least: int) -> None:
        for _ in range(data.draw(st.integers(least, 12), label="events")):
            events = self._next_events()
            if not events:
                return
            self._event(data.draw(st.sampled_from(events), label="event"), data)

    def _next_events(self) -> list[str]:
        link = self.link
        if link is None:
            return []
        events = [name for name, queue in (("to_server", link.to_server), ("pump", link.busy),
                                           ("to_device", link.to_device)) if queue]
        if self._can_push():
            events.append("push")
        return [*events, "registrant change", "second door"] if events else events

    def _event(self, event: str, data: st.DataObject) -> None:
        if event == "to_server":
            self._deliver_to_server(self.link.to_server.pop(0))
        elif event == "pump":
            self._pump_one()
        elif event == "to_device":
            self._deliver_to_device(self.link.to_device.pop(0))
        elif event == "push":
            self._push(data.draw(st.integers(1, 3), label="limit"))
        elif event == "second door":
            self._second_door(data.draw(st.sampled_from(CODES), label="code"),
                              data.draw(st.booleans(), label="out"),
                              data.draw(st.integers(0, 3), label="late"))
        else:
            assert event == "registrant change", event
            self._registrant_change(data)

    @precondition(lambda self: self.link is not None)
    @rule(cause=st.sampled_from(("network cut", "server crash", "device crash")),
          zombies=st.booleans())
    def connection_lost(self, cause: str, zombies: bool) -> None:
        """The connection ends; frames in flight are lost.

        A crashed device keeps its cache and outbox (they are on disk). Unless the
        server crashed, scan batches its pump had already taken on may still be
        committed later (*zombies*: the store's writer outlives the link).
        """
        self._cut(zombies=zombies and cause != "server crash")
        if cause == "device crash":
            self.boot += 1

    @precondition(lambda self: self.link is not None and self.link.doomed)
    @rule()
    def close_takes_effect(self) -> None:
        """The 4002 close of a reassigned device's link arrives."""
        self._cut(zombies=True)

    @precondition(lambda self: bool(self.zombies))
    @rule()
    def zombie_commits(self) -> None:
        self._commit_zombies()

    # -- rules: the organizer ----------------------------------------------------------

    @rule(data=st.data())
    def registrant_changes(self, data: st.DataObject) -> None:
        """``PUT``/``DELETE /api/sessions/S/registrants/CODE`` (mostly of the device's session)."""
        self._registrant_change(data)

    def _registrant_change(self, data: st.DataObject) -> None:
        server = self.server
        session_id = data.draw(st.sampled_from((server.devices[DEVICE], *SESSIONS)),
                               label="session")
        live = sorted(server.live_registrants(session_id))
        addable = sorted(set(server.attendees) - set(live))
        if live and (not addable or data.draw(st.booleans(), label="delete")):
            done = server.delete_registrant(session_id, data.draw(st.sampled_from(live)))
        elif addable:
            done = server.put_registrant(session_id, data.draw(st.sampled_from(addable)))
        else:
            return
        if done:
            self._hub_changed(session_id)

    @rule(change=st.one_of(
        st.tuples(st.just("add_attendee"), st.sampled_from(CODES)),
        st.tuples(st.just("put_session"), st.sampled_from(SESSIONS), st.sampled_from(NAMES),
                  st.booleans()),
        st.tuples(st.just("delete_session"), st.sampled_from(SESSIONS)),
        st.tuples(st.just("reassign_device"), st.sampled_from(SESSIONS)),
    ))
    def organizer_changes(self, change: tuple) -> None:
        """One organizer API call, and the hub's push to the link it concerns (server/api.py)."""
        server = self.server
        kind, *args = change
        if kind == "add_attendee":
            if server.add_attendee(*args):
                self._hub_changed(None)
        elif kind == "put_session":
            session_id, name, validate = args
            created = server.put_session(SessionInfo(session_id, name, validate))
            if created and self.link is not None and self.link.view.session_id == session_id:
                self.link.doomed = True  # hub.disconnect_session: it reconnects for a snapshot
            self._hub_changed(session_id)
        elif kind == "delete_session":
            if server.delete_session(*args):
                self._hub_changed(*args)
        else:
            (session_id,) = args
            if server.session_info(session_id) is None:
                return  # 404
            previous, server.devices[DEVICE] = server.devices[DEVICE], session_id
            if previous != session_id and self.link is not None:
                self.link.doomed = True  # hub.disconnect(..., CLOSE_REASSIGNED): soon closed

    @rule(kind=st.sampled_from(("server history reset", "backup taken",
                                "backup restored with --new-epoch", "tombstones pruned",
                                "another device replays a scan id", "settle")),
          data=st.data())
    def rare_event(self, kind: str, data: st.DataObject) -> None:
        """Rarer things, under one rule so that they do not crowd out the traffic.

        - server history reset: the database is replaced (new epoch, fresh rows, none
          of the scans); the link dies with the old server process.
        - backup taken, backup restored with --new-epoch: the server goes back to an
          earlier copy of itself, under a new epoch (docs/provisioning.md); the scans
          stored since the backup are gone from it.
        - tombstones pruned: deletions up to some seq are forgotten, link up or not.
        - another device replays a scan id: it pushes one of this door's ids first.
        - settle: the network turns perfect for a while (see :meth:`_settle`).
        """
        server = self.server
        if kind == "server history reset":
            self._restart_server(build_server(self._next_epoch(),
                                              data.draw(server_data(), label="data")))
        elif kind == "backup taken":
            self.backup = copy.deepcopy(server)
        elif kind == "backup restored with --new-epoch":
            if self.backup is not None:
                restored = copy.deepcopy(self.backup)
                restored.epoch = self._next_epoch()
                self._restart_server(restored)
        elif kind == "tombstones pruned":
            server.prune_tombstones(data.draw(st.integers(0, server.seq), label="upto"))
        elif kind == "another device replays a scan id":
            candidates = [i for i in self.door.outbox if i not in server.scans]
            if candidates:
                scan = self.door.outbox[data.draw(st.sampled_from(candidates))].scan
                self._store_scans(OTHER_DEVICE, scan.session_id, [scan])
        else:
            self._settle()

    # -- invariants --------------------------------------------------------------------

    @invariant()
    def no_scan_stored_twice_on_one_server(self) -> None:
        for server in self.servers.values():
            twice = [i for i, n in Counter(server.inserted).items() if n > 1]
            assert not twice, f"scans stored twice on {server.epoch}: {twice}"

    @invariant()
    def outbox_states_are_sound(self) -> None:
        for scan_id, entry in self.door.outbox.items():
            assert entry.state in (WAITING, STORED, QUARANTINED), (scan_id, entry.state)
            if entry.state == QUARANTINED:
                assert entry.reason, f"{scan_id} quarantined without a reason"
            assert entry.final in (None, entry.state), (
                f"{scan_id} went from {entry.final} to {entry.state}")
            for epoch in entry.stored_in:
                owner = self.servers[epoch].scans.get(scan_id, (None,))[0]
                assert owner == DEVICE, (
                    f"{scan_id} marked stored by {epoch}, which holds it as {owner!r}'s")

    @invariant()
    def ends_agree_with_the_cache(self) -> None:
        link = self.link
        if link is not None:
            end = (link.device.epoch, link.device.cursor, link.device.session_id)
            cache = self.door.cache_state()
            assert end == (cache.epoch, cache.cursor, cache.session_id), (
                f"the device end has {end}, its cache {cache}")

    @invariant()
    def a_quiet_link_has_brought_the_cache_up_to_date(self) -> None:
        """Push, not poll: once a healthy link has nothing left to do, the cache is current."""
        link = self.link
        if (link is not None and not link.tainted and not link.doomed and not link.busy
                and not link.to_server and not link.to_device
                and link.device.state is DeviceState.READY):
            self._check_cache(live=True)

    @invariant()
    def cursor_never_ahead_of_its_server(self) -> None:
        if self.door.epoch is not None:
            seq = self.servers[self.door.epoch].seq
            assert self.door.cursor <= seq, f"cursor {self.door.cursor} ahead of seq {seq}"

    # -- convergence -------------------------------------------------------------------

    def _settle(self) -> None:
        """The network turns perfect: deliver everything, then check convergence."""
        if self.server is None:
            return
        link = self.link
        if link is not None and not link.tainted and not link.doomed:
            # The link that is up converges on its own (push, not poll), unless the
            # server closes it for a snapshot (history pruned)...
            self._run_until_quiet()
            if self.link is not None:
                self._check_converged(live=True)
        # ... and a fresh connection brings the cursor up to the server's too.
        self._cut(zombies=True)
        self._commit_zombies()
        self._connect()
        self._run_until_quiet()
        assert self.link is not None, "a fresh link was closed while settling"
        self._check_converged(live=False)

    def _check_converged(self, *, live: bool) -> None:
        self._check_cache(live=live)
        server, door = self.server, self.door
        waiting = [i for i, e in door.outbox.items() if e.state == WAITING]
        assert not waiting, f"scans left waiting: {waiting}"
        for scan_id, entry in door.outbox.items():
            if entry.state == STORED:
                here = server.scans.get(scan_id, (None,))[0] == DEVICE
                assert here or entry.stored_in - {server.epoch}, (
                    f"{scan_id} marked stored but not on {server.epoch} nor an older server")

    def _check_cache(self, *, live: bool) -> None:
        """The device's cache is the server's view of its session (and attendees)."""
        server, door = self.server, self.door
        session_id = server.devices[DEVICE]
        expected = (server.epoch, server.session_info(session_id), set(server.attendees),
                    server.live_registrants(session_id))
        got = (door.epoch, door.session, door.attendees, door.registrants)
        assert got == expected, f"device cache {got} != server {expected}"
        if expected[1] is not None:
            self._check_admissions(session_id)
        if live:  # changes of other sessions move the seq but do not wake the link
            assert door.cursor <= server.seq, (door.cursor, server.seq)
        else:
            assert door.cursor == server.seq, (door.cursor, server.seq)

    def _check_admissions(self, session_id: str) -> None:
        """The door's admissions are the server's presence of its session, but for codes
        of its own admissions the server does not hold: waiting to upload (they count at
        once) or quarantined (refused: only a snapshot forgets them)."""
        own = {e.scan.code for e in self.door.outbox.values()
               if e.state != STORED and e.scan.decision == "admitted"
               and e.scan.session_id == session_id}
        expected = {c: inside for c, inside in self.server.session_presence(session_id).items()
                    if c not in own}
        got = {c: inside for c, inside in self.door.admissions.items() if c not in own}
        assert got == expected, f"door admissions {got} != server presence {expected}"

    def teardown(self) -> None:
        if sys.exc_info()[1] is None:  # not on top of a failure already being reported
            self._settle()


class LossySyncModel(TcpSyncModel):
    """The same, over a network that also drops, duplicates and reorders frames."""

    def _next_events(self) -> list[str]:
        events = super()._next_events()
        link = self.link
        if link is not None and (link.to_server or link.to_device):
            events += ["drop", "duplicate"]
            if len(link.to_server) > 1 or len(link.to_device) > 1:
                events.append("out of order")
        return events

    def _event(self, event: str, data: st.DataObject) -> None:
        if event not in ("drop", "duplicate", "out of order"):
            super()._event(event, data)
            return
        link = self.link
        queues = [q for q in (link.to_server, link.to_device)
                  if len(q) > (event == "out of order")]
        to_server = data.draw(st.sampled_from(queues), label="queue") is link.to_server
        self._fault(event, to_server, data)

    def _fault(self, fault: str, to_server: bool, data: st.DataObject) -> None:
        link = self.link
        queue = link.to_server if to_server else link.to_device
        if fault == "drop":
            queue.pop(data.draw(st.integers(0, len(queue) - 1), label="index"))
            link.tainted = True
        elif fault == "duplicate":
            index = data.draw(st.integers(0, len(queue) - 1), label="index")
            queue.insert(data.draw(st.integers(index + 1, len(queue)), label="at"), queue[index])
            link.tainted = True
        else:  # deliver a frame that is not the next one
            frame = queue.pop(data.draw(st.integers(1, len(queue) - 1), label="index"))
            link.tainted = True
            if to_server:
                self._deliver_to_server(frame)
            else:
                self._deliver_to_device(frame)

    @precondition(lambda self: self.link is not None and (self.link.to_server
                                                          or self.link.to_device))
    @rule(fault=st.sampled_from(("drop", "duplicate")), to_server=st.booleans(),
          data=st.data())
    def network_fault(self, fault: str, to_server: bool, data: st.DataObject) -> None:
        """Drop or duplicate a frame in flight (impossible inside one TCP connection)."""
        if self._queue(to_server):
            self._fault(fault, to_server, data)

    @precondition(lambda self: self.link is not None and (len(self.link.to_server) > 1
                                                          or len(self.link.to_device) > 1))
    @rule(to_server=st.booleans(), data=st.data())
    def deliver_out_of_order(self, to_server: bool, data: st.DataObject) -> None:
        """Deliver a frame that is not the next one (reordering)."""
        if len(self._queue(to_server)) > 1:
            self._fault("out of order", to_server, data)

    def _queue(self, to_server: bool) -> list[str]:
        return self.link.to_server if to_server else self.link.to_device


@pytest.fixture
def small_messages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sync.server_end, "MAX_ITEMS_PER_MESSAGE", CHUNK)


@pytest.mark.usefixtures("small_messages")
def test_sync_over_tcp_loses_nothing_duplicates_nothing_and_converges() -> None:
    run_state_machine_as_test(TcpSyncModel, settings=SETTINGS)


@pytest.mark.usefixtures("small_messages")
def test_sync_over_a_lossy_network_fails_safe() -> None:
    run_state_machine_as_test(LossySyncModel, settings=SETTINGS)


# -- what building the model turned up ----------------------------------------------------
#
# Short, fixed sequences against the real ends (and, where it is the server's part,
# the real store or app) for the four defects building the model turned up, each
# fixed since (d0c60c6, e721364): the state machines reach them only rarely, these
# reach them every time.


def test_a_replayed_changes_frame_is_refused_or_harmless() -> None:
    """A ``changes`` frame delivered again after a newer one must not be applied."""
    end = DeviceEnd(DEVICE, SOFTWARE, CacheState(None, None, 0))
    door = ModelDoor()
    keynote = SessionInfo("S1", "Keynote", False)
    frames = [
        Welcome(device_id=DEVICE, session_id="S1", epoch="E1", cursor=3, server_time=T0,
                resync=True),
        Snapshot(epoch="E1", cursor=3, part=0, last=True, session=keynote,
                 attendees=["A1"], registrants=[]),
        Changes(epoch="E1", since=3, cursor=4, changes=[Change(4, "registrant", "A1")]),
        Changes(epoch="E1", since=4, cursor=5,
                changes=[Change(5, "registrant", "A1", deleted=True)]),
    ]
    for frame in frames:
        end.receive(encode(frame))
        apply_device_actions(end, door)
    assert (door.registrants, door.cursor) == (set(), 5)
    try:
        end.receive(encode(frames[2]))  # the same frame once more (not over one TCP link)
    except ProtocolError:
        return  # refused: the connection closes and the next one resumes from cursor 5
    apply_device_actions(end, door)
    assert (door.registrants, door.cursor) == (set(), 5), (
        "a stale changes frame was applied under the newer cursor: the cache now holds a "
        "removed registrant and no later sync will correct it")


def apply_device_actions(end: DeviceEnd, door: ModelDoor) -> None:
    for action in end.actions():
        if isinstance(action, ApplySnapshot):
            door.apply_snapshot(action)
        elif isinstance(action, ApplyChanges):
            door.apply_changes(action)


async def sync_over_perfect_link(store: ServerStore, device: Device, door: ModelDoor,
                                 server_end: ServerEnd | None = None,
                                 device_end: DeviceEnd | None = None) -> tuple[ServerEnd,
                                                                               DeviceEnd]:
    """A connection against the real store, driven until quiet the endpoint's way.

    Returns the ends of the connection that went quiet (a new one if the server
    closed the first for a snapshot).
    """
    server_end = server_end or ServerEnd(await store.view(device))
    device_end = device_end or DeviceEnd(device.device_id, SOFTWARE, door.cache_state())
    while True:
        up = device_end.data_to_send()
        for frame in up:
            server_end.receive(frame, NOW)
        actions = server_end.actions()
        for action in actions:  # DeviceLink._carry_out
            if isinstance(action, SendSnapshot):
                server_end.send_snapshot(*await store.snapshot_with_admissions(
                    device.session_id))
            elif isinstance(action, SendChanges):
                found = await store.changes_since(device.session_id, action.since,
                                                  server_end.wants_admissions)
                if found is None:  # the endpoint closes (4002): the daemon reconnects
                    return await sync_over_perfect_link(store, device, door)
                server_end.send_changes(action.since, *found)
        down = server_end.data_to_send()
        for frame in down:
            device_end.receive(frame)
            apply_device_actions(device_end, door)
        if not (up or actions or down):
            return server_end, device_end


async def test_a_late_admission_overruled_by_a_later_exit_is_told_again(
        tmp_path: Path) -> None:
    """Found by the model once a second door admitted and let out people: a door's own
    admission not yet uploaded, and a later exit at another door. Uploaded, the admission
    changes nothing at the server (the exit is later), which tells the doors again; and a
    snapshot's row stands over the door's own waiting scan (applied under it), so the
    door never counts the attendee inside, before the upload or after."""
    store, device = await server_with_registrant(tmp_path)
    try:
        await store.put_device(SECOND_DOOR, "s1")
        door = ModelDoor()
        await sync_over_perfect_link(store, device, door, device_end=DeviceEnd(
            DEVICE, SOFTWARE, door.cache_state(), admissions=True))
        own = Scan("own-1", 1, "A1", "s1", "admitted", "registered", door_time(0), 1, "boot-1")
        door.outbox[own.scan_id] = OutboxScan(own)  # made offline
        door.note_own(own)
        leaving = Scan("exit-1", 1, "A1", "s1", "admitted", "registered", door_time(5), 1,
                       "boot-2", direction="out")
        await store.store_scans(Device(SECOND_DOOR, "s1"), [leaving])
        cursor, session, attendees, registrants, inside, out = \
            await store.snapshot_with_admissions("s1")
        door.apply_snapshot(ApplySnapshot(store.epoch, cursor, session, attendees, registrants,
                                          admissions=inside, exits=out))
        # The snapshot's later exit stands over the door's own waiting admission (which,
        # replayed over it, would stand for good when the server held it already).
        assert door.admissions == {"A1": False}

        door.record_results(await store.store_scans(device, [own]), store.epoch)
        await sync_over_perfect_link(store, device, door, device_end=DeviceEnd(
            DEVICE, SOFTWARE, door.cache_state(), admissions=True))
        assert door.admissions == {"A1": False}
    finally:
        await store.close()


async def test_a_session_deleted_and_created_again_tells_its_doors_who_is_inside(
        tmp_path: Path) -> None:
    """Found by the model: a door forgets the admissions of a session that is deleted;
    created again (the same id), the session came back to the door, but who was inside
    did not (those rows had not changed since the door's cursor)."""
    store = await ServerStore.open(tmp_path)
    try:
        await store.put_session(SessionInfo("s1", "One", False))
        await store.upsert_attendees([Attendee(code, f"Name {code}") for code in CODES])
        await store.put_device(DEVICE, "s1")
        await store.put_device(SECOND_DOOR, "s1")
        device, door = Device(DEVICE, "s1"), ModelDoor()
        ends = await sync_over_perfect_link(store, device, door, device_end=DeviceEnd(
            DEVICE, SOFTWARE, door.cache_state(), admissions=True))
        await store.store_scans(Device(SECOND_DOOR, "s1"), [Scan(
            "second-1", 1, "A1", "s1", "admitted", "registered", door_time(1), 1, "boot-2")])
        for change in (None, lambda: store.delete_session("s1"),
                       lambda: store.put_session(SessionInfo("s1", "One", False))):
            if change is not None:
                await change()
            ends[0].changed()  # the hub's push
            ends = await sync_over_perfect_link(store, device, door, *ends)
            if change is None:
                assert door.admissions == {"A1": True}
        assert door.session is not None and door.admissions == {"A1": True}
    finally:
        await store.close()


async def test_changes_that_bring_a_session_back_bring_its_registrants_and_admissions(
        tmp_path: Path) -> None:
    """Found by the model: a session deleted, created again, given registrants and then
    renamed comes to a door as one changes message whose registrants (and admissions)
    precede the session in seq order (each row at its latest seq). Applied in that order
    on a door that had no session, they had nothing to belong to and were lost."""
    keynote = SessionInfo("S1", "Keynote", True)
    store = await SyncStore.open(tmp_path)
    try:
        await store.apply_snapshot(ApplySnapshot("E1", 3, None, ["A1", "A2"], [],
                                                 admissions=[], exits=[]))
        await store.apply_changes(ApplyChanges(9, [
            Change(6, "registrant", "A1"), Change(7, "admission", "A2", inside=True),
            Change(9, "session", session=keynote)]))
        facts = await store.facts("A1")
        assert facts.session_id == "S1" and facts.is_registrant
        assert (await store.facts("A2")).inside
    finally:
        await store.close()


async def server_with_registrant(data_dir: Path) -> tuple[ServerStore, Device]:
    store = await ServerStore.open(data_dir)
    await store.put_session(SessionInfo("s1", "One", True))
    await store.upsert_attendees([Attendee(code, f"Name {code}") for code in CODES])
    await store.put_registrant("s1", "A1")
    await store.put_device(DEVICE, "s1")
    return store, Device(DEVICE, "s1")


async def test_tombstones_pruned_while_a_device_is_connected(tmp_path: Path) -> None:
    """``prune_tombstones``: "devices behind it will get a snapshot" -- connected ones too."""
    store, device = await server_with_registrant(tmp_path)
    try:
        door = ModelDoor()
        server_end, device_end = await sync_over_perfect_link(store, device, door)
        assert door.registrants == {"A1"}
        await store.delete_registrant("s1", "A1")
        server_end.changed()  # the hub's push; the link's pump has not read the changes yet
        await store.prune_tombstones((await store.view(device)).cursor)
        ends = await sync_over_perfect_link(store, device, door, server_end, device_end)
        assert ends[0] is not server_end  # closed for a snapshot: the changes lack the removal
        cursor, _, _, registrants = await store.snapshot("s1")
        assert (door.cursor, door.registrants) == (cursor, set(registrants))
    finally:
        await store.close()


async def test_a_server_restored_from_a_backup_with_a_new_epoch_resyncs_its_devices(
        tmp_path: Path) -> None:
    """Restore + ``checkin server --new-epoch`` (docs/provisioning.md), at the protocol level.

    The restored server moves on past the door's cursor before the door comes
    back: without the new epoch, changes after that cursor would leave the door
    with the lost row and without the new one.
    """
    store, device = await server_with_registrant(tmp_path)
    backup = tmp_path / "backup.sqlite3"
    with sqlite3.connect(store.path) as source, sqlite3.connect(backup) as copy:
        source.backup(copy)
    await store.put_registrant("s1", "A2")  # lost with the crash
    door = ModelDoor()
    await sync_over_perfect_link(store, device, door)
    assert door.registrants == {"A1", "A2"}
    await store.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{store.path}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(backup, store.path)
    store = await ServerStore.open(tmp_path)
    try:
        await store.renew_epoch()
        await store.put_registrant("s1", "A3")  # the organizer goes on meanwhile
        await sync_over_perfect_link(store, device, door)
        cursor, _, _, registrants = await store.snapshot("s1")
        assert (door.epoch, door.cursor, door.registrants) == (store.epoch, cursor,
                                                               set(registrants))
    finally:
        await store.close()


async def _open_sync_link(app: Any, token: str) -> tuple[asyncio.Queue[dict],
                                                         asyncio.Queue[dict], asyncio.Task]:
    """A /sync websocket into *app* in this process (ASGI messages, no socket): the queue
    the test puts the device's messages on, the queue of the app's answers, and the
    endpoint's task, once the app accepted the link."""
    received: asyncio.Queue[dict] = asyncio.Queue()
    sent: asyncio.Queue[dict] = asyncio.Queue()
    scope = {"type": "websocket", "asgi": {"version": "3.0"}, "scheme": "ws",
             "http_version": "1.1", "path": "/sync", "raw_path": b"/sync", "root_path": "",
             "query_string": b"", "headers": [(b"authorization", f"Bearer {token}".encode())],
             "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000), "subprotocols": []}
    await received.put({"type": "websocket.connect"})
    link = asyncio.create_task(app(scope, received.get, sent.put))
    assert (await asyncio.wait_for(sent.get(), 10))["type"] == "websocket.accept"
    return received, sent, link


@pytest.mark.parametrize(("change", "code"), [("reassigned", CLOSE_REASSIGNED),
                                              ("revoked", CLOSE_REVOKED)])
async def test_a_device_changed_while_its_link_opens_is_closed_at_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str, code: int) -> None:
    """An organizer's call between ``sync_endpoint`` reading the device and attaching the link.

    The API's ``hub.disconnect`` finds no link to close (it is not attached yet): the
    endpoint must see the change itself, or the new link would serve the old
    session (or a revoked token) until it happened to reconnect.
    """
    app = create_app(tmp_path, "admin-token")
    store = await ServerStore.open(tmp_path)
    app.state.store, app.state.hub, app.state.admin_token = store, Hub(), "admin-token"
    api = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://server",
                            headers={"Authorization": "Bearer admin-token"})
    for session_id in ("s1", "s2"):
        await api.put(f"/api/sessions/{session_id}",
                      json={"name": session_id, "validate_registrants": False})
    token = (await api.put(f"/api/devices/{DEVICE}", json={"session_id": "s1"})).json()["token"]
    original_view = ServerStore.view

    async def view_then_changed(self: ServerStore, device: Device) -> ServerView:
        view = await original_view(self, device)
        monkeypatch.setattr(ServerStore, "view", original_view)
        if change == "reassigned":  # the organizer's call lands while the link opens
            answer = await api.put(f"/api/devices/{DEVICE}", json={"session_id": "s2"})
        else:
            answer = await api.delete(f"/api/devices/{DEVICE}")
        assert answer.is_success, answer.text
        return view

    monkeypatch.setattr(ServerStore, "view", view_then_changed)
    received, sent, link = await _open_sync_link(app, token)
    try:
        for frame in DeviceEnd(DEVICE, SOFTWARE, CacheState(None, None, 0)).data_to_send():
            await received.put({"type": "websocket.receive", "text": frame})
        answer = await asyncio.wait_for(sent.get(), 10)
        assert answer["type"] == "websocket.close", (
            f"the link serves a device that was {change} while it opened: "
            f"{parse_server_message(answer['text'])}")
        assert answer["code"] == code
        assert not app.state.hub.connected()
    finally:
        await received.put({"type": "websocket.disconnect", "code": 1000})
        await asyncio.wait_for(link, 10)
        await api.aclose()
        await store.close()


async def test_a_session_created_again_makes_its_connected_doors_resync(tmp_path: Path) -> None:
    """Found by the model: changes after a session came back bring its registrants before
    it (each row at its latest seq: the session's is last once renamed), and in several
    parts when many; a door that had dropped the deleted session had nothing to put them
    in. Its connected doors are closed (4002) and reconnect for a snapshot."""
    app = create_app(tmp_path, "admin-token")
    store = await ServerStore.open(tmp_path)
    app.state.store, app.state.hub, app.state.admin_token = store, Hub(), "admin-token"
    api = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://server",
                            headers={"Authorization": "Bearer admin-token"})
    keynote = {"name": "Keynote", "validate_registrants": True}
    await api.put("/api/sessions/s1", json=keynote)
    token = (await api.put(f"/api/devices/{DEVICE}", json={"session_id": "s1"})).json()["token"]
    received, sent, link = await _open_sync_link(app, token)
    try:
        end = DeviceEnd(DEVICE, SOFTWARE, CacheState(None, None, 0), admissions=True)
        for frame in end.data_to_send():
            await received.put({"type": "websocket.receive", "text": frame})
        assert (await asyncio.wait_for(sent.get(), 10))["type"] == "websocket.send"  # welcome
        assert (await api.delete("/api/sessions/s1")).status_code == 204
        assert (await api.put("/api/sessions/s1", json=keynote)).status_code == 201
        while (answer := await asyncio.wait_for(sent.get(), 10))["type"] == "websocket.send":
            pass  # the snapshot, the deletion
        assert (answer["type"], answer["code"]) == ("websocket.close", CLOSE_REASSIGNED)
    finally:
        await received.put({"type": "websocket.disconnect", "code": 1000})
        await asyncio.wait_for(link, 10)
        await api.aclose()
        await store.close()
