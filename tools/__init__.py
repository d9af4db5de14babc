"""Tools around the controller: the plant CLI (evsim); later the factory jig and the HIL runner.
Tools import everything; nothing imports tools."""
