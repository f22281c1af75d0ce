"""gRPC faults end to end: request-scoped errors (bad input, an undecodable message, the request timeout) are
in-stream and the stream keeps serving; connection-level faults end the call with a status code
(UNAUTHENTICATED, RESOURCE_EXHAUSTED); a cancelled call frees its state. Real TLS sockets on 127.0.0.1
port 0. The connection behaviour shared with WebSocket mode is in tests/contract/test_connection.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import orjson
import pytest

from clients.base import ClientConfig, TurnRecorder, TurnResult
from clients.grpc_client import GrpcClient
from servers.base import RunningServer, start_server
from servers.grpc_server import ERROR_CODE_KEY, ResponsesServicer
from tests.helpers import StreamingRecorder
from turnbench.settings import Settings
from turnbench.v1 import responses_pb2 as pb

StartServer = Callable[..., Awaitable[RunningServer]]
QUICK = {"tool_calls": "0", "answer_tokens": "3"}


@pytest.fixture
async def start() -> AsyncIterator[StartServer]:
    servers: list[RunningServer] = []

    async def _start(**overrides: Any) -> RunningServer:
        server = await start_server("grpc", Settings(tls=True, profile="instant", grace_s=1.0).replace(**overrides))
        servers.append(server)
        return server

    yield _start
    for server in servers:
        await server.stop()
        server.service.close()


def client_for(server: RunningServer, api_key: str | None = None, **options: Any) -> GrpcClient:
    assert server.tls is not None
    return GrpcClient(ClientConfig(url=server.url, ca_pem=server.tls.ca_pem_bytes, api_key=api_key, options=options))


async def turn(client: GrpcClient, body: dict[str, Any]) -> tuple[dict[str, Any], TurnResult]:
    rec = TurnRecorder(client.transport, "connection")
    resp = await client.create(body, recorder=rec)
    return resp, rec.result()


def connect_call(server: RunningServer, channel: grpc.aio.Channel) -> Any:
    return channel.stream_stream("/turnbench.v1.Responses/Connect", response_deserializer=pb.ServerEvent.FromString)()


@pytest.mark.parametrize("options", [{}, {"codec": "json"}], ids=["typed", "json"])
async def test_unknown_previous_response_id_is_in_stream_and_the_stream_goes_on(
    start: StartServer, options: dict[str, Any]
) -> None:
    server = await start()
    async with client_for(server, record_events=True, **options) as client:
        call = client._call
        resp, result = await turn(
            client,
            {"model": "m", "input": [], "previous_response_id": "resp_nope", "store": False, "stream_id": "main"},
        )
        assert resp == {} and not result.success
        assert result.error_code == "previous_response_not_found"
        assert "resp_nope" in (result.error or "")
        (err,) = client.last_events
        assert err["type"] == "error" and err["status"] == 400 and err["stream_id"] == "main"
        assert err["error"]["param"] == "previous_response_id"
        resp, result = await turn(client, {"model": "m", "input": "hi", "metadata": QUICK})
        assert result.success and resp["status"] == "completed"
        assert client._call is call  # the same Connect stream served both


@pytest.mark.parametrize("codec", ["typed", "json"])
async def test_a_refused_unary_call_ends_with_a_status_and_the_error_code(start: StartServer, codec: str) -> None:
    server = await start()
    assert server.tls is not None
    body = {"model": "m", "input": [], "previous_response_id": "resp_nope", "store": False}
    async with grpc.aio.secure_channel(server.url, grpc.ssl_channel_credentials(server.tls.ca_pem_bytes)) as ch:
        if codec == "typed":
            request = pb.CreateRequest(model="m", previous_response_id="resp_nope", store=False)
            call = ch.unary_stream("/turnbench.v1.Responses/Create")(request.SerializeToString())
        else:  # CreateJson: the body as JSON text in a string field (what a JSON-transcoding proxy sends)
            call = ch.unary_stream("/turnbench.v1.Responses/CreateJson")(
                pb.ClientEvent(json=orjson.dumps(body).decode()).SerializeToString()
            )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call.read()
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert dict(info.value.trailing_metadata() or ())[ERROR_CODE_KEY] == "previous_response_not_found"
    assert "resp_nope" in (info.value.details() or "")
    async with client_for(server, method="create", codec=codec) as client:  # what our client makes of it
        _, result = await turn(client, body)
        assert (result.success, result.error_code) == (False, "previous_response_not_found")
        _, result = await turn(client, {"model": "m", "input": "hi", "metadata": QUICK})
        assert result.success


@pytest.mark.parametrize("codec", ["typed", "json"])
@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        ({"model": "m", "input": "hi", "store": "yes"}, "invalid_request_error", "store"),
        ({"model": "m", "input": "hi", "bogus": 1}, "unknown_parameter", "bogus"),
        ({"model": "m", "input": [{"role": "robot", "content": "x"}]}, "invalid_request_error", "input[0].role"),
        ({"model": "m", "input": "hi", "stream_id": "bad lane!"}, "invalid_stream_id", "stream_id"),
    ],
)
async def test_bad_requests_are_in_stream_errors_with_code(
    start: StartServer, codec: str, body: dict[str, Any], code: str, param: str
) -> None:
    server = await start()
    async with client_for(server, codec=codec, record_events=True) as client:
        _, result = await turn(client, body)
        assert (result.success, result.error_code) == (False, code)
        assert client.last_events[-1]["error"]["param"] == param
        _, result = await turn(client, {"model": "m", "input": "hi", "metadata": QUICK})
        assert result.success


async def test_messages_the_core_refuses_are_in_stream_garbage_included(start: StartServer) -> None:
    server = await start()
    assert server.tls is not None
    async with grpc.aio.secure_channel(server.url, grpc.ssl_channel_credentials(server.tls.ca_pem_bytes)) as ch:
        call = connect_call(server, ch)
        await call.write(pb.ClientEvent().SerializeToString())  # no request in it
        ev = await call.read()
        assert ev.ws_error.error.param == "event" and ev.ws_error.status == 400
        await call.write(
            pb.ClientEvent(
                create=pb.CreateRequest(
                    model="m",
                    items=pb.InputItems(items=[pb.InputItem(function_call_output=pb.FunctionCallOutput(call_id="c"))]),
                )
            ).SerializeToString()
        )
        ev = await call.read()
        assert ev.WhichOneof("event") == "ws_error" and "input[0]" in ev.ws_error.error.param
        await call.write(b"\xff\xff\xff")  # not a protobuf message: refused like malformed JSON on WebSocket
        ev = await call.read()
        assert ev.ws_error.status == 400 and "Undecodable message" in ev.ws_error.error.message
        await call.write(
            pb.ClientEvent(create=pb.CreateRequest(model="m", text="hi", metadata=QUICK)).SerializeToString()
        )  # and the stream goes on
        kinds = []
        while (ev := await call.read()).WhichOneof("event") != "completed":
            kinds.append(ev.WhichOneof("event"))
        assert kinds[0] == "created"


@pytest.mark.parametrize("key", [None, "sk-wrong"])
@pytest.mark.parametrize("method", ["connect", "create"])
async def test_auth_is_required_when_a_key_is_set(start: StartServer, key: str | None, method: str) -> None:
    server = await start(api_key="sk-test")
    async with client_for(server, api_key=key, method=method) as client:
        _, result = await turn(client, {"model": "m", "input": "hi", "metadata": QUICK})
        assert (result.success, result.error_code) == (False, "invalid_api_key")
    async with client_for(server, api_key="sk-test", method=method) as client:
        _, result = await turn(client, {"model": "m", "input": "hi", "metadata": QUICK})
        assert result.success


async def test_auth_failure_is_the_unauthenticated_status(start: StartServer) -> None:
    server = await start(api_key="sk-test")
    assert server.tls is not None
    async with grpc.aio.secure_channel(server.url, grpc.ssl_channel_credentials(server.tls.ca_pem_bytes)) as ch:
        call = ch.unary_stream("/turnbench.v1.Responses/Create")(pb.CreateRequest(model="m").SerializeToString())
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call.read()
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("codec", ["typed", "json"])
async def test_oversized_message_is_resource_exhausted(start: StartServer, codec: str) -> None:
    server = await start(max_message_bytes=64 * 1024)
    async with client_for(server, codec=codec) as client:
        _, result = await turn(client, {"model": "m", "input": "x" * 100_000})
        assert (result.success, result.error_code) == (False, "payload_too_large")
        assert "larger than max" in (result.error or "")  # grpc enforces the limit itself
        _, result = await turn(client, {"model": "m", "input": "hi", "metadata": QUICK})  # a new stream
        assert result.success


@pytest.mark.parametrize("method", ["connect", "create"])
async def test_request_timeout_fails_the_response_and_the_stream_goes_on(start: StartServer, method: str) -> None:
    server = await start(profile="frontier", request_timeout_s=0.2)
    async with client_for(server, method=method) as client:
        call = client._call
        resp, result = await turn(
            client, {"model": "m", "input": "hi", "metadata": {"tool_calls": "0", "answer_tokens": "500"}}
        )
        assert (result.success, result.error_code) == (False, "request_timeout")
        assert resp["status"] == "failed" and result.chunks > 0  # it was streaming when the deadline hit
        resp, result = await turn(client, {"model": "m", "input": "hi", "metadata": QUICK})
        assert result.success and client._call is call


async def test_cancelled_call_frees_its_state(start: StartServer) -> None:
    server = await start(profile="frontier")  # ~65 tok/s: 500 tokens take ~8 s
    servicer: ResponsesServicer = server.extra["servicer"]
    stats = server.service.engine.stats  # type: ignore[attr-defined]
    async with client_for(server) as client:
        _, warm = await turn(
            client, {"model": "m", "input": "hi", "metadata": {"tool_calls": "0", "answer_tokens": "2"}}
        )
        assert warm.success
        (conn,) = servicer.connections
        assert conn.session.cache is not None and len(conn.session.cache) == 1
        rec = StreamingRecorder("grpc", "connection")
        task = asyncio.create_task(
            client.create(
                {"model": "m", "input": "go", "metadata": {"tool_calls": "0", "answer_tokens": "500"}}, recorder=rec
            )
        )
        await rec.streaming.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(500):  # the server notices the cancellation
            if not servicer.connections:
                break
            await asyncio.sleep(0.01)
        assert not servicer.connections and not conn.tasks and len(conn.session.cache) == 0
        decoded = stats.decoded_tokens
        await asyncio.sleep(0.1)  # ~6 tokens' time at 65 tok/s: the engine would have moved on
        assert stats.decoded_tokens == decoded < 500
        _, result = await turn(
            client, {"model": "m", "input": "again", "metadata": {"tool_calls": "0", "answer_tokens": "2"}}
        )  # the client opens a new stream; the server serves it
        assert result.success


async def test_connection_lifetime_limit_is_in_stream_then_the_stream_ends(start: StartServer) -> None:
    # a request written well inside the lifetime (with a lifetime of 0 the client's write raced the stream's
    # end: under two CPU hogs grpc-aio's client failed the write, and the call, with INTERNAL)
    server = await start(connection_lifetime_s=1.0)
    assert server.tls is not None
    async with grpc.aio.secure_channel(server.url, grpc.ssl_channel_credentials(server.tls.ca_pem_bytes)) as ch:
        call = connect_call(server, ch)
        await call.write(pb.ClientEvent(create=pb.CreateRequest(model="m", text="hi")).SerializeToString())
        events = []
        while (ev := await call.read()) is not grpc.aio.EOF:  # the server ends the stream without a half-close
            events.append(ev)
        kinds = [ev.WhichOneof("event") for ev in events]
        # the request asked within the lifetime is answered, then the connection-level error ends the stream
        assert "completed" in kinds and kinds[-1] == "ws_error", kinds
        assert events[-1].ws_error.error.code == "websocket_connection_limit_reached"
        assert await call.code() == grpc.StatusCode.OK
