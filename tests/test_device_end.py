"""The device's end of the sync protocol, fed message by message (no sockets, no store)."""

from __future__ import annotations

from typing import Any

import pytest

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
    parse_device_message,
    parse_server_message,
)

DEVICE = "door-1"
SOFTWARE = "checkin 0.1.0"
T0 = "2026-11-28T10:00:00+01:00"
KEYNOTE = SessionInfo("keynote-1", "Opening keynote", True)
WORKSHOP = SessionInfo("workshop-2", "Workshop", False)


def welcome(**overrides: Any) -> str:
    values: dict[str, Any] = {"device_id": DEVICE, "session_id": "keynote-1", "epoch": "E1",
                              "cursor": 10, "server_time": T0, "resync": False}
    values.update(overrides)
    return encode(Welcome(**values))


def snapshot(part: int = 0, last: bool = True, **overrides: Any) -> str:
    values: dict[str, Any] = {"epoch": "E1", "cursor": 10, "session": KEYNOTE,
                              "attendees": [], "registrants": []}
    values.update(overrides)
    return encode(Snapshot(part=part, last=last, **values))


def changes(since: int, cursor: int, items: list[Change] | None = None, epoch: str = "E1") -> str:
    return encode(Changes(epoch=epoch, since=since, cursor=cursor, changes=items or []))


def attendee(seq: int, code: str = "ATT-0001", deleted: bool = False) -> Change:
    return Change(seq=seq, kind="attendee", code=code, deleted=deleted)


def registrant(seq: int, code: str = "ATT-0001", deleted: bool = False) -> Change:
    return Change(seq=seq, kind="registrant", code=code, deleted=deleted)


def results(batch: int, *items: tuple[str, str]) -> str:
    return encode(ScanResults(batch=batch, results=[
        ScanResult(scan_id, result, "why" if result == ScanOutcome.REFUSED else None)
        for scan_id, result in items
    ]))


def scan(scan_id: str) -> Scan:
    return Scan(scan_id=scan_id, seq=1, code="ATT-0001", session_id="keynote-1",
                decision="admitted", reason="registered", scanned_at=T0, monotonic_ns=1,
                boot_id="boot")


def fresh() -> DeviceEnd:
    """A device whose cache was never synced."""
    return DeviceEnd(DEVICE, SOFTWARE, CacheState(session_id=None, epoch=None, cursor=0))


def synced(cursor: int = 10) -> DeviceEnd:
    """A device whose cache holds epoch E1 up to *cursor*, for session keynote-1."""
    return DeviceEnd(DEVICE, SOFTWARE, CacheState("keynote-1", "E1", cursor))


def welcomed(end: DeviceEnd | None = None, **overrides: Any) -> DeviceEnd:
    """*end* (default: synced) after a welcome, with its queues emptied."""
    end = end or synced()
    end.receive(welcome(**overrides))
    end.data_to_send()
    end.actions()
    return end


# -- hello ---------------------------------------------------------------------


@pytest.mark.parametrize("cache", [CacheState(None, None, 0), CacheState("keynote-1", "E1", 42)])
def test_hello_is_queued_first_with_the_cache_state(cache: CacheState) -> None:
    end = DeviceEnd(DEVICE, SOFTWARE, cache)
    assert end.state is DeviceState.AWAIT_WELCOME
    frames = end.data_to_send()
    assert len(frames) == 1
    hello = parse_device_message(frames[0])
    assert hello == Hello(device_id=DEVICE, software=SOFTWARE, session_id=cache.session_id,
                          epoch=cache.epoch, cursor=cache.cursor, v=PROTOCOL_VERSION)
    assert end.data_to_send() == []
    assert end.actions() == []
    assert (end.session_id, end.epoch, end.cursor) == (cache.session_id, cache.epoch, cache.cursor)


# -- welcome -------------------------------------------------------------------


def test_a_welcome_moves_to_syncing_and_is_handed_on() -> None:
    end = synced()
    end.data_to_send()
    end.receive(welcome())
    assert end.state is DeviceState.SYNCING
    actions = end.actions()
    assert actions == [Welcomed(parse_server_message(welcome()))]
    assert isinstance(actions[0], Welcomed)
    assert actions[0].welcome.device_id == DEVICE
    assert end.data_to_send() == []  # a welcome needs no answer
    assert end.cursor == 10  # nothing applied yet


def test_a_welcome_for_another_device_is_refused() -> None:
    end = synced()
    with pytest.raises(ProtocolError, match="welcome is for device 'door-2', this is 'door-1'"):
        end.receive(welcome(device_id="door-2"))
    assert end.state is DeviceState.AWAIT_WELCOME
    assert end.actions() == []


def test_a_welcome_in_another_protocol_version_is_refused() -> None:
    end = synced()
    with pytest.raises(ProtocolError,
                       match=f"server speaks protocol 2, this device {PROTOCOL_VERSION}"):
        end.receive(welcome(v=2))
    assert end.state is DeviceState.AWAIT_WELCOME
    assert end.actions() == []


def test_a_second_welcome_is_refused() -> None:
    end = welcomed()
    with pytest.raises(ProtocolError, match="second welcome"):
        end.receive(welcome())
    end.receive(changes(10, 10))
    with pytest.raises(ProtocolError, match="second welcome"):
        end.receive(welcome(resync=True))


def test_a_welcome_without_resync_from_another_epoch_is_refused() -> None:
    with pytest.raises(ProtocolError, match=r"welcome without resync .* another epoch"):
        synced().receive(welcome(epoch="E2"))
    with pytest.raises(ProtocolError, match=r"welcome without resync .* another epoch"):
        fresh().receive(welcome(resync=False))


@pytest.mark.parametrize("end", [fresh, synced])
def test_a_resync_welcome_may_name_another_epoch(end: Any) -> None:
    device = end()
    device.receive(welcome(epoch="E9", resync=True))
    assert device.state is DeviceState.SYNCING
    [action] = device.actions()
    assert isinstance(action, Welcomed)
    assert action.welcome.resync
    assert action.welcome.epoch == "E9"


@pytest.mark.parametrize(
    "message",
    [snapshot(), changes(10, 12, [attendee(11)]), results(1, ("a", ScanOutcome.ACCEPTED))],
    ids=["snapshot", "changes", "scan_results"],
)
def test_messages_before_the_welcome_are_refused(message: str) -> None:
    end = synced()
    kind = parse_server_message(message).type
    with pytest.raises(ProtocolError, match=f"^{kind} before welcome$"):
        end.receive(message)
    assert end.state is DeviceState.AWAIT_WELCOME
    assert end.actions() == []
    assert end.cursor == 10


def test_a_frame_that_is_not_a_server_message_is_refused() -> None:
    end = welcomed()
    with pytest.raises(ProtocolError, match="binary frame"):
        end.receive(welcome().encode())
    with pytest.raises(ProtocolError, match='unknown message type "hello"'):
        end.receive(encode(Hello(DEVICE, SOFTWARE, None, None, 0)))


# -- snapshots -----------------------------------------------------------------


def test_a_snapshot_in_several_parts_is_applied_once_on_the_last_part() -> None:
    end = welcomed(fresh(), epoch="E2", cursor=77, resync=True)
    end.receive(snapshot(0, False, epoch="E2", cursor=77, attendees=["A1", "A2"],
                         registrants=["A1"]))
    assert end.actions() == []
    assert end.state is DeviceState.SYNCING
    end.receive(snapshot(1, False, epoch="E2", cursor=77, attendees=["A3"]))
    assert end.actions() == []
    assert (end.epoch, end.cursor, end.session_id) == (None, 0, None)  # nothing applied yet
    end.receive(snapshot(2, True, epoch="E2", cursor=77, attendees=["A4"],
                         registrants=["A2", "A3"]))
    assert end.actions() == [ApplySnapshot("E2", 77, KEYNOTE, ["A1", "A2", "A3", "A4"],
                                           ["A1", "A2", "A3"])]
    assert end.state is DeviceState.READY
    assert (end.epoch, end.cursor, end.session_id) == ("E2", 77, "keynote-1")
    assert end.actions() == []


def test_a_one_part_snapshot_without_a_session_clears_the_session() -> None:
    end = welcomed(synced(), epoch="E3", cursor=5, resync=True)
    end.receive(snapshot(epoch="E3", cursor=5, session=None))
    assert end.actions() == [ApplySnapshot("E3", 5, None, [], [])]
    assert end.session_id is None
    assert end.cursor == 5  # a snapshot may move the cursor back (new epoch)
    assert end.state is DeviceState.READY


def test_a_second_snapshot_after_a_complete_one_starts_again_at_part_0() -> None:
    end = welcomed()
    end.receive(snapshot(attendees=["A1"]))
    assert [type(a) for a in end.actions()] == [ApplySnapshot]
    end.receive(snapshot(0, False, cursor=20, session=WORKSHOP, attendees=["B1"]))
    end.receive(snapshot(1, True, cursor=20, session=WORKSHOP, attendees=["B2"]))
    assert end.actions() == [ApplySnapshot("E1", 20, WORKSHOP, ["B1", "B2"], [])]
    assert end.session_id == "workshop-2"


def test_a_snapshot_part_without_part_0_is_refused() -> None:
    end = welcomed()
    with pytest.raises(ProtocolError, match="snapshot part 1 without part 0"):
        end.receive(snapshot(1, True))
    assert end.actions() == []
    assert end.state is DeviceState.SYNCING


@pytest.mark.parametrize(("second", "due"), [(2, 1), (0, 1), (5, 1)])
def test_snapshot_parts_out_of_order_are_refused(second: int, due: int) -> None:
    end = welcomed()
    end.receive(snapshot(0, False))
    with pytest.raises(ProtocolError, match=f"snapshot part {second} where {due} was due"):
        end.receive(snapshot(second, True))
    assert end.actions() == []


def test_a_later_part_out_of_order_is_refused() -> None:
    end = welcomed()
    end.receive(snapshot(0, False))
    end.receive(snapshot(1, False))
    with pytest.raises(ProtocolError, match="snapshot part 3 where 2 was due"):
        end.receive(snapshot(3, True))
    assert end.actions() == []


@pytest.mark.parametrize("difference", [{"epoch": "E2"}, {"cursor": 11},
                                        {"session": WORKSHOP}, {"session": None}])
def test_snapshot_parts_that_disagree_are_refused(difference: dict[str, Any]) -> None:
    end = welcomed()
    end.receive(snapshot(0, False, attendees=["A1"]))
    with pytest.raises(ProtocolError, match="snapshot parts disagree on epoch, cursor or session"):
        end.receive(snapshot(1, True, **difference))
    assert end.actions() == []
    assert end.state is DeviceState.SYNCING


def test_changes_in_the_middle_of_a_snapshot_are_refused() -> None:
    end = welcomed()
    end.receive(snapshot(0, False))
    with pytest.raises(ProtocolError, match="changes in the middle of a snapshot"):
        end.receive(changes(10, 11, [attendee(11)]))
    assert end.actions() == []


# -- changes -------------------------------------------------------------------


def test_changes_are_applied_and_move_to_ready() -> None:
    end = welcomed()
    assert end.state is DeviceState.SYNCING
    items = [attendee(11, "A1"), registrant(12, "A1"), attendee(14, "A2", deleted=True)]
    end.receive(changes(10, 15, items))
    assert end.actions() == [ApplyChanges(15, items)]
    assert end.state is DeviceState.READY
    assert end.cursor == 15
    end.receive(changes(15, 16, [registrant(16, "A1", deleted=True)]))
    assert end.actions() == [ApplyChanges(16, [registrant(16, "A1", deleted=True)])]
    assert end.cursor == 16


def test_state_goes_await_welcome_syncing_ready() -> None:
    end = synced()
    seen = [end.state]
    end.receive(welcome())
    seen.append(end.state)
    end.receive(changes(10, 10))
    seen.append(end.state)
    assert seen == [DeviceState.AWAIT_WELCOME, DeviceState.SYNCING, DeviceState.READY]


def test_changes_for_another_epoch_are_refused() -> None:
    end = welcomed()
    with pytest.raises(ProtocolError, match="changes for epoch 'E2', cache has 'E1'"):
        end.receive(changes(10, 11, [attendee(11)], epoch="E2"))
    assert end.actions() == []
    assert end.cursor == 10


def test_changes_on_a_cache_never_synced_are_refused() -> None:
    end = welcomed(fresh(), epoch="E1", resync=True)
    with pytest.raises(ProtocolError, match="changes for epoch 'E1', cache has None"):
        end.receive(changes(0, 1, [attendee(1)]))


def test_changes_that_leave_a_gap_are_refused() -> None:
    end = welcomed()
    with pytest.raises(ProtocolError, match="changes since 11, but this device's cursor is 10"):
        end.receive(changes(11, 12, [attendee(12)]))
    assert end.actions() == []
    assert end.cursor == 10
    assert end.state is DeviceState.SYNCING


def test_changes_whose_cursor_is_before_since_are_refused() -> None:
    end = welcomed()
    with pytest.raises(ProtocolError, match="changes cursor 9 before since 10"):
        end.receive(changes(10, 9))
    assert end.actions() == []


@pytest.mark.parametrize(
    "seqs",
    [[12, 11], [11, 13, 12], [10], [10, 11], [16], [11, 16], [0]],
    ids=["unsorted", "unsorted-3", "equal-to-since", "since-first", "past-cursor",
         "last-past-cursor", "zero"],
)
def test_change_seqs_must_be_sorted_and_inside_since_and_cursor(seqs: list[int]) -> None:
    end = welcomed()
    with pytest.raises(ProtocolError, match=r"out of order or outside \(since, cursor\]"):
        end.receive(changes(10, 15, [attendee(s) for s in seqs]))
    assert end.actions() == []
    assert end.cursor == 10
    assert end.state is DeviceState.SYNCING


def test_repeated_seqs_in_order_are_accepted() -> None:
    # Sorted, not strictly increasing: two changes in one server transaction.
    end = welcomed()
    items = [attendee(11, "A1"), registrant(11, "A1")]
    end.receive(changes(10, 11, items))
    assert end.actions() == [ApplyChanges(11, items)]


@pytest.mark.parametrize("since", [5, 9])
def test_changes_from_before_the_cursor_are_refused_as_a_replay(since: int) -> None:
    """Rows come in their latest state, but a stale frame replayed would put older states
    over newer ones: the server only ever sends the changes after what it last sent."""
    end = welcomed()
    with pytest.raises(ProtocolError, match=f"changes since {since}, but this device's "
                                            "cursor is 10"):
        end.receive(changes(since, 12, [attendee(11, "A2")]))
    assert end.actions() == [] and end.cursor == 10


def test_empty_changes_that_advance_the_cursor_are_applied() -> None:
    end = welcomed()
    end.receive(changes(10, 15))
    assert end.actions() == [ApplyChanges(15, [])]
    assert end.cursor == 15


def test_empty_changes_up_to_the_cursor_only_mark_the_device_ready() -> None:
    end = welcomed()
    end.receive(changes(10, 10))
    assert end.actions() == []
    assert end.state is DeviceState.READY
    assert end.cursor == 10


def test_a_session_change_updates_the_session_id() -> None:
    end = welcomed()
    end.receive(changes(10, 11, [Change(seq=11, kind="session", session=WORKSHOP)]))
    assert end.session_id == "workshop-2"
    [action] = end.actions()
    assert isinstance(action, ApplyChanges)
    assert action.changes[0].session == WORKSHOP
    end.receive(changes(11, 13, [attendee(12), Change(seq=13, kind="session", session=None)]))
    assert end.session_id is None
    assert end.cursor == 13


def test_a_refused_changes_message_leaves_the_session_alone() -> None:
    end = welcomed()
    with pytest.raises(ProtocolError):
        end.receive(changes(10, 11, [Change(seq=11, kind="session", session=WORKSHOP),
                                     attendee(99)]))
    assert end.session_id == "keynote-1"
    assert end.cursor == 10


def test_changes_may_follow_a_snapshot_at_its_cursor() -> None:
    end = welcomed(fresh(), epoch="E1", cursor=20, resync=True)
    end.receive(snapshot(cursor=20, attendees=["A1"]))
    end.actions()
    end.receive(changes(20, 21, [attendee(21, "A2")]))
    assert end.actions() == [ApplyChanges(21, [attendee(21, "A2")])]


# -- scans ---------------------------------------------------------------------


def test_scans_cannot_be_pushed_before_the_welcome() -> None:
    end = synced()
    end.data_to_send()
    with pytest.raises(ProtocolError, match="cannot push scans before welcome"):
        end.send_scans([scan("a")])
    assert end.data_to_send() == []
    assert end.batches_in_flight == 0


def test_an_empty_batch_is_a_programming_error() -> None:
    end = welcomed()
    with pytest.raises(ValueError, match="empty batch"):
        end.send_scans([])
    assert end.data_to_send() == []
    assert end.batches_in_flight == 0


def test_batches_are_numbered_and_tracked_while_in_flight() -> None:
    end = welcomed()  # SYNCING: scans may drain while the cache syncs
    assert end.state is DeviceState.SYNCING
    assert end.scans_in_flight == frozenset()
    first = end.send_scans([scan("a"), scan("b")])
    second = end.send_scans([scan("c")])
    assert (first, second) == (1, 2)
    frames = [parse_device_message(f) for f in end.data_to_send()]
    assert frames == [Scans(batch=1, scans=[scan("a"), scan("b")]),
                      Scans(batch=2, scans=[scan("c")])]
    assert end.batches_in_flight == 2
    assert end.scans_in_flight == {"a", "b", "c"}

    end.receive(results(1, ("b", ScanOutcome.DUPLICATE), ("a", ScanOutcome.ACCEPTED)))
    assert end.actions() == [RecordResults(1, [ScanResult("b", ScanOutcome.DUPLICATE),
                                               ScanResult("a", ScanOutcome.ACCEPTED)])]
    assert end.batches_in_flight == 1
    assert end.scans_in_flight == {"c"}
    assert end.send_scans([scan("d")]) == 3

    end.receive(results(2, ("c", ScanOutcome.REFUSED)))
    [action] = end.actions()
    assert action == RecordResults(2, [ScanResult("c", ScanOutcome.REFUSED, "why")])
    assert end.scans_in_flight == {"d"}


def test_results_carry_the_servers_time_when_it_says() -> None:
    """A later clock anchor for the door (issue 17); older servers leave it out."""
    end = welcomed()
    end.send_scans([scan("a")])
    end.receive(encode(ScanResults(batch=1, results=[ScanResult("a", ScanOutcome.ACCEPTED)],
                                   server_time=T0)))
    [action] = end.actions()
    assert action == RecordResults(1, [ScanResult("a", ScanOutcome.ACCEPTED)], T0)


def test_results_for_a_batch_not_in_flight_are_refused() -> None:
    end = welcomed()
    end.send_scans([scan("a")])
    with pytest.raises(ProtocolError, match="scan results for batch 7, which is not in flight"):
        end.receive(results(7, ("a", ScanOutcome.ACCEPTED)))
    assert end.batches_in_flight == 1
    end.receive(results(1, ("a", ScanOutcome.ACCEPTED)))
    end.actions()
    with pytest.raises(ProtocolError, match="batch 1, which is not in flight"):
        end.receive(results(1, ("a", ScanOutcome.ACCEPTED)))  # answered twice
    assert end.actions() == []


@pytest.mark.parametrize(
    "answer",
    [
        [("a", ScanOutcome.ACCEPTED)],
        [("a", ScanOutcome.ACCEPTED), ("b", ScanOutcome.ACCEPTED), ("c", ScanOutcome.ACCEPTED)],
        [("a", ScanOutcome.ACCEPTED), ("x", ScanOutcome.ACCEPTED)],
        [("a", ScanOutcome.ACCEPTED), ("a", ScanOutcome.ACCEPTED)],
        [("a", ScanOutcome.ACCEPTED), ("a", ScanOutcome.DUPLICATE), ("b", ScanOutcome.ACCEPTED)],
        [],
    ],
    ids=["missing", "extra", "other-id", "duplicate-id", "duplicate-plus-all", "empty"],
)
def test_results_that_do_not_match_the_batch_are_refused(answer: list[tuple[str, str]]) -> None:
    end = welcomed()
    end.send_scans([scan("a"), scan("b")])
    with pytest.raises(ProtocolError, match="scan results for batch 1 do not match its scans"):
        end.receive(results(1, *answer))
    assert end.actions() == []


# -- status --------------------------------------------------------------------


def test_status_before_the_welcome_is_dropped() -> None:
    end = synced()
    end.data_to_send()
    end.send_status(scans_waiting=1, scans_quarantined=0, last_frame_at=None)
    assert end.data_to_send() == []


def test_status_after_the_welcome_reports_the_current_cursor() -> None:
    end = welcomed()
    end.send_status(scans_waiting=3, scans_quarantined=1, last_frame_at=T0)
    end.receive(changes(10, 14))
    end.send_status(scans_waiting=0, scans_quarantined=0, last_frame_at=None)
    assert [parse_device_message(f) for f in end.data_to_send()] == [
        Status(software=SOFTWARE, cursor=10, scans_waiting=3, scans_quarantined=1,
               last_frame_at=T0),
        Status(software=SOFTWARE, cursor=14, scans_waiting=0, scans_quarantined=0,
               last_frame_at=None),
    ]


# -- queues --------------------------------------------------------------------


def test_frames_and_actions_are_each_returned_once_in_order() -> None:
    end = synced()
    assert len(end.data_to_send()) == 1
    assert end.data_to_send() == []
    end.receive(welcome())
    end.receive(changes(10, 11, [attendee(11)]))
    end.send_scans([scan("a")])
    end.send_status(scans_waiting=0, scans_quarantined=0, last_frame_at=None)
    actions = end.actions()
    assert [type(a) for a in actions] == [Welcomed, ApplyChanges]
    assert end.actions() == []
    frames = [parse_device_message(f) for f in end.data_to_send()]
    assert [f.type for f in frames] == ["scans", "status"]
    assert end.data_to_send() == []
    end.receive(results(1, ("a", ScanOutcome.ACCEPTED)))
    assert [type(a) for a in end.actions()] == [RecordResults]
    assert end.actions() == []



# -- issue 14: the other doors' admissions ----------------------------------------------


def test_hello_asks_for_admissions_and_tells_the_reentry_policy() -> None:
    end = DeviceEnd(DEVICE, SOFTWARE, CacheState("keynote-1", "E1", 10), admissions=True,
                    allow_reentry=False)
    [hello] = [parse_device_message(frame) for frame in end.data_to_send()]
    assert isinstance(hello, Hello)
    assert (hello.admissions, hello.allow_reentry) == (True, False)
    # a device that does not say so sends neither field: an older server reads its hello
    [plain] = synced().data_to_send()
    assert "admissions" not in plain and "allow_reentry" not in plain


def test_snapshot_parts_gather_admissions_and_exits() -> None:
    end = welcomed(fresh(), epoch="E2", cursor=77, resync=True)
    end.receive(snapshot(0, False, epoch="E2", cursor=77, admissions=["A1"], exits=[]))
    end.receive(snapshot(1, False, epoch="E2", cursor=77))  # a part with none of either
    end.receive(snapshot(2, True, epoch="E2", cursor=77, admissions=["A2"], exits=["A3"]))
    assert end.actions() == [ApplySnapshot("E2", 77, KEYNOTE, [], [], ["A1", "A2"], ["A3"])]


def test_a_snapshot_without_admissions_says_so() -> None:
    end = welcomed()
    end.receive(snapshot(attendees=["A1"]))
    [action] = end.actions()
    assert isinstance(action, ApplySnapshot)
    assert (action.admissions, action.exits) == (None, None)


def test_admission_changes_are_passed_on_in_order() -> None:
    end = welcomed()
    items = [Change(11, "admission", code="A1", inside=True),
             Change(12, "admission", code="A1", inside=False)]
    end.receive(changes(10, 12, items))
    assert end.actions() == [ApplyChanges(12, items)]


# -- issue 17: keyed hashes ------------------------------------------------------

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


def test_a_hashing_device_names_the_key_it_holds() -> None:
    cache = CacheState("keynote-1", "E1", 10, key_id=code_key_id(KEY))
    [frame] = DeviceEnd(DEVICE, SOFTWARE, cache, hashes=True).data_to_send()
    hello = parse_device_message(frame)
    assert (hello.hashes, hello.key_id) == (True, code_key_id(KEY))
    [frame] = DeviceEnd(DEVICE, SOFTWARE, CacheState(None, None, 0), hashes=True).data_to_send()
    assert '"key_id"' not in frame and '"hashes":true' in frame  # none held yet
    [frame] = DeviceEnd(DEVICE, SOFTWARE, cache).data_to_send()  # an older door: neither
    assert '"hashes"' not in frame and '"key_id"' not in frame


def test_the_welcomes_key_comes_with_the_snapshot() -> None:
    end = DeviceEnd(DEVICE, SOFTWARE, CacheState(None, None, 0), hashes=True)
    end.receive(welcome(resync=True, code_key=KEY.hex()))
    end.receive(snapshot(attendees=["A1"]))
    [_, action] = end.actions()
    assert isinstance(action, ApplySnapshot) and action.code_key == KEY
    assert end.key_id == code_key_id(KEY)


def test_a_welcome_without_a_key_keeps_the_one_held() -> None:
    end = DeviceEnd(DEVICE, SOFTWARE, CacheState("keynote-1", "E1", 10,
                                                 key_id=code_key_id(KEY)), hashes=True)
    end.receive(welcome(resync=True))
    end.receive(snapshot())
    [_, action] = end.actions()
    assert action.code_key is None  # the store hashes with the key it holds


def test_another_key_without_a_snapshot_is_a_protocol_error() -> None:
    """The cache is hashed with the key held: only a whole snapshot can change it."""
    held = CacheState("keynote-1", "E1", 10, key_id=code_key_id(KEY))
    end = DeviceEnd(DEVICE, SOFTWARE, held, hashes=True)
    end.receive(welcome(code_key=KEY.hex()))  # the same key: changes may follow
    assert end.state is DeviceState.SYNCING
    with pytest.raises(ProtocolError, match="another code key"):
        DeviceEnd(DEVICE, SOFTWARE, held, hashes=True).receive(welcome(code_key=OTHER_KEY.hex()))
    older = DeviceEnd(DEVICE, SOFTWARE, held)  # a device that keeps codes: no key for it
    older.receive(welcome(code_key=OTHER_KEY.hex()))
    assert older.state is DeviceState.SYNCING and older.code_key is None
