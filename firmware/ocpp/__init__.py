"""OCPP 2.1 / 2.0.1 charging station: the `ocpp` library frames, validates and routes messages;
everything above that (device model, queueing, schedules, security) lives here."""
