"""``voltpilot``: run the charge controller, list boards, read session records, reset faults.

Exit codes: 0 done, 1 failed while running, 2 bad input (board file, scenario, options) —
in which case nothing was started.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from ems import cli as ems_cli
from firmware.app import EXIT_RESTART, RunError, RunOptions, data_dir_lock, run
from firmware.core.reasons import FAULT_RULES, FaultCode
from firmware.scenario import MAX_AT_S, ScenarioError
from firmware.store.db import Store, StoreError
from hal.board import BoardError, known_boards, load_board

DATA_DIR_ENV = "VOLTPILOT_DATA"


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not 0 < value <= MAX_AT_S:
        raise argparse.ArgumentTypeError(f"expected seconds in (0, {MAX_AT_S:g}], got {text!r}")
    return value


def parser() -> argparse.ArgumentParser:
    default_data = Path(os.environ.get(DATA_DIR_ENV, "var"))
    p = argparse.ArgumentParser(prog="voltpilot", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run the charge controller on a board")
    r.add_argument("--board", required=True, help="board name (a folder under boards/) or the "
                   "path of a board.toml")
    r.add_argument("--virtual-time", action="store_true",
                   help="run on virtual time, as fast as the CPU allows (sim board)")
    r.add_argument("--scenario", type=Path, help="TOML file of timed plant/controller actions")
    r.add_argument("--duration", type=_positive, help="stop after this many clock seconds")
    r.add_argument("--data-dir", type=Path, default=default_data,
                   help=f"records, logs and the plant socket (default {default_data}, "
                   f"or ${DATA_DIR_ENV})")
    r.add_argument("--status", choices=("auto", "tty", "lines", "off"), default="auto",
                   help="live status: rewritten line (tty), one line per interval, or off")
    r.add_argument("--status-every", type=_positive,
                   help="clock seconds between status updates (default 1; 300 in virtual time)")
    r.add_argument("--log", help="structured log file, '-' for stderr "
                   "(default <data-dir>/voltpilot.log)")
    r.add_argument("--ocpp", type=Path, help="OCPP settings file (docs/ocpp.md): connect to "
                   "a CSMS")
    r.add_argument("--ems", type=Path, help="site file (docs/ems.md): run the local energy "
                   "manager in-process for this charge point")
    r.add_argument("--ems-link", type=Path, help="link file (docs/ems-mqtt.md): follow a "
                   "stand-alone `voltpilot ems` over MQTT")

    sub.add_parser("boards", help="list the boards that exist")

    s = sub.add_parser("sessions", help="print the recorded sessions")
    s.add_argument("--data-dir", type=Path, default=default_data)
    s.add_argument("--limit", type=int, default=20)

    f = sub.add_parser("faults", help="show latched faults; --reset clears them (only while "
                       "the controller is stopped)")
    f.add_argument("--data-dir", type=Path, default=default_data)
    f.add_argument("--reset", nargs="*", metavar="CODE", help="clear these (all if none named)")
    ems_cli.add_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(ems_cli.normalise(list(sys.argv[1:] if argv is None else argv)))
    if args.command == "ems":
        return ems_cli.main(args)
    try:
        if args.command == "run":
            board = load_board(args.board)
            code = run(board, RunOptions(
                virtual_time=args.virtual_time, scenario=args.scenario, duration=args.duration,
                data_dir=args.data_dir, status=args.status, status_every=args.status_every,
                log=args.log, ocpp=args.ocpp, ems=args.ems,
                ems_link=args.ems_link))
            if code == EXIT_RESTART:
                # A reset from the CSMS: start again as a fresh process, as a reboot would.
                sys.stdout.flush()
                sys.stderr.flush()
                os.execv(sys.executable, [sys.executable, "-m", "firmware.cli",
                                          *(argv if argv is not None else sys.argv[1:])])
            return code
        if args.command == "boards":
            for name in known_boards():
                print(f"{name}: {load_board(name).description}")
            return 0
        if args.command == "sessions":
            return _sessions(args.data_dir, args.limit)
        return _faults(args.data_dir, args.reset)
    except (BoardError, RunError, ScenarioError, StoreError) as exc:
        print(f"voltpilot: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # only the record commands get here: `run` wraps its own start-up
        print(f"voltpilot: {exc}", file=sys.stderr)
        return 2


def _sessions(data_dir: Path, limit: int) -> int:
    db = data_dir / "voltpilot.db"
    if not db.exists():
        print(f"no records in {data_dir}")
        return 0
    store = Store(db)
    try:
        for rec in store.sessions(limit):
            faults = ",".join(rec.faults) or "-"
            print(f"{rec.id[:8]} c{rec.connector} {rec.started_at} -> {rec.ended_at or 'open'} "
                  f"{rec.energy_wh / 1000:8.3f} kWh  stop={rec.stop_reason or '-'}  "
                  f"wakeups={rec.wakeups}  faults={faults}")
    finally:
        store.close()
    return 0


def _faults(data_dir: Path, reset: list[str] | None) -> int:
    db = data_dir / "voltpilot.db"
    if reset is None:
        if db.exists():  # reading needs no lock: WAL lets a running controller go on writing
            store = Store(db)
            try:
                for code in store.latched(1):
                    why = FAULT_RULES[FaultCode(code)].why if code in _CODES else None
                    print(f"{code}: {why or 'unknown to this voltpilot'}")
            finally:
                store.close()
        return 0
    with data_dir_lock(data_dir):
        store = Store(db)
        try:
            known = _CODES | set(store.latched(1))  # an unknown latched code can be cleared
            for code in reset:
                if code not in known:
                    print(f"voltpilot: unknown fault {code!r}; expected one of "
                          f"{', '.join(sorted(known))}", file=sys.stderr)
                    return 2
            cleared = store.unlatch(1, reset or None)
            print("cleared: " + (", ".join(cleared) or "nothing"))
        finally:
            store.close()
    return 0


_CODES = {f.value for f in FaultCode}


if __name__ == "__main__":
    sys.exit(main())
