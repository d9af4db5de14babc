"""Memory of the running controller: VmRSS while a car charges, VmHWM just before it exits."""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path

from bench import ROOT, SCENARIOS, VOLTPILOT, Result, Spec
from tools.evsim import request

SPEC = Spec("rss", "RSS of the running controller (car charging)", "≤ 60 MB")
TARGET_MB = 60.0
SAMPLE_AT_S = 8.0   # after the spawn; the car is plugged in at 1 s and charges from ~3 s
DURATION_S = 12


def _status_kb(pid: int, key: str) -> int | None:
    """A ``Vm*`` line of /proc/<pid>/status in kB; None once the process is gone (a zombie has
    no memory lines)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text(encoding="ascii")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return None


def _phase(sock: Path) -> str:
    """The connector's phase, asked over the plant control socket, to prove the car charges."""
    answer = request(sock, {"cmd": "status"}, timeout=5.0)
    return str(answer["status"]["phase"]) if answer.get("ok") else f"error: {answer}"


def _command(data_dir: str) -> list[str]:
    return [VOLTPILOT, "run", "--board", "sim", "--scenario", str(SCENARIOS / "charging.toml"),
            "--duration", str(DURATION_S), "--status", "off", "--data-dir", data_dir]


def _mb(kb: int) -> float:
    return kb * 1024 / 1e6


def run() -> Result:
    with tempfile.TemporaryDirectory(prefix="voltpilot-bench-") as tmp:
        start = time.monotonic()
        proc = subprocess.Popen(_command(tmp), cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        try:
            time.sleep(max(0.0, start + SAMPLE_AT_S - time.monotonic()))
            rss_kb = _status_kb(proc.pid, "VmRSS")
            phase = _phase(Path(tmp) / "plant.sock")
            hwm_kb = None
            while proc.poll() is None:
                hwm_kb = _status_kb(proc.pid, "VmHWM") or hwm_kb
                time.sleep(0.02)
            output = proc.communicate(timeout=10)[0]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if rss_kb is None or hwm_kb is None:
        return Result(SPEC, "error: the controller was gone before it could be measured",
                      False, notes=[output.strip()])
    rss, hwm = _mb(rss_kb), _mb(hwm_kb)
    met = max(rss, hwm) <= TARGET_MB and phase == "charging" and proc.returncode == 0
    notes = [f"VmRSS read {SAMPLE_AT_S:g} s after the spawn (connector phase then: {phase}); "
             "VmHWM is the last value read before the process exited; MB = 10^6 bytes",
             f"exit code {proc.returncode}", "command: " + " ".join(_command("<tmp>"))]
    shown = f"VmRSS {rss:.1f} MB at {SAMPLE_AT_S:g} s ({phase}), VmHWM {hwm:.1f} MB"
    return Result(SPEC, shown, met, {
        "vmrss_kb": rss_kb, "vmhwm_kb": hwm_kb, "vmrss_mb": rss, "vmhwm_mb": hwm,
        "phase_at_sample": phase, "exit_code": proc.returncode, "target_mb": TARGET_MB,
    }, notes)
