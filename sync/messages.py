"""The sync protocol's messages: JSON text frames, checked field by field.

Every message is a JSON object with a ``"type"``; :func:`parse_device_message`
(used by the server) and :func:`parse_server_message` (used by the device)
accept only the types the other end may send, check every field and raise
:class:`ProtocolError` naming the first thing that was wrong. :func:`encode`
turns a message back into text. See ``docs/protocol.md`` for the whole protocol.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

from core.codes import MAX_RECORDED_CODE, check_code
from core.rules import Reason
from core.shapes import (
    Field,
    boolean,
    check_fields,
    choice,
    identifier,
    integer,
    list_of,
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
#: Largest scans frame a device builds, in bytes: half the server's limit, so a batch
#: of the longest scans the protocol allows still fits with room to spare.
MAX_SCANS_FRAME = MAX_DEVICE_MESSAGE // 2
#: Largest difference between a device's clock and the server's taken as agreement,
#: in seconds: beyond it the daemon warns and the server flags the scans made online.
CLOCK_TOLERANCE_SECONDS = 5.0
#: Most scan batches a device may push before the server answered them (the daemon
#: keeps two in flight); more is a flood, and the server ends the connection.
MAX_PENDING_BATCHES = 4

_SEQ = integer(0, 2**63 - 1)

# Close codes: the server closes a device's websocket with one of these and a
# reason text; the daemon chooses how soon to reconnect by the code.
#: A frame broke the protocol (the reason names the rule).
CLOSE_PROTOCOL_ERROR = 1002
#: A frame was larger than the receiver's limit.
CLOSE_TOO_BIG = 1009
#: The server failed (e.g. its database); reconnect with backoff.
CLOSE_INTERNAL_ERROR = 1011
#: Unknown or revoked device token: reconnect slowly, a technician must act.
CLOSE_UNAUTHORIZED = 4001
#: Reconnect at once, a snapshot follows: the device was assigned to another session,
#: or deletions it would need were pruned.
CLOSE_REASSIGNED = 4002
#: A newer connection of the same device replaced this one.
CLOSE_REPLACED = 4003
#: The device sent more than the server takes at once (too many unanswered batches),
#: or did not say hello in time: the websocket "policy violation" code.
CLOSE_POLICY = 1008


def close_reason(reason: str) -> str:
    """*reason*, cut to fit a close frame (at most 123 bytes of UTF-8)."""
    encoded = reason.encode("utf-8", "replace")
    if len(encoded) <= 123:
        return reason
    return encoded[:120].decode("utf-8", "ignore") + "..."


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


def _table(fields_: dict[str, Field], cls: type) -> Any:
    """A check for a nested JSON object, building *cls* from it."""

    def check(value: Any) -> Any:
        if not isinstance(value, dict):
            raise ValueError("an object")
        checked, problems = check_fields(value, fields_)
        if problems:
            raise ValueError(problems[0])
        return cls(**checked)

    return check


# -- nested values -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """A session's settings as the door needs them."""

    session_id: str
    name: str
    validate_registrants: bool
    starts_at: str | None = None
    ends_at: str | None = None


_SESSION = _table(
    {
        "session_id": (identifier, True),
        "name": (text(200), True),
        "validate_registrants": (boolean, True),
        "starts_at": (optional(timestamp), False),
        "ends_at": (optional(timestamp), False),
    },
    SessionInfo,
)


@dataclass(frozen=True, slots=True)
class Change:
    """One change to the device's cache, with the server's sequence number.

    ``kind`` is ``"attendee"`` or ``"registrant"`` (with ``code`` and
    ``deleted``, a tombstone when true) or ``"session"`` (with ``session``,
    ``None`` when the device's session was deleted or it has none).
    """

    seq: int
    kind: str
    code: str | None = None
    deleted: bool = False
    session: SessionInfo | None = None


def _change(value: Any) -> Change:
    if not isinstance(value, dict):
        raise ValueError("an object")
    kind = value.get("kind")
    if kind == "session":
        spec = {"seq": (_SEQ, True), "kind": (choice("session"), True),
                "session": (optional(_SESSION), True)}
    else:
        spec = {"seq": (_SEQ, True), "kind": (choice("attendee", "registrant"), True),
                "code": (attendee_code, True), "deleted": (boolean, True)}
    checked, problems = check_fields(value, spec)
    if problems:
        raise ValueError(problems[0])
    return Change(**checked)


@dataclass(frozen=True, slots=True)
class Scan:
    """One scan as the door recorded it (the device's facts, never re-decided)."""

    scan_id: str
    seq: int
    code: str
    session_id: str | None
    decision: str
    reason: str
    scanned_at: str
    monotonic_ns: int
    boot_id: str


_SCAN_FIELDS: dict[str, Field] = {
    "scan_id": (identifier, True),
    "seq": (_SEQ, True),
    "code": (text(MAX_RECORDED_CODE), True),
    "session_id": (optional(identifier), True),
    "decision": (choice("admitted", "rejected"), True),
    "reason": (choice(*Reason), True),
    "scanned_at": (timestamp, True),
    "monotonic_ns": (_SEQ, True),
    "boot_id": (text(64), True),
}


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
    checked, problems = check_fields(value, _SCAN_FIELDS)
    if problems:
        return BadScan(scan_id, "; ".join(problems))
    return Scan(**checked)


#: What the server made of one scan.
ACCEPTED, DUPLICATE, REFUSED = "accepted", "duplicate", "refused"


#: Longest reason a scan result carries, in characters.
MAX_RESULT_REASON = 500


@dataclass(frozen=True, slots=True)
class ScanResult:
    scan_id: str
    result: str
    reason: str | None = None

    @classmethod
    def refused(cls, scan_id: str, reason: str) -> ScanResult:
        """A refusal, its reason cut to what the protocol carries."""
        if len(reason) > MAX_RESULT_REASON:
            reason = reason[:MAX_RESULT_REASON - 3] + "..."
        return cls(scan_id, REFUSED, reason)

    @property
    def stored(self) -> bool:
        """The server holds this scan (now or from an earlier push)."""
        return self.result in (ACCEPTED, DUPLICATE)


_SCAN_RESULT = _table(
    {
        "scan_id": (identifier, True),
        "result": (choice(ACCEPTED, DUPLICATE, REFUSED), True),
        "reason": (optional(text(MAX_RESULT_REASON)), False),
    },
    ScanResult,
)


# -- messages ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Message:
    type: ClassVar[str]
    spec: ClassVar[dict[str, Field]]


@dataclass(frozen=True, slots=True)
class Hello(Message):
    """Device -> server, first: who I am and what my cache holds."""

    type: ClassVar[str] = "hello"
    spec: ClassVar[dict[str, Field]] = {
        "v": (integer(1, 1000), True),
        "device_id": (identifier, True),
        "software": (text(100), True),
        "session_id": (optional(identifier), True),
        "epoch": (optional(identifier), True),
        "cursor": (_SEQ, True),
        "boot_id": (optional(text(64)), False),
        "monotonic_ns": (optional(_SEQ), False),
    }
    device_id: str
    software: str
    session_id: str | None
    epoch: str | None
    cursor: int
    v: int = PROTOCOL_VERSION
    #: The device's boot and monotonic clock as it says hello: with the server's time of
    #: the hello, they tell the server when each later scan of this boot was made by the
    #: server's clock, whatever the device's wall clock says.
    boot_id: str | None = None
    monotonic_ns: int | None = None


@dataclass(frozen=True, slots=True)
class Welcome(Message):
    """Server -> device, first: who the server thinks you are, and its clock."""

    type: ClassVar[str] = "welcome"
    spec: ClassVar[dict[str, Field]] = {
        "v": (integer(1, 1000), True),
        "device_id": (identifier, True),
        "session_id": (optional(identifier), True),
        "epoch": (identifier, True),
        "cursor": (_SEQ, True),
        "server_time": (timestamp, True),
        "resync": (boolean, True),
    }
    device_id: str
    session_id: str | None
    epoch: str
    cursor: int
    server_time: str
    resync: bool
    v: int = PROTOCOL_VERSION


@dataclass(frozen=True, slots=True)
class Snapshot(Message):
    """Server -> device: one part of a full copy of the device's cache."""

    type: ClassVar[str] = "snapshot"
    spec: ClassVar[dict[str, Field]] = {
        "epoch": (identifier, True),
        "cursor": (_SEQ, True),
        "part": (integer(0, 1_000_000), True),
        "last": (boolean, True),
        "session": (optional(_SESSION), True),
        "attendees": (list_of(attendee_code, MAX_ITEMS_PER_MESSAGE), True),
        "registrants": (list_of(attendee_code, MAX_ITEMS_PER_MESSAGE), True),
    }
    epoch: str
    cursor: int
    part: int
    last: bool
    session: SessionInfo | None
    attendees: list[str] = field(default_factory=list)
    registrants: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Changes(Message):
    """Server -> device: the changes after cursor *since*, up to *cursor*."""

    type: ClassVar[str] = "changes"
    spec: ClassVar[dict[str, Field]] = {
        "epoch": (identifier, True),
        "since": (_SEQ, True),
        "cursor": (_SEQ, True),
        "changes": (list_of(_change, MAX_ITEMS_PER_MESSAGE), True),
    }
    epoch: str
    since: int
    cursor: int
    changes: list[Change] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Scans(Message):
    """Device -> server: a batch of recorded scans."""

    type: ClassVar[str] = "scans"
    spec: ClassVar[dict[str, Field]] = {
        "batch": (_SEQ, True),
        "scans": (list_of(_scan, MAX_SCANS_PER_BATCH), True),
    }
    batch: int
    scans: list[Scan | BadScan]


@dataclass(frozen=True, slots=True)
class ScanResults(Message):
    """Server -> device: what became of every scan of one batch."""

    type: ClassVar[str] = "scan_results"
    spec: ClassVar[dict[str, Field]] = {
        "batch": (_SEQ, True),
        "results": (list_of(_SCAN_RESULT, MAX_SCANS_PER_BATCH), True),
    }
    batch: int
    results: list[ScanResult]


@dataclass(frozen=True, slots=True)
class Status(Message):
    """Device -> server, periodically: how the door is doing."""

    type: ClassVar[str] = "status"
    spec: ClassVar[dict[str, Field]] = {
        "software": (text(100), True),
        "cursor": (_SEQ, True),
        "scans_waiting": (_SEQ, True),
        "scans_quarantined": (_SEQ, True),
        "last_frame_at": (optional(timestamp), True),
    }
    software: str
    cursor: int
    scans_waiting: int
    scans_quarantined: int
    last_frame_at: str | None


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
    checked, problems = check_fields(obj, cls.spec)
    if problems:
        raise ProtocolError(f"{kind}: {problems[0]}")
    return cls(**checked)


def encode(message: Message) -> str:
    """The JSON text of *message*.

    A field that is not required and is ``None`` is left out: a message without
    the fields later versions added reads exactly as it did before them.
    """
    body = {"type": message.type}
    for f in fields(message):
        value = getattr(message, f.name)
        if value is not None or message.spec[f.name][1]:
            body[f.name] = _plain(value)
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def fit_batch(scans: list[Scan], limit: int = MAX_SCANS_FRAME) -> list[Scan]:
    """The first of *scans* whose ``scans`` frame is at most *limit* bytes (at least one).

    A scan's fields are bounded (its code to :data:`MAX_RECORDED_CODE` characters), so
    one scan always fits; many long ones would not, whatever their count.
    """
    size = len(encode(Scans(batch=2**63 - 1, scans=[])).encode())
    for index, scan in enumerate(scans):
        size += len(json.dumps(asdict(scan), separators=(",", ":"), ensure_ascii=False)
                    .encode()) + 1
        if size > limit and index > 0:
            return scans[:index]
    return scans


def _plain(value: Any) -> Any:
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, Change):  # each kind has its own fields
        if value.kind == "session":
            return {"seq": value.seq, "kind": value.kind, "session": _plain(value.session)}
        return {"seq": value.seq, "kind": value.kind, "code": value.code,
                "deleted": value.deleted}
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    return value
