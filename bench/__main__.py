"""``python -m bench``: run the benchmarks, print a Markdown table, optionally write JSON.

Exit code 0 when every benchmark that ran met its target, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from bench import (
    Result,
    Spec,
    cold_start,
    contact_latency,
    dim_power,
    ems_allocation,
    ems_capture,
    ems_day,
    ems_meter_poll,
    ems_oracle,
    latency,
    ocpp_latency,
    ocpp_memory,
    ocpp_replay,
    rss,
    virtual_session,
)

Run = Callable[[argparse.Namespace], Result]
BENCHMARKS: list[tuple[Spec, Run]] = [
    (latency.CONTACTOR, lambda a: latency.contactor_latency(a.events)),
    (latency.LIMIT, lambda a: latency.limit_latency(a.events)),
    (contact_latency.SPEC, lambda a: contact_latency.run(a.events)),
    (dim_power.SPEC, lambda a: dim_power.run()),
    (rss.SPEC, lambda a: rss.run()),
    (cold_start.SPEC, lambda a: cold_start.run()),
    (virtual_session.SPEC, lambda a: virtual_session.run()),
    (ocpp_latency.SPEC, lambda a: ocpp_latency.run(a.events)),
    (ocpp_replay.SPEC, lambda a: ocpp_replay.run()),
    (ocpp_memory.SPEC, lambda a: ocpp_memory.run()),
    (ems_day.SPEC, lambda a: ems_day.run()),
    (ems_allocation.SPEC, lambda a: ems_allocation.run()),
    (ems_meter_poll.SPEC, lambda a: ems_meter_poll.run()),
    (ems_oracle.SPEC, lambda a: ems_oracle.run()),
    (ems_capture.SPEC, lambda a: ems_capture.run()),
]


def _events(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1 event, got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--events", type=_events, default=1000,
                   help="events per latency benchmark (default 1000; the targets need 1000)")
    p.add_argument("--only", choices=[spec.name for spec, _ in BENCHMARKS],
                   help="run just this benchmark")
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the results here")
    return p


def _command(argv: Sequence[str]) -> str:
    exe = sys.executable
    rel = os.path.relpath(exe)
    return shlex.join([rel if not rel.startswith("..") else exe, "-m", "bench", *argv])


def _table(results: list[Result]) -> str:
    rows = ["| benchmark | result | target | met? |", "|---|---|---|---|"]
    rows += [f"| {r.spec.title} | {r.result} | {r.spec.target} | {'yes' if r.met else 'NO'} |"
             for r in results]
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    command = _command(argv)
    results: list[Result] = []
    for spec, run in BENCHMARKS:
        if args.only and spec.name != args.only:
            continue
        print(f"bench: running {spec.name} ...", file=sys.stderr, flush=True)
        start = time.monotonic()
        try:
            result = run(args)
        except Exception as exc:  # one broken benchmark must not hide the others' results
            traceback.print_exc()
            result = Result(spec, f"error: {exc}", False)
        result.values["bench_wall_s"] = time.monotonic() - start
        results.append(result)

    print(f"## voltpilot benchmarks\n\n{_table(results)}\n\nCommand: `{command}`\n")
    print(f"Machine: {platform.platform()}, Python {platform.python_version()}, "
          f"{os.cpu_count()} CPUs\n")
    for r in results:
        for note in r.notes:
            print(f"- {r.spec.name}: {note}")
    if args.json is not None:
        args.json.write_text(json.dumps({
            "command": command, "platform": platform.platform(),
            "python": platform.python_version(), "cpus": os.cpu_count(),
            "results": [{"name": r.spec.name, "benchmark": r.spec.title, "result": r.result,
                         "target": r.spec.target, "met": r.met, "values": r.values,
                         "notes": r.notes} for r in results],
        }, indent=2) + "\n", encoding="utf-8")
    return 0 if all(r.met for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
