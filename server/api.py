"""The organizer HTTP API: sessions, attendees, registrants, devices, attendance.

JSON in and out; every route but ``/api/health`` and ``/api/device`` (a door's own
token, for ``checkin doctor``) needs ``Authorization: Bearer <admin token>``. Errors
are ``{"error": "..."}`` with a message that names what was wrong. Every change is
pushed to the connected doors it concerns as soon as it is committed. See
``docs/api.md``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from core.database import StoreError
from core.shapes import (
    Check,
    boolean,
    check_fields,
    identifier,
    integer,
    optional,
    show,
    text,
    utc_timestamp,
)
from server import exports, imports
from server.live import CHANGED, session_topic
from server.store import Attendee, Conflict, NotFound, ServerStore
from server.tokens import bearer, same_token
from sync.messages import (
    CLOSE_REASSIGNED,
    CLOSE_REVOKED,
    MAX_CAPACITY,
    REVOKED_REASON,
    SessionInfo,
    attendee_code,
)

log = logging.getLogger("checkin.server")

#: Largest request body accepted, in bytes (a bulk upload of 100,000 attendees fits).
MAX_BODY = 32 << 20
#: Most attendees in one bulk upsert.
MAX_ATTENDEES = 200_000

Handler = Callable[[Request], Awaitable[Response]]


class BadRequest(Exception):
    """The request is malformed (HTTP 400); the message says how."""


def error(status: int, message: str) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def admin(handler: Handler) -> Handler:
    """Require the admin token; turn domain errors into HTTP answers."""

    async def guarded(request: Request) -> Response:
        given = bearer(request.headers.get("authorization"))
        if not same_token(given, request.app.state.admin_token):
            return error(401, "missing or wrong admin token: send 'Authorization: Bearer "
                              "<admin token>'")
        try:
            return await handler(request)
        except BadRequest as exc:
            return error(400, str(exc))
        except NotFound as exc:
            return error(404, str(exc))
        except Conflict as exc:
            return error(409, str(exc))
        except imports.ImportError_ as exc:
            return error(exc.status, exc.message)
        except StoreError as exc:
            log.error("%s", exc)
            return error(503, "server storage error; try again later")

    return guarded


def publish(request: Request, *topics: str) -> None:
    """Tell the organizers' live pages (if the app has them) that *topics* changed."""
    live = getattr(request.app.state, "live", None)
    if live is not None:
        live.publish(*topics)


def _session_changed(request: Request, session_id: str) -> None:
    publish(request, session_topic(session_id), "sessions")


async def _json_body(request: Request) -> Any:
    if int(request.headers.get("content-length") or 0) > MAX_BODY:
        raise BadRequest(f"body larger than {MAX_BODY} bytes")
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY:
                raise BadRequest(f"body larger than {MAX_BODY} bytes")
    except ClientDisconnect:
        raise BadRequest("client went away mid-body") from None
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from None


#: Content types a CSV file may be sent as (browsers on Windows say Excel's for .csv).
CSV_TYPES = frozenset({"text/csv", "application/csv", "text/plain", "text/x-csv",
                       "text/tab-separated-values", "application/vnd.ms-excel"})


async def _csv_body(request: Request) -> bytes:
    """The body of a CSV upload: a CSV content type, at most :data:`MAX_BODY` bytes."""
    kind = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if kind not in CSV_TYPES:
        raise imports.ImportError_(415, f"send the CSV file as the body with 'Content-Type: "
                                        f"text/csv' (got {show(kind or 'none')})")
    if int(request.headers.get("content-length") or 0) > MAX_BODY:
        raise imports.ImportError_(413, f"file larger than {MAX_BODY} bytes: split it")
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY:
                raise imports.ImportError_(413, f"file larger than {MAX_BODY} bytes: split it")
    except ClientDisconnect:
        raise BadRequest("client went away mid-body") from None
    return bytes(body)


def _query(request: Request, key: str, required: bool = True) -> str | None:
    value = request.query_params.get(key)
    if value is None or not value.strip():
        if required:
            raise BadRequest(f"query parameter {key} is missing: name the file's column "
                             f"(its header) as ?{key}=...")
        return None
    return value


def _dry_run(request: Request) -> bool:
    value = request.query_params.get("dry_run", "false").strip().lower()
    if value not in ("true", "false", "1", "0", ""):
        raise BadRequest(f"dry_run {show(value)}: expected true or false")
    return value in ("true", "1")


def _import_answer(result: imports.ImportResult) -> JSONResponse:
    # How the file was read goes in headers: the body is exactly the contract's.
    return JSONResponse(result.body(), status_code=result.status,
                        headers={"X-CSV-Encoding": result.encoding,
                                 "X-CSV-Delimiter": result.delimiter})


def _path_id(request: Request, key: str, check: Check = identifier) -> str:
    """The path parameter *key*, checked like the same value in a body."""
    value = request.path_params[key]
    try:
        return check(value)
    except ValueError as exc:
        raise BadRequest(f"{key} {show(value)}: expected {exc}") from None


def _path_code(request: Request) -> str:
    return _path_id(request, "code", attendee_code)


def _checked(body: Any, fields: dict[str, Any], what: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest(f"{what}: expected a JSON object, got {type(body).__name__}")
    checked, problems = check_fields(body, fields)
    if problems:
        raise BadRequest(f"{what}: " + "; ".join(problems))
    return checked


_SESSION_FIELDS = {
    "name": (text(200), True),
    "validate_registrants": (boolean, True),
    # Normalised to UTC before anything stores or compares them: see _check_window.
    "starts_at": (optional(utc_timestamp), False),
    "ends_at": (optional(utc_timestamp), False),
    # Most people inside at once; left out or null: no limit.
    "capacity": (optional(integer(0, MAX_CAPACITY)), False),
}
_ATTENDEE_FIELDS = {
    "code": (attendee_code, True),
    "name": (text(200), True),
    "email": (optional(text(320)), False),
}
_DEVICE_FIELDS = {"session_id": (identifier, True)}


def _store(request: Request) -> ServerStore:
    return request.app.state.store


# -- routes -------------------------------------------------------------------------


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok", "epoch": _store(request).epoch,
                         "devices_connected": len(request.app.state.hub)})


async def device(request: Request) -> Response:
    """What the server knows of the door whose device token is the bearer: for
    ``checkin doctor``, which must not open a second /sync link (it would replace the
    sync daemon's)."""
    token = bearer(request.headers.get("authorization"))
    try:
        found = await _store(request).device_by_token(token) if token else None
        sessions = await _store(request).sessions() if found and found.session_id else []
        revoked = found is None and token is not None and await _store(request).token_revoked(
            token)
    except StoreError as exc:
        log.error("%s", exc)
        return error(503, "server storage error; try again later")
    if revoked:
        return error(401, "device token revoked: this door was revoked (or provisioned "
                          "again); provision it again for a new token")
    if found is None:
        return error(401, "missing, unknown or revoked device token: send 'Authorization: "
                          "Bearer <device token>'")
    registrants = next((s["registrants"] for s in sessions
                        if s["session_id"] == found.session_id), None)
    return JSONResponse({"device_id": found.device_id, "session_id": found.session_id,
                         "server_time": datetime.now(UTC).isoformat(), "registrants": registrants})


def _check_window(starts_at: str | None, ends_at: str | None) -> None:
    """Refuse a session that ends before it starts, comparing instants, not text.

    As text, ``...T14:30+02:00`` sorts after ``...T14:00+00:00`` though it is 1.5 h
    earlier. Both are already normalised to UTC by the field checks; compare the
    parsed times anyway, so the rule never depends on how they are spelt.
    """
    if starts_at and ends_at and datetime.fromisoformat(ends_at) < datetime.fromisoformat(
            starts_at):
        raise BadRequest(f"session: ends_at {ends_at} is before starts_at {starts_at} (in UTC)")


@admin
async def list_sessions(request: Request) -> Response:
    return JSONResponse(await _store(request).sessions())


@admin
async def put_session(request: Request) -> Response:
    session_id = _path_id(request, "session_id")
    fields = _checked(await _json_body(request), _SESSION_FIELDS, "session")
    session = SessionInfo(session_id=session_id, **fields)
    _check_window(session.starts_at, session.ends_at)
    created = await _store(request).put_session(session)
    await request.app.state.hub.session_saved(session_id, created=created, code=CLOSE_REASSIGNED)
    _session_changed(request, session_id)
    return JSONResponse({"session_id": session_id, **fields, "created": created},
                        status_code=201 if created else 200)


@admin
async def delete_session(request: Request) -> Response:
    session_id = _path_id(request, "session_id")
    await _store(request).delete_session(session_id)
    request.app.state.hub.changed(session_id)
    _session_changed(request, session_id)
    return Response(status_code=204)


@admin
async def post_attendees(request: Request) -> Response:
    body = await _json_body(request)
    if not isinstance(body, list):
        raise BadRequest(f"attendees: expected a JSON list of {{\"code\", \"name\"}} objects, "
                         f"got {type(body).__name__}")
    if len(body) > MAX_ATTENDEES:
        raise BadRequest(f"attendees: at most {MAX_ATTENDEES} per request")
    attendees = [Attendee(**_checked(item, _ATTENDEE_FIELDS, f"attendee {index}"))
                 for index, item in enumerate(body)]
    created, updated = await _store(request).upsert_attendees(attendees)
    if created:
        request.app.state.hub.changed(None)
    if created or updated:  # names in every session's lists
        publish(request, CHANGED)
    return JSONResponse({"created": created, "updated": updated})


@admin
async def import_attendees(request: Request) -> Response:
    code, name = _query(request, "code"), _query(request, "name")
    email, dry_run = _query(request, "email", required=False), _dry_run(request)
    data = await _csv_body(request)
    assert code is not None and name is not None
    result = await imports.import_attendees(_store(request), data, code=code, name=name,
                                            email=email, dry_run=dry_run)
    if result.written and result.added:  # a name or email change is not the doors' business
        request.app.state.hub.changed(None)
    if result.written:
        publish(request, CHANGED)
    return _import_answer(result)


@admin
async def import_registrants(request: Request) -> Response:
    session_id = _path_id(request, "session_id")
    column, match = _query(request, "column"), request.query_params.get("match", "code")
    if match not in ("code", "email"):
        raise BadRequest(f"match {show(match)}: expected code or email (what the column "
                         "holds)")
    dry_run = _dry_run(request)
    data = await _csv_body(request)
    assert column is not None
    result = await imports.import_registrants(_store(request), session_id, data,
                                              column=column, match=match, dry_run=dry_run)
    if result.written and result.added:
        request.app.state.hub.changed(session_id)
        _session_changed(request, session_id)
    return _import_answer(result)


@admin
async def delete_registrants(request: Request) -> Response:
    session_id = _path_id(request, "session_id")
    removed = await _store(request).remove_registrants(session_id)
    if removed:
        request.app.state.hub.changed(session_id)
        _session_changed(request, session_id)
    return JSONResponse({"removed": removed})


@admin
async def put_registrant(request: Request) -> Response:
    session_id, code = _path_id(request, "session_id"), _path_code(request)
    created = await _store(request).put_registrant(session_id, code)
    if created:
        request.app.state.hub.changed(session_id)
        _session_changed(request, session_id)
    return JSONResponse({"session_id": session_id, "code": code, "created": created},
                        status_code=201 if created else 200)


@admin
async def delete_registrant(request: Request) -> Response:
    session_id, code = _path_id(request, "session_id"), _path_code(request)
    await _store(request).delete_registrant(session_id, code)
    request.app.state.hub.changed(session_id)
    _session_changed(request, session_id)
    return Response(status_code=204)


@admin
async def put_device(request: Request) -> Response:
    device_id = _path_id(request, "device_id")
    session_id = _checked(await _json_body(request), _DEVICE_FIELDS, "device")["session_id"]
    token, previous = await _store(request).put_device(device_id, session_id)
    publish(request, "doors", session_topic(session_id),
            *([session_topic(previous)] if previous and previous != session_id else []))
    if token is not None:
        return JSONResponse({"device_id": device_id, "session_id": session_id, "token": token},
                            status_code=201)
    if previous != session_id:
        await request.app.state.hub.disconnect(
            device_id, CLOSE_REASSIGNED, f"device reassigned to session {session_id}")
    return JSONResponse({"device_id": device_id, "session_id": session_id})


@admin
async def delete_device(request: Request) -> Response:
    device_id = _path_id(request, "device_id")
    await _store(request).revoke_device(device_id)
    await request.app.state.hub.disconnect(device_id, CLOSE_REVOKED, REVOKED_REASON)
    publish(request, "doors")
    return Response(status_code=204)


@admin
async def list_devices(request: Request) -> Response:
    devices = await _store(request).devices()
    connected = request.app.state.hub.connected()
    return JSONResponse([d | {"connected": d["device_id"] in connected} for d in devices])


@admin
async def attendance(request: Request) -> Response:
    return JSONResponse(await _store(request).attendance(_path_id(request, "session_id")))


@admin
async def attendance_csv(request: Request) -> Response:
    return await exports.attendance_response(_store(request),
                                             _path_id(request, "session_id"))


@admin
async def scans_csv(request: Request) -> Response:
    session_id = request.query_params.get("session_id")
    if session_id is not None:
        try:
            session_id = identifier(session_id)
        except ValueError as exc:
            raise BadRequest(f"session_id {show(session_id)}: expected {exc}") from None
    return await exports.scans_response(_store(request), session_id)


ROUTES = [
    Route("/api/health", health, methods=["GET"]),
    Route("/api/device", device, methods=["GET"]),
    Route("/api/sessions", list_sessions, methods=["GET"]),
    Route("/api/sessions/{session_id}", put_session, methods=["PUT"]),
    Route("/api/sessions/{session_id}", delete_session, methods=["DELETE"]),
    Route("/api/sessions/{session_id}/attendance", attendance, methods=["GET"]),
    Route("/api/sessions/{session_id}/attendance.csv", attendance_csv, methods=["GET"]),
    Route("/api/scans.csv", scans_csv, methods=["GET"]),
    # Before the routes by code: "import" is a code too, for PUT and DELETE.
    Route("/api/sessions/{session_id}/registrants/import", import_registrants,
          methods=["POST"]),
    Route("/api/sessions/{session_id}/registrants", delete_registrants, methods=["DELETE"]),
    Route("/api/sessions/{session_id}/registrants/{code:path}", put_registrant, methods=["PUT"]),
    Route("/api/sessions/{session_id}/registrants/{code:path}", delete_registrant,
          methods=["DELETE"]),
    Route("/api/attendees", post_attendees, methods=["POST"]),
    Route("/api/attendees/import", import_attendees, methods=["POST"]),
    Route("/api/devices", list_devices, methods=["GET"]),
    Route("/api/devices/{device_id}", put_device, methods=["PUT"]),
    Route("/api/devices/{device_id}", delete_device, methods=["DELETE"]),
]
