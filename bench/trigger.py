"""The edge source of the latency benchmarks: a separate process that writes edges to a pipe.

The benchmark runs this file with its own interpreter (``started``). For every ``ready`` line on
its stdin the process sleeps a random pause, takes t0 on CLOCK_MONOTONIC and writes t0 as a line
to its stdout. The benchmark watches that pipe with ``loop.add_reader``, exactly as a GPIO edge
fd (gpiod line events) would be watched on a real board, and has to wait for its busy loop like
such an edge does. t0 is taken here, in a process with a GIL of its own, so the time until the
benchmark notices the edge is part of the measured latency.

CLOCK_MONOTONIC is one clock for the whole machine, so t0 from here and the times the benchmark
takes with ``now_ns`` can be subtracted.

The process ends at EOF on stdin (the benchmark closed the pipe or is gone), when its parent is
no longer the benchmark, or when the write fails. It ignores SIGINT: a Ctrl-C in the terminal is
for the benchmark, which then closes the pipe.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import IO

STOP_TIMEOUT_S = 2.0     # how long the process may take to end once its stdin is closed
READY = b"ready\n"


def now_ns() -> int:
    """CLOCK_MONOTONIC in nanoseconds, the clock both processes use."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


class Trigger:
    """The benchmark's end of the trigger process's pipes."""

    def __init__(self, pid: int, stdin: IO[bytes], edges: IO[bytes]) -> None:
        self.pid = pid
        self._stdin = stdin
        self.fd = edges.fileno()  # watch it with loop.add_reader: it is the "edge" fd
        self._partial = b""

    def ready(self) -> None:
        """Let the process write the next edge (after its random pause)."""
        self._stdin.write(READY)

    def read_t0s(self) -> list[int]:
        """The t0 of every edge that arrived (call when the fd is readable); EOF raises."""
        data = os.read(self.fd, 4096)
        if not data:
            raise RuntimeError("the trigger process ended early")
        *lines, self._partial = (self._partial + data).split(b"\n")
        return [int(line) for line in lines]


@contextlib.contextmanager
def started(seed: int, gap_s: tuple[float, float]) -> Iterator[Trigger]:
    """Run the trigger process, and end it on the way out."""
    low, high = gap_s
    proc = subprocess.Popen(
        [sys.executable, "-I", os.path.abspath(__file__), str(os.getpid()), str(seed),
         repr(low), repr(high)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
    try:
        assert proc.stdin is not None and proc.stdout is not None
        os.set_blocking(proc.stdout.fileno(), False)
        yield Trigger(proc.pid, proc.stdin, proc.stdout)
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """End the process: EOF on its stdin, then wait; kill it if it does not go in time.

    This blocks the loop for at most a pause of the process plus ``STOP_TIMEOUT_S``, and does
    not await, so a second cancellation cannot leave the process behind.
    """
    if proc.stdin is not None:
        with contextlib.suppress(OSError):
            proc.stdin.close()
    try:
        proc.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# ---- the trigger process -----------------------------------------------------------------


def main(argv: list[str]) -> int:
    bench_pid, seed, low, high = int(argv[0]), int(argv[1]), float(argv[2]), float(argv[3])
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    rng = random.Random(seed)
    while sys.stdin.buffer.readline() == READY:
        time.sleep(rng.uniform(low, high))
        if os.getppid() != bench_pid:  # the benchmark is gone; its pid may be someone else's
            return 0
        t0 = now_ns()
        try:
            os.write(sys.stdout.fileno(), b"%d\n" % t0)
        except OSError:  # the benchmark ended meanwhile
            return 0
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
