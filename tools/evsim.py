"""``evsim``: drive the simulated plant of a running controller from the command line.

    evsim state
    evsim plug profile=sleepy_3p
    evsim plug profile=compact_3p 'ev={"soc": 0.9}'
    evsim fault name=rcd_trip
    evsim limit source=grid_14a amps=6
    evsim '{"cmd": "grid", "voltage_v": [230, 0, 230]}'

Arguments are key=value pairs; a value is read as JSON when it parses (numbers, true/false,
lists, objects), else taken as a string. The answer is printed as JSON; the exit code is 0 when
the plant accepted the command, 1 when it refused it, 2 when it could not be reached.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DEFAULT_SOCKET = Path(os.environ.get("VOLTPILOT_DATA", "var")) / "plant.sock"


def request(path: Path, payload: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """Send one command and return the decoded answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(json.dumps(payload).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
    answer: dict[str, Any] = json.loads(buf)
    return answer


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def build(words: Sequence[str]) -> dict[str, Any]:
    if len(words) == 1 and words[0].lstrip().startswith("{"):
        payload: dict[str, Any] = json.loads(words[0])
        return payload
    out: dict[str, Any] = {"cmd": words[0]}
    for word in words[1:]:
        key, sep, value = word.partition("=")
        if not sep:
            raise ValueError(f"expected key=value, got {word!r}")
        out[key] = _value(value)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="evsim", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:]))
    p.add_argument("--socket", type=Path, default=DEFAULT_SOCKET,
                   help=f"plant control socket (default {DEFAULT_SOCKET})")
    p.add_argument("words", nargs="+", help="command and key=value arguments, or one JSON "
                   "object")
    args = p.parse_args(argv)
    try:
        payload = build(args.words)
    except ValueError as exc:
        print(f"evsim: {exc}", file=sys.stderr)
        return 2
    try:
        answer = request(args.socket, payload)
    except OSError as exc:
        print(f"evsim: cannot reach the plant at {args.socket}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(answer, indent=2))
    return 0 if answer.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
