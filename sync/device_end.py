"""The device's end of a sync connection, as a sans-I/O state machine.

:class:`DeviceEnd` holds the protocol state of one websocket connection and
nothing else: the daemon feeds it every frame it receives with
:meth:`~DeviceEnd.receive`, sends what :meth:`~DeviceEnd.data_to_send`
returns, and carries out the :class:`DeviceAction` objects that
:meth:`~DeviceEnd.actions` returns (apply a snapshot, apply changes, record
scan results), in order. No sockets, no database, no clock: every rule is
tested by feeding it messages.

States::

    AWAIT_WELCOME --welcome--> SYNCING --last snapshot part / changes--> READY

Scans may be pushed from SYNCING on, so a backlog drains while a snapshot
downloads.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from sync.end import ProtocolEnd
from sync.messages import (
    PROTOCOL_VERSION,
    Change,
    Changes,
    Hello,
    ProtocolError,
    Scan,
    ScanResult,
    ScanResults,
    Scans,
    SessionInfo,
    Snapshot,
    Status,
    Welcome,
    code_key_id,
    parse_server_message,
)


class DeviceState(enum.Enum):
    AWAIT_WELCOME = "await_welcome"
    SYNCING = "syncing"
    READY = "ready"


@dataclass(frozen=True, slots=True)
class CacheState:
    """What the device's cache holds, as stored with it."""

    session_id: str | None
    epoch: str | None
    cursor: int
    #: :func:`sync.messages.code_key_id` of the code key the cache is hashed with.
    key_id: str | None = None


class DeviceAction:
    """Something the daemon must do, in the order given."""


@dataclass(frozen=True, slots=True)
class Welcomed(DeviceAction):
    welcome: Welcome


@dataclass(frozen=True, slots=True)
class ApplySnapshot(DeviceAction):
    """Replace the whole cache and store *epoch* and *cursor* with it, atomically."""

    epoch: str
    cursor: int
    session: SessionInfo | None
    attendees: list[str]
    registrants: list[str]
    #: The session's presence as the server knows it: attendees inside now, and those
    #: admitted who left since; ``None`` when the server sent none (an older server).
    admissions: list[str] | None = None
    exits: list[str] | None = None
    #: The code key to hash it all with (the welcome's); ``None``: the key held.
    code_key: bytes | None = None


@dataclass(frozen=True, slots=True)
class ApplyChanges(DeviceAction):
    """Apply *changes* in seq order and store *cursor* with them, atomically."""

    cursor: int
    changes: list[Change]


@dataclass(frozen=True, slots=True)
class RecordResults(DeviceAction):
    """Mark stored scans as stored and refused ones as quarantined (with the reason)."""

    batch: int
    results: list[ScanResult]
    #: The server's time as it answered (a later clock anchor), if it said.
    server_time: str | None = None


@dataclass
class _PartialSnapshot:
    first: Snapshot
    attendees: list[str] = field(default_factory=list)
    registrants: list[str] = field(default_factory=list)
    admissions: list[str] | None = None
    exits: list[str] | None = None
    parts: int = 0


class DeviceEnd(ProtocolEnd[DeviceAction]):
    """Protocol state of one connection, seen from the device.

    *cache* is what the device's store holds when the connection opens; the
    hello message is queued at once, with *boot_id* and *monotonic_ns* (the
    device's clocks at that moment) when given. With *admissions* the hello asks
    for the other doors' admissions (a door that applies them says so);
    *allow_reentry* is the door's policy, for the server's audit. With *hashes* the
    device keeps keyed hashes of codes: the hello names the key the cache holds
    (``cache.key_id``) and the welcome brings the server's (a snapshot follows when it
    is another).
    """

    def __init__(self, device_id: str, software: str, cache: CacheState, *,
                 boot_id: str | None = None, monotonic_ns: int | None = None,
                 admissions: bool | None = None, allow_reentry: bool | None = None,
                 hashes: bool | None = None) -> None:
        super().__init__()
        self.device_id = device_id
        self.software = software
        self.state = DeviceState.AWAIT_WELCOME
        self.epoch = cache.epoch
        self.cursor = cache.cursor
        self.session_id = cache.session_id
        self.hashes = bool(hashes)
        self.key_id = cache.key_id if hashes else None
        #: The welcome's code key, for the snapshot that follows it.
        self.code_key: bytes | None = None
        self._snapshot: _PartialSnapshot | None = None
        self._in_flight: dict[int, frozenset[str]] = {}
        self._next_batch = 1
        self._send(Hello(device_id=device_id, software=software, session_id=cache.session_id,
                         epoch=cache.epoch, cursor=cache.cursor, boot_id=boot_id,
                         monotonic_ns=monotonic_ns, admissions=admissions,
                         allow_reentry=allow_reentry, hashes=hashes, key_id=self.key_id))

    # -- input -----------------------------------------------------------------

    def receive(self, data: str | bytes) -> None:
        """Take one frame from the server; raise :class:`ProtocolError` if it breaks a rule."""
        message = parse_server_message(data)
        if isinstance(message, Welcome):
            self._welcome(message)
        elif self.state is DeviceState.AWAIT_WELCOME:
            raise ProtocolError(f"{message.type} before welcome")
        elif isinstance(message, Snapshot):
            self._snapshot_part(message)
        elif isinstance(message, Changes):
            self._changes(message)
        elif isinstance(message, ScanResults):
            self._results(message)

    def _welcome(self, welcome: Welcome) -> None:
        if self.state is not DeviceState.AWAIT_WELCOME:
            raise ProtocolError("second welcome on one connection")
        if welcome.v != PROTOCOL_VERSION:
            raise ProtocolError(
                f"server speaks protocol {welcome.v}, this device {PROTOCOL_VERSION}")
        if welcome.device_id != self.device_id:
            raise ProtocolError(
                f"welcome is for device {welcome.device_id!r}, this is {self.device_id!r}: "
                "the token belongs to another device"
            )
        if not welcome.resync and welcome.epoch != self.epoch:
            raise ProtocolError("welcome without resync from a server with another epoch")
        if welcome.code_key is not None and self.hashes:  # else not asked for: ignored
            key = bytes.fromhex(welcome.code_key)
            if not welcome.resync and code_key_id(key) != self.key_id:
                # The cache is hashed with another key: only a snapshot can replace it.
                raise ProtocolError("welcome without resync with another code key")
            self.code_key, self.key_id = key, code_key_id(key)
        self.state = DeviceState.SYNCING
        self._actions.append(Welcomed(welcome))

    def _snapshot_part(self, part: Snapshot) -> None:
        partial = self._snapshot
        if partial is None:
            if part.part != 0:
                raise ProtocolError(f"snapshot part {part.part} without part 0")
            partial = self._snapshot = _PartialSnapshot(part)
        elif part.part != partial.parts:
            raise ProtocolError(f"snapshot part {part.part} where {partial.parts} was due")
        elif (part.epoch, part.cursor, part.session) != (
            partial.first.epoch, partial.first.cursor, partial.first.session
        ):
            raise ProtocolError("snapshot parts disagree on epoch, cursor or session")
        partial.attendees.extend(part.attendees)
        partial.registrants.extend(part.registrants)
        if part.admissions is not None:  # left out of every part: an older server
            partial.admissions = partial.admissions or []
            partial.admissions.extend(part.admissions)
        if part.exits is not None:
            partial.exits = partial.exits or []
            partial.exits.extend(part.exits)
        partial.parts += 1
        if part.last:
            self._snapshot = None
            self.epoch, self.cursor = part.epoch, part.cursor
            self.session_id = part.session.session_id if part.session else None
            self.state = DeviceState.READY
            self._actions.append(ApplySnapshot(part.epoch, part.cursor, part.session,
                                               partial.attendees, partial.registrants,
                                               partial.admissions, partial.exits,
                                               self.code_key))

    def _changes(self, changes: Changes) -> None:
        if self._snapshot is not None:
            raise ProtocolError("changes in the middle of a snapshot")
        if changes.epoch != self.epoch:
            raise ProtocolError(f"changes for epoch {changes.epoch!r}, cache has {self.epoch!r}")
        if changes.since != self.cursor:
            # The server sends the changes after exactly what it last sent; anything else
            # is a gap (changes missed) or a replay (older states over newer ones).
            raise ProtocolError(f"changes since {changes.since}, but this device's cursor is "
                                f"{self.cursor}")
        if changes.cursor < changes.since:
            raise ProtocolError(f"changes cursor {changes.cursor} before since {changes.since}")
        seqs = [c.seq for c in changes.changes]
        if seqs != sorted(seqs) or any(not changes.since < s <= changes.cursor for s in seqs):
            raise ProtocolError("change seqs out of order or outside (since, cursor]")
        for change in changes.changes:
            if change.kind == "session":
                self.session_id = change.session.session_id if change.session else None
        self.state = DeviceState.READY
        if changes.cursor > self.cursor or changes.changes:
            self.cursor = changes.cursor
            self._actions.append(ApplyChanges(self.cursor, changes.changes))

    def _results(self, answer: ScanResults) -> None:
        expected = self._in_flight.pop(answer.batch, None)
        if expected is None:
            raise ProtocolError(f"scan results for batch {answer.batch}, which is not in flight")
        got = [r.scan_id for r in answer.results]
        if len(got) != len(expected) or set(got) != expected:
            raise ProtocolError(f"scan results for batch {answer.batch} do not match its scans")
        self._actions.append(RecordResults(answer.batch, answer.results, answer.server_time))

    # -- output ----------------------------------------------------------------

    def send_scans(self, scans: list[Scan]) -> int:
        """Queue a batch of scans; return its batch number."""
        if self.state is DeviceState.AWAIT_WELCOME:
            raise ProtocolError("cannot push scans before welcome")
        if not scans:
            raise ValueError("empty batch")
        batch = self._next_batch
        self._next_batch += 1
        self._in_flight[batch] = frozenset(s.scan_id for s in scans)
        self._send(Scans(batch=batch, scans=scans))
        return batch

    @property
    def batches_in_flight(self) -> int:
        return len(self._in_flight)

    @property
    def scans_in_flight(self) -> frozenset[str]:
        """Scan ids pushed on this connection and not answered yet."""
        return frozenset().union(*self._in_flight.values())

    def send_status(self, *, scans_waiting: int, scans_quarantined: int,
                    last_frame_at: str | None, sent_at: str | None = None,
                    status_seconds: float | None = None) -> None:
        if self.state is DeviceState.AWAIT_WELCOME:
            return  # status is only meaningful once the server knows us
        self._send(Status(software=self.software, cursor=self.cursor, scans_waiting=scans_waiting,
                          scans_quarantined=scans_quarantined, last_frame_at=last_frame_at,
                          sent_at=sent_at, status_seconds=status_seconds))
