"""``checkin provision``: make a fleet of doors from one template, ready to copy onto SD cards.

For each row of the devices CSV (``device_id,session_id``) it creates or reassigns the
door on the server (``PUT /api/devices/{id}``) and writes ``OUT/<id>/door.toml`` (the
template with ``[device] id``, ``[server] url`` and ``token_file`` set) and the door's
token file beside it (mode 0600), named as on the device (``token_file``'s last part).

Idempotent: the token is shown by the server only once, so the token file in OUT is the
only copy. A door already on the server whose token file is in OUT is left alone (or
reassigned); one whose token is *not* in OUT is an error, unless ``--rotate`` revokes
its token and issues a new one. Everything is checked (CSV, template, admin token,
server) before the first change; a door that then fails does not stop the others.

The pure part (CSV, template text, what to do per door) is apart from the thin adapter
(HTTP client and files) so it can be tested without either.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import re
import sys
import tomllib
from dataclasses import dataclass
from enum import Enum
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import httpx

from core.private_files import write_private
from core.shapes import identifier, show
from device.config import ConfigError, parse_config

#: Exit statuses: every door done; some door failed (the others still done); a usage
#: or config error (nothing done).
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
#: Where the token sits on a door unless the template says otherwise: the path the door's
#: unit hides from the door process (InaccessiblePaths= in systemd/checkin-door.service).
DEVICE_TOKEN_FILE = "/etc/checkin/device.token"
CONFIG_NAME = "door.toml"
ADMIN_TOKEN_ENV = "CHECKIN_ADMIN_TOKEN"
HEADER = ("device_id", "session_id")


class ProvisionError(Exception):
    """A usage or config error: nothing was done; :attr:`problems` lists every reason."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass(frozen=True, slots=True)
class Row:
    device_id: str
    session_id: str


class Action(Enum):
    CREATE = "created"
    UNCHANGED = "unchanged"
    REASSIGN = "reassigned"
    ROTATE = "rotated"
    MISSING_TOKEN = "failed"


# -- the pure part -------------------------------------------------------------------


def parse_devices(text: str, source: str) -> list[Row]:
    """The rows of a devices CSV; every bad line named at once (:class:`ProvisionError`).

    Blank lines and lines starting with ``#`` are skipped; a first row
    ``device_id,session_id`` is a header."""
    rows: list[Row] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = [f.strip() for f in next(csv.reader([line]), [])]
        if not rows and not problems and tuple(fields) == HEADER:
            continue
        where = f"{source} line {number}"
        if len(fields) != 2:
            problems.append(f"{where}: {show(line)}: expected two fields, device_id,session_id")
            continue
        bad = _bad_ids(fields)
        if bad:
            problems.append(f"{where}: {bad}")
        elif fields[0] in seen:
            problems.append(f"{where}: device {fields[0]!r} is already on line {seen[fields[0]]}")
        else:
            seen[fields[0]] = number
            rows.append(Row(fields[0], fields[1]))
    if not rows and not problems:
        problems.append(f"{source}: no devices (expected one row per door: device_id,session_id)")
    if problems:
        raise ProvisionError(problems)
    return rows


def _bad_ids(fields: list[str]) -> str:
    for name, value in zip(HEADER, fields, strict=True):
        try:
            identifier(value)
        except ValueError as exc:
            return f"{name} {show(value)}: expected {exc}"
    return ""


def sync_url(server: str) -> str:
    """The doors' ``[server] url`` for the server at base URL *server* (http[s]://HOST[:PORT])."""
    parts = urlsplit(server)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ProvisionError([f"--server {show(server)}: expected the server's base URL, "
                              "https://HOST:PORT (or http:// on one machine)"])
    scheme = "wss" if parts.scheme == "https" else "ws"
    return f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}/sync"


def token_file_of(template: dict[str, Any]) -> str:
    """Where the token sits on the device: the template's ``[server] token_file``, or
    :data:`DEVICE_TOKEN_FILE`."""
    server = template.get("server")
    value = server.get("token_file") if isinstance(server, dict) else None
    return value if isinstance(value, str) and value else DEVICE_TOKEN_FILE


_TABLE = re.compile(r"^\s*\[\s*([A-Za-z0-9_-]+)\s*\]\s*(#.*)?$")
_ANY_TABLE = re.compile(r"^\s*\[")
_COMMENT = re.compile(r"""^[^=]*=\s*(?:"[^"\\]*"|'[^']*')(\s+#.*)$""")


def set_keys(text: str, table: str, values: dict[str, str]) -> str:
    """*text* (TOML) with each key of *values* set as a string in ``[table]``: its line
    replaced (so the template's other lines and comments stay), or added after the
    table's header, or the table added at the end."""
    lines = text.splitlines()
    current, header_at, done = None, None, set()
    for i, line in enumerate(lines):
        match = _TABLE.match(line)
        if match or _ANY_TABLE.match(line):
            current = match.group(1) if match else None
            header_at = i if current == table else header_at
            continue
        key = line.split("=", 1)[0].strip() if "=" in line else None
        if current == table and key in values:
            indent = line[: len(line) - len(line.lstrip())]
            comment = _COMMENT.match(line)  # kept after a plain one-line string value
            lines[i] = (f"{indent}{key} = {_toml_string(values[key])}"
                        f"{comment.group(1) if comment else ''}")
            done.add(key)
    missing = [f"{k} = {_toml_string(v)}" for k, v in values.items() if k not in done]
    if missing and header_at is None:
        lines += ["", f"[{table}]", *missing]
    elif missing:
        lines[header_at + 1:header_at + 1] = missing
    return "\n".join(lines) + "\n"


def _toml_string(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def render_config(template: str, source: str, device_id: str, url: str,
                  token_file: str) -> str:
    """The door's config: *template* with its id, server URL and token file set, checked as
    the door checks it (:class:`ProvisionError` naming *source* for a template the door
    would refuse)."""
    text = set_keys(template, "device", {"id": device_id})
    text = set_keys(text, "server", {"url": url, "token_file": token_file})
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProvisionError([f"template {source}: cannot set [device] id, [server] url and "
                              "token_file (write each on one line, as key = \"...\"): the "
                              f"result is not valid TOML: {exc}"]) from None
    wanted = {("device", "id"): device_id, ("server", "url"): url,
              ("server", "token_file"): token_file}
    for (table, key), value in wanted.items():
        if data.get(table, {}).get(key) != value:
            raise ProvisionError([f"template {source}: cannot set [{table}] {key}: write it "
                                  f"on one line, as {key} = \"...\", in [{table}]"])
    try:
        parse_config(data, source)
    except ConfigError as exc:
        raise ProvisionError([f"template {exc.path}: {p}" for p in exc.problems]) from None
    return text


def decide(row: Row, on_server: dict[str, Any] | None, have_token: bool,
           rotate: bool) -> Action:
    """What to do for one door: *on_server* is its entry in ``GET /api/devices`` (``None``
    if absent or revoked), *have_token* whether its token file is in OUT."""
    if on_server is None:
        return Action.CREATE
    if rotate:
        return Action.ROTATE
    if not have_token:
        return Action.MISSING_TOKEN
    return Action.UNCHANGED if on_server["session_id"] == row.session_id else Action.REASSIGN


# -- the adapter: HTTP and files -----------------------------------------------------


class ServerError(Exception):
    """The server refused or could not be reached; the message says which."""


class AdminRefused(ServerError):
    """The server refused the admin token: a usage error."""


class Api:
    """The organizer API's device routes, as the admin."""

    def __init__(self, base: str, token: str, ca_file: str | None) -> None:
        self._client = httpx.Client(base_url=base.rstrip("/"), timeout=30.0,
                                    verify=ca_file or True,
                                    headers={"Authorization": f"Bearer {token}"})

    def close(self) -> None:
        self._client.close()

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        try:
            answer = self._client.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise ServerError(f"cannot reach {self._client.base_url}: {exc}") from None
        if answer.status_code == 401:
            raise AdminRefused(f"the server refused the admin token (${ADMIN_TOKEN_ENV})")
        if not answer.is_success:
            raise ServerError(f"{method} {path}: HTTP {answer.status_code} "
                              f"{_reason(answer)}")
        return answer.status_code, answer.json() if answer.content else None

    def devices(self) -> dict[str, dict[str, Any]]:
        """The server's doors with a valid token, by id."""
        _, listed = self.call("GET", "/api/devices")
        return {d["device_id"]: d for d in listed if d.get("revoked_at") is None}

    def put(self, row: Row) -> str | None:
        """Create or reassign *row*'s door; its new token if one was issued."""
        _, answer = self.call("PUT", f"/api/devices/{row.device_id}",
                              {"session_id": row.session_id})
        return answer.get("token")

    def revoke(self, device_id: str) -> None:
        self.call("DELETE", f"/api/devices/{device_id}")

    def token_accepted(self, device_id: str, token: str) -> bool:
        """Whether the server takes *token* as *device_id*'s (``GET /api/device`` with it);
        a server without that route cannot tell, and is believed."""
        try:
            answer = self._client.get("/api/device",
                                      headers={"Authorization": f"Bearer {token}"})
        except httpx.HTTPError as exc:
            raise ServerError(f"cannot reach {self._client.base_url}: {exc}") from None
        if answer.status_code == 404:
            return True
        return answer.status_code == 200 and answer.json().get("device_id") == device_id


def _reason(answer: httpx.Response) -> str:
    try:
        return str(answer.json().get("error", answer.text))[:200]
    except (ValueError, AttributeError):
        return answer.text[:200]


def _read_token(path: Path) -> str | None:
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return token or None


def write_public(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.chmod(temporary, 0o644)
    os.replace(temporary, path)


@dataclass(frozen=True, slots=True)
class Plan:
    rows: list[Row]
    configs: dict[str, str]
    token_name: str
    out: Path


def provision_one(api: Api, plan: Plan, row: Row, on_server: dict[str, Any] | None,
                  rotate: bool) -> tuple[bool, str]:
    """Do one door; (whether it went well, its line)."""
    folder = plan.out / row.device_id
    token_path = folder / plan.token_name
    kept = _read_token(token_path)
    # A token in OUT that the server no longer takes (rotated from another OUT, revoked and
    # issued again elsewhere) is as good as none: copying it onto a door would not work.
    have_token = kept is not None and (on_server is None or rotate
                                       or api.token_accepted(row.device_id, kept))
    action = decide(row, on_server, have_token, rotate)
    if action is Action.MISSING_TOKEN:
        why = (f"its token is not in {token_path}" if kept is None
               else f"the server no longer accepts the token in {token_path}")
        return False, (f"{row.device_id}: failed: it exists on the server but {why} (the "
                       "server shows a token only once): give --rotate to revoke its token "
                       "and issue a new one")
    if action is Action.ROTATE:
        api.revoke(row.device_id)
    token = api.put(row) if action is not Action.UNCHANGED else None
    # Its only copy: kept before anything else can fail.
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if token is not None:
        write_private(token_path, token + "\n")
    config_path = folder / CONFIG_NAME
    previous = config_path.read_text(encoding="utf-8") if config_path.is_file() else None
    write_public(config_path, plan.configs[row.device_id])
    moved = (f", moved from session {on_server['session_id']}"
             if on_server and on_server["session_id"] != row.session_id else "")
    # A changed template reaches doors already provisioned: say so, it must be copied again.
    updated = (f"; {CONFIG_NAME} updated" if previous is not None
               and previous != plan.configs[row.device_id] else "")
    return True, f"{row.device_id}: {action.value} (session {row.session_id}{moved}){updated}"


def prepare(args: argparse.Namespace) -> tuple[Plan, str]:
    """Everything checked before the first change: (the plan, the admin token)."""
    problems: list[str] = []
    token = os.environ.get(ADMIN_TOKEN_ENV, "").strip()
    if not token:
        problems.append(f"${ADMIN_TOKEN_ENV} is not set: put the server's admin token in it "
                        "(e.g. export CHECKIN_ADMIN_TOKEN=$(cat admin-token))")
    rows: list[Row] = []
    try:
        rows = parse_devices(_read(args.devices, "--devices"), args.devices)
        url = sync_url(args.server)
        template_text = _read(args.template, "--template")
        template = _parse_template(template_text, args.template)
    except ProvisionError as exc:
        raise ProvisionError(problems + exc.problems) from None
    token_file = token_file_of(template)
    configs = {row.device_id: render_config(template_text, args.template, row.device_id, url,
                                            token_file) for row in rows}
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        problems.append(f"--out {show(args.out)}: expected a folder")
    if args.ca_file and not Path(args.ca_file).is_file():
        problems.append(f"--ca-file {show(args.ca_file)}: file not found")
    if problems:
        raise ProvisionError(problems)
    return Plan(rows, configs, PurePosixPath(token_file).name, out), token


def _read(path: str, option: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ProvisionError([f"{option} {show(path)}: cannot read it: {exc}"]) from None


def _parse_template(text: str, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProvisionError([f"template {source}: not valid TOML: {exc}"]) from None


def run(args: argparse.Namespace) -> int:
    """``checkin provision``; the exit status."""
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request
    try:
        plan, token = prepare(args)
    except ProvisionError as exc:
        for problem in exc.problems:
            print(f"checkin provision: {problem}", file=sys.stderr)
        return EXIT_USAGE
    api = Api(args.server, token, args.ca_file)
    try:
        return _provision_all(api, plan, args.rotate)
    finally:
        api.close()


def _provision_all(api: Api, plan: Plan, rotate: bool) -> int:
    try:
        on_server = api.devices()
    except ServerError as exc:
        print(f"checkin provision: {exc}; nothing done", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, AdminRefused) else EXIT_FAILED
    plan.out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for row in plan.rows:
        try:
            ok, line = provision_one(api, plan, row, on_server.get(row.device_id), rotate)
        except (ServerError, OSError) as exc:
            ok, line = False, f"{row.device_id}: failed: {exc}"
        failed += not ok
        print(line, flush=True)
    if failed:
        print(f"checkin provision: {failed} of {len(plan.rows)} doors failed (the others are "
              "done); run it again once fixed", file=sys.stderr)
    return EXIT_FAILED if failed else EXIT_OK
