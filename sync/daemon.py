"""The sync daemon: the network side of a door, driving :class:`DeviceEnd` over websockets.

It owns the network and nothing else: the door never waits on it. While
connected it applies the server's snapshot and changes to the shared store
(each with its cursor, in one transaction), pushes waiting scans in batches and
marks them stored only when the server's answer says so, and reports the
door's status. When the link drops it reconnects with jittered exponential
backoff — slower after the server refused its token, and saying why. With several
server URLs it moves to the next at once and waits only after each has failed
(:mod:`sync.failover`); ``checkin status`` shows the one it is connected to.

Idle, it sleeps: the door pokes it after each scan (:mod:`sync.wake`), a server's
answer wakes it, and only as a fallback (a poke is a hint that may be lost) does it
look for waiting scans every :data:`FALLBACK_SECONDS`. Before, it looked every 50 ms;
``python -m bench.idle`` measures the difference.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
from datetime import datetime
from pathlib import Path

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from core import __version__
from core.clock import boot_id, monotonic_ns, wall_now, wall_stamp
from core.database import StoreError
from core.notify import ready_and_watched
from core.timesource import ClockAnchor
from sync.backoff import Backoff
from sync.config import DaemonConfig, insecure_url_warning
from sync.device_end import (
    ApplyChanges,
    ApplySnapshot,
    DeviceAction,
    DeviceEnd,
    RecordResults,
    Welcomed,
)
from sync.failover import Rotation
from sync.messages import (
    CLOCK_TOLERANCE_SECONDS,
    CLOSE_INTERNAL_ERROR,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_REASSIGNED,
    CLOSE_REVOKED,
    CLOSE_UNAUTHORIZED,
    MAX_SCANS_PER_BATCH,
    MAX_SERVER_MESSAGE,
    ProtocolError,
    close_reason,
    fit_batch,
)
from sync.store import SyncStore
from sync.wake import WakeListener

log = logging.getLogger("checkin.sync")

#: Scans per pushed batch, and batches awaiting an answer at once.
BATCH_SIZE = 500
MAX_BATCHES_IN_FLIGHT = 2
#: With nothing to push, how long to wait for a poke or an answer before looking at the
#: store anyway: the longest a scan waits when its poke was lost (the door scanned while
#: the daemon was restarting, or the socket could not be bound).
FALLBACK_SECONDS = 1.0


class TokenError(Exception):
    """The device token file is missing, unreadable or empty."""


def read_token(path: Path) -> str:
    """Read the device token (again at every connection: a technician may replace it)."""
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise TokenError(f"cannot read token file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise TokenError(f"token file {path} is not text") from None
    if not token or any(c.isspace() for c in token):
        raise TokenError(f"token file {path} must hold one token (got "
                         f"{'nothing' if not token else 'several words'})")
    return token


def open_link(url: str, token: str, ca_file: Path | None, agent: str) -> connect:
    """``async with open_link(...) as websocket:`` — a device's connection to the server
    at *url*, authenticated by *token*, TLS trusting *ca_file*, named *agent* (the sync
    daemon's, and ``checkin recover``'s under a new unit's token)."""
    return connect(
        url,
        additional_headers={"Authorization": f"Bearer {token}"},
        user_agent_header=f"{agent}/{__version__}",
        ssl=ssl_context(url, ca_file),
        max_size=MAX_SERVER_MESSAGE,
        open_timeout=10, ping_interval=10, ping_timeout=10, close_timeout=2,
    )


def ssl_context(url: str, ca_file: Path | None) -> ssl.SSLContext | None:
    """TLS for a ``wss://`` *url*, trusting *ca_file* (one CA file for every server) or the
    system's CAs; ``None`` for ``ws://``."""
    if not url.startswith("wss://"):
        return None
    return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)


class _Failure(Exception):
    """Why one connection ended, and how soon to try again."""

    def __init__(self, message: str, *, auth: bool = False, at_once: bool = False,
                 close_code: int | None = None, revoked: bool = False) -> None:
        super().__init__(message)
        self.auth = auth
        self.at_once = at_once
        self.close_code = close_code
        #: The server revoked this device: its cache must be wiped.
        self.revoked = revoked

    def fields(self) -> dict[str, object]:
        """Its log line's extra fields."""
        return {"event": "disconnected", "reason": str(self), "close_code": self.close_code}


class SyncDaemon:
    """Keeps one device's store in step with the server until :meth:`stop`."""

    def __init__(self, config: DaemonConfig, store: SyncStore) -> None:
        if config.server is None:
            raise ValueError("the config has no [server] section")
        self.config = config
        self.server = config.server
        self.store = store
        self.backoff = Backoff(self.server.retry_min_seconds, self.server.retry_max_seconds,
                               self.server.auth_retry_seconds,
                               max(self.server.auth_retry_seconds, 300.0))
        #: Which server URL to try, and whether to wait first.
        self.rotation = Rotation(self.server.url)
        self._stopping = asyncio.Event()
        #: Set by the door's poke, a server's answer or a welcome: look for scans to push.
        self.wake = WakeListener(config.data_dir)

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        """Connect, sync, reconnect, until stopped."""
        if not self.wake.open():
            log.warning("cannot bind %s: looking for new scans every %g s instead of "
                        "being woken by the door", self.wake.path, FALLBACK_SECONDS)
        try:
            await self._run()
        finally:
            self.wake.close()

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self._connect_once()
                continue  # returns only when stopped
            except _Failure as failure:
                delay = await self._failed(failure)
            if delay:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
        await self._note(connected=False, error="sync daemon stopped")

    async def _failed(self, failure: _Failure) -> float:
        """Log why the link ended and choose the next attempt: return how long to wait."""
        failed_url = self.rotation.current
        if failure.revoked:
            await self._wipe()
        why = str(failure)
        if len(self.rotation.urls) > 1 and failed_url not in why:
            why = f"{failed_url}: {why}"  # which of the servers closed or lost the link
        if failure.at_once:  # the server is fine (it moved the door): the same one again
            log.info("%s; reconnecting now", why, extra=failure.fields())
            await self._note(connected=False, error=why, server_url=failed_url)
            return 0.0
        wait = self.rotation.failed(waiting=failure.auth)
        fields = failure.fields() | {"server_url": failed_url,
                                     "next_url": self.rotation.current}
        if not wait:
            log.warning("%s; trying %s now", why, self.rotation.current,
                        extra=fields | {"retry_seconds": 0})
            delay = 0.0
        else:
            delay = self.backoff.failure(auth=failure.auth)
            after = "" if len(self.rotation.urls) == 1 else f" with {self.rotation.current}"
            log.warning("%s; retrying in %.1f s%s", why, delay, after,
                        extra=fields | {"retry_seconds": round(delay, 3)})
        await self._note(connected=False, error=why, server_url=failed_url)
        return delay

    async def _wipe(self) -> None:
        """The server said this device is revoked: wipe the cached codes and the key
        (the scans stay for recovery). It keeps trying: a new token file resumes it."""
        try:
            newly, kept = await self.store.wipe_revoked()
        except StoreError as exc:
            log.error("device revoked, but its cache could not be wiped: %s", exc)
            return
        if newly:
            log.error("this device was revoked by the server: its cached attendees, "
                      "registrants and code key are wiped (the door signals not_ready); "
                      "%d scan(s) the server does not have are kept for recovery "
                      "(checkin recover); a new token in %s resumes it", kept,
                      self.server.token_file,
                      extra={"event": "revoked", "scans_kept": kept})

    async def _note(self, *, connected: bool, error: str | None = None,
                    server_url: str | None = None) -> None:
        try:
            await self.store.note_link(connected=connected, error=error, server_url=server_url)
        except StoreError as exc:
            log.error("%s", exc)

    async def _connect_once(self) -> None:
        try:
            token = read_token(self.server.token_file)
        except TokenError as exc:
            raise _Failure(str(exc), auth=True) from None
        url = self.rotation.current
        try:
            async with open_link(url, token, self.server.ca_file, "checkin-sync") as websocket:
                await self._serve(websocket)
        except InvalidStatus as exc:
            status = exc.response.status_code
            raise _Failure(f"{url} refused the connection with HTTP {status}",
                           auth=status in (401, 403)) from None
        except ConnectionClosed as exc:
            raise _closed(exc, self.server.token_file) from None
        except ssl.SSLError as exc:  # before OSError, which it is a kind of
            raise _Failure(f"TLS with {url} failed: {exc}") from None
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            raise _Failure(f"cannot reach {url}: {exc or type(exc).__name__}") from None
        except StoreError as exc:
            raise _Failure(f"device store error: {exc}") from None

    async def _serve(self, websocket: ClientConnection) -> None:
        # admissions: this daemon applies the other doors' admissions to the store (the
        # door decides by them); allow_reentry: the server's audit judges by the policy;
        # hashes: the store keeps keyed hashes of codes (the welcome brings the key).
        end = DeviceEnd(self.config.device_id, __version__, await self.store.cache_state(),
                        boot_id=boot_id(), monotonic_ns=monotonic_ns(), admissions=True,
                        allow_reentry=self.config.door.allow_reentry, hashes=True)
        link = _Link(websocket, end)
        await link.flush()
        tasks = [asyncio.create_task(coro) for coro in (
            self._read(link), self._push(link), self._report(link), self._stopping.wait())]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            task.result()  # re-raise why the connection ended

    async def _read(self, link: _Link) -> None:
        async for frame in link.websocket:
            # The clocks as the frame arrived: a welcome's server time is anchored here.
            link.received_ns, link.received_at = monotonic_ns(), wall_now()
            try:
                link.end.receive(frame)
            except ProtocolError as exc:
                log.error("server broke the protocol: %s", exc)
                await link.websocket.close(CLOSE_PROTOCOL_ERROR, close_reason(str(exc)))
                raise _Failure(f"protocol error: {exc}") from None
            for action in link.end.actions():
                await self._carry_out(action, link)
            await link.flush()
        raise _Failure("server closed the connection")

    async def _carry_out(self, action: DeviceAction, link: _Link) -> None:
        try:
            if isinstance(action, Welcomed):
                self.backoff.success()
                welcome = action.welcome
                log.info("connected to %s as %s (session %s, %s)", self.rotation.current,
                         welcome.device_id, welcome.session_id,
                         "full resync" if welcome.resync else f"changes after {link.end.cursor}",
                         extra={"event": "connected", "server_url": self.rotation.current,
                                "device_id": welcome.device_id,
                                "session_id": welcome.session_id, "resync": welcome.resync,
                                "cursor": link.end.cursor})
                warning = clock_warning(welcome.server_time, link.received_at)
                if warning:
                    log.warning("%s", warning)
                server_time = datetime.fromisoformat(welcome.server_time)
                await self.store.note_clock(
                    ClockAnchor(server_time, link.received_ns, boot_id()),
                    clock_offset_s=(link.received_at - server_time).total_seconds())
                await self.store.note_link(connected=True, server_url=self.rotation.current)
                link.welcomed.set()
                self.wake.set()
            elif isinstance(action, ApplySnapshot):
                await self.store.apply_snapshot(action)
                log.info("snapshot applied: session %s, %d registrants, %d attendees, cursor %d",
                         action.session.session_id if action.session else None,
                         len(action.registrants), len(action.attendees), action.cursor,
                         extra={"event": "snapshot", "session_id": action.session.session_id
                                if action.session else None,
                                "registrants": len(action.registrants),
                                "attendees": len(action.attendees), "cursor": action.cursor})
            elif isinstance(action, ApplyChanges):
                await self.store.apply_changes(action)
                log.info("applied %d change(s), cursor %d", len(action.changes), action.cursor,
                         extra={"event": "changes", "count": len(action.changes),
                                "cursor": action.cursor})
            elif isinstance(action, RecordResults):
                await self.store.record_results(action.results)
                if action.server_time is not None:  # a later anchor for the door's clock
                    await self.store.note_clock(ClockAnchor(
                        datetime.fromisoformat(action.server_time), link.received_ns, boot_id()))
                for result in action.results:
                    if not result.stored:
                        log.warning("scan %s quarantined: %s", result.scan_id, result.reason,
                                    extra={"event": "quarantined", "scan_id": result.scan_id,
                                           "reason": result.reason})
                stored = sum(result.stored for result in action.results)
                log.info("batch answered: %d scan(s) stored, %d refused", stored,
                         len(action.results) - stored, extra={
                             "event": "batch", "batch": action.batch, "stored": stored,
                             "refused": len(action.results) - stored})
                self.wake.set()  # a batch slot is free
        except StoreError as exc:
            log.error("%s", exc)
            await link.websocket.close(CLOSE_INTERNAL_ERROR, "device store error")
            raise _Failure(f"device store error: {exc}") from None

    async def _push(self, link: _Link) -> None:
        pushed_seq = 0  # scans at or below it are in flight or answered on this link
        await link.welcomed.wait()
        while True:
            if link.end.batches_in_flight >= MAX_BATCHES_IN_FLIGHT:
                await self.wake.wait(FALLBACK_SECONDS)  # an answer wakes it
                continue
            try:
                scans = fit_batch(await self.store.waiting_scans(
                    pushed_seq, min(BATCH_SIZE, MAX_SCANS_PER_BATCH)))
            except StoreError as exc:
                raise _Failure(f"device store error: {exc}") from None
            if not scans:
                await self.wake.wait(FALLBACK_SECONDS)  # the door's poke wakes it
                continue
            link.end.send_scans(scans)
            pushed_seq = scans[-1].seq
            await link.flush()

    async def _report(self, link: _Link) -> None:
        await link.welcomed.wait()
        while True:
            status = await self.store.status()
            link.end.send_status(scans_waiting=status.scans_waiting,
                                 scans_quarantined=status.scans_quarantined,
                                 last_frame_at=status.last_frame_at,
                                 sent_at=wall_stamp(),
                                 status_seconds=self.server.status_seconds)
            await link.flush()
            # Also: "this daemon is alive".
            await self.store.note_link(connected=True, server_url=self.rotation.current)
            await asyncio.sleep(self.server.status_seconds)


def clock_warning(server_time: str, now: datetime) -> str | None:
    """What to tell a technician when this device's clock is off from the server's.

    A door stamps every scan with its own clock and applies session time windows by
    it: an offset of more than :data:`CLOCK_TOLERANCE_SECONDS` makes attendance
    times wrong and may admit or refuse people outside the window.
    """
    offset = (now - datetime.fromisoformat(server_time)).total_seconds()
    if abs(offset) <= CLOCK_TOLERANCE_SECONDS:
        return None
    return (f"this device's clock is {abs(offset):.1f} s {'ahead of' if offset > 0 else 'behind'}"
            f" the server's: scan times and session windows are off by as much; check NTP"
            f" (timedatectl status)")


class _Link:
    def __init__(self, websocket: ClientConnection, end: DeviceEnd) -> None:
        self.websocket = websocket
        self.end = end
        self.welcomed = asyncio.Event()
        #: This device's monotonic and wall clocks as the frame being handled arrived.
        self.received_ns = monotonic_ns()
        self.received_at = wall_now()

    async def flush(self) -> None:
        for frame in self.end.data_to_send():
            await self.websocket.send(frame)


def _closed(exc: ConnectionClosed, token_file: Path) -> _Failure:
    close = exc.rcvd
    if close is None:
        return _Failure("connection lost")
    reason = f"server closed the connection ({close.code}: {close.reason or 'no reason'})"
    if close.code == CLOSE_REVOKED:
        return _Failure(f"device revoked (close {close.code}): cache wiped, scans kept for "
                        f"recovery; a new token in {token_file} resumes it", auth=True,
                        close_code=close.code, revoked=True)
    if close.code == CLOSE_UNAUTHORIZED:
        return _Failure(f"refused: {close.reason or 'unknown or revoked device token'} "
                        f"(close {close.code}); check the token in {token_file}", auth=True,
                        close_code=close.code)
    if close.code == CLOSE_REASSIGNED:
        return _Failure(reason, at_once=True, close_code=close.code)
    return _Failure(reason, close_code=close.code)


async def run_sync(config: DaemonConfig) -> int:
    """Run the daemon until SIGTERM or SIGINT; return the exit status."""
    # At every start, so the journal keeps saying it while the door runs on ws://.
    for url in config.server.url if config.server else ():
        if warning := insecure_url_warning(url):
            log.warning("%s", warning)
    try:
        store = await SyncStore.open(config.data_dir)
    except StoreError as exc:
        log.error("%s", exc)
        return 1
    daemon = SyncDaemon(config, store)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, daemon.stop)
    try:
        # systemd (Type=notify): up once the loop runs, connected or not; the watchdog is
        # petted from this loop whatever the link does, so only a wedged daemon stops it.
        async with ready_and_watched():
            await daemon.run()
    finally:
        await store.close()
    return 0
