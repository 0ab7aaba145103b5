"""The ``/sync`` websocket endpoint: the thin I/O layer over :class:`ServerEnd`.

One :class:`DeviceLink` per connected device. It authenticates the device by
its bearer token, then runs two tasks: a reader that feeds every frame to the
protocol end, and a pump that carries out the end's actions against the store
and sends what the end queued. A frame that breaks the protocol closes that one
connection with :data:`CLOSE_PROTOCOL_ERROR` (or :data:`CLOSE_POLICY` for a
flood) and its reason; nothing else is affected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import asdict
from datetime import datetime
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from core.clock import wall_now
from core.database import StoreError
from server.hub import Hub
from server.live import Live, session_topic
from server.store import Device, ServerStore
from server.tokens import bearer
from sync.messages import (
    CLOSE_INTERNAL_ERROR,
    CLOSE_POLICY,
    CLOSE_REASSIGNED,
    CLOSE_REPLACED,
    CLOSE_REVOKED,
    CLOSE_UNAUTHORIZED,
    REVOKED_REASON,
    ProtocolError,
    ScanOutcome,
    Status,
    close_reason,
)
from sync.server_end import (
    NoteStatus,
    SendChanges,
    SendSnapshot,
    ServerAction,
    ServerEnd,
    ServerState,
    StoreScans,
)

log = logging.getLogger("checkin.server")

#: Most actions a link lets wait or run before it stops reading the device's frames.
MAX_UNFINISHED_ACTIONS = 8
#: Seconds a device has to say hello once its connection is accepted.
HELLO_TIMEOUT = 10.0


async def sync_endpoint(websocket: WebSocket) -> None:
    store: ServerStore = websocket.app.state.store
    hub: Hub = websocket.app.state.hub
    token = bearer(websocket.headers.get("authorization"))
    try:
        device = await store.device_by_token(token) if token else None
        revoked = device is None and token is not None and await store.token_revoked(token)
        await websocket.accept()
        if revoked:  # the door wipes its codes; a mere typo (below) must not make it
            log.warning("sync connection from %s refused: revoked device token",
                        _peer(websocket))
            await websocket.close(CLOSE_REVOKED, REVOKED_REASON)
            return
        if device is None:
            log.warning("sync connection from %s refused: %s", _peer(websocket),
                        "unknown device token" if token else "no bearer token")
            await websocket.close(CLOSE_UNAUTHORIZED, "unknown device token")
            return
        link = DeviceLink(websocket, ServerEnd(await store.view(device)), device, store)
    except StoreError as exc:
        log.error("sync connection from %s: %s", _peer(websocket), exc)
        await _close(websocket, CLOSE_INTERNAL_ERROR, "server storage error; retry later")
        return
    except (WebSocketDisconnect, RuntimeError, OSError):
        return  # gone before it was accepted
    await hub.attach(link, replaced_code=CLOSE_REPLACED)
    link.woken = store.read_mark()  # from here on, every commit wakes it
    try:
        await _serve(link, token)
    finally:
        hub.detach(link)
        link.publish_door()  # disconnected (or replaced): the doors' pages say so


async def _serve(link: DeviceLink, token: str) -> None:
    """Serve an attached link until it ends."""
    device, store = link.device, link.store
    try:
        # A reassignment or revocation between reading the device and attaching the
        # link found no link to close: look again now that any later one will find it.
        current = await store.device_by_token(token)
        if current != device:
            code, reason = (
                (CLOSE_REASSIGNED, "device reassigned; reconnect") if current
                else (CLOSE_REVOKED, REVOKED_REASON) if await store.token_revoked(token)
                else (CLOSE_UNAUTHORIZED, "unknown device token"))
            await link.close(code, reason)
            return
        await store.note_status(device.device_id, None)  # last seen: now
        link.publish_door()
    except StoreError as exc:
        log.error("device %s: %s", device.device_id, exc)
        await link.close(CLOSE_INTERNAL_ERROR, "server storage error; retry later")
        return
    log.info("device %s connected (session %s)", device.device_id, device.session_id)
    try:
        await link.serve()
    finally:
        log.info("device %s disconnected (at most %d actions waited at once)",
                 device.device_id, link.peak_backlog)


class DeviceLink:
    """One device's websocket, driven by its :class:`ServerEnd`.

    Work is bounded per connection: the reader stops taking frames while
    :data:`MAX_UNFINISHED_ACTIONS` actions wait or are under way, so a device
    that sends faster than the store writes is slowed down by TCP instead of
    queueing work in memory; statuses coalesce (only the latest is written)
    and unanswered scan batches are capped by the protocol end.
    """

    def __init__(self, websocket: WebSocket, end: ServerEnd, device: Device,
                 store: ServerStore) -> None:
        self.websocket = websocket
        self.end = end
        self.device = device
        self.device_id = device.device_id
        self.session_id = device.session_id
        self.store = store
        #: The organizers' live pages (None until the app has them).
        self.live: Live | None = getattr(websocket.app.state, "live", None)
        #: The connected doors, told when this door's scans change who is inside.
        self.hub: Hub | None = getattr(websocket.app.state, "hub", None)
        self._hello_noted = False
        #: The store's read mark when something last woke this link (None: not yet
        #: attached to the hub): reads of the changes started after it may be shared.
        self.woken: int | None = None
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()
        self._working = 0
        self._closed = False
        #: Most actions queued at once on this link so far (for tests and benchmarks).
        self.peak_backlog = 0

    async def serve(self) -> None:
        pump = asyncio.create_task(self._pump())
        deadline = asyncio.create_task(self._hello_deadline())
        try:
            await self._read()
        finally:
            for task in (pump, deadline):
                task.cancel()
            for task in (pump, deadline):
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _read(self) -> None:
        while not self._closed:
            while self._unfinished() >= MAX_UNFINISHED_ACTIONS and not self._closed:
                self._progress.clear()
                await self._progress.wait()
            try:
                message = await self.websocket.receive()
            except (WebSocketDisconnect, RuntimeError):
                return
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("text")
            try:
                self.end.receive(data if data is not None else message.get("bytes") or b"",
                                 wall_now())
            except ProtocolError as exc:
                log.warning("device %s broke the protocol: %s", self.device_id, exc)
                await self.close(exc.close_code, str(exc))
                return
            self.peak_backlog = max(self.peak_backlog, self._unfinished())
            self._wake.set()

    def _unfinished(self) -> int:
        return self.end.backlog + self._working

    async def _hello_deadline(self) -> None:
        await asyncio.sleep(HELLO_TIMEOUT)
        if self.end.state is ServerState.AWAIT_HELLO:
            log.warning("device %s sent no hello within %g s", self.device_id, HELLO_TIMEOUT)
            await self.close(CLOSE_POLICY, f"no hello within {HELLO_TIMEOUT:g} s")

    @property
    def wants_admissions(self) -> bool:
        return self.end.wants_admissions

    def changed(self) -> None:
        # A read of the changes started from now on sees what woke this link.
        self.woken = self.store.read_mark()
        self.end.changed()
        self._wake.set()

    async def _pump(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while True:
                    # What is queued goes first (the welcome before a long snapshot read).
                    for frame in self.end.data_to_send():
                        await self.websocket.send_text(frame)
                    actions = self.end.actions()
                    if not actions:
                        break
                    self._working = len(actions)
                    for action in actions:
                        await self._carry_out(action)
                        self._working -= 1
                        self._progress.set()
        except StoreError as exc:
            log.error("device %s: %s", self.device_id, exc)
            await self.close(CLOSE_INTERNAL_ERROR, "server storage error; retry later")
        except (WebSocketDisconnect, RuntimeError, OSError):
            self._closed = True  # the reader sees the disconnect and ends the link
        except Exception:  # a bug: end this link loudly rather than leave it hanging
            log.exception("device %s: internal error", self.device_id)
            await self.close(CLOSE_INTERNAL_ERROR, "internal server error; retry later")
        finally:
            self._working = 0
            self._progress.set()  # a reader waiting for room must not wait forever

    async def _carry_out(self, action: ServerAction) -> None:
        hello = self.end.hello
        if hello is not None and not self._hello_noted:  # before any scan is audited
            # Its clocks too: an anchor for its boot, which re-times the scans it pushed
            # earlier in this boot without knowing the time.
            retimed = await self.store.note_hello(self.device_id, hello.allow_reentry,
                                                  self.end.anchor)
            self._hello_noted = True
            if retimed:
                self._publish(*(session_topic(s) for s in retimed if s is not None),
                              "sessions")
        shared = self.end.wants_admissions
        if isinstance(action, SendSnapshot):
            self.end.send_snapshot(*await (self.store.snapshot_with_admissions(self.session_id)
                                          if shared else self.store.snapshot(self.session_id)))
        elif isinstance(action, SendChanges):
            found = await self.store.changes_since(self.session_id, action.since, shared,
                                                   fresh_after=self.woken)
            if found is None:  # tombstones it needs were pruned: a snapshot on reconnect
                await self.close(CLOSE_REASSIGNED, "history pruned; reconnect for a snapshot")
                return
            self.end.send_changes(action.since, *found)
        elif isinstance(action, StoreScans):
            presence = self.store.presence_version(self.session_id)
            stored = (await self.store.store_scans(self.device, action.scans, self.end.anchor)
                      if action.scans else [])
            self.end.send_results(action.batch, stored + action.refused, wall_now())
            accepted = {r.scan_id for r in stored if r.result == ScanOutcome.ACCEPTED}
            self._publish(*{session_topic(s.session_id) for s in action.scans
                            if s.scan_id in accepted and s.session_id is not None},
                          "sessions")
            # Who is inside changed (this batch's admissions or exits, or another's
            # committed with it: a spare fetch is harmless): every door of the session that
            # applies admissions (this one too) asks for the changes, as after a
            # registrant change.
            if self.hub is not None and self.store.presence_version(self.session_id) != presence:
                self.hub.changed(self.session_id, admissions=True)
        elif isinstance(action, NoteStatus):
            await self.store.note_status(self.device_id, status_record(action.status,
                                                                       wall_now()))
            self.publish_door()

    def _publish(self, *topics: str) -> None:
        if self.live is not None:
            self.live.publish(*topics)

    def publish_door(self) -> None:
        """This door's state changed (connected, disconnected, a status)."""
        self._publish("doors", *([session_topic(self.session_id)] if self.session_id else []))

    async def close(self, code: int, reason: str) -> None:
        self._closed = True
        self._progress.set()
        await _close(self.websocket, code, reason)


async def _close(websocket: WebSocket, code: int, reason: str) -> None:
    """Close *websocket* unless it is closed already; a peer already gone is no error."""
    if websocket.application_state is WebSocketState.DISCONNECTED:
        return
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
        await websocket.close(code, close_reason(reason))


def status_record(status: Status, received: datetime) -> dict[str, Any]:
    """What the server keeps of a device's *status* received at *received*: its fields,
    and ``clock_offset_s`` (the device's clock minus the server's, in seconds, from the
    status's ``sent_at``; ``None`` when the device did not say)."""
    record = asdict(status)
    offset = None
    if status.sent_at is not None:
        with contextlib.suppress(ValueError, OverflowError):
            offset = round((datetime.fromisoformat(status.sent_at) - received).total_seconds(),
                           3)
    return record | {"clock_offset_s": offset}


def _peer(websocket: WebSocket) -> str:
    client = websocket.client
    return f"{client.host}:{client.port}" if client else "unknown peer"
