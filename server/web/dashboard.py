"""The organizers' live pages (issue 13): a session's attendance, the event overview and
the doors at a glance, each updated without a reload by server-sent events.

Every stream of the same thing shares one :class:`Feed`: one task subscribed to
:class:`server.live.Live`, which reads the numbers from the store once per change
(topics published meanwhile are coalesced by the subscription) and keeps them as one
JSON string; every page stream of that feed sends the same string. A feed lives while
a page watches it. A stream sends the current numbers at once, then each new version,
and a comment every :data:`HEARTBEAT` seconds so proxies and the browser keep the
connection; a browser that goes away ends its stream (Starlette cancels it), and the
server stopping ends them all (``Live.close``).

Also here: the CSV exports under the cookie (:mod:`server.exports`, as the API), and
the one-time sign-in link the demo prints.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from core.codes import MAX_RECORDED_CODE
from core.database import StoreError
from core.rules import Direction, Reason
from core.shapes import identifier, text
from server import exports
from server.live import CHANGED, Live, session_topic
from server.store import NotFound, ServerStore
from server.tokens import same_token
from server.web.auth import WebSession
from server.web.pages import (
    PAGE_SIZE,
    WebError,
    _checked,
    _page_number,
    _paged,
    _pages,
    _redirect,
    _safe_next,
    _show,
    _web,
    check_signin_csrf,
    organizer,
    public,
    read_form,
)

log = logging.getLogger("checkin.server")

#: Seconds between two heartbeat comments on an idle stream.
HEARTBEAT = 15.0
#: Milliseconds the browser waits before reconnecting a broken stream.
RETRY_MS = 2000
#: Seconds a one-time sign-in code stays valid.
ONCE_SECONDS = 15 * 60


def _store(request: Request) -> ServerStore:
    return request.app.state.store


def _live(request: Request) -> Live:
    return request.app.state.live


# -- what the pages show -----------------------------------------------------------------


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds")


def _silent(door: dict[str, Any], now: datetime) -> bool:
    """Last seen longer ago than twice the door's status interval (when it told it)."""
    seconds, seen = door.get("status_seconds"), door.get("last_seen_at")
    if not seconds or not seen or door.get("revoked"):
        return False
    try:
        last = datetime.fromisoformat(seen)
    except ValueError:
        return False
    return (now - last).total_seconds() > 2 * float(seconds)


async def doors_data(store: ServerStore, connected: frozenset[str]) -> list[dict[str, Any]]:
    """Every door as the pages show it: the store's overview, connected and silent."""
    now = datetime.now(UTC)
    doors = []
    for door in await store.door_overview():
        door = dict(door)
        door["connected"] = door["device_id"] in connected and not door.get("revoked")
        door["silent"] = _silent(door, now)
        doors.append(door)
    return doors


def _unsettled(doors: list[dict[str, Any]]) -> list[str]:
    """Why a session's numbers may still change: its doors offline or with scans waiting."""
    why = []
    for door in doors:
        if door.get("revoked"):
            continue
        if not door["connected"]:
            why.append(f"door {door['device_id']} is offline")
        elif door["silent"]:
            why.append(f"door {door['device_id']} is silent")
        if door.get("scans_waiting"):
            why.append(f"door {door['device_id']} has {door['scans_waiting']} scan(s) "
                       "waiting to upload")
    return why


async def session_data(store: ServerStore, connected: frozenset[str],
                       session_id: str) -> dict[str, Any]:
    """A session's live attendance page: the numbers, its doors, whether final, and the
    first page of who has not arrived."""
    attendance = await store.attendance_live(session_id)
    doors = [d for d in await doors_data(store, connected) if d["session_id"] == session_id]
    total, rows = await store.not_arrived(session_id, "", limit=PAGE_SIZE, offset=0)
    why = _unsettled(doors)
    return {**attendance, "doors": doors, "not_final": bool(why), "not_final_why": why,
            "not_arrived_page": [{"code": a.code, "name": a.name} for a in rows],
            "not_arrived_total": total, "at": _stamp(datetime.now(UTC))}


async def overview_data(store: ServerStore, connected: frozenset[str]) -> dict[str, Any]:
    """Every session with its live counts, and its doors online and whether final."""
    doors = await doors_data(store, connected)
    sessions = []
    for session in await store.session_overview():
        session_id = session["session_id"]
        try:
            attendance = await store.attendance_live(session_id)
        except NotFound:  # deleted meanwhile
            continue
        mine = [d for d in doors if d["session_id"] == session_id and not d.get("revoked")]
        sessions.append({
            "session_id": session_id, "name": session["name"],
            "starts_at": session["starts_at"], "ends_at": session["ends_at"],
            "registered": attendance["registered"], "admitted": attendance["admitted"],
            "not_arrived": attendance["not_arrived"], "rejected": attendance["rejected"],
            "reentries": attendance["reentries"],
            "inside": attendance["inside"], "capacity": attendance["capacity"],
            "flagged_admissions": attendance["over_capacity"] + attendance["double_admissions"],
            "doors": len(mine), "doors_online": sum(1 for d in mine if d["connected"]),
            "not_final": bool(_unsettled(mine))})
    return {"sessions": sessions, "at": _stamp(datetime.now(UTC))}


async def doors_page_data(store: ServerStore, connected: frozenset[str]) -> dict[str, Any]:
    names = {s["session_id"]: s["name"] for s in await store.session_overview()}
    doors = await doors_data(store, connected)
    for door in doors:
        door["session_name"] = names.get(door["session_id"] or "", door["session_id"] or "")
    return {"doors": doors, "at": _stamp(datetime.now(UTC))}


# -- feeds: one computation per change, shared by every stream ---------------------------


class Feed:
    """The current JSON of one live thing, recomputed when a topic it cares for changes."""

    def __init__(self, key: str, compute: Callable[[], Awaitable[dict[str, Any]]],
                 cares: Callable[[str], bool]) -> None:
        self.key = key
        self.compute = compute
        self.cares = cares
        self.version = 0
        self.data = ""
        self.ended = False
        self.users = 0
        self.task: asyncio.Task[None] | None = None
        self._event = asyncio.Event()

    def _wake(self) -> None:
        event, self._event = self._event, asyncio.Event()
        event.set()

    async def wait(self, version: int, timeout: float) -> bool:
        """Until a version other than *version* (or the end); False after *timeout*."""
        if self.version != version or self.ended:
            return True
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def _refresh(self) -> None:
        try:
            data = json.dumps(await self.compute(), separators=(",", ":"))
        except NotFound as exc:
            data = json.dumps({"gone": str(exc)})
        except StoreError as exc:  # e.g. busy or the disk: the next change tries again
            log.warning("live page %s: %s", self.key, exc)
            return
        if data != self.data:
            self.data = data
            self.version += 1
            self._wake()

    async def run(self, live: Live) -> None:
        try:
            async with live.subscribe() as subscription:
                while True:
                    try:
                        await self._refresh()
                    except Exception:  # a bug: logged, and the feed goes on
                        log.exception("live page %s failed", self.key)
                    while True:
                        topics = await subscription.get_all()
                        if CHANGED in topics or any(self.cares(t) for t in topics):
                            break
        except StopAsyncIteration:  # the server stops
            pass
        finally:
            self.ended = True
            self._wake()


class Feeds:
    """The feeds being watched, by key; a feed's task runs while someone watches it."""

    def __init__(self, live: Live) -> None:
        self.live = live
        self._feeds: dict[str, Feed] = {}

    def acquire(self, key: str, compute: Callable[[], Awaitable[dict[str, Any]]],
                cares: Callable[[str], bool]) -> Feed:
        feed = self._feeds.get(key)
        if feed is None or feed.ended:
            feed = self._feeds[key] = Feed(key, compute, cares)
            feed.task = asyncio.create_task(feed.run(self.live), name=f"live {key}")
        feed.users += 1
        return feed

    def release(self, feed: Feed) -> None:
        feed.users -= 1
        if feed.users <= 0:
            if self._feeds.get(feed.key) is feed:
                del self._feeds[feed.key]
            if feed.task is not None:
                feed.task.cancel()

    def __len__(self) -> int:
        return len(self._feeds)


def _feeds(request: Request) -> Feeds:
    state = request.app.state
    feeds = getattr(state, "feeds", None)
    if feeds is None or feeds.live is not state.live:
        feeds = state.feeds = Feeds(state.live)
    return feeds


async def _events(feeds: Feeds, feed: Feed) -> AsyncIterator[str]:
    version = 0
    try:
        yield f"retry: {RETRY_MS}\n\n"
        while not feed.ended:
            if feed.version != version and feed.data:
                version = feed.version
                yield f"event: update\nid: {version}\ndata: {feed.data}\n\n"
            elif not await feed.wait(version, HEARTBEAT):
                yield ": heartbeat\n\n"
    finally:
        feeds.release(feed)


def _stream(request: Request, key: str, compute: Callable[[], Awaitable[dict[str, Any]]],
            cares: Callable[[str], bool]) -> StreamingResponse:
    feeds = _feeds(request)
    feed = feeds.acquire(key, compute, cares)
    return StreamingResponse(_events(feeds, feed), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no",
                                      "X-Content-Type-Options": "nosniff"})


def _connected(request: Request) -> Callable[[], frozenset[str]]:
    hub = request.app.state.hub
    return lambda: hub.connected()


async def _session_id(request: Request) -> str:
    session_id = request.path_params["session_id"]
    if not await _store(request).session_exists(session_id):
        raise WebError(404, f"no session {_show(session_id)} (deleted?)")
    return session_id


# -- the pages ---------------------------------------------------------------------------


@organizer
async def live_session_page(request: Request) -> Response:
    session_id = await _session_id(request)
    store = _store(request)
    data = await session_data(store, request.app.state.hub.connected(), session_id)
    query = request.query_params.get("q", "")
    page = _page_number(request)
    total, rows = await _paged(
        lambda offset: store.not_arrived(session_id, query, limit=PAGE_SIZE, offset=offset),
        page)
    return _web(request).render(request, "live_session.html", data=data, query=query,
                                not_arrived=rows, paging=_pages(total, page),
                                stream=f"/live/sessions/{session_id}")


@organizer
async def live_session_stream(request: Request) -> Response:
    session_id = await _session_id(request)
    store, connected, topic = _store(request), _connected(request), session_topic(session_id)
    return _stream(request, topic,
                   lambda: session_data(store, connected(), session_id),
                   lambda t: t in (topic, "doors"))


@organizer
async def not_arrived_json(request: Request) -> Response:
    """One page of the registered-but-not-arrived list, for the live page's search."""
    session_id = await _session_id(request)
    query = request.query_params.get("q", "")
    page = _page_number(request)
    total, rows = await _paged(
        lambda offset: _store(request).not_arrived(session_id, query, limit=PAGE_SIZE,
                                                   offset=offset), page)
    return JSONResponse({"total": total, **_pages(total, page),
                         "rows": [{"code": a.code, "name": a.name} for a in rows]},
                        headers={"Cache-Control": "no-store"})


@organizer
async def overview_page(request: Request) -> Response:
    data = await overview_data(_store(request), request.app.state.hub.connected())
    return _web(request).render(request, "live_overview.html", data=data,
                                stream="/live/overview")


@organizer
async def overview_stream(request: Request) -> Response:
    store, connected = _store(request), _connected(request)
    return _stream(request, "overview", lambda: overview_data(store, connected()),
                   lambda t: t in ("sessions", "doors") or t.startswith("session:"))


@organizer
async def doors_live_page(request: Request) -> Response:
    data = await doors_page_data(_store(request), request.app.state.hub.connected())
    return _web(request).render(request, "live_doors.html", data=data, stream="/live/doors")


@organizer
async def doors_stream(request: Request) -> Response:
    store, connected = _store(request), _connected(request)
    return _stream(request, "doors", lambda: doors_page_data(store, connected()),
                   lambda t: t in ("doors", "sessions"))


# -- the scan log and time in session (not live: read when asked) ------------------------

ScanRow = dict[str, Any]

#: What a session's scan log shows: ``?show=`` key -> (heading, which scans).
SCAN_FILTERS: dict[str, tuple[str, Callable[[ScanRow], bool]]] = {
    "all": ("Every scan", lambda s: True),
    "flagged": ("Scans the audit flagged", lambda s: bool(
        s["double_admission"] or s["over_capacity"] or s["disagreement"] or s["clock_flag"])),
    "double_admission": ("Double admissions", lambda s: bool(s["double_admission"])),
    "over_capacity": ("Admissions over capacity", lambda s: bool(s["over_capacity"])),
    "override": ("Overrides", lambda s: s["reason"] == Reason.OVERRIDE),
    "exit": ("Exits", lambda s: s["direction"] == Direction.OUT),
    # The door did not know the time (server/retime.py): re-timed, or still unknown.
    "time": ("Times the door did not know", lambda s: s["time_corrected"] is not None),
}
#: Scans one page of the log reads at most looking for matches: a filter matching few
#: of a million scans stops there and offers to search on (a page is never slow).
SCAN_LOG_BUDGET = 20_000
#: Scans read from the store at a time.
SCAN_LOG_BATCH = 1000


def pick_scans(batch: list[ScanRow], keep: Callable[[ScanRow], bool], want: int,
               position: int) -> tuple[list[ScanRow], int]:
    """The first *want* scans of *batch* that *keep* accepts, and the position of the last
    scan looked at (where the next page goes on; *position* for an empty batch)."""
    taken: list[ScanRow] = []
    for scan in batch:
        position = scan["position"]
        if keep(scan):
            taken.append(scan)
            if len(taken) == want:
                break
    return taken, position


def _after(request: Request) -> int:
    value = request.query_params.get("after", "0")
    if not re.fullmatch(r"[0-9]{1,18}", value):
        raise WebError(400, f"after {_show(value)}: expected a scan position (a whole number)")
    return int(value)


@organizer
async def scan_log_page(request: Request) -> Response:
    """The session's scans as the server stored them, oldest first, a page at a time:
    each with its door, direction and flags (double admission, over capacity, override
    of which scan)."""
    session_id = await _session_id(request)
    show = request.query_params.get("show", "all")
    if show not in SCAN_FILTERS:
        raise WebError(400, f"show {_show(show)}: expected one of {', '.join(SCAN_FILTERS)}")
    heading, keep = SCAN_FILTERS[show]
    start = position = _after(request)
    scans: list[ScanRow] = []
    read, exhausted = 0, False
    while len(scans) < PAGE_SIZE and read < SCAN_LOG_BUDGET:
        _, batch = await _store(request).scans_export_page(session_id, position,
                                                           SCAN_LOG_BATCH)
        read += len(batch)
        taken, position = pick_scans(batch, keep, PAGE_SIZE - len(scans), position)
        scans += taken
        if len(batch) < SCAN_LOG_BATCH and (not batch or position == batch[-1]["position"]):
            exhausted = True
            break
    session = (await _store(request).session_overview(session_id) or [{"name": session_id}])[0]
    return _web(request).render(
        request, "session_scans.html", session_id=session_id, session=session, show=show,
        heading=heading, filters=SCAN_FILTERS, scans=scans, start=start,
        next_after=None if exhausted else position, read=read)


def minutes_in_session(row: dict[str, Any]) -> int | None:
    """An attendee's whole minutes in the session from an attendance row's
    ``time_in_session`` (seconds; cut down to whole minutes as the CSV export does), or
    None when the row does not say."""
    seconds = row.get("time_in_session")
    return None if seconds is None else int(seconds) // 60


@organizer
async def attendance_page(request: Request) -> Response:
    """Every attendee registered for the session or scanned at its doors, by code, a page
    at a time: arrival, door, re-entries, overrides and minutes in the session."""
    session_id = await _session_id(request)
    # Any code a door recorded may end a page (a hostile badge's too): not only valid ones.
    after = _checked("after", request.query_params.get("after", ""), text(MAX_RECORDED_CODE))
    rows = await _store(request).attendance_export_page(session_id, after, PAGE_SIZE)
    for row in rows:
        row["minutes"] = minutes_in_session(row)
    session = (await _store(request).session_overview(session_id) or [{"name": session_id}])[0]
    return _web(request).render(
        request, "session_attendance.html", session_id=session_id, session=session,
        rows=rows, after=after,
        next_after=rows[-1]["code"] if len(rows) == PAGE_SIZE else None)


# -- one-time sign-in links (the demo's) --------------------------------------------------


class OnceCodes:
    """Single-use sign-in codes, kept hashed in memory for :data:`ONCE_SECONDS`."""

    def __init__(self) -> None:
        self._codes: dict[str, float] = {}

    @staticmethod
    def _key(code: str) -> str:
        return hashlib.sha256(code.encode("utf-8", "surrogatepass")).hexdigest()

    def _sweep(self) -> None:
        now = time.monotonic()
        self._codes = {k: t for k, t in self._codes.items() if t > now}

    def make(self) -> str:
        self._sweep()
        code = secrets.token_urlsafe(24)
        self._codes[self._key(code)] = time.monotonic() + ONCE_SECONDS
        return code

    def valid(self, code: str) -> bool:
        self._sweep()
        return self._key(code) in self._codes

    def take(self, code: str) -> bool:
        """Use *code*: True once, if it was valid."""
        self._sweep()
        return self._codes.pop(self._key(code), None) is not None


def _once(request: Request) -> OnceCodes:
    state = request.app.state
    codes = getattr(state, "once_codes", None)
    if codes is None:
        codes = state.once_codes = OnceCodes()
    return codes


async def make_once_code(request: Request) -> Response:
    """``POST /signin/once`` with the admin token as a bearer: a one-time sign-in link."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not same_token(token.strip(), request.app.state.admin_token):
        return JSONResponse({"error": "unauthorized: send the admin token as a bearer token"},
                            status_code=401, headers={"WWW-Authenticate": "Bearer"})
    target = _safe_next(request.query_params.get("next", "/live"))
    code = _once(request).make()
    path = f"/signin/once/{code}" + ("?" + urlencode({"next": target}) if target else "")
    return JSONResponse({"path": path, "url": str(request.base_url).rstrip("/") + path,
                         "expires_in": ONCE_SECONDS}, status_code=201,
                        headers={"Cache-Control": "no-store"})


_ONCE_GONE = WebError(404, "this sign-in link was used already or has expired: sign in with "
                           "the admin token instead", title="Link not valid")


@public
async def once_page(request: Request) -> Response:
    """The link's page: a form that signs in (sent by itself by the script). A GET never
    uses the code, so a link preview or prefetch cannot spend it."""
    code = request.path_params["code"]
    if not _once(request).valid(code):
        raise _ONCE_GONE
    return _web(request).render(request, "signin_once.html", code=code,
                                next=_safe_next(request.query_params.get("next", "/live")))


@public
async def once_signin(request: Request) -> Response:
    session: WebSession = request.state.session
    form = await read_form(request)
    check_signin_csrf(session, form, "cookies off?", "open the link again")
    if not _once(request).take(request.path_params["code"]):
        raise _ONCE_GONE
    session.renew(signed_in=True)
    return _redirect(_safe_next(str(form.get("next") or "/live")))


# -- CSV exports under the cookie (the same files as the API's) ----------------------------


@organizer
async def attendance_csv(request: Request) -> Response:
    return await exports.attendance_response(_store(request), await _session_id(request))


@organizer
async def scans_csv(request: Request) -> Response:
    session_id = request.query_params.get("session_id") or None
    if session_id is not None:
        _checked("session_id", session_id, identifier)
    return await exports.scans_response(_store(request), session_id)


# -- routes ------------------------------------------------------------------------------


ROUTES: list[BaseRoute] = [
    Route("/live", overview_page, methods=["GET"]),
    Route("/live/overview", overview_stream, methods=["GET"]),
    Route("/live/doors", doors_stream, methods=["GET"]),
    Route("/live/sessions/{session_id}", live_session_stream, methods=["GET"]),
    Route("/live/sessions/{session_id}/not-arrived", not_arrived_json, methods=["GET"]),
    Route("/sessions/{session_id}/live", live_session_page, methods=["GET"]),
    Route("/sessions/{session_id}/scans", scan_log_page, methods=["GET"]),
    Route("/sessions/{session_id}/attendance", attendance_page, methods=["GET"]),
    Route("/doors/live", doors_live_page, methods=["GET"]),
    Route("/sessions/{session_id}/attendance.csv", attendance_csv, methods=["GET"]),
    Route("/scans.csv", scans_csv, methods=["GET"]),
    Route("/signin/once", make_once_code, methods=["POST"]),
    Route("/signin/once/{code}", once_page, methods=["GET"]),
    Route("/signin/once/{code}", once_signin, methods=["POST"]),
]
