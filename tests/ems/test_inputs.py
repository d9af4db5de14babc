"""Input health: a reading is used only while it is younger than its timeout; a fault or
silence puts the input into its declared fail-safe, counted and with a reason."""

from __future__ import annotations

import math

from ems.inputs import FailSafe, Health, InputSpec, InputState, assess, record
from ems.model import Reading, Role

SPEC = InputSpec("grid", Role.GRID, timeout_s=10.0, fail_safe=FailSafe.WORST_CASE)


def test_missing_until_the_first_reading() -> None:
    _, status, usable = assess(SPEC, InputState(), 100.0)
    assert usable is None and status.health is Health.MISSING
    assert status.fail_safe is FailSafe.WORST_CASE
    assert "no reading yet" in status.reason() and "worst_case" in status.reason()


def test_fresh_then_stale_never_last_value_forever() -> None:
    state = record(InputState(), Reading(100.0, power_w=1500.0), 100.0)
    state, status, usable = assess(SPEC, state, 105.0)
    assert usable is not None and usable.power_w == 1500.0 and status.ok
    state, status, usable = assess(SPEC, state, 110.5)
    assert usable is None and status.health is Health.STALE and status.since == 110.5
    assert "no reading for 10 s" in status.reason()
    # It stays stale (and keeps its since) until a new reading arrives.
    state, status, _ = assess(SPEC, state, 200.0)
    assert status.health is Health.STALE and status.since == 110.5
    state = record(state, Reading(201.0, power_w=10.0), 201.0)
    _, status, usable = assess(SPEC, state, 202.0)
    assert status.ok and usable is not None and usable.power_w == 10.0


def test_the_age_counts_from_when_the_sample_was_taken() -> None:
    state = record(InputState(), Reading(90.0, power_w=1.0), 100.0)
    _, status, usable = assess(SPEC, state, 100.5)
    assert usable is None and status.health is Health.STALE


def test_faults_are_counted_and_non_finite_values_rejected() -> None:
    state = record(InputState(), None, 1.0, "timeout")
    state = record(state, Reading(2.0, power_w=math.nan), 2.0)
    state = record(state, Reading(3.0, currents_a=(1.0, math.inf, 0.0)), 3.0)
    _, status, usable = assess(SPEC, state, 3.0)
    assert usable is None and status.health is Health.INVALID and status.faults == 3
    assert "invalid answers (non-finite value)" in status.reason()


def test_one_bad_answer_does_not_discard_a_fresh_reading() -> None:
    state = record(InputState(), Reading(100.0, power_w=5.0), 100.0)
    state = record(state, None, 101.0, "timeout")
    _, status, usable = assess(SPEC, state, 102.0)
    assert status.ok and usable is not None and status.faults == 1
    _, status, usable = assess(SPEC, state, 111.0)
    assert usable is None and status.health is Health.STALE
