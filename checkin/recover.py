"""``checkin recover --config FILE --store PATH``: upload a dead door's waiting scans.

A door unit that died (a broken Pi, a card that no longer boots) may hold scans its
sync daemon never uploaded. A technician copies its store off the SD card (the
``checkin.sqlite3`` file with its ``-wal`` and ``-shm``) and runs this with the config
of a NEW unit provisioned for the same session (its ``[device] id``, ``[server] url``,
token file and CA). The command

- copies the store into a temporary folder and opens the copy: the file given is never
  written (opening a WAL database writes beside it, and migrating it writes into it);
- lists the scans still waiting there, and the quarantined ones (refused by the server
  before: listed, not uploaded again);
- uploads the waiting ones through the sync protocol (:class:`sync.device_end.DeviceEnd`
  over the daemon's websocket, TLS and token), in batches, under the new unit's device
  id and token: each scan once, as the server keeps each scan id once (a second run
  finds them all already stored);
- reports per outcome: accepted, already stored, refused (with the server's reason, e.g.
  a scan for another session than the new unit's), and any left unanswered.

Exit status: 0 when every waiting scan is on the server (accepted now or already
there), 1 otherwise, 2 for a usage or config problem (the file is not a checkin door
store, the token is refused, the server cannot be reached) with a clear message.

It says no ``status`` to the server (the new unit's own daemon reports the unit's
state) and no clock anchor (the scans are the old unit's, from its boots, not this
machine's).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sqlite3
import ssl
import sys
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from core import __version__
from core.database import StoreError
from sync.backoff import Backoff
from sync.daemon import TokenError, open_link, read_token
from sync.device_end import CacheState, DeviceEnd, RecordResults, Welcomed
from sync.device_schema import MIGRATIONS
from sync.device_store import STORE_FILE, UploadState
from sync.failover import Rotation
from sync.messages import (
    CLOSE_REPLACED,
    CLOSE_REVOKED,
    CLOSE_UNAUTHORIZED,
    MAX_SCANS_PER_BATCH,
    ProtocolError,
    Scan,
    ScanOutcome,
    ScanResult,
    fit_batch,
)
from sync.server_end import OTHER_DEVICE_REASON
from sync.store import SyncStore

#: Exit statuses.
EXIT_STORED = 0
EXIT_NOT_ALL_STORED = 1
EXIT_USAGE = 2

#: Scans per batch (the daemon's size); one batch in flight at a time.
BATCH_SIZE = 500
#: Connection attempts in a row that may fail (no scan answered between them) before
#: the server counts as unreachable.
MAX_ATTEMPTS = 5
#: Tables every checkin door store has, whatever its schema version.
DOOR_TABLES = frozenset({"scans", "sync_state", "door_state", "session", "attendees",
                         "registrants"})


class UsageError(Exception):
    """A problem the technician must fix before recovery can run (exit 2)."""


# -- the report (pure) -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Listed:
    """One scan named in the report."""

    scan_id: str
    session_id: str | None
    scanned_at: str
    reason: str | None = None

    def line(self) -> str:
        why = f": {self.reason}" if self.reason else ""
        return (f"  {self.scan_id} (session {self.session_id or 'none'}, scanned "
                f"{self.scanned_at}){why}")


@dataclass
class Report:
    """What recovery found in the store and what the server made of each scan."""

    store: Path
    device_id: str
    waiting: list[Scan]
    quarantined: list[Listed]
    server_url: str | None = None
    session_id: str | None = None
    accepted: list[str] = field(default_factory=list)
    already_stored: list[str] = field(default_factory=list)
    refused: list[Listed] = field(default_factory=list)
    #: Why the upload stopped with scans unanswered (``None``: it did not).
    stopped: str | None = None

    def take(self, scans: Sequence[Scan], results: Sequence[ScanResult]) -> None:
        """Count the server's answer to a batch of *scans*."""
        by_id = {scan.scan_id: scan for scan in scans}
        for result in results:
            outcome = classify(result)
            if outcome == "accepted":
                self.accepted.append(result.scan_id)
            elif outcome == "already stored":
                self.already_stored.append(result.scan_id)
            else:
                scan = by_id[result.scan_id]
                self.refused.append(Listed(scan.scan_id, scan.session_id, scan.scanned_at,
                                           result.reason or "refused by the server"))

    @property
    def answered(self) -> set[str]:
        return {*self.accepted, *self.already_stored, *(r.scan_id for r in self.refused)}

    @property
    def unanswered(self) -> list[Scan]:
        """The waiting scans the server has not answered (yet)."""
        answered = self.answered
        return [scan for scan in self.waiting if scan.scan_id not in answered]

    def exit_status(self) -> int:
        stored = len(self.accepted) + len(self.already_stored)
        return EXIT_STORED if stored == len(self.waiting) else EXIT_NOT_ALL_STORED

    def as_json(self) -> dict[str, Any]:
        return {
            "store": str(self.store), "device_id": self.device_id,
            "server_url": self.server_url, "session_id": self.session_id,
            "waiting": len(self.waiting),
            "waiting_by_session": sessions_of(self.waiting),
            "quarantined": [vars_of(q) for q in self.quarantined],
            "accepted": len(self.accepted), "already_stored": len(self.already_stored),
            "refused": [vars_of(r) for r in self.refused],
            "unanswered": [scan.scan_id for scan in self.unanswered],
            "stopped": self.stopped,
            "ok": self.exit_status() == EXIT_STORED,
        }

    def text(self) -> str:
        waiting = ", ".join(f"session {s or 'none'}: {n}"
                            for s, n in sessions_of(self.waiting).items())
        lines = [f"store:          {self.store}",
                 f"waiting:        {len(self.waiting)}" + (f" ({waiting})" if waiting else ""),
                 f"quarantined:    {len(self.quarantined)} (refused before; not uploaded)"]
        lines += [q.line() for q in self.quarantined]
        if self.server_url is not None:
            lines.append(f"uploaded as:    {self.device_id} (session "
                         f"{self.session_id or 'none'}) to {self.server_url}")
        lines += [f"accepted:       {len(self.accepted)}",
                  f"already stored: {len(self.already_stored)}",
                  f"refused:        {len(self.refused)}"]
        lines += [r.line() for r in self.refused]
        unanswered = self.unanswered
        if unanswered:
            lines.append(f"not answered:   {len(unanswered)} (run it again)")
            if self.stopped:
                lines.append(f"stopped:        {self.stopped}")
        stored = len(self.accepted) + len(self.already_stored)
        if self.exit_status() == EXIT_STORED:
            lines.append(f"every waiting scan is on the server ({stored} of "
                         f"{len(self.waiting)})")
        else:
            lines.append(f"{len(self.waiting) - stored} of {len(self.waiting)} waiting "
                         "scan(s) are NOT on the server")
        return "\n".join(lines) + "\n"


def classify(result: ScanResult) -> str:
    """``accepted``, ``already stored`` (this device pushed it before, or another
    device did: either way the server holds that scan id) or ``refused``."""
    if result.result == ScanOutcome.ACCEPTED:
        return "accepted"
    if result.result == ScanOutcome.DUPLICATE or result.reason == OTHER_DEVICE_REASON:
        return "already stored"
    return "refused"


def sessions_of(scans: Sequence[Scan]) -> dict[str | None, int]:
    return dict(Counter(scan.session_id for scan in scans))


def vars_of(listed: Listed) -> dict[str, Any]:
    return {"scan_id": listed.scan_id, "session_id": listed.session_id,
            "scanned_at": listed.scanned_at, "reason": listed.reason}


# -- the store copy ------------------------------------------------------------------


def copy_store(original: Path, folder: Path) -> Path:
    """Copy *original* and its ``-wal`` and ``-shm`` (when present) into *folder* under
    the door's own file name; return the folder (a data dir to open)."""
    if not original.exists():
        raise UsageError(f"{original}: no such file")
    if not original.is_file():
        raise UsageError(f"{original}: not a file (give the store file, e.g. "
                         f"/mnt/old/var/lib/checkin/{STORE_FILE})")
    try:
        for suffix in ("", "-wal", "-shm"):
            source = original.with_name(original.name + suffix)
            if suffix and not source.exists():
                continue
            shutil.copyfile(source, folder / (STORE_FILE + suffix))
    except OSError as exc:
        raise UsageError(f"cannot copy {original}: {exc.strerror or exc}") from None
    return folder


def check_door_store(path: Path, shown: Path) -> None:
    """Refuse what is not a checkin door store (named *shown* in the message) before
    anything migrates it. *path* is the copy: opened for writing, as reading a WAL
    database without its ``-shm`` (not copied off the card) makes one."""
    not_ours = f"{shown} is not a checkin door store"
    try:
        db = sqlite3.connect(path)
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            tables = {row[0] for row in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise UsageError(f"{not_ours} ({exc})") from None
    missing = DOOR_TABLES - tables
    if missing or version < 1:
        raise UsageError(f"{not_ours} (no {', '.join(sorted(missing)) or 'schema version'})")
    if version > len(MIGRATIONS):
        raise UsageError(f"{shown} has schema version {version}, newer than this software's "
                         f"{len(MIGRATIONS)}: run a newer checkin")


async def read_store(data_dir: Path) -> tuple[list[Scan], list[Listed]]:
    """The copy's waiting scans (oldest first, as the wire carries them) and its
    quarantined ones."""
    store = await SyncStore.open(data_dir)
    try:
        waiting: list[Scan] = []
        while batch := await store.waiting_scans(waiting[-1].seq if waiting else 0, 5000):
            waiting += batch
        quarantined = [Listed(row["scan_id"], row["session_id"], row["scanned_at"],
                              row["upload_note"])
                       for row in await store.scans()
                       if row["upload_state"] == UploadState.QUARANTINED]
    finally:
        await store.close()
    return waiting, quarantined


# -- the upload ----------------------------------------------------------------------


class _Retry(Exception):
    """This connection failed; another attempt may succeed."""

    def __init__(self, message: str, *, replaced: bool = False) -> None:
        super().__init__(message)
        #: Another connection of the same device took over (its own sync daemon).
        self.replaced = replaced


async def upload(config: Any, token_file: Path, report: Report) -> None:
    """Upload *report*'s waiting scans, recording each answer in it. Raises
    :class:`UsageError` when the token is refused or no server can be reached; after
    :data:`MAX_ATTEMPTS` failures in a row once some scans were answered, returns with
    the rest unanswered and :attr:`Report.stopped` saying why."""
    server = config.server
    rotation = Rotation(server.url)
    backoff = Backoff(min(server.retry_min_seconds, 2.0), min(server.retry_max_seconds, 8.0))
    failures: list[_Retry] = []
    while report.unanswered:
        before = len(report.answered)
        url = rotation.current
        try:
            token = read_token(token_file)
        except TokenError as exc:
            raise UsageError(str(exc)) from None
        try:
            await _connection(url, token, config, report)
        except _Retry as exc:
            failures.append(exc)
        if len(report.answered) > before:
            failures.clear()  # progress: the server is there
            backoff.success()
        if not report.unanswered:
            return
        if len(failures) >= MAX_ATTEMPTS:
            why = give_up(failures, config.device_id)
            if report.answered:
                report.stopped = why
                return
            raise UsageError(why)
        if rotation.failed():  # every URL failed since the last wait
            await asyncio.sleep(backoff.failure())


def give_up(failures: Sequence[_Retry], device_id: str) -> str:
    """Why recovery stopped after *failures* in a row, and what to do."""
    if any(failure.replaced for failure in failures):
        return (f"another connection of device {device_id} keeps replacing this one (close "
                f"{CLOSE_REPLACED}): stop that unit's sync daemon while recovering (sudo "
                "systemctl stop checkin-sync), then run this again")
    return ("cannot upload: the server cannot be reached ("
            + "; ".join(str(failure) for failure in failures[-3:]) + ")")


async def _connection(url: str, token: str, config: Any, report: Report) -> None:
    try:
        async with open_link(url, token, config.server.ca_file, "checkin-recover") as websocket:
            await _push(websocket, config, report, url)
    except InvalidStatus as exc:
        status = exc.response.status_code
        if status in (401, 403):
            raise UsageError(f"{url} refused the device token (HTTP {status})") from None
        raise _Retry(f"{url}: HTTP {status}") from None
    except ConnectionClosed as exc:
        close = exc.rcvd
        if close is not None and close.code == CLOSE_UNAUTHORIZED:
            raise UsageError(f"{url} refused the token in {config.server.token_file}: "
                             f"{close.reason or 'unknown or revoked device token'} (close "
                             f"{close.code}); provision the new unit and use its config "
                             "and token") from None
        if close is not None and close.code == CLOSE_REVOKED:
            raise UsageError(f"{url}: device {config.device_id} is revoked (close "
                             f"{close.code}: {close.reason or 'no reason'}); provision a "
                             "new unit and use its config and token") from None
        raise _Retry(f"{url}: " + ("connection lost" if close is None else
                     f"closed ({close.code}: {close.reason or 'no reason'})"),
                     replaced=close is not None and close.code == CLOSE_REPLACED) from None
    except ProtocolError as exc:
        if "belongs to another device" in str(exc):
            raise UsageError(f"{url}: the token in {config.server.token_file} is not "
                             f"{config.device_id}'s: {exc}") from None
        raise _Retry(f"{url}: protocol error: {exc}") from None
    except ssl.SSLCertVerificationError as exc:  # a config problem: retrying changes nothing
        raise UsageError(f"TLS with {url} failed: {exc.verify_message or exc}; check [server] "
                         f"ca_file (now {config.server.ca_file or 'the system CAs'})") from None
    except ssl.SSLError as exc:  # before OSError, which it is a kind of
        raise _Retry(f"{url}: TLS failed: {exc}") from None
    except (OSError, InvalidHandshake, TimeoutError) as exc:
        raise _Retry(f"{url}: {exc or type(exc).__name__}") from None


async def _push(websocket: ClientConnection, config: Any, report: Report, url: str) -> None:
    # No boot id, no monotonic time: this machine's clocks say nothing of the scans.
    # Not the cached session: there is no cache (the server sends a snapshot, ignored).
    end = DeviceEnd(config.device_id, __version__, CacheState(None, None, 0),
                    allow_reentry=config.door.allow_reentry)
    await _flush(websocket, end)
    welcomed = await _until(websocket, end, Welcomed)
    report.server_url, report.session_id = url, welcomed.welcome.session_id
    while pending := report.unanswered:
        batch = fit_batch(pending[:min(BATCH_SIZE, MAX_SCANS_PER_BATCH)])
        end.send_scans(batch)
        await _flush(websocket, end)
        answer = await _until(websocket, end, RecordResults)
        report.take(batch, answer.results)
    await websocket.close()


async def _until(websocket: ClientConnection, end: DeviceEnd, kind: type) -> Any:
    """Take frames until the end returns an action of *kind* (snapshots and changes
    are for a door's cache: recovery has none)."""
    while True:
        end.receive(await websocket.recv())
        for action in end.actions():
            if isinstance(action, kind):
                return action


async def _flush(websocket: ClientConnection, end: DeviceEnd) -> None:
    for frame in end.data_to_send():
        await websocket.send(frame)


# -- the command ---------------------------------------------------------------------


async def recover(config: Any, original: Path) -> Report:
    """Copy *original*, read it, upload its waiting scans under *config*'s device."""
    if config.server is None:
        raise UsageError(f"config error in {config.path}: [server] is missing (recovery "
                         "needs the new unit's url and token_file)")
    with tempfile.TemporaryDirectory(prefix="checkin-recover-") as folder:
        data_dir = copy_store(original, Path(folder))
        check_door_store(data_dir / STORE_FILE, original)
        try:
            waiting, quarantined = await read_store(data_dir)
        except StoreError as exc:
            raise UsageError(f"{original}: {exc}") from None
    report = Report(original, config.device_id, waiting, quarantined)
    if waiting:
        await upload(config, config.server.token_file, report)
    return report


def run(args: argparse.Namespace, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    from device.config import ConfigError, load_config

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(exc, file=err)
        return EXIT_USAGE
    try:
        report = asyncio.run(recover(config, Path(args.store)))
    except UsageError as exc:
        print(f"checkin recover: {exc}", file=err)
        return EXIT_USAGE
    if args.json:
        print(json.dumps(report.as_json(), indent=1), file=out)
    else:
        out.write(report.text())
    return report.exit_status()
