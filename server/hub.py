"""The connected devices, so that a change on the server reaches their doors at once.

The organizer API tells the :class:`Hub` what changed; the hub tells every
connected link that cares (the devices of that session, or all of them for a
change of attendees). Each link then asks its protocol end for the changes
since what it last sent: pushes, not polls.
"""

from __future__ import annotations

import logging
from typing import Protocol

log = logging.getLogger("checkin.server")


class Link(Protocol):
    """One device's live connection, as the hub sees it."""

    device_id: str
    session_id: str | None
    #: The device applies its session's admissions (its hello said so).
    wants_admissions: bool

    def changed(self) -> None: ...

    async def close(self, code: int, reason: str) -> None: ...


class Hub:
    """Every device connected to this server process, by device id."""

    def __init__(self) -> None:
        self._links: dict[str, Link] = {}

    def __len__(self) -> int:
        return len(self._links)

    def connected(self) -> frozenset[str]:
        return frozenset(self._links)

    async def attach(self, link: Link, *, replaced_code: int) -> None:
        """Register *link*; an older connection of the same device is closed."""
        old = self._links.get(link.device_id)
        self._links[link.device_id] = link
        if old is not None:
            log.info("device %s connected again: closing its older connection", link.device_id)
            await old.close(replaced_code, "replaced by a newer connection of this device")

    def detach(self, link: Link) -> None:
        if self._links.get(link.device_id) is link:
            del self._links[link.device_id]

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
        """Close the connection of every device assigned to *session_id*."""
        for link in [x for x in self._links.values() if x.session_id == session_id]:
            await link.close(code, reason)

    async def disconnect(self, device_id: str, code: int, reason: str) -> None:
        """Close *device_id*'s connection, if it has one (reassigned, revoked)."""
        link = self._links.get(device_id)
        if link is not None:
            await link.close(code, reason)
