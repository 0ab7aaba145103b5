"""The organizers' web pages (issue 12): sign-in, sessions, attendees, registrants, CSV
imports, doors and the attendee's own schedule page, server-rendered with Jinja2."""
