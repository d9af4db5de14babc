"""OCPP-J RPC over one websocket: frames in and out, schema checks, CALLERROR codes.

The `ocpp` library supplies the message classes (Call, CallResult, CallError) and the official
JSON schemas with their validators. Its ChargePoint router is not used: it passes handlers
snake_case keyword arguments (our modules work on the spec's camelCase JSON), logs every payload
(which would put BasicAuthPassword values into our logs), ignores frames it cannot parse instead
of answering them, and maps schema errors to codes the spec reserves for other cases. The routing
here is small, and the error codes follow OCPP-J 2.0.1 part 4, section 4.2.3.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import traceback
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import ocpp.messages
from jsonschema.exceptions import ValidationError as SchemaError
from ocpp.messages import Call, CallError, CallResult, get_validator
from websockets.exceptions import ConnectionClosed

from firmware import logs
from firmware.ocpp.tasks import Tasks

# Validate in the loop's own thread: payloads are small (a few hundred microseconds), and an
# executor thread would compete with the safety loop for the GIL.
ocpp.messages.ASYNC_VALIDATION = False

Payload = dict[str, Any]
Handler = Callable[[Payload], Awaitable[Payload]]

# The messageId to use when the frame is too broken to read one (OCPP-J 2.0.1, 4.2.3).
UNKNOWN_ID = "-1"


class Transport(Protocol):
    async def send(self, message: str) -> None: ...
    async def recv(self) -> str | bytes: ...
    async def close(self) -> None: ...


class OcppCallError(Exception):
    """A CALLERROR to answer (from a handler) or that the CSMS answered (from call())."""

    def __init__(self, code: str, description: str = "", details: Payload | None = None) -> None:
        super().__init__(f"{code}: {description}")
        self.code = code
        self.description = description
        self.details = details or {}


class CallTimeoutError(Exception):
    """No answer to our CALL within the message timeout."""


@dataclass(frozen=True, slots=True)
class After:
    """A handler's answer plus work to do once the answer is on the wire (a CALL of our own
    that the spec orders after the response, e.g. NotifyReport after GetBaseReport)."""

    response: Payload
    then: Callable[[], Awaitable[None]]


class Rpc:
    """One OCPP-J session on a connected websocket. ``version`` is "2.0.1" or "2.1"."""

    def __init__(self, transport: Transport, version: str,
                 handlers: dict[str, Callable[[Payload], Awaitable[Payload | After]]],
                 *, timeout_s: Callable[[], float], log_name: str = "ocpp.rpc") -> None:
        self.transport = transport
        self.version = version
        self.handlers = handlers
        self._timeout_s = timeout_s
        self._pending: dict[str, asyncio.Future[Payload]] = {}
        # OCPP-J allows one CALL of ours in flight at a time.
        self._one_at_a_time = asyncio.Lock()
        self.log = logs.get(log_name)
        self._tasks = Tasks(self.log, "follow_up_failed", logging.WARNING)
        self.errors_sent = 0

    # ---- receiving ------------------------------------------------------------------------

    async def serve(self) -> None:
        """Read frames until the connection closes (raises websockets' ConnectionClosed)."""
        while True:
            raw = await self.transport.recv()
            try:
                await self.on_frame(raw)
            except ConnectionClosed:
                raise
            except Exception as exc:  # one bad frame must not end the session
                logs.log(self.log, "frame_failed", logging.ERROR, error=repr(exc),
                         trace=traceback.format_exc(limit=8))

    async def on_frame(self, raw: str | bytes) -> None:
        try:
            # Strict UTF-8: json.loads(bytes) would let lone surrogates through.
            frame = json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
        except (ValueError, RecursionError):
            await self._error(UNKNOWN_ID, "RpcFrameworkError", "frame is not valid JSON")
            return
        if not isinstance(frame, list) or not frame:
            await self._error(UNKNOWN_ID, "RpcFrameworkError", "frame is not a JSON array")
            return
        kind = frame[0]
        message_id = frame[1] if len(frame) > 1 and isinstance(frame[1], str) else None
        if message_id is None:
            await self._error(UNKNOWN_ID, "RpcFrameworkError", "messageId missing or not a "
                              "string")
            return
        if kind in (CallResult.message_type_id, CallError.message_type_id):
            self._on_answer(frame, message_id)
            return
        if kind != Call.message_type_id:
            await self._error(message_id, "MessageTypeNotSupported",
                              f"message type {kind!r} is not supported")
            return
        if len(frame) != 4 or not isinstance(frame[2], str):
            await self._error(message_id, "RpcFrameworkError",
                              "a CALL is [2, messageId, action, payload]")
            return
        if not isinstance(frame[3], dict):
            await self._error(message_id, "FormatViolation", "payload is not a JSON object")
            return
        await self._on_call(Call(message_id, frame[2], frame[3]))

    async def _on_call(self, call: Call) -> None:
        action = call.action
        try:
            if not _ACTION.fullmatch(action):
                raise FileNotFoundError(action)
            schema_error = _check(call, self.version)
        except FileNotFoundError:
            await self._error(call.unique_id, "NotImplemented",
                              f"{action[:64]!r} is not an OCPP {self.version} message")
            return
        handler = self.handlers.get(action)
        if handler is None:
            await self._error(call.unique_id, "NotSupported",
                              f"{action} is not supported by this charging station")
            return
        if schema_error is None:
            schema_error = _beyond_json(call.payload)
        if schema_error is not None:
            await self._error(call.unique_id, *schema_error)
            return
        logs.log(self.log, "call_received", action=action, id=call.unique_id)
        try:
            answer = await handler(call.payload)
        except OcppCallError as exc:
            await self._error(call.unique_id, exc.code, exc.description, exc.details)
            return
        except Exception as exc:  # a handler bug must not end the session
            logs.log(self.log, "handler_failed", logging.ERROR, action=action,
                     id=call.unique_id, error=repr(exc), trace=traceback.format_exc(limit=8))
            await self._error(call.unique_id, "InternalError", f"{action} failed")
            return
        response, then = ((answer.response, answer.then) if isinstance(answer, After)
                          else (answer, None))
        result = call.create_call_result(response)
        problem = _check(result, self.version)
        if problem is not None:
            # Our own bug: say so to the CSMS rather than send what the schema forbids.
            logs.log(self.log, "invalid_response", logging.ERROR, action=action,
                     error=problem[1])
            await self._error(call.unique_id, "InternalError",
                              f"the station produced an invalid {action} response")
            return
        await self.transport.send(result.to_json())
        if then is not None:
            self._tasks.spawn(then())

    def _on_answer(self, frame: list[Any], message_id: str) -> None:
        future = self._pending.get(message_id)
        if future is None or future.done():
            logs.log(self.log, "unexpected_answer", logging.WARNING, id=message_id)
            return
        if frame[0] == CallResult.message_type_id:
            payload = frame[2] if len(frame) > 2 else None
            if isinstance(payload, dict):
                future.set_result(payload)
            else:
                future.set_exception(OcppCallError("FormatViolation",
                                                   "CALLRESULT payload is not an object"))
            return
        code = frame[2] if len(frame) > 2 and isinstance(frame[2], str) else "GenericError"
        description = frame[3] if len(frame) > 3 and isinstance(frame[3], str) else ""
        details = frame[4] if len(frame) > 4 and isinstance(frame[4], dict) else {}
        future.set_exception(OcppCallError(code, description, details))

    async def _error(self, message_id: str, code: str, description: str,
                     details: Payload | None = None) -> None:
        self.errors_sent += 1
        logs.log(self.log, "call_error_sent", logging.WARNING, id=message_id, code=code,
                 description=description)
        # Descriptions are capped: the CSMS may have sent a huge frame to provoke a huge answer.
        frame = CallError(message_id, code, description[:255], details or {})
        await self.transport.send(frame.to_json())

    # ---- sending --------------------------------------------------------------------------

    async def call(self, action: str, payload: Payload, *, unique_id: str | None = None,
                   timeout_s: float | None = None, checked: bool = False) -> Payload:
        """Send a CALL and return the CALLRESULT payload. ``checked``: the payload was
        validated when it was queued (see check_request), so a replay does not pay for it again.

        Raises OcppCallError for a CALLERROR (or a response that fails its schema),
        CallTimeoutError when no answer comes, and websockets' ConnectionClosed when the link drops.
        """
        call = Call(unique_id or _new_id(), action, payload)
        if not checked:
            check_request(action, payload, self.version)
        async with self._one_at_a_time:
            future: asyncio.Future[Payload] = asyncio.get_running_loop().create_future()
            self._pending[call.unique_id] = future
            try:
                await self.transport.send(call.to_json())
                logs.log(self.log, "call_sent", action=action, id=call.unique_id)
                try:
                    answer = await asyncio.wait_for(
                        future, timeout_s if timeout_s is not None else self._timeout_s())
                except TimeoutError as exc:
                    raise CallTimeoutError(f"no answer to {action} {call.unique_id}") from exc
            finally:
                self._pending.pop(call.unique_id, None)
        result = CallResult(call.unique_id, answer, action)
        problem = _check(result, self.version)
        if problem is not None:
            raise OcppCallError(problem[0], f"{action} response: {problem[1]}")
        return answer

    async def transport_close(self) -> None:
        """End the connection (the link reconnects, e.g. with a new client certificate)."""
        await self.transport.close()

    def close(self) -> None:
        for future in self._pending.values():
            if not future.done():
                future.cancel()
        self._tasks.cancel()


def check_request(action: str, payload: Payload, version: str) -> None:
    """ValueError when we would send a request its schema forbids (a bug of ours)."""
    problem = _check(Call("-", action, payload), version)
    if problem is not None:
        raise ValueError(f"refusing to send an invalid {action}: {problem[1]}")


# An action is a message name: letters and digits. Anything else never reaches a file lookup.
_ACTION = re.compile(r"[A-Za-z0-9]{1,64}")
INT32 = (-(2**31), 2**31 - 1)


def _beyond_json(value: Any, path: str = "payload") -> tuple[str, str] | None:
    """Values the schema lets through but OCPP cannot carry: NaN and infinities (Python's JSON
    parser accepts them), integers beyond OCPP's 32 bits, strings that are not Unicode text."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return "TypeConstraintViolation", f"{path}: not a finite number"
    if isinstance(value, int) and not INT32[0] <= value <= INT32[1]:
        return "TypeConstraintViolation", f"{path}: integer outside 32 bits"
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "FormatViolation", f"{path}: not valid Unicode text"
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            problem = _beyond_json(item, f"{path}/{key}")
            if problem is not None:
                return problem
    elif isinstance(value, list):
        for i, item in enumerate(value):
            problem = _beyond_json(item, f"{path}/{i}")
            if problem is not None:
                return problem
    return None


def _check(message: Call | CallResult, version: str) -> tuple[str, str] | None:
    """The CALLERROR code and text for a payload its schema rejects; None when it is valid.
    FileNotFoundError when the action has no schema in this version."""
    try:
        validator = get_validator(message.message_type_id, message.action, version)
    except (OSError, ValueError) as exc:
        raise FileNotFoundError(message.action) from exc
    error: SchemaError | None = next(iter(validator.iter_errors(message.payload)), None)
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path) or "payload"
    # Not error.message: it quotes the offending value, which may be a secret (a password in
    # SetVariables) and would go into our log and back on the wire.
    what = error.message if error.validator == "required" else f"fails '{error.validator}'"
    return _CODES.get(str(error.validator), "FormatViolation"), f"{where}: {what}"[:255]


# JSON-schema keyword → OCPP-J error code (part 4, table "Valid Error Codes").
_CODES = {
    "type": "TypeConstraintViolation",
    "required": "OccurrenceConstraintViolation",
    "minItems": "OccurrenceConstraintViolation",
    "maxItems": "OccurrenceConstraintViolation",
    "enum": "PropertyConstraintViolation",
    "maxLength": "PropertyConstraintViolation",
    "minLength": "PropertyConstraintViolation",
    "minimum": "PropertyConstraintViolation",
    "maximum": "PropertyConstraintViolation",
    "format": "PropertyConstraintViolation",
    "pattern": "PropertyConstraintViolation",
    "additionalProperties": "FormatViolation",
}


def _new_id() -> str:
    return str(uuid.uuid4())
