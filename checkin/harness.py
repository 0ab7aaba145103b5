"""Real ``checkin`` processes on this machine, for the demo, the tests, the chaos run and
the benchmarks: a free port, a ``checkin server`` with an admin client for its API, a
door's folder (config file, device token, data dir, camera folder) with its ``checkin
sync`` and ``checkin door`` processes, waiting until something is so, and the logs.

One flavour of process: a :class:`Process` is a :class:`subprocess.Popen`, which outlives
any event loop. Code on an event loop waits for one in a thread
(``await asyncio.to_thread(server.start)``), and reads a door's decisions as they come
with :meth:`Process.lines`.

A throwaway PostgreSQL cluster for the server's PostgreSQL storage: :class:`Postgres`
(one per test run, a database of its own for each test).

A door's config file is written in one place: :func:`door_config` (the sections every
door needs, with the caller's on top) and :func:`toml` (their text). A new config key
that every door needs goes into :func:`door_config`, and nowhere else here.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import pwd
import re
import secrets
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import httpx
import psycopg
from psycopg import sql

from checkin.badges import Look, render_badge
from server.schema import SERVER_FILE
from sync.device_store import STORE_FILE

#: The folder that holds the ``checkin`` package (the repository, in a checkout).
ROOT = Path(__file__).resolve().parent.parent
#: A ``checkin`` command line: this Python, running :mod:`checkin.cli`.
CHECKIN = (sys.executable, "-m", "checkin.cli")
#: The (mock) GPIO pins of every door started here.
PINS = {"green": 17, "red": 27, "buzzer": 22}

#: The values a config file here holds.
Value = str | int | float | bool | Path | list[str]
#: A config file: its sections, each its keys and values.
Sections = dict[str, dict[str, Value]]


class WaitFailed(AssertionError):
    """What was waited for did not happen: not in time, or its process exited first."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def process_env(**extra: str) -> dict[str, str]:
    """The environment of a ``checkin`` subprocess: this one, with this checkout first on
    ``PYTHONPATH``, no ``NOTIFY_SOCKET`` (none of them is a systemd service here), and
    *extra*."""
    env = dict(os.environ)
    env.pop("NOTIFY_SOCKET", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env | extra


# -- config files --------------------------------------------------------------------


def door_config(device_id: str, *, data_dir: str | Path = "data",
                source: str = "images:frames", **sections: Mapping[str, Value]) -> Sections:
    """A door's config: what every door needs (its id and data dir, a camera, mock GPIO
    pins), with *sections* on top key by key. Relative paths are the config file's
    folder's; a ``[server]`` section makes it a config for the sync daemon too."""
    config: Sections = {"device": {"id": device_id, "data_dir": str(data_dir)},
                        "camera": {"source": source},
                        "gpio": {"pin_factory": "mock", **PINS}}
    for name, keys in sections.items():
        config.setdefault(name, {}).update(keys)
    return config


def toml(sections: Mapping[str, Mapping[str, Value]], comment: str = "") -> str:
    """The text of a TOML file of *sections* (of strings, paths, numbers, booleans and
    lists of strings, e.g. several ``[server] url``)."""
    lines = [f"# {line}" for line in comment.splitlines()]
    for name, keys in sections.items():
        lines += [""] if lines else []
        lines += [f"[{_key(name)}]", *(f"{_key(k)} = {_value(v)}" for k, v in keys.items())]
    return "\n".join(lines) + "\n"


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f",
            "\r": "\\r"}


def _key(key: str) -> str:
    if not _BARE_KEY.fullmatch(key):
        raise ValueError(f"not a bare TOML key: {key!r}")
    return key


def _value(value: Value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)  # TOML spells inf, nan and 1e+20 as Python does
    if isinstance(value, str | Path):
        return '"' + "".join(_ESCAPES.get(c) or (f"\\u{ord(c):04x}" if c < " " or c == "\x7f"
                                                 else c) for c in str(value)) + '"'
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    raise TypeError(f"no TOML value for {value!r}")


# -- waiting -------------------------------------------------------------------------


def wait_for(check: Callable[[], Any], timeout: float = 20.0, what: str = "condition", *,
             interval: float = 0.05, process: Process | None = None) -> Any:
    """Call *check* until it returns something true, and return that (a limit on waiting,
    never an assertion on speed); fail if *process* exits first."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        _still_waiting(what, timeout, deadline, process)
        time.sleep(interval)
    return value


async def until(check: Callable[[], Any], timeout: float = 20.0, what: str = "condition", *,
                interval: float = 0.05, process: Process | None = None) -> Any:
    """:func:`wait_for` on an event loop: *check* may be a coroutine function."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        _still_waiting(what, timeout, deadline, process)
        await asyncio.sleep(interval)


def _still_waiting(what: str, timeout: float, deadline: float, process: Process | None) -> None:
    if process is not None and process.poll() is not None:
        raise WaitFailed(f"waiting for {what}: {process} exited {process.returncode}\n"
                         f"{process.tail()}")
    if time.monotonic() > deadline:
        raise WaitFailed(f"timed out waiting for {what} ({timeout:g} s)"
                         + (f"\n{process.tail()}" if process is not None else ""))


# -- processes -----------------------------------------------------------------------


class Process(subprocess.Popen):
    """A ``checkin`` command in a subprocess. What it writes goes to *log* (appended: a
    process started again adds to it); with *pipe*, its stdout comes through a pipe
    instead. With *own_session* it does not get the terminal's Ctrl-C. *prefix* runs it
    through another command (e.g. ``("faketime", "-f", "-3d")``: a shifted clock)."""

    def __init__(self, args: Sequence[str], log: Path, *, env: Mapping[str, str] | None = None,
                 pipe: bool = False, own_session: bool = False, prefix: Sequence[str] = (),
                 **popen: Any) -> None:
        self.log = log
        self.prefix = tuple(prefix)
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as sink:
            super().__init__([*prefix, *CHECKIN, *args],
                             env=process_env() if env is None else env,
                             stdout=subprocess.PIPE if pipe else sink, stderr=sink,
                             start_new_session=own_session, **popen)

    def __repr__(self) -> str:
        return f"checkin {self.args[len(self.prefix) + len(CHECKIN)]} (pid {self.pid})"

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Send *signum* if it still runs and wait for its end (killing it after *timeout*);
        return its exit status."""
        if self.poll() is None:
            self.send_signal(signum)
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.wait()

    def tail(self, lines: int = 15) -> str:
        """The last *lines* of its log."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    async def lines(self) -> AsyncIterator[bytes]:
        """The lines it writes to its stdout pipe, as they come, without blocking the loop."""
        assert self.stdout is not None, "started without pipe=True"
        reader = asyncio.StreamReader()
        transport, _ = await asyncio.get_running_loop().connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), self.stdout)
        try:
            async for line in reader:
                yield line
        finally:
            transport.close()

    def peak_rss_kb(self) -> int:
        """The kernel's peak resident size of the process (VmHWM), 0 once it has ended.

        Not getrusage's ``ru_maxrss``, which keeps the forked parent's size across exec."""
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return 0
        line = next((x for x in status.splitlines() if x.startswith("VmHWM:")), "VmHWM: 0 kB")
        return int(line.split()[1])

    def cpu_seconds(self) -> float:
        """CPU time the process has used so far (user and system, all its threads)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class DoorLines:
    """The decisions a running ``checkin door`` (started with a pipe) prints, read as they
    come, off any event loop: :meth:`next` waits for the next one (a limit on waiting,
    never on speed)."""

    def __init__(self, process: Process) -> None:
        assert process.stdout is not None, "started without a pipe"
        self.process = process
        self._fd = process.stdout.fileno()
        self._buffer = b""

    def next(self, timeout: float = 60.0, what: str = "the door's next decision") -> dict:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise WaitFailed(f"timed out waiting for {what} ({timeout:g} s)\n"
                                 f"{self.process.tail()}")
            readable, _, _ = select.select([self._fd], [], [], min(left, 0.5))
            if readable:
                chunk = os.read(self._fd, 65536)
                if not chunk:
                    raise WaitFailed(f"waiting for {what}: {self.process} closed its output "
                                     f"(exit {self.process.poll()})\n{self.process.tail()}")
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def pending(self) -> bytes:
        """What the door printed and :meth:`next` has not returned (read without waiting)."""
        while select.select([self._fd], [], [], 0)[0]:
            chunk = os.read(self._fd, 65536)
            if not chunk:
                break
            self._buffer += chunk
        return self._buffer


def run(*args: str, env: Mapping[str, str] | None = None, timeout: float = 120.0,
        prefix: Sequence[str] = (), **popen: Any) -> subprocess.CompletedProcess[str]:
    """Run a ``checkin`` command to its end (through *prefix*, as :class:`Process`); its
    stdout and stderr captured as text."""
    return subprocess.run([*prefix, *CHECKIN, *args], capture_output=True, text=True,
                          timeout=timeout, env=process_env() if env is None else env, **popen)


def decisions(stdout: str | bytes) -> list[dict[str, Any]]:
    """A door's decisions from what it printed: one JSON object a line."""
    return [json.loads(line) for line in stdout.splitlines()]


def stop_all(processes: Iterable[Process | None], timeout: float = 20.0) -> None:
    """SIGTERM each process at once, then wait for them (killing what still runs after
    *timeout*)."""
    running = [p for p in processes if p is not None and p.poll() is None]
    for process in running:
        process.terminate()
    # One deadline for them all: they stop together, so waiting in turn must not add up.
    deadline = time.monotonic() + timeout
    for process in running:
        process.stop(timeout=max(0.1, deadline - time.monotonic()))


class Server:
    """A ``checkin server`` on a port of 127.0.0.1 (a free one unless given), its data in
    *data_dir*, its log beside it; and an admin client for its API. With *database* (a
    ``postgresql://`` URL, e.g. :meth:`Postgres.create_database`'s) its store is there,
    not in *data_dir*'s SQLite file."""

    def __init__(self, data_dir: Path, port: int | None = None, *,
                 admin_token: str | None = None, tls: tuple[str, str] | None = None,
                 verify: Any = True, timeout: float = 30.0, own_session: bool = False,
                 database: str | None = None) -> None:
        self.data_dir = data_dir
        self.database = database
        self.port = port or free_port()
        self.admin_token = admin_token or secrets.token_urlsafe(16)
        self.tls = tls
        self.own_session = own_session
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.sync_url = f"{'wss' if tls else 'ws'}://127.0.0.1:{self.port}/sync"
        self.log = data_dir.parent / f"{data_dir.name}.log"
        self.store_file = data_dir / SERVER_FILE
        #: Where its store is: its SQLite file, or its PostgreSQL database's URL.
        self.store_location: Path | str = database or self.store_file
        self.process: Process | None = None
        self.headers = {"Authorization": f"Bearer {self.admin_token}"}
        self._verify = verify
        self.client = httpx.Client(base_url=self.url, verify=verify, timeout=timeout,
                                   headers=self.headers)

    def environment(self) -> dict[str, str]:
        return process_env(CHECKIN_ADMIN_TOKEN=self.admin_token)

    def start(self, *extra: str, timeout: float = 30.0) -> Self:
        """Start it (again: the same data dir and port) and wait until it answers."""
        command = ["server", "--data", str(self.data_dir), "--port", str(self.port), *extra]
        if self.database is not None:
            command += ["--database", self.database]
        if self.tls:
            command += ["--certfile", self.tls[0], "--keyfile", self.tls[1]]
        self.process = Process(command, self.log, env=self.environment(),
                               own_session=self.own_session)
        wait_for(self.healthy, timeout, f"checkin server on port {self.port}",
                 process=self.process)
        return self

    def healthy(self) -> bool:
        try:
            return self.client.get("/api/health").status_code == 200
        except httpx.TransportError:
            return False

    def stop(self, timeout: float = 20.0) -> None:
        if self.process is not None:
            self.process.stop(timeout=timeout)

    def kill(self) -> None:
        if self.process is not None:
            self.process.stop(signal.SIGKILL)

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.__exit__()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.client.close()

    def api(self, method: str, path: str, body: Any = None, expect: int | None = None) -> Any:
        """Call the organizer API as the admin; the answer's JSON (``None`` if empty).
        Fails unless the status is *expect* (any 2xx if not given)."""
        answer = self.client.request(method, path, json=body)
        expected = answer.is_success if expect is None else answer.status_code == expect
        if not expected:
            raise AssertionError(f"{method} {path}: HTTP {answer.status_code} {answer.text}")
        return answer.json() if answer.content else None

    def async_client(self, timeout: float = 30.0) -> httpx.AsyncClient:
        """An admin client for the API on an event loop."""
        return httpx.AsyncClient(base_url=self.url, verify=self._verify, timeout=timeout,
                                 headers=self.headers)

    def provision(self, device_id: str, session_id: str) -> str:
        """Create a device for *session_id*; return its token."""
        return self.api("PUT", f"/api/devices/{device_id}", {"session_id": session_id},
                        expect=201)["token"]

    def attendance(self, session_id: str) -> dict[str, Any]:
        return self.api("GET", f"/api/sessions/{session_id}/attendance", expect=200)


class Device:
    """One door's folder: its config file, device token, data dir (the store its door and
    its sync daemon share), the camera's ``images:`` folder and their logs; and its two
    processes, ``checkin sync`` and ``checkin door``.

    *sections* go into the config (:func:`door_config`); with *server_url* (one URL, or a
    list tried in order), a ``[server]`` section with it and the token file is added under
    the caller's keys. *command_prefix* runs both processes through another command
    (:class:`Process`'s *prefix*: a door and its daemon under ``faketime``).
    """

    def __init__(self, root: Path, device_id: str, *, server_url: str | list[str] | None = None,
                 comment: str = "", data_dir: str | Path = "data",
                 command_prefix: Sequence[str] = (),
                 **sections: Mapping[str, Value]) -> None:
        self.root = root
        self.command_prefix = tuple(command_prefix)
        self.device_id = device_id
        self.config = root / "door.toml"
        self.token_file = root / "device.token"
        self.data_dir = root / data_dir
        self.store_file = self.data_dir / STORE_FILE
        self.frames = root / "frames"
        self.sync_log = root / "sync.log"
        self.door_log = root / "door.log"
        self.sync: Process | None = None
        self.door_process: Process | None = None
        self.shown = 0
        if server_url is not None:
            sections["server"] = {"url": server_url, "token_file": self.token_file.name,
                                  **sections.get("server", {})}
        self.frames.mkdir(parents=True, exist_ok=True)
        self.config.write_text(toml(door_config(device_id, data_dir=data_dir, **sections),
                                    comment))

    def start_sync(self, *args: str, **process: Any) -> Process:
        """Start ``checkin sync`` (*process*: :class:`Process`'s options)."""
        self.sync = Process(["sync", "--config", str(self.config), *args], self.sync_log,
                            **{"prefix": self.command_prefix, **process})
        return self.sync

    def start_door(self, *args: str, pipe: bool = True, **process: Any) -> Process:
        """Start ``checkin door``; its decisions come through :meth:`Process.lines`."""
        self.door_process = Process(["door", "--config", str(self.config), *args],
                                    self.door_log, pipe=pipe,
                                    **{"prefix": self.command_prefix, **process})
        return self.door_process

    def run_door(self, *, env: Mapping[str, str] | None = None, timeout: float = 120.0,
                 **popen: Any) -> subprocess.CompletedProcess[str]:
        """Run ``checkin door --exit-when-done`` to its end: a decision for every badge
        in its camera's folder (:func:`decisions` reads them from its stdout)."""
        return run("door", "--config", str(self.config), "--exit-when-done", env=env,
                   timeout=timeout, **{"prefix": self.command_prefix, **popen})

    def show(self, payload: str | bytes | None, look: Look | None = None,
             seed: int | None = None) -> Path:
        """Put a badge (``None``: nobody) in front of the camera: the next image in its
        folder, renamed into place so that it is never read half-written."""
        self.shown += 1
        final = self.frame(self.shown)
        part = final.with_suffix(".part")
        render_badge(payload, look or Look(), seed=self.shown if seed is None else seed).save(
            part, format="PNG")
        part.rename(final)
        return final

    def frame(self, number: int) -> Path:
        """The image of the *number*-th badge shown."""
        return self.frames / f"{number:06d}.png"

    def clear_frames(self) -> None:
        """Take every badge away from the camera."""
        for old in self.frames.iterdir():
            old.unlink()
        self.shown = 0

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the door, then the sync daemon."""
        for process in (self.door_process, self.sync):
            if process is not None:
                process.stop(timeout=timeout)


# -- PostgreSQL ----------------------------------------------------------------------


class Postgres:
    """A throwaway PostgreSQL cluster of this machine's PostgreSQL binaries, listening on
    127.0.0.1 (a free port) and a socket in *root*; its data in ``root/pgdata``, its log
    in ``root/postgres.log``. Without *root*, a fresh temporary folder, removed by
    :meth:`stop`. Anyone on 127.0.0.1 may connect as ``postgres`` (trust): a cluster for
    tests, demos and benchmarks, never for data that matters.

    PostgreSQL refuses to run as root: as root, the cluster is the ``postgres`` user's
    (*root* is given to it, so every folder above it must let that user through)."""

    #: The Debian package of the binaries, named where they are missing.
    PACKAGE = "postgresql"

    def __init__(self, root: Path | None = None, *, fsync: bool = True) -> None:
        self._temporary = root is None
        self.root = Path(tempfile.mkdtemp(prefix="checkin-pg-")) if root is None else root
        self.data = self.root / "pgdata"
        self.log = self.root / "postgres.log"
        self.fsync = fsync
        self.port = 0
        self._bin: Path | None = None

    @staticmethod
    def bindir() -> Path | None:
        """The folder of ``initdb`` and ``pg_ctl``: ``$CHECKIN_PG_BIN``, else
        ``pg_config --bindir`` (if the server's binaries are there: libpq's development
        package has pg_config alone), else Debian's newest ``/usr/lib/postgresql/*/bin``,
        else where ``initdb`` is on the ``PATH``; ``None`` if none."""
        if given := os.environ.get("CHECKIN_PG_BIN"):
            return Path(given)
        candidates: list[Path] = []
        if shutil.which("pg_config"):
            done = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
            if done.returncode == 0 and done.stdout.strip():
                candidates.append(Path(done.stdout.strip()))
        candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True,
                             key=lambda path: _version_key(path.parent.name))
        if initdb := shutil.which("initdb"):
            candidates.append(Path(initdb).resolve().parent)
        return next((c for c in candidates if _has_server_binaries(c)), None)

    @classmethod
    def available(cls) -> str | None:
        """``None`` if a cluster can be started here; else why not (for a skip message)."""
        bindir = cls.bindir()
        if bindir is None or not _has_server_binaries(bindir):
            where = f" in CHECKIN_PG_BIN={bindir}" if bindir is not None else ""
            return (f"PostgreSQL's initdb and pg_ctl not found{where}: install Debian's "
                    f"`{cls.PACKAGE}` package (scripts/system-packages.sh does), or set "
                    f"CHECKIN_PG_BIN to the folder that holds them")
        if os.geteuid() == 0 and _postgres_user() is None:
            return ("running as root, which PostgreSQL refuses, and there is no `postgres` "
                    f"user to run it as (Debian's `{cls.PACKAGE}` package creates it)")
        return None

    def start(self) -> Self:
        """Create the cluster and start it; wait until it accepts connections."""
        if (why := self.available()) is not None:
            raise RuntimeError(why)
        self._bin = self.bindir()
        self.root.mkdir(parents=True, exist_ok=True)
        if (user := _postgres_user()) is not None and os.geteuid() == 0:
            os.chown(self.root, user.pw_uid, user.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                  "--no-sync", "--locale=C.UTF-8", fallback=["--locale=C"])
        attempts = 3  # the free port may be taken by another before the server binds it
        for attempt in range(1, attempts + 1):
            self.port = free_port()
            options = (f"-p {self.port} -k {shlex.quote(str(self.root))} "
                       f"-c listen_addresses=127.0.0.1 -c fsync={'on' if self.fsync else 'off'}")
            try:
                self._run("pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data),
                          "-l", str(self.log), "-o", options)
                break
            except RuntimeError:
                if attempt == attempts:
                    raise
        return self

    def url(self, database: str = "postgres") -> str:
        """The URL of *database* in the cluster, as ``checkin server --database`` takes it."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str, template: str | None = None) -> str:
        """Create database *name* (a copy of database *template* if given, which nobody
        may be connected to) and return its URL."""
        copy = sql.SQL(" TEMPLATE {}").format(sql.Identifier(template)) \
            if template else sql.SQL("")
        self.execute(sql.SQL("CREATE DATABASE {}{}").format(
            sql.Identifier(name), copy))
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop database *name* if it exists, ending its connections."""
        self.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(name)))

    def execute(self, statement: sql.Composable | str) -> None:
        """Run one statement in the ``postgres`` database, outside any transaction."""
        with psycopg.connect(self.url(), autocommit=True) as connection:
            connection.execute(statement)

    def running(self) -> bool:
        return self._bin is not None and subprocess.run(
            self._command("pg_ctl", "status", "-D", str(self.data)), cwd=self.root,
            capture_output=True).returncode == 0

    def stop(self) -> None:
        """Stop the cluster (``-m fast``: its sessions are ended), and remove its folder if
        it made one. Harmless if it never started or has stopped."""
        try:
            if self.running():
                self._run("pg_ctl", "stop", "-w", "-t", "60", "-m", "fast", "-D",
                          str(self.data))
        finally:
            if self._temporary:
                shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _command(self, program: str, *args: str) -> list[str]:
        assert self._bin is not None
        as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        return [*as_postgres, str(self._bin / program), *args]

    def _run(self, program: str, *args: str, fallback: Sequence[str] = ()) -> None:
        """Run one of PostgreSQL's programs (in *root*: the ``postgres`` user may not
        enter the current folder); with *fallback*, retried with it in place of as many
        last arguments if it fails. Raises :class:`RuntimeError` with its output."""
        done = subprocess.run(self._command(program, *args), cwd=self.root,
                              capture_output=True, text=True, timeout=120)
        if done.returncode != 0 and fallback:
            done = subprocess.run(self._command(program, *args[:-len(fallback)], *fallback),
                                  cwd=self.root, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{program} {' '.join(args)} failed ({done.returncode}):\n"
                               f"{done.stdout}{done.stderr}{log}")


def _has_server_binaries(folder: Path) -> bool:
    return all(os.access(folder / name, os.X_OK) for name in ("initdb", "pg_ctl"))


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split(".") if part.isdigit())


def _postgres_user() -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        return None
