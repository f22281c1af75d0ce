"""``response.steer`` over gRPC ``Connect``'s typed codec: ``ClientEvent.steer`` in, typed ``steer_*`` events out.

The steering contract of ``test_connection.py`` (there over WebSocket and the json codec), driven with typed
messages only: ``CreateRequest`` and ``SteerRequest`` in, and every event that comes back must be a typed
``ServerEvent`` (never ``json``). The connection checks a typed steer as the JSON event, so the same
``response.steer.failed`` codes come back, with the input handed back. Real TLS sockets on 127.0.0.1, port 0.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest

from servers.base import RunningServer
from servers.grpc_server import ERROR_CODE_KEY
from tests.conftest import TIMEOUT_FACTOR
from tests.contract.test_connection import GrpcDriver, create, open_grpc, steer
from turnbench.schema import TERMINAL_TYPES, SteerAccepted, SteerError, SteerFailed, SteerPending, SteerRef
from turnbench.v1 import responses_pb2 as pb
from turnbench.v1.convert import body_to_proto, event_from_proto, event_to_proto, steer_from_proto, steer_to_proto

pytestmark = pytest.mark.timeout(90 * TIMEOUT_FACTOR)

TOOLS = [
    {
        "type": "function",
        "name": "read_file",
        "parameters": {"type": "object", "properties": {"path": {"type": "string"}}},
    }
]


class TypedDriver(GrpcDriver):
    """A ``Connect`` stream in the typed codec: a client event (the JSON shape, for the test's reading) goes out
    as ``ClientEvent.create`` or ``ClientEvent.steer``; every event must come back typed."""

    async def send(self, event: dict[str, Any]) -> None:
        if event.get("type") == "response.steer":
            message = pb.ClientEvent(steer=steer_to_proto(event))
        else:
            message = pb.ClientEvent(create=body_to_proto(event))
        try:
            await self.call.write(message.SerializeToString())
        except grpc.aio.AioRpcError as exc:  # the call had ended: recv() says how
            self._ended_by(exc)

    async def send_steer(self, message: pb.SteerRequest) -> None:
        """A ``SteerRequest`` as built (one the JSON shape cannot describe: an unset input)."""
        await self.call.write(pb.ClientEvent(steer=message).SerializeToString())

    def decode(self, event: pb.ServerEvent) -> dict[str, Any]:
        assert event.WhichOneof("event") not in (None, "json"), event  # answered in the codec it was asked in
        return super().decode(event)


@asynccontextmanager
async def open_typed(server: RunningServer) -> AsyncIterator[TypedDriver]:
    async with open_grpc(server, None) as conn:
        assert isinstance(conn, GrpcDriver)
        yield TypedDriver(conn.call)


async def next_event(conn: TypedDriver) -> dict[str, Any]:
    event = await conn.recv()
    assert event is not None, conn.ended
    return event


async def until_terminal(conn: TypedDriver) -> dict[str, Any]:
    while (event := await next_event(conn))["type"] not in TERMINAL_TYPES:
        pass
    return event


async def still_serving(conn: TypedDriver) -> None:
    await conn.send(create(None, answer_tokens=2))
    assert (await until_terminal(conn))["type"] == "response.completed"


# ---------------------------------------------------------------------------------------------- conversion


STEER_EVENTS = [
    SteerAccepted(sequence_number=0, steer=SteerRef(id="steer_1", previous_response_id="resp_1"), stream_id="work"),
    SteerPending(
        sequence_number=0,
        steer=SteerRef(id="steer_2", previous_response_id="resp_1"),
        reason="waiting_for_required_input",
        required_input=[{"type": "function_call_output", "call_id": "call_1", "name": "read_file"}],
        stream_id="agent",
    ),
    SteerFailed(
        sequence_number=0,
        steer=SteerRef(previous_response_id="resp_1", input="Stop."),
        error=SteerError(code="response_not_found", message="No response 'resp_1' is running on this connection."),
    ),
    SteerFailed(
        sequence_number=0,
        steer=SteerRef(previous_response_id="r", input=[{"type": "message", "role": "assistant", "content": "no"}]),
        error=SteerError(code="invalid_input", message="input[0]: steering accepts only messages with the user role"),
        stream_id="x",
    ),
    SteerFailed(  # an input the typed items cannot carry (an empty item, a message without content): JSON text
        sequence_number=0,
        steer=SteerRef(previous_response_id="", input=[{}, {"type": "message", "role": "user"}]),
        error=SteerError(code="invalid_input", message="bad"),
    ),
]


@pytest.mark.parametrize("event", STEER_EVENTS, ids=lambda e: type(e).__name__)
def test_steer_events_round_trip_through_the_typed_codec(event: Any) -> None:
    se = pb.ServerEvent.FromString(event_to_proto(event).SerializeToString())
    assert se.WhichOneof("event") == "steer_" + type(event).__struct_config__.tag.rsplit(".", 1)[-1]
    assert event_from_proto(se) == event


def test_a_steer_request_becomes_the_json_events_members() -> None:
    items = [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "shorter"}]}]
    for value in ("Stop.", "", items, []):
        members = steer("resp_1", value)
        assert steer_from_proto(pb.SteerRequest.FromString(steer_to_proto(members).SerializeToString())) == members
    assert steer_from_proto(pb.SteerRequest()) == {"type": "response.steer", "previous_response_id": ""}


# ---------------------------------------------------------------------------------------------- over Connect


async def test_a_typed_steer_ends_the_answer_incomplete_and_its_successor_starts_by_itself(serve):
    server = await serve("grpc", profile="frontier")  # ~65 tok/s: a 300-token answer runs for seconds
    async with open_typed(server) as conn:
        await conn.send(create("work", answer_tokens=300, input="write the long report"))
        first = await next_event(conn)
        assert first["type"] == "response.created"
        rid = first["response"]["id"]
        while (await next_event(conn))["type"] != "response.output_text.delta":
            pass  # it is answering
        await conn.send(steer(rid))
        seen: list[dict[str, Any]] = []
        while sum(e["type"] in TERMINAL_TYPES for e in seen) < 2:
            seen.append(await next_event(conn))
        kinds = [e["type"] for e in seen]
        accepted = next(e for e in seen if e["type"] == "response.steer.accepted")
        assert accepted["steer"]["previous_response_id"] == rid and accepted["steer"]["id"].startswith("steer_")
        assert accepted["stream_id"] == "work" and "input" not in accepted["steer"]
        steered = next(e for e in seen if e["type"] == "response.incomplete")
        assert steered["response"]["id"] == rid and steered["response"]["incomplete_details"]["reason"] == "steered"
        assert steered["response"]["usage"]["output_tokens"] < 300  # it stopped early
        (successor_created,) = [e for e in seen if e["type"] == "response.created"]
        assert kinds.index("response.created") > kinds.index("response.incomplete")
        successor = successor_created["response"]
        assert successor["previous_response_id"] == rid and successor_created["stream_id"] == "work"
        done = seen[-1]
        assert done["type"] == "response.completed" and done["response"]["id"] == successor["id"]
        assert done["stream_id"] == "work"
        # the steering message is in the successor's context: more than the steered response's own
        assert done["response"]["usage"]["input_tokens"] > steered["response"]["usage"]["input_tokens"]
        await still_serving(conn)


async def test_typed_steer_errors_are_typed_and_the_connection_goes_on(serve):
    server = await serve("grpc")
    async with open_typed(server) as conn:
        await conn.send(steer("resp_nope"))
        failed = await next_event(conn)
        assert failed["type"] == "response.steer.failed" and failed["error"]["code"] == "response_not_found"
        assert failed["error"]["type"] == "invalid_request_error"
        assert failed["steer"] == {"previous_response_id": "resp_nope", "input": "Stop: answer in one word instead."}
        await conn.send(create(None, answer_tokens=2))
        rid = (await until_terminal(conn))["response"]["id"]
        await conn.send(steer(rid))
        late = await next_event(conn)
        assert late["type"] == "response.steer.failed" and late["error"]["code"] == "response_already_completed"
        assert late["steer"]["previous_response_id"] == rid
        assistant = [{"type": "message", "role": "assistant", "content": "no"}]
        tool_output = [{"type": "function_call_output", "call_id": "call_1", "output": "x"}]
        for bad in (
            steer(rid, assistant),
            steer(rid, []),
            steer(rid, ""),
            steer(rid, tool_output),
            steer(rid, [{"type": "message", "role": "user", "content": "hi", "id": "msg_1"}]),  # only type/role/content
            steer("", "no target"),
        ):
            await conn.send(bad)
            ev = await next_event(conn)
            assert ev["type"] == "response.steer.failed" and ev["error"]["code"] == "invalid_input", (bad, ev)
            assert ev["steer"]["input"] == bad["input"]  # the input is handed back, as it came
        await conn.send_steer(pb.SteerRequest(previous_response_id=rid))  # no input at all
        ev = await next_event(conn)
        assert ev["type"] == "response.steer.failed" and ev["error"]["code"] == "invalid_input"
        assert "input" not in ev["steer"]
        await still_serving(conn)


async def test_a_typed_steer_on_a_tool_call_waits_for_its_output_then_joins_the_continuation(serve):
    server = await serve("grpc", profile="frontier")
    async with open_typed(server) as conn:
        meta = {"tool_calls": "1", "answer_tokens": "4"}
        await conn.send(create("agent", input="read it", tools=TOOLS, metadata=meta))
        first = await next_event(conn)
        assert first["type"] == "response.created"
        rid = first["response"]["id"]
        await conn.send(steer(rid, "Also check the tests."))
        seen: list[dict[str, Any]] = []
        while not any(e["type"] == "response.steer.pending" for e in seen):
            seen.append(await next_event(conn))
        kinds = [e["type"] for e in seen]
        assert "response.steer.accepted" in kinds
        assert kinds.index("response.completed") < kinds.index("response.steer.pending")
        done = next(e for e in seen if e["type"] == "response.completed")["response"]
        call = done["output"][0]
        pending = seen[-1]
        accepted = next(e for e in seen if e["type"] == "response.steer.accepted")
        assert pending["steer"] == {"id": accepted["steer"]["id"], "previous_response_id": rid}
        assert pending["reason"] == "waiting_for_required_input" and pending["stream_id"] == "agent"
        assert pending["required_input"] == [
            {"type": "function_call_output", "call_id": call["call_id"], "name": call["name"]}
        ]
        out = {"type": "function_call_output", "call_id": call["call_id"], "output": "file text"}
        await conn.send(create("agent", input=[out], tools=TOOLS, metadata=meta, previous_response_id=rid))
        cont = await until_terminal(conn)
        assert cont["type"] == "response.completed" and cont["response"]["previous_response_id"] == rid
        # the steering message went in ahead of the tool output: the continuation's context holds both
        assert cont["response"]["usage"]["input_tokens"] > done["usage"]["input_tokens"] + 5
        await still_serving(conn)


async def test_a_typed_steer_on_a_stateless_call_is_refused(serve):
    """``CreateJson`` is one stateless request: there is no running response to steer."""
    server = await serve("grpc")
    assert server.tls is not None
    creds = grpc.ssl_channel_credentials(server.tls.ca_pem_bytes)
    async with grpc.aio.secure_channel(server.url, creds) as ch:
        request = pb.ClientEvent(steer=steer_to_proto(steer("resp_1"))).SerializeToString()
        call = ch.unary_stream("/turnbench.v1.Responses/CreateJson")(request)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call.read()
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert dict(info.value.trailing_metadata() or ())[ERROR_CODE_KEY] == "unknown_event_type"
