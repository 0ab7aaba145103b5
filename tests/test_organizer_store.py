"""The server store's methods for the organizers' pages and imports (issue 12): the
attendee directory and the Registrants box a page at a time, "Delete All", the sessions
overview, and attendees' schedule links, on each storage (a real SQLite file, a PostgreSQL
database)."""

from __future__ import annotations

import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from core.database import connect
from server.schema import LINK_SECRET_FILE, MIGRATIONS, SERVER_FILE
from server.store import Attendee, NotFound, ServerStore
from server.tokens import token_hash
from sync.messages import SessionInfo
from tests.conftest import sqlite_only


@pytest.fixture
async def store(server_target: Path | str) -> AsyncIterator[ServerStore]:
    store = await ServerStore.open(server_target)
    await store.upsert_attendees(
        [Attendee(f"C{i:03d}", f"Name {i:03d}", f"person{i}@example.org") for i in range(120)]
        + [Attendee("ODD_1", "100% Zoë", None), Attendee("MIX", "mixed Case", "Mix@Example.org")])
    await store.put_session(SessionInfo("s1", "Morning", True, "2026-11-28T09:00:00+00:00"))
    await store.put_session(SessionInfo("s2", "Any time", False))
    yield store
    await store.close()


async def test_search_pages_through_the_directory_by_name(store: ServerStore) -> None:
    total, page = await store.search_attendees(limit=50)
    assert total == 122 and len(page) == 50
    assert page[0] == Attendee("ODD_1", "100% Zoë", None)  # by name: digits first
    total, page = await store.search_attendees("name 11", limit=5, offset=5)
    assert total == 10 and [a.code for a in page] == ["C115", "C116", "C117", "C118", "C119"]
    assert (await store.search_attendees("MIXED"))[0] == 1  # ignoring case
    assert (await store.search_attendees("example.ORG"))[0] == 121  # emails too
    assert (await store.search_attendees("%"))[0] == 1  # % and _ match only themselves
    assert (await store.search_attendees("D_1"))[0] == 1


async def test_registrants_page_and_remove_registrants(store: ServerStore) -> None:
    assert await store.put_registrants("s1", [f"C{i:03d}" for i in range(100)]) == 100
    total, page = await store.registrants_page("s1", limit=10, offset=95)
    assert total == 100 and [a.code for a in page] == [f"C{i:03d}" for i in range(95, 100)]
    assert (await store.registrants_page("s1", "name 05"))[0] == 10
    before = (await store.changes_since("s1", 0))[0]
    assert await store.remove_registrants("s1", ["C000", "C001", "C000", "C119"]) == 2
    assert await store.remove_registrants("s1") == 98
    assert await store.remove_registrants("s1") == 0
    assert (await store.registrants_page("s1"))[0] == 0
    cursor, changes = await store.changes_since("s1", before)
    removals = [c for c in changes if c.kind == "registrant"]
    assert len(removals) == 100 and all(c.deleted for c in removals)
    assert len({c.seq for c in removals}) == 100 and cursor == max(c.seq for c in removals)
    await store.delete_session("s1")  # the seed's rule, now satisfied
    with pytest.raises(NotFound):
        await store.registrants_page("s1")
    with pytest.raises(NotFound):
        await store.remove_registrants("s1")


async def test_session_overview_and_an_attendees_schedule(store: ServerStore) -> None:
    await store.put_registrants("s2", ["C001", "C002"])
    overview = await store.session_overview()
    assert [(s["session_id"], s["registered"], s["admitted"]) for s in overview] == [
        ("s1", 0, 0), ("s2", 2, 0)]  # soonest first, those without a time last
    assert overview[0]["validate_registrants"] is True
    schedule = await store.attendee_schedule("C001")
    assert [(s["session_id"], s["registered"]) for s in schedule] == [("s1", False),
                                                                     ("s2", True)]
    with pytest.raises(NotFound):
        await store.attendee_schedule("NOBODY")


async def test_lookups_for_imports(store: ServerStore) -> None:
    assert await store.existing_codes(["C001", "NOPE", "C001"]) == {"C001"}
    await store.upsert_attendees([Attendee("TWIN", "Twin", "person1@EXAMPLE.org")])
    emails = await store.codes_by_email()
    assert emails["mix@example.org"] == "MIX"
    assert emails["person1@example.org"] == ""  # two attendees: says neither
    await store.put_registrants("s1", ["C001"])
    assert await store.registered_among("s1", ["C001", "C002"]) == {"C001"}
    assert await store.session_exists("s1") and not await store.session_exists("s9")


@sqlite_only  # the link secret's file and the database's bytes are SQLite's
async def test_schedule_links_are_stable_stored_hashed_and_revocable(tmp_path: Path,
                                                                     store: ServerStore) -> None:
    token = await store.schedule_link("C007")
    assert len(token) >= 43 and token == await store.schedule_link("C007")
    assert token != await store.schedule_link("C008")
    assert await store.attendee_by_schedule_token(token) == Attendee(
        "C007", "Name 007", "person7@example.org")
    assert await store.attendee_by_schedule_token(token + "x") is None
    secret = tmp_path / LINK_SECRET_FILE
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    database = (tmp_path / SERVER_FILE).read_bytes() + (
        tmp_path / f"{SERVER_FILE}-wal").read_bytes()
    assert token.encode() not in database and token_hash(token).encode() in database
    await store.close()
    store2 = await ServerStore.open(tmp_path)  # the same link after a restart
    try:
        assert await store2.schedule_link("C007") == token
        await store2.revoke_schedule_link("C007")
        assert await store2.attendee_by_schedule_token(token) is None
        renewed = await store2.schedule_link("C007")
        assert renewed != token and await store2.attendee_by_schedule_token(renewed)
        with pytest.raises(NotFound):
            await store2.schedule_link("NOBODY")
    finally:
        await store2.close()
    secret.unlink()  # a data dir restored without its link secret
    store3 = await ServerStore.open(tmp_path)
    try:
        again = await store3.schedule_link("C007")
        assert again != renewed and await store3.attendee_by_schedule_token(again)
        assert await store3.attendee_by_schedule_token(renewed) is None
    finally:
        await store3.close()


async def test_a_version_3_database_is_migrated(tmp_path: Path) -> None:
    old = await connect(tmp_path / SERVER_FILE, MIGRATIONS[:3])
    await old.close()
    store = await ServerStore.open(tmp_path)
    try:
        await store.upsert_attendees([Attendee("A1", "Ann")])
        assert await store.attendee_by_schedule_token(await store.schedule_link("A1"))
    finally:
        await store.close()
