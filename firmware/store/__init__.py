"""SQLite persistence of sessions, events and latched faults."""
