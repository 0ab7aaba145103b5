"""systemd's notify protocol for the door: moved to :mod:`core.notify` (the sync daemon
and the server use it too); kept so ``from device.notify import notify`` still works."""

from __future__ import annotations

from core.notify import notify

__all__ = ["notify"]
