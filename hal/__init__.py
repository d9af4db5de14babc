"""Hardware abstraction: role interfaces, board files, backends. Imports nothing of ours."""
