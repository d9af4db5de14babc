"""What the terminal shows: a live status line per connector and a summary per session."""

from __future__ import annotations

from firmware.core.iec61851 import Phase
from firmware.evse.connector import View
from firmware.evse.session import Session
from hal.clock import iso


def status_line(number: int, view: View, now: float) -> str:
    st = view.state
    meter = view.meter
    phases = " ".join(f"{p / 1000:.2f}" for p in meter.power_w) if meter else "-"
    total_kw = meter.total_power_w / 1000 if meter else 0.0
    energy = view.session.energy_wh / 1000 if view.session else 0.0
    lim = view.limit
    binding = lim.binding
    source = (f"{binding.source.key} ({binding.cls.name.lower()})" if binding else "none")
    why = ""
    if st.phase is Phase.FAULT:
        why = ": " + ",".join(sorted(f.value for f in st.faults))
    elif st.suspend is not None:
        why = f" ({st.suspend.value})"
    return (f"{iso(now)[11:19]}Z #{number} {view.iec:<3} {st.phase.value}{why} | "
            f"offer {st.offered_a:4.1f} A | {total_kw:5.2f} kW [{phases}] | "
            f"{energy:7.3f} kWh | limit {lim.amps:4.1f} A by {source}")


def summary(s: Session) -> str:
    ended = s.ended_at if s.ended_at is not None else s.started_at
    faults = ", ".join(f.value for f in s.faults) or "none"
    stop = s.stop_reason.value if s.stop_reason else "-"
    return (f"session {s.id[:8]} on connector {s.connector} finished: {stop}\n"
            f"  {iso(s.started_at)} -> {iso(ended)} ({ended - s.started_at:.0f} s, "
            f"{s.charging_s:.0f} s charging)\n"
            f"  energy {s.energy_wh / 1000:.3f} kWh, peak {s.max_power_w / 1000:.2f} kW, "
            f"wake-ups {s.wakeups}, faults {faults}")
