"""The connected devices, so that a change on the server reaches their doors at once.

The organizer API tells the :class:`Hub` what changed; the hub tells every
connected link that cares (the devices of that session, or all of them for a
change of attendees). Each link then asks its protocol end for the changes
since what it last sent: pushes, not polls.

With several server processes on one database (PostgreSQL), a device is
connected to one of them. The hub then also *tells* the other processes what
they must act on (a device to close, a device now connected here) through a
``tell`` function (:class:`server.relay.Relay` carries it over the database's
notifications), and :meth:`Hub.receive` acts on what they tell it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

log = logging.getLogger("checkin.server")

#: Seconds a device another process said it holds counts as connected without that
#: process saying so again (each process repeats its list every :data:`REPEAT_SECONDS`):
#: a process that was killed cannot say its devices went away.
REMOTE_SECONDS = 45.0
#: Seconds between two repetitions of the devices this process holds.
REPEAT_SECONDS = 15.0


class Link(Protocol):
    """One device's live connection, as the hub sees it."""

    device_id: str
    session_id: str | None
    #: The device applies its session's admissions (its hello said so).
    wants_admissions: bool

    def changed(self) -> None: ...

    async def close(self, code: int, reason: str) -> None: ...


#: Sends one event to the other server processes; never waits, never fails.
Tell = Callable[[dict[str, Any]], None]


class Hub:
    """Every device connected to this server process, by device id; and those the other
    processes on the same database said they hold."""

    def __init__(self, tell: Tell | None = None, *,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self._links: dict[str, Link] = {}
        #: device id -> when (wall clock, comparable between processes) it attached here.
        self._since: dict[str, float] = {}
        self._wall = wall
        self._tell: Tell = tell or (lambda event: None)
        self._clock = clock
        #: device id -> (the process that said it holds the device, when its word expires).
        self._remote: dict[str, tuple[str | None, float]] = {}

    def __len__(self) -> int:
        return len(self._links)

    def connected(self) -> frozenset[str]:
        """The devices connected to this process or (said recently) to another."""
        now = self._clock()
        return frozenset(self._links) | {d for d, (_, until) in self._remote.items()
                                         if until > now}

    def local(self) -> frozenset[str]:
        """The devices connected to this process."""
        return frozenset(self._links)

    async def attach(self, link: Link, *, replaced_code: int) -> None:
        """Register *link*; an older connection of the same device is closed, here or
        (told) in another process."""
        old = self._links.get(link.device_id)
        self._links[link.device_id] = link
        self._since[link.device_id] = at = self._wall()
        self._remote.pop(link.device_id, None)
        self._tell({"event": "attached", "devices": [link.device_id], "code": replaced_code,
                    "at": at})
        if old is not None:
            log.info("device %s connected again: closing its older connection", link.device_id)
            await old.close(replaced_code, "replaced by a newer connection of this device")

    def detach(self, link: Link) -> None:
        if self._links.get(link.device_id) is link:
            del self._links[link.device_id]
            del self._since[link.device_id]
            self._tell({"event": "detached", "devices": [link.device_id]})

    def changed(self, session_id: str | None = None, *, admissions: bool = False) -> None:
        """Data changed for *session_id* (``None``: for every device, e.g. attendees).

        *admissions*: only who is inside changed, which only the devices that apply
        admissions are sent: an older door is not woken for a change it never gets (with
        hundreds of doors on one session, every admission would make each of them read
        the change stream for nothing)."""
        for link in list(self._links.values()):
            if admissions and not link.wants_admissions:
                continue
            if session_id is None or link.session_id == session_id:
                link.changed()

    async def session_saved(self, session_id: str, *, created: bool, code: int) -> None:
        """A session was saved; *created*: it did not exist, or was deleted and is back.

        A deleted session's doors dropped it, and changes would bring its registrants
        before it (each row at its latest seq): its connected doors are closed with
        *code* (the reassignment code) to reconnect for a snapshot. Otherwise its doors
        are sent the change."""
        if created:
            await self.disconnect_session(session_id, code, f"session {session_id} created again")
        self.changed(session_id)

    async def disconnect_session(self, session_id: str, code: int, reason: str) -> None:
        """Close the connection of every device assigned to *session_id*, in every process."""
        self._tell({"event": "disconnect_session", "session": session_id, "code": code,
                    "reason": reason})
        await self._close_session(session_id, code, reason)

    async def disconnect(self, device_id: str, code: int, reason: str) -> None:
        """Close *device_id*'s connection, if it has one, in whichever process holds it
        (reassigned, revoked)."""
        self._tell({"event": "disconnect", "devices": [device_id], "code": code,
                    "reason": reason})
        await self._close(device_id, code, reason)

    def holding(self) -> dict[str, Any]:
        """The event that repeats which devices this process holds (see :data:`REMOTE_SECONDS`)."""
        return {"event": "holding", "devices": sorted(self._links)}

    async def receive(self, event: dict[str, Any]) -> None:
        """Act on *event*, told by another server process (its ``origin``, when given,
        names that process). Unknown or malformed events are ignored (logged): a newer
        process may tell things this one does not know."""
        kind, devices, origin = event.get("event"), event.get("devices"), event.get("origin")
        try:
            if kind in ("attached", "holding") and isinstance(devices, list):
                until = self._clock() + REMOTE_SECONDS
                for device_id in map(str, devices):
                    if kind == "attached" and self._since.get(device_id, float("inf")) < float(
                            event["at"]):
                        # It connected there after it did here: this link is a stale one.
                        await self._close(device_id, int(event["code"]),
                                          "replaced by a newer connection of this device")
                    self._remote[device_id] = (origin, until)
            elif kind == "detached" and isinstance(devices, list):
                for device_id in map(str, devices):
                    # Only the process that held it: a stale link closed elsewhere says
                    # "detached" after the device connected to a third.
                    if self._remote.get(device_id, (origin,))[0] == origin:
                        self._remote.pop(device_id, None)
            elif kind == "disconnect" and isinstance(devices, list):
                for device_id in devices:
                    await self._close(str(device_id), int(event["code"]), str(event["reason"]))
            elif kind == "disconnect_session":
                await self._close_session(str(event["session"]), int(event["code"]),
                                          str(event["reason"]))
            else:
                log.debug("ignoring an event from another server process: %r", event)
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("ignoring a malformed event from another server process (%s): %r",
                        exc, event)

    async def _close_session(self, session_id: str, code: int, reason: str) -> None:
        for link in [x for x in self._links.values() if x.session_id == session_id]:
            await link.close(code, reason)

    async def _close(self, device_id: str, code: int, reason: str) -> None:
        link = self._links.get(device_id)
        if link is not None:
            await link.close(code, reason)
