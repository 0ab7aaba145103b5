"""The organizers' pages and the attendee's schedule page: Starlette routes rendering
Jinja2 templates (autoescaped: every name and CSV cell is attacker-controlled).

Every page but sign-in, the schedule page and the stylesheet needs a signed-in
organizer (:func:`organizer`), and every POST a CSRF token. Every error is a page naming
what was wrong (:class:`WebError`), never a traceback. Changes reach the doors as through
the API: ``hub.changed`` after registrants or sessions change, ``hub.disconnect`` when a
door is reassigned or revoked; and the live pages hear of every change (``live.publish``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from core.database import StoreError
from core.shapes import identifier, text, utc_timestamp
from server import imports
from server.live import CHANGED, session_topic
from server.store import Attendee, Conflict, NotFound, ServerStore
from server.tokens import same_token
from server.web.auth import Signer, WebSession, load_secret, same
from sync.messages import (
    CLOSE_REASSIGNED,
    CLOSE_REVOKED,
    MAX_CAPACITY,
    REVOKED_REASON,
    SessionInfo,
    attendee_code,
)

log = logging.getLogger("checkin.server")

HERE = Path(__file__).resolve().parent
#: Rows per page in every list (the Registrants box stays fast at 50,000: one page at a time).
PAGE_SIZE = 50
#: Largest CSV upload, in bytes (50,000 rows of code, name and email fit many times over).
MAX_UPLOAD = 16 << 20
#: Largest plain form, in bytes (a page of ticked registrants is a few kilobytes).
MAX_FORM = 1 << 20
#: Seconds an uploaded file is kept between the wizard's steps.
UPLOAD_SECONDS = 3600
#: Most problems listed on the page (all are counted).
SHOWN_PROBLEMS = 1000
#: Rows of the file shown in the wizard.
PREVIEW_ROWS = 5
#: Seconds each wrong admin token at the sign-in page waits, one after another.
WRONG_TOKEN_DELAY = 0.25

Handler = Callable[[Request], Awaitable[Response]]


class WebError(Exception):
    """A page-level error: *status*, and a message naming the field and what was wrong."""

    def __init__(self, status: int, message: str, *, title: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.title = title or {400: "Check the form", 403: "Refused", 404: "Not found",
                               409: "Not possible yet", 413: "Too large",
                               422: "Problems in the file"}.get(status, "Error")


class Web:
    """The web interface's state: templates, the cookie signer, the uploads folder."""

    def __init__(self, data_dir: Path, admin_token: str) -> None:
        self.admin_token = admin_token
        self.wrong_guesses = asyncio.Lock()
        self.signer = Signer(load_secret(data_dir), admin_token)
        self.uploads = data_dir / "uploads"
        self.uploads.mkdir(mode=0o700, exist_ok=True)
        self.sweep_uploads()
        self.templates = Environment(
            loader=FileSystemLoader(HERE / "templates"), autoescape=True,
            undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
        self.templates.filters["when"] = _when
        self.templates.filters["local_input"] = _local_input
        self.templates.filters["clock"] = clock
        self.templates.filters["offset"] = offset
        self.templates.globals["max_capacity"] = MAX_CAPACITY

    def sweep_uploads(self) -> None:
        """Delete uploads older than :data:`UPLOAD_SECONDS` (abandoned wizards)."""
        cutoff = time.time() - UPLOAD_SECONDS
        for path in self.uploads.iterdir():
            with contextlib.suppress(OSError):
                if path.stat().st_mtime < cutoff:
                    path.unlink()

    def upload_path(self, session: WebSession, upload_id: str) -> Path:
        if not re.fullmatch(r"[A-Za-z0-9_-]{16,64}", upload_id):
            raise WebError(404, "no such upload: upload the file again")
        return self.uploads / (self.signer.upload_name(session.sid, upload_id) + ".csv")

    def render(self, request: Request, name: str, status: int = 200,
               **context: Any) -> HTMLResponse:
        session: WebSession | None = getattr(request.state, "session", None)
        page = self.templates.get_template(name).render(
            request_path=request.url.path, csrf=session.csrf if session else "",
            signed_in=bool(session and session.signed_in),
            flash=session.take_flash() if session else "", **context)
        return HTMLResponse(page, status_code=status,
                            headers={"Cache-Control": "no-store",
                                     "X-Content-Type-Options": "nosniff",
                                     "X-Frame-Options": "DENY",
                                     "Referrer-Policy": "no-referrer",
                                     "Content-Security-Policy": CSP})

    def error_page(self, request: Request, error: WebError) -> HTMLResponse:
        return self.render(request, "error.html", error.status, title=error.title,
                           message=error.message)


#: Scripts and styles from this server only, none inline; no framing; forms post here only.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


def _web(request: Request) -> Web:
    return request.app.state.web


def _store(request: Request) -> ServerStore:
    return request.app.state.store


def _changed(request: Request, session_id: str | None) -> None:
    """Registrants, attendees or sessions changed: tell the doors (of *session_id*, or every
    door for ``None``) and the live pages."""
    request.app.state.hub.changed(session_id)
    live = getattr(request.app.state, "live", None)
    if live is not None:
        live.publish(*((session_topic(session_id), "sessions") if session_id else (CHANGED,)))


def _publish_doors(request: Request, *session_ids: str | None) -> None:
    live = getattr(request.app.state, "live", None)
    if live is not None:
        live.publish("doors", *(session_topic(s) for s in session_ids if s))


def _redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


# -- guards ------------------------------------------------------------------------------


def _guarded(handler: Handler, *, signed_in: bool, csrf: bool, cookie: bool = True) -> Handler:
    """Load the session cookie; require sign-in and a CSRF token if asked; turn every
    error into a page; write the cookie back when it changed."""

    async def run(request: Request) -> Response:
        web = _web(request)
        session = web.signer.session(request)
        request.state.session = session
        try:
            if signed_in and not session.signed_in:
                # Back to the page after signing in; a form's target is no page (a GET
                # there is a 405), and its fields are gone anyway: the sessions then.
                target = request.url.path + ("?" + request.url.query if request.url.query
                                             else "") if request.method == "GET" else "/sessions"
                response: Response = _redirect("/signin?" + urlencode({"next": target}))
            else:
                if csrf and request.method == "POST":
                    form = await read_form(request)
                    if not form.get("csrf"):
                        raise WebError(403, "this form came without its CSRF token: reload the "
                                            "page and send it again", title="Form refused")
                    if not same(form.get("csrf"), session.csrf):
                        raise WebError(403, "this form's CSRF token is wrong or out of date "
                                            "(signed in again since?): reload the page and "
                                            "send it again", title="Form refused")
                response = await handler(request)
        except WebError as exc:
            response = web.error_page(request, exc)
        except NotFound as exc:
            response = web.error_page(request, WebError(404, str(exc)))
        except Conflict as exc:
            response = web.error_page(request, WebError(409, str(exc)))
        except imports.ImportError_ as exc:
            response = web.error_page(request, WebError(exc.status, str(exc)))
        except StoreError as exc:
            log.error("%s", exc)
            response = web.error_page(request, WebError(
                503, "the server's storage failed; try again in a moment", title="Try again"))
        except Exception:  # a bug: logged with its traceback, shown without it
            log.exception("web page %s %s failed", request.method, request.url.path)
            response = web.error_page(request, WebError(
                500, "something went wrong on the server; it is logged", title="Server error"))
        form = getattr(request.state, "form", None)
        if form is not None:  # an upload may have spilled into a temporary file
            await form.close()
        if session.dirty and cookie:
            web.signer.write(response, session, request)
        return response

    run.__name__ = handler.__name__
    return run


def organizer(handler: Handler) -> Handler:
    """A page for the signed-in organizer; its POSTs need the CSRF token."""
    return _guarded(handler, signed_in=True, csrf=True)


def public(handler: Handler) -> Handler:
    """A page anyone may see (sign-in): it checks its own forms."""
    return _guarded(handler, signed_in=False, csrf=False)


def attendee(handler: Handler) -> Handler:
    """The attendee's schedule page: the link is the credential, its forms carry a token
    bound to the page, and it sets no cookie (the attendee has no session with us)."""
    return _guarded(handler, signed_in=False, csrf=False, cookie=False)


async def read_form(request: Request) -> FormData:
    """The request's form, read once, refusing a body over the limit before it is all in
    memory (a CSV upload: :data:`MAX_UPLOAD`; any other form: :data:`MAX_FORM`)."""
    cached = getattr(request.state, "form", None)
    if cached is not None:
        return cached
    multipart = request.headers.get("content-type", "").startswith("multipart/form-data")
    limit = MAX_UPLOAD if multipart else MAX_FORM
    too_large = WebError(413, f"the upload is larger than {limit >> 20} MiB: split the file "
                              "or leave out the columns you do not need")
    try:
        declared = int(request.headers.get("content-length") or 0)
    except ValueError:
        declared = 0
    if declared > limit:
        raise too_large
    seen = 0

    async def bounded() -> Any:
        nonlocal seen
        message = await request.receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise too_large
        return message

    try:
        form = await Request(request.scope, bounded).form(
            max_files=1, max_fields=PAGE_SIZE * 4 + 20, max_part_size=MAX_FORM)
    except HTTPException as exc:  # python-multipart could not parse it
        raise WebError(400, f"the form could not be read: {exc.detail}") from None
    except ClientDisconnect:
        raise WebError(400, "the browser went away before the form arrived") from None
    request.state.form = form
    return form


async def _field(request: Request, name: str, default: str = "") -> str:
    value = (await read_form(request)).get(name, default)
    if not isinstance(value, str):
        raise WebError(400, f"{name}: expected text, got a file")
    return value


def _checked(label: str, value: str, check: Callable[[Any], Any]) -> Any:
    try:
        return check(value)
    except ValueError as exc:
        raise WebError(400, f"{label} {_show(value)}: expected {exc}") from None


def _show(value: str) -> str:
    return repr(value if len(value) <= 80 else value[:77] + "...")


def _page_number(request: Request, key: str = "page") -> int:
    try:
        return max(1, min(int(request.query_params.get(key, "1")), 1_000_000))
    except ValueError:
        return 1


async def _paged(fetch: Callable[[int], Awaitable[tuple[int, list[Attendee]]]],
                 page: int) -> tuple[int, list[Attendee]]:
    """One page of a list; past its end (rows removed meanwhile, an old link), the last."""
    total, rows = await fetch((page - 1) * PAGE_SIZE)
    last = max(1, math.ceil(total / PAGE_SIZE))
    if not rows and page > last:
        total, rows = await fetch((last - 1) * PAGE_SIZE)
    return total, rows


def _pages(total: int, page: int) -> dict[str, int]:
    last = max(1, math.ceil(total / PAGE_SIZE))
    return {"page": min(page, last), "last": last, "total": total}


# -- time windows ------------------------------------------------------------------------


def _when(starts_at: str | None, ends_at: str | None = None) -> str:
    """A session's window for people: ``2026-11-28 09:00-10:30 UTC``."""
    if not starts_at and not ends_at:
        return "no time set"
    start = datetime.fromisoformat(starts_at) if starts_at else None
    end = datetime.fromisoformat(ends_at) if ends_at else None
    if start and end:
        same_day = start.date() == end.date()
        return (f"{start:%Y-%m-%d %H:%M}-{end:%H:%M}" if same_day
                else f"{start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M}") + " UTC"
    if start:
        return f"from {start:%Y-%m-%d %H:%M} UTC"
    assert end is not None
    return f"until {end:%Y-%m-%d %H:%M} UTC"


def clock(stamp: str | None, *, minutes: bool = False) -> str:
    """A stored time for people: ``21:52:11 UTC`` today, with the date on other days."""
    if not stamp:
        return ""
    try:
        moment = datetime.fromisoformat(stamp.replace("Z", "+00:00")).astimezone(UTC)
    except ValueError:
        return stamp
    shown = f"{moment:%H:%M}" if minutes else f"{moment:%H:%M:%S}"
    if moment.date() != datetime.now(UTC).date():
        shown = f"{moment:%Y-%m-%d} {shown}"
    return shown + ("" if minutes else " UTC")


def offset(seconds: float | None) -> str:
    """A clock offset: ``+1.5 s``, ``0.0 s``, or ``?`` when the door has not said."""
    if seconds is None:
        return "?"
    return "0.0 s" if abs(seconds) < 0.05 else f"{seconds:+.1f} s"


def _local_input(stamp: str | None) -> str:
    """A stored UTC time as a datetime-local field's value."""
    return datetime.fromisoformat(stamp).astimezone(UTC).strftime("%Y-%m-%dT%H:%M") if stamp \
        else ""


def _form_time(label: str, value: str) -> str | None:
    """A datetime-local value (read as UTC) or a full ISO time with an offset, in UTC."""
    value = value.strip()
    if not value:
        return None
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2})?", value):
        value += "+00:00"
    return _checked(label, value, utc_timestamp)


# -- sign-in -----------------------------------------------------------------------------


def _safe_next(target: str) -> str:
    """Only a path on this server: never another site (an open redirect)."""
    if target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/sessions"


@public
async def signin_page(request: Request) -> Response:
    session: WebSession = request.state.session
    if session.signed_in:
        return _redirect(_safe_next(request.query_params.get("next", "/sessions")))
    return _web(request).render(request, "signin.html", next=_safe_next(
        request.query_params.get("next", "/sessions")), error="")


def check_signin_csrf(session: WebSession, form: FormData, likely: str, then: str) -> None:
    """The CSRF check of a form that signs in (its page is public, so the generic check of
    :func:`organizer` pages does not run); a mismatch is a 403 naming the *likely* cause
    and what to do *then*."""
    if not same(form.get("csrf"), session.csrf):
        # No cookie yet (or an old one): this page's token is not this browser's.
        session.dirty = True
        raise WebError(403, "the sign-in form's CSRF token does not match this browser's "
                            f"cookie ({likely}): {then}", title="Form refused")


@public
async def signin(request: Request) -> Response:
    session: WebSession = request.state.session
    form = await read_form(request)
    check_signin_csrf(session, form, "cookies off, or the page is old",
                      "reload the sign-in page and try again")
    token = form.get("token")
    target = _safe_next(str(form.get("next") or "/sessions"))
    if not isinstance(token, str) or not same_token(token.strip(), _web(request).admin_token):
        # Wrong guesses wait their turn, one at a time: at most a few a second from all
        # browsers together, while the right token is never kept waiting.
        async with _web(request).wrong_guesses:
            await asyncio.sleep(WRONG_TOKEN_DELAY)
        return _web(request).render(request, "signin.html", 401, next=target,
                                    error="token: that is not this server's admin token")
    session.renew(signed_in=True)
    return _redirect(target)


@organizer
async def signout(request: Request) -> Response:
    _web(request).signer.end(request.state.session)
    request.state.session.renew(signed_in=False)
    return _redirect("/signin")


@organizer
async def home(request: Request) -> Response:
    return _redirect("/sessions")


# -- sessions ----------------------------------------------------------------------------


async def _doors_online(request: Request) -> dict[str, int]:
    connected = request.app.state.hub.connected()
    online: dict[str, int] = {}
    for device in await _store(request).devices():
        if device["device_id"] in connected and device["session_id"]:
            online[device["session_id"]] = online.get(device["session_id"], 0) + 1
    return online


@organizer
async def sessions_page(request: Request) -> Response:
    sessions = await _store(request).session_overview()
    online = await _doors_online(request)
    return _web(request).render(request, "sessions.html", sessions=sessions, online=online)


@organizer
async def new_session_page(request: Request) -> Response:
    return _web(request).render(request, "session_new.html", session=None)


async def _session_form(request: Request, session_id: str) -> SessionInfo:
    name = _checked("name", (await _field(request, "name")).strip(), text(200))
    if not name:
        raise WebError(400, "name: a session needs a name")
    starts_at = _form_time("starts", await _field(request, "starts_at"))
    ends_at = _form_time("ends", await _field(request, "ends_at"))
    if starts_at and ends_at and datetime.fromisoformat(ends_at) < datetime.fromisoformat(
            starts_at):
        raise WebError(400, f"ends: {_when(ends_at)} is before the start, {_when(starts_at)}")
    return SessionInfo(session_id=session_id, name=name,
                       validate_registrants=bool(await _field(request, "validate_registrants")),
                       starts_at=starts_at, ends_at=ends_at,
                       capacity=form_capacity(await _field(request, "capacity")))


def form_capacity(value: str) -> int | None:
    """The Capacity field: empty is no limit, else a whole number of people (0 lets
    nobody in: a room closed for now)."""
    value = value.strip()
    if not value:
        return None
    # Digits only: int() would also take "1_000", " +5" or Arabic-Indic digits.
    if not re.fullmatch(r"[0-9]{1,12}", value) or int(value) > MAX_CAPACITY:
        raise WebError(400, f"capacity {_show(value)}: expected a whole number of people "
                            f"from 0 to {MAX_CAPACITY:,}, or empty for no limit")
    return int(value)


@organizer
async def create_session(request: Request) -> Response:
    session_id = (await _field(request, "session_id")).strip()
    if not session_id:  # made from the name: people should not have to invent ids
        slug = re.sub(r"[^a-z0-9]+", "-", (await _field(request, "name")).lower()).strip("-")
        session_id = (slug[:48].strip("-") or "session") + "-" + secrets.token_hex(2)
    _checked("session id", session_id, identifier)
    info = await _session_form(request, session_id)
    if await _store(request).session_exists(session_id):
        raise WebError(409, f"session id {_show(session_id)}: a session with this id exists; "
                            "choose another id or edit that session")
    created = await _store(request).put_session(info)
    # A deleted session's id used again: its doors reconnect for a snapshot.
    await request.app.state.hub.session_saved(session_id, created=created, code=CLOSE_REASSIGNED)
    _changed(request, session_id)
    request.state.session.say(f"Session “{info.name}” created.")
    return _redirect(f"/sessions/{session_id}")


async def _session(request: Request) -> dict[str, Any]:
    session_id = request.path_params["session_id"]
    found = await _store(request).session_overview(session_id)
    if found:
        return found[0]
    raise WebError(404, f"no session {_show(session_id)} (deleted?)")


@organizer
async def session_page(request: Request) -> Response:
    session = await _session(request)
    session_id = session["session_id"]
    query = request.query_params.get("q", "")
    page = _page_number(request)
    total, registrants = await _paged(
        lambda offset: _store(request).registrants_page(session_id, query, limit=PAGE_SIZE,
                                                        offset=offset), page)
    find = request.query_params.get("find", "")
    found: list[Attendee] = []
    found_total = 0
    registered: set[str] = set()
    if find.strip():
        found_total, found = await _store(request).search_attendees(find, limit=PAGE_SIZE)
        registered = await _store(request).registered_among(session_id, [a.code for a in found])
    online = (await _doors_online(request)).get(session_id, 0)
    return _web(request).render(
        request, "session.html", session=session, online=online, query=query,
        registrants=registrants, paging=_pages(total, page), find=find, found=found,
        found_total=found_total, registered=registered)


@organizer
async def edit_session(request: Request) -> Response:
    session_id = (await _session(request))["session_id"]
    info = await _session_form(request, session_id)
    await _store(request).put_session(info)
    _changed(request, session_id)  # e.g. Validate Registrants: doors at once
    request.state.session.say("Session saved.")
    return _redirect(f"/sessions/{session_id}")


@organizer
async def delete_session_page(request: Request) -> Response:
    session = await _session(request)
    return _web(request).render(request, "session_delete.html",
                                409 if session["registered"] else 200, session=session)


@organizer
async def delete_session(request: Request) -> Response:
    session = await _session(request)
    if session["registered"]:  # the seed's rule: registrants go first
        return _web(request).render(request, "session_delete.html", 409, session=session)
    await _store(request).delete_session(session["session_id"])
    _changed(request, session["session_id"])
    request.state.session.say(f"Session “{session['name']}” deleted.")
    return _redirect("/sessions")


async def _codes(request: Request) -> list[str]:
    codes = [c for c in (await read_form(request)).getlist("code") if isinstance(c, str)]
    return [_checked("code", c, attendee_code) for c in codes]


@organizer
async def add_registrants(request: Request) -> Response:
    session_id = (await _session(request))["session_id"]
    codes = await _codes(request)
    if not codes:
        raise WebError(400, "code: tick at least one attendee to add")
    added = await _store(request).put_registrants(session_id, codes)
    if added:
        _changed(request, session_id)
    request.state.session.say(f"{added} registrant(s) added"
                              + (f", {len(codes) - added} already registered." if
                                 len(codes) > added else "."))
    return _redirect(f"/sessions/{session_id}?" + urlencode(
        {"find": await _field(request, "find")}) + "#registrants")


@organizer
async def remove_registrants(request: Request) -> Response:
    session_id = (await _session(request))["session_id"]
    everyone = await _field(request, "all") == "yes"
    codes = None if everyone else await _codes(request)
    if codes == []:
        raise WebError(400, "code: tick at least one registrant to remove (or use Delete All)")
    removed = await _store(request).remove_registrants(session_id, codes)
    if removed:
        _changed(request, session_id)
    request.state.session.say(f"{removed} registrant(s) removed.")
    if await _field(request, "then") == "delete":
        return _redirect(f"/sessions/{session_id}/delete")
    return _redirect(f"/sessions/{session_id}#registrants")


# -- attendees ---------------------------------------------------------------------------


@organizer
async def attendees_page(request: Request) -> Response:
    query = request.query_params.get("q", "")
    page = _page_number(request)
    total, attendees = await _paged(
        lambda offset: _store(request).search_attendees(query, limit=PAGE_SIZE, offset=offset),
        page)
    return _web(request).render(request, "attendees.html", query=query, attendees=attendees,
                                paging=_pages(total, page))


@organizer
async def add_attendee(request: Request) -> Response:
    code = _checked("code", (await _field(request, "code")).strip(), attendee_code)
    name = _checked("name", (await _field(request, "name")).strip(), text(200))
    if not name:
        raise WebError(400, "name: an attendee needs a name")
    email = _checked("email", (await _field(request, "email")).strip(), text(320)) or None
    if email and "@" not in email:
        raise WebError(400, f"email {_show(email)}: expected an address with an @")
    created, _ = await _store(request).upsert_attendees([Attendee(code, name, email)])
    if created:
        _changed(request, None)
    request.state.session.say(f"Attendee {code} {'added' if created else 'updated'}.")
    return _redirect("/attendees?" + urlencode({"q": code}))


async def _attendee_code(request: Request) -> str:
    return _checked("code", await _field(request, "code"), attendee_code)


def _schedule_url(request: Request, token: str) -> str:
    return str(request.url_for("schedule_page", token=token))


@organizer
async def schedule_link(request: Request) -> Response:
    code = await _attendee_code(request)
    token = await _store(request).schedule_link(code)
    _, found = await _store(request).search_attendees(code, limit=PAGE_SIZE)
    attendee = next((a for a in found if a.code == code), Attendee(code, code))
    return _web(request).render(request, "schedule_link.html", attendee=attendee,
                                url=_schedule_url(request, token))


@organizer
async def revoke_schedule_link(request: Request) -> Response:
    code = await _attendee_code(request)
    await _store(request).revoke_schedule_link(code)
    request.state.session.say(f"Schedule link of {code} revoked: the old link no longer works.")
    return _redirect("/attendees?" + urlencode({"q": code}))


# -- the CSV import wizard -----------------------------------------------------------------


def _import_base(request: Request) -> tuple[str, str | None]:
    """(the wizard's URL, the session id for a registrants import or None)."""
    session_id = request.path_params.get("session_id")
    if session_id is None:
        return "/attendees/import", None
    return f"/sessions/{quote(session_id)}/import", session_id


@organizer
async def import_upload_page(request: Request) -> Response:
    base, session_id = _import_base(request)
    session = await _session(request) if session_id else None
    return _web(request).render(request, "import_upload.html", base=base, session=session)


@organizer
async def import_upload(request: Request) -> Response:
    base, session_id = _import_base(request)
    if session_id:
        await _session(request)
    upload = (await read_form(request)).get("file")
    if not isinstance(upload, UploadFile) or not upload.filename:
        raise WebError(400, "file: choose a CSV file to upload")
    data = await upload.read()
    if not data:
        raise WebError(400, f"file {_show(upload.filename)}: the file is empty")
    # Not a CSV at all: say so now and keep nothing. (Reading 50,000 rows is CPU work:
    # in a thread, so the doors' links are served meanwhile.)
    await asyncio.to_thread(imports.preview, data, PREVIEW_ROWS)
    web = _web(request)
    web.sweep_uploads()
    upload_id = secrets.token_urlsafe(18)
    path = web.upload_path(request.state.session, upload_id)
    path.write_bytes(data)
    path.with_suffix(".json").write_text(json.dumps({"name": upload.filename}))
    return _redirect(f"{base}/{upload_id}")


def _guess(header: list[str], *words: str) -> str:
    for word in words:
        for column in header:
            if word in column.lower():
                return column
    return ""


async def _wizard(request: Request, *, choices: dict[str, str] | None = None,
                  result: Any = None, status: int = 200) -> Response:
    base, session_id = _import_base(request)
    session = await _session(request) if session_id else None
    upload_id = request.path_params["upload_id"]
    path = _web(request).upload_path(request.state.session, upload_id)
    data = _uploaded(path)
    preview = await asyncio.to_thread(imports.preview, data, PREVIEW_ROWS)
    header = list(preview.header)
    if choices is None:
        if session_id:
            column = _guess(header, "code", "mail", "id")
            choices = {"column": column, "match": "email" if "mail" in column.lower()
                       else "code"}
        else:
            choices = {"code": _guess(header, "code", "id"), "name": _guess(header, "name"),
                       "email": _guess(header, "mail")}
    try:
        name = json.loads(path.with_suffix(".json").read_text())["name"]
    except (OSError, ValueError, KeyError):
        name = "the file"
    return _web(request).render(
        request, "import_map.html", status, base=base, session=session, upload_id=upload_id,
        filename=name, size=len(data), preview=preview, header=header, choices=choices,
        result=result, shown=SHOWN_PROBLEMS)


def _uploaded(path: Path) -> bytes:
    try:
        if path.stat().st_mtime >= time.time() - UPLOAD_SECONDS:
            return path.read_bytes()
    except OSError:
        pass
    raise WebError(404, "this upload is gone (kept one hour, and only for the browser that "
                        "sent it): upload the file again", title="Upload expired")


@organizer
async def import_map_page(request: Request) -> Response:
    _web(request).sweep_uploads()
    return await _wizard(request)


@organizer
async def import_run(request: Request) -> Response:
    _, session_id = _import_base(request)
    path = _web(request).upload_path(request.state.session, request.path_params["upload_id"])
    data = _uploaded(path)
    commit = await _field(request, "action") == "commit"
    store = _store(request)
    if session_id:
        session_id = (await _session(request))["session_id"]
        choices = {"column": await _field(request, "column"),
                   "match": await _field(request, "match")}
        if not choices["column"]:
            raise WebError(400, "column: choose the column that identifies the attendee")
        if choices["match"] not in ("code", "email"):
            raise WebError(400, "match: choose whether the column holds the attendee code "
                                "or the email")
        result = await imports.import_registrants(
            store, session_id, data, column=choices["column"], match=choices["match"],
            dry_run=not commit)
    else:
        choices = {key: await _field(request, key) for key in ("code", "name", "email")}
        for key in ("code", "name"):
            if not choices[key]:
                raise WebError(400, f"{key}: choose the column that holds the attendee's "
                                    f"{key}")
        result = await imports.import_attendees(
            store, data, code=choices["code"], name=choices["name"],
            email=choices["email"] or None, dry_run=not commit)
    if not result.written:
        return await _wizard(request, choices=choices, result=result,
                             status=422 if result.problems else 200)
    _changed(request, session_id)  # None for attendees: every door
    with contextlib.suppress(OSError):
        path.unlink()
        path.with_suffix(".json").unlink()
    request.state.session.say(
        f"Imported {result.rows} row(s): {result.added} added, {result.already} already there.")
    return _redirect(f"/sessions/{quote(session_id)}" if session_id else "/attendees")


# -- doors -------------------------------------------------------------------------------


@organizer
async def doors_page(request: Request) -> Response:
    devices = await _store(request).devices()
    connected = request.app.state.hub.connected()
    sessions = await _store(request).session_overview()
    names = {s["session_id"]: s["name"] for s in sessions}
    return _web(request).render(request, "doors.html", devices=devices, connected=connected,
                                sessions=sessions, names=names)


async def _door_session(request: Request) -> str:
    session_id = _checked("session", await _field(request, "session_id"), identifier)
    if not await _store(request).session_exists(session_id):
        raise WebError(400, f"session {_show(session_id)}: no such session (deleted?)")
    return session_id


@organizer
async def provision_door(request: Request) -> Response:
    device_id = _checked("door id", (await _field(request, "device_id")).strip(), identifier)
    session_id = await _door_session(request)
    for device in await _store(request).devices():
        if device["device_id"] == device_id and not device["revoked_at"]:
            raise WebError(409, f"door id {_show(device_id)}: this door exists and has a "
                                "valid token; reassign it, or revoke it first to give it a "
                                "new token")
    token, _ = await _store(request).put_device(device_id, session_id)
    if token is None:  # provisioned by someone else meanwhile: its token is theirs
        raise WebError(409, f"door id {_show(device_id)}: provisioned meanwhile by another "
                            "request; revoke it to make a new token")
    _publish_doors(request, session_id)
    scheme = "wss" if request.url.scheme == "https" else "ws"
    sync_url = f"{scheme}://{request.url.netloc}/sync"
    return _web(request).render(request, "door_token.html", device_id=device_id,
                                session_id=session_id, token=token, sync_url=sync_url)


@organizer
async def reassign_door(request: Request) -> Response:
    device_id = _checked("door id", await _field(request, "device_id"), identifier)
    session_id = await _door_session(request)
    device = next((d for d in await _store(request).devices() if d["device_id"] == device_id),
                  None)
    if device is None or device["revoked_at"]:  # put_device would make it a new token
        raise WebError(409, f"door {_show(device_id)} is revoked or unknown: provision it "
                            "(a new token) instead")
    _, previous = await _store(request).put_device(device_id, session_id)
    _publish_doors(request, session_id, previous)
    if previous != session_id:
        await request.app.state.hub.disconnect(
            device_id, CLOSE_REASSIGNED, f"device reassigned to session {session_id}")
    request.state.session.say(f"Door {device_id} now serves session {session_id}.")
    return _redirect("/doors")


@organizer
async def revoke_door(request: Request) -> Response:
    device_id = _checked("door id", await _field(request, "device_id"), identifier)
    await _store(request).revoke_device(device_id)
    await request.app.state.hub.disconnect(device_id, CLOSE_REVOKED, REVOKED_REASON)
    _publish_doors(request)
    request.state.session.say(f"Door {device_id} revoked: its token no longer works.")
    return _redirect("/doors")


# -- the attendee's own schedule page -------------------------------------------------------


async def _schedule_attendee(request: Request) -> tuple[str, Attendee]:
    token = request.path_params["token"]
    attendee = None
    if re.fullmatch(r"[A-Za-z0-9_-]{20,100}", token):
        attendee = await _store(request).attendee_by_schedule_token(token)
    if attendee is None:
        raise WebError(404, "this schedule link does not work (mistyped, or replaced by a "
                            "newer one): ask the organizers for your link",
                       title="Link not valid")
    return token, attendee


@attendee
async def schedule_page(request: Request) -> Response:
    token, attendee = await _schedule_attendee(request)
    sessions = await _store(request).attendee_schedule(attendee.code)
    return _web(request).render(
        request, "schedule.html", attendee=attendee, sessions=sessions, token=token,
        page_csrf=_web(request).signer.page_token("schedule", token))


@attendee
async def schedule_change(request: Request) -> Response:
    token, attendee = await _schedule_attendee(request)
    if not same(await _field(request, "csrf"),
                _web(request).signer.page_token("schedule", token)):
        raise WebError(403, "this form's CSRF token is missing or wrong: reload your schedule "
                            "page and try again", title="Form refused")
    session_id = _checked("session", await _field(request, "session_id"), identifier)
    action = await _field(request, "action")
    store = _store(request)
    if action == "add":
        await store.put_registrant(session_id, attendee.code)
    elif action == "remove":
        await store.remove_registrants(session_id, [attendee.code])
    else:
        raise WebError(400, f"action {_show(action)}: expected add or remove")
    _changed(request, session_id)
    return _redirect(str(request.url_for("schedule_page", token=token)))


# -- routes ------------------------------------------------------------------------------


ROUTES: list[BaseRoute] = [
    Route("/", home, methods=["GET"]),
    Route("/signin", signin_page, methods=["GET"]),
    Route("/signin", signin, methods=["POST"]),
    Route("/signout", signout, methods=["POST"]),
    Route("/sessions", sessions_page, methods=["GET"]),
    Route("/sessions", create_session, methods=["POST"]),
    Route("/sessions/new", new_session_page, methods=["GET"]),
    Route("/sessions/{session_id}", session_page, methods=["GET"]),
    Route("/sessions/{session_id}", edit_session, methods=["POST"]),
    Route("/sessions/{session_id}/delete", delete_session_page, methods=["GET"]),
    Route("/sessions/{session_id}/delete", delete_session, methods=["POST"]),
    Route("/sessions/{session_id}/registrants/add", add_registrants, methods=["POST"]),
    Route("/sessions/{session_id}/registrants/remove", remove_registrants, methods=["POST"]),
    Route("/sessions/{session_id}/import", import_upload_page, methods=["GET"]),
    Route("/sessions/{session_id}/import", import_upload, methods=["POST"]),
    Route("/sessions/{session_id}/import/{upload_id}", import_map_page, methods=["GET"]),
    Route("/sessions/{session_id}/import/{upload_id}", import_run, methods=["POST"]),
    Route("/attendees", attendees_page, methods=["GET"]),
    Route("/attendees", add_attendee, methods=["POST"]),
    Route("/attendees/import", import_upload_page, methods=["GET"]),
    Route("/attendees/import", import_upload, methods=["POST"]),
    Route("/attendees/import/{upload_id}", import_map_page, methods=["GET"]),
    Route("/attendees/import/{upload_id}", import_run, methods=["POST"]),
    Route("/attendees/schedule-link", schedule_link, methods=["POST"]),
    Route("/attendees/schedule-link/revoke", revoke_schedule_link, methods=["POST"]),
    Route("/doors", doors_page, methods=["GET"]),
    Route("/doors", provision_door, methods=["POST"]),
    Route("/doors/reassign", reassign_door, methods=["POST"]),
    Route("/doors/revoke", revoke_door, methods=["POST"]),
    Route("/schedule/{token}", schedule_page, methods=["GET"], name="schedule_page"),
    Route("/schedule/{token}", schedule_change, methods=["POST"]),
    Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
]


def is_page(path: str) -> bool:
    """Whether *path* is the web interface's (errors there are pages, not JSON)."""
    return not (path.startswith("/api/") or path == "/api" or path.startswith("/sync"))
