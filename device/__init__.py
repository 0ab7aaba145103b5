"""The door process: camera, decoder, Validate Registrants decision, LED and buzzer.

The door never touches the network. It decides against the registrant cache in
the device's SQLite store (kept fresh by the sync daemon) and records every
decision there before it signals it.
"""
