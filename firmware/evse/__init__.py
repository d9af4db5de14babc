"""One connector's session lifecycle: drives the board through the core."""
