"""checkin: a check-in appliance for conference session doors."""

__version__ = "0.1.0"
