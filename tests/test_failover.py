"""Failover in the sync daemon (issue 16): ``[server] url`` lists several servers.

The choice of the next URL is pure (:class:`sync.failover.Rotation`) and tested on every
sequence of failures; the daemon's use of it against ports nobody listens on; and real
processes: a dead first URL and a live second one, and a live server killed under a
connected daemon, which moves to the next one that is up.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import shutil
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from checkin.doctor import StoreFacts, daemons_server, which_server
from checkin.harness import run, until
from sync.config import ServerConfig
from sync.daemon import SyncDaemon
from sync.failover import Rotation
from sync.store import SyncStore
from tests.system import DaemonSettings, Device, Server, free_port, process_env, wait_for
from tests.test_sync_e2e import assert_each_scan_once, event

# -- the rotation, pure ------------------------------------------------------------------


def test_no_url_is_refused() -> None:
    with pytest.raises(ValueError):
        Rotation([])


def test_one_url_waits_after_every_failure_as_before() -> None:
    rotation = Rotation(["ws://a/sync"])
    for waiting in (False, True, False, False):
        assert rotation.failed(waiting=waiting) is True
        assert rotation.current == "ws://a/sync"


@pytest.mark.parametrize("count", [1, 2, 3, 4])
def test_every_sequence_of_failures(count: int) -> None:
    """Each sequence of ordinary and token failures (up to 2 rounds and more): the URLs
    come in order, wrapping around; no URL is tried twice between two waits; and there is
    no wait while a URL not yet tried since the last one remains (the door back soonest),
    unless the token was refused (every server shares one database: all would refuse it)."""
    urls = [f"ws://s{n}/sync" for n in range(count)]
    for events in itertools.product((False, True), repeat=min(2 * count + 2, 8)):
        rotation = Rotation(urls)
        since_wait: list[str] = []
        for attempt, token_refused in enumerate(events):
            assert rotation.current == urls[attempt % count]
            since_wait.append(rotation.current)
            wait = rotation.failed(waiting=token_refused)
            assert len(set(since_wait)) == len(since_wait)  # none twice between waits
            assert wait == (token_refused or len(since_wait) == count), (events, attempt)
            if wait:
                since_wait = []


def test_a_welcome_does_not_start_a_round() -> None:
    """Servers that accept and then drop every link (their database is down) get no more
    attempts from a door than one server did: one per server between two waits."""
    rotation = Rotation(["ws://a/sync", "ws://b/sync"])
    # connected to a, dropped: b at once; connected to b, dropped: wait, then a.
    assert rotation.failed() is False and rotation.current == "ws://b/sync"
    assert rotation.failed() is True and rotation.current == "ws://a/sync"


# -- the daemon, against ports nobody listens on ----------------------------------------


def _run_daemon(config: DaemonSettings, caplog, rounds: int) -> tuple[list[str], str | None]:
    """Run the daemon in this process until it has waited *rounds* times; its log lines
    and the server URL it noted in the store."""

    def waits() -> int:
        return sum("retrying in" in r.getMessage() for r in caplog.records)

    async def run() -> str | None:
        store = await SyncStore.open(config.data_dir)
        daemon = SyncDaemon(config, store)
        task = asyncio.create_task(daemon.run())
        try:
            await until(lambda: waits() >= rounds, 60, f"{rounds} waits", interval=0.02)
            return (await store.status()).server_url
        finally:
            daemon.stop()
            await task
            await store.close()

    with caplog.at_level(logging.INFO, logger="checkin.sync"):
        noted = asyncio.run(run())
    return [r.getMessage() for r in caplog.records if r.name == "checkin.sync"], noted


def test_the_daemon_tries_each_url_then_waits(tmp_path: Path, caplog) -> None:
    """Two dead URLs: the second at once after the first, then a wait (the backoff), then
    the first again; status notes the URL last tried."""
    token = tmp_path / "token"
    token.write_text("t")
    urls = tuple(f"ws://127.0.0.1:{free_port()}/sync" for _ in range(2))
    server = ServerConfig(url=urls, token_file=token, retry_min_seconds=0.05,
                          retry_max_seconds=0.1)
    lines, noted = _run_daemon(DaemonSettings(tmp_path / "data", server),
                               caplog, 2)
    failures = [line for line in lines if line.startswith("cannot reach")]
    assert failures[0].startswith(f"cannot reach {urls[0]}: ")
    assert failures[0].endswith(f"; trying {urls[1]} now")
    assert failures[1].startswith(f"cannot reach {urls[1]}: ")
    assert "; retrying in " in failures[1] and failures[1].endswith(f" s with {urls[0]}")
    assert failures[2].startswith(f"cannot reach {urls[0]}: ")
    assert failures[3].startswith(f"cannot reach {urls[1]}: ") and "retrying in" in failures[3]
    assert noted in urls
    records = [r for r in caplog.records if r.getMessage() == failures[0]]
    assert (records[0].server_url, records[0].next_url, records[0].retry_seconds) == (
        urls[0], urls[1], 0)


def test_a_token_problem_waits_whatever_the_urls(tmp_path: Path, caplog) -> None:
    """Every server shares one database: one that refuses the token (here: there is none
    to send) speaks for all, so the daemon waits (auth_retry_seconds) after each, as with
    one URL, and never hops to the next at once."""
    urls = tuple(f"ws://127.0.0.1:{free_port()}/sync" for _ in range(3))
    server = ServerConfig(url=urls, token_file=tmp_path / "missing", auth_retry_seconds=0.05)
    lines, _noted = _run_daemon(DaemonSettings(tmp_path / "data", server),
                                caplog, 2)
    failures = [line for line in lines if "token file" in line]
    assert len(failures) >= 2 and all("; retrying in " in line for line in failures), lines
    assert not any(line.endswith(" now") for line in lines), lines


# -- the doctor's choice, pure --------------------------------------------------------------


def test_the_doctor_checks_the_server_the_daemon_is_connected_to() -> None:
    urls = ("wss://a/sync", "wss://b/sync")
    at = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
    store = StoreFacts(Path("s"), connected=True, server_url="wss://b/sync",
                       link_noted_at=at.isoformat())
    assert daemons_server(urls, store, at, 45) == "wss://b/sync"
    assert daemons_server(urls, store, at + timedelta(seconds=46), 45) is None  # stale
    assert daemons_server(urls, replace(store, connected=False), at, 45) is None
    assert daemons_server(urls, replace(store, server_url="wss://c/sync"), at, 45) is None
    assert daemons_server(urls, replace(store, link_noted_at=None), at, 45) is None
    assert which_server("wss://b/sync", 1, True, []) == ""
    assert which_server("wss://b/sync", 2, True, []) == (
        " (wss://b/sync: the sync daemon is connected to it)")
    assert which_server("wss://b/sync", 3, False, ["a:443: Connection refused"]) == (
        " (wss://b/sync: the first of the 3 server URLs that does; no connection to "
        "a:443: Connection refused)")


# -- real processes ----------------------------------------------------------------------


def _door(tmp_path: Path, urls: list[str], token: str, devices: list[Device]) -> Device:
    # A debounce of 1 s: each door run shows each badge once (see test_sync_e2e).
    device = Device(tmp_path / "door-1", "door-1", urls, debounce_seconds=1.0)
    device.token_file.write_text(token + "\n")
    devices.append(device)
    return device.start_sync()


def _connected_to(device: Device, url: str) -> bool:
    status = device.status()
    return status["link"] == "connected" and status["server_url"] == url


def test_a_dead_first_url_and_a_live_second(tmp_path: Path, devices: list[Device]) -> None:
    """The daemon connects to the second URL and every scan reaches it once."""
    dead_port = free_port()
    dead = f"ws://127.0.0.1:{dead_port}/sync"
    with Server(tmp_path / "server") as server:
        event(server, registrants=("A1", "A2"))
        device = _door(tmp_path, [dead, server.sync_url], server.provision("door-1", "s1"),
                       devices)
        wait_for(lambda: device.registrants() == {"A1", "A2"}, what="snapshot")
        decisions = device.door("A1", "A2", "B2")
        assert [d["reason"] for d in decisions] == ["registered", "registered",
                                                     "not_registered"]
        wait_for(lambda: device.waiting() == 0, what="scans uploaded")
        assert_each_scan_once(server, "s1", decisions)
        wait_for(lambda: _connected_to(device, server.sync_url), what="status names it")
        log = device.log()
        assert f"cannot reach {dead}: " in log and f"; trying {server.sync_url} now" in log
        assert f"connected to {server.sync_url} as door-1" in log
        human = harness_status(device)
        assert f"server:             {server.sync_url}\n" in human
        row = doctor_server_row(device)
        assert row["ok"] and row["detail"] == (
            f"127.0.0.1:{server.port} accepts connections ({server.sync_url}: the sync daemon "
            "is connected to it)")
        device.stop_sync()
        row = doctor_server_row(device)  # no daemon: the first URL that answers
        assert row["ok"] and row["detail"].startswith(
            f"127.0.0.1:{server.port} accepts connections ({server.sync_url}: the first of "
            f"the 2 server URLs that does; no connection to 127.0.0.1:{dead_port}: ")
        assert "server:             " + server.sync_url + " (last tried)\n" in (
            harness_status(device))


def test_a_server_killed_under_the_daemon_hands_the_door_to_the_next_that_is_up(
        tmp_path: Path, devices: list[Device]) -> None:
    """[first, dead, second]: connected to first; first killed: the dead one is tried at
    once, then second, which gets the door's later scans, each once.

    Two SQLite servers are two databases, not a failover setup: second starts from a copy
    of first's data dir made before the door connected (same session, same token), a
    stand-in for two processes on one PostgreSQL database (tests/test_scale_out.py)."""
    first = Server(tmp_path / "first").start()
    event(first, registrants=("A1", "A2", "B2"))
    token = first.provision("door-1", "s1")
    first.stop()
    shutil.copytree(tmp_path / "first", tmp_path / "second")
    second = Server(tmp_path / "second")
    dead = f"ws://127.0.0.1:{free_port()}/sync"
    try:
        first.start()
        second.start()
        device = _door(tmp_path, [first.sync_url, dead, second.sync_url], token, devices)
        wait_for(lambda: device.registrants() == {"A1", "A2", "B2"}, what="snapshot")
        wait_for(lambda: _connected_to(device, first.sync_url), what="connected to first")
        before = device.door("A1")
        wait_for(lambda: device.waiting() == 0, what="first scan uploaded")
        assert_each_scan_once(first, "s1", before)

        first.kill()
        wait_for(lambda: _connected_to(device, second.sync_url), what="moved to second")
        after = device.door("A2", "B2")
        assert [d["reason"] for d in after] == ["registered", "registered"]
        wait_for(lambda: device.waiting() == 0, what="later scans uploaded")
        assert_each_scan_once(second, "s1", after)  # and not the one first stored
        log = device.log()
        assert f"{first.sync_url}: connection lost; trying {dead} now" in log or (
            f"{first.sync_url}: server closed the connection" in log), log
        assert f"; trying {dead} now" in log and f"; trying {second.sync_url} now" in log
        assert f"connected to {second.sync_url} as door-1" in log
    finally:
        first.kill()
        second.kill()


def harness_status(device: Device) -> str:
    """``checkin status`` as a technician reads it."""
    done = run("status", "--config", str(device.config), env=process_env(), timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def doctor_server_row(device: Device) -> dict:
    done = run("doctor", "--config", str(device.config), "--json", env=process_env(),
               timeout=120)
    assert "Traceback" not in done.stderr, done.stderr
    report = json.loads(done.stdout)
    return next(check for check in report["checks"] if check["name"] == "server")
