"""What the energy manager achieved: per UTC day and per charging session, from the powers of
each controller or simulation step.

A step ``add(at, dt, ...)`` says the powers held over ``[at, at + dt)`` (site sign convention,
see ``ems.model``). Steps are cut at UTC midnight and at the 15-minute clock grid, so a day's
totals and the demand peak are exact however the steps fall.

Definitions (the oracle, ``ems.oracle``, uses the same ones):

- **PV into the EVs** (``pv_to_ev_w``): at each step PV covers the house first, then the charge
  points, then the home battery, then export. The charge points together get
  ``min(EV, max(0, PV - house))``, shared among them in proportion to their power. Energy from
  the home battery is not PV here, even if the sun charged it (a battery charged from the grid
  at night would otherwise count as green). House first is what "PV surplus" means to a user and
  what evcc reports as solar share; it is also linear in the EV power, so the oracle's linear
  programme maximises exactly this number (a split in proportion to all loads would not be).
- **PV share** of EV energy: PV into the EVs / EV energy.
- **EV grid energy**: what the EVs draw beyond their PV part, split between grid import and
  battery discharge in proportion to the two; a session's **cost** is its grid energy × price.
- **Self-consumption**: the share of PV used on site, ``(PV - min(PV, export)) / PV``.
- **Peak**: the highest mean grid import over a clock-aligned 15-minute interval (import
  energy in the interval / 15 min), the demand a utility bills.
- **Cost** of a day: grid import × price. Import in a step without a price is counted apart
  (``unpriced_import_wh``) rather than guessed.

Bad steps (NaN, non-positive or over-long ``dt``, time running backwards) are left out and
counted by ``KpiFault``; the report shows the counts.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

from ems.config_error import ConfigError
from ems.tariff import money_text

INTERVAL_S = 900.0          # the billing interval of the peak
MAX_STEP_S = 3600.0         # a longer step is a gap in the data, not a step
DAY_S = 86_400.0
MAX_GAP_S = 31 * DAY_S      # a longer "gap" is a clock jump: a month of it is shown, no more
VERSION = 1
MAX_CLOCK = 1e11            # year 5138: a clock time beyond is a broken value


def pv_to_ev_w(pv_w: float, house_w: float, ev_w: float) -> float:
    """PV power into the charge points (together): PV serves the house first, then the EVs."""
    return min(max(0.0, ev_w), max(0.0, max(0.0, pv_w) - max(0.0, house_w)))


class KpiFault(Enum):
    BAD_VALUE = "bad_value"          # a value was NaN/infinite or dt not positive: step left out
    OUT_OF_ORDER = "out_of_order"    # a step earlier than the one before: left out
    LONG_STEP = "long_step"          # dt over MAX_STEP_S: left out, counted as a gap
    NO_SESSION = "no_session"        # session_end for a charge point without an open session
    RESTARTED = "restarted"          # session_start on an open session: the old one ended


@dataclass(slots=True)
class DayKpi:
    day: str                         # YYYY-MM-DD, UTC
    covered_s: float = 0.0           # time the steps covered
    gap_s: float = 0.0               # time without usable data
    pv_wh: float = 0.0
    pv_used_wh: float = 0.0
    house_wh: float = 0.0
    import_wh: float = 0.0
    export_wh: float = 0.0
    battery_charge_wh: float = 0.0
    battery_discharge_wh: float = 0.0
    ev_wh: float = 0.0
    ev_pv_wh: float = 0.0
    peak_w: float = 0.0              # highest 15-minute mean import
    cost: float = 0.0                # of the priced import
    unpriced_import_wh: float = 0.0

    @property
    def self_consumption(self) -> float | None:
        return self.pv_used_wh / self.pv_wh if self.pv_wh > 0 else None

    @property
    def ev_pv_share(self) -> float | None:
        return self.ev_pv_wh / self.ev_wh if self.ev_wh > 0 else None


@dataclass(slots=True)
class SessionKpi:
    cp_id: str
    start: float
    end: float | None = None         # None while the session is open
    target_wh: float | None = None
    ev_wh: float = 0.0
    ev_pv_wh: float = 0.0
    ev_grid_wh: float = 0.0
    cost: float = 0.0
    unpriced_wh: float = 0.0         # grid energy drawn while no price was known

    @property
    def pv_share(self) -> float | None:
        return self.ev_pv_wh / self.ev_wh if self.ev_wh > 0 else None

    @property
    def reached(self) -> bool | None:
        """The target was delivered (None without a target)."""
        return None if self.target_wh is None else self.ev_wh >= self.target_wh - 1e-6


class Kpis:
    """The accumulator: fed once per step, saved with ``to_json`` and restored with
    ``from_json`` (the service keeps it across restarts)."""

    def __init__(self, currency: str = "EUR") -> None:
        self.currency = currency
        self.days: dict[str, DayKpi] = {}
        self.sessions: list[SessionKpi] = []        # in start order, open ones included
        self.faults: dict[KpiFault, int] = {}
        self._open: dict[str, SessionKpi] = {}
        self._last_at: float | None = None
        self._interval = (-1, 0.0)                  # 15-minute interval index, import Wh

    def add(self, at: float, dt: float, *, grid_w: float, pv_w: float, house_w: float,
            battery_w: float, ev_w: Mapping[str, float], price: float | None) -> None:
        values = [at, dt, grid_w, pv_w, house_w, battery_w, *ev_w.values()]
        if price is not None:
            values.append(price)
        if not all(_finite(v) for v in values) or dt <= 0 or not _clock_time(at):
            self._fault(KpiFault.BAD_VALUE)
            return
        if self._last_at is not None and at < self._last_at:
            self._fault(KpiFault.OUT_OF_ORDER)
            return
        if dt > MAX_STEP_S:
            self._fault(KpiFault.LONG_STEP)
            self.gap(at, dt)
            return
        self._last_at = at
        pv = max(0.0, pv_w)
        house = max(0.0, house_w)
        evs = {cp: max(0.0, w) for cp, w in ev_w.items()}
        ev = sum(evs.values())
        imp, exp = max(0.0, grid_w), max(0.0, -grid_w)
        discharge, charge = max(0.0, battery_w), max(0.0, -battery_w)
        ev_pv = pv_to_ev_w(pv, house, ev)
        rest = ev - ev_pv
        ev_grid = min(imp, rest * imp / (imp + discharge)) if imp + discharge > 0 else 0.0

        for t0, t1 in _pieces(at, at + dt):
            h = (t1 - t0) / 3600.0
            d = self._day(t0)
            d.covered_s += t1 - t0
            d.pv_wh += pv * h
            d.pv_used_wh += (pv - min(pv, exp)) * h
            d.house_wh += house * h
            d.import_wh += imp * h
            d.export_wh += exp * h
            d.battery_charge_wh += charge * h
            d.battery_discharge_wh += discharge * h
            d.ev_wh += ev * h
            d.ev_pv_wh += ev_pv * h
            if price is None:
                d.unpriced_import_wh += imp * h
            else:
                d.cost += imp * h * price / 1000.0
            index = math.floor(t0 / INTERVAL_S)
            energy = (self._interval[1] if self._interval[0] == index else 0.0) + imp * h
            self._interval = (index, energy)
            d.peak_w = max(d.peak_w, energy * 3600.0 / INTERVAL_S)
            for cp, w in evs.items():
                s = self._open.get(cp)
                if s is None or ev <= 0:
                    continue
                part = w / ev
                s.ev_wh += w * h
                s.ev_pv_wh += ev_pv * part * h
                s.ev_grid_wh += ev_grid * part * h
                if price is None:
                    s.unpriced_wh += ev_grid * part * h
                else:
                    s.cost += ev_grid * part * h * price / 1000.0

    def gap(self, at: float, dt: float) -> None:
        """``[at, at + dt)`` had no usable data (an unhealthy meter, a pause)."""
        if not (_clock_time(at) and _finite(dt)) or dt <= 0:
            self._fault(KpiFault.BAD_VALUE)
            return
        for t0, t1 in _pieces(at, at + min(dt, MAX_GAP_S), DAY_S):
            self._day(t0).gap_s += t1 - t0

    def session_start(self, cp_id: str, at: float, target_wh: float | None) -> None:
        if not _clock_time(at):
            self._fault(KpiFault.BAD_VALUE)
            return
        if cp_id in self._open:
            self._fault(KpiFault.RESTARTED)
            self.session_end(cp_id, at)
        if target_wh is not None and not (_finite(target_wh) and target_wh >= 0):
            target_wh = None
        s = SessionKpi(cp_id, at, target_wh=target_wh)
        self._open[cp_id] = s
        self.sessions.append(s)

    def session_end(self, cp_id: str, at: float) -> None:
        if not _clock_time(at):
            self._fault(KpiFault.BAD_VALUE)
            return
        s = self._open.pop(cp_id, None)
        if s is None:
            self._fault(KpiFault.NO_SESSION)
            return
        s.end = at

    def _day(self, t: float) -> DayKpi:
        key = datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%d")
        day = self.days.get(key)
        if day is None:
            day = self.days[key] = DayKpi(key)
        return day

    def _fault(self, kind: KpiFault) -> None:
        self.faults[kind] = self.faults.get(kind, 0) + 1

    def to_json(self) -> str:
        return json.dumps({
            "version": VERSION,
            "currency": self.currency,
            "days": [_fields(d) for d in sorted(self.days.values(), key=lambda d: d.day)],
            "sessions": [_fields(s) for s in self.sessions],
            "faults": {k.value: n for k, n in self.faults.items()},
            "last_at": self._last_at,
            "interval": list(self._interval),
        }, indent=1)

    @classmethod
    def from_json(cls, text: str, *, file: str = "(kpi json)") -> Kpis:
        """The accumulator ``to_json`` saved; any defect raises ``ConfigError`` naming it."""
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise ConfigError(file, "(file)", "KPI JSON", str(exc)[:200]) from None
        r = _Reader(file)
        r.only(data, "", {"version", "currency", "days", "sessions", "faults", "last_at",
                          "interval"})
        if data.get("version") != VERSION:
            raise ConfigError(file, "version", str(VERSION), data.get("version"))
        currency = data.get("currency")
        if not isinstance(currency, str) or len(currency) != 3 or not currency.isupper():
            raise ConfigError(file, "currency", "an ISO 4217 code like EUR", currency)
        kpis = cls(currency)
        for i, raw in enumerate(r.list(data, "days")):
            day = r.record(DayKpi, raw, f"days[{i}]")
            kpis.days[day.day] = day
        for i, raw in enumerate(r.list(data, "sessions")):
            s = r.record(SessionKpi, raw, f"sessions[{i}]")
            kpis.sessions.append(s)
            if s.end is None:
                kpis._open[s.cp_id] = s
        faults = data.get("faults")
        if not isinstance(faults, dict):
            raise ConfigError(file, "faults", "an object of counts", faults)
        for name, n in faults.items():
            try:
                kind = KpiFault(name)
            except ValueError:
                raise ConfigError(file, f"faults.{name}",
                                  "one of " + ", ".join(k.value for k in KpiFault), name) from None
            if not isinstance(n, int) or isinstance(n, bool) or n < 0:
                raise ConfigError(file, f"faults.{name}", "a count >= 0", n)
            kpis.faults[kind] = n
        last_at = data.get("last_at")
        if last_at is not None and not _finite(last_at):
            raise ConfigError(file, "last_at", "a clock time or null", last_at)
        kpis._last_at = None if last_at is None else float(last_at)
        interval = data.get("interval")
        if (not isinstance(interval, list) or len(interval) != 2
                or not isinstance(interval[0], int) or not _finite(interval[1])):
            raise ConfigError(file, "interval", "[interval index, import Wh]", interval)
        kpis._interval = (interval[0], float(interval[1]))
        return kpis


def load(path: Path) -> Kpis:
    """A saved KPI file (``voltpilot ems report FILE``)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), "(file)", "a readable KPI JSON file", str(exc)) from None
    return Kpis.from_json(text, file=str(path))


def format_report(data: Kpis) -> str:
    """The days and sessions as two plain-text tables."""
    cur = data.currency
    days: list[tuple[str, ...]] = []
    gaps: list[str] = []
    for d in sorted(data.days.values(), key=lambda d: d.day):
        cost = money_text(d.cost, cur)
        if d.unpriced_import_wh > 0:
            cost += f" +{_kwh(d.unpriced_import_wh)} kWh unpriced"
        days.append((d.day, _kwh(d.pv_wh), _pct(d.self_consumption), _kwh(d.import_wh),
                     _kwh(d.export_wh), f"{d.peak_w / 1000:.2f}", cost, _kwh(d.ev_wh),
                     _pct(d.ev_pv_share)))
        if d.gap_s > 0:
            gaps.append(f"{d.day}: {d.gap_s / 60:.0f} min without usable data")
    sessions: list[tuple[str, ...]] = []
    for s in data.sessions:
        reached = {None: "-", True: "yes", False: "no"}[s.reached]
        sessions.append((s.cp_id, _when(s.start), "open" if s.end is None else _when(s.end),
                         _kwh(s.ev_wh), "-" if s.target_wh is None else _kwh(s.target_wh),
                         reached, _pct(s.pv_share), money_text(s.cost, cur)))
    out = ["Days (UTC)"]
    out += _table(("day", "PV kWh", "self-use", "import kWh", "export kWh", "peak kW", "cost",
                   "EV kWh", "EV PV share"), days)
    out += gaps
    out += ["", "Sessions"]
    out += _table(("charge point", "start (UTC)", "end (UTC)", "EV kWh", "target kWh",
                   "reached", "PV share", "cost"), sessions)
    if data.faults:
        out += ["", "Steps left out: " + ", ".join(f"{k.value} {n}"
                                                   for k, n in data.faults.items())]
    return "\n".join(out) + "\n"


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    """Columns padded to their widest cell: the first left-aligned, numbers right-aligned."""
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    lines = []
    for r in (header, *rows):
        cells = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:],
                                                                       strict=True)]
        lines.append("  ".join(cells).rstrip())
    if not rows:
        lines.append("(none)")
    return lines


def _kwh(wh: float) -> str:
    return f"{wh / 1000:.2f}"


def _pct(share: float | None) -> str:
    return "-" if share is None else f"{100 * share:.0f} %"


def _when(t: float) -> str:
    if not _clock_time(t):
        return f"t={t:.0f}"
    return datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%d %H:%M")


def _pieces(t0: float, t1: float, grid_s: float = INTERVAL_S) -> list[tuple[float, float]]:
    """``[t0, t1)`` cut at a clock grid (the 15-minute one includes UTC midnight)."""
    out = []
    while t0 < t1:
        edge = min(t1, (math.floor(t0 / grid_s) + 1) * grid_s)
        out.append((t0, edge))
        t0 = edge
    return out


def _clock_time(t: float) -> bool:
    """A time a date can be made of (NaN or 1e300 cannot)."""
    return _finite(t) and abs(t) < MAX_CLOCK


def _finite(v: object) -> bool:
    """A real, finite number: not a bool, not NaN, not an int too big for a float."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:
        return False


def _fields(record: DayKpi | SessionKpi) -> dict[str, Any]:
    return {f.name: getattr(record, f.name) for f in fields(record)}


_R = TypeVar("_R", DayKpi, SessionKpi)


class _Reader:
    """Checks a saved record against its dataclass: every field, the right type, nothing else."""

    def __init__(self, file: str) -> None:
        self.file = file

    def only(self, raw: object, where: str, keys: set[str]) -> None:
        if not isinstance(raw, dict):
            raise ConfigError(self.file, where or "(top)", "an object", type(raw).__name__)
        extra = sorted(set(raw) - keys)
        if extra:
            raise ConfigError(self.file, f"{where}.{extra[0]}" if where else extra[0],
                              "one of " + ", ".join(sorted(keys)), extra[0])

    def list(self, data: dict[str, Any], key: str) -> list[Any]:
        value = data.get(key)
        if not isinstance(value, list):
            raise ConfigError(self.file, key, "a list", value)
        return value

    def record(self, cls: type[_R], raw: object, where: str) -> _R:
        names = {f.name for f in fields(cls)}
        self.only(raw, where, names)
        assert isinstance(raw, dict)
        values: dict[str, Any] = {}
        for f in fields(cls):
            key = f"{where}.{f.name}"
            optional = "None" in str(f.type)
            value = raw.get(f.name)
            if f.name not in raw:
                raise ConfigError(self.file, key, "present", None)
            if f.type == "str":
                if not isinstance(value, str) or not value:
                    raise ConfigError(self.file, key, "a non-empty string", value)
            elif value is None and optional:
                pass
            elif not _finite(value):
                raise ConfigError(self.file, key, "a finite number", value)
            values[f.name] = value
        return cls(**values)
