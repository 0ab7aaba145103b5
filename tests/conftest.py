"""Shared fixtures: device config files and pre-filled stores on real files."""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import signal
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest

from checkin.harness import CHECKIN, Postgres, door_config, process_env, toml
from core.rules import SessionRules
from sync.device_store import Store
from tests.system import Device, Server

#: The browser tests' fixtures (chromium, browsing), shared by their modules.
pytest_plugins = ("tests.browser",)

REPO = Path(__file__).resolve().parent.parent
#: Real QR images with their expected contents (Apache-2.0, from zxing-cpp: see its README.txt).
CORPUS = REPO / "tests" / "corpus" / "zxing-cpp-samples"
__all__ = ["CHECKIN", "CORPUS", "REPO", "STORAGES", "config_text", "fill_store", "read_scans",
           "require_postgres", "sqlite_only"]


def config_text(data_dir: Path, source: str, *, extra: str = "") -> str:
    """A door's config file (the harness's, with a quick camera), *extra* TOML after it."""
    return toml(door_config("door-test", data_dir=data_dir, source=source,
                            camera={"fps": 20, "frames_per_image": 2})) + extra


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., Path]:
    def make(source: str = "images:frames", *, extra: str = "", name: str = "door.toml") -> Path:
        path = tmp_path / name
        path.write_text(config_text(tmp_path / "data", source, extra=extra))
        return path

    return make


def fill_store(data_dir: Path, session: SessionRules, attendees: Iterable[str],
               registrants: Iterable[str]) -> None:
    """Pre-fill a device store as the sync daemon would after a full snapshot."""

    async def fill() -> None:
        store = await Store.open(data_dir)
        try:
            await store.replace_cache(session, attendees, registrants)
        finally:
            await store.close()

    asyncio.run(fill())


def read_scans(data_dir: Path) -> list[dict]:
    async def read() -> list[dict]:
        store = await Store.open(data_dir)
        try:
            return await store.scans()
        finally:
            await store.close()

    return asyncio.run(read())


@pytest.fixture
def subprocess_env() -> dict[str, str]:
    return process_env()


#: The server's two storages: every test that takes :func:`storage` (or a fixture built on
#: it: :func:`database`, :func:`module_database`, :func:`server_target`, :func:`server`) runs
#: once on each.
STORAGES = ["sqlite", "postgresql"]
#: A test (or module, as ``pytestmark``) on the SQLite storage alone: what it checks is
#: SQLite's own (its file, its locking), not the server's behaviour.
sqlite_only = pytest.mark.parametrize("storage", ["sqlite"], indirect=True)
#: The empty database each test's PostgreSQL database is a copy of (quicker than template1).
PG_TEMPLATE = "checkin_template"
_databases = itertools.count(1)


def require_postgres() -> None:
    """Skip the test, loudly, where PostgreSQL cannot run here; fail it instead when
    ``CHECKIN_REQUIRE_TOOLS=1`` (CI) says PostgreSQL must be tested."""
    if (why := Postgres.available()) is not None:
        message = f"PostgreSQL storage NOT TESTED: {why}"
        if os.environ.get("CHECKIN_REQUIRE_TOOLS") == "1":
            pytest.fail(message + ", and CHECKIN_REQUIRE_TOOLS=1 says it must be")
        pytest.skip(message)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """One throwaway PostgreSQL cluster for the whole run, stopped at its end (whatever
    happened). Skips, loudly, where PostgreSQL is not installed, unless
    ``CHECKIN_REQUIRE_TOOLS=1`` (CI) says it must be: then the tests fail."""
    require_postgres()
    # fsync off: a test's data need not outlive a crash of the machine, and the run is quicker.
    with Postgres(fsync=False) as cluster:
        cluster.create_database(PG_TEMPLATE, template="template0")
        yield cluster


# Module scope, so that a module's shared server (a module-scoped fixture on
# module_database) can be parametrized too; pytest then runs a module's tests storage by
# storage.
@pytest.fixture(scope="module", params=STORAGES)
def storage(request: pytest.FixtureRequest) -> str:
    """The server's storage this run of the test is on: ``sqlite`` or ``postgresql``."""
    return request.param


def _fresh_database(storage: str, request: pytest.FixtureRequest) -> Iterator[str | None]:
    """``None`` on ``sqlite``; on ``postgresql``, a new database's URL, dropped after."""
    if storage == "sqlite":
        yield None
        return
    cluster: Postgres = request.getfixturevalue("postgres")
    slug = re.sub(r"[^a-z0-9]+", "_", request.node.name.lower())[:40]
    name = f"t{next(_databases)}_{slug}"
    url = cluster.create_database(name, template=PG_TEMPLATE)
    yield url
    cluster.drop_database(name)


@pytest.fixture
def database(storage: str, request: pytest.FixtureRequest) -> Iterator[str | None]:
    """The URL of a fresh PostgreSQL database of the test's own (dropped after it) on
    ``postgresql``; ``None`` on ``sqlite`` (the store is the SQLite file in its data dir).
    What :class:`Server`'s ``database`` takes."""
    yield from _fresh_database(storage, request)


@pytest.fixture(scope="module")
def module_database(storage: str, request: pytest.FixtureRequest) -> Iterator[str | None]:
    """:func:`database` for a module's shared server (a module-scoped fixture)."""
    yield from _fresh_database(storage, request)


@pytest.fixture
def server_target(database: str | None, tmp_path: Path) -> Path | str:
    """What ``ServerStore.open`` takes, on the test's storage: the test's own folder (its
    SQLite file inside) or its own PostgreSQL database's URL."""
    return tmp_path if database is None else database


@pytest.fixture
def server_targets(storage: str, tmp_path: Path,
                   request: pytest.FixtureRequest) -> Iterator[Callable[[str], Path | str]]:
    """For a test of several stores: *name* -> a store's target on the test's storage (a
    folder ``tmp_path/name``, or a new PostgreSQL database, dropped after the test); the
    same name, the same store."""
    made: dict[str, Path | str] = {}
    dropped: list[Iterator[str | None]] = []

    def target(name: str) -> Path | str:
        if name not in made:
            fresh = _fresh_database(storage, request)
            dropped.append(fresh)
            made[name] = next(fresh) or tmp_path / name
        return made[name]

    yield target
    for fresh in dropped:
        next(fresh, None)


class DatabaseCopies:
    """What a technician does to a stopped server's data dir, done to the test's PostgreSQL
    database too: on SQLite, nothing (the database is a file in the data dir, which the test
    replaces or copies itself). No server may be connected to the database meanwhile."""

    def __init__(self, cluster: Postgres | None, url: str | None) -> None:
        self._cluster = cluster
        self._name = url.rsplit("/", 1)[1] if url else ""
        self._backup = f"{self._name}_backup"

    def replace(self) -> None:
        """A new, empty database in its place."""
        self._copy(PG_TEMPLATE, self._name)

    def backup(self) -> None:
        self._copy(self._name, self._backup)

    def restore(self) -> None:
        """The database as :meth:`backup` found it."""
        self._copy(self._backup, self._name)

    def forget(self) -> None:
        if self._cluster is not None:
            self._cluster.drop_database(self._backup)

    def _copy(self, source: str, target: str) -> None:
        if self._cluster is not None:
            self._cluster.drop_database(target)
            self._cluster.create_database(target, template=source)


@pytest.fixture
def database_copies(database: str | None,
                    request: pytest.FixtureRequest) -> Iterator[DatabaseCopies]:
    """Replace, back up and restore the test's database (a no-op on SQLite)."""
    cluster = request.getfixturevalue("postgres") if database is not None else None
    copies = DatabaseCopies(cluster, database)
    yield copies
    copies.forget()


@pytest.fixture
def server(tmp_path: Path, database: str | None) -> Iterator[Server]:
    """A ``checkin server`` of the test's own (on each storage), killed after it."""
    server = Server(tmp_path / "server", database=database).start()
    yield server
    server.kill()


@pytest.fixture
def devices() -> Iterator[list[Device]]:
    """The test's devices (it appends them): their sync daemons are killed after it."""
    started: list[Device] = []
    yield started
    for device in started:
        if device.sync is not None:
            device.sync.stop(signal.SIGKILL)
