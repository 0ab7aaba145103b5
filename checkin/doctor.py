"""``checkin doctor``: a door's self-test, one pass/fail row per check, each failure with
what to do about it.

Safe while the door and the sync daemon run: the store is opened read-only, the
server is asked through ``GET /api/device`` (a second /sync link would replace the
daemon's), the camera and the pins are left to a running door (its heartbeat in
the store says whether frames arrive; its control socket plays the self-test
pattern, device/selftest.py) and opened here only when no door runs.

The verdicts are pure functions of what was measured (:func:`clock_check`,
:func:`disk_check`, ...), tested without a server; :func:`diagnose` gathers the
measurements. Exit status: 0 when every check passes, 1 when any fails, 2 when
the config file is unusable (nothing else can be checked then).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import shutil
import socket
import sqlite3
import ssl
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from core.clock import boot_id
from core.timesource import ClockAnchor, TimeSource, door_time, synchronized
from device.config import ConfigError, DeviceConfig, load_config
from sync.config import ServerConfig, insecure_url_warning
from sync.device_schema import MIGRATIONS
from sync.device_store import STORE_FILE

#: Exit statuses.
EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2
#: Largest difference between the door's clock and the server's.
MAX_CLOCK_OFFSET_S = 5.0
#: Least free space on the data dir's file system: bytes, and fraction of its size.
MIN_FREE_BYTES = 200 * 1024 * 1024
MIN_FREE_FRACTION = 0.05
#: How long each network step may take, in seconds.
NETWORK_TIMEOUT = 5.0
#: Frames captured (and decoded) when no door runs.
CAMERA_FRAMES = 3


@dataclass(frozen=True, slots=True)
class Check:
    """One row of the table: *fix* says what to do when it failed (``None`` when it passed)."""

    name: str
    ok: bool
    detail: str
    fix: str | None = None


def passed(name: str, detail: str) -> Check:
    return Check(name, True, detail)


def failed(name: str, detail: str, fix: str) -> Check:
    return Check(name, False, detail, fix)


# -- the command ------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    """``checkin doctor --config FILE [--json]``."""
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        print("checkin doctor: fix the config file first (checkin config check FILE lists "
              "every problem)", file=sys.stderr)
        return EXIT_CONFIG
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request is noise here
    checks = diagnose(config)
    ok = all(check.ok for check in checks)
    if args.json:
        print(json.dumps({"ok": ok, "checks": [asdict(c) for c in checks]}))
    else:
        sys.stdout.write(render(checks))
    sys.stdout.flush()
    return EXIT_OK if ok else EXIT_FAILED


def render(checks: list[Check]) -> str:
    """The table: one row per check, each failure's fix under it, and a summary line."""
    lines = []
    for check in checks:
        lines.append(f"{'ok' if check.ok else 'FAIL':>4}  {check.name:<12} {check.detail}")
        if check.fix:
            lines.append(f"{'':>4}  {'':<12} fix: {check.fix}")
    bad = sum(not c.ok for c in checks)
    lines.append(f"all {len(checks)} checks passed" if not bad
                 else f"{bad} of {len(checks)} checks failed")
    return "\n".join(lines) + "\n"


def diagnose(config: DeviceConfig) -> list[Check]:
    """Every check, in the table's order."""
    store = read_store(config.data_dir / STORE_FILE)
    checks = [config_check(config), data_dir_check(config.data_dir), *store_checks(store)]
    checks += server_checks(config, store)
    door = ask_door(config)
    checks += [camera_check(config, store, door), door.check, disk_check_at(config.data_dir)]
    return checks


# -- config --------------------------------------------------------------------------------


def config_check(config: DeviceConfig) -> Check:
    """The file loads (else the command stopped with exit 2); the rest of what ``checkin
    config check`` finds (the token file's mode, an unencrypted link) is a failure here."""
    problems = config_problems(config.path)
    if problems:
        return failed("config", "; ".join(problems),
                      f"edit {config.path} (checkin config check {config.path} explains each)")
    return passed("config", f"{config.path}: valid")


def config_problems(path: Path) -> list[str]:
    """What ``checkin config check`` reports (the token file's mode, an unencrypted
    link, the camera's folder: what loading alone lets through)."""
    from checkin.configcheck import problems

    return problems(path)


# -- data dir and store -----------------------------------------------------------------


def data_dir_check(data_dir: Path) -> Check:
    """Writable: a file can be made (and removed) in it, as the door's store must."""
    fix = (f"make {data_dir} a folder the door's user may write (the door creates it: "
           f"mkdir -p {data_dir} && chown checkin: {data_dir})")
    if not data_dir.exists():
        return failed("data dir", f"{data_dir} does not exist (neither the door nor the sync "
                                  "daemon has run with this config)", fix)
    if not data_dir.is_dir():
        return failed("data dir", f"{data_dir} is not a folder", fix)
    try:
        with tempfile.NamedTemporaryFile(dir=data_dir, prefix=".doctor-"):
            pass
    except PermissionError as exc:
        return failed("data dir", f"{data_dir} is not writable by this user: {exc.strerror}",
                      "run the doctor as the door's user (sudo -u checkin checkin doctor "
                      "--config FILE) or as root; else " + fix)
    except OSError as exc:
        return failed("data dir", f"{data_dir} is not writable: {exc.strerror}", fix)
    return passed("data dir", f"{data_dir} is writable")


@dataclass(frozen=True, slots=True)
class StoreFacts:
    """What the doctor reads from the device store (read-only)."""

    path: Path
    #: Why the store could not be read (then every other field is empty).
    error: str | None = None
    integrity: str = ""
    version: int = -1
    session_id: str | None = None
    registrants: int = 0
    last_frame_at: str | None = None
    #: The sync daemon's link as it last noted it: up or not, to which server, when.
    connected: bool = False
    server_url: str | None = None
    link_noted_at: str | None = None
    #: The sync daemon's last clock anchor (the door carries the server's time from it).
    anchor: ClockAnchor | None = None


def read_store(path: Path) -> StoreFacts:
    """Integrity and schema version, then what the other checks need: read-only, beside
    the door and the daemon (an older schema may lack a table: those facts stay empty)."""
    if not path.is_file():
        return StoreFacts(path, error=f"no store at {path}")
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True,
                                                timeout=5)) as db:
            integrity = "; ".join(r[0] for r in db.execute("PRAGMA integrity_check"))
            version = db.execute("PRAGMA user_version").fetchone()[0]
            facts = StoreFacts(path, None, integrity, version)
            with contextlib.suppress(sqlite3.Error):
                facts = _cached(db, facts)
            with contextlib.suppress(sqlite3.Error):  # no server_url before version 5
                facts = _link(db, facts)
            with contextlib.suppress(sqlite3.Error, ValueError):  # none before version 6
                facts = _anchor(db, facts)
    except sqlite3.Error as exc:
        return StoreFacts(path, error=f"cannot read {path}: {exc}")
    return facts


def _cached(db: sqlite3.Connection, facts: StoreFacts) -> StoreFacts:
    session = db.execute("SELECT session_id FROM session").fetchone()
    session_id = session[0] if session else None
    registrants = db.execute("SELECT count(*) FROM registrants WHERE session_id = ?",
                             (session_id,)).fetchone()[0]
    frame = db.execute("SELECT last_frame_at FROM door_state").fetchone()
    return replace(facts, session_id=session_id, registrants=registrants,
                   last_frame_at=frame[0] if frame else None)


def _link(db: sqlite3.Connection, facts: StoreFacts) -> StoreFacts:
    row = db.execute("SELECT connected, server_url, updated_at FROM sync_state").fetchone()
    if row is None:
        return facts
    return replace(facts, connected=bool(row[0]), server_url=row[1], link_noted_at=row[2])


def _anchor(db: sqlite3.Connection, facts: StoreFacts) -> StoreFacts:
    row = db.execute("SELECT anchor_server_time, anchor_monotonic_ns, anchor_boot_id"
                     " FROM sync_state").fetchone()
    if row is None or row[0] is None:
        return facts
    return replace(facts, anchor=ClockAnchor(datetime.fromisoformat(row[0]), row[1] or 0,
                                             row[2] or ""))


def store_checks(store: StoreFacts) -> list[Check]:
    """The store intact (``PRAGMA integrity_check``) and its schema this software's."""
    if store.error is not None:
        fix = ("start the door once (it creates the store), or restore the data dir from "
               "its SD card (docs/technicians.md)")
        return [failed("store", store.error, fix)]
    checks = [passed("store", f"{store.path}: integrity ok") if store.integrity == "ok"
              else failed("store", f"{store.path}: {store.integrity}",
                          "stop the door and the sync daemon, copy the data dir off the "
                          "card, and move the store aside: waiting scans are in it "
                          "(docs/technicians.md)")]
    current = len(MIGRATIONS)
    if store.version == current:
        checks.append(passed("schema", f"version {current}"))
    elif store.version < current:
        checks.append(failed("schema", f"version {store.version}, this software's is "
                                       f"{current}",
                             "restart the door or the sync daemon: either migrates the store"))
    else:
        checks.append(failed("schema", f"version {store.version}, newer than this "
                                       f"software's {current}",
                             "upgrade the software on this device"))
    return checks


# -- server ------------------------------------------------------------------------------


def server_checks(config: DeviceConfig, store: StoreFacts) -> list[Check]:
    """Reachable, TLS valid, token accepted, session assigned and registrants cached,
    clock; the ones after the first failure are left out (they cannot be checked).

    Of several ``[server] url``, the one the sync daemon is connected to is checked (any
    of them serves the door, and that one does); else the first that accepts a
    connection, as the daemon would find it. The row names which."""
    server = config.server
    if server is None:
        return [passed("server", "none configured: a standalone door")]
    connected = daemons_server(server.url, store, datetime.now(UTC),
                               3 * server.status_seconds)
    order = [connected] if connected else []
    unreachable: list[str] = []
    for url in order + [u for u in server.url if u != connected]:
        parts = urlsplit(url)
        host = parts.hostname or ""
        tls = parts.scheme == "wss"
        port = parts.port or (443 if tls else 80)
        try:
            socket.create_connection((host, port), timeout=NETWORK_TIMEOUT).close()
        except OSError as exc:
            unreachable.append(f"{_netloc(host, port)}: {exc.strerror or exc}")
            continue
        which = which_server(url, len(server.url), url == connected, unreachable)
        checks = [passed("server", f"{_netloc(host, port)} accepts connections{which}")]
        base = f"{'https' if tls else 'http'}://{_netloc(host, port)}"
        with httpx.Client(base_url=base, verify=_verify(server),
                          timeout=NETWORK_TIMEOUT) as client:
            checks += _api_checks(client, config, server, url, store)
        return checks
    return [failed("server", f"cannot connect to {'; '.join(unreachable)} (tls, token, "
                             "clock, session and registrants not checked)",
                   "is the server running (systemctl status checkin-server on it) and "
                   "this door on its network? check [server] url")]


def daemons_server(urls: tuple[str, ...], store: StoreFacts, now: datetime,
                   stale_after: float) -> str | None:
    """The URL the sync daemon says it is connected to, if it said so within
    *stale_after* seconds (a daemon that died leaves its flag) and it is one of *urls*."""
    if not store.connected or store.server_url not in urls or store.link_noted_at is None:
        return None
    try:
        age = (now - datetime.fromisoformat(store.link_noted_at)).total_seconds()
    except (TypeError, ValueError):
        return None
    return store.server_url if age <= stale_after else None


def which_server(url: str, count: int, connected: bool, unreachable: list[str]) -> str:
    """What the server row says of the URL checked, when ``[server] url`` lists several."""
    if count == 1:
        return ""
    if connected:
        return f" ({url}: the sync daemon is connected to it)"
    tried = f"; no connection to {', '.join(unreachable)}" if unreachable else ""
    return f" ({url}: the first of the {count} server URLs that does{tried})"


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _verify(server: ServerConfig) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(server.ca_file) if server.ca_file else None)


def _api_checks(client: httpx.Client, config: DeviceConfig, server: ServerConfig, url: str,
                store: StoreFacts) -> list[Check]:
    tls = url.startswith("wss://")
    try:
        client.get("/api/health")
    except httpx.ConnectError as exc:
        if tls and _ssl_error(exc) is not None:
            return [failed("tls", f"{_ssl_error(exc)}", _TLS_FIX)]
        return [failed("server", f"{exc}", "is the checkin server on that port?")]
    except httpx.HTTPError as exc:
        return [failed("server", f"no answer to /api/health: {exc}",
                       "is the checkin server on that port? (its log says why it hangs)")]
    checks = [tls_check(url, server.ca_file)]
    try:
        token = server.token_file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        return [*checks, failed("token", f"cannot read {server.token_file}: {exc.strerror}",
                                "write the door's token there (docs/provisioning.md); run "
                                "the doctor as the sync daemon's user")]
    started, started_mono = time.time(), time.monotonic_ns()
    try:
        answer = client.get("/api/device", headers={"Authorization": f"Bearer {token}"})
    except httpx.HTTPError as exc:
        return [*checks, failed("token", f"GET /api/device failed: {exc}",
                                "run the doctor again; if it fails again, see the server's log")]
    ended, ended_mono = time.time(), time.monotonic_ns()
    checks.append(token_check(answer.status_code, _json(answer), config.device_id,
                              server.token_file))
    if not checks[-1].ok:
        return checks
    facts = _json(answer)
    # The door's time as the door would take it, halfway through the request.
    wall = datetime.fromtimestamp((started + ended) / 2, UTC)
    source, local = door_time(synchronized(), store.anchor, wall,
                              (started_mono + ended_mono) // 2, boot_id())
    checks.append(clock_check(local, facts.get("server_time"), source, wall))
    checks += session_checks(config.device_id, facts.get("session_id"), facts.get("registrants"),
                             store)
    return checks


def _ssl_error(exc: BaseException | None) -> ssl.SSLError | None:
    """The TLS error behind an httpx error (httpx wraps httpcore's, which wraps ssl's)."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, ssl.SSLError):
            return exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


_TLS_FIX = ("set [server] ca_file to the CA that signed the server's certificate; check that "
            "the certificate names the host in [server] url and has not expired, and that "
            "this door's clock is right")


def _json(answer: httpx.Response) -> dict[str, Any]:
    with contextlib.suppress(ValueError):
        body = answer.json()
        if isinstance(body, dict):
            return body
    return {}


def tls_check(url: str, ca_file: Path | None) -> Check:
    """The server at *url* answered: its certificate was verified with *ca_file* (or the
    system's CAs), or it is ``ws://``: fine to this machine only."""
    if url.startswith("wss://"):
        cas = ca_file or "the system's CAs"
        return passed("tls", f"certificate verified with {cas}")
    warning = insecure_url_warning(url)
    if warning:
        return failed("tls", warning, "serve the API over TLS and use a wss:// url")
    return passed("tls", "not used: ws:// to this machine")


def token_check(status: int, body: dict[str, Any], device_id: str, token_file: Path) -> Check:
    provision = (f"provision the door again (PUT /api/devices/{device_id}, "
                 "docs/provisioning.md), write the new token to "
                 f"{token_file} and restart checkin-sync")
    if status == 401:
        return failed("token", f"the server refuses the token in {token_file} (revoked, or "
                               "issued by another server)", provision)
    if status == 404:
        return failed("token", "the server has no GET /api/device (older than this door)",
                      "upgrade the server")
    if status != 200:
        return failed("token", f"GET /api/device answered HTTP {status}: "
                               f"{body.get('error', '')}", "see the server's log")
    if body.get("device_id") != device_id:
        return failed("token", f"the token in {token_file} is device "
                               f"{body.get('device_id')!r}'s, the config says {device_id!r}",
                      f"put {device_id}'s token in {token_file}, or fix [device] id")
    return passed("token", f"accepted for device {device_id}")


_SET_THE_CLOCK = ("set the clock: timedatectl status; enable NTP (timedatectl set-ntp true) "
                  "or set it by hand (the server's clock may be the wrong one)")
#: What each time source means for the door, as the clock row says it.
_SOURCES = {
    TimeSource.SYSTEM: "the system clock, synchronised",
    TimeSource.SERVER: "the server's, carried by the door since the sync daemon's last "
                       "exchange (the system clock is not synchronised)",
    TimeSource.UNKNOWN: "unknown: the system clock is not synchronised and the sync daemon "
                        "has not reached the server since boot",
}


def clock_check(local: datetime, server_time: Any, source: TimeSource = TimeSource.SYSTEM,
                wall: datetime | None = None) -> Check:
    """The door's time (*local*, taken halfway through the request from *source*, as the
    door would take it: :func:`core.timesource.door_time`) against the server's. A door
    whose time is unknown fails, whatever the offset: it cannot know it is right. *wall*,
    the system clock then, is said too when the door's time is not the system's."""
    try:
        server = datetime.fromisoformat(server_time)
        offset = (local - server).total_seconds()
        wall_offset = (wall - server).total_seconds() if wall is not None else None
    except (TypeError, ValueError):
        return failed("clock", f"the server sent no usable time ({server_time!r})",
                      "upgrade the server")
    detail = (f"{round(offset, 2) + 0:+.2f} s from the server's"  # + 0: no "-0.00"
              f" (time source: {_SOURCES[source]}")
    if source is TimeSource.SERVER and wall_offset is not None:
        detail += f"; the system clock {round(wall_offset, 2) + 0:+.2f} s"
    detail += ")"
    if source is TimeSource.UNKNOWN:
        return failed("clock", detail,
                      "is checkin-sync running? (systemctl status checkin-sync): once it "
                      "reaches the server the door carries the server's time; until then "
                      "session windows follow [door] unknown_time. Better: " + _SET_THE_CLOCK)
    if abs(offset) <= MAX_CLOCK_OFFSET_S:
        return passed("clock", detail)
    return failed("clock", f"{detail} (more than {MAX_CLOCK_OFFSET_S:g} s)", _SET_THE_CLOCK)


def session_checks(device_id: str, session_id: str | None, registrants: int | None,
                   store: StoreFacts) -> list[Check]:
    """The server assigns a session and the store caches it with all its registrants."""
    behind = ("is checkin-sync running? (systemctl status checkin-sync, checkin status); "
              "run the doctor again in a few seconds")
    if session_id is None:
        return [failed("session", "the server assigns no session to this door",
                       f"assign one: PUT /api/devices/{device_id} with a session_id")]
    if registrants is None:  # the server has no such session (deleted, or never made)
        return [failed("session", f"the server assigns {session_id}, which does not exist "
                                  "there (deleted?)",
                       f"create session {session_id} again, or assign the door another: "
                       f"PUT /api/devices/{device_id}")]
    if store.error is not None or store.session_id != session_id:
        cached = store.session_id or "none"
        return [failed("session", f"the server assigns {session_id}; the store has {cached} "
                                  "(not synced yet)", behind)]
    checks = [passed("session", f"{session_id}, cached")]
    if store.registrants == registrants:
        checks.append(passed("registrants", f"{store.registrants} cached (as on the server)"))
    else:
        checks.append(failed("registrants", f"{store.registrants} cached of the server's "
                                            f"{registrants}", behind))
    return checks


# -- camera, LEDs and buzzer ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DoorAnswer:
    """Whether a door runs (it answered the self-test request) and the LEDs' row."""

    running: bool
    check: Check
    #: Frames the running door has seen since it started.
    frames: int = 0


def ask_door(config: DeviceConfig) -> DoorAnswer:
    """The LEDs and buzzer self-test: played by the running door (it holds the pins),
    else here through the pins themselves."""
    from device.selftest import NoDoor, request_self_test

    try:
        reply = request_self_test(config.data_dir)
    except NoDoor:
        return DoorAnswer(False, _play_here(config))
    except (OSError, TimeoutError) as exc:
        return DoorAnswer(False, failed(
            "indicators", f"the door's control socket did not answer: {exc}",
            "run the doctor as the door's user (sudo -u checkin checkin doctor ...); if "
            "the door hangs, restart it (systemctl restart checkin-door)"))
    frames = reply.get("frames")
    return DoorAnswer(True, passed("indicators", "the running door plays the self-test "
                                                 "(green, red, buzzer, all): watch and listen"),
                      frames if isinstance(frames, int) else 0)


def _play_here(config: DeviceConfig) -> Check:
    from device.indicators.signals import IndicatorError, Indicators
    from device.selftest import SELF_TEST

    try:
        indicators = Indicators.from_config(config.gpio, config.data_dir)
    except IndicatorError as exc:
        return failed("indicators", str(exc),
                      "check [gpio] pins and wiring; is another process (an old door) "
                      "holding the pins? run the doctor as a user in the gpio group")

    async def play() -> None:
        indicators.show_pattern(SELF_TEST)
        await indicators.idle()

    try:
        asyncio.run(play())
    finally:
        indicators.close()
    return passed("indicators", "played the self-test (green, red, buzzer, all) on pins "
                                f"{config.gpio.green}, {config.gpio.red}, {config.gpio.buzzer}"
                                ": watch and listen")


def camera_check(config: DeviceConfig, store: StoreFacts, door: DoorAnswer) -> Check:
    """A running door's heartbeat says whether frames arrive; else open the camera."""
    images = config.camera.images_path
    if images is not None and not Path(images).exists():
        return failed("camera", f"images:{images}: no such file or folder",
                      "fix [camera] source, or create the folder")
    if door.running:
        return frames_seen_check(store.last_frame_at, datetime.now(UTC),
                                 3 * config.door.heartbeat_seconds, door.frames)
    return capture_check(config)


def frames_seen_check(last_frame_at: str | None, now: datetime, within: float,
                      frames: int = 0) -> Check:
    """The running door notes its last frame every ``heartbeat_seconds`` (*within* is a
    few of them); one started less than a heartbeat ago has noted none yet, and counts
    on the *frames* it says it has seen."""
    fix = ("the door runs but its camera delivers nothing: check the camera's cable and "
           "journalctl -u checkin-door")
    if last_frame_at is None and frames > 0:
        return passed("camera", f"the running door has seen {frames} frames since it "
                                "started")
    if last_frame_at is None:
        return failed("camera", "the running door has seen no frame yet", fix)
    try:
        age = (now - datetime.fromisoformat(last_frame_at)).total_seconds()
    except (TypeError, ValueError):
        return failed("camera", f"unreadable last frame time {last_frame_at!r}", fix)
    if age <= within:
        return passed("camera", f"the running door saw a frame {max(age, 0):.0f} s ago")
    return failed("camera", f"the running door's last frame was {age:.0f} s ago", fix)


def capture_check(config: DeviceConfig) -> Check:
    """No door runs: open the camera, capture a few frames, decode any badge held up."""
    from device.scanner.decoders import make_decoder
    from device.scanner.frames import CameraError, CaptureTimeout, SourceExhausted, open_source

    fix = "check [camera] source and the camera's cable; is another process using it?"
    decoder = make_decoder(config.scanner.decoder)
    try:
        source = open_source(config.camera)
    except CameraError as exc:
        return failed("camera", f"cannot open {config.camera.source}: {exc}", fix)
    seen: list[bytes] = []
    shape: tuple[int, ...] = ()
    try:
        for _ in range(CAMERA_FRAMES):
            with source.capture(config.camera.timeout) as frame:
                shape = frame.pixels.shape
                seen += decoder.decode(frame.pixels)
    except (CameraError, CaptureTimeout, SourceExhausted) as exc:
        return failed("camera", f"{config.camera.source}: no frame: {exc or type(exc).__name__}",
                      fix)
    finally:
        with contextlib.suppress(Exception):
            source.close()
    return passed("camera", f"{CAMERA_FRAMES} frames of {shape[1]}x{shape[0]}; "
                            f"{_badges(seen)}")


def _badges(payloads: list[bytes]) -> str:
    from core.codes import printable

    if not payloads:
        return "no badge in view (hold one up to see it decoded)"
    return "decoded " + ", ".join(sorted({printable(p) for p in payloads}))


# -- disk ------------------------------------------------------------------------------


def disk_check_at(data_dir: Path) -> Check:
    folder = data_dir
    while not folder.is_dir() and folder != folder.parent:
        folder = folder.parent  # a data dir not made yet: the file system it will be on
    try:
        usage = shutil.disk_usage(folder)
    except OSError as exc:
        return failed("disk", f"cannot measure {folder}: {exc.strerror}", "check the SD card")
    return disk_check(folder, usage.free, usage.total)


def disk_check(folder: Path, free: int, total: int) -> Check:
    detail = f"{free / 2**20:,.0f} MB free of {total / 2**20:,.0f} MB on {folder}"
    if free >= MIN_FREE_BYTES and free >= MIN_FREE_FRACTION * total:
        return passed("disk", detail)
    return failed("disk", f"{detail} (below {MIN_FREE_BYTES / 2**20:.0f} MB or "
                          f"{MIN_FREE_FRACTION:.0%})",
                  "free space: journalctl --vacuum-size=50M, remove old files; the store "
                  "keeps every scan until the server has it")
