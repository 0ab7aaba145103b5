"""Tokens: device tokens (random, shown once, stored hashed) and the admin token.

Tokens are 256 random bits, so an unsalted SHA-256 of a token is as good as
any password hash: there is nothing to brute-force. Only the hash is stored;
the token itself is shown once, in the answer that created the device.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

#: Environment variable that sets the admin token.
ADMIN_TOKEN_ENV = "CHECKIN_ADMIN_TOKEN"
#: File in the server's data dir holding the admin token made on first start.
ADMIN_TOKEN_FILE = "admin-token"
#: Name of the systemd credential holding the admin token (``LoadCredential=admin-token:…``).
ADMIN_TOKEN_CREDENTIAL = "admin-token"
#: Environment variable systemd sets to the service's credentials directory.
CREDENTIALS_DIRECTORY_ENV = "CREDENTIALS_DIRECTORY"


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def bearer(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or ``None``."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def same_token(given: str | None, expected: str) -> bool:
    """Compare tokens in constant time."""
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def admin_token(data_dir: Path) -> tuple[str, str]:
    """The admin token and where it came from (for the server's start-up message).

    The first of these that holds a token wins:

    1. :data:`ADMIN_TOKEN_ENV`: set for this one run (by hand, tests), so it
       overrides whatever is installed;
    2. the systemd credential :data:`ADMIN_TOKEN_CREDENTIAL` in
       ``$CREDENTIALS_DIRECTORY`` (the unit's ``LoadCredential=``): the installed
       server's token, kept in a root-only file the service's dynamic user could
       not read itself, and never in the environment, which child processes and
       ``/proc/PID/environ`` would see;
    3. the token file in *data_dir*, made (readable by its owner only) on first
       start, so ``checkin server`` run by hand needs no setup.

    An empty variable or credential counts as absent (the message then says so).
    """
    from_env = os.environ.get(ADMIN_TOKEN_ENV, "").strip()
    if from_env:
        return from_env, f"from ${ADMIN_TOKEN_ENV}"
    note = ""
    credentials = os.environ.get(CREDENTIALS_DIRECTORY_ENV, "")
    if credentials:
        credential = Path(credentials) / ADMIN_TOKEN_CREDENTIAL
        try:
            token = credential.read_text(encoding="utf-8").strip()
        except FileNotFoundError:  # the unit may load only other credentials (the TLS key)
            pass
        else:
            if token:
                return token, f"from credential {credential}"
            note = f" (credential {credential} is empty)"
    path = data_dir / ADMIN_TOKEN_FILE
    try:
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        token = ""
    if not token:
        token = new_token()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(token + "\n")
        return token, f"made now, kept in {path}{note}"
    return token, f"kept in {path}{note}"
