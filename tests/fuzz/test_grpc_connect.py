"""Fuzz gRPC ``Connect`` with bad and odd messages, typed and json codec, while lane ``keep`` runs a long response.

Typed: ``CreateRequest`` messages with odd contents (bad JSON in ``tool.parameters``, ``tool_choice.json``,
``parts_json``, annotations; int64 extremes; odd roles and lanes), hand-framed fields the protobuf API will not
write (invalid UTF-8 in a string field, a wrong wire type), mutated and random bytes. Json codec: the WebSocket
frames of ``test_ws_frames`` in ``ClientEvent.json``. The invariants are WebSocket mode's: an answer or an
in-stream ``error`` event (4xx) on the right lane, no failed response, no class names, the stream never ends
(no UNKNOWN or INTERNAL status), a good request is answered after each example, the ``keep`` response completes.
"""

from __future__ import annotations

import asyncio

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from servers.base import RunningServer
from tests.fuzz.conftest import QUIET, TEST_TIMEOUT_S, StartFn, fuzz
from tests.fuzz.strategies import (
    KEEP_LANE,
    Body,
    bodies,
    compact,
    expected_lane_typed,
    lanes_json,
    substitute,
    substitute_typed,
    typed_messages,
)
from tests.fuzz.wire import Frame, GrpcLink, KeepLane, MakeFrame, connection_case
from turnbench.v1 import responses_pb2 as pb
from turnbench.v1.convert_request import bytes_field

pytestmark = [pytest.mark.timeout(TEST_TIMEOUT_S), QUIET]

KEEP_META = {"answer_tokens": "3000", "tool_calls": "0"}
KEEP_TYPED = pb.ClientEvent(
    create=pb.CreateRequest(model="m", text="keep going", store=False, stream_id=KEEP_LANE, metadata=KEEP_META)
).SerializeToString()
KEEP_JSON = bytes_field(
    2,
    orjson.dumps(
        {"type": "response.create", "model": "m", "input": "keep going", "store": False, "stream_id": KEEP_LANE}
        | {"metadata": KEEP_META}
    ),
)
GOOD_TYPED = pb.ClientEvent(
    create=pb.CreateRequest(model="m", text="hi", store=False, metadata={"answer_tokens": "1"})
).SerializeToString()
GOOD_JSON = bytes_field(
    2, b'{"type":"response.create","model":"m","input":"hi","store":false,"metadata":{"answer_tokens":"1"}}'
)


def typed_frame(body: Body) -> MakeFrame:
    def make(prev: str | None, call: str | None) -> Frame:
        data = substitute_typed(body, prev, call)
        return Frame(data, frozenset({expected_lane_typed(data)}), shown=repr(body) if data == body.data else "")

    return make


def json_frame(body: Body) -> MakeFrame:
    """``body`` in ``ClientEvent.json``; JSON that is not UTF-8 makes the message undecodable (default lane)."""

    def make(prev: str | None, call: str | None) -> Frame:
        data = substitute(body.data, prev, call)
        return Frame(bytes_field(2, data), frozenset(lanes_json(data) | {None}), shown=f"json {compact(data)}")

    return make


@pytest.fixture(scope="module")
def grpc_server(start: StartFn) -> RunningServer:
    return start("grpc")


def test_grpc_connect_typed_messages_are_answered_in_stream(grpc_server: RunningServer, runner: asyncio.Runner) -> None:
    conn = KeepLane(lambda: GrpcLink.open(grpc_server), KEEP_TYPED)

    @fuzz("grpc-typed")
    @given(st.lists(typed_messages(), min_size=1, max_size=3))
    def one(sequence: list[Body]) -> None:
        runner.run(connection_case(conn, [typed_frame(b) for b in sequence], GOOD_TYPED))

    try:
        one()
        runner.run(conn.finish())
        assert conn.keeps_started > 0 and conn.keeps_completed == conn.keeps_started
    finally:
        runner.run(conn.reset())


def test_grpc_connect_json_messages_are_answered_in_stream(grpc_server: RunningServer, runner: asyncio.Runner) -> None:
    conn = KeepLane(lambda: GrpcLink.open(grpc_server), KEEP_JSON)

    @fuzz("grpc-json")
    @given(st.lists(bodies(event=True), min_size=1, max_size=3))
    def one(sequence: list[Body]) -> None:
        runner.run(connection_case(conn, [json_frame(b) for b in sequence], GOOD_JSON))

    try:
        one()
        runner.run(conn.finish())
        assert conn.keeps_started > 0 and conn.keeps_completed == conn.keeps_started
    finally:
        runner.run(conn.reset())
