"""The server's end of the sync protocol, alone and wired to a DeviceEnd in memory."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
    MAX_ITEMS_PER_MESSAGE,
    PROTOCOL_VERSION,
    Change,
    Changes,
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
    encode,
    parse_server_message,
)
from sync.server_end import (
    NoteStatus,
    SendChanges,
    SendSnapshot,
    ServerEnd,
    ServerState,
    ServerView,
    StoreScans,
    judge_scans,
    needs_snapshot,
)

DEVICE = "door-1"
SOFTWARE = "checkin 0.1.0"
T0 = "2026-11-28T10:00:00+01:00"
#: The time the tests' frames arrive at the server (the end reads no clock).
NOW = datetime.fromisoformat("2026-11-28T09:30:00+01:00")
KEYNOTE = SessionInfo("keynote-1", "Opening keynote", True)
VIEW = ServerView(device_id=DEVICE, session_id="keynote-1", epoch="E1", cursor=100, horizon=20)


def hello_message(**overrides: Any) -> Hello:
    values: dict[str, Any] = {"device_id": DEVICE, "software": SOFTWARE,
                              "session_id": "keynote-1", "epoch": "E1", "cursor": 60}
    values.update(overrides)
    return Hello(**values)


def hello(**overrides: Any) -> str:
    return encode(hello_message(**overrides))


def scan(scan_id: str, session_id: str | None = "keynote-1") -> Scan:
    return Scan(scan_id=scan_id, seq=1, code="ATT-0001", session_id=session_id,
                decision="admitted", reason="registered", scanned_at=T0, monotonic_ns=1,
                boot_id="boot")


def scans(batch: int, *ids: str) -> str:
    return encode(Scans(batch=batch, scans=[scan(i) for i in ids]))


def status(cursor: int = 60) -> Status:
    return Status(software=SOFTWARE, cursor=cursor, scans_waiting=2, scans_quarantined=0,
                  last_frame_at=None)


def attendee(seq: int, code: str = "ATT-0001") -> Change:
    return Change(seq=seq, kind="attendee", code=code)


def frames(end: ServerEnd) -> list[Any]:
    return [parse_server_message(f) for f in end.data_to_send()]


def greeted(view: ServerView = VIEW, **overrides: Any) -> ServerEnd:
    """A server end that took a hello; its welcome and first action are left queued."""
    end = ServerEnd(view)
    end.receive(hello(**overrides), NOW)
    return end


def live(cursor: int = 60) -> ServerEnd:
    """A server end whose device is synced to *cursor* (first fetch answered)."""
    end = greeted(cursor=cursor)
    assert end.actions() == [SendChanges(cursor)]
    end.send_changes(cursor, cursor, [])
    end.data_to_send()
    assert end.state is ServerState.LIVE
    assert end.actions() == []
    return end


def pump(device: DeviceEnd, server: ServerEnd) -> int:
    """Carry frames both ways until both ends are quiet; return how many went."""
    count = 0
    while True:
        up = device.data_to_send()
        for frame in up:
            server.receive(frame, NOW)
        down = server.data_to_send()
        for frame in down:
            device.receive(frame)
        count += len(up) + len(down)
        if not up and not down:
            return count


# -- needs_snapshot ------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"cursor": 100}, False),
        ({"cursor": 60}, False),
        ({"cursor": 20}, False),  # exactly at the horizon: still servable
        ({"epoch": "E2"}, True),
        ({"epoch": None}, True),
        ({"session_id": "workshop-2"}, True),
        ({"session_id": None}, True),
        ({"cursor": 101}, True),  # ahead of the server: history lost
        ({"cursor": 19}, True),  # behind the horizon: tombstones pruned
        ({"cursor": 0}, True),
        ({"epoch": None, "session_id": None, "cursor": 0}, True),
    ],
)
def test_needs_snapshot(overrides: dict[str, Any], expected: bool) -> None:
    assert needs_snapshot(hello_message(**overrides), VIEW) is expected


def test_needs_snapshot_with_no_session_on_either_side() -> None:
    view = ServerView(DEVICE, None, "E1", cursor=5)
    assert needs_snapshot(hello_message(session_id=None, cursor=0), view) is False
    assert needs_snapshot(hello_message(session_id=None, cursor=5), view) is False
    assert needs_snapshot(hello_message(session_id="keynote-1", cursor=5), view) is True
    assert needs_snapshot(hello_message(session_id=None, cursor=6), view) is True


# -- hello ---------------------------------------------------------------------


def test_a_hello_for_another_device_is_refused() -> None:
    end = ServerEnd(VIEW)
    with pytest.raises(ProtocolError,
                       match="hello names device 'door-2' but the token is 'door-1''s"):
        end.receive(hello(device_id="door-2"), NOW)
    assert end.state is ServerState.AWAIT_HELLO
    assert end.hello is None
    assert end.data_to_send() == []
    assert end.actions() == []


def test_a_hello_in_another_protocol_version_is_refused() -> None:
    end = ServerEnd(VIEW)
    with pytest.raises(ProtocolError,
                       match=f"device speaks protocol 3, server {PROTOCOL_VERSION}"):
        end.receive(hello(v=3), NOW)
    assert end.state is ServerState.AWAIT_HELLO
    assert end.data_to_send() == []


def test_a_second_hello_is_refused() -> None:
    end = greeted()
    end.data_to_send()
    end.actions()
    with pytest.raises(ProtocolError, match="second hello on one connection"):
        end.receive(hello(), NOW)
    assert end.data_to_send() == []
    assert end.actions() == []


@pytest.mark.parametrize("frame", [scans(1, "a"), encode(status())], ids=["scans", "status"])
def test_messages_before_the_hello_are_refused(frame: str) -> None:
    end = ServerEnd(VIEW)
    kind = json.loads(frame)["type"]
    with pytest.raises(ProtocolError, match=f"^{kind} before hello$"):
        end.receive(frame, NOW)
    assert end.state is ServerState.AWAIT_HELLO
    assert end.actions() == []


def test_frames_that_are_not_device_messages_are_refused() -> None:
    end = ServerEnd(VIEW)
    with pytest.raises(ProtocolError, match="binary frame"):
        end.receive(hello().encode(), NOW)
    with pytest.raises(ProtocolError, match='unknown message type "welcome"'):
        end.receive(encode(Welcome(DEVICE, None, "E1", 0, T0, True)), NOW)
    assert end.state is ServerState.AWAIT_HELLO


def test_a_hello_in_sync_is_welcomed_and_asks_for_changes() -> None:
    end = greeted(cursor=60)
    [welcome] = frames(end)
    assert isinstance(welcome, Welcome)
    assert (welcome.device_id, welcome.session_id, welcome.epoch, welcome.cursor) == (
        DEVICE, "keynote-1", "E1", 100)
    assert welcome.resync is False
    assert welcome.v == PROTOCOL_VERSION
    assert welcome.server_time == NOW.isoformat()  # the time given, not the clock's
    assert end.actions() == [SendChanges(since=60)]
    assert end.state is ServerState.SYNCING
    assert end.sent_cursor == 60
    assert end.hello == hello_message(cursor=60)


@pytest.mark.parametrize("overrides", [{"epoch": None}, {"session_id": "workshop-2"},
                                       {"cursor": 101}, {"cursor": 3}])
def test_a_hello_out_of_sync_is_welcomed_with_resync_and_asks_for_a_snapshot(
    overrides: dict[str, Any],
) -> None:
    end = greeted(**overrides)
    [welcome] = frames(end)
    assert isinstance(welcome, Welcome)
    assert welcome.resync is True
    assert welcome.epoch == "E1"
    assert end.actions() == [SendSnapshot()]
    assert end.state is ServerState.SYNCING


def test_a_status_is_noted_and_scans_are_stored() -> None:
    end = live()
    end.receive(encode(status(cursor=61)), NOW)
    end.receive(scans(4, "a", "b"), NOW)
    assert end.actions() == [NoteStatus(status(cursor=61)),
                             StoreScans(4, [scan("a"), scan("b")])]
    assert end.data_to_send() == []  # answers come from the endpoint


def test_scans_may_arrive_while_the_first_fetch_is_under_way() -> None:
    end = greeted()
    end.actions()
    end.receive(scans(1, "a"), NOW)
    assert end.actions() == [StoreScans(1, [scan("a")])]


# -- snapshots -----------------------------------------------------------------


def test_a_snapshot_is_sent_in_parts_of_at_most_max_items() -> None:
    step = MAX_ITEMS_PER_MESSAGE
    attendees = [f"A{i}" for i in range(2 * step + 1)]
    registrants = [f"R{i}" for i in range(step)]
    device = DeviceEnd(DEVICE, SOFTWARE, CacheState(None, None, 0))
    server = ServerEnd(VIEW)
    pump(device, server)
    assert server.actions() == [SendSnapshot()]

    server.send_snapshot(100, KEYNOTE, attendees, registrants)
    texts = server.data_to_send()
    parts = [parse_server_message(t) for t in texts]
    assert all(isinstance(p, Snapshot) for p in parts)
    assert [p.part for p in parts] == [0, 1, 2]
    assert [p.last for p in parts] == [False, False, True]
    assert {(p.epoch, p.cursor, p.session) for p in parts} == {("E1", 100, KEYNOTE)}
    assert [len(p.attendees) for p in parts] == [step, step, 1]
    assert [len(p.registrants) for p in parts] == [step, 0, 0]
    assert server.state is ServerState.LIVE
    assert server.sent_cursor == 100

    device.actions()
    for text in texts:
        device.receive(text)
    assert device.actions() == [ApplySnapshot("E1", 100, KEYNOTE, attendees, registrants)]
    assert device.state is DeviceState.READY
    assert (device.epoch, device.cursor, device.session_id) == ("E1", 100, "keynote-1")


@pytest.mark.parametrize(
    ("attendees", "registrants", "parts"),
    [(0, 0, 1), (1, 0, 1), (MAX_ITEMS_PER_MESSAGE, 0, 1), (MAX_ITEMS_PER_MESSAGE + 1, 0, 2),
     (0, MAX_ITEMS_PER_MESSAGE + 1, 2), (3, 2 * MAX_ITEMS_PER_MESSAGE, 2)],
)
def test_snapshot_part_counts(attendees: int, registrants: int, parts: int) -> None:
    end = greeted(epoch=None)
    end.data_to_send()
    end.send_snapshot(100, None, [f"A{i}" for i in range(attendees)],
                      [f"R{i}" for i in range(registrants)])
    sent = frames(end)
    assert len(sent) == parts
    assert [p.last for p in sent] == [False] * (parts - 1) + [True]
    assert sum(len(p.attendees) for p in sent) == attendees
    assert sum(len(p.registrants) for p in sent) == registrants


def test_a_snapshot_or_changes_not_asked_for_is_a_programming_error() -> None:
    end = ServerEnd(VIEW)
    with pytest.raises(ValueError, match="no snapshot or changes were asked for"):
        end.send_snapshot(100, None, [], [])
    with pytest.raises(ValueError, match="no snapshot or changes were asked for"):
        end.send_changes(0, 100, [])
    end = live()
    with pytest.raises(ValueError, match="no snapshot or changes were asked for"):
        end.send_changes(60, 61, [attendee(61)])
    with pytest.raises(ValueError, match="no snapshot or changes were asked for"):
        end.send_snapshot(100, None, [], [])
    assert end.data_to_send() == []


# -- changes -------------------------------------------------------------------


def test_many_changes_are_sent_in_chunks_the_device_applies_in_turn() -> None:
    step = MAX_ITEMS_PER_MESSAGE
    seqs = [101 + 2 * i for i in range(2 * step + 5)]
    items = [attendee(s, f"A{s}") for s in seqs]
    final = seqs[-1] + 3
    view = ServerView(DEVICE, "keynote-1", "E1", cursor=final)
    device = DeviceEnd(DEVICE, SOFTWARE, CacheState("keynote-1", "E1", 100))
    server = ServerEnd(view)
    pump(device, server)
    assert server.actions() == [SendChanges(100)]
    assert [type(a) for a in device.actions()] == [Welcomed]

    server.send_changes(100, final, iter(items))
    texts = server.data_to_send()
    sent = [parse_server_message(t) for t in texts]
    assert all(isinstance(c, Changes) for c in sent)
    assert [(c.since, c.cursor) for c in sent] == [
        (100, seqs[step - 1]), (seqs[step - 1], seqs[2 * step - 1]), (seqs[2 * step - 1], final)]
    assert [len(c.changes) for c in sent] == [step, step, 5]
    assert [ch for c in sent for ch in c.changes] == items
    assert server.sent_cursor == final
    assert server.state is ServerState.LIVE

    for text in texts:
        device.receive(text)
    applied = device.actions()
    assert [a.cursor for a in applied if isinstance(a, ApplyChanges)] == [
        seqs[step - 1], seqs[2 * step - 1], final]
    assert [ch for a in applied if isinstance(a, ApplyChanges) for ch in a.changes] == items
    assert device.cursor == final
    assert device.state is DeviceState.READY


@settings(max_examples=150, deadline=None)
@given(
    gaps=st.lists(st.integers(1, 3), max_size=12),
    tail=st.integers(0, 3),
    step=st.integers(1, 4),
    live_first=st.booleans(),
)
def test_chunked_changes_always_apply_cleanly_on_the_device(
    gaps: list[int], tail: int, step: int, live_first: bool
) -> None:
    seqs, seq = [], 50
    for gap in gaps:
        seq += gap
        seqs.append(seq)
    items = [attendee(s, f"A{s}") for s in seqs]
    final = (seqs[-1] if seqs else 50) + tail
    device = DeviceEnd(DEVICE, SOFTWARE, CacheState("keynote-1", "E1", 50))
    server = ServerEnd(ServerView(DEVICE, "keynote-1", "E1", cursor=50))
    pump(device, server)
    server.actions()
    if live_first:  # answer the first fetch, then fetch again after a change
        server.send_changes(50, 50, [])
        server.changed()
        assert server.actions() == [SendChanges(50)]
    with mock.patch("sync.server_end.MAX_ITEMS_PER_MESSAGE", step):
        server.send_changes(50, final, items)
    texts = server.data_to_send()
    for text in texts:
        device.receive(text)
    sent = [parse_server_message(t) for t in texts]
    assert all(len(c.changes) <= step for c in sent)
    assert [ch for c in sent for ch in c.changes] == items
    applied = [a for a in device.actions() if isinstance(a, ApplyChanges)]
    assert [ch for a in applied for ch in a.changes] == items
    assert device.cursor == final
    assert device.state is DeviceState.READY  # even when nothing changed at all
    assert server.sent_cursor == final


def test_the_first_answer_is_always_sent_so_the_device_becomes_ready() -> None:
    device = DeviceEnd(DEVICE, SOFTWARE, CacheState("keynote-1", "E1", 100))
    server = ServerEnd(ServerView(DEVICE, "keynote-1", "E1", cursor=100))
    pump(device, server)
    assert server.actions() == [SendChanges(100)]
    server.send_changes(100, 100, [])
    [sent] = frames_and_feed(server, device)
    assert sent == Changes("E1", 100, 100, [])
    assert device.state is DeviceState.READY


def frames_and_feed(server: ServerEnd, device: DeviceEnd) -> list[Any]:
    texts = server.data_to_send()
    for text in texts:
        device.receive(text)
    return [parse_server_message(t) for t in texts]


def test_nothing_new_while_live_sends_nothing() -> None:
    end = live(60)
    end.changed()
    assert end.actions() == [SendChanges(60)]
    end.send_changes(60, 60, [])
    assert end.data_to_send() == []
    assert end.state is ServerState.LIVE
    assert end.actions() == []


def test_an_advanced_cursor_without_changes_is_sent_while_live() -> None:
    end = live(60)
    end.changed()
    end.actions()
    end.send_changes(60, 64, [])
    assert frames(end) == [Changes("E1", 60, 64, [])]
    assert end.sent_cursor == 64


def test_exactly_max_changes_while_live_fit_in_one_message() -> None:
    end = live(20)
    end.changed()
    end.actions()
    items = [attendee(21 + i, f"A{i}") for i in range(MAX_ITEMS_PER_MESSAGE)]
    end.send_changes(20, 20 + MAX_ITEMS_PER_MESSAGE, items)
    sent = frames(end)
    assert len(sent) == 1
    assert (sent[0].since, sent[0].cursor, len(sent[0].changes)) == (
        20, 20 + MAX_ITEMS_PER_MESSAGE, MAX_ITEMS_PER_MESSAGE)


def test_changes_since_the_wrong_cursor_are_a_programming_error() -> None:
    end = greeted(cursor=60)
    end.data_to_send()
    with pytest.raises(ValueError, match="changes since 59, but the device has 60"):
        end.send_changes(59, 70, [])
    assert end.data_to_send() == []
    end.send_changes(60, 70, [])  # the fetch is still open
    assert frames(end) == [Changes("E1", 60, 70, [])]


# -- changed() -----------------------------------------------------------------


def test_a_change_while_live_asks_for_the_changes_since_what_was_sent() -> None:
    end = live(60)
    end.changed()
    assert end.actions() == [SendChanges(60)]
    end.send_changes(60, 65, [attendee(65)])
    end.changed()
    assert end.actions() == [SendChanges(65)]


def test_changes_during_a_fetch_are_coalesced_and_fetched_once_after_it() -> None:
    end = live(60)
    end.changed()
    assert end.actions() == [SendChanges(60)]
    end.changed()
    end.changed()
    end.changed()
    assert end.actions() == []  # one fetch at a time
    end.send_changes(60, 62, [attendee(61), attendee(62, "B")])
    assert end.actions() == [SendChanges(62)]
    end.send_changes(62, 63, [attendee(63)])
    assert end.actions() == []  # nothing else changed meanwhile
    assert end.sent_cursor == 63


def test_a_change_during_the_first_fetch_is_fetched_after_it() -> None:
    end = greeted(cursor=60)
    assert end.actions() == [SendChanges(60)]
    end.changed()
    assert end.actions() == []
    end.send_changes(60, 60, [])
    assert end.actions() == [SendChanges(60)]


def test_a_change_before_the_hello_is_remembered() -> None:
    end = ServerEnd(VIEW)
    end.changed()
    assert end.actions() == []
    end.receive(hello(cursor=60), NOW)
    assert end.actions() == [SendChanges(60)]
    end.send_changes(60, 100, [])
    assert end.actions() == [SendChanges(100)]


def test_a_change_before_a_resync_hello_is_fetched_after_the_snapshot() -> None:
    end = ServerEnd(VIEW)
    end.changed()
    end.receive(hello(epoch=None, cursor=0), NOW)
    assert end.actions() == [SendSnapshot()]
    end.send_snapshot(100, KEYNOTE, ["A1"], [])
    assert end.actions() == [SendChanges(100)]


# -- scans and results ---------------------------------------------------------


def test_a_batch_pushed_twice_before_its_results_is_refused() -> None:
    end = live()
    end.receive(scans(1, "a"), NOW)
    with pytest.raises(ProtocolError, match="batch 1 pushed twice before its results"):
        end.receive(scans(1, "b"), NOW)
    assert end.actions() == [StoreScans(1, [scan("a")])]


def test_a_batch_number_may_be_reused_once_answered() -> None:
    end = live()
    end.receive(scans(1, "a"), NOW)
    end.send_results(1, [ScanResult("a", ScanOutcome.ACCEPTED)])
    end.receive(scans(1, "b"), NOW)
    assert end.actions() == [StoreScans(1, [scan("a")]), StoreScans(1, [scan("b")])]


def test_a_batch_holding_a_scan_id_twice_is_refused() -> None:
    end = live()
    with pytest.raises(ProtocolError, match="batch 3 holds a scan id twice"):
        end.receive(scans(3, "a", "b", "a"), NOW)
    assert end.actions() == []
    with pytest.raises(ValueError, match="results for batch 3 do not match"):
        end.send_results(3, [ScanResult("a", ScanOutcome.ACCEPTED),
                             ScanResult("b", ScanOutcome.ACCEPTED)])


def test_results_are_sent_for_the_batch() -> None:
    end = live()
    end.receive(scans(2, "a", "b", "c"), NOW)
    answer = [ScanResult("c", ScanOutcome.ACCEPTED), ScanResult("a", ScanOutcome.DUPLICATE),
              ScanResult("b", ScanOutcome.REFUSED, "scan id already stored from another device")]
    end.send_results(2, answer)
    assert frames(end) == [ScanResults(2, answer)]


@pytest.mark.parametrize(
    "answer",
    [["a"], ["a", "b", "x"], ["a", "x"], []],
    ids=["missing", "extra", "other", "empty"],
)
def test_results_must_match_the_batch(answer: list[str]) -> None:
    end = live()
    end.receive(scans(2, "a", "b"), NOW)
    with pytest.raises(ValueError, match="results for batch 2 do not match its scans"):
        end.send_results(2, [ScanResult(i, ScanOutcome.ACCEPTED) for i in answer])
    assert end.data_to_send() == []


def test_results_for_a_batch_never_pushed_are_a_programming_error() -> None:
    end = live()
    with pytest.raises(ValueError, match="results for batch 9 do not match its scans"):
        end.send_results(9, [ScanResult("a", ScanOutcome.ACCEPTED)])
    assert end.data_to_send() == []


def test_results_that_repeat_a_scan_id_are_refused_like_the_device_would() -> None:
    end = live()
    end.receive(scans(2, "a", "b"), NOW)
    answer = [ScanResult(i, ScanOutcome.ACCEPTED) for i in ("a", "a", "b")]
    with pytest.raises(ValueError, match="do not match"):
        end.send_results(2, answer)
    end.send_results(2, answer[1:])  # the batch is still pending: a correct answer goes out
    assert len(end.data_to_send()) == 1


def test_frames_and_actions_are_each_returned_once() -> None:
    end = greeted()
    assert len(end.data_to_send()) == 1
    assert end.data_to_send() == []
    assert len(end.actions()) == 1
    assert end.actions() == []


# -- whole conversations -------------------------------------------------------


def test_a_whole_conversation_from_an_empty_cache() -> None:
    device = DeviceEnd(DEVICE, SOFTWARE, CacheState(None, None, 0))
    server = ServerEnd(ServerView(DEVICE, "keynote-1", "E1", cursor=3))
    stored: dict[str, str] = {"old": "door-9"}  # scan id -> device that pushed it

    # hello -> welcome (resync) -> snapshot
    assert pump(device, server) == 2
    assert device.state is DeviceState.SYNCING
    assert server.actions() == [SendSnapshot()]
    server.send_snapshot(3, KEYNOTE, ["A1", "A2"], ["A1"])
    pump(device, server)
    actions = device.actions()
    assert [type(a) for a in actions] == [Welcomed, ApplySnapshot]
    assert actions[0].welcome.resync
    assert actions[1] == ApplySnapshot("E1", 3, KEYNOTE, ["A1", "A2"], ["A1"])
    assert device.state is DeviceState.READY
    assert server.state is ServerState.LIVE

    # the organizer changes something -> changes
    server.changed()
    assert server.actions() == [SendChanges(3)]
    new = [attendee(4, "A3"), Change(seq=5, kind="registrant", code="A1", deleted=True)]
    server.send_changes(3, 5, new)
    pump(device, server)
    assert device.actions() == [ApplyChanges(5, new)]
    assert device.cursor == server.sent_cursor == 5

    # a batch of scans -> judged, stored -> results
    batch = device.send_scans([scan("s1"), scan("s2", session_id="workshop-2"), scan("old")])
    assert device.scans_in_flight == {"s1", "s2", "old"}
    pump(device, server)
    [store] = server.actions()
    assert isinstance(store, StoreScans)
    assert store.batch == batch
    answer = judge_scans(store.scans, DEVICE, "keynote-1", stored)
    stored.update({r.scan_id: DEVICE for r in answer if r.result == ScanOutcome.ACCEPTED})
    server.send_results(store.batch, answer)
    pump(device, server)
    [record] = device.actions()
    assert isinstance(record, RecordResults)
    assert record.batch == batch
    assert {r.scan_id: r.result for r in record.results} == {
        "s1": ScanOutcome.ACCEPTED, "s2": ScanOutcome.REFUSED, "old": ScanOutcome.REFUSED}
    assert device.batches_in_flight == 0
    assert stored["s1"] == DEVICE

    # the same scan pushed again is a duplicate
    device.send_scans([scan("s1")])
    pump(device, server)
    [store] = server.actions()
    server.send_results(store.batch, judge_scans(store.scans, DEVICE, "keynote-1", stored))
    pump(device, server)
    [record] = device.actions()
    assert record.results == [ScanResult("s1", ScanOutcome.DUPLICATE)]

    # status carries the device's cursor
    device.send_status(scans_waiting=0, scans_quarantined=2, last_frame_at=T0)
    pump(device, server)
    [note] = server.actions()
    assert isinstance(note, NoteStatus)
    assert (note.status.cursor, note.status.scans_quarantined) == (5, 2)


def test_a_reconnect_with_a_current_cache_gets_only_the_changes() -> None:
    device = DeviceEnd(DEVICE, SOFTWARE, CacheState("keynote-1", "E1", 5))
    server = ServerEnd(ServerView(DEVICE, "keynote-1", "E1", cursor=8, horizon=2))
    server.changed()  # a change raced the connection
    pump(device, server)
    assert server.actions() == [SendChanges(5)]
    server.send_changes(5, 8, [attendee(7, "A9")])
    assert server.actions() == [SendChanges(8)]
    pump(device, server)
    actions = device.actions()
    assert [type(a) for a in actions] == [Welcomed, ApplyChanges]
    assert actions[0].welcome.resync is False
    assert actions[1] == ApplyChanges(8, [attendee(7, "A9")])
    server.send_changes(8, 8, [])
    assert pump(device, server) == 0
    assert device.cursor == 8
    assert device.state is DeviceState.READY


def test_a_reassigned_device_gets_a_snapshot_of_its_new_session() -> None:
    workshop = SessionInfo("workshop-2", "Workshop", False)
    device = DeviceEnd(DEVICE, SOFTWARE, CacheState("keynote-1", "E1", 50))
    server = ServerEnd(ServerView(DEVICE, "workshop-2", "E1", cursor=60))
    pump(device, server)
    assert server.actions() == [SendSnapshot()]
    server.send_snapshot(60, workshop, ["B1"], [])
    pump(device, server)
    assert device.actions()[-1] == ApplySnapshot("E1", 60, workshop, ["B1"], [])
    assert device.session_id == "workshop-2"


# -- shared admissions (issue 14) -----------------------------------------------------


def test_admissions_go_only_to_a_device_that_asked_for_them() -> None:
    old = greeted(epoch=None)
    assert not old.wants_admissions
    old.data_to_send()
    old.send_snapshot(100, KEYNOTE, ["A1"], [], ["A1"], ["B2"])
    [text] = old.data_to_send()
    assert not {"admissions", "exits"} & set(json.loads(text))  # as an older server's

    new = greeted(epoch=None, admissions=True, allow_reentry=False)
    assert new.wants_admissions and new.hello is not None and new.hello.allow_reentry is False
    new.data_to_send()
    new.send_snapshot(100, KEYNOTE, ["A1", "B2"], [])  # none inside yet: empty, not left out
    [part] = frames(new)
    assert (part.admissions, part.exits) == ([], [])


def test_a_snapshot_splits_admissions_and_exits_into_parts_like_the_rest() -> None:
    step = MAX_ITEMS_PER_MESSAGE
    admissions = [f"I{i}" for i in range(2 * step + 5)]
    exits = [f"O{i}" for i in range(step + 1)]
    device = DeviceEnd(DEVICE, SOFTWARE, CacheState(None, None, 0), admissions=True)
    server = ServerEnd(VIEW)
    pump(device, server)
    assert server.actions() == [SendSnapshot()] and server.wants_admissions
    server.send_snapshot(100, KEYNOTE, ["A1"], ["A1"], admissions, exits)
    texts = server.data_to_send()
    parts = [parse_server_message(t) for t in texts]
    assert [len(p.admissions) for p in parts] == [step, step, 5]
    assert [len(p.exits) for p in parts] == [step, 1, 0]
    assert [len(p.attendees) for p in parts] == [1, 0, 0]
    device.actions()
    for text in texts:
        device.receive(text)
    assert device.actions() == [ApplySnapshot("E1", 100, KEYNOTE, ["A1"], ["A1"], admissions,
                                              exits)]


def test_admission_changes_reach_the_device_in_the_change_stream() -> None:
    end = greeted(cursor=60, admissions=True)
    assert end.actions() == [SendChanges(60)]
    changes = [Change(61, "admission", code="A1", inside=True),
               Change(62, "admission", code="B2", inside=False)]
    end.send_changes(60, 62, changes)
    [_, sent] = frames(end)
    assert sent == Changes(epoch="E1", since=60, cursor=62, changes=changes)
    end.changed()  # another door's admission: the changes since what was sent
    assert end.actions() == [SendChanges(62)]


# -- the code key (issue 17) ---------------------------------------------------

KEY = bytes(range(32))
KEYED = ServerView(device_id=DEVICE, session_id="keynote-1", epoch="E1", cursor=100,
                   horizon=20, code_key=KEY.hex())


def test_the_views_key_id_is_the_protocols() -> None:
    assert KEYED.key_id == code_key_id(KEY)
    assert VIEW.key_id is None


@pytest.mark.parametrize(
    ("overrides", "resync", "key_sent"),
    [
        ({}, False, False),  # an older door: no key, no resync for it
        ({"key_id": "0" * 16}, False, False),  # a key id without hashes: not a hashing door
        ({"hashes": False, "key_id": "0" * 16}, False, False),
        ({"hashes": True, "key_id": code_key_id(KEY)}, False, True),  # its key is the server's
        ({"hashes": True}, True, True),  # no key yet: a snapshot to hash with it
        ({"hashes": True, "key_id": "0" * 16}, True, True),  # another key (a new epoch's?)
        ({"hashes": True, "key_id": code_key_id(KEY), "epoch": "E0"}, True, True),
    ],
)
def test_a_hashing_door_gets_the_key_and_a_snapshot_when_its_key_is_not_the_servers(
        overrides: dict[str, Any], resync: bool, key_sent: bool) -> None:
    assert needs_snapshot(hello_message(**overrides), KEYED) is resync
    end = greeted(KEYED, **overrides)
    [welcome] = frames(end)
    assert isinstance(welcome, Welcome)
    assert welcome.resync is resync
    assert welcome.code_key == (KEY.hex() if key_sent else None)
    assert end.actions() == [SendSnapshot() if resync else SendChanges(60)]


def test_a_server_without_a_key_sends_none_and_never_resyncs_for_it() -> None:
    end = greeted(VIEW, hashes=True, key_id="0" * 16)
    [welcome] = frames(end)
    assert isinstance(welcome, Welcome)
    assert welcome.code_key is None and welcome.resync is False


def test_results_carry_the_servers_time_when_given() -> None:
    end = live()
    end.receive(scans(2, "a"), NOW)
    end.send_results(2, [ScanResult("a", ScanOutcome.ACCEPTED)], NOW)
    assert frames(end) == [ScanResults(2, [ScanResult("a", ScanOutcome.ACCEPTED)],
                                       server_time=NOW.isoformat())]
    end.receive(scans(3, "b"), NOW)
    end.send_results(3, [ScanResult("b", ScanOutcome.ACCEPTED)])
    [answer] = frames(end)
    assert isinstance(answer, ScanResults) and answer.server_time is None
