"""What both ends of a sync connection share: their queues of frames and actions.

:class:`~sync.device_end.DeviceEnd` and :class:`~sync.server_end.ServerEnd` are
sans-I/O state machines: they take frames (and, where a rule needs it, the
time) as arguments, and leave what they produce in two queues for their I/O
layer to take, in order: the encoded frames to send and the actions to carry
out.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from sync.messages import Message, encode

ActionT = TypeVar("ActionT")


class ProtocolEnd(Generic[ActionT]):
    """One end of a connection: its outgoing frames and its actions, each taken once."""

    def __init__(self) -> None:
        self._outgoing: list[str] = []
        self._actions: list[ActionT] = []

    def data_to_send(self) -> list[str]:
        """Frames to send, in order; each is returned once."""
        out, self._outgoing = self._outgoing, []
        return out

    def actions(self) -> list[ActionT]:
        """Actions to carry out, in order; each is returned once."""
        out, self._actions = self._actions, []
        return out

    def _send(self, message: Message) -> None:
        self._outgoing.append(encode(message))
