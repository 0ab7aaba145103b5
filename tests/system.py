"""A harness for end-to-end tests: real ``checkin server``, ``sync`` and ``door`` processes.

Every process is a subprocess of the test on 127.0.0.1, with its own data dir
under the test's tmp_path; :class:`System` stops whatever is still running.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from checkin.badges import Look, write_badge
from tests.conftest import CHECKIN, REPO

ADMIN = "test-admin-token"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll *predicate* until it returns something truthy (a timeout, not a speed limit)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def read_only_query(path: Path, sql: str, params: tuple = ()) -> list[tuple]:
    """Rows of *sql* on the SQLite file at *path*, opened read-only beside its owners."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)) as db:
        return db.execute(sql, params).fetchall()


def process_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("NOTIFY_SOCKET", None)
    env["PYTHONPATH"] = str(REPO)
    env["CHECKIN_ADMIN_TOKEN"] = ADMIN
    return env


class Server:
    """A ``checkin server`` subprocess and an admin client for its API."""

    def __init__(self, data_dir: Path, port: int | None = None, *, tls: tuple[str, str] | None
                 = None, verify: Any = True) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.tls = tls
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.sync_url = f"{'wss' if tls else 'ws'}://127.0.0.1:{self.port}/sync"
        self.log = data_dir.parent / f"server-{self.port}.log"
        self.process: subprocess.Popen | None = None
        self.client = httpx.Client(base_url=self.url, verify=verify, timeout=30,
                                   headers={"Authorization": f"Bearer {ADMIN}"})

    def start(self, *extra: str) -> Server:
        command = [*CHECKIN, "server", "--data", str(self.data_dir), "--port", str(self.port),
                   *extra]
        if self.tls:
            command += ["--certfile", self.tls[0], "--keyfile", self.tls[1]]
        self.process = subprocess.Popen(command, env=process_env(), stdout=subprocess.DEVNULL,
                                        stderr=self.log.open("a"))
        wait_for(self._healthy, what=f"server on port {self.port}")
        return self

    def _healthy(self) -> bool:
        assert self.process is not None and self.process.poll() is None, self.log.read_text()
        try:
            return self.client.get("/api/health").status_code == 200
        except httpx.TransportError:
            return False

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=20)

    def api(self, method: str, path: str, body: Any = None, expect: int | None = None) -> Any:
        answer = self.client.request(method, path, json=body)
        if expect is not None:
            assert answer.status_code == expect, (answer.status_code, answer.text)
        return answer.json() if answer.content else None

    def provision(self, device_id: str, session_id: str) -> str:
        """Create a device for *session_id*; return its token."""
        return self.api("PUT", f"/api/devices/{device_id}", {"session_id": session_id},
                        expect=201)["token"]

    def attendance(self, session_id: str) -> dict[str, Any]:
        return self.api("GET", f"/api/sessions/{session_id}/attendance", expect=200)


class Device:
    """One door's files (config, token, data dir, badge frames) and its processes."""

    def __init__(self, root: Path, device_id: str, sync_url: str, *, extra: str = "",
                 auth_retry: float = 0.5) -> None:
        self.root = root
        self.device_id = device_id
        self.data_dir = root / "data"
        self.frames = root / "frames"
        self.token_file = root / "device.token"
        self.config = root / "door.toml"
        self.sync_log = root / "sync.log"
        self.sync: subprocess.Popen | None = None
        root.mkdir(parents=True, exist_ok=True)
        self.config.write_text(f"""
[device]
id = "{device_id}"
data_dir = "data"

[camera]
source = "images:frames"
fps = 40
frames_per_image = 2

[scanner]
debounce_seconds = 0.1

[gpio]
pin_factory = "mock"
green = 17
red = 27
buzzer = 22

[server]
url = "{sync_url}"
token_file = "device.token"
retry_min_seconds = 0.1
retry_max_seconds = 0.5
status_seconds = 1
auth_retry_seconds = {auth_retry}
{extra}
""")

    def start_sync(self) -> Device:
        self.sync = subprocess.Popen([*CHECKIN, "sync", "--config", str(self.config), "-v"],
                                     env=process_env(), stdout=subprocess.DEVNULL,
                                     stderr=self.sync_log.open("a"))
        return self

    def stop_sync(self) -> int:
        assert self.sync is not None
        if self.sync.poll() is None:
            self.sync.terminate()
        return self.sync.wait(timeout=20)

    def door(self, *payloads: str | bytes | None) -> list[dict[str, Any]]:
        """Show *payloads* to a fresh ``checkin door`` run; return its decisions."""
        if self.frames.exists():
            for old in self.frames.iterdir():
                old.unlink()
        self.frames.mkdir(exist_ok=True)
        for index, payload in enumerate(payloads):
            write_badge(self.frames / f"{index:03d}.png", payload, Look(), seed=index)
        done = subprocess.run([*CHECKIN, "door", "--config", str(self.config),
                               "--exit-when-done"], capture_output=True, text=True,
                              env=process_env(), timeout=120)
        assert done.returncode == 0, done.stderr
        assert "Traceback" not in done.stderr, done.stderr
        return [json.loads(line) for line in done.stdout.splitlines()]

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        path = self.data_dir / "checkin.sqlite3"
        if not path.exists():
            return []
        try:
            return read_only_query(path, sql, params)
        except sqlite3.OperationalError:  # not migrated yet
            return []

    def registrants(self) -> set[str]:
        return {row[0] for row in self.query("SELECT code FROM registrants")}

    def waiting(self) -> int:
        rows = self.query("SELECT count(*) FROM scans WHERE upload_state = 'waiting'")
        return rows[0][0] if rows else -1

    def upload_states(self) -> dict[str, str]:
        return dict(self.query("SELECT scan_id, upload_state FROM scans"))

    def status(self) -> dict[str, Any]:
        done = subprocess.run([*CHECKIN, "status", "--config", str(self.config), "--json"],
                              capture_output=True, text=True, env=process_env(), timeout=60)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def log(self) -> str:
        return self.sync_log.read_text() if self.sync_log.exists() else ""
