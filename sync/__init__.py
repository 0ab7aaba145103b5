"""Sync between a door's store and the central server (see docs/protocol.md)."""
