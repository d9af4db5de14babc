"""The departure planner: when to charge so the car has its energy by departure, at the lowest
price. Pure — a function of the prices, the clock and what is still needed — and meant to be run
again every cycle, so it must not change its mind without a reason.

How a plan is made, in order:
1. an input that is not a usable number: charge now (fail-safe, ``INVALID``);
2. nothing needed: do not charge (``DONE``);
3. the need does not fit before departure even at full power: charge now and say how much will
   be missing (``INFEASIBLE``);
4. the need fills the time left but for ``margin_s`` (the latest start, less a margin for a car
   that draws less than asked): charge now whatever the price (``GUARANTEE``, the minimum-energy
   guarantee). While the car charges at full power both sides shrink alike, so a guarantee, once
   given, holds until the energy is there;
5. no price known before departure: charge now (``NO_PRICES``);
6. otherwise the cheapest pieces of time before departure that add up to the need
   (``CHEAPEST``). Time is cut at the clock-aligned ``slot_s`` grid and at price-slot bounds;
   the pieces are taken by price, the earlier first among equal prices (so re-planning as time
   passes keeps choosing the piece it is in), with unknown prices after every known one. The
   last piece may be used in part: its beginning.
"""

from __future__ import annotations

import bisect
import itertools
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum

from ems.tariff import PricePlan, price_at, price_text

GUARANTEE_MARGIN_S = 900.0
MIN_SLOT_S = 60.0
MAX_PIECES = 20_000     # ~200 days of 15-minute slots: a departure further out is an error
_EPS_S = 1e-6           # float slack when comparing times, far below any clock's resolution


class PlanKind(Enum):
    CHEAPEST = "cheapest"
    GUARANTEE = "guarantee"
    NO_PRICES = "no_prices"
    INFEASIBLE = "infeasible"
    DONE = "done"
    INVALID = "invalid"


@dataclass(frozen=True, slots=True)
class Window:
    """A stretch of time to charge in, at one price (None: unknown)."""

    start: float
    end: float
    price: float | None


@dataclass(frozen=True, slots=True)
class Plan:
    kind: PlanKind
    reason: str                          # one line for the user: what the plan does and why
    windows: tuple[Window, ...] = ()     # when to charge, in time order
    power_w: float = 0.0                 # the power the plan assumes
    shortfall_wh: float = 0.0            # what full power cannot deliver before departure
    cost: float | None = None            # of the planned energy; None when a price is unknown

    @property
    def guaranteed(self) -> bool:
        """Charging at full power now overrides price and PV optimisation."""
        return self.kind in (PlanKind.GUARANTEE, PlanKind.INFEASIBLE)

    @property
    def energy_wh(self) -> float:
        return sum(w.end - w.start for w in self.windows) * self.power_w / 3600.0

    def charge_now(self, t: float) -> bool:
        if self.kind in (PlanKind.INVALID, PlanKind.INFEASIBLE):
            return True
        return any(w.start <= t < w.end for w in self.windows)


def plan_charging(prices: PricePlan | None, *, now: float, departure: float, energy_wh: float,
                  power_w: float, slot_s: float = 900.0,
                  margin_s: float = GUARANTEE_MARGIN_S) -> Plan:
    """When to charge ``energy_wh`` at ``power_w`` between ``now`` and ``departure``."""
    numbers = {"now": now, "departure": departure, "energy_wh": energy_wh,
               "power_w": power_w, "slot_s": slot_s, "margin_s": margin_s}
    bad = [name for name, value in numbers.items() if not math.isfinite(value)]
    if power_w <= 0 and "power_w" not in bad:
        bad.append("power_w")
    if not slot_s >= MIN_SLOT_S and "slot_s" not in bad:
        bad.append("slot_s")
    if margin_s < 0 and "margin_s" not in bad:
        bad.append("margin_s")
    if bad:
        return Plan(PlanKind.INVALID, f"cannot plan ({', '.join(bad)} not usable): charging now")
    if energy_wh <= 0:
        return Plan(PlanKind.DONE, "target reached", power_w=power_w)
    window_s = departure - now
    if window_s / slot_s > MAX_PIECES:
        return Plan(PlanKind.INVALID, "departure too far ahead to plan: charging now")
    currency = prices.currency if prices is not None else "EUR"
    need_s = energy_wh / power_w * 3600.0
    if need_s <= _EPS_S:
        return Plan(PlanKind.DONE, "target reached", power_w=power_w)
    pieces = _pieces(prices, now, departure, slot_s)
    by = _clock_text(departure, now)

    if need_s > window_s + _EPS_S:
        short = energy_wh - power_w * max(0.0, window_s) / 3600.0
        return _plan(PlanKind.INFEASIBLE,
                     f"target not reachable by departure: {short / 1000:.1f} kWh short",
                     pieces, power_w, shortfall_wh=short)
    if need_s + margin_s >= window_s - _EPS_S:
        chosen = _choose(pieces, need_s, cheapest=False)
        return _plan(PlanKind.GUARANTEE,
                     f"energy guarantee: just enough time left before {by}, charging now "
                     "regardless of price", chosen, power_w)
    if all(p.price is None for p in pieces):
        chosen = _choose(pieces, need_s, cheapest=False)
        why = "no price plan" if prices is None else f"no prices before {by}"
        return _plan(PlanKind.NO_PRICES, f"{why}: charging now", chosen, power_w)

    chosen = _choose(pieces, need_s, cheapest=True)
    first = chosen[0]
    head = f"cheapest {_duration_text(need_s)} before {by}"
    if first.start <= now:
        reason = f"{head}: charging now ({price_text(first.price, currency)})"
    else:
        reason = (f"{head}: waiting for {_clock_text(first.start, now)} "
                  f"({price_text(first.price, currency)})")
    return _plan(PlanKind.CHEAPEST, reason, chosen, power_w)


def _plan(kind: PlanKind, reason: str, windows: list[Window], power_w: float,
          shortfall_wh: float = 0.0) -> Plan:
    merged: list[Window] = []
    for w in windows:
        if merged and merged[-1].end == w.start and merged[-1].price == w.price:
            merged[-1] = Window(merged[-1].start, w.end, w.price)
        else:
            merged.append(w)
    cost: float | None = 0.0
    for w in merged:
        if w.price is None or cost is None:
            cost = None
        else:
            cost += (w.end - w.start) * power_w / 3.6e6 * w.price
    return Plan(kind, reason, tuple(merged), power_w, shortfall_wh, cost)


def _pieces(prices: PricePlan | None, now: float, departure: float,
            slot_s: float) -> list[Window]:
    """``[now, departure)`` cut at the ``slot_s`` grid and at price-slot bounds."""
    if departure <= now:
        return []
    cuts = {now, departure}
    k = math.floor(now / slot_s) + 1
    while k * slot_s < departure:
        cuts.add(k * slot_s)
        k += 1
    if prices is not None:
        slots = prices.slots
        i = max(0, bisect.bisect_right(slots, now, key=lambda s: s.start) - 1)
        while i < len(slots) and slots[i].start < departure:
            cuts.update(t for t in (slots[i].start, slots[i].end) if now < t < departure)
            i += 1
    points = sorted(cuts)
    return [Window(a, b, None if prices is None else price_at(prices, a))
            for a, b in itertools.pairwise(points)]


def _choose(pieces: list[Window], need_s: float, *, cheapest: bool) -> list[Window]:
    """Pieces adding up to ``need_s``: the cheapest (unknown prices last) or the earliest."""
    def key(p: Window) -> tuple[bool, float, float]:
        if not cheapest:
            return (False, 0.0, p.start)
        return (p.price is None, p.price or 0.0, p.start)

    left = need_s
    chosen: list[Window] = []
    for p in sorted(pieces, key=key):
        if left <= _EPS_S:
            break
        take = min(p.end - p.start, left)
        chosen.append(Window(p.start, p.start + take, p.price))
        left -= take
    return sorted(chosen, key=lambda w: w.start)


def _duration_text(seconds: float) -> str:
    """Rounded up to a quarter hour, so a reason does not change every minute of charging."""
    minutes = 15 * math.ceil(seconds / 900.0 - 1e-9)
    hours, minutes = divmod(minutes, 60)
    if hours and minutes:
        return f"{hours} h {minutes} min"
    return f"{hours} h" if hours else f"{minutes} min"


def _clock_text(t: float, now: float) -> str:
    """``07:00`` (UTC, the site's time), with the weekday when it is a day or more away."""
    try:
        at = datetime.fromtimestamp(t, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return f"t={t:.0f}"
    return at.strftime("%H:%M" if t - now < 86_400.0 else "%a %H:%M")
