"""Who is signed in, and that a form came from our own page.

The organizer signs in once with the admin token; the browser then holds a signed
cookie (itsdangerous), never the token itself. The cookie is HttpOnly (no script reads
it), SameSite=Strict (no other site's page sends it) and Secure when the server speaks
TLS. Every form carries a CSRF token that must equal the one in the cookie: SameSite
already stops cross-site posts in today's browsers, the token stops them in the others.

The cookie carries a fingerprint of the admin token: a new admin token signs everyone
out. The signing secret is made once and kept in the data dir (mode 0600), or given in
``CHECKIN_WEB_SECRET``, so a restart keeps people signed in.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import Request
from starlette.responses import Response

#: The cookie that holds the signed session.
COOKIE = "checkin_web"
#: Seconds a sign-in lasts (a long conference day).
SESSION_SECONDS = 16 * 3600
#: The file, in the data dir, that holds the signing secret.
SECRET_FILE = "web-secret"
#: The environment variable that may give the secret instead.
SECRET_ENV = "CHECKIN_WEB_SECRET"


def load_secret(data_dir: Path) -> bytes:
    """The signing secret: from the environment, else the data dir's file, made
    (owner-only, created exclusively so two starts cannot race) if missing."""
    given = os.environ.get(SECRET_ENV, "")
    if given:
        return given.encode()
    path = data_dir / SECRET_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        try:
            secret = bytes.fromhex(path.read_text(encoding="ascii").strip())
        except ValueError:  # not hex: not a file we wrote
            secret = b""
        if len(secret) >= 32:
            return secret
        path.unlink()  # empty, truncated (a crash mid-write) or garbled: make a good one
        return load_secret(data_dir)
    secret = secrets.token_bytes(32)
    with os.fdopen(fd, "w", encoding="ascii") as file:
        file.write(secret.hex() + "\n")
    return secret


@dataclass
class WebSession:
    """What the cookie says: a random id, the CSRF token, whether signed in, and a message
    to show once on the next page."""

    sid: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    signed_in: bool = False
    flash: str = ""
    #: Set when the cookie must be (re)written with the response.
    dirty: bool = False

    def renew(self, *, signed_in: bool) -> None:
        """A new id and CSRF token (at sign-in and sign-out: no fixation)."""
        self.sid = secrets.token_urlsafe(18)
        self.csrf = secrets.token_urlsafe(24)
        self.signed_in = signed_in
        self.dirty = True

    def say(self, message: str) -> None:
        self.flash = message
        self.dirty = True

    def take_flash(self) -> str:
        message, self.flash = self.flash, ""
        if message:
            self.dirty = True
        return message


class Signer:
    """Signs and reads session cookies; makes the schedule pages' CSRF tokens."""

    def __init__(self, secret: bytes, admin_token: str) -> None:
        self._secret = secret
        self._serializer = URLSafeTimedSerializer(secret, salt="checkin.web.session")
        self._admin = hashlib.sha256(b"checkin.web.admin\0" + admin_token.encode()).hexdigest()[:24]
        #: Session ids signed out, with when: a copy of the cookie taken before signing
        #: out no longer signs anyone in. Kept in memory (a restart forgets them; the
        #: cookie still expires after SESSION_SECONDS).
        self._ended: dict[str, float] = {}

    def end(self, session: WebSession) -> None:
        """Sign *session* out for good, here and in any copy of its cookie."""
        now = time.monotonic()
        self._ended = {sid: at for sid, at in self._ended.items()
                       if now - at < SESSION_SECONDS}
        self._ended[session.sid] = now

    def session(self, request: Request) -> WebSession:
        """The request's session, or a fresh anonymous one (to be written back)."""
        raw = request.cookies.get(COOKIE)
        if raw:
            try:
                data: Any = self._serializer.loads(raw, max_age=SESSION_SECONDS)
            except BadSignature:  # forged, from another secret, or expired
                data = None
            if isinstance(data, dict) and isinstance(data.get("sid"), str) and isinstance(
                    data.get("csrf"), str):
                return WebSession(sid=data["sid"], csrf=data["csrf"],
                                  signed_in=data.get("adm") == self._admin
                                  and data["sid"] not in self._ended,
                                  flash=str(data.get("flash", "")))
        return WebSession(dirty=True)

    def write(self, response: Response, session: WebSession, request: Request) -> None:
        data = {"sid": session.sid, "csrf": session.csrf}
        if session.signed_in:
            data["adm"] = self._admin
        if session.flash:
            data["flash"] = session.flash
        response.set_cookie(COOKIE, self._serializer.dumps(data), max_age=SESSION_SECONDS,
                            path="/", httponly=True, samesite="strict",
                            secure=request.url.scheme == "https")

    def page_token(self, purpose: str, key: str) -> str:
        """A CSRF token bound to one page (the attendee's schedule page has no cookie)."""
        return hmac.new(self._secret, f"{purpose}\0{key}".encode("utf-8", "surrogatepass"),
                        hashlib.sha256).hexdigest()

    def upload_name(self, sid: str, upload_id: str) -> str:
        """The file name of an upload: only the session that made it can name it."""
        return hmac.new(self._secret, f"upload\0{sid}\0{upload_id}".encode(),
                        hashlib.sha256).hexdigest()[:40]


def same(given: Any, expected: str) -> bool:
    return isinstance(given, str) and hmac.compare_digest(given.encode(), expected.encode())
