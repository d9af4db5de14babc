"""The service's inputs from a site file: one meter per ``[[meter]]`` (Modbus TCP/RTU, MQTT or
the simulated site) and the price plan (a tariff file, or an MQTT topic)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from ems.config_error import ConfigError
from ems.meters.modbus import Links, ModbusMeter, meter_spec
from ems.meters.mqtt_meter import MqttMeter, MqttMeterSpec
from ems.mqtt_client import Message, MqttClient, MqttSettings
from ems.service import Meter, Poll
from ems.sim_meter import CarDraw, SimMeter
from ems.simulate import SimSite, sim_setup
from ems.site import SiteConfig
from ems.tariff import PricePlan, load_csv, parse_json

log = logging.getLogger("voltpilot.ems")


class ModbusInput:
    """A Modbus meter as the service polls it: its typed fault becomes the reason text."""

    def __init__(self, name: str, meter: ModbusMeter) -> None:
        self.name = name
        self.meter = meter

    async def poll(self, now: float) -> Poll:
        result = await self.meter.poll(now)
        if result.reading is None:
            fault = result.fault.value if result.fault is not None else "no reading"
            return Poll(None, f"{fault}: {result.detail}" if result.detail else fault)
        return Poll(result.reading)

    async def close(self) -> None:
        await self.meter.close()


class MqttInput:
    """An MQTT meter: the newest complete reading, stamped when it arrived, so a feed that
    stops goes stale by age like any other meter."""

    def __init__(self, name: str, meter: MqttMeter) -> None:
        self.name = name
        self.meter = meter

    async def poll(self, now: float) -> Poll:
        reading = self.meter.latest()
        if reading is None:
            last = self.meter.last_fault
            return Poll(None, f"{last[0].value}: {last[1]}" if last is not None
                        else "no complete message yet")
        return Poll(reading)

    async def close(self) -> None:
        return None


@dataclass
class SiteInputs:
    """Everything the site file asks to be read, and what must be closed at the end."""

    meters: list[Meter]
    prices: Callable[[], PricePlan | None]
    mqtt: MqttClient | None = None
    links: Links | None = None
    price_faults: int = 0
    _plan: list[PricePlan | None] = field(default_factory=lambda: [None])

    def start(self) -> None:
        if self.mqtt is not None:
            self.mqtt.start()

    async def close(self) -> None:
        if self.links is not None:
            await self.links.close()
        if self.mqtt is not None:
            await self.mqtt.close()


def open_inputs(site: SiteConfig, cars: CarDraw | None = None, *,
                clock: Callable[[], float] | None = None,
                mqtt: MqttClient | None = None) -> SiteInputs:
    """``cars``: what the charge points draw, for simulated meters (sim board only).
    ``mqtt``: a connection to reuse (the EMS process shares its link's); otherwise one is made
    from the site's ``[mqtt]`` table when a meter or the tariff needs it."""
    file = str(site.path)
    meters: list[Meter] = []
    sim: SimSite | None = None
    links: Links | None = None
    needs_mqtt = any(m.kind == "mqtt" for m in site.meters) or site.tariff.mqtt_topic
    own_mqtt = None
    if needs_mqtt and mqtt is None:
        if not site.mqtt:
            raise ConfigError(file, "[mqtt]", "a broker (host, port) for the MQTT meters or "
                              "the tariff topic", None)
        own_mqtt = mqtt = MqttClient(MqttSettings.from_table(site.mqtt, file),
                                     f"voltpilot-{site.name}-inputs")
    for i, m in enumerate(site.meters):
        key = f"meter[{i}]"
        if m.kind == "sim":
            if cars is None:
                raise ConfigError(file, f"{key}.kind",
                                  "modbus or mqtt (sim meters need the simulated board)", "sim")
            if sim is None:
                setup = sim_setup(site)
                sim = SimSite(setup.day, setup.battery, site.voltage_v, setup.start_s)
            meters.append(SimMeter(m.name, m.role, sim, cars))
        elif m.kind == "modbus":
            links = links or Links()
            spec = meter_spec(file, key, m.name, m.options)
            try:
                meters.append(ModbusInput(m.name, ModbusMeter(spec, links=links)))
            except ValueError as exc:
                # Two meters on one serial port with different line settings.
                raise ConfigError(file, f"{key}.serial_port", "the same baudrate, parity and "
                                  "stopbits as the other meters on this port", str(exc)) from exc
        else:
            assert mqtt is not None and clock is not None, "MQTT meters need a clock"
            meter = MqttMeter(MqttMeterSpec.from_options(m.name, m.options, file, key), clock)
            meter.attach(mqtt)
            meters.append(MqttInput(m.name, meter))
    inputs = SiteInputs(meters, lambda: None, own_mqtt, links)
    if site.tariff.file is not None:
        plan = load_csv(site.tariff.file)
        inputs.prices = lambda: plan
    elif site.tariff.mqtt_topic is not None:
        assert mqtt is not None
        topic = site.tariff.mqtt_topic

        def on_prices(message: Message) -> None:
            try:
                inputs._plan[0] = parse_json(message.payload, f"mqtt:{topic}")
            except ConfigError as exc:
                # The last valid plan stays; a broken one is counted and said, not guessed.
                inputs.price_faults += 1
                log.warning("ems_tariff_rejected", extra={"fields": {"reason": str(exc)}})

        mqtt.subscribe(topic, on_prices, qos=1)
        inputs.prices = lambda: inputs._plan[0]
    return inputs


def check_inputs(site: SiteConfig) -> None:
    """Every meter's and the tariff's settings, checked before anything starts (so a bad site
    file stops the controller at start-up, exit 2, not at run time)."""
    file = str(site.path)
    needs_mqtt = site.tariff.mqtt_topic is not None
    for i, m in enumerate(site.meters):
        key = f"meter[{i}]"
        if m.kind == "modbus":
            meter_spec(file, key, m.name, m.options)
        elif m.kind == "mqtt":
            MqttMeterSpec.from_options(m.name, m.options, file, key)
            needs_mqtt = True
        else:
            sim_setup(site)
    if needs_mqtt:
        if not site.mqtt:
            raise ConfigError(file, "[mqtt]", "a broker (host, port) for the MQTT meters or "
                              "the tariff topic", None)
        MqttSettings.from_table(site.mqtt, file)
    if site.tariff.file is not None:
        load_csv(site.tariff.file)
