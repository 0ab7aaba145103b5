"""checkin: a check-in appliance for conference session doors (the command, on top)."""

from core import __version__

__all__ = ["__version__"]
