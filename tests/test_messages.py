"""Sync protocol messages: round trips, every malformed case, and fuzzing of both parsers."""

from __future__ import annotations

import json
import re
import sys
from datetime import timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.codes import MAX_RECORDED_CODE, printable
from core.rules import Reason
from core.shapes import fields_of
from sync.messages import (
    CLOSE_REVOKED,
    CLOSE_UNAUTHORIZED,
    DEVICE_MESSAGES,
    MAX_DEVICE_MESSAGE,
    MAX_ITEMS_PER_MESSAGE,
    MAX_SCANS_PER_BATCH,
    PROTOCOL_VERSION,
    REVOKED_REASON,
    SERVER_MESSAGES,
    BadScan,
    Change,
    Changes,
    Hello,
    Message,
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
    close_reason,
    code_key_id,
    encode,
    fit_batch,
    parse_device_message,
    parse_server_message,
)

T0 = "2026-11-28T10:00:00+01:00"
KEY = bytes(range(32))
KEY_HEX = KEY.hex()
KEY_ID = code_key_id(KEY)
SESSION = SessionInfo("keynote-1", "Opening keynote", True, T0, "2026-11-28T11:00:00+01:00")


def make_scan(scan_id: str = "scan-1", **overrides: Any) -> Scan:
    values: dict[str, Any] = {
        "scan_id": scan_id,
        "seq": 1,
        "code": "ATT-0001",
        "session_id": "keynote-1",
        "decision": "admitted",
        "reason": "registered",
        "scanned_at": T0,
        "monotonic_ns": 123_456_789,
        "boot_id": "3f1c0a2e-boot",
    }
    values.update(overrides)
    return Scan(**values)


def body(message: Message, **overrides: Any) -> dict[str, Any]:
    """The JSON object of *message*, with fields replaced (or removed when given ...)."""
    obj = json.loads(encode(message))
    for key, value in overrides.items():
        if value is ...:
            del obj[key]
        else:
            obj[key] = value
    return obj


def frame(obj: Any) -> str:
    return json.dumps(obj)


HELLO = Hello(device_id="door-1", software="checkin 0.1.0", session_id="keynote-1",
              epoch="E1", cursor=42)
WELCOME = Welcome(device_id="door-1", session_id="keynote-1", epoch="E1", cursor=50,
                  server_time=T0, resync=False)
SNAPSHOT = Snapshot(epoch="E1", cursor=50, part=0, last=True, session=SESSION,
                    attendees=["ATT-0001", "ATT-0002"], registrants=["ATT-0001"])
CHANGES = Changes(epoch="E1", since=42, cursor=50, changes=[
    Change(seq=43, kind="attendee", code="ATT-0003"),
    Change(seq=44, kind="registrant", code="ATT-0003", deleted=True),
])
SCANS = Scans(batch=1, scans=[make_scan()])
RESULTS = ScanResults(batch=1, results=[ScanResult("scan-1", ScanOutcome.ACCEPTED)])
STATUS = Status(software="checkin 0.1.0", cursor=50, scans_waiting=3, scans_quarantined=0,
                last_frame_at=T0)

DEVICE_SAMPLES: list[Message] = [
    HELLO,
    Hello(device_id="d", software="", session_id=None, epoch=None, cursor=0),
    SCANS,
    Scans(batch=2**63 - 1, scans=[
        make_scan("s-a", session_id=None, decision="rejected", reason="not_ready"),
        make_scan("s-b", code="not a code \u00e9", decision="rejected", reason="invalid_code"),
        make_scan("s-c", scanned_at="2026-11-28T09:00:00Z", reason="reentry"),
    ]),
    Scans(batch=0, scans=[]),
    Scans(batch=3, scans=[make_scan("t-a", time_source="unknown"),
                          make_scan("t-b", time_source="server")]),
    Hello(device_id="d", software="", session_id=None, epoch=None, cursor=0, hashes=True,
          key_id=KEY_ID, boot_id="b", monotonic_ns=5),
    Hello(device_id="d", software="", session_id=None, epoch=None, cursor=0, hashes=True),
    STATUS,
    Status(software="x", cursor=0, scans_waiting=0, scans_quarantined=7, last_frame_at=None),
]

SERVER_SAMPLES: list[Message] = [
    WELCOME,
    Welcome(device_id="door-1", session_id=None, epoch="E2", cursor=0, server_time=T0,
            resync=True),
    Welcome(device_id="door-1", session_id=None, epoch="E2", cursor=0, server_time=T0,
            resync=True, code_key=KEY_HEX),
    SNAPSHOT,
    Snapshot(epoch="E1", cursor=0, part=3, last=False, session=None),
    Snapshot(epoch="E1", cursor=9, part=0, last=True,
             session=SessionInfo("s", "", False), attendees=["a"], registrants=[]),
    CHANGES,
    Changes(epoch="E1", since=0, cursor=0),
    Changes(epoch="E1", since=1, cursor=9, changes=[
        Change(seq=2, kind="attendee", code="A", deleted=True),
        Change(seq=3, kind="registrant", code="B"),
        Change(seq=4, kind="session", session=SESSION),
        Change(seq=5, kind="session", session=None),
        Change(seq=6, kind="session", session=SessionInfo("other", "Other", False)),
    ]),
    RESULTS,
    ScanResults(batch=7, results=[
        ScanResult("a", ScanOutcome.ACCEPTED),
        ScanResult("b", ScanOutcome.DUPLICATE),
        ScanResult("c", ScanOutcome.REFUSED, "scan id already stored from another device"),
    ]),
    ScanResults(batch=8, results=[]),
    ScanResults(batch=9, results=[ScanResult("a", ScanOutcome.ACCEPTED)], server_time=T0),
]


# -- round trips ---------------------------------------------------------------


@pytest.mark.parametrize("message", DEVICE_SAMPLES, ids=lambda m: m.type)
def test_device_messages_round_trip(message: Message) -> None:
    text = encode(message)
    parsed = parse_device_message(text)
    assert type(parsed) is type(message)
    assert parsed == message
    assert encode(parsed) == text
    assert json.loads(text)["type"] == message.type


@pytest.mark.parametrize("message", SERVER_SAMPLES, ids=lambda m: m.type)
def test_server_messages_round_trip(message: Message) -> None:
    text = encode(message)
    parsed = parse_server_message(text)
    assert type(parsed) is type(message)
    assert parsed == message
    assert encode(parsed) == text
    assert json.loads(text)["type"] == message.type


def test_every_message_type_is_covered_by_the_samples() -> None:
    assert {m.type for m in DEVICE_SAMPLES} == set(DEVICE_MESSAGES)
    assert {m.type for m in SERVER_SAMPLES} == set(SERVER_MESSAGES)
    kinds = {c.kind for m in SERVER_SAMPLES if isinstance(m, Changes) for c in m.changes}
    assert kinds == {"attendee", "registrant", "session"}


def test_encode_writes_the_protocol_version_and_compact_json() -> None:
    text = encode(HELLO)
    assert " " not in text.replace("checkin 0.1.0", "")
    assert json.loads(text) == {
        "type": "hello", "v": PROTOCOL_VERSION, "device_id": "door-1",
        "software": "checkin 0.1.0", "session_id": "keynote-1", "epoch": "E1", "cursor": 42,
    }


def test_each_change_kind_is_encoded_with_only_its_own_fields() -> None:
    changes = json.loads(encode(SERVER_SAMPLES[8]))["changes"]
    assert changes[0] == {"seq": 2, "kind": "attendee", "code": "A", "deleted": True}
    assert changes[1] == {"seq": 3, "kind": "registrant", "code": "B", "deleted": False}
    assert changes[2]["kind"] == "session"
    assert set(changes[2]) == {"seq", "kind", "session"}
    assert changes[2]["session"]["session_id"] == "keynote-1"
    assert changes[3] == {"seq": 5, "kind": "session", "session": None}


def test_non_ascii_text_survives_a_round_trip() -> None:
    hello = Hello(device_id="door-1", software="checkin \u00e9\u4e2d\U0001f600",
                  session_id=None, epoch=None, cursor=0)
    text = encode(hello)
    assert "\u4e2d" in text  # not escaped
    assert parse_device_message(text) == hello


def test_scan_result_stored_property() -> None:
    assert ScanResult("a", ScanOutcome.ACCEPTED).stored
    assert ScanResult("a", ScanOutcome.DUPLICATE).stored
    assert not ScanResult("a", ScanOutcome.REFUSED, "why").stored


# -- issue 17: time sources, code keys, revocation -----------------------------


def test_a_scan_with_the_system_time_leaves_time_source_out() -> None:
    for source in (None, "system"):
        scan = make_scan(time_source=source)
        assert scan.time_source is None and scan.source == "system"
        assert "time_source" not in body(Scans(batch=1, scans=[scan]))["scans"][0]
    assert make_scan(time_source="system") == make_scan()
    # An explicit "system" in a frame reads as the default too.
    obj = body(SCANS)
    obj["scans"][0]["time_source"] = "system"
    parsed = parse_device_message(frame(obj))
    assert isinstance(parsed, Scans) and parsed.scans[0] == make_scan()


@pytest.mark.parametrize("source", ["server", "unknown"])
def test_a_scan_with_another_time_source_says_so(source: str) -> None:
    scan = make_scan(time_source=source)
    assert body(Scans(batch=1, scans=[scan]))["scans"][0]["time_source"] == source
    parsed = parse_device_message(encode(Scans(batch=1, scans=[scan])))
    assert isinstance(parsed, Scans) and parsed.scans[0].source == source


@pytest.mark.parametrize("value", ["System", "ntp", "", 1, True])
def test_an_unknown_time_source_refuses_that_scan_alone(value: Any) -> None:
    bad = body(SCANS)["scans"][0] | {"scan_id": "bad", "time_source": value}
    parsed = parse_device_message(frame(body(SCANS, scans=[body(SCANS)["scans"][0], bad])))
    assert isinstance(parsed, Scans) and parsed.scans[0] == make_scan()
    assert isinstance(parsed.scans[1], BadScan)
    assert re.search(r'^time_source = .*expected one of "system", "server", "unknown", or null',
                     parsed.scans[1].problem)


def test_hello_and_welcome_leave_the_key_fields_out_when_unset() -> None:
    assert {"hashes", "key_id"}.isdisjoint(body(HELLO))
    assert "code_key" not in body(WELCOME)
    assert "server_time" not in body(RESULTS)
    hello = body(Hello(device_id="d", software="", session_id=None, epoch=None, cursor=0,
                       hashes=True, key_id=KEY_ID))
    assert hello["hashes"] is True and hello["key_id"] == KEY_ID
    assert body(Welcome(device_id="d", session_id=None, epoch="E", cursor=0, server_time=T0,
                        resync=False, code_key=KEY_HEX))["code_key"] == KEY_HEX


def test_the_key_id_is_the_first_16_hex_digits_of_the_keys_sha256() -> None:
    import hashlib
    assert hashlib.sha256(KEY).hexdigest()[:16] == KEY_ID
    assert len(KEY_ID) == 16 and code_key_id(b"other" * 7) != KEY_ID


@pytest.mark.parametrize(
    ("parse", "obj", "problem"),
    [
        (parse_device_message, body(HELLO, hashes="yes"), 'hashes = "yes": expected true'),
        (parse_device_message, body(HELLO, hashes=1), "hashes = 1: expected true"),
        (parse_device_message, body(HELLO, key_id=KEY_ID.upper()),
         "key_id = .*: expected 16 lowercase hexadecimal digits, or null"),
        (parse_device_message, body(HELLO, key_id=KEY_ID[:15]), "key_id = .*: expected 16"),
        (parse_device_message, body(HELLO, key_id=KEY_ID + "0"), "key_id = .*: expected 16"),
        (parse_device_message, body(HELLO, key_id=7), "key_id = 7: expected 16"),
        (parse_device_message, body(HELLO, key_id="g" * 16), "key_id = .*: expected 16"),
        (parse_server_message, body(WELCOME, code_key=KEY_HEX[:-1]),
         "code_key = .*: expected 64 lowercase hexadecimal digits, or null"),
        (parse_server_message, body(WELCOME, code_key=KEY_HEX.upper()), "code_key = .*: exp"),
        (parse_server_message, body(WELCOME, code_key=KEY_HEX + "\n"), "code_key = .*: exp"),
        (parse_server_message, body(RESULTS, server_time="2026-11-28T10:00:00"),
         "server_time = .*: expected an ISO 8601 date and time with a UTC offset, or null"),
        (parse_server_message, body(RESULTS, server_time=5), "server_time = 5: expected"),
    ],
)
def test_new_optional_fields_are_checked(parse: Any, obj: dict[str, Any], problem: str) -> None:
    with pytest.raises(ProtocolError, match=problem):
        parse(frame(obj))


def test_null_new_fields_read_as_left_out() -> None:
    assert parse_device_message(frame(body(HELLO, hashes=None, key_id=None))) == HELLO
    assert parse_server_message(frame(body(WELCOME, code_key=None))) == WELCOME
    assert parse_server_message(frame(body(RESULTS, server_time=None))) == RESULTS


def test_revocation_has_its_own_close_code_and_reason() -> None:
    assert CLOSE_REVOKED == 4004 and CLOSE_REVOKED != CLOSE_UNAUTHORIZED
    assert REVOKED_REASON == "device revoked" and close_reason(REVOKED_REASON) == REVOKED_REASON


# -- frames that are not messages ----------------------------------------------


@pytest.mark.parametrize("parse", [parse_device_message, parse_server_message])
@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b'{"type":"hello"}', "binary frame"),
        (bytearray(b"{}"), "binary frame"),
        ("", "not valid JSON"),
        ("{", "not valid JSON"),
        ("{'type': 'hello'}", "not valid JSON"),
        ('{"type":"hello",}', "not valid JSON"),
        ("[]", "a message is a JSON object, not list"),
        ('"hello"', "a message is a JSON object, not str"),
        ("42", "a message is a JSON object, not int"),
        ("null", "a message is a JSON object, not NoneType"),
        ("true", "a message is a JSON object, not bool"),
        ("{}", "unknown message type None"),
        ('{"cursor":1}', "unknown message type None"),
        ('{"type":"bogus"}', 'unknown message type "bogus"'),
        ('{"type":5}', "unknown message type 5"),
        ('{"type":["hello"]}', r"unknown message type \['hello'\]"),
        ('{"type":"HELLO"}', 'unknown message type "HELLO"'),
    ],
)
def test_frames_that_are_not_messages(parse: Any, data: Any, problem: str) -> None:
    with pytest.raises(ProtocolError, match=problem):
        parse(data)


def test_unknown_type_lists_the_types_expected_in_that_direction() -> None:
    with pytest.raises(ProtocolError, match=r"expected one of: hello, scans, status\)"):
        parse_device_message('{"type":"nope"}')
    with pytest.raises(ProtocolError,
                       match=r"expected one of: welcome, snapshot, changes, scan_results\)"):
        parse_server_message('{"type":"nope"}')


@pytest.mark.parametrize("message", DEVICE_SAMPLES, ids=lambda m: m.type)
def test_the_server_parser_refuses_device_messages_from_a_server(message: Message) -> None:
    with pytest.raises(ProtocolError, match=f'unknown message type "{message.type}"'):
        parse_server_message(encode(message))


@pytest.mark.parametrize("message", SERVER_SAMPLES, ids=lambda m: m.type)
def test_the_device_parser_refuses_server_messages_from_a_device(message: Message) -> None:
    with pytest.raises(ProtocolError, match=f'unknown message type "{message.type}"'):
        parse_device_message(encode(message))


# -- fields --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("parse", "obj", "problem"),
    [
        # missing and unknown fields
        (parse_device_message, body(HELLO, cursor=...), r"^hello: cursor is missing$"),
        (parse_device_message, body(HELLO, v=...), r"^hello: v is missing$"),
        (parse_server_message, body(WELCOME, resync=...), r"^welcome: resync is missing$"),
        (parse_server_message, body(SNAPSHOT, attendees=...), "snapshot: attendees is missing"),
        (parse_device_message, body(STATUS, last_frame_at=...),
         "status: last_frame_at is missing"),
        (parse_device_message, body(HELLO, extra=1),
         r"^hello: extra = 1: unknown key \(expected one of: v, device_id, software, "),
        (parse_server_message, body(RESULTS, Batch=1), 'scan_results: Batch = 1: unknown key'),
        # wrong types for integers
        (parse_device_message, body(HELLO, cursor=True),
         r"hello: cursor = True: expected an integer from 0 to 9223372036854775807"),
        (parse_device_message, body(HELLO, cursor=False), "cursor = False: expected an integer"),
        (parse_device_message, body(HELLO, cursor="42"), 'cursor = "42": expected an integer'),
        (parse_device_message, body(HELLO, cursor=-1), "cursor = -1: expected an integer from 0"),
        (parse_device_message, body(HELLO, cursor=4.0), r"cursor = 4\.0: expected an integer"),
        (parse_device_message, body(HELLO, cursor=None), "cursor = None: expected an integer"),
        (parse_device_message, body(HELLO, cursor=2**63), "cursor = 9223372036854775808: exp"),
        (parse_device_message, body(HELLO, v=0), "v = 0: expected an integer from 1 to 1000"),
        (parse_server_message, body(SNAPSHOT, part=-1), "part = -1: expected an integer"),
        (parse_server_message, body(CHANGES, since=-5), "since = -5: expected an integer"),
        (parse_device_message, body(SCANS, batch="1"), 'batch = "1": expected an integer'),
        (parse_device_message, body(STATUS, scans_waiting=-1), "scans_waiting = -1: expected"),
        # wrong types for the rest
        (parse_server_message, body(WELCOME, resync=1), "resync = 1: expected true or false"),
        (parse_server_message, body(WELCOME, resync="true"), 'resync = "true": expected true'),
        (parse_device_message, body(HELLO, software=7), "software = 7: expected a string of at"),
        (parse_device_message, body(HELLO, software="x" * 101),
         "software = .*: expected a string of at most 100 characters"),
        (parse_server_message, body(SNAPSHOT, attendees="ATT-0001"),
         'attendees = "ATT-0001": expected a list of at most 20000 items'),
        (parse_server_message, body(SNAPSHOT, attendees={"a": 1}), "expected a list of at most"),
        (parse_server_message, body(SNAPSHOT, session=[]),
         r"session = \[\]: expected an object, or null"),
        (parse_server_message, body(CHANGES, changes=[5]), "changes = .*item 0: an object"),
    ],
)
def test_field_problems_are_named(parse: Any, obj: dict[str, Any], problem: str) -> None:
    with pytest.raises(ProtocolError, match=problem):
        parse(frame(obj))


@pytest.mark.parametrize(
    ("code", "problem"),
    [
        ("", "empty code"),
        ("A" * 129, "code longer than 128 characters"),
        ("ATT\x00001", "characters outside"),
        ("ATT\n01", "characters outside"),
        ("ATT\x1b[31m", "characters outside"),
        ("ATT\u200b01", "characters outside"),
        ("two words", "characters outside"),
        ("caf\u00e9", "characters outside"),
        (17, "not a string"),
        (None, "not a string"),
    ],
)
def test_invalid_attendee_codes_are_refused_wherever_they_appear(code: Any, problem: str) -> None:
    expected = rf"an attendee code \((code contains )?{problem}"
    for key in ("attendees", "registrants"):
        obj = body(SNAPSHOT, **{key: ["ATT-0001", code]})
        with pytest.raises(ProtocolError, match=rf"snapshot: {key} = .*item 1: {expected}"):
            parse_server_message(frame(obj))
    for kind in ("attendee", "registrant"):
        change = {"seq": 43, "kind": kind, "code": code, "deleted": False}
        obj = body(CHANGES, changes=[change])
        with pytest.raises(ProtocolError, match=rf"changes: changes = .*item 0: code = .*"
                                                rf"expected {expected}"):
            parse_server_message(frame(obj))


def test_the_longest_attendee_code_is_accepted() -> None:
    code = "A" * 128
    parsed = parse_server_message(frame(body(SNAPSHOT, attendees=[code])))
    assert isinstance(parsed, Snapshot)
    assert parsed.attendees == [code]


@pytest.mark.parametrize("value", ["../x", "", "a" * 65, "-leading-dash", ".hidden", "a b",
                                   "a/b", "caf\u00e9", "x\n", 5, True, ["x"]])
def test_invalid_identifiers_are_refused(value: Any) -> None:
    problem = "expected 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
    with pytest.raises(ProtocolError, match=rf"^hello: device_id = .*: {problem}$"):
        parse_device_message(frame(body(HELLO, device_id=value)))
    with pytest.raises(ProtocolError, match=rf"^welcome: epoch = .*: {problem}$"):
        parse_server_message(frame(body(WELCOME, epoch=value)))
    with pytest.raises(ProtocolError, match=rf"^hello: session_id = .*: {problem}, or null$"):
        parse_device_message(frame(body(HELLO, session_id=value)))
    scan = body(SCANS)["scans"][0] | {"scan_id": value}
    with pytest.raises(ProtocolError, match=rf"^scans: scans = .*item 0: scan_id = .*{problem}$"):
        parse_device_message(frame(body(SCANS, scans=[scan])))


@pytest.mark.parametrize("value", ["a", "a" * 64, "Door_1.b-2", "0"])
def test_valid_identifiers_are_accepted(value: str) -> None:
    parsed = parse_device_message(frame(body(HELLO, device_id=value, session_id=value)))
    assert isinstance(parsed, Hello)
    assert parsed.device_id == parsed.session_id == value


def test_welcome_requires_an_epoch_but_hello_may_have_none() -> None:
    with pytest.raises(ProtocolError, match="welcome: epoch = None: expected 1-64"):
        parse_server_message(frame(body(WELCOME, epoch=None)))
    parsed = parse_device_message(frame(body(HELLO, epoch=None)))
    assert isinstance(parsed, Hello)
    assert parsed.epoch is None


@pytest.mark.parametrize("value", ["2026-11-28T10:00:00", "2026-11-28", "2026-11-28 10:00",
                                   "yesterday", "", 1764320400, None])
def test_timestamps_need_a_utc_offset(value: Any) -> None:
    problem = "expected an ISO 8601 date and time with a UTC offset"
    with pytest.raises(ProtocolError, match=rf"^welcome: server_time = .*: {problem}$"):
        parse_server_message(frame(body(WELCOME, server_time=value)))
    scan = body(SCANS)["scans"][0] | {"scanned_at": value}
    parsed = parse_device_message(frame(body(SCANS, scans=[scan])))
    assert isinstance(parsed, Scans)
    assert re.search(rf"^scanned_at = .*{problem}", parsed.scans[0].problem)
    if value is not None:  # last_frame_at may be null
        with pytest.raises(ProtocolError, match=rf"status: last_frame_at = .*{problem}, or null"):
            parse_device_message(frame(body(STATUS, last_frame_at=value)))


@pytest.mark.parametrize("value", ["2026-11-28T10:00:00Z", "2026-11-28T10:00:00+00:00",
                                   "2026-11-28T10:00:00.123456-05:30"])
def test_timestamps_with_an_offset_are_kept_as_given(value: str) -> None:
    parsed = parse_server_message(frame(body(WELCOME, server_time=value)))
    assert isinstance(parsed, Welcome)
    assert parsed.server_time == value


def test_session_info_fields_are_checked() -> None:
    session = body(SNAPSHOT)["session"]
    with pytest.raises(ProtocolError, match=r"session = .*starts_at = .*UTC offset, or null"):
        parse_server_message(frame(body(SNAPSHOT, session=session | {"starts_at": "2026-11-28"})))
    with pytest.raises(ProtocolError, match=r"session = .*name is missing"):
        parse_server_message(frame(body(SNAPSHOT, session={
            "session_id": "s", "validate_registrants": True})))
    with pytest.raises(ProtocolError, match=r"session = .*validate_registrants = .*true or false"):
        parse_server_message(frame(body(SNAPSHOT, session=session | {"validate_registrants": 1})))
    with pytest.raises(ProtocolError, match=r"session = .*color = .*unknown key"):
        parse_server_message(frame(body(SNAPSHOT, session=session | {"color": "red"})))
    minimal = {"session_id": "s", "name": "S", "validate_registrants": False}
    parsed = parse_server_message(frame(body(SNAPSHOT, session=minimal)))
    assert isinstance(parsed, Snapshot)
    assert parsed.session == SessionInfo("s", "S", False, None, None)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"seq": 1, "kind": "ghost", "code": "A", "deleted": False},
         'kind = "ghost": expected one of "attendee", "registrant"'),
        ({"seq": 1, "code": "A", "deleted": False}, "kind is missing"),
        ({"seq": 1, "kind": "attendee", "code": "A"}, "deleted is missing"),
        ({"seq": 1, "kind": "attendee", "deleted": False}, "code is missing"),
        ({"seq": -1, "kind": "attendee", "code": "A", "deleted": False}, "seq = -1"),
        ({"seq": True, "kind": "attendee", "code": "A", "deleted": False}, "seq = True"),
        ({"seq": 1, "kind": "attendee", "code": "A", "deleted": 0}, "deleted = 0: expected true"),
        ({"seq": 1, "kind": "attendee", "code": "A", "deleted": False, "session": None},
         "session = None: unknown key"),
        ({"seq": 1, "kind": "session", "session": None, "code": "A"}, 'code = "A": unknown key'),
        ({"seq": 1, "kind": "session"}, "session is missing"),
        ({"seq": 1, "kind": "session", "session": "s1"}, 'session = "s1": expected an object'),
    ],
)
def test_change_problems_are_named(change: dict[str, Any], problem: str) -> None:
    with pytest.raises(ProtocolError, match=rf"^changes: changes = .*item 0: .*{problem}"):
        parse_server_message(frame(body(CHANGES, changes=[change])))


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("decision", "maybe", 'expected one of "admitted", "rejected"'),
        ("reason", "vip", 'expected one of "registered", "reentry"'),
        ("code", "x" * 401, "expected a string of at most 400 characters"),
        ("boot_id", "b" * 65, "expected a string of at most 64 characters"),
        ("monotonic_ns", -1, "expected an integer from 0"),
        ("seq", "1", "expected an integer from 0"),
        ("session_id", "", "expected 1-64 letters"),
    ],
)
def test_scan_problems_are_named_and_refuse_that_scan_alone(field: str, value: Any,
                                                             problem: str) -> None:
    good = make_scan("good-1")
    bad = body(SCANS)["scans"][0] | {field: value}
    good_body = body(Scans(batch=1, scans=[good]))["scans"][0]
    parsed = parse_device_message(frame(body(SCANS, scans=[good_body, bad])))
    assert isinstance(parsed, Scans)
    assert parsed.scans[0] == good
    assert isinstance(parsed.scans[1], BadScan) and parsed.scans[1].scan_id == bad["scan_id"]
    assert re.search(rf"^{field} = .*{problem}", parsed.scans[1].problem)


@pytest.mark.parametrize("scan_id", [None, "", "a b", "x" * 65, 7, ...])
def test_a_scan_without_a_readable_id_breaks_the_frame(scan_id: Any) -> None:
    scan = body(SCANS)["scans"][0] | {"scan_id": scan_id}
    if scan_id is ...:
        del scan["scan_id"]
    with pytest.raises(ProtocolError, match=r"^scans: scans = .*item 0: scan_id = .*expected"):
        parse_device_message(frame(body(SCANS, scans=[scan])))


@pytest.mark.parametrize("scan", [[], "scan", 1, None])
def test_a_scan_that_is_not_an_object_breaks_the_frame(scan: Any) -> None:
    with pytest.raises(ProtocolError, match=r"^scans: scans = .*item 0: an object"):
        parse_device_message(frame(body(SCANS, scans=[scan])))


def test_lone_surrogates_in_text_refuse_the_scan_not_the_frame() -> None:
    bad = body(SCANS)["scans"][0] | {"code": "\ud800"}
    parsed = parse_device_message(json.dumps(body(SCANS, scans=[bad])))  # "\\ud800" in JSON
    assert isinstance(parsed.scans[0], BadScan)
    assert "lone surrogate" in parsed.scans[0].problem
    with pytest.raises(ProtocolError, match="lone surrogate"):
        parse_device_message(json.dumps(body(STATUS, software="\udfff")))


def test_a_nul_in_text_refuses_the_scan_not_the_frame() -> None:
    bad = body(SCANS)["scans"][0] | {"code": "A1\x00"}
    parsed = parse_device_message(json.dumps(body(SCANS, scans=[bad])))
    assert isinstance(parsed.scans[0], BadScan)
    assert "without NUL" in parsed.scans[0].problem


@given(st.lists(st.text(max_size=MAX_RECORDED_CODE), min_size=1, max_size=50))
def test_any_batch_the_daemon_fits_is_within_the_servers_limit(codes: list[str]) -> None:
    scans = [make_scan(f"s{i}", code=printable(code.encode("utf-8", "surrogatepass")))
             for i, code in enumerate(codes)]
    fitted = fit_batch(scans, limit=4000)
    assert fitted == scans[:len(fitted)] and fitted
    encoded = encode(Scans(batch=2**63 - 1, scans=fitted)).encode()
    assert len(encoded) <= 4000 or len(fitted) == 1
    if len(fitted) < len(scans):  # one more would not have fitted
        more = encode(Scans(batch=2**63 - 1, scans=scans[:len(fitted) + 1])).encode()
        assert len(more) > 4000


def test_a_full_batch_of_the_longest_scans_fits_the_servers_limit() -> None:
    longest = printable("😀".encode() * MAX_RECORDED_CODE)
    scans = [make_scan(f"s{i}", code=longest, boot_id="b" * 64)
             for i in range(MAX_SCANS_PER_BATCH)]
    fitted = fit_batch(scans)
    assert 0 < len(fitted) < len(scans)
    assert len(encode(Scans(batch=2**63 - 1, scans=fitted)).encode()) <= MAX_DEVICE_MESSAGE


def test_every_reason_is_accepted_in_a_scan() -> None:
    scans = [make_scan(f"s{i}", reason=str(reason), decision=reason.decision)
             for i, reason in enumerate(Reason)]
    parsed = parse_device_message(encode(Scans(batch=1, scans=scans)))
    assert isinstance(parsed, Scans)
    assert [s.reason for s in parsed.scans] == [r.value for r in Reason]


@pytest.mark.parametrize(
    ("result", "problem"),
    [
        ({"scan_id": "a", "result": "lost"}, 'result = "lost": expected one of "accepted"'),
        ({"scan_id": "a"}, "result is missing"),
        ({"scan_id": "a", "result": "refused", "reason": "r" * 501}, "at most 500 characters"),
        ({"scan_id": "../a", "result": "accepted"}, "scan_id = .*expected 1-64 letters"),
    ],
)
def test_scan_result_problems_are_named(result: dict[str, Any], problem: str) -> None:
    with pytest.raises(ProtocolError, match=rf"^scan_results: results = .*item 0: .*{problem}"):
        parse_server_message(frame(body(RESULTS, results=[result])))


def test_a_scan_result_without_reason_is_accepted() -> None:
    parsed = parse_server_message(frame(body(RESULTS, results=[{"scan_id": "a",
                                                                "result": "duplicate"}])))
    assert isinstance(parsed, ScanResults)
    assert parsed.results == [ScanResult("a", ScanOutcome.DUPLICATE, None)]


def test_the_first_problem_is_reported_when_there_are_several() -> None:
    obj = body(HELLO, device_id="../x", cursor=-1, extra=1)
    with pytest.raises(ProtocolError, match=r"^hello: device_id = \"\.\./x\""):
        parse_device_message(frame(obj))


def test_long_bad_values_are_cut_short_in_the_message() -> None:
    with pytest.raises(ProtocolError) as info:
        parse_device_message(frame(body(HELLO, software="x" * 5000)))
    assert len(str(info.value)) < 250
    assert "..." in str(info.value)


# -- limits --------------------------------------------------------------------


def test_a_batch_may_hold_at_most_max_scans() -> None:
    scans = [make_scan(f"s{i}") for i in range(MAX_SCANS_PER_BATCH + 1)]
    parsed = parse_device_message(encode(Scans(batch=1, scans=scans[:-1])))
    assert isinstance(parsed, Scans)
    assert len(parsed.scans) == MAX_SCANS_PER_BATCH
    with pytest.raises(ProtocolError,
                       match=f"scans: scans = .*expected a list of at most {MAX_SCANS_PER_BATCH}"):
        parse_device_message(encode(Scans(batch=1, scans=scans)))


def test_scan_results_may_hold_at_most_max_scans() -> None:
    results = [ScanResult(f"s{i}", ScanOutcome.ACCEPTED) for i in range(MAX_SCANS_PER_BATCH + 1)]
    parsed = parse_server_message(encode(ScanResults(batch=1, results=results[:-1])))
    assert isinstance(parsed, ScanResults)
    assert len(parsed.results) == MAX_SCANS_PER_BATCH
    with pytest.raises(ProtocolError, match=f"at most {MAX_SCANS_PER_BATCH} items"):
        parse_server_message(encode(ScanResults(batch=1, results=results)))


@pytest.mark.parametrize("key", ["attendees", "registrants"])
def test_a_snapshot_part_may_hold_at_most_max_items(key: str) -> None:
    codes = [f"A{i}" for i in range(MAX_ITEMS_PER_MESSAGE + 1)]
    parsed = parse_server_message(frame(body(SNAPSHOT, **{key: codes[:-1]})))
    assert isinstance(parsed, Snapshot)
    assert len(getattr(parsed, key)) == MAX_ITEMS_PER_MESSAGE
    with pytest.raises(ProtocolError,
                       match=f"snapshot: {key} = .*at most {MAX_ITEMS_PER_MESSAGE} items"):
        parse_server_message(frame(body(SNAPSHOT, **{key: codes})))


def test_a_changes_message_may_hold_at_most_max_items() -> None:
    changes = [Change(seq=i + 1, kind="attendee", code=f"A{i}")
               for i in range(MAX_ITEMS_PER_MESSAGE + 1)]
    cursor = MAX_ITEMS_PER_MESSAGE + 1
    parsed = parse_server_message(encode(Changes("E1", 0, cursor, changes[:-1])))
    assert isinstance(parsed, Changes)
    assert len(parsed.changes) == MAX_ITEMS_PER_MESSAGE
    with pytest.raises(ProtocolError,
                       match=f"changes: changes = .*at most {MAX_ITEMS_PER_MESSAGE} items"):
        parse_server_message(encode(Changes("E1", 0, cursor, changes)))


# -- hostile input -------------------------------------------------------------


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("parse", [parse_device_message, parse_server_message])
@pytest.mark.parametrize("depth", [10_000, 100_000])
def test_deeply_nested_json_is_a_protocol_error(parse: Any, depth: int) -> None:
    for template in ("{}", '{{"type":{}}}', '{{"type":"hello","software":{}}}',
                     '{{"type":"changes","changes":[{}]}}', '{{"x":{{"y":{}}}}}'):
        with pytest.raises(ProtocolError):
            parse(template.format(_nested(depth)))
    with pytest.raises(ProtocolError, match="not valid JSON"):
        parse('{"a":' * depth + "1" + "}" * depth)


@pytest.mark.parametrize("parse", [parse_device_message, parse_server_message])
def test_nesting_around_the_recursion_limit_never_escapes_as_recursion_error(parse: Any) -> None:
    # Nesting just inside the limit parses as JSON and is then shown in the error
    # message: that must not overflow the stack either.
    limit = sys.getrecursionlimit()
    for depth in range(max(1, limit - 200), limit + 50, 7):
        for template in ('{{"type":"hello","software":{}}}', '{{"type":{}}}',
                         '{{"type":"welcome","extra":{}}}',
                         '{{"type":"scan_results","results":{}}}'):
            with pytest.raises(ProtocolError):
                parse(template.format(_nested(depth)))


@pytest.mark.parametrize("parse", [parse_device_message, parse_server_message])
def test_a_huge_integer_literal_is_a_protocol_error(parse: Any) -> None:
    # json.loads raises a plain ValueError (not JSONDecodeError) for an integer literal
    # longer than sys.get_int_max_str_digits(); it must not escape the parser.
    with pytest.raises(ProtocolError, match="not valid JSON"):
        parse('{"type":"hello","cursor":' + "9" * 5000 + "}")
    with pytest.raises(ProtocolError, match="not valid JSON"):
        parse('{"type":"scans","batch":1,"scans":[{"seq":-' + "1" * 4301 + "}]}")


@pytest.mark.parametrize("parse", [parse_device_message, parse_server_message])
@pytest.mark.parametrize("data", ['{"type":"hello","device_id":"\\ud800"}',  # lone surrogate
                                  '{"type":"status","cursor":NaN}',
                                  '{"type":"status","cursor":Infinity}',
                                  '{"type":"scans","batch":1e400}',
                                  '{"type":"welcome","cursor":-0}',
                                  '{"type":"hello","type":"scans"}'])
def test_odd_but_valid_json_gives_protocol_error_not_a_crash(parse: Any, data: str) -> None:
    with pytest.raises(ProtocolError):
        parse(data)


# -- fuzzing -------------------------------------------------------------------


def _parse_or_protocol_error(parse: Any, data: Any) -> None:
    try:
        message = parse(data)
    except ProtocolError as exc:
        assert str(exc)
        return
    assert isinstance(message, Message)
    # Whatever is accepted encodes back to an equal message.
    assert parse(encode(message)) == message


@settings(max_examples=300)
@given(st.text())
def test_arbitrary_text_only_ever_gives_a_message_or_protocol_error(data: str) -> None:
    _parse_or_protocol_error(parse_device_message, data)
    _parse_or_protocol_error(parse_server_message, data)


@given(st.binary())
def test_arbitrary_bytes_are_refused_as_binary_frames(data: bytes) -> None:
    for parse in (parse_device_message, parse_server_message):
        with pytest.raises(ProtocolError, match="binary frame"):
            parse(data)


_KEYS = sorted({key for cls in (*DEVICE_MESSAGES.values(), *SERVER_MESSAGES.values(),
                                Change, Scan, ScanResult, SessionInfo)
                for key in fields_of(cls)})
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(["", "A1", "door-1", "../x", T0, "2026-11-28", "admitted", "registered",
                       "attendee", "session", "accepted", "a" * 65])
    | st.text(max_size=10),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(_KEYS) | st.text(max_size=5), children, max_size=6),
    max_leaves=10,
)
_TYPES = st.sampled_from([*DEVICE_MESSAGES, *SERVER_MESSAGES, "bogus"]) | _JSON


@settings(max_examples=150)
@given(st.dictionaries(st.sampled_from(_KEYS), _JSON, max_size=9), _TYPES)
def test_arbitrary_json_objects_only_ever_give_a_message_or_protocol_error(
    obj: dict[str, Any], kind: Any
) -> None:
    data = json.dumps({"type": kind, **obj})
    _parse_or_protocol_error(parse_device_message, data)
    _parse_or_protocol_error(parse_server_message, data)


_IDS = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", fullmatch=True)
_CODES = st.from_regex(r"[A-Za-z0-9._~:@+=/-]{1,128}", fullmatch=True)
_SEQS = st.integers(0, 2**63 - 1)
_OFFSETS = st.integers(-23 * 60, 23 * 60).map(lambda m: timezone(timedelta(minutes=m)))
_STAMPS = st.datetimes(timezones=_OFFSETS).map(lambda d: d.isoformat())


def _text(size: int) -> st.SearchStrategy[str]:
    """Text any text field takes: Unicode without NUL (which text fields may refuse:
    PostgreSQL's text cannot hold one)."""
    return st.text(st.characters(blacklist_characters="\x00"), max_size=size)


_SESSIONS = st.builds(SessionInfo, _IDS, _text(200), st.booleans(),
                      st.none() | _STAMPS, st.none() | _STAMPS)
_CHANGES = st.one_of(
    st.builds(Change, seq=_SEQS, kind=st.sampled_from(["attendee", "registrant"]), code=_CODES,
              deleted=st.booleans()),
    st.builds(Change, seq=_SEQS, kind=st.just("session"), session=st.none() | _SESSIONS),
)
_SCANS = st.builds(Scan, _IDS, _SEQS, _text(400), st.none() | _IDS,
                   st.sampled_from(["admitted", "rejected"]), st.sampled_from(list(Reason)),
                   _STAMPS, _SEQS, _text(64),
                   time_source=st.none() | st.sampled_from(["system", "server", "unknown"]))
_HEX16 = st.from_regex(r"[0-9a-f]{16}", fullmatch=True)
_HEX64 = st.from_regex(r"[0-9a-f]{64}", fullmatch=True)
_DEVICE_MESSAGES = st.one_of(
    st.builds(Hello, device_id=_IDS, software=_text(100),
              session_id=st.none() | _IDS, epoch=st.none() | _IDS, cursor=_SEQS,
              v=st.integers(1, 1000), hashes=st.none() | st.booleans(),
              key_id=st.none() | _HEX16),
    st.builds(Scans, batch=_SEQS, scans=st.lists(_SCANS, max_size=5)),
    st.builds(Status, software=_text(100), cursor=_SEQS, scans_waiting=_SEQS,
              scans_quarantined=_SEQS, last_frame_at=st.none() | _STAMPS),
)
_SERVER_MESSAGES = st.one_of(
    st.builds(Welcome, device_id=_IDS, session_id=st.none() | _IDS, epoch=_IDS, cursor=_SEQS,
              server_time=_STAMPS, resync=st.booleans(), v=st.integers(1, 1000),
              code_key=st.none() | _HEX64),
    st.builds(Snapshot, epoch=_IDS, cursor=_SEQS, part=st.integers(0, 1_000_000),
              last=st.booleans(), session=st.none() | _SESSIONS,
              attendees=st.lists(_CODES, max_size=5), registrants=st.lists(_CODES, max_size=5)),
    st.builds(Changes, epoch=_IDS, since=_SEQS, cursor=_SEQS,
              changes=st.lists(_CHANGES, max_size=5)),
    st.builds(ScanResults, batch=_SEQS, results=st.lists(st.builds(
        ScanResult, _IDS, st.sampled_from(ScanOutcome),
        st.none() | _text(500)), max_size=5), server_time=st.none() | _STAMPS),
)


@settings(max_examples=100)
@given(_DEVICE_MESSAGES)
def test_any_valid_device_message_round_trips(message: Message) -> None:
    parsed = parse_device_message(encode(message))
    assert parsed == message
    with pytest.raises(ProtocolError, match="unknown message type"):
        parse_server_message(encode(message))


@settings(max_examples=100)
@given(_SERVER_MESSAGES)
def test_any_valid_server_message_round_trips(message: Message) -> None:
    parsed = parse_server_message(encode(message))
    assert parsed == message
    with pytest.raises(ProtocolError, match="unknown message type"):
        parse_device_message(encode(message))
