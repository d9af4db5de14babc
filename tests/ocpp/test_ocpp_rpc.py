"""The OCPP-J frame layer: CALLERROR codes for broken frames, schema errors and unknown actions;
one CALL of ours in flight at a time; answers matched by id."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from firmware.ocpp.rpc import After, CallTimeoutError, OcppCallError, Rpc


class Pipe:
    def __init__(self) -> None:
        self.sent: list[Any] = []
        self.inbox: asyncio.Queue[str] = asyncio.Queue()

    async def send(self, message: str) -> None:
        self.sent.append(json.loads(message))

    async def recv(self) -> str:
        return await self.inbox.get()


async def _echo(p: dict[str, Any]) -> dict[str, Any]:
    return {"status": "Accepted"}


def make(version: str = "2.0.1") -> tuple[Rpc, Pipe]:
    pipe = Pipe()
    rpc = Rpc(pipe, version, {"ClearCache": _echo}, timeout_s=lambda: 0.2)
    return rpc, pipe


def answer_to(raw: str | bytes, version: str = "2.0.1") -> Any:
    rpc, pipe = make(version)
    asyncio.run(rpc.on_frame(raw))
    assert len(pipe.sent) == 1, pipe.sent
    return pipe.sent[0]


@pytest.mark.parametrize(("raw", "code", "message_id"), [
    ("not json", "RpcFrameworkError", "-1"),
    (b"\xff\xfe", "RpcFrameworkError", "-1"),
    ("{}", "RpcFrameworkError", "-1"),
    ("[]", "RpcFrameworkError", "-1"),
    ("[2]", "RpcFrameworkError", "-1"),
    ('[2, 17, "ClearCache", {}]', "RpcFrameworkError", "-1"),
    ('[5, "a", "ClearCache", {}]', "MessageTypeNotSupported", "a"),
    ('[2, "a", "ClearCache"]', "RpcFrameworkError", "a"),
    ('[2, "a", "ClearCache", []]', "FormatViolation", "a"),
    ('[2, "a", "NoSuchAction", {}]', "NotImplemented", "a"),
    ('[2, "a", "Reset", {"type": "Immediate"}]', "NotSupported", "a"),
    ('[2, "a", "ClearCache", {"bogus": 1}]', "FormatViolation", "a"),
    ('[2, "a", "GetLocalListVersion", {"customData": 5}]', "NotSupported", "a"),
])
def test_broken_frames_get_the_right_callerror(raw: str, code: str, message_id: str) -> None:
    frame = answer_to(raw)
    assert frame[0] == 4 and frame[1] == message_id and frame[2] == code


def test_schema_violations_map_to_occurrence_type_and_property_codes() -> None:
    async def main() -> list[Any]:
        pipe = Pipe()
        rpc = Rpc(pipe, "2.0.1", {"Reset": _echo, "UnlockConnector": _echo},
                  timeout_s=lambda: 0.2)
        for raw in ('[2, "1", "Reset", {}]',
                    '[2, "2", "Reset", {"type": 5}]',
                    '[2, "3", "Reset", {"type": "Sometime"}]',
                    '[2, "4", "UnlockConnector", {"evseId": 1, "connectorId": 1}]'):
            await rpc.on_frame(raw)
        return pipe.sent

    sent = asyncio.run(main())
    assert [f[2] for f in sent[:3]] == ["OccurrenceConstraintViolation",
                                        "TypeConstraintViolation",
                                        "PropertyConstraintViolation"]
    # The handler's answer fails the UnlockConnector response schema: an InternalError is
    # sent instead of an invalid frame.
    assert sent[3][2] == "InternalError"


def test_handler_errors_become_callerrors_and_after_runs_after_the_answer() -> None:
    async def main() -> list[Any]:
        pipe = Pipe()
        order: list[str] = []

        async def boom(p: dict[str, Any]) -> dict[str, Any]:
            raise RuntimeError("bug")

        async def refused(p: dict[str, Any]) -> dict[str, Any]:
            raise OcppCallError("SecurityError", "not allowed")

        async def later(p: dict[str, Any]) -> After:
            async def then() -> None:
                order.append(f"then after {len(pipe.sent)} frames")
            return After({"status": "Accepted"}, then)

        rpc = Rpc(pipe, "2.0.1", {"ClearCache": boom, "GetLocalListVersion": refused,
                                  "Reset": later}, timeout_s=lambda: 0.2)
        await rpc.on_frame('[2, "1", "ClearCache", {}]')
        await rpc.on_frame('[2, "2", "GetLocalListVersion", {}]')
        await rpc.on_frame('[2, "3", "Reset", {"type": "OnIdle"}]')
        await asyncio.sleep(0.01)
        return [*pipe.sent, order]

    sent = asyncio.run(main())
    assert sent[0][2] == "InternalError"
    assert sent[1][2] == "SecurityError"
    assert sent[2] == [3, "3", {"status": "Accepted"}]
    assert sent[3] == ["then after 3 frames"]


def test_call_matches_answers_by_id_one_at_a_time_and_times_out() -> None:
    async def main() -> None:
        rpc, pipe = make()
        serve = asyncio.get_running_loop().create_task(rpc.serve())
        first = asyncio.get_running_loop().create_task(rpc.call("Heartbeat", {}))
        second = asyncio.get_running_loop().create_task(rpc.call("Heartbeat", {}))
        await asyncio.sleep(0.01)
        assert len(pipe.sent) == 1  # the second waits for the first's answer
        call_id = pipe.sent[0][1]
        await pipe.inbox.put(json.dumps([3, "someone-else", {}]))
        await pipe.inbox.put(json.dumps([3, call_id, {"currentTime": "2026-01-01T00:00:00Z"}]))
        assert (await first)["currentTime"].startswith("2026")
        await asyncio.sleep(0.01)
        second_id = pipe.sent[1][1]
        await pipe.inbox.put(json.dumps([4, second_id, "SecurityError", "no", {}]))
        with pytest.raises(OcppCallError) as err:
            await second
        assert err.value.code == "SecurityError"
        with pytest.raises(CallTimeoutError):
            await rpc.call("Heartbeat", {})
        # An answer that breaks the response schema is an error, not a result.
        third = asyncio.get_running_loop().create_task(rpc.call("Heartbeat", {}))
        await asyncio.sleep(0.01)
        await pipe.inbox.put(json.dumps([3, pipe.sent[-1][1], {"currentTime": 5}]))
        with pytest.raises(OcppCallError):
            await third
        with pytest.raises(ValueError, match="invalid"):
            await rpc.call("Heartbeat", {"bogus": True})
        serve.cancel()

    asyncio.run(main())


def test_schema_errors_do_not_quote_the_offending_value() -> None:
    secret = "hunter2-" * 200
    frame = answer_to(json.dumps([2, "s", "ClearCache", {"customData": {"vendorId": secret}}]))
    assert frame[2] == "PropertyConstraintViolation"
    assert "hunter2" not in json.dumps(frame)
