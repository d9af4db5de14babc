"""Sharing the site budget (``ems.balance.allocate``): wall-clock time of one call for a large
site, 50 connectors on 3 phases, over many random budgets.

The connectors are a seeded mix of 3-phase cars and single-phase cars on every phase, with
random minimum, maximum and priority. Each call gets a new random budget (per-phase amps, half
of them with a contracted-power cap, half with a 20 A unbalance limit), some cars report a draw
below what they may take, and each call's suspension flags go into the next one, as they do in
the control cycle. Every result is checked against the budget outside the timed part.

The target is on wall-clock time; the thread's CPU time per call is reported next to it, so a
tail that comes from other processes taking the CPU shows as such.
"""

from __future__ import annotations

import math
import os
import random
import time

from bench import Result, Spec, ms, percentile
from ems.balance import Budget, Demand, Grant, allocate

SPEC = Spec("ems_allocation", "site budget → grants, 50 connectors (5000 budgets)",
            "p99 ≤ 5 ms")
TARGET_MS = 5.0
CONNECTORS = 50
CALLS = 5000
WARMUP = 50
SEED = 61851


def _connectors(rng: random.Random) -> list[Demand]:
    out = []
    for i in range(CONNECTORS):
        phases = (0, 1, 2) if rng.random() < 0.6 else (rng.randrange(3),)
        lo = rng.choice([6.0, 6.0, 6.0, 8.0, 10.0])
        out.append(Demand(f"cp{i:02d}", phases, lo, rng.choice([10.0, 16.0, 16.0, 20.0, 32.0]),
                          priority=rng.choice([0, 0, 1, 2])))
    return out


def _budget(rng: random.Random) -> Budget:
    # From a nearly empty to a comfortably large connection, the phases a little uneven.
    base = rng.uniform(20.0, 500.0)
    phase_a = (base * rng.uniform(0.8, 1.0), base * rng.uniform(0.8, 1.0),
               base * rng.uniform(0.8, 1.0))
    total_w = rng.uniform(20_000.0, 300_000.0) if rng.random() < 0.5 else None
    unbalance_a = 20.0 if rng.random() < 0.5 else None
    return Budget(phase_a, total_w, unbalance_a)


def _demands(rng: random.Random, cars: list[Demand], last: dict[str, Grant]) -> list[Demand]:
    out = []
    for car in cars:
        g = last.get(car.cp_id)
        drawing = None
        if g is not None and not g.suspended and rng.random() < 0.3:
            draw = g.amps * rng.uniform(0.3, 1.0)
            drawing = (draw if 0 in car.phases else 0.0, draw if 1 in car.phases else 0.0,
                       draw if 2 in car.phases else 0.0)
        out.append(Demand(car.cp_id, car.phases, car.min_a, car.max_a, car.priority,
                          suspended=g is not None and g.suspended, drawing_a=drawing))
    return out


def _violations(budget: Budget, demands: list[Demand], grants: dict[str, Grant]) -> list[str]:
    loads = [math.fsum(grants[d.cp_id].amps for d in demands if p in d.phases)
             for p in range(3)]
    out = [f"L{p + 1}: {loads[p]:.3f} A > {budget.phase_a[p]:.3f} A"
           for p in range(3) if loads[p] > budget.phase_a[p]]
    if budget.unbalance_a is not None and max(loads) - min(loads) > budget.unbalance_a + 1e-9:
        out.append(f"unbalance {max(loads) - min(loads):.3f} A")
    if budget.total_w is not None:
        watts = math.fsum(grants[d.cp_id].amps * len(d.phases) * budget.voltage_v
                          for d in demands)
        if watts > budget.total_w * (1 + 1e-12):
            out.append(f"power {watts:.0f} W > {budget.total_w:.0f} W")
    for d in demands:
        g = grants[d.cp_id]
        if not (g.suspended and g.amps == 0.0) and not d.min_a <= g.amps <= d.max_a:
            out.append(f"{d.cp_id}: {g.amps} A outside [{d.min_a}, {d.max_a}]")
    return out


def run() -> Result:
    rng = random.Random(SEED)
    cars = _connectors(rng)
    last: dict[str, Grant] = {}
    times_ms: list[float] = []
    cpu_ms: list[float] = []
    load_before = os.getloadavg()[0]
    problems: list[str] = []
    suspended = 0
    for i in range(WARMUP + CALLS):
        budget = _budget(rng)
        demands = _demands(rng, cars, last)
        t0, c0 = time.perf_counter_ns(), time.thread_time_ns()
        last = allocate(budget, demands)
        c1, t1 = time.thread_time_ns(), time.perf_counter_ns()
        if i < WARMUP:
            continue
        times_ms.append((t1 - t0) / 1e6)
        cpu_ms.append((c1 - c0) / 1e6)
        suspended += sum(g.suspended for g in last.values())
        problems += [f"call {i}: {v}" for v in _violations(budget, demands, last)]
    p50, p99, top = percentile(times_ms, 50), percentile(times_ms, 99), max(times_ms)
    cpu50, cpu99, cpu_top = percentile(cpu_ms, 50), percentile(cpu_ms, 99), max(cpu_ms)
    three = sum(len(c.phases) == 3 for c in cars)
    notes = [f"{CONNECTORS} connectors ({three} 3-phase, {CONNECTORS - three} single-phase), "
             f"seed {SEED}; {CALLS} timed calls after {WARMUP} warm-up calls; "
             f"{suspended / CALLS:.1f} cars suspended per call on average",
             f"thread CPU time per call: p50 {ms(cpu50)}, p99 {ms(cpu99)}, max {ms(cpu_top)} "
             f"(load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after, "
             f"{os.cpu_count()} CPUs)",
             f"every result checked against its budget: {len(problems)} violations"]
    notes += problems[:5]
    return Result(SPEC, f"p50 {ms(p50)}, p99 {ms(p99)}, max {ms(top)}",
                  p99 <= TARGET_MS and not problems, {
                      "calls": CALLS, "connectors": CONNECTORS, "p50_ms": p50, "p99_ms": p99,
                      "max_ms": top, "cpu_p50_ms": cpu50, "cpu_p99_ms": cpu99,
                      "cpu_max_ms": cpu_top, "target_p99_ms": TARGET_MS,
                      "violations": len(problems),
                      "suspended_mean": suspended / CALLS}, notes)
