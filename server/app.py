"""The central server: one Starlette application on uvicorn.

Starlette rather than FastAPI: the server has a dozen routes and one
websocket, and checks its JSON with the same field checks as the device's
config and the sync messages (:mod:`core.shapes`); FastAPI would add
pydantic and its memory for nothing we use.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import WebSocketRoute

from core.clock import wall_now
from core.database import StoreError
from core.notify import notify, pet_watchdog, watchdog_seconds
from server.api import ROUTES, error
from server.endpoint import sync_endpoint
from server.live import Live
from server.relay import Relay
from server.schema import KEEP_DELETED_DAYS
from server.store import ServerStore
from server.tokens import admin_token
from server.web.dashboard import ROUTES as LIVE_ROUTES
from server.web.pages import ROUTES as WEB_ROUTES
from server.web.pages import Web, WebError, is_page
from sync.messages import MAX_DEVICE_MESSAGE

log = logging.getLogger("checkin.server")

#: Seconds between two prunings of the removals older than that.
PRUNE_EVERY = 3600.0


def create_app(data_dir: Path, token: str, *,
               keep_deleted: timedelta = timedelta(days=KEEP_DELETED_DAYS),
               database: str | None = None) -> Starlette:
    """The server's ASGI application, keeping its files in *data_dir*, its data in
    *database* (a URL; ``None``: the SQLite file in *data_dir*) and registrants'
    removals for *keep_deleted*."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        store = app.state.store = await ServerStore.open(database or data_dir)
        # What changed, for the organizers' live pages (server-sent events).
        live = app.state.live = Live()
        # The doors connected here, and news to and from the other server processes on
        # the same database (none with SQLite: its one process hears only itself).
        relay = app.state.relay = Relay(store.publish, store.origin, live)
        app.state.hub = relay.hub
        relay.start()
        await store.listen(relay.heard)
        app.state.admin_token = token
        # The organizers' pages: the cookie secret and the uploads folder in the data dir.
        app.state.web = await asyncio.to_thread(Web, data_dir, token)
        log.info("server store %s (epoch %s)", store.url, store.epoch)
        pruning = asyncio.create_task(prune_tombstones(store, keep_deleted))
        try:
            yield
        finally:
            live.close()
            pruning.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pruning
            await relay.close()
            await store.close()

    return Starlette(routes=[*ROUTES, WebSocketRoute("/sync", sync_endpoint), *LIVE_ROUTES,
                             *WEB_ROUTES],
                     lifespan=lifespan, exception_handlers={HTTPException: _http_error})


async def prune_tombstones(store: ServerStore, keep: timedelta,
                           every: float = PRUNE_EVERY) -> None:
    """Forget registrants' removals older than *keep*, now and every *every* seconds,
    until cancelled. Doors whose cursor is behind a forgotten removal get a snapshot
    when they next sync."""
    while True:
        try:
            pruned = await store.prune_tombstones_before(wall_now() - keep)
        except StoreError as exc:  # e.g. the disk is full: the next round tries again
            log.warning("cannot prune removed registrants: %s", exc)
        else:
            if pruned:
                log.info("forgot %d registrant removal(s) older than %s", pruned, keep)
        await asyncio.sleep(every)


async def _renew_epoch(target: Path | str) -> str:
    store = await ServerStore.open(target)
    try:
        return await store.renew_epoch()
    finally:
        await store.close()


async def _http_error(request: Request, exc: Exception) -> Response:
    """Routing errors (404, 405) in the API's own JSON shape, or as a page for the web
    interface's paths."""
    assert isinstance(exc, HTTPException)
    if is_page(request.url.path) and hasattr(request.app.state, "web"):
        message = {404: f"there is no page {request.url.path}",
                   405: f"{request.method} is not allowed on {request.url.path}"}.get(
                       exc.status_code, str(exc.detail))
        return request.app.state.web.error_page(request, WebError(exc.status_code, message))
    if exc.status_code == 404:
        return error(404, f"no such route: {request.method} {request.url.path}")
    if exc.status_code == 405:
        return error(405, f"{request.method} is not allowed on {request.url.path}")
    return error(exc.status_code, str(exc.detail))


#: Seconds a client has to send a whole request head (uvicorn alone waits forever, so
#: idle or half-sent connections would pile up before anyone is authenticated).
HEAD_TIMEOUT = 10.0
#: Seconds an idle keep-alive connection is kept between requests.
KEEP_ALIVE_TIMEOUT = 5
#: Most connections and requests at once before plain HTTP requests get 503 (doors'
#: websockets are not refused by it; their file descriptors are bounded by the unit's
#: LimitNOFILE).
MAX_CONCURRENCY = 4096


def _timed_h11() -> type:
    """uvicorn's HTTP/1.1 protocol with a deadline on every request head."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class TimedH11Protocol(H11Protocol):  # type: ignore[misc]
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            partial = self.conn.their_state is h11.IDLE and bool(self.conn.trailing_data[0])
            if partial:  # part of a head: it has until the deadline to finish it
                if self._head_timer is None:
                    self._arm()
            elif self._head_timer is not None and self.conn.their_state is not h11.IDLE:
                self._disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._head_timer = self.loop.call_later(HEAD_TIMEOUT, self._head_timeout)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timeout(self) -> None:
            self._head_timer = None
            # Upgraded to a websocket, or a request under way: not ours to end.
            if self.transport.get_protocol() is self and self.conn.their_state is h11.IDLE:
                self.transport.close()

    return TimedH11Protocol


def _ending_streams() -> type:
    """uvicorn's server that tells systemd (``Type=notify``) READY=1 once it listens,
    pets its watchdog from a task on the server's event loop (a wedged loop stops the
    pets: systemd restarts the server) and says STOPPING=1 when it starts to stop; and
    then first ends the live pages' event streams: they never finish by themselves, and
    would hold the stop for the whole graceful timeout."""
    import uvicorn

    class Server(uvicorn.Server):  # type: ignore[misc]
        def __init__(self, config: uvicorn.Config, app: Starlette) -> None:
            super().__init__(config)
            self.app = app
            self._petting: asyncio.Task[None] | None = None

        async def startup(self, sockets: list | None = None) -> None:
            await super().startup(sockets)
            if not self.started:  # it could not listen: no READY=1, systemd sees it fail
                return
            every = watchdog_seconds(os.environ, os.getpid())
            if every:
                self._petting = asyncio.create_task(pet_watchdog(every))
            notify("READY=1")

        async def shutdown(self, sockets: list | None = None) -> None:
            notify("STOPPING=1")
            live = getattr(self.app.state, "live", None)
            if live is not None:
                live.close()
            try:
                await super().shutdown(sockets)
            finally:
                if self._petting is not None:  # pets until the end: a slow stop is no hang
                    self._petting.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await self._petting

    return Server


def run_server(data_dir: Path, host: str, port: int, *, certfile: str | None = None,
               keyfile: str | None = None, new_epoch: bool = False,
               keep_deleted: timedelta = timedelta(days=KEEP_DELETED_DAYS),
               database: str | None = None) -> int:
    """Serve until SIGINT or SIGTERM; return the exit status. *database*: the data's
    URL (``None``: the SQLite file in *data_dir*, which also holds the admin token,
    the web pages' secret and their uploads)."""
    import uvicorn

    _Server = _ending_streams()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        token, source = admin_token(data_dir)
        if new_epoch:
            epoch = asyncio.run(_renew_epoch(database or data_dir))
            print(f"checkin server: new epoch {epoch} and code key: every door resyncs",
                  file=sys.stderr)
    except (OSError, StoreError) as exc:
        print(f"checkin server: cannot use data dir {data_dir}: {exc}", file=sys.stderr)
        return 1
    print(f"checkin server: admin token {source}", file=sys.stderr, flush=True)
    app = create_app(data_dir, token, keep_deleted=keep_deleted, database=database)
    config = uvicorn.Config(
        app, host=host, port=port,
        ws="websockets-sansio",
        ws_max_size=MAX_DEVICE_MESSAGE, ws_ping_interval=10, ws_ping_timeout=10,
        ssl_certfile=certfile, ssl_keyfile=keyfile, log_level="warning", lifespan="on",
        timeout_graceful_shutdown=5, http=_timed_h11(), timeout_keep_alive=KEEP_ALIVE_TIMEOUT,
        limit_concurrency=MAX_CONCURRENCY,
        log_config=None,  # uvicorn's lines through ours (checkin.logs: journald, json)
    )
    server = _Server(config, app)
    # uvicorn re-raises the signal that stopped it once it has shut down, under
    # the handlers it found: make those no-ops so a clean stop exits 0.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: None)
    server.run()
    return 0 if server.started else 1
