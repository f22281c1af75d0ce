"""Fuzz gRPC's unary calls: ``Create`` (a typed ``CreateRequest``) and ``CreateJson`` (a ``ClientEvent``, json codec
mostly, typed sometimes), with the same odd requests as the other surfaces.

A call either streams a response that ends ``response.completed``/``incomplete`` with status OK, or is refused
before its response starts with a proper status (INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED, …: never
UNKNOWN or INTERNAL for bad input) and the ``turnbench-error-code`` trailer; no class names in the status details
or the events. A good request is answered after each example.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import orjson
import pytest
from hypothesis import given, note
from hypothesis import strategies as st

from servers.base import RunningServer
from servers.grpc_server import ERROR_CODE_KEY
from tests.fuzz.conftest import QUIET, TEST_TIMEOUT_S, StartFn, fuzz
from tests.fuzz.strategies import Body, bodies, compact, substitute, substitute_typed, typed_messages
from tests.fuzz.wire import TERMINAL, WAIT_S, ids_of, leaks, typed_event
from turnbench.v1 import responses_pb2 as pb
from turnbench.v1.convert_request import bytes_field

pytestmark = [pytest.mark.timeout(TEST_TIMEOUT_S), QUIET]

REFUSALS = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.ALREADY_EXISTS,
    }
)
"""The statuses a refusal of bad input may end with (UNKNOWN, INTERNAL, UNAVAILABLE … are the server's fault)."""
GOOD = pb.CreateRequest(model="m", text="hi", store=False, metadata={"answer_tokens": "1"}).SerializeToString()


async def unary(channel: grpc.aio.Channel, method: str, data: bytes) -> tuple[list[dict[str, Any]], list[str], Any]:
    """Call ``method`` with ``data``: (its events, their text, the AioRpcError it ended with or None)."""
    call = channel.unary_stream(f"/turnbench.v1.Responses/{method}")(data)
    events: list[dict[str, Any]] = []
    texts: list[str] = []
    try:
        async with asyncio.timeout(WAIT_S):
            async for message in call:
                ev = pb.ServerEvent.FromString(message)
                if ev.WhichOneof("event") == "json":
                    events.append(orjson.loads(ev.json))
                    texts.append(ev.json)
                else:
                    events.append(typed_event(ev))
                    texts.append(str(ev))
    except grpc.aio.AioRpcError as exc:
        return events, texts, exc
    return events, texts, None


def call_problems(events: list[dict[str, Any]], texts: list[str], exc: Any, sent: bytes) -> list[str]:
    problems = [f"internal names on the wire: {n}" for n in [leaks("\n".join(texts), sent)] if n]
    if exc is not None:
        trailer = dict(exc.trailing_metadata() or ())
        if names := leaks(exc.details() or "", sent):
            problems.append(f"internal names in the status details: {names}")
        if exc.code() not in REFUSALS:
            problems.append(f"status {exc.code().name}: bad input must be refused with a client-error status")
        if not trailer.get(ERROR_CODE_KEY):
            problems.append(f"no {ERROR_CODE_KEY} trailer: {trailer}")
        if events:
            problems.append(f"the call failed after its response started ({len(events)} events)")
        return problems
    kinds = [e.get("type") for e in events]
    if not kinds or kinds[-1] not in ("response.completed", "response.incomplete"):
        problems.append(f"status OK without a finished response: {kinds[-3:]}")
    if any(k in TERMINAL for k in kinds[:-1]) or "error" in kinds or "response.failed" in kinds:
        problems.append(f"an error or failure in the stream: {kinds}")
    return problems


@pytest.fixture(scope="module")
def grpc_server(start: StartFn) -> RunningServer:
    return start("grpc", profile="instant")


def run(runner: asyncio.Runner, server: RunningServer, method: str, sequence: list[tuple[Body, bool]]) -> None:
    """One example: each request in turn, then a good one."""

    async def case() -> None:
        async with open_channel(server) as channel:
            prev = call = None
            for body, typed in sequence:
                if typed:
                    data = substitute_typed(body, prev, call, envelope=method == "CreateJson")
                    shown = repr(body)
                else:
                    raw = substitute(body.data, prev, call)
                    data, shown = bytes_field(2, raw), f"json {compact(raw)}"
                events, texts, exc = await unary(channel, method, data)
                ended = f"{exc.code().name} {exc.details()!r} {dict(exc.trailing_metadata() or ())}" if exc else "OK"
                note(f"{method} {shown:.2000} -> {[e.get('type') for e in events][-4:]} {texts[-1:]!r:.600} {ended}")
                problems = call_problems(events, texts, exc, data)
                assert not problems, problems
                if exc is None and events:
                    prev, call = ids_of(events[-1].get("response"))
            events, _, exc = await unary(channel, "Create", GOOD)
            assert exc is None and events[-1]["type"] == "response.completed", "a good request then"

    runner.run(case())


def open_channel(server: RunningServer) -> Any:
    assert server.tls is not None
    return grpc.aio.secure_channel(server.url, grpc.ssl_channel_credentials(server.tls.ca_pem_bytes))


def test_grpc_create_refuses_bad_requests_with_a_status(grpc_server: RunningServer, runner: asyncio.Runner) -> None:
    @fuzz("grpc-unary")
    @given(st.lists(st.tuples(typed_messages(envelope=False), st.just(True)), min_size=1, max_size=3))
    def one(sequence: list[tuple[Body, bool]]) -> None:
        run(runner, grpc_server, "Create", sequence)

    one()


def test_grpc_create_json_refuses_bad_requests_with_a_status(
    grpc_server: RunningServer, runner: asyncio.Runner
) -> None:
    requests = st.one_of(
        st.tuples(bodies(), st.just(False)),
        st.tuples(bodies(), st.just(False)),
        st.tuples(typed_messages(), st.just(True)),
    )

    @fuzz("grpc-unary")
    @given(st.lists(requests, min_size=1, max_size=3))
    def one(sequence: list[tuple[Body, bool]]) -> None:
        run(runner, grpc_server, "CreateJson", sequence)

    one()
