"""EMS meter polling cost: 10 Modbus TCP meters read every second by ``ModbusMeter``.

The meters are pymodbus servers in a separate process (``python -m bench.ems_meter_poll
--serve N``), serving the shipped device maps, so only the poller's CPU is measured: user +
system time of this process (``resource.getrusage``) over the wall time of the polling, after
one warm-up round that opens the connections. Each round polls all meters concurrently, as the
energy manager does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import cast

from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from bench import ROOT, Result, Spec, ms, percentile
from ems.meters.decode import Quantity
from ems.meters.devicemap import Table, load_map
from ems.meters.modbus import Links, MeterFault, MeterSpec, ModbusMeter

SPEC = Spec("ems_meter_poll", "EMS: 10 Modbus TCP meters polled every 1 s (poller CPU)",
            "≤ 5 % of one core")
TARGET_PCT = 5.0
METERS = 10
PERIOD_S = 1.0
DURATION_S = 20.0
DEVICES = ("sdm630", "sdm72v2", "sdm120", "abb_b23", "em24")   # round-robin over the meters
VALUES = {
    Quantity.POWER: 4321.5, Quantity.CURRENT_L1: 6.25, Quantity.CURRENT_L2: 6.5,
    Quantity.CURRENT_L3: 6.75, Quantity.VOLTAGE_L1: 230.0, Quantity.VOLTAGE_L2: 231.0,
    Quantity.VOLTAGE_L3: 229.0, Quantity.IMPORT_ENERGY: 1_234_500.0,
    Quantity.EXPORT_ENERGY: 234_500.0, Quantity.FREQUENCY: 50.0,
}


def _device(name: str) -> SimDevice:
    """A pymodbus device holding ``VALUES`` as the named map lays them out."""
    device_map = load_map(name)
    cells: dict[Table, dict[int, int]] = {t: {} for t in Table}
    for block in device_map.blocks:
        cells[block.table].update(dict.fromkeys(range(block.address,
                                                      block.address + block.count), 0))
    for table, image in device_map.image(VALUES).items():
        cells[table].update(image)

    def runs(table: Table) -> list[SimData]:
        regs = cells[table]
        if not regs:   # pymodbus wants a register in every table; nobody reads this one
            return [SimData(65534, values=[0], datatype=DataType.REGISTERS)]
        spans: list[list[int]] = []   # [start, word, word, ...]
        for a in sorted(regs):
            if spans and a == spans[-1][0] + len(spans[-1]) - 1:
                spans[-1].append(regs[a])
            else:
                spans.append([a, regs[a]])
        return [SimData(span[0], values=span[1:], datatype=DataType.REGISTERS)
                for span in spans]

    bits = [SimData(0, values=False, datatype=DataType.BITS)]
    return SimDevice(0, simdata=([*bits], [*bits], runs(Table.HOLDING), runs(Table.INPUT)))


async def _serve(count: int) -> None:
    """The meters' process: ``count`` servers on free ports, printed as JSON; it ends when
    its stdin closes."""
    servers = []
    ports = []
    for i in range(count):
        server = ModbusTcpServer(_device(DEVICES[i % len(DEVICES)]), address=("127.0.0.1", 0))
        await server.serve_forever(background=True)
        servers.append(server)
        ports.append(cast(asyncio.Server, server.transport).sockets[0].getsockname()[1])
    print(json.dumps({"ports": ports}), flush=True)
    await asyncio.to_thread(sys.stdin.read)
    for server in servers:
        server.close()


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class _Measured:
    cpu_s: float
    wall_s: float
    rounds_ms: list[float]
    readings: int
    faults: dict[str, int]


async def _poll(ports: list[int]) -> _Measured:
    links = Links()
    meters = [ModbusMeter(MeterSpec(f"m{i}", DEVICES[i % len(DEVICES)], host="127.0.0.1",
                                    port=port, timeout_s=0.5), links=links)
              for i, port in enumerate(ports)]
    loop = asyncio.get_running_loop()
    await asyncio.gather(*(m.poll(loop.time()) for m in meters))   # warm-up: connect
    rounds: list[float] = []
    faults: Counter[MeterFault] = Counter()
    readings = 0
    cpu0, wall0 = _cpu_s(), time.monotonic()
    next_at = loop.time()
    while time.monotonic() - wall0 < DURATION_S:
        start = time.perf_counter()
        results = await asyncio.gather(*(m.poll(loop.time()) for m in meters))
        rounds.append((time.perf_counter() - start) * 1000.0)
        readings += sum(r.reading is not None for r in results)
        faults.update(r.fault for r in results if r.fault is not None)
        next_at += PERIOD_S
        await asyncio.sleep(max(0.0, next_at - loop.time()))
    cpu, wall = _cpu_s() - cpu0, time.monotonic() - wall0
    await links.close()
    return _Measured(cpu, wall, rounds, readings, {f.value: n for f, n in faults.items()})


def run() -> Result:
    proc = subprocess.Popen([sys.executable, "-m", "bench.ems_meter_poll", "--serve",
                             str(METERS)], cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdin is not None and proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            return Result(SPEC, "error: the meter servers did not start", False)
        m = asyncio.run(_poll(json.loads(line)["ports"]))
        proc.stdin.close()
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    pct = 100.0 * m.cpu_s / m.wall_s
    expected = len(m.rounds_ms) * METERS
    p50, p99 = percentile(m.rounds_ms, 50), percentile(m.rounds_ms, 99)
    met = pct <= TARGET_PCT and m.readings == expected
    shown = f"{pct:.2f} % of one core; a round of {METERS} polls p50 {ms(p50)}, p99 {ms(p99)}"
    notes = [f"{len(m.rounds_ms)} rounds in {m.wall_s:.1f} s, {m.readings}/{expected} "
             f"readings, faults {m.faults or 'none'}; CPU {m.cpu_s:.3f} s user+system of the "
             f"poller process; devices {', '.join(DEVICES)} round-robin, servers in a "
             "separate process"]
    return Result(SPEC, shown, met, {
        "cpu_pct_of_one_core": pct, "cpu_s": m.cpu_s, "wall_s": m.wall_s,
        "rounds": len(m.rounds_ms), "readings": m.readings, "round_p50_ms": p50,
        "round_p99_ms": p99, "faults": m.faults, "target_pct": TARGET_PCT}, notes)


def main() -> int:
    p = argparse.ArgumentParser(description="the meter servers of the ems_meter_poll bench")
    p.add_argument("--serve", type=int, required=True, metavar="N")
    asyncio.run(_serve(p.parse_args().serve))
    return 0


if __name__ == "__main__":
    sys.exit(main())
