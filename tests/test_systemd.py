"""Issue 15, item 4: the three processes speak systemd's notify protocol (READY=1,
WATCHDOG=1, STOPPING=1) to a socket the test binds where ``$NOTIFY_SOCKET`` points, as
systemd would; and the three units are ``Type=notify`` with a watchdog, a start limit,
and clean under ``systemd-analyze verify``."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from checkin.harness import Device, Process, free_port, run, until, wait_for
from core import notify as notify_module
from core.notify import notify, pet_watchdog, watchdog_seconds
from tests import system
from tests.test_hardening import SERVICES, UNITS, one, unit_settings

#: What the processes get as $WATCHDOG_USEC: a pet every half second.
WATCHDOG_USEC = 1_000_000


class Notifications:
    """A datagram socket in the abstract namespace, bound as systemd binds its own; what
    the processes sent to it, in order."""

    def __init__(self) -> None:
        self.name = f"checkin-test-{uuid.uuid4().hex}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.sock.bind("\0" + self.name)
        self.sock.setblocking(False)
        self.received: list[str] = []

    def env(self, **extra: str) -> dict[str, str]:
        """A process's environment with this socket and a watchdog of WATCHDOG_USEC."""
        return system.process_env() | {"NOTIFY_SOCKET": "@" + self.name,
                                       "WATCHDOG_USEC": str(WATCHDOG_USEC)} | extra

    def drain(self) -> list[str]:
        while True:
            try:
                datagram = self.sock.recv(4096)
            except BlockingIOError:
                return self.received
            # One datagram may carry several assignments, one a line (sd_notify(3)).
            self.received += datagram.decode().split("\n")

    def count(self, message: str) -> int:
        return self.drain().count(message)

    def until(self, message: str, times: int = 1, *, process: Process | None = None,
              timeout: float = 60.0) -> None:
        wait_for(lambda: self.count(message) >= times, timeout,
                 f"{times} x {message} (received so far: {self.received[-5:]})",
                 process=process)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notifications() -> Iterator[Notifications]:
    listener = Notifications()
    try:
        yield listener
    finally:
        listener.close()


def assert_lifecycle(listener: Notifications, process: Process) -> None:
    """READY=1, then at least two WATCHDOG=1, then STOPPING=1 after SIGTERM, exit 0."""
    listener.until("READY=1", process=process)
    pets = listener.count("WATCHDOG=1")
    listener.until("WATCHDOG=1", pets + 2, process=process)  # two more after READY=1
    assert process.stop() == 0, process.tail()
    received = listener.drain()
    assert "STOPPING=1" in received, received
    assert received.index("READY=1") < received.index("STOPPING=1")
    assert received.count("READY=1") == 1 and received.count("STOPPING=1") == 1, received
    assert set(received) <= {"READY=1", "WATCHDOG=1", "STOPPING=1"}, received


# -- the processes ---------------------------------------------------------------------


def test_the_door_is_ready_with_its_first_frame_pets_and_says_it_stops(
        tmp_path: Path, notifications: Notifications) -> None:
    """Mock pins, an ``images:`` camera with no badge: blank frames, each a pet."""
    device = Device(tmp_path, "door-1")
    door = device.start_door(pipe=False, env=notifications.env())
    try:
        assert_lifecycle(notifications, door)
    finally:
        device.stop()


@pytest.mark.parametrize("connected", [False, True], ids=["no-server", "connected"])
def test_the_sync_daemon_is_ready_and_pets_connected_or_not(
        tmp_path: Path, notifications: Notifications, connected: bool) -> None:
    if not connected:  # nothing listens there: it retries with backoff, and still pets
        device = daemon_device(tmp_path, f"ws://127.0.0.1:{free_port()}/sync")
        device.token_file.write_text("not-a-token-anyone-knows\n")
        _sync_lifecycle(device, notifications)
        return
    with system.Server(tmp_path / "server") as server:
        server.api("PUT", "/api/sessions/s1", {"name": "Session", "validate_registrants": True})
        device = daemon_device(tmp_path / "door", server.sync_url)
        device.token_file.write_text(server.provision("door-1", "s1"))
        _sync_lifecycle(device, notifications, connected=True)


def daemon_device(root: Path, url: str) -> Device:
    return Device(root, "door-1", server_url=url,
                  server={"retry_min_seconds": 0.1, "retry_max_seconds": 0.5})


def link(device: Device) -> str:
    """``checkin status``'s word for the daemon's link."""
    done = run("status", "--config", str(device.config), "--json", env=system.process_env())
    return json.loads(done.stdout)["link"]


def _sync_lifecycle(device: Device, listener: Notifications, *,
                    connected: bool = False) -> None:
    sync = device.start_sync(env=listener.env())
    try:
        listener.until("READY=1", process=sync)
        if connected:
            wait_for(lambda: link(device) == "connected", 60,
                     "the daemon connected", process=sync)
        else:
            assert link(device) == "disconnected"
        assert_lifecycle(listener, sync)
    finally:
        device.stop()


def test_the_server_is_ready_once_it_answers_pets_and_says_it_stops(
        tmp_path: Path, notifications: Notifications) -> None:
    server = NotifiedServer(tmp_path / "server", notifications)
    with server:
        # READY=1 is sent before the loop serves anything: by the first answer it is here.
        assert notifications.drain()[:1] == ["READY=1"]
        assert server.process is not None
        assert_lifecycle(notifications, server.process)


def test_a_server_that_cannot_listen_never_says_ready(
        tmp_path: Path, notifications: Notifications) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = Process(["server", "--data", str(tmp_path / "server"), "--port", str(port)],
                          tmp_path / "server.log", env=notifications.env(
                              CHECKIN_ADMIN_TOKEN=system.ADMIN))
        assert process.wait(60) != 0, process.tail()
    assert "READY=1" not in notifications.drain(), process.tail()


class NotifiedServer(system.Server):
    def __init__(self, data_dir: Path, listener: Notifications) -> None:
        super().__init__(data_dir)
        self.listener = listener

    def environment(self) -> dict[str, str]:
        return self.listener.env(CHECKIN_ADMIN_TOKEN=self.admin_token)


# -- the protocol, in the process ------------------------------------------------------


@pytest.mark.parametrize(("environ", "expected"), [
    ({}, None),
    ({"WATCHDOG_USEC": "15000000"}, 7.5),
    ({"WATCHDOG_USEC": "15000000", "WATCHDOG_PID": "4242"}, 7.5),
    ({"WATCHDOG_USEC": "15000000", "WATCHDOG_PID": "1"}, None),  # another process's
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "-5"}, None),
    ({"WATCHDOG_USEC": "soon"}, None),
    ({"WATCHDOG_PID": "4242"}, None),
])
def test_watchdog_seconds_is_half_the_interval_for_this_process_only(
        environ: dict[str, str], expected: float | None) -> None:
    assert watchdog_seconds(environ, 4242) == expected


def test_notify_reaches_the_socket_and_is_a_no_op_without_one(
        notifications: Notifications, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + notifications.name)
    assert notify("READY=1") is True
    assert notifications.drain() == ["READY=1"]
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + notifications.name + "-gone")
    assert notify("READY=1") is False  # systemd went away: the process runs on


async def test_a_wedged_loop_stops_the_pets(notifications: Notifications,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The pets come from a task on the loop, not a thread: while the loop is blocked
    nothing is sent (so systemd restarts a wedged process), and they resume after."""
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + notifications.name)
    petting = asyncio.create_task(pet_watchdog(0.01))
    try:
        await until(lambda: notifications.count("WATCHDOG=1") >= 2, what="two pets")
        before = notifications.count("WATCHDOG=1")
        time.sleep(0.3)  # wedge the loop: a blocking call on it
        assert notifications.count("WATCHDOG=1") == before
        await until(lambda: notifications.count("WATCHDOG=1") > before, what="pets again")
    finally:
        petting.cancel()


def test_the_door_still_imports_notify_from_its_old_place() -> None:
    from device import notify as old

    assert old.notify is notify_module.notify


# -- the units -------------------------------------------------------------------------


def seconds(span: str) -> float:
    """A systemd time span as these units write them (``15``, ``30s``, ``10min``)."""
    match = re.fullmatch(r"(\d+)\s*(ms|s|min|h)?", span)
    assert match, f"not a time span: {span!r}"
    return int(match[1]) * {"ms": 0.001, "s": 1, None: 1, "min": 60, "h": 3600}[match[2]]


@pytest.mark.parametrize("service", SERVICES)
def test_every_unit_is_notified_watched_and_restarted_within_a_limit(service: str) -> None:
    settings = unit_settings(UNITS / service)
    assert one(settings, "Type") == "notify"
    assert one(settings, "NotifyAccess") == "main"
    assert 5 <= seconds(one(settings, "WatchdogSec")) <= 60
    assert one(settings, "Restart") == "always"
    restart = seconds(one(settings, "RestartSec"))
    limits = unit_settings(UNITS / service, "Unit")
    interval = seconds(one(limits, "StartLimitIntervalSec"))
    burst = int(one(limits, "StartLimitBurst"))
    assert burst >= 3
    # A crash loop reaches the limit: its starts come RestartSec apart, so within the
    # interval there are more of them than the burst allows (0 would mean no limit).
    assert restart * burst < interval


def checkin_program() -> Path:
    """The venv's real ``checkin`` (what ExecStart= runs once installed)."""
    program = Path(sys.executable).parent / "checkin"
    assert program.is_file(), f"{program} is missing: install the project into the venv (make)"
    return program


def verify(unit: Path) -> list[str]:
    """What ``systemd-analyze verify`` says about *unit* (lines about other units, e.g.
    this machine's own, are not ours to judge)."""
    if shutil.which("systemd-analyze") is None:  # only under CHECKIN_REQUIRE_TOOLS
        pytest.fail("systemd-analyze is missing: install the Debian package systemd "
                    "(scripts/system-packages.sh does)")
    done = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)],
                          capture_output=True, text=True, timeout=60)
    output = done.stdout + done.stderr
    return [line for line in output.splitlines() if unit.name in line] + (
        [f"exit status {done.returncode}: {output}"] if done.returncode else [])


def installed_copy(service: str, folder: Path, edit: str = "") -> Path:
    """The unit as installed, but running this venv's ``checkin`` (verify checks the
    program is there and executable), with *edit* appended to [Service]."""
    text = (UNITS / service).read_text().replace("/opt/checkin/.venv/bin/checkin",
                                                 str(checkin_program()))
    if edit:
        text = text.replace("[Service]\n", f"[Service]\n{edit}\n", 1)
    unit = folder / service
    unit.write_text(text)
    return unit


needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None and not os.environ.get("CHECKIN_REQUIRE_TOOLS"),
    reason="systemd-analyze is not installed (Debian package systemd)")


@needs_analyze
@pytest.mark.parametrize("service", SERVICES)
def test_systemd_analyze_verify_finds_nothing(service: str, tmp_path: Path) -> None:
    """Every key known to this systemd and every value valid (it only warns about them)."""
    assert verify(installed_copy(service, tmp_path)) == []


@needs_analyze
@pytest.mark.parametrize(("edit", "said"), [("WatchdogSec=soon", "soon"),
                                            ("WatchdgSec=15", "WatchdgSec")])
def test_verify_would_catch_a_bad_setting(tmp_path: Path, edit: str, said: str) -> None:
    """The test above can fail: a mistyped value or key is reported."""
    unit = installed_copy("checkin-sync.service", tmp_path, edit)
    assert any(said in line for line in verify(unit))
