"""The MQTT meter: topics and JSON paths to a ``Reading`` stamped with the receive time; every
kind of bad payload a counted, typed fault and never an exception; and a meter fed by a real
mosquitto from an independent publisher (paho's own ``publish.multiple``)."""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mqtt_broker import Mosquitto, eventually
from paho.mqtt import publish

from ems.config_error import ConfigError
from ems.meters.mqtt_meter import FieldSpec, MeterFault, MqttMeter, MqttMeterSpec, parse_path
from ems.model import Reading
from ems.mqtt_client import Message, MqttClient, MqttSettings


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


TASMOTA = MqttMeterSpec("grid", (
    FieldSpec("power", "tele/grid/SENSOR", "ENERGY.Power"),
    FieldSpec("currents", "tele/grid/SENSOR", "ENERGY.Current"),
    FieldSpec("import_energy", "tele/grid/SENSOR", "ENERGY.Total", scale=1000.0),
))


def doc(power: Any = 1500, current: Any = (2.1, 2.2, 2.3), total: Any = 12.5) -> bytes:
    return json.dumps({"ENERGY": {"Power": power, "Current": list(current) if isinstance(
        current, tuple) else current, "Total": total}}).encode()


def msg(payload: bytes | str, topic: str = "tele/grid/SENSOR", retain: bool = False) -> Message:
    return Message(topic, payload.encode() if isinstance(payload, str) else payload, 0, retain)


def test_one_json_topic_becomes_a_reading_stamped_with_the_receive_time() -> None:
    clock = Clock()
    meter = MqttMeter(TASMOTA, clock)
    assert meter.latest() is None
    assert meter.handle(msg(doc())) is None
    assert meter.latest() == Reading(at=1000.0, power_w=1500.0, currents_a=(2.1, 2.2, 2.3),
                                     import_wh=12500.0)
    clock.t = 1005.0
    assert meter.latest() is not None and meter.latest().at == 1000.0  # type: ignore[union-attr]


def test_plain_numbers_on_their_own_topics_inverted_and_stamped_by_the_oldest() -> None:
    spec = MqttMeterSpec("pv", (
        FieldSpec("power", "pv/W", invert=True),
        FieldSpec("current_l1", "pv/A1"), FieldSpec("current_l2", "pv/A2"),
        FieldSpec("current_l3", "pv/A3"),
        FieldSpec("export_energy", "pv/kWh", scale=1000.0),
    ))
    clock = Clock()
    meter = MqttMeter(spec, clock)
    meter.handle(msg("-3200", "pv/W"))
    for i in (1, 2, 3):
        meter.handle(msg(f"{4.5 + i}", f"pv/A{i}"))
    assert meter.latest() is None                       # export_energy never arrived yet
    clock.t = 1002.0
    meter.handle(msg(" 7.25\n", "pv/kWh"))
    reading = meter.latest()
    assert reading == Reading(at=1000.0, power_w=3200.0, currents_a=(5.5, 6.5, 7.5),
                              export_wh=7250.0)
    clock.t = 1010.0
    meter.handle(msg("-3000", "pv/W"))
    # The currents stopped at 1000: the reading is as old as they are, not as new as the power.
    assert meter.latest() == Reading(at=1000.0, power_w=3000.0, currents_a=(5.5, 6.5, 7.5),
                                     export_wh=7250.0)


@pytest.mark.parametrize(("payload", "fault"), [
    (b"{not json", MeterFault.BAD_JSON),
    (b"", MeterFault.BAD_JSON),
    (b"\xff\xfe", MeterFault.BAD_JSON),
    (b"[" * 100_000, MeterFault.BAD_JSON),
    (json.dumps({"ENERGY": {"Power": 1}}).encode(), MeterFault.MISSING_PATH),
    (b"[1, 2]", MeterFault.MISSING_PATH),
    (doc(power="1500"), MeterFault.NOT_A_NUMBER),
    (doc(power=True), MeterFault.NOT_A_NUMBER),
    (doc(power=None), MeterFault.NOT_A_NUMBER),
    (doc(current={"L1": 1}), MeterFault.NOT_A_NUMBER),
    (doc(current=(1, "2", 3)), MeterFault.NOT_A_NUMBER),
    (doc().replace(b"1500", b"NaN"), MeterFault.NOT_FINITE),
    (doc().replace(b"1500", b"-Infinity"), MeterFault.NOT_FINITE),
    (doc().replace(b"1500", b"1e400"), MeterFault.NOT_FINITE),
    (doc().replace(b"1500", b"1" * 400), MeterFault.NOT_FINITE),
    (doc(total=1e306), MeterFault.NOT_FINITE),           # finite, but not after scaling
    (doc(current=(1, 2)), MeterFault.WRONG_LENGTH),
    (doc(current=(1, 2, 3, 4)), MeterFault.WRONG_LENGTH),
    (doc(power=1e9), MeterFault.IMPLAUSIBLE),
    (doc(total=-1), MeterFault.IMPLAUSIBLE),
])
def test_a_bad_payload_is_a_counted_fault_and_changes_nothing(payload: bytes,
                                                              fault: MeterFault) -> None:
    clock = Clock()
    meter = MqttMeter(TASMOTA, clock)
    meter.handle(msg(doc()))
    before = meter.latest()
    clock.t = 1001.0
    assert meter.handle(msg(payload)) is fault
    assert meter.faults == {fault: 1}
    assert meter.last_fault is not None and meter.last_fault[0] is fault
    assert meter.latest() == before


def test_a_retained_value_of_unknown_age_is_not_used() -> None:
    meter = MqttMeter(TASMOTA, Clock())
    assert meter.handle(msg(doc(), retain=True)) is MeterFault.RETAINED
    assert meter.latest() is None
    assert meter.handle(msg(doc(), topic="other/topic")) is None   # not ours: ignored
    assert meter.messages == 0


@given(st.binary(max_size=200))
def test_no_bytes_make_it_raise(payload: bytes) -> None:
    meter = MqttMeter(TASMOTA, Clock())
    result = meter.handle(msg(payload))
    assert result is None or isinstance(result, MeterFault)
    reading = meter.latest()
    assert reading is None or reading.finite()


JSON = st.recursive(st.none() | st.booleans() | st.floats() | st.integers() | st.text(),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.sampled_from(["ENERGY", "Power", "Current", "Total"]),
                                      inner, max_size=4), max_leaves=20)


@given(JSON)
def test_no_json_document_makes_it_raise(document: Any) -> None:
    meter = MqttMeter(TASMOTA, Clock())
    result = meter.handle(msg(json.dumps(document)))
    assert result is None or isinstance(result, MeterFault)
    reading = meter.latest()
    assert reading is None or reading.finite()


def test_paths() -> None:
    assert parse_path("") == ()
    assert parse_path("power.total") == ("power", "total")
    assert parse_path("currents[0]") == ("currents", 0)
    assert parse_path("[2].a[1][0]") == (2, "a", 1, 0)
    for bad in (".a", "a.", "a..b", "a[x]", "a[", "a]b", "a[0]b", "a[-1]"):
        with pytest.raises(ValueError):
            parse_path(bad)


def test_spec_from_a_site_file_meter_table() -> None:
    spec = MqttMeterSpec.from_options("grid", {
        "topic": "tele/grid/SENSOR", "power": "ENERGY.Power",
        "currents": {"path": "ENERGY.Current"},
        "import_energy": {"topic": "grid/kwh", "scale": 1000, "invert": False},
    }, "site.toml", "meter[0]")
    assert spec.fields == (
        FieldSpec("power", "tele/grid/SENSOR", "ENERGY.Power"),
        FieldSpec("import_energy", "grid/kwh", "", 1000.0),
        FieldSpec("currents", "tele/grid/SENSOR", "ENERGY.Current"))
    assert spec.topics() == ("tele/grid/SENSOR", "grid/kwh")


@pytest.mark.parametrize(("options", "key"), [
    ({"topic": "t", "powr": "x"}, "meter[0].powr"),
    ({"power": "x"}, "meter[0].power.topic"),
    ({"topic": "t/#", "power": "x"}, "meter[0].topic"),
    ({"topic": "t", "power": "a..b"}, "meter[0].power.path"),
    ({"topic": "t", "power": {"scale": 0}}, "meter[0].power.scale"),
    ({"topic": "t", "power": {"scale": "2"}}, "meter[0].power.scale"),
    ({"topic": "t", "power": {"invert": 1}}, "meter[0].power.invert"),
    ({"topic": "t", "power": {"unit": "kW"}}, "meter[0].power.unit"),
    ({"topic": "t", "power": 3}, "meter[0].power"),
    ({"topic": "t"}, "meter[0]"),
    ({"topic": "t", "currents": "c", "current_l2": "x"}, "meter[0]"),
    ({"topic": "t", "power": "p", "phases": 2}, "meter[0].phases"),
])
def test_bad_meter_options_name_the_key(options: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        MqttMeterSpec.from_options("grid", options, "site.toml", "meter[0]")
    assert (err.value.file, err.value.key) == ("site.toml", key)


def test_a_meter_fed_through_mosquitto_by_another_client(mosquitto: Mosquitto) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        meter = MqttMeter(TASMOTA, loop.time)
        client = MqttClient(MqttSettings(port=mosquitto.port, backoff_min_s=0.05), "ems-meter")
        meter.attach(client)
        # A retained value from before the meter subscribed (replayed with no age)...
        publish.single("tele/grid/SENSOR", doc(power=1), retain=True,
                       hostname=mosquitto.host, port=mosquitto.port)
        client.start()
        await eventually(lambda: meter.faults[MeterFault.RETAINED] == 1)
        assert meter.latest() is None
        # ... and live values after.
        sent_at = loop.time()
        payloads = [doc(power=100), doc(power="garbage"), doc(power=200), b"{",
                    doc(power=-4200, current=(-6, -6, -6))]
        messages: publish.MessagesList = [("tele/grid/SENSOR", p, 0, False) for p in payloads]
        publish.multiple(messages, hostname=mosquitto.host, port=mosquitto.port)
        await eventually(lambda: meter.messages == 3)
        reading = meter.latest()
        assert reading is not None and reading.at >= sent_at
        assert (reading.power_w, reading.currents_a) == (-4200.0, (-6.0, -6.0, -6.0))
        assert meter.faults == {MeterFault.RETAINED: 1, MeterFault.NOT_A_NUMBER: 1,
                                MeterFault.BAD_JSON: 1}
        assert math.isclose(reading.import_wh or 0.0, 12500.0)
        await client.close()

    asyncio.run(main())
