"""The server store on each storage: the news its writes send every server process
(``listen``), what it publishes, the link secret its processes share, and the rows
one storage refuses that the other takes (refused alone, with a reason)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from checkin.harness import until
from server.schema import LINK_SECRET_FILE
from server.store import Attendee, Device, ServerStore
from sync.messages import Scan, SessionInfo


def scan(code: str, session_id: str = "s1", **overrides: Any) -> Scan:
    values: dict[str, Any] = {
        "scan_id": str(uuid.uuid4()), "seq": 1, "code": code, "session_id": session_id,
        "decision": "admitted", "reason": "registered",
        "scanned_at": "2026-11-28T10:00:00.000+00:00", "monotonic_ns": 5, "boot_id": "boot"}
    return Scan(**(values | overrides))


class Inbox:
    """What a store's ``listen`` callback was given, in order."""

    def __init__(self) -> None:
        self.got: list[dict[str, Any]] = []

    def __call__(self, payload: dict[str, Any]) -> None:
        self.got.append(payload)

    async def through(self, store: ServerStore, marker: str) -> list[dict[str, Any]]:
        """Every notification up to *store*'s published *marker* (notifications come in
        commit order: all that committed before it are in), and forget them."""
        await store.publish({"event": "marker", "name": marker})
        await until(lambda: any(p.get("name") == marker for p in self.got), 30,
                    f"the notification {marker!r}")
        end = next(i for i, p in enumerate(self.got) if p.get("name") == marker)
        news, self.got = self.got[:end], self.got[end + 1:]
        return news


@pytest.fixture
async def store(server_target: Path | str) -> AsyncIterator[ServerStore]:
    store = await ServerStore.open(server_target)
    await store.put_session(SessionInfo("s1", "One", False))
    await store.put_session(SessionInfo("s2", "Two", False))
    await store.upsert_attendees([Attendee(c, c) for c in ("A1", "B2", "C3")])
    yield store
    await store.close()


def seq_news(store: ServerStore, seq: int, session: str | None,
             admissions: bool = False) -> dict[str, Any]:
    return {"seq": seq, "session": session, "admissions": admissions, "origin": store.origin}


async def test_each_write_that_takes_seqs_tells_once_per_session(store: ServerStore) -> None:
    inbox = Inbox()
    await store.listen(inbox)
    await store.put_registrants("s1", ["A1", "B2", "C3"])  # three seqs, one session
    view = await store.view(Device("door-1", "s1"))
    assert await inbox.through(store, "registrants") == [seq_news(store, view.cursor, "s1")]

    await store.upsert_attendees([Attendee("D4", "D")])  # every device's news
    await store.put_session(SessionInfo("s2", "Two renamed", False))
    await store.delete_registrant("s1", "C3")
    cursor = (await store.view(Device("door-1", "s1"))).cursor
    assert await inbox.through(store, "three writes") == [
        seq_news(store, cursor - 2, None), seq_news(store, cursor - 1, "s2"),
        seq_news(store, cursor, "s1")]

    # Writes that take no seq are not news for doors.
    await store.put_session(SessionInfo("s2", "Two renamed", False))  # unchanged
    await store.upsert_attendees([Attendee("A1", "Ann")])  # a name: not the doors' business
    await store.note_status("door-1", {"cursor": 1})
    assert await inbox.through(store, "nothing") == []


async def test_a_group_commit_tells_each_session_once_and_admissions_as_such(
        store: ServerStore) -> None:
    for door, session in (("door-1", "s1"), ("door-2", "s1"), ("door-3", "s2")):
        await store.put_device(door, session)
    inbox = Inbox()
    await store.listen(inbox)
    await asyncio.gather(  # one group commit: three batches, two sessions
        store.store_scans(Device("door-1", "s1"), [scan("A1")]),
        store.store_scans(Device("door-2", "s1"), [scan("B2")]),
        store.store_scans(Device("door-3", "s2"), [scan("A1", "s2")]))
    cursor = (await store.view(Device("door-1", "s1"))).cursor
    news = await inbox.through(store, "scans")
    assert sorted(news, key=lambda p: p["session"]) == [
        seq_news(store, cursor, "s1", admissions=True),
        seq_news(store, cursor, "s2", admissions=True)]

    # A rejected scan changes no presence: no seq, no news.
    await store.store_scans(Device("door-1", "s1"), [scan("C3", decision="rejected",
                                                          reason="not_registered")])
    assert await inbox.through(store, "rejected") == []


async def test_published_events_reach_every_listener_with_their_origin(
        server_targets: Any, storage: str) -> None:
    first = await ServerStore.open(server_targets("one"))
    # On PostgreSQL, a second server process's store on the same database; SQLite has
    # one process, whose store is the only one to hear.
    second = (await ServerStore.open(server_targets("one")) if storage == "postgresql"
              else first)
    try:
        mine, theirs = Inbox(), Inbox()
        await first.listen(mine)
        await second.listen(theirs)
        await first.put_session(SessionInfo("s1", "One", False))
        event = {"event": "disconnect", "devices": ["door-1"], "code": 4001, "reason": "r"}
        await first.publish(event)
        cursor = (await second.view(Device("door-1", "s1"))).cursor
        for inbox in (mine, theirs):
            assert await inbox.through(first, "end") == [
                seq_news(first, cursor, "s1"), event | {"origin": first.origin}]
        assert first.origin != second.origin or second is first
    finally:
        await first.close()
        if second is not first:
            await second.close()


async def test_every_server_process_makes_the_same_schedule_links(
        server_targets: Any, storage: str, tmp_path: Path) -> None:
    target = server_targets("one")
    first = await ServerStore.open(target)
    second = await ServerStore.open(target)  # another process's store, started with it
    try:
        await first.upsert_attendees([Attendee("A1", "Ann")])
        token = await first.schedule_link("A1")
        assert await second.schedule_link("A1") == token
        assert await second.attendee_by_schedule_token(token) == Attendee("A1", "Ann")
    finally:
        await first.close()
        await second.close()
    # SQLite keeps the secret beside its file; PostgreSQL in the database, for every host.
    assert (tmp_path / "one" / LINK_SECRET_FILE).exists() == (storage == "sqlite")


async def test_a_scan_one_storage_cannot_hold_is_refused_alone(store: ServerStore,
                                                               storage: str) -> None:
    """Text with a NUL: SQLite stores it, PostgreSQL refuses it (its text cannot hold
    one); a number past 64 bits and a lone surrogate: both refuse. Each such scan is
    refused with a reason, the rest of its batch and the group commit stored."""
    await store.put_device("door-1", "s1")
    await store.put_device("door-2", "s2")
    nul, huge, surrogate = (scan("A\x00B"), scan("B2", monotonic_ns=2**64),
                            scan("C3", boot_id="\udc80"))
    good, other = scan("A1"), scan("A1", "s2")
    mine, theirs = await asyncio.gather(
        store.store_scans(Device("door-1", "s1"), [nul, good, huge, surrogate]),
        store.store_scans(Device("door-2", "s2"), [other]))
    results = {r.scan_id: r for r in mine}
    assert results[good.scan_id].result == "accepted"
    assert [r.result for r in theirs] == ["accepted"]
    refused = {huge.scan_id, surrogate.scan_id} | (
        {nul.scan_id} if storage == "postgresql" else set())
    assert {i for i, r in results.items() if r.result == "refused"} == refused
    for scan_id in refused:
        assert results[scan_id].reason.startswith("the server cannot store this scan: ")
    stored = {s["scan_id"] for s in (await store.attendance("s1"))["scans"]}
    assert stored == {good.scan_id} | ({nul.scan_id} if storage == "sqlite" else set())
    # The store goes on: the next write and read work.
    await store.put_registrant("s1", "B2")
    assert (await store.attendance_live("s1"))["admitted"] == len(stored)


async def test_search_ignores_ascii_case_on_every_storage(store: ServerStore) -> None:
    await store.upsert_attendees([Attendee("X-9", "Zoë Ångström", "Zoe@Example.org")])
    for query in ("zoë", "ZOë", "example.ORG", "x-9"):
        total, found = await store.search_attendees(query)
        assert (total, [a.code for a in found]) == (1, ["X-9"]), query
    assert (await store.search_attendees("100%"))[0] == 0  # % matches itself


async def test_a_door_time_the_database_cannot_read_never_breaks_the_pages(
        store: ServerStore, storage: str) -> None:
    """Times Python takes as ISO 8601 but PostgreSQL cannot cast (a week date, an hour
    alone, a decimal comma): SQLite stores them (its julianday reads them as unknown),
    PostgreSQL refuses each such scan alone; the live page and the exports work after."""
    await store.put_device("door-1", "s1")
    odd = [scan("B2", scanned_at=stamp) for stamp in (
        "2026-W48-6T10:00:00Z", "2026-11-28T10Z", "2026-11-28T10:00:00,5+00:00")]
    good = scan("A1")
    results = {r.scan_id: r.result for r in await store.store_scans(
        Device("door-1", "s1"), [*odd, good])}
    assert results[good.scan_id] == "accepted"
    assert {results[s.scan_id] for s in odd} == (
        {"refused"} if storage == "postgresql" else {"accepted"})
    live = await store.attendance_live("s1")
    assert live["scans"] == (1 if storage == "postgresql" else 4)
    assert await store.attendance_export_page("s1")
    assert (await store.scans_export_page("s1"))[1]


async def test_every_store_on_the_database_sees_a_renewed_epoch(server_targets: Any) -> None:
    first = await ServerStore.open(server_targets("one"))
    second = await ServerStore.open(server_targets("one"))  # another server process's
    try:
        epoch = await first.renew_epoch()
        assert epoch != second.epoch
        assert (await second.view(Device("door-1", None))).epoch == epoch == second.epoch
    finally:
        await first.close()
        await second.close()


async def test_a_search_with_a_nul_finds_nothing_rather_than_failing(store: ServerStore) -> None:
    await store.put_registrants("s1", ["A1"])
    assert await store.search_attendees("A\x00") == (0, [])
    assert await store.registrants_page("s1", "A\x00") == (0, [])
    assert await store.not_arrived("s1", "A\x00") == (0, [])


async def test_an_import_refreshes_the_planners_statistics_on_postgresql(
        store: ServerStore, storage: str) -> None:
    """PostgreSQL plans by statistics that autovacuum refreshes a minute or so after a
    bulk change: meanwhile, 10,000 registrants taken for a handful made the live page read
    every admission once per registrant (7 s; 72 s at 50,000). An import refreshes them."""
    if storage != "postgresql":
        pytest.skip("SQLite plans without statistics")
    codes = [f"R{i:05d}" for i in range(1500)]
    await store.upsert_attendees([Attendee(c, c) for c in codes])
    await store.put_registrants("s1", codes)
    async with store.database.read() as db:
        rows = {r["relname"]: r["reltuples"] for r in await db.fetchall(
            "SELECT relname, reltuples FROM pg_class"
            " WHERE relname IN ('attendees', 'registrants')")}
    assert rows == {"attendees": 1503, "registrants": 1500}
