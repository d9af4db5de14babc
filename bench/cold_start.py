"""Cold start: from spawning ``voltpilot run`` to its ``voltpilot ready`` line; SIGTERM ends it."""

from __future__ import annotations

import signal
import subprocess
import tempfile
import time

from bench import ROOT, VOLTPILOT, Result, Spec, percentile

SPEC = Spec("cold_start", "cold start → `voltpilot ready` (10 runs)", "max ≤ 2 s")
TARGET_S = 2.0
RUNS = 10


def _command(data_dir: str) -> list[str]:
    return [VOLTPILOT, "run", "--board", "sim", "--status", "off", "--duration", "30",
            "--data-dir", data_dir]


def _once() -> tuple[float | None, int, str]:
    """Seconds to ready (None if it never said so), the exit code, and what it printed."""
    with tempfile.TemporaryDirectory(prefix="voltpilot-bench-") as tmp:
        start = time.perf_counter()
        proc = subprocess.Popen(_command(tmp), cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        ready = None
        seen = []
        try:
            assert proc.stdout is not None
            # --duration bounds the wait: without a ready line the process still ends, at EOF.
            for line in iter(proc.stdout.readline, ""):
                seen.append(line)
                if line.startswith("voltpilot ready"):
                    ready = time.perf_counter() - start
                    break
            proc.send_signal(signal.SIGTERM)
            rest = proc.communicate(timeout=15)[0]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return ready, proc.returncode, "".join(seen) + rest


def run() -> Result:
    times: list[float] = []
    codes: list[int] = []
    problems: list[str] = []
    for i in range(1, RUNS + 1):
        ready, code, output = _once()
        codes.append(code)
        if ready is None:
            problems.append(f"run {i}: no ready line; output: {output.strip()!r}")
        else:
            times.append(ready)
        if code != 0:
            problems.append(f"run {i}: exit code {code} after SIGTERM; output: "
                            f"{output.strip()!r}")
    notes = [*problems, "each run uses a fresh data directory; SIGTERM right after ready",
             "command: " + " ".join(_command("<tmp>"))]
    if not times:
        return Result(SPEC, "error: never ready", False, notes=notes)
    p50, top = percentile(times, 50), max(times)
    met = top <= TARGET_S and not problems and len(times) == RUNS
    return Result(SPEC, f"p50 {p50:.3f} s, max {top:.3f} s; exit 0 after SIGTERM: "
                  f"{codes.count(0)}/{RUNS}", met, {
                      "runs_s": times, "p50_s": p50, "max_s": top, "target_s": TARGET_S,
                      "exit_codes": codes}, notes)
