"""The sync protocol's messages: JSON text frames, checked field by field.

Every message is a JSON object with a ``"type"``; :func:`parse_device_message`
(used by the server) and :func:`parse_server_message` (used by the device)
accept only the types the other end may send, check every field and raise
:class:`ProtocolError` naming the first thing that was wrong. :func:`encode`
turns a message back into text. See ``docs/protocol.md`` for the whole protocol.
"""

from __future__ import annotations

import enum
import hashlib
import json
import re
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from core.codes import MAX_RECORDED_CODE, check_code
from core.rules import Decision, Direction, Reason
from core.shapes import (
    Field,
    boolean,
    check_fields,
    checked,
    choice,
    fields_of,
    identifier,
    integer,
    list_of,
    member,
    number,
    optional,
    show,
    text,
    timestamp,
)

#: The protocol version this code speaks (sent in hello and welcome).
PROTOCOL_VERSION = 1
#: Largest frame the server accepts from a device, in bytes.
MAX_DEVICE_MESSAGE = 1 << 20
#: Largest frame the device accepts from the server, in bytes.
MAX_SERVER_MESSAGE = 8 << 20
#: Most scans in one batch (a full batch is well under MAX_DEVICE_MESSAGE).
MAX_SCANS_PER_BATCH = 1000
#: Most codes in one snapshot part or one changes message.
MAX_ITEMS_PER_MESSAGE = 20_000
#: Largest session capacity a session may have.
MAX_CAPACITY = 10_000_000
#: Largest scans frame a device builds, in bytes: half the server's limit, so a batch
#: of the longest scans the protocol allows still fits with room to spare.
MAX_SCANS_FRAME = MAX_DEVICE_MESSAGE // 2
#: Largest difference between a device's clock and the server's taken as agreement,
#: in seconds: beyond it the daemon warns and the server flags the scans made online.
CLOCK_TOLERANCE_SECONDS = 5.0
#: Most scan batches a device may push before the server answered them (the daemon
#: keeps two in flight); more is a flood, and the server ends the connection.
MAX_PENDING_BATCHES = 4
#: Where a scan's ``scanned_at`` came from: the synchronised system clock, the server's
#: time carried forward on the monotonic clock since the last exchange of this boot, or
#: neither (the wall clock as it was, possibly days off; the server re-times such scans).
TIME_SOURCES = ("system", "server", "unknown")
#: Bytes of the per-event code key (``Welcome.code_key`` carries them as hex).
CODE_KEY_BYTES = 32
#: Hex digits of a key id (``Hello.key_id``, :func:`code_key_id`).
KEY_ID_HEX = 16

_SEQ = integer(0, 2**63 - 1)

# Close codes: the server closes a device's websocket with one of these and a
# reason text; the daemon chooses how soon to reconnect by the code.
#: A frame broke the protocol (the reason names the rule).
CLOSE_PROTOCOL_ERROR = 1002
#: The server failed (e.g. its database); reconnect with backoff.
CLOSE_INTERNAL_ERROR = 1011
#: Unknown or revoked device token: reconnect slowly, a technician must act.
CLOSE_UNAUTHORIZED = 4001
#: Reconnect at once, a snapshot follows: the device was assigned to another session,
#: or deletions it would need were pruned.
CLOSE_REASSIGNED = 4002
#: A newer connection of the same device replaced this one.
CLOSE_REPLACED = 4003
#: The device's token was revoked (an unknown token stays 4001, so a typo never wipes
#: a door): the daemon wipes its cached codes and key, keeps its scans for recovery.
CLOSE_REVOKED = 4004
#: The close reason sent with :data:`CLOSE_REVOKED`.
REVOKED_REASON = "device revoked"
#: The device sent more than the server takes at once (too many unanswered batches),
#: or did not say hello in time: the websocket "policy violation" code.
CLOSE_POLICY = 1008


def close_reason(reason: str) -> str:
    """*reason*, cut to fit a close frame (at most 123 bytes of UTF-8)."""
    encoded = reason.encode("utf-8", "replace")
    if len(encoded) <= 123:
        return reason
    return encoded[:120].decode("utf-8", "ignore") + "..."


def code_key_id(key: bytes) -> str:
    """The id of a code key (``Hello.key_id``): the first 16 hex digits of its SHA-256.

    It names the key without giving it away, so a hello may carry it in the clear.
    """
    return hashlib.sha256(key).hexdigest()[:KEY_ID_HEX]


def _hex(digits: int) -> Any:
    """A check for exactly *digits* lowercase hexadecimal digits."""
    pattern = re.compile(f"[0-9a-f]{{{digits}}}")

    def check(value: Any) -> str:
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise ValueError(f"{digits} lowercase hexadecimal digits")
        return value

    return check


class ProtocolError(Exception):
    """A message broke the protocol; the message says which rule."""

    #: The close code the receiving end closes the connection with.
    close_code = CLOSE_PROTOCOL_ERROR


class Flooding(ProtocolError):
    """The peer sent more than the receiver takes at once."""

    close_code = CLOSE_POLICY


def attendee_code(value: Any) -> str:
    """Check an attendee code with the door's own rule (:func:`check_code`)."""
    problem = check_code(value) if isinstance(value, str) else "not a string"
    if problem:
        raise ValueError(f"an attendee code ({problem})")
    return value


def _object(cls: type) -> Any:
    """A check for a nested JSON object, building the dataclass *cls* from it."""
    table = fields_of(cls)

    def check(value: Any) -> Any:
        if not isinstance(value, dict):
            raise ValueError("an object")
        values, problems = check_fields(value, table)
        if problems:
            raise ValueError(problems[0])
        return cls(**values)

    return check


# -- nested values -------------------------------------------------------------
#
# Every field carries its check (core.shapes.checked); the tables the parser
# applies are derived from the dataclasses (core.shapes.fields_of).


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """A session's settings as the door needs them."""

    session_id: str = field(metadata=checked(identifier))
    name: str = field(metadata=checked(text(200)))
    validate_registrants: bool = field(metadata=checked(boolean))
    starts_at: str | None = field(default=None, metadata=checked(optional(timestamp)))
    ends_at: str | None = field(default=None, metadata=checked(optional(timestamp)))
    #: Most people inside at once; left out when the session has no limit.
    capacity: int | None = field(default=None,
                                 metadata=checked(optional(integer(0, MAX_CAPACITY))))


_SESSION = _object(SessionInfo)


#: The kinds of change, each with the fields it carries (besides ``seq`` and ``kind``).
CHANGE_KINDS: dict[str, tuple[str, ...]] = {
    "attendee": ("code", "deleted"),
    "registrant": ("code", "deleted"),
    "session": ("session",),
    "admission": ("code", "inside"),
}


@dataclass(frozen=True, slots=True)
class Change:
    """One change to the device's cache, with the server's sequence number.

    ``kind`` is ``"attendee"`` or ``"registrant"`` (with ``code`` and
    ``deleted``, a tombstone when true), ``"session"`` (with ``session``,
    ``None`` when the device's session was deleted or it has none) or
    ``"admission"`` (with ``code`` and ``inside``: an attendee some door of the
    session admitted, and whether they are inside now or left through an exit).
    A change carries only its kind's fields (:func:`_change_fields`), every one
    required. Admissions go only to devices that said in their hello that they
    apply them (``Hello.admissions``).
    """

    seq: int = field(metadata=checked(_SEQ))
    kind: str = field(metadata=checked(choice(*CHANGE_KINDS)))
    code: str | None = field(default=None, metadata=checked(attendee_code))
    deleted: bool = field(default=False, metadata=checked(boolean))
    session: SessionInfo | None = field(default=None, metadata=checked(optional(_SESSION)))
    inside: bool = field(default=False, metadata=checked(boolean))


def _change_table(names: tuple[str, ...]) -> dict[str, Field]:
    every = fields_of(Change)
    return {"seq": every["seq"], "kind": every["kind"]} | {
        name: (every[name][0], True) for name in names}


_CHANGE_TABLES = {kind: _change_table(names) for kind, names in CHANGE_KINDS.items()}


def _change_fields(kind: Any) -> dict[str, Field]:
    """The fields a change of *kind* carries, each required (for an unknown kind, a
    code change's: its kind check then names the kinds expected)."""
    return _CHANGE_TABLES.get(kind, _CHANGE_TABLES["attendee"]) if isinstance(
        kind, str) else _CHANGE_TABLES["attendee"]


def _change(value: Any) -> Change:
    if not isinstance(value, dict):
        raise ValueError("an object")
    values, problems = check_fields(value, _change_fields(value.get("kind")))
    if problems:
        raise ValueError(problems[0])
    return Change(**values)


@dataclass(frozen=True, slots=True)
class Scan:
    """One scan as the door recorded it (the device's facts, never re-decided)."""

    scan_id: str = field(metadata=checked(identifier))
    seq: int = field(metadata=checked(_SEQ))
    code: str = field(metadata=checked(text(MAX_RECORDED_CODE)))
    session_id: str | None = field(metadata=checked(optional(identifier)))
    decision: str = field(metadata=checked(choice(*Decision)))
    reason: str = field(metadata=checked(choice(*Reason)))
    scanned_at: str = field(metadata=checked(timestamp))
    monotonic_ns: int = field(metadata=checked(_SEQ))
    boot_id: str = field(metadata=checked(text(64)))
    #: ``"out"`` for a scan at an exit door; left out for an entrance (``"in"``).
    direction: str | None = field(default=None, metadata=checked(optional(choice(*Direction))))
    #: For a staff override (reason ``override``): the rejected scan it overrules.
    override_of: str | None = field(default=None, metadata=checked(optional(identifier)))
    #: Where ``scanned_at`` came from (:data:`TIME_SOURCES`); ``"system"`` is kept as
    #: ``None`` and left out of the frame, so an older server reads such scans as before.
    time_source: str | None = field(default=None,
                                    metadata=checked(optional(choice(*TIME_SOURCES))))

    def __post_init__(self) -> None:
        if self.time_source == "system":  # one spelling of the default: left out
            object.__setattr__(self, "time_source", None)

    @property
    def source(self) -> str:
        """Where ``scanned_at`` came from, ``"system"`` when the frame left it out."""
        return self.time_source or "system"


@dataclass(frozen=True, slots=True)
class BadScan:
    """A scan in a batch that breaks a rule of its own: the server refuses it alone.

    Only its id needs to be readable (the answer names it); the rest of its batch
    is stored as usual, so one bad scan never holds up the scans behind it.
    """

    scan_id: str
    problem: str


def _scan(value: Any) -> Scan | BadScan:
    if not isinstance(value, dict):
        raise ValueError("an object")
    try:
        scan_id = identifier(value.get("scan_id"))
    except ValueError as exc:  # nothing to name it by in an answer: the frame is bad
        raise ValueError(f"scan_id = {show(value.get('scan_id'))}: expected {exc}") from None
    values, problems = check_fields(value, fields_of(Scan))
    if problems:
        return BadScan(scan_id, "; ".join(problems))
    return Scan(**values)


class ScanOutcome(enum.StrEnum):
    """What the server made of one scan (the ``result`` of a scan result)."""

    #: Stored now.
    ACCEPTED = "accepted"
    #: This device pushed it before (a retry after a lost answer): stored.
    DUPLICATE = "duplicate"
    #: Not stored; the reason says why.
    REFUSED = "refused"


#: Longest reason a scan result carries, in characters.
MAX_RESULT_REASON = 500


@dataclass(frozen=True, slots=True)
class ScanResult:
    scan_id: str = field(metadata=checked(identifier))
    result: ScanOutcome = field(metadata=checked(member(ScanOutcome)))
    reason: str | None = field(default=None,
                               metadata=checked(optional(text(MAX_RESULT_REASON))))

    @classmethod
    def refused(cls, scan_id: str, reason: str) -> ScanResult:
        """A refusal, its reason cut to what the protocol carries."""
        if len(reason) > MAX_RESULT_REASON:
            reason = reason[:MAX_RESULT_REASON - 3] + "..."
        return cls(scan_id, ScanOutcome.REFUSED, reason)

    @property
    def stored(self) -> bool:
        """The server holds this scan (now or from an earlier push)."""
        return self.result in (ScanOutcome.ACCEPTED, ScanOutcome.DUPLICATE)


# -- messages ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Message:
    type: ClassVar[str]


def _version() -> Any:
    """The ``v`` field of hello and welcome: last in the constructor (it defaults to
    this code's version) but required in the frame, and checked and listed first."""
    return field(default=PROTOCOL_VERSION,
                 metadata=checked(integer(1, 1000), required=True, first=True))


@dataclass(frozen=True, slots=True)
class Hello(Message):
    """Device -> server, first: who I am and what my cache holds."""

    type: ClassVar[str] = "hello"
    device_id: str = field(metadata=checked(identifier))
    software: str = field(metadata=checked(text(100)))
    session_id: str | None = field(metadata=checked(optional(identifier)))
    epoch: str | None = field(metadata=checked(optional(identifier)))
    cursor: int = field(metadata=checked(_SEQ))
    v: int = _version()
    #: The device's boot and monotonic clock as it says hello: with the server's time of
    #: the hello, they tell the server when each later scan of this boot was made by the
    #: server's clock, whatever the device's wall clock says.
    boot_id: str | None = field(default=None, metadata=checked(optional(text(64))))
    monotonic_ns: int | None = field(default=None, metadata=checked(optional(_SEQ)))
    #: The device applies the admissions of its session's other doors (changes of kind
    #: ``admission``, and the snapshot's ``admissions`` and ``exits``); a device that
    #: leaves it out is sent none.
    admissions: bool | None = field(default=None, metadata=checked(optional(boolean)))
    #: The door's ``[door] allow_reentry``: the server's audit flags an admission that an
    #: earlier one at another door would have refused only where re-entry is forbidden.
    allow_reentry: bool | None = field(default=None, metadata=checked(optional(boolean)))
    #: The device keeps only keyed hashes of codes: the welcome brings it the event's
    #: code key (``Welcome.code_key``).
    hashes: bool | None = field(default=None, metadata=checked(optional(boolean)))
    #: :func:`code_key_id` of the key the device holds (``None``: none yet): a key not the
    #: server's gets a snapshot (the cache was hashed with another key).
    key_id: str | None = field(default=None, metadata=checked(optional(_hex(KEY_ID_HEX))))


@dataclass(frozen=True, slots=True)
class Welcome(Message):
    """Server -> device, first: who the server thinks you are, and its clock."""

    type: ClassVar[str] = "welcome"
    device_id: str = field(metadata=checked(identifier))
    session_id: str | None = field(metadata=checked(optional(identifier)))
    epoch: str = field(metadata=checked(identifier))
    cursor: int = field(metadata=checked(_SEQ))
    server_time: str = field(metadata=checked(timestamp))
    resync: bool = field(metadata=checked(boolean))
    v: int = _version()
    #: The event's code key, hex (sent only to a device whose hello said ``hashes: true``):
    #: the device stores HMAC-SHA256(key, code) of every code, never the code.
    code_key: str | None = field(default=None,
                                 metadata=checked(optional(_hex(2 * CODE_KEY_BYTES))))


_CODES = list_of(attendee_code, MAX_ITEMS_PER_MESSAGE)


@dataclass(frozen=True, slots=True)
class Snapshot(Message):
    """Server -> device: one part of a full copy of the device's cache."""

    type: ClassVar[str] = "snapshot"
    epoch: str = field(metadata=checked(identifier))
    cursor: int = field(metadata=checked(_SEQ))
    part: int = field(metadata=checked(integer(0, 1_000_000)))
    last: bool = field(metadata=checked(boolean))
    session: SessionInfo | None = field(metadata=checked(optional(_SESSION)))
    attendees: list[str] = field(default_factory=list,
                                 metadata=checked(_CODES, required=True))
    registrants: list[str] = field(default_factory=list,
                                   metadata=checked(_CODES, required=True))
    #: Attendees some door of the session admitted who are inside now (sent only to a
    #: device whose hello asked for admissions; ``None``: left out).
    admissions: list[str] | None = field(default=None, metadata=checked(optional(_CODES)))
    #: Attendees admitted who left through an exit door since.
    exits: list[str] | None = field(default=None, metadata=checked(optional(_CODES)))


@dataclass(frozen=True, slots=True)
class Changes(Message):
    """Server -> device: the changes after cursor *since*, up to *cursor*."""

    type: ClassVar[str] = "changes"
    epoch: str = field(metadata=checked(identifier))
    since: int = field(metadata=checked(_SEQ))
    cursor: int = field(metadata=checked(_SEQ))
    changes: list[Change] = field(
        default_factory=list,
        metadata=checked(list_of(_change, MAX_ITEMS_PER_MESSAGE), required=True))


@dataclass(frozen=True, slots=True)
class Scans(Message):
    """Device -> server: a batch of recorded scans."""

    type: ClassVar[str] = "scans"
    batch: int = field(metadata=checked(_SEQ))
    scans: list[Scan | BadScan] = field(metadata=checked(list_of(_scan, MAX_SCANS_PER_BATCH)))


@dataclass(frozen=True, slots=True)
class ScanResults(Message):
    """Server -> device: what became of every scan of one batch."""

    type: ClassVar[str] = "scan_results"
    batch: int = field(metadata=checked(_SEQ))
    results: list[ScanResult] = field(
        metadata=checked(list_of(_object(ScanResult), MAX_SCANS_PER_BATCH)))
    #: The server's time as it answered: a later anchor for the device's clock
    #: (left out by servers that predate it).
    server_time: str | None = field(default=None, metadata=checked(optional(timestamp)))


@dataclass(frozen=True, slots=True)
class Status(Message):
    """Device -> server, periodically: how the door is doing."""

    type: ClassVar[str] = "status"
    software: str = field(metadata=checked(text(100)))
    cursor: int = field(metadata=checked(_SEQ))
    scans_waiting: int = field(metadata=checked(_SEQ))
    scans_quarantined: int = field(metadata=checked(_SEQ))
    last_frame_at: str | None = field(metadata=checked(optional(timestamp)))
    #: The device's wall time as it sent this status: the server tells the organizers how
    #: far off the door's clock is (left out by devices that predate it).
    sent_at: str | None = field(default=None, metadata=checked(optional(timestamp)))
    #: Seconds between two statuses (``[server] status_seconds``): a door silent for longer
    #: than twice that is shown as silent.
    status_seconds: float | None = field(default=None,
                                         metadata=checked(optional(number(0, 86400,
                                                                          open_low=True))))


DEVICE_MESSAGES: dict[str, type[Message]] = {m.type: m for m in (Hello, Scans, Status)}
SERVER_MESSAGES: dict[str, type[Message]] = {
    m.type: m for m in (Welcome, Snapshot, Changes, ScanResults)
}


def parse_device_message(data: str | bytes) -> Message:
    """Parse a frame a device sent (on the server)."""
    return _parse(data, DEVICE_MESSAGES)


def parse_server_message(data: str | bytes) -> Message:
    """Parse a frame the server sent (on the device)."""
    return _parse(data, SERVER_MESSAGES)


def _parse(data: str | bytes, kinds: dict[str, type[Message]]) -> Message:
    if not isinstance(data, str):
        raise ProtocolError("binary frame: messages are JSON text frames")
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError) as exc:  # ValueError: also over-long integer literals
        raise ProtocolError(f"not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"a message is a JSON object, not {type(obj).__name__}")
    kind = obj.pop("type", None)
    cls = kinds.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ProtocolError(
            f"unknown message type {show(kind)} (expected one of: {', '.join(kinds)})"
        )
    values, problems = check_fields(obj, fields_of(cls))
    if problems:
        raise ProtocolError(f"{kind}: {problems[0]}")
    return cls(**values)


def encode(message: Message) -> str:
    """The JSON text of *message*.

    A field that is not required and is ``None`` is left out: a message without
    the fields later versions added reads exactly as it did before them.
    """
    body = {"type": message.type}
    table = fields_of(type(message))
    for f in fields(message):
        value = getattr(message, f.name)
        if value is not None or table[f.name][1]:
            body[f.name] = _plain(value)
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def fit_batch(scans: list[Scan], limit: int = MAX_SCANS_FRAME) -> list[Scan]:
    """The first of *scans* whose ``scans`` frame is at most *limit* bytes (at least one).

    A scan's fields are bounded (its code to :data:`MAX_RECORDED_CODE` characters), so
    one scan always fits; many long ones would not, whatever their count.
    """
    size = len(encode(Scans(batch=2**63 - 1, scans=[])).encode())
    for index, scan in enumerate(scans):
        size += len(json.dumps(_plain(scan), separators=(",", ":"), ensure_ascii=False)
                    .encode()) + 1
        if size > limit and index > 0:
            return scans[:index]
    return scans


def _plain(value: Any) -> Any:
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, Change):  # each kind has its own fields
        return {name: _plain(getattr(value, name)) for name in _change_fields(value.kind)}
    if hasattr(value, "__dataclass_fields__"):
        # As for messages: optional fields without a value are left out, so an object
        # without the fields later versions added reads as it did before them.
        table = fields_of(type(value))
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)
                if getattr(value, f.name) is not None or table[f.name][1]}
    return value
