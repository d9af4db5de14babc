"""Dry-contact edge → new PWM duty applied, through the contact shell and the real connector.

Built like bench/latency.py (and reusing its probe, load and trigger): the controller runs on the
sim board on wall-clock time with a JSON load on the loop; a separate trigger process takes t0 on
CLOCK_MONOTONIC and writes to a pipe watched with ``loop.add_reader``, as a GPIO edge fd would be;
the reader flips the §14a contact on the plant (whose inputs role calls the contact shell back at
once). The latency runs to the connector's ``set_duty`` with the new duty, so it contains the
board's debounce (the default 50 ms), the timer that ends it, and the wait for the busy loop.

The §14a contact alternates: closing dims to 4.2 kW, opening lifts the dimming. The board used
here sets ``release_delay_max_s = 0`` so that both edges answer at once (with the default random
delay of up to 300 s an opening edge has, by design, no quick answer to time).
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from functools import partial

from bench import Result, Spec
from bench.latency import Event, Rig, _nothing, _result, measure
from firmware.core.duty import duty_for_current
from firmware.evse.contacts import ContactInputs
from firmware.evse.limit_port import LimitPort
from hal.board import Board, ContactInput, Contacts, load_board
from hal.clock import Clock
from hal.hardware import Hardware

SPEC = Spec("contact", "dry-contact edge → PWM duty applied (JSON load)", "p99 ≤ 100 ms")
TARGET_MS = 100.0
INPUT = "in1"


def _board() -> Board:
    board = load_board("sim")
    return replace(board, inputs={INPUT: ContactInput(meaning="dim_14a")},
                   contacts=Contacts(release_delay_max_s=0.0))


def _edge(board: Board, rig: Rig, i: int) -> Event:
    """Event ``i``: close the contact (dim) on even events, open it (full current) on odd."""
    closed = i % 2 == 0
    amps = (board.contacts.dim_14a_w / (3 * board.ratings.nominal_voltage_v) if closed
            else min(board.ratings.max_current_a, board.sim.cable_a))
    return Event(duty_for_current(amps), partial(rig.plant.set_input, INPUT, closed))


def run(events: int) -> Result:
    board = _board()

    def shell(hw: Hardware, port: LimitPort, clock: Clock) -> ContactInputs:
        assert hw.inputs is not None
        return ContactInputs(board, hw.inputs, port, clock.now, seed=events)

    rig, load = asyncio.run(measure(events, partial(_edge, board), _nothing, board, shell))
    result = _result(SPEC, TARGET_MS, events, rig, load)
    result.notes.append(f"includes the default debounce of "
                        f"{ContactInput().debounce_s * 1e3:g} ms; release delay set to 0 so "
                        "opening edges answer at once")
    return result
