"""The central server: organizer API and the devices' sync endpoint."""
