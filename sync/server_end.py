"""The server's end of a sync connection, as a sans-I/O state machine.

:class:`ServerEnd` holds the protocol state of one device's websocket and
nothing else. The server's endpoint authenticates the device (by its token,
before this object exists), feeds it every frame with :meth:`~ServerEnd.receive`
(with the time it arrived: the end reads no clock), tells it when the device's
data changed with :meth:`~ServerEnd.changed`, carries out the
:class:`ServerAction` objects it returns (send a snapshot, send
changes, store scans, note a status) and answers them with
:meth:`~ServerEnd.send_snapshot`, :meth:`~ServerEnd.send_changes` and
:meth:`~ServerEnd.send_results`.

States::

    AWAIT_HELLO --hello--> SYNCING --snapshot or changes sent--> LIVE

In LIVE, :meth:`~ServerEnd.changed` asks for the changes since what was last
sent; changes that arrive while a fetch is under way ask for another one when
it is answered, so nothing is missed and bursts coalesce.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from sync.end import ProtocolEnd
from sync.messages import (
    MAX_ITEMS_PER_MESSAGE,
    MAX_PENDING_BATCHES,
    PROTOCOL_VERSION,
    BadScan,
    Change,
    Changes,
    Flooding,
    Hello,
    ProtocolError,
    Scan,
    ScanOutcome,
    ScanResult,
    ScanResults,
    Scans,
    SessionInfo,
    Snapshot,
    Status,
    Welcome,
    code_key_id,
    parse_device_message,
)


class ServerState(enum.Enum):
    AWAIT_HELLO = "await_hello"
    SYNCING = "syncing"
    LIVE = "live"


@dataclass(frozen=True, slots=True)
class ServerView:
    """What the server knows when a device connects.

    ``horizon``: the oldest cursor changes can still be served from
    (tombstones before it were pruned). ``code_key``: the event's code key (hex), sent
    to devices that keep hashed codes (``None``: the server has none).
    """

    device_id: str
    session_id: str | None
    epoch: str
    cursor: int
    horizon: int = 0
    code_key: str | None = None

    @property
    def key_id(self) -> str | None:
        """:func:`code_key_id` of the server's code key."""
        return None if self.code_key is None else code_key_id(bytes.fromhex(self.code_key))


@dataclass(frozen=True, slots=True)
class ClockAnchor:
    """The device's clocks when it said hello on this connection, and the server's time
    then: a later scan of the same boot was made at ``server_time`` plus the monotonic
    time elapsed, by the server's clock."""

    boot_id: str
    monotonic_ns: int
    server_time: datetime


class ServerAction:
    """Something the endpoint must do, in the order given."""


@dataclass(frozen=True, slots=True)
class SendSnapshot(ServerAction):
    """Read the device's whole cache and call :meth:`ServerEnd.send_snapshot`."""


@dataclass(frozen=True, slots=True)
class SendChanges(ServerAction):
    """Read the changes after *since* and call :meth:`ServerEnd.send_changes`."""

    since: int


@dataclass(frozen=True, slots=True)
class StoreScans(ServerAction):
    """Store *scans* and call :meth:`ServerEnd.send_results` with their results (see
    :func:`judge_scans`) followed by *refused*: the batch's scans that broke a rule of
    their own, refused without being stored."""

    batch: int
    scans: list[Scan]
    refused: list[ScanResult] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class NoteStatus(ServerAction):
    """Record the device's status. Only the latest waiting one is kept: a device that
    sends statuses faster than they are written costs one write, not one each."""

    status: Status


def needs_snapshot(hello: Hello, view: ServerView) -> bool:
    """Whether the device must get a full snapshot rather than changes."""
    return (
        hello.epoch != view.epoch  # first sync, or the server's history was reset
        or hello.session_id != view.session_id  # reassigned since it last synced
        or hello.cursor > view.cursor  # the server lost history (restored from a backup)
        or hello.cursor < view.horizon  # tombstones it needs were pruned
        or (sends_key(hello, view) and hello.key_id != view.key_id)  # hashed with another key
    )


def sends_key(hello: Hello, view: ServerView) -> bool:
    """Whether the welcome carries the code key: the device keeps hashed codes (its hello
    says ``hashes: true``) and the server has a key."""
    return bool(hello.hashes) and view.code_key is not None


class ServerEnd(ProtocolEnd[ServerAction]):
    """Protocol state of one device's connection, seen from the server."""

    def __init__(self, view: ServerView) -> None:
        super().__init__()
        self.view = view
        self.state = ServerState.AWAIT_HELLO
        self.hello: Hello | None = None
        self.anchor: ClockAnchor | None = None
        self.sent_cursor = 0
        self._fetching = False
        self._dirty = False
        self._pending_batches: dict[int, frozenset[str]] = {}

    # -- input -----------------------------------------------------------------

    def receive(self, data: str | bytes, now: datetime) -> None:
        """Take one frame from the device, received at *now* (aware: it carries its UTC
        offset); raise :class:`ProtocolError` if it breaks a rule.

        *now* is the server's time of a hello: sent back in the welcome, and the
        time the device's clocks are anchored to (:class:`ClockAnchor`).
        """
        message = parse_device_message(data)
        if isinstance(message, Hello):
            self._hello(message, now)
        elif self.state is ServerState.AWAIT_HELLO:
            raise ProtocolError(f"{message.type} before hello")
        elif isinstance(message, Scans):
            self._scans(message)
        elif isinstance(message, Status):
            self._actions = [a for a in self._actions if not isinstance(a, NoteStatus)]
            self._actions.append(NoteStatus(message))

    def _hello(self, hello: Hello, now: datetime) -> None:
        if self.state is not ServerState.AWAIT_HELLO:
            raise ProtocolError("second hello on one connection")
        if hello.v != PROTOCOL_VERSION:
            raise ProtocolError(f"device speaks protocol {hello.v}, server {PROTOCOL_VERSION}")
        if hello.device_id != self.view.device_id:
            raise ProtocolError(
                f"hello names device {hello.device_id!r} but the token is "
                f"{self.view.device_id!r}'s"
            )
        self.hello = hello
        self.state = ServerState.SYNCING
        resync = needs_snapshot(hello, self.view)
        if hello.boot_id is not None and hello.monotonic_ns is not None:
            self.anchor = ClockAnchor(hello.boot_id, hello.monotonic_ns, now)
        self._send(Welcome(device_id=self.view.device_id, session_id=self.view.session_id,
                           epoch=self.view.epoch, cursor=self.view.cursor,
                           server_time=now.isoformat(), resync=resync,
                           code_key=self.view.code_key if sends_key(hello, self.view)
                           else None))
        self._fetching = True
        self._actions.append(SendSnapshot() if resync else SendChanges(hello.cursor))
        if not resync:
            self.sent_cursor = hello.cursor

    def _scans(self, message: Scans) -> None:
        if message.batch in self._pending_batches:
            raise ProtocolError(f"batch {message.batch} pushed twice before its results")
        if len(self._pending_batches) >= MAX_PENDING_BATCHES:
            raise Flooding(f"more than {MAX_PENDING_BATCHES} scan batches pushed before "
                           "their results")
        ids = [s.scan_id for s in message.scans]
        if len(set(ids)) != len(ids):
            raise ProtocolError(f"batch {message.batch} holds a scan id twice")
        self._pending_batches[message.batch] = frozenset(ids)
        scans = [s for s in message.scans if isinstance(s, Scan)]
        refused = [ScanResult.refused(s.scan_id, f"scan breaks the protocol: {s.problem}")
                   for s in message.scans if isinstance(s, BadScan)]
        self._actions.append(StoreScans(message.batch, scans, refused))

    @property
    def wants_admissions(self) -> bool:
        """The device's hello said it applies its session's admissions: its snapshot and
        changes carry them (presence rows, kind ``admission``); an older door's do not."""
        return self.hello is not None and bool(self.hello.admissions)

    def changed(self) -> None:
        """The device's registrants, attendees, session or admissions changed on the
        server."""
        if self.state is ServerState.LIVE and not self._fetching:
            self._fetching = True
            self._actions.append(SendChanges(self.sent_cursor))
        else:
            self._dirty = True

    # -- answers to actions ----------------------------------------------------

    def send_snapshot(self, cursor: int, session: SessionInfo | None,
                      attendees: list[str], registrants: list[str],
                      admissions: list[str] | None = None,
                      exits: list[str] | None = None) -> None:
        """Queue the device's whole cache as of *cursor*, in parts. *admissions* (codes
        inside) and *exits* (codes admitted who left) go only to a device that asked for
        them (:attr:`wants_admissions`), as lists (empty too: the snapshot replaces what
        the door knew); each list is split across the parts like the others."""
        self._expect_fetch()
        shared = self.wants_admissions
        lists = [attendees, registrants, *((admissions or [], exits or []) if shared else ())]
        step = MAX_ITEMS_PER_MESSAGE
        parts = max(1, *(-(-len(items) // step) for items in lists))
        for index in range(parts):
            part = [items[index * step:(index + 1) * step] for items in lists]
            self._send(Snapshot(epoch=self.view.epoch, cursor=cursor, part=index,
                                last=index == parts - 1, session=session,
                                attendees=part[0], registrants=part[1],
                                admissions=part[2] if shared else None,
                                exits=part[3] if shared else None))
        self._fetched(cursor)

    def send_changes(self, since: int, cursor: int, changes: Iterable[Change]) -> None:
        """Queue the changes after *since* up to *cursor* (sorted by seq)."""
        self._expect_fetch()
        if since != self.sent_cursor:
            raise ValueError(f"changes since {since}, but the device has {self.sent_cursor}")
        batch: list[Change] = []
        for change in changes:
            batch.append(change)
            if len(batch) == MAX_ITEMS_PER_MESSAGE:
                self._send(Changes(epoch=self.view.epoch, since=since, cursor=batch[-1].seq,
                                   changes=batch))
                since, batch = batch[-1].seq, []
        if batch or self.state is ServerState.SYNCING or cursor > since:
            self._send(Changes(epoch=self.view.epoch, since=since, cursor=cursor, changes=batch))
        self._fetched(cursor)

    def send_results(self, batch: int, results: list[ScanResult],
                     now: datetime | None = None) -> None:
        """Queue the answer to *batch*; *now* (the server's time, aware) goes with it as
        ``server_time``: a later anchor for the device's clock."""
        expected = self._pending_batches.get(batch)
        ids = [r.scan_id for r in results]
        if expected is None or len(ids) != len(expected) or set(ids) != expected:
            raise ValueError(f"results for batch {batch} do not match its scans")
        del self._pending_batches[batch]
        self._send(ScanResults(batch=batch, results=results,
                               server_time=None if now is None else now.isoformat()))

    def _expect_fetch(self) -> None:
        if not self._fetching:
            raise ValueError("no snapshot or changes were asked for")

    def _fetched(self, cursor: int) -> None:
        self.sent_cursor = cursor
        self.state = ServerState.LIVE
        self._fetching = False
        if self._dirty:
            self._dirty = False
            self.changed()

    # -- output ----------------------------------------------------------------

    @property
    def backlog(self) -> int:
        """Actions queued and not yet taken by :meth:`actions`."""
        return len(self._actions)


#: Why a scan whose id another device pushed first is refused (``checkin recover`` counts
#: it as stored: the dead unit had pushed it).
OTHER_DEVICE_REASON = "scan id already stored from another device"


def judge_scans(scans: list[Scan], device_id: str, session_id: str | None,
                owners: dict[str, str]) -> list[ScanResult]:
    """What the server makes of each pushed scan.

    *owners* maps the scan ids already stored to the device that pushed them.
    A scan is a duplicate if this device pushed it before, refused if another
    device did (a replayed id) or if it names a session other than the
    device's; scans the door made before it had any session (``not_ready``)
    are accepted as the facts they are.
    """
    results = []
    for scan in scans:
        owner = owners.get(scan.scan_id)
        if owner == device_id:
            results.append(ScanResult(scan.scan_id, ScanOutcome.DUPLICATE))
        elif owner is not None:
            results.append(ScanResult.refused(scan.scan_id, OTHER_DEVICE_REASON))
        elif scan.session_id is not None and scan.session_id != session_id:
            results.append(ScanResult.refused(
                scan.scan_id,
                f"scan is for session {scan.session_id!r} but device {device_id!r} is "
                f"assigned to {session_id!r}"))
        else:
            results.append(ScanResult(scan.scan_id, ScanOutcome.ACCEPTED))
    return results
