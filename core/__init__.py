"""The foundations every other package stands on, and which stand on nothing of ours.

Input checks (:mod:`core.shapes`), SQLite files and their transactions
(:mod:`core.database`), the clocks (:mod:`core.clock`), the attendee-code rule
and the bound on what a door records (:mod:`core.codes`), and the Validate
Registrants rules shared by the door and the server's audit (:mod:`core.rules`).
Layers, bottom to top: ``core`` -> ``sync`` -> ``device`` | ``server`` ->
``checkin``; see docs/architecture.md.
"""

__version__ = "0.1.0"
