"""The sync daemon's settings: the ``[server]`` section of the device config file.

Declared here, where the daemon that uses them lives; :mod:`device.config`
reads the whole file (one file per device, shared by the door and the daemon)
and takes this section from here (:class:`ServerConfig`, whose fields carry their
checks).
"""

from __future__ import annotations

import ipaddress
import os
import ssl
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from core.shapes import checked, number, show
from core.shapes import path as file_path

#: The most servers one ``[server] url`` list names (each one a connection attempt
#: between two waits: a list longer than any real deployment is a mistake).
MAX_SERVER_URLS = 16
_ONE_URL = "a ws:// or wss:// URL ending in /sync"


def _server_url(value: Any) -> str:
    if (not isinstance(value, str) or not value.startswith(("ws://", "wss://"))
            or not value.rstrip("/").endswith("/sync")):
        raise ValueError(_ONE_URL)
    return value.rstrip("/")


def server_urls(value: Any) -> tuple[str, ...]:
    """``[server] url``: one URL, or a list of them (several server processes, tried in
    order); each checked alone, none twice. Always returned as a tuple, in order."""
    if not isinstance(value, list):
        try:
            return (_server_url(value),)
        except ValueError:
            raise ValueError(f"{_ONE_URL}, or a list of 1 to {MAX_SERVER_URLS} of them") \
                from None
    expected = f"a list of 1 to {MAX_SERVER_URLS} ws:// or wss:// URLs ending in /sync"
    if not value:
        raise ValueError(f"{expected}; the list is empty")
    if len(value) > MAX_SERVER_URLS:
        raise ValueError(f"{expected}; the list holds {len(value)}")
    urls: list[str] = []
    for index, item in enumerate(value):
        try:
            url = _server_url(item)
        except ValueError:
            raise ValueError(f"{expected}; url[{index}] = {show(item)} is not one") from None
        same = [i for i, seen in enumerate(urls) if _same_server(seen, url)]
        if same:
            raise ValueError(f"{expected}, each once; url[{index}] = {show(item)} is "
                             f"url[{same[0]}] again")
        urls.append(url)
    return tuple(urls)


def _same_server(a: str, b: str) -> bool:
    """Whether two checked URLs name the same endpoint: the host's case and a default port
    spelled out make no difference (the daemon would try one server twice per round)."""
    return _endpoint(a) == _endpoint(b)


def _endpoint(url: str) -> tuple[str, str, int | str | None, str]:
    parts = urlsplit(url)
    try:
        port: int | str | None = parts.port or (443 if parts.scheme == "wss" else 80)
    except ValueError:  # not a number: the daemon will say so; compare it as written
        port = parts.netloc.rpartition(":")[2]
    return parts.scheme, (parts.hostname or "").rstrip("."), port, parts.path


_SECONDS = number(0, 3600, open_low=True)


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """The ``[server]`` section: each key with its check and default."""

    #: Every server URL, in the order the daemon tries them: the key holds one URL or a
    #: list (several server processes on one database, or one load balancer's address).
    url: tuple[str, ...] = field(metadata=checked(server_urls))
    #: Relative to the config file (resolved when the file is read).
    token_file: Path = field(metadata=checked(file_path))
    ca_file: Path | None = field(default=None, metadata=checked(file_path))
    retry_min_seconds: float = field(default=0.5, metadata=checked(_SECONDS))
    retry_max_seconds: float = field(default=30.0, metadata=checked(_SECONDS))
    auth_retry_seconds: float = field(default=30.0,
                                      metadata=checked(number(0, 86400, open_low=True)))
    status_seconds: float = field(default=15.0, metadata=checked(_SECONDS))


class DoorPolicy(Protocol):
    """What the daemon tells the server of the door's ``[door]`` policy (in its hello)."""

    @property
    def allow_reentry(self) -> bool: ...


class DaemonConfig(Protocol):
    """What the sync daemon needs of a device's config (``device.config.DeviceConfig`` has it)."""

    @property
    def device_id(self) -> str: ...

    @property
    def data_dir(self) -> Path: ...

    @property
    def server(self) -> ServerConfig | None: ...

    @property
    def door(self) -> DoorPolicy: ...


def insecure_url_warning(url: str) -> str | None:
    """A warning for a ``ws://`` *url* whose host is not this machine, else ``None``.

    ``ws://`` is allowed (a test bench, or a server on the same machine), so this
    is a warning, not a config error; but over a real network the device token is
    sent in clear in every handshake and every scan travels unencrypted, so anyone
    on the path can read them, or replay the token and push scans as this door.
    Pure, so it is tested on its own; the sync daemon logs it at start-up.
    """
    if not url.startswith("ws://"):
        return None
    host = urlsplit(url).hostname or ""  # lower-cased, IPv6 brackets removed
    if _is_loopback(host):
        return None
    return (f"[server] url {url} is not encrypted (ws://) and {host or 'its host'} is not "
            f"this machine: the device token and every scan travel in clear text and can "
            f"be read or replayed by anyone on the network; use wss://")


def _is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 (also as ::ffff:127.x.y.z) or localhost; never a DNS lookup:
    a name other than localhost may resolve anywhere, so it counts as the network."""
    if host.rstrip(".") == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def server_file_problems(urls: tuple[str, ...] | None, token_file: Path | None,
                         ca_file: Path | None) -> list[str]:
    """What the daemon will find wrong with the ``[server]`` section's URLs and files
    (the ``ws://`` warning for each URL that earns one; one CA file serves them all).

    Each argument is the checked, resolved value, or ``None`` when the key is absent or
    already reported as invalid. Reads the files but never the network; ``checkin config
    check`` reports these as errors, the door and the daemon log them as warnings at
    start (the daemon reads the token again at every connection: a technician may put it
    in place while it runs).
    """
    problems = []
    for url in urls or ():
        if warning := insecure_url_warning(url):
            problems.append(warning)
    if token_file is not None:
        problems.extend(token_file_problems(token_file))
    if ca_file is not None:
        problems.extend(ca_file_problems(ca_file))
    return problems


def token_file_problems(path: Path) -> list[str]:
    """The device token file: present, a file, one token, and private (mode & 0o077 == 0:
    anyone who reads it can push scans as this door)."""
    where = f"[server] token_file = {show(str(path))}"
    try:
        mode = path.stat().st_mode
        text = _head(path) if stat.S_ISREG(mode) else None  # never a FIFO: it would block
    except FileNotFoundError:
        return [f"{where}: no such file (expected the device token, e.g. written by "
                f"checkin provision)"]
    except OSError as exc:
        return [f"{where}: cannot read it ({exc.strerror}; user id {os.geteuid()})"]
    except UnicodeDecodeError:
        return [f"{where}: expected one token as text, the file is not UTF-8 text"]
    if text is None:
        return [f"{where}: expected a file, it is not a regular file"]
    problems = []
    words = text.split()
    if len(text) > _TOKEN_LIMIT:
        problems.append(f"{where}: expected one token, the file holds more than "
                        f"{_TOKEN_LIMIT} bytes")
    elif len(words) != 1:
        problems.append(f"{where}: expected one token, the file holds "
                        f"{'nothing' if not words else f'{len(words)} words'}")
    if mode & 0o077:
        problems.append(f"{where}: readable by group or others (mode {stat.S_IMODE(mode):04o});"
                        f" expected mode 0600 or 0400 (chmod 600 {path}): whoever reads it "
                        f"can push scans as this door")
    return problems


#: More than this in a token file is not a token (and is not read further).
_TOKEN_LIMIT = 4096


def _head(path: Path) -> str:
    with path.open("rb") as file:
        return file.read(_TOKEN_LIMIT + 1).decode("utf-8")


def ca_file_problems(path: Path) -> list[str]:
    """The private CA file: present and holding PEM certificates TLS can load."""
    where = f"[server] ca_file = {show(str(path))}"
    if not os.path.exists(path):  # never raises
        return [f"{where}: no such file (expected PEM CA certificates)"]
    if not os.path.isfile(path):  # never a FIFO: loading it would block
        return [f"{where}: expected a file of PEM CA certificates, it is not a regular file"]
    try:
        ssl.create_default_context(cafile=str(path))
    except (OSError, ssl.SSLError, ValueError) as exc:
        detail = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or exc
        return [f"{where}: expected PEM CA certificates, cannot load them ({detail})"]
    return []
