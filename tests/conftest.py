"""Shared test setup: hypothesis profiles and the simulated board."""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from hal.board import Board, load_board

pytest_plugins = ["mqtt_broker"]

# `make test` runs a bounded number of examples; `make soak` runs many more.
settings.register_profile("ci", max_examples=150, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("soak", max_examples=5000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def sim_board(**sections: dict[str, Any]) -> Board:
    """The sim board with some parameters changed: sim_board(timing={"tick_s": 0.5})."""
    board = load_board("sim")
    return replace(board, **{name: replace(getattr(board, name), **values)
                             for name, values in sections.items()})


@pytest.fixture
def board() -> Board:
    return load_board("sim")
