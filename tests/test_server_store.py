"""The server's store on each storage (a real SQLite file, a PostgreSQL database):
sequence numbers, tombstones, snapshots, changes, idempotent scans and disagreement
flags."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from server.store import Attendee, Conflict, Device, NotFound, ServerStore
from sync.messages import Hello, Scan, SessionInfo
from sync.server_end import ServerView, needs_snapshot
from tests.system import store_dump


@pytest.fixture
async def store(server_target):
    store = await ServerStore.open(server_target)
    await store.put_session(SessionInfo("s1", "One", True))
    await store.upsert_attendees([Attendee(c, f"Name {c}") for c in ("A1", "B2", "C3")])
    yield store
    await store.close()


def scan(code: str, decision: str, reason: str, session: str | None = "s1") -> Scan:
    return Scan(str(uuid.uuid4()), 1, code, session, decision, reason,
                "2026-11-28T10:00:00+00:00", 5, "boot")


async def test_every_change_gets_its_own_increasing_seq(store) -> None:
    cursor, changes = await store.changes_since("s1", 0)
    assert [c.seq for c in changes] == list(range(1, cursor + 1))  # session + 3 attendees
    assert await store.put_registrant("s1", "A1") is True
    assert await store.put_registrant("s1", "A1") is False  # no change, no seq
    await store.delete_registrant("s1", "A1")
    after, changes = await store.changes_since("s1", cursor)
    assert after == cursor + 2
    # One row per registrant with its latest state: a tombstone, not add-then-delete.
    assert [(c.kind, c.code, c.deleted, c.seq) for c in changes] == [
        ("registrant", "A1", True, after)]


async def test_changes_concern_only_the_devices_session(store) -> None:
    await store.put_session(SessionInfo("s2", "Two", False))
    cursor, _ = await store.changes_since("s1", 0)
    await store.put_registrant("s2", "B2")
    await store.upsert_attendees([Attendee("D4", "New")])
    _, changes = await store.changes_since("s1", cursor)
    assert [(c.kind, c.code) for c in changes] == [("attendee", "D4")]


async def test_doors_woken_together_share_one_read_of_the_changes(store) -> None:
    cursor, _ = await store.changes_since("s1", 0)
    await store.put_registrant("s1", "A1")
    woken, reads = store.read_mark(), store.read_mark()
    answers = await asyncio.gather(*(store.changes_since("s1", cursor, fresh_after=woken)
                                     for _ in range(50)))
    assert store.read_mark() == reads + 1  # one read for the fifty
    assert {(a[0], tuple(c.code for c in a[1])) for a in answers} == {(cursor + 1, ("A1",))}
    # Without a mark (or another cursor, or kind), nobody shares.
    await asyncio.gather(store.changes_since("s1", cursor), store.changes_since("s1", cursor),
                         store.changes_since("s1", cursor - 1, fresh_after=woken),
                         store.changes_since("s1", cursor, True, fresh_after=woken))
    assert store.read_mark() == reads + 5


async def test_a_read_begun_before_a_door_was_woken_is_not_shared_with_it(store) -> None:
    cursor, _ = await store.changes_since("s1", 0)
    early = asyncio.ensure_future(store.changes_since("s1", cursor,
                                                      fresh_after=store.read_mark()))
    await asyncio.sleep(0)  # the early read is under way
    await store.put_registrant("s1", "B2")  # commits, then wakes the door:
    woken = store.read_mark()
    late = await store.changes_since("s1", cursor, fresh_after=woken)
    assert [c.code for c in late[1]] == ["B2"]  # whatever the early read saw
    await early


async def test_a_caller_going_away_does_not_cancel_the_shared_read(store) -> None:
    cursor, _ = await store.changes_since("s1", 0)
    await store.put_registrant("s1", "C3")
    woken = store.read_mark()
    leaving = asyncio.ensure_future(store.changes_since("s1", cursor, fresh_after=woken))
    staying = asyncio.ensure_future(store.changes_since("s1", cursor, fresh_after=woken))
    await asyncio.sleep(0)
    leaving.cancel()
    assert [c.code for c in (await staying)[1]] == ["C3"]
    assert leaving.cancelled()


async def test_renaming_an_attendee_is_not_a_change_for_doors(store) -> None:
    cursor, _ = await store.changes_since("s1", 0)
    assert await store.upsert_attendees([Attendee("A1", "Renamed", "a@example.org")]) == (0, 1)
    assert (await store.changes_since("s1", cursor))[1] == []


async def test_session_updates_and_deletion_reach_the_device_as_session_changes(store) -> None:
    cursor, _ = await store.changes_since("s1", 0)
    await store.put_session(SessionInfo("s1", "One", True))  # unchanged: nothing
    assert (await store.changes_since("s1", cursor))[1] == []
    await store.put_session(SessionInfo("s1", "One", False, "2026-11-28T09:00:00+00:00"))
    _, changes = await store.changes_since("s1", cursor)
    assert changes[-1].session == SessionInfo("s1", "One", False, "2026-11-28T09:00:00+00:00")
    await store.put_registrant("s1", "A1")
    with pytest.raises(Conflict, match="1 registrant"):
        await store.delete_session("s1")
    await store.delete_registrant("s1", "A1")
    await store.delete_session("s1")
    _, changes = await store.changes_since("s1", cursor)
    assert changes[-1].kind == "session" and changes[-1].session is None
    with pytest.raises(NotFound):
        await store.put_registrant("s1", "A1")


async def test_a_snapshot_holds_the_live_rows_and_its_cursor(store) -> None:
    await store.put_registrant("s1", "A1")
    await store.put_registrant("s1", "B2")
    await store.delete_registrant("s1", "B2")
    cursor, session, attendees, registrants = await store.snapshot("s1")
    assert cursor == (await store.changes_since("s1", 0))[0]
    assert session == SessionInfo("s1", "One", True)
    assert sorted(attendees) == ["A1", "B2", "C3"] and registrants == ["A1"]
    assert (await store.snapshot(None))[1:] == (None, ["A1", "B2", "C3"], [])


async def test_pruned_tombstones_make_older_cursors_resync(store) -> None:
    await store.put_registrant("s1", "A1")
    await store.delete_registrant("s1", "A1")
    cursor, _ = await store.changes_since("s1", 0)
    assert await store.prune_tombstones(cursor) == 1
    assert await store.changes_since("s1", 1) is None  # a connected device must resync
    assert (await store.changes_since("s1", cursor))[0] == cursor
    view = await store.view(Device("d", "s1"))
    assert view.horizon == cursor
    old = Hello(device_id="d", software="t", session_id="s1", epoch=store.epoch, cursor=1)
    fresh = Hello(device_id="d", software="t", session_id="s1", epoch=store.epoch,
                  cursor=cursor)
    assert needs_snapshot(old, view) and not needs_snapshot(fresh, view)
    assert view == ServerView("d", "s1", store.epoch, cursor, cursor, view.code_key)


async def test_scans_are_stored_once_by_id_with_the_devices_facts(store) -> None:
    device = Device("door-1", "s1")
    first = scan("A1", "admitted", "registered")
    assert [r.result for r in await store.store_scans(device, [first])] == ["accepted"]
    second = scan("B2", "rejected", "not_registered")
    results = await store.store_scans(device, [first, second])
    assert [r.result for r in results] == ["duplicate", "accepted"]
    attendance = await store.attendance("s1")
    assert [s["scan_id"] for s in attendance["scans"]] == [first.scan_id, second.scan_id]
    assert attendance["scans"][0]["scanned_at"] == first.scanned_at
    assert (attendance["admitted"], attendance["rejected"]) == (1, 1)


async def test_offline_verdicts_are_kept_and_disagreements_flagged(store) -> None:
    await store.put_registrant("s1", "B2")
    device = Device("door-1", "s1")
    stale = [scan("A1", "admitted", "registered"),        # A1 is no longer a registrant
             scan("B2", "rejected", "not_registered"),    # B2 became one
             scan("B2", "admitted", "registered"),        # agrees
             scan("ZZ", "rejected", "unknown_code")]      # agrees
    await store.store_scans(device, stale)
    flags = {s["scan_id"]: s for s in (await store.attendance("s1"))["scans"]}
    assert [flags[s.scan_id]["disagreement"] for s in stale] == [
        "server data says not_registered", "server data says registered", None, None]
    assert [flags[s.scan_id]["decision"] for s in stale] == [s.decision for s in stale]


async def test_device_tokens_are_stored_hashed_and_revocable(store, server_target) -> None:
    token, previous = await store.put_device("door-1", "s1")
    assert token and previous is None
    assert await store.device_by_token(token) == Device("door-1", "s1")
    assert await store.device_by_token(token + "x") is None
    assert token not in store_dump(server_target)
    await store.put_session(SessionInfo("s2", "Two", False))
    assert await store.put_device("door-1", "s2") == (None, "s1")
    await store.revoke_device("door-1")
    assert await store.device_by_token(token) is None
    with pytest.raises(NotFound):
        await store.revoke_device("door-1")


async def test_a_new_database_has_a_new_epoch(server_targets) -> None:
    first = await ServerStore.open(server_targets("a"))
    second = await ServerStore.open(server_targets("b"))
    reopened_epoch = first.epoch
    await first.close()
    again = await ServerStore.open(server_targets("a"))
    try:
        assert first.epoch != second.epoch and again.epoch == reopened_epoch
    finally:
        await second.close()
        await again.close()


async def test_batches_pushed_at_once_are_committed_together_and_judged_in_order(store) -> None:
    doors = [Device(f"door-{n}", "s1") for n in range(50)]
    batches = [[scan("A1", "admitted", "registered")] for _ in doors]
    contested = scan("B2", "rejected", "not_registered")
    answers = await asyncio.gather(
        *(store.store_scans(d, b) for d, b in zip(doors, batches, strict=True)),
        store.store_scans(doors[0], [contested]),
        store.store_scans(doors[1], [contested]),  # the same id from another door
    )
    assert all(a[0].result == "accepted" for a in answers[:51])
    assert answers[51][0].result == "refused"
    assert len((await store.attendance("s1"))["scans"]) == 51
