"""The EMS ↔ charge point protocol: strict pure codecs, then both ends against a real mosquitto —
round trip, command expiry, rejected payloads answered with the reason, the last will when a
process dies, a broker restart, and the same links on firmware's virtual-time loop."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mqtt_broker import Mosquitto, eventually
from paho.mqtt import publish

from ems.model import ChargePointState, Command, EmsLimit
from ems.mqtt_client import MqttClient, MqttSettings
from ems.mqtt_link import (
    ChargePointLink,
    EmsLink,
    PayloadError,
    Reject,
    Rejection,
    TimedCommand,
    Topics,
    check_state,
    decode_command,
    decode_error,
    decode_online,
    decode_state,
    encode_command,
    encode_error,
    encode_state,
)
from firmware.virtual_time import VirtualTimeLoop
from hal.clock import VirtualClock

SITE = "home"
STATE = ChargePointState(id="cp1", at=5.0, connected=True, charging=True, phases=3,
                         currents_a=(10.0, 10.1, 9.9), power_w=6900.0, session_wh=1234.5,
                         offered_a=10.0, ev_soc_pct=55.0)
COMMAND = Command("cp1", (EmsLimit("site_fuse", 10.0, "fuse 25 A"),
                          EmsLimit("pv_surplus", 6.5, "surplus 4.5 kW", phases=1)),
                  phases=1, notes=("pv",))


def fast(broker: Mosquitto) -> MqttSettings:
    return MqttSettings(host=broker.host, port=broker.port, backoff_min_s=0.05,
                        backoff_max_s=0.2, connect_timeout_s=2.0)


# ---- codecs ------------------------------------------------------------------------------------


def test_state_and_command_round_trip() -> None:
    assert decode_state(encode_state(STATE), "cp1", {"cp1", "cp2"}) == STATE
    assert decode_command(encode_command(COMMAND, 30.0), "cp1") == TimedCommand(COMMAND, 30.0)
    assert decode_online(b"1") is True and decode_online(b"0") is False
    error = PayloadError(Reject.UNKNOWN_CP, "id: 'cp9'")
    assert decode_error(encode_error("t", "cp9", error)) == Rejection("t", "cp9", error)


def _state(**changes: Any) -> bytes:
    doc = json.loads(encode_state(STATE))
    doc.update(changes)
    return json.dumps({k: v for k, v in doc.items() if v != "<drop>"}).encode()


@pytest.mark.parametrize(("payload", "reason", "key"), [
    (b"not json", Reject.BAD_JSON, "not JSON"),
    (_state().replace(b"6900.0", b"NaN"), Reject.BAD_JSON, "NaN"),
    (b"[1]", Reject.NOT_AN_OBJECT, "object"),
    (_state(v=2), Reject.BAD_VERSION, "v"),
    (_state(v="<drop>"), Reject.BAD_VERSION, "v"),
    (_state(charging="<drop>"), Reject.MISSING_KEY, "charging"),
    (_state(colour="red"), Reject.UNKNOWN_KEY, "colour"),
    (_state(connected=1), Reject.BAD_TYPE, "connected"),
    (_state(power_w="6900"), Reject.BAD_TYPE, "power_w"),
    (_state(currents_a=[1, 2]), Reject.BAD_TYPE, "currents_a"),
    (_state(currents_a=[1, 2, 16000]), Reject.OUT_OF_RANGE, "currents_a[2]"),
    (_state(phases=2), Reject.OUT_OF_RANGE, "phases"),
    (_state(phases=3.0), Reject.BAD_TYPE, "phases"),
    (_state(ev_soc_pct=101), Reject.OUT_OF_RANGE, "ev_soc_pct"),
    (_state(session_wh=-1), Reject.OUT_OF_RANGE, "session_wh"),
    (_state(at=10**400), Reject.OUT_OF_RANGE, "at"),
    (_state(id="cp2"), Reject.CP_MISMATCH, "id"),
])
def test_bad_states_are_typed_errors_naming_the_key(payload: bytes, reason: Reject,
                                                    key: str) -> None:
    error = decode_state(payload, "cp1", {"cp1", "cp2"})
    assert isinstance(error, PayloadError)
    assert error.reason is reason
    assert key in error.detail


def test_a_state_from_a_charge_point_the_site_does_not_have() -> None:
    payload = encode_state(ChargePointState(id="cp9", at=0.0))
    error = decode_state(payload, "cp9", {"cp1"})
    assert isinstance(error, PayloadError) and error.reason is Reject.UNKNOWN_CP


def _command(**changes: Any) -> bytes:
    doc = json.loads(encode_command(COMMAND, 30.0))
    doc.update(changes)
    return json.dumps(doc).encode()


@pytest.mark.parametrize(("payload", "reason", "key"), [
    (_command(valid_s=0), Reject.OUT_OF_RANGE, "valid_s"),
    (_command(valid_s=86400), Reject.OUT_OF_RANGE, "valid_s"),
    (_command(valid_s=None), Reject.BAD_TYPE, "valid_s"),
    (_command(cp_id="cp2"), Reject.CP_MISMATCH, "cp_id"),
    (_command(limits={}), Reject.BAD_TYPE, "limits"),
    (_command(limits=[{"source": "site_fuse", "amps": -1, "reason": "", "phases": None}]),
     Reject.OUT_OF_RANGE, "limits[0].amps"),
    (_command(limits=[{"source": "Site Fuse", "amps": 1, "reason": "", "phases": None}]),
     Reject.OUT_OF_RANGE, "limits[0].source"),
    (_command(limits=[{"source": "price", "amps": 1, "reason": "", "phases": None}] * 2),
     Reject.OUT_OF_RANGE, "limits[1].source"),
    (_command(limits=[{"source": "price", "amps": 1, "reason": ""}]),
     Reject.MISSING_KEY, "limits[0].phases"),
    (_command(limits=[{"source": "price", "amps": 1, "reason": "", "phases": 2}]),
     Reject.OUT_OF_RANGE, "limits[0].phases"),
    (_command(notes=["x" * 201]), Reject.OUT_OF_RANGE, "notes[0]"),
    (_command(notes=["n"] * 17), Reject.OUT_OF_RANGE, "notes"),
    (_command(extra=1), Reject.UNKNOWN_KEY, "extra"),
])
def test_bad_commands_are_typed_errors_naming_the_key(payload: bytes, reason: Reject,
                                                      key: str) -> None:
    error = decode_command(payload, "cp1")
    assert isinstance(error, PayloadError)
    assert error.reason is reason
    assert key in error.detail


def test_a_state_the_protocol_would_reject_is_not_encoded() -> None:
    bad = ChargePointState(id="cp1", at=0.0, power_w=float("nan"))
    error = check_state(bad)
    assert error is not None and error.reason is Reject.OUT_OF_RANGE
    with pytest.raises(ValueError, match="power_w"):
        encode_state(bad)


JSON = st.recursive(st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers()
                    | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
                        st.sampled_from(["v", "id", "cp_id", "at", "limits", "phases",
                                         "currents_a", "valid_s", "source", "amps"]),
                        inner, max_size=6), max_leaves=25)


@given(st.one_of(st.binary(max_size=200), JSON.map(lambda d: json.dumps(d).encode())))
def test_no_payload_makes_a_decoder_raise(payload: bytes) -> None:
    for result in (decode_state(payload, "cp1", {"cp1"}), decode_command(payload, "cp1"),
                   decode_error(payload), decode_online(payload)):
        assert result is not None


def test_topics() -> None:
    t = Topics(SITE)
    assert t.state("cp1") == "voltpilot/home/cp/cp1/state"
    assert t.command("cp1") == "voltpilot/home/cp/cp1/command"
    assert (t.ems_online, t.ems_error) == ("voltpilot/home/ems/online", "voltpilot/home/ems/error")
    assert t.cp_of("voltpilot/home/cp/cp7/online") == "cp7"
    assert t.cp_of("voltpilot/other/cp/cp7/online") is None
    for bad in ("", "a/b", "a+", "#", "x" * 33, "cp1\n"):
        with pytest.raises(ValueError):
            Topics(bad)


# ---- both ends against mosquitto ---------------------------------------------------------------


class Ends:
    """An EMS link and a charge-point link on one broker, with what the charge point got."""

    def __init__(self, broker: Mosquitto, clock: Callable[[], float]) -> None:
        self.loop = asyncio.get_running_loop()
        self.got: list[tuple[float, Command | None]] = []
        self.ems = EmsLink(fast(broker), SITE, ["cp1", "cp2"], clock)
        self.cp = ChargePointLink(fast(broker), SITE, "cp1",
                                  lambda c: self.got.append((self.loop.time(), c)))

    async def __aenter__(self) -> Ends:
        self.ems.start()
        self.cp.start()
        # Each end publishes its online flag after subscribing, so once each has seen the
        # other's, messages between them are delivered.
        await eventually(lambda: self.ems.online_cps() == {"cp1"} and self.cp.ems_online)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.cp.close()
        await self.ems.close()


def test_state_in_command_out_and_the_command_expires(mosquitto: Mosquitto) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with Ends(mosquitto, loop.time) as ends:
            assert ends.cp.publish_state(STATE)
            await eventually(lambda: "cp1" in ends.ems.states())
            received = ends.ems.states()["cp1"]
            assert received == replace(STATE, at=received.at)
            assert received.at != STATE.at and received.at <= loop.time()
            assert ends.ems.send(COMMAND, valid_s=0.3)
            await eventually(lambda: len(ends.got) == 2, timeout=3)
            (t1, first), (t2, second) = ends.got
            assert first == COMMAND and ends.cp.command is None
            assert second is None
            assert t2 - t1 >= 0.3 - 1e-3

    asyncio.run(main())


def test_a_refreshed_command_stays_in_force(mosquitto: Mosquitto) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with Ends(mosquitto, loop.time) as ends:
            for _ in range(6):
                ends.ems.send(COMMAND, valid_s=0.25)
                await asyncio.sleep(0.1)
            await eventually(lambda: len(ends.got) == 6)
            assert all(c == COMMAND for _, c in ends.got)
            await eventually(lambda: ends.got[-1][1] is None)
            assert len(ends.got) == 7

    asyncio.run(main())


def test_bad_payloads_are_counted_and_answered_with_the_reason(mosquitto: Mosquitto) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with Ends(mosquitto, loop.time) as ends:
            spy = MqttClient(fast(mosquitto), "spy")
            errors: list[bytes] = []
            spy.subscribe("voltpilot/home/+/+/error", lambda m: errors.append(m.payload))
            spy.subscribe("voltpilot/home/ems/error", lambda m: errors.append(m.payload))
            spy.start()
            await eventually(lambda: spy.online)
            t = ends.cp.topics
            # An independent client (paho's own publish helper) sends the garbage.
            publish.multiple([
                (t.state("cp1"), b"{garbage", 0, False),
                (t.state("cp9"), encode_state(ChargePointState(id="cp9", at=0.0)), 0, False),
                (t.cp_online("cp9"), b"1", 0, False),
                (t.command("cp1"), _command(cp_id="cp2"), 0, False),
                (t.ems_online, b"yes", 0, False),
            ], hostname=mosquitto.host, port=mosquitto.port)
            await eventually(lambda: len(errors) == 5)
            assert ends.ems.rejected == {Reject.BAD_JSON: 1, Reject.UNKNOWN_CP: 2}
            assert ends.cp.rejected == {Reject.CP_MISMATCH: 1, Reject.BAD_TYPE: 1}
            assert ends.got == [] and ends.cp.command is None
            replies = [decode_error(e) for e in errors]
            assert all(isinstance(r, Rejection) for r in replies)
            assert {(r.cp_id, r.error.reason) for r in replies  # type: ignore[union-attr]
                    } == {("cp1", Reject.BAD_JSON), ("cp9", Reject.UNKNOWN_CP),
                          ("cp1", Reject.CP_MISMATCH), ("cp1", Reject.BAD_TYPE)}
            # The charge point heard the EMS's answer about its own topic.
            await eventually(lambda: ends.cp.last_rejection is not None)
            # A retained command is replayed, with no age, to whoever subscribes: refused.
            late = ChargePointLink(fast(mosquitto), SITE, "cp2", lambda c: None)
            late_topic = late.topics.command("cp2")
            publish.single(late_topic, encode_command(Command("cp2"), 30.0), retain=True,
                           hostname=mosquitto.host, port=mosquitto.port)
            late.start()
            await eventually(lambda: late.rejected[Reject.RETAINED] == 1)
            assert late.command is None
            await late.close()
            await spy.close()

    asyncio.run(main())


def test_the_documented_acl_lets_the_protocol_through(
        tmp_path: Path, mosquitto_factory: Callable[..., Mosquitto]) -> None:
    doc = (Path(__file__).parents[2] / "docs" / "ems-mqtt.md").read_text()
    acl = doc.split("## Securing the broker", 1)[1].split("```", 2)[1]
    (tmp_path / "acl").write_text(acl)
    passwd = shutil.which("mosquitto_passwd")
    if passwd is None:
        pytest.fail("mosquitto_passwd is missing (Debian package mosquitto)", pytrace=False)
    for user in ("ems", "cp1"):
        subprocess.run([passwd, "-b", *(["-c"] if user == "ems" else []),
                        str(tmp_path / "passwd"), user, f"{user}-pw"], check=True)
    broker = mosquitto_factory(f"password_file {tmp_path / 'passwd'}\n"
                               f"acl_file {tmp_path / 'acl'}\n", anonymous=False)

    def as_user(user: str) -> MqttSettings:
        return replace(fast(broker), username=user, password=f"{user}-pw")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        got: list[Command | None] = []
        ems = EmsLink(as_user("ems"), SITE, ["cp1"], loop.time)
        cp = ChargePointLink(as_user("cp1"), SITE, "cp1", got.append)
        ems.start()
        cp.start()
        await eventually(lambda: ems.online_cps() == {"cp1"} and cp.ems_online)
        cp.publish_state(STATE)
        await eventually(lambda: "cp1" in ems.states())
        ems.send(COMMAND, 0.2)
        await eventually(lambda: got == [COMMAND, None])
        publish.single(cp.topics.state("cp1"), b"{", hostname=broker.host, port=broker.port,
                       auth={"username": "cp1", "password": "cp1-pw"})
        await eventually(lambda: cp.last_rejection is not None)
        await cp.close()
        await eventually(lambda: not ems.online_cps())
        await ems.close()

    asyncio.run(main())


# ---- a process dies ----------------------------------------------------------------------------

_EMS_PROCESS = """
import asyncio, sys
from ems.model import Command, EmsLimit
from ems.mqtt_client import MqttSettings
from ems.mqtt_link import EmsLink

async def main() -> None:
    link = EmsLink(MqttSettings(port=int(sys.argv[1]), backoff_min_s=0.05), "home", ["cp1"],
                   lambda: 0.0)
    link.start()
    while True:
        if link.online:
            link.send(Command("cp1", (EmsLimit("site_fuse", 8.0, "fuse"),)), 60.0)
        await asyncio.sleep(0.05)

asyncio.run(main())
"""

_CP_PROCESS = """
import asyncio, sys
from ems.model import ChargePointState
from ems.mqtt_client import MqttSettings
from ems.mqtt_link import ChargePointLink

async def main() -> None:
    link = ChargePointLink(MqttSettings(port=int(sys.argv[1]), backoff_min_s=0.05), "home",
                           "cp1", lambda command: None)
    link.start()
    while True:
        link.publish_state(ChargePointState(id="cp1", at=0.0))
        await asyncio.sleep(0.05)

asyncio.run(main())
"""


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[[str, int], subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(code: str, port: int) -> subprocess.Popen[bytes]:
        with open(tmp_path / f"proc{len(procs)}.err", "wb") as err:
            proc = subprocess.Popen([sys.executable, "-c", code, str(port)],
                                    stdout=subprocess.DEVNULL, stderr=err)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait(5)


def test_a_killed_ems_withdraws_its_command_at_once(
        mosquitto: Mosquitto, spawn: Callable[[str, int], subprocess.Popen[bytes]]) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        got: list[Command | None] = []
        cp = ChargePointLink(fast(mosquitto), SITE, "cp1", got.append)
        cp.start()
        ems = spawn(_EMS_PROCESS, mosquitto.port)
        await eventually(lambda: cp.command is not None, timeout=10)
        assert cp.ems_online
        ems.send_signal(signal.SIGKILL)
        killed_at = loop.time()
        # The broker publishes the EMS's will; the 60 s command is withdrawn now, not in 60 s.
        await eventually(lambda: got[-1] is None)
        assert loop.time() - killed_at < 5
        assert cp.ems_online is False and cp.command is None
        await cp.close()

    asyncio.run(main())


def test_a_killed_charge_point_goes_offline(
        mosquitto: Mosquitto, spawn: Callable[[str, int], subprocess.Popen[bytes]]) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        ems = EmsLink(fast(mosquitto), SITE, ["cp1"], loop.time)
        ems.start()
        cp = spawn(_CP_PROCESS, mosquitto.port)
        await eventually(lambda: "cp1" in ems.online_cps() and "cp1" in ems.states(),
                         timeout=10)
        cp.send_signal(signal.SIGKILL)
        await eventually(lambda: not ems.online_cps())
        await ems.close()

    asyncio.run(main())


# ---- the broker restarts -----------------------------------------------------------------------


def test_both_ends_reconnect_after_a_broker_restart_and_carry_on(mosquitto: Mosquitto) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with Ends(mosquitto, loop.time) as ends:
            ends.ems.send(COMMAND, 30.0)
            await eventually(lambda: ends.cp.command == COMMAND)
            mosquitto.stop()
            await eventually(lambda: not ends.ems.online and not ends.cp.online)
            assert ends.ems.online_cps() == frozenset()
            await asyncio.sleep(0.3)          # a few failed attempts, backing off
            mosquitto.start()
            # Retained flags died with the broker: the births announce both ends again.
            await eventually(lambda: ends.ems.online_cps() == {"cp1"} and ends.cp.ems_online)
            assert ends.ems.client.connects == ends.cp.client.connects == 2
            assert ends.cp.publish_state(STATE)
            await eventually(lambda: "cp1" in ends.ems.states())
            refreshed = Command("cp1", (EmsLimit("site_fuse", 7.0, "after restart"),))
            ends.ems.send(refreshed, 30.0)
            await eventually(lambda: ends.cp.command == refreshed)
        # Closing the link withdraws the command it can no longer refresh.
        assert ends.got[-1][1] is None

    asyncio.run(main())


# ---- virtual time ------------------------------------------------------------------------------


def test_the_links_on_firmwares_virtual_time_loop(mosquitto: Mosquitto) -> None:
    """Real sockets, virtual timers: the command expires after exactly ``valid_s`` of loop
    time while almost no real time passes, and the EMS stamps states with the virtual clock."""
    clock = VirtualClock()
    loop = VirtualTimeLoop(clock)

    async def main() -> None:
        async with Ends(mosquitto, clock.now) as ends:
            assert ends.cp.publish_state(STATE)
            await eventually(lambda: "cp1" in ends.ems.states())
            assert clock.start < ends.ems.states()["cp1"].at <= clock.now()
            ends.ems.send(COMMAND, valid_s=600.0)
            await eventually(lambda: len(ends.got) == 2, step=5.0)   # step: virtual seconds
            (t1, first), (t2, second) = ends.got
            assert first == COMMAND and second is None
            assert t2 - t1 == pytest.approx(600.0, abs=1e-6)

    try:
        loop.run_until_complete(main())
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
