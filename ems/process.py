"""``voltpilot ems --site FILE``: the energy manager as its own process, steering the site's
charge points over MQTT (topics in docs/ems-mqtt.md) — a car park, or a home with two wallboxes.

Each charge point runs ``voltpilot run --ems-link FILE`` and follows the commands; when this
process dies, its last will tells them at once, and each command's validity ends anyway, so
every charge point falls back to its own fail-safe current.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from pathlib import Path

from ems.mqtt_client import MqttSettings
from ems.mqtt_link import EmsLink
from ems.service import EmsService
from ems.site import SiteConfig
from ems.sources import open_inputs

log = logging.getLogger("voltpilot.ems")


def loop_clock(loop: asyncio.AbstractEventLoop) -> float:
    """Wall-clock seconds that advance with the loop's monotonic time (so an NTP step cannot
    make a cycle run twice, and a virtual-time loop gives virtual time)."""
    return time.time() - loop.time()


async def run_process(site: SiteConfig, data_dir: Path, duration: float | None) -> int:
    loop = asyncio.get_running_loop()
    offset = loop_clock(loop)

    def clock() -> float:
        return offset + loop.time()

    settings = MqttSettings.from_table(site.mqtt, str(site.path))
    link = EmsLink(settings, site.name, [c.id for c in site.charge_points], clock)
    inputs = open_inputs(site, clock=clock, mqtt=link.client)
    data_dir.mkdir(parents=True, exist_ok=True)
    service = EmsService(site, inputs.meters, link, clock, prices=inputs.prices,
                         kpi_file=data_dir / "ems-kpis.json")
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if duration is not None:
        loop.call_later(duration, stop.set)
    link.start()
    inputs.start()
    service.start()
    print(f"voltpilot ems: site {site.name}, {len(site.charge_points)} charge point(s), "
          f"{len(inputs.meters)} meter(s), broker {settings.host}:{settings.port}", flush=True)
    try:
        await stop.wait()
    finally:
        await service.stop()
        await inputs.close()
        await link.close()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    print("voltpilot ems: stopped", file=sys.stderr)
    return 0
