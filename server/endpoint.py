"""The ``/sync`` websocket endpoint: the thin I/O layer over :class:`ServerEnd`.

One :class:`DeviceLink` per connected device. It authenticates the device by
its bearer token, then runs two tasks: a reader that feeds every frame to the
protocol end, and a pump that carries out the end's actions against the store
and sends what the end queued. A frame that breaks the protocol closes that one
connection with :data:`CLOSE_PROTOCOL_ERROR` and its reason; nothing else is
affected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import asdict

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from checkin.database import StoreError
from server.hub import Hub
from server.store import Device, ServerStore
from server.tokens import bearer
from sync.messages import (
    CLOSE_INTERNAL_ERROR,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_REASSIGNED,
    CLOSE_REPLACED,
    CLOSE_UNAUTHORIZED,
    ProtocolError,
    close_reason,
)
from sync.server_end import (
    Action,
    NoteStatus,
    SendChanges,
    SendSnapshot,
    ServerEnd,
    StoreScans,
)

log = logging.getLogger("checkin.server")


async def sync_endpoint(websocket: WebSocket) -> None:
    store: ServerStore = websocket.app.state.store
    hub: Hub = websocket.app.state.hub
    token = bearer(websocket.headers.get("authorization"))
    device = await store.device_by_token(token) if token else None
    await websocket.accept()
    if device is None:
        log.warning("sync connection from %s refused: %s", _peer(websocket),
                    "unknown or revoked device token" if token else "no bearer token")
        await websocket.close(CLOSE_UNAUTHORIZED, "unknown or revoked device token")
        return
    link = DeviceLink(websocket, ServerEnd(await store.view(device)), device, store)
    await hub.attach(link, replaced_code=CLOSE_REPLACED)
    # A reassignment or revocation between reading the device and attaching the link
    # found no link to close: look again now that any later one will find it.
    current = await store.device_by_token(token)
    if current != device:
        hub.detach(link)
        code, reason = ((CLOSE_REASSIGNED, "device reassigned; reconnect") if current
                        else (CLOSE_UNAUTHORIZED, "device token revoked"))
        await websocket.close(code, reason)
        return
    await store.note_status(device.device_id, None)  # last seen: now
    log.info("device %s connected (session %s)", device.device_id, device.session_id)
    try:
        await link.serve()
    finally:
        hub.detach(link)
        log.info("device %s disconnected", device.device_id)


class DeviceLink:
    """One device's websocket, driven by its :class:`ServerEnd`."""

    def __init__(self, websocket: WebSocket, end: ServerEnd, device: Device,
                 store: ServerStore) -> None:
        self.websocket = websocket
        self.end = end
        self.device = device
        self.device_id = device.device_id
        self.session_id = device.session_id
        self.store = store
        self._wake = asyncio.Event()
        self._closed = False

    async def serve(self) -> None:
        pump = asyncio.create_task(self._pump())
        try:
            await self._read()
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump

    async def _read(self) -> None:
        while not self._closed:
            try:
                message = await self.websocket.receive()
            except (WebSocketDisconnect, RuntimeError):
                return
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("text")
            try:
                self.end.receive(data if data is not None else message.get("bytes") or b"")
            except ProtocolError as exc:
                log.warning("device %s broke the protocol: %s", self.device_id, exc)
                await self.close(CLOSE_PROTOCOL_ERROR, str(exc))
                return
            self._wake.set()

    def changed(self) -> None:
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
                    for action in actions:
                        await self._carry_out(action)
        except StoreError as exc:
            log.error("device %s: %s", self.device_id, exc)
            await self.close(CLOSE_INTERNAL_ERROR, "server storage error; retry later")
        except (WebSocketDisconnect, RuntimeError, OSError):
            self._closed = True  # the reader sees the disconnect and ends the link
        except Exception:  # a bug: end this link loudly rather than leave it hanging
            log.exception("device %s: internal error", self.device_id)
            await self.close(CLOSE_INTERNAL_ERROR, "internal server error; retry later")

    async def _carry_out(self, action: Action) -> None:
        if isinstance(action, SendSnapshot):
            self.end.send_snapshot(*await self.store.snapshot(self.session_id))
        elif isinstance(action, SendChanges):
            found = await self.store.changes_since(self.session_id, action.since)
            if found is None:  # tombstones it needs were pruned: a snapshot on reconnect
                await self.close(CLOSE_REASSIGNED, "history pruned; reconnect for a snapshot")
                return
            self.end.send_changes(action.since, *found)
        elif isinstance(action, StoreScans):
            self.end.send_results(action.batch,
                                  await self.store.store_scans(self.device, action.scans))
        elif isinstance(action, NoteStatus):
            await self.store.note_status(self.device_id, asdict(action.status))

    async def close(self, code: int, reason: str) -> None:
        self._closed = True
        if self.websocket.application_state is WebSocketState.DISCONNECTED:
            return
        with contextlib.suppress(RuntimeError, OSError):
            await self.websocket.close(code, close_reason(reason))


def _peer(websocket: WebSocket) -> str:
    client = websocket.client
    return f"{client.host}:{client.port}" if client else "unknown peer"
