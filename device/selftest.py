"""The door's self-test: a short LED and buzzer pattern, asked for over a control socket.

``checkin doctor`` runs while the door runs, and on a Pi the door holds the GPIO
pins: the doctor cannot drive them itself. So the door binds a Unix datagram
socket in its data dir (:data:`CONTROL_SOCKET`, like :mod:`sync.wake`) and answers
a ``self-test`` datagram by playing :data:`SELF_TEST` and replying, to the
sender's address, with a JSON object of what it is doing (frames seen, decisions
made). A socket file in the data dir (not an abstract or /tmp one) because the
door's unit has ``PrivateNetwork=`` and ``PrivateTmp=``: only the data dir is
shared. :func:`request_self_test` is the doctor's end.

A decision made while the self-test plays pre-empts it, as decisions pre-empt
each other: the door never waits for a test.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.datagrams import BoundSocket
from device.indicators.patterns import Step

#: The control socket's file name inside the device's data dir.
CONTROL_SOCKET = "door.control"
#: The one request the door answers.
SELF_TEST_REQUEST = b"self-test"
#: Green, red, buzzer each on its own, then all three: a technician sees (and hears)
#: every output work, and the pattern looks like no decision's.
SELF_TEST = (Step(True, False, False, 0.4), Step(False, True, False, 0.4),
             Step(False, False, True, 0.2), Step(False, False, False, 0.2),
             Step(True, True, True, 0.3))


def control_path(data_dir: Path | str) -> Path:
    return Path(data_dir) / CONTROL_SOCKET


class ControlListener:
    """The door's end: calls *answer* for each self-test request (on the event loop) and
    sends what it returns back to the requester."""

    def __init__(self, data_dir: Path | str, answer: Callable[[], dict[str, Any]]) -> None:
        self.path = control_path(data_dir)
        self._answer = answer
        self._bound = BoundSocket(self.path, self._readable)

    def open(self) -> bool:
        """Bind the socket (replacing a stale one); say whether it could be bound. Without
        it the door runs as before: only the doctor's self-test cannot reach it."""
        return self._bound.open()

    def _readable(self, sock: socket.socket) -> None:
        while True:
            try:
                request, sender = sock.recvfrom(64)
            except OSError:  # drained (BlockingIOError) or gone
                return
            if request != SELF_TEST_REQUEST:
                continue
            reply = json.dumps(self._answer()).encode()
            if sender:  # an unbound requester cannot be answered
                with contextlib.suppress(OSError):
                    sock.sendto(reply, sender)

    def close(self) -> None:
        self._bound.close()


class NoDoor(Exception):
    """No door listens on the control socket (it is not running, or runs an older
    version); the message says which."""


def request_self_test(data_dir: Path | str, timeout: float = 3.0) -> dict[str, Any]:
    """Ask the running door to play :data:`SELF_TEST`; return its reply.

    Raises :class:`NoDoor` when nobody listens, :class:`OSError` (with a message) when
    the request or the reply cannot be sent, :class:`TimeoutError` when the door does
    not answer within *timeout* seconds. The reply socket sits beside the door's, in
    the data dir (the only folder the door's unit shares), readable by the door
    whatever user runs the doctor.
    """
    target = control_path(data_dir)
    if not target.exists():
        raise NoDoor(f"no control socket {target}")
    reply_path = Path(data_dir) / f"doctor.{os.getpid()}.reply"
    with contextlib.closing(socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)) as sock:
        with contextlib.suppress(FileNotFoundError):
            reply_path.unlink()
        sock.bind(os.fsencode(reply_path))
        try:
            os.chmod(reply_path, 0o666)  # the data dir (0750) keeps others out
            try:
                sock.sendto(SELF_TEST_REQUEST, os.fsencode(target))
            except (ConnectionRefusedError, FileNotFoundError):
                raise NoDoor(f"nothing listens on {target} (a stale socket)") from None
            deadline = time.monotonic() + timeout
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"the door did not answer within {timeout:g} s")
                sock.settimeout(left)
                try:
                    data = sock.recv(4096)
                except TimeoutError:
                    continue
                with contextlib.suppress(ValueError):
                    reply = json.loads(data)
                    if isinstance(reply, dict):
                        return reply
        finally:
            with contextlib.suppress(OSError):
                reply_path.unlink()
