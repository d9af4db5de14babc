"""Smoke test of the ocpp-rpc CSMS peer itself, with a minimal charge point built from the
`ocpp` library: the peer answers, drives CSMS calls, and catches schema violations both ways."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import ocpp_rpc_peer
import pytest
from ocpp.exceptions import NotSupportedError, OCPPError
from ocpp.routing import on
from ocpp.v21 import ChargePoint as ChargePoint21
from ocpp.v21 import call as call21
from ocpp.v21 import call_result as result21
from ocpp.v201 import ChargePoint as ChargePoint201
from ocpp.v201 import call as call201
from ocpp.v201 import call_result as result201
from ocpp_rpc_peer import (
    CallFailure,
    OcppRpcCallError,
    OcppRpcCallFailedError,
    OcppRpcPeer,
    PeerUnavailableError,
)
from websockets.asyncio.client import connect

F = TypeVar("F", bound=Callable[..., Any])


def handles(action: str, *, skip_schema_validation: bool = False) -> Callable[[F], F]:
    """`ocpp.routing.on`, typed."""
    decorator: Callable[[F], F] = on(action, skip_schema_validation=skip_schema_validation)
    return decorator


class MiniHandlers:
    """The few CSMS->CP actions the smoke test drives; `results` is the version's module."""

    results: Any

    @handles("GetVariables")
    def on_get_variables(self, get_variable_data: list[dict[str, Any]]) -> Any:
        return self.results.GetVariables(get_variable_result=[
            {"attribute_status": "Accepted", "attribute_value": "300",
             "component": item["component"], "variable": item["variable"]}
            for item in get_variable_data])

    # ocpp 2.1.0 sends no CALLERROR at all for an action without a handler on a v21
    # ChargePoint (its _raise_key_error knows only 1.6/2.0/2.0.1), so raise one explicitly.
    @handles("ClearCache")
    def on_clear_cache(self) -> Any:
        raise NotSupportedError(description="no authorization cache here")

    # Deliberately answers with a status outside ResetStatusEnumType.
    @handles("Reset", skip_schema_validation=True)
    def on_reset(self, type: str, **_: Any) -> Any:
        return self.results.Reset(status="Sometime")


class Mini201(MiniHandlers, ChargePoint201):  # type: ignore[misc]
    results = result201


class Mini21(MiniHandlers, ChargePoint21):  # type: ignore[misc]
    results = result21


VERSIONS: dict[str, tuple[type[MiniHandlers], Any]] = {
    "ocpp2.0.1": (Mini201, call201),
    "ocpp2.1": (Mini21, call21),
}


def make_charge_point(protocol: str, identity: str, ws: Any) -> Any:
    cls: Any = VERSIONS[protocol][0]
    return cls(identity, ws)


async def exercise(peer: OcppRpcPeer, protocol: str) -> None:
    identity = f"CP-{protocol}"
    call = VERSIONS[protocol][1]
    async with connect(f"{peer.url}/{identity}", subprotocols=[protocol]) as ws:  # type: ignore[list-item]
        cp = make_charge_point(protocol, identity, ws)
        serve = asyncio.create_task(cp.start())
        try:
            assert await peer.wait_connected(identity) == protocol

            boot = await cp.call(call.BootNotification(
                charging_station={"model": "VP-1", "vendor_name": "voltpilot"}, reason="PowerUp"))
            assert (boot.status, boot.interval) == ("Accepted", 300)
            await cp.call(call.Heartbeat())
            await cp.call(call.StatusNotification(
                timestamp="2026-01-01T00:00:00Z", connector_status="Available",
                evse_id=1, connector_id=1))
            seen = await peer.next_call("BootNotification", identity=identity)
            assert seen["protocol"] == protocol
            assert seen["payload"]["chargingStation"]["vendorName"] == "voltpilot"
            assert len(peer.calls("StatusNotification", identity)) == 1

            result = await peer.call(identity, "GetVariables", {"getVariableData": [
                {"component": {"name": "OCPPCommCtrlr"},
                 "variable": {"name": "HeartbeatInterval"}}]})
            assert result["getVariableResult"][0]["attributeValue"] == "300"

            with pytest.raises(OCPPError) as rejected:
                await cp.call(call.StatusNotification(
                    timestamp="yesterday", connector_status="Sleeping", evse_id=1, connector_id=1),
                    suppress=False, skip_schema_validation=True)
            assert rejected.value.code == "FormatViolation"

            with pytest.raises(OcppRpcCallFailedError) as invalid:
                await peer.call(identity, "Reset", {"type": "Immediate"})
            assert invalid.value.reason is CallFailure.INVALID_RESPONSE

            with pytest.raises(OcppRpcCallError) as unsupported:
                await peer.call(identity, "ClearCache", {})
            assert unsupported.value.code == "NotSupported"

            mine = [e for e in peer.errors if e["identity"] == identity]
            assert [(e["kind"], e["direction"], e["action"]) for e in mine] == [
                ("call", "cp->csms", "StatusNotification"),
                ("response", "cp->csms", "Reset")]
            assert mine[0]["code"] == "FormatViolation"
            assert "timestamp" in mine[0]["message"]

            await peer.close_client(identity)
            await peer.wait_disconnected(identity)
        finally:
            serve.cancel()
            await asyncio.gather(serve, return_exceptions=True)


def test_peer_validates_both_directions_for_201_and_21() -> None:
    async def main() -> None:
        async with OcppRpcPeer(("ocpp2.1", "ocpp2.0.1")) as peer:
            await asyncio.gather(exercise(peer, "ocpp2.0.1"), exercise(peer, "ocpp2.1"))
            assert {e["protocol"] for e in peer.connections()} == {"ocpp2.0.1", "ocpp2.1"}
            assert not any(e["kind"] == "unhandled" for e in peer.errors)

    asyncio.run(main())


def test_peer_prefers_21_and_overrides_answers() -> None:
    async def main() -> None:
        async with OcppRpcPeer() as peer:
            await peer.set_response("BootNotification", {
                "currentTime": "2026-01-01T00:00:00Z", "interval": 7, "status": "Pending"})
            async with connect(f"{peer.url}/CP-pref",
                               subprotocols=["ocpp2.1", "ocpp2.0.1"]) as ws:  # type: ignore[list-item]
                assert ws.subprotocol == "ocpp2.1"
                cp = make_charge_point("ocpp2.1", "CP-pref", ws)
                serve = asyncio.create_task(cp.start())
                boot = await cp.call(call21.BootNotification(
                    charging_station={"model": "VP-1", "vendor_name": "voltpilot"},
                    reason="PowerUp"))
                assert (boot.status, boot.interval) == ("Pending", 7)
                serve.cancel()
                await asyncio.gather(serve, return_exceptions=True)
            await peer.wait_disconnected("CP-pref")
            assert peer.errors == []

    asyncio.run(main())


def test_missing_npm_packages_fail_with_setup_hint(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "package.json").write_text(json.dumps({"dependencies": {"ocpp-rpc": "2.2.1"}}))
    monkeypatch.setattr(ocpp_rpc_peer, "PEER_DIR", tmp_path)

    async def main() -> None:
        async with OcppRpcPeer():
            pass

    with pytest.raises(PeerUnavailableError, match="make setup"):
        asyncio.run(main())


def test_peer_basic_auth_and_subprotocol_checks() -> None:
    from websockets.exceptions import InvalidStatus

    async def main() -> None:
        async with OcppRpcPeer(("ocpp2.0.1",), password="s3cret-pass") as peer:
            host = peer.url.removeprefix("ws://")
            with pytest.raises(InvalidStatus) as no_auth:
                async with connect(f"{peer.url}/CP-auth", subprotocols=["ocpp2.0.1"]):  # type: ignore[list-item]
                    pass
            assert no_auth.value.response.status_code == 401
            with pytest.raises(InvalidStatus) as wrong_version:
                async with connect(f"ws://CP-auth:s3cret-pass@{host}/CP-auth",
                                   subprotocols=["ocpp2.1"]):  # type: ignore[list-item]
                    pass
            assert wrong_version.value.response.status_code == 400
            async with connect(f"ws://CP-auth:s3cret-pass@{host}/CP-auth",
                               subprotocols=["ocpp2.0.1"]):  # type: ignore[list-item]
                assert await peer.wait_connected("CP-auth") == "ocpp2.0.1"
            assert [e["status"] for e in peer.events if e["event"] == "rejected"] == [401, 400]

    asyncio.run(main())
