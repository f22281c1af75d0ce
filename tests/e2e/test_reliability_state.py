"""The reliability findings about state and identity, one test each, on real servers: a restart mid-rollout, two
tenants on one store, the ``Authorization`` header read alike everywhere, gRPC health and reflection without a
key, a second request mid-flight, a connection dropped mid-response.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httptools
import httpx
import orjson
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from clients.agent import Toolbox, run_rollout
from clients.base import make_client
from loadtests.execution.procs import Endpoint, start_server_process
from servers.base import RunningServer
from servers.grpc_server import ERROR_CODE_KEY
from tests.conftest import TIMEOUT_FACTOR
from tests.fuzz.wire import TERMINAL, GrpcLink, Link, WsLink
from turnbench.v1.convert_request import bytes_field

pytestmark = pytest.mark.timeout(180 * TIMEOUT_FACTOR)
WAIT_S = 30 * TIMEOUT_FACTOR  # the longest any single wait may take before the test calls it a hang


# ---------------------------------------------------------------------------------------------- restart


class GatedToolbox(Toolbox):
    """A toolbox whose second tool call waits for :attr:`released`: the rollout is mid-way (one tool turn done,
    its response stored) while :attr:`waiting` is set, and the test restarts the server then."""

    def __init__(self) -> None:
        super().__init__(output_bytes=256)
        self.waiting = asyncio.Event()
        self.released = asyncio.Event()
        self.calls = 0

    async def run(self, name: str, arguments: str, call_index: int = 0) -> str:
        self.calls += 1
        if self.calls == 2:
            self.waiting.set()
            await self.released.wait()
        return await super().run(name, arguments, call_index)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Any]:
    """``processes(server, folder, **settings)``: a server process (TLS, profile ``fast``) whose files (its CA
    among them) live in ``tmp_path/folder``: a second start in the same folder trusts the same CA."""
    started: list[Endpoint] = []

    def _start(server: str, folder: str, **settings: Any) -> Endpoint:
        endpoint = start_server_process(server, workdir=tmp_path / folder, profile="fast", tls=True, settings=settings)
        started.append(endpoint)
        return endpoint

    yield _start
    codes = [ep.process.stop() for ep in started if ep.process is not None]
    assert all(code == 0 for code in codes), codes


@pytest.mark.parametrize("transport", ["https", "ws", "grpc"])
async def test_a_rollout_recovers_from_a_server_restart_with_the_same_calls_and_answer(
    processes: Any, tmp_path: Path, transport: str
) -> None:
    """``run_rollout(state="store")`` against a server that is stopped (SIGTERM) mid-rollout and started again on
    the same port with the same SQLite store: the rollout never raises, and makes the same tool calls and gives
    the same answer as the same rollout on a server left alone."""
    store = f"sqlite:{tmp_path / 'store.db'}"
    meta = {"tool_calls": "4", "seed": "7", "answer_tokens": "12"}
    first = processes(transport, "server", store=store)
    client = make_client(transport, first.client_config())
    try:
        reference = await run_rollout(client, state="store", toolbox=Toolbox(output_bytes=256), metadata=meta)
    finally:
        await client.close()
    assert reference.success, reference.error

    client = make_client(transport, first.client_config())
    tools = GatedToolbox()
    rollout = asyncio.create_task(run_rollout(client, state="store", toolbox=tools, metadata=meta))
    try:
        async with asyncio.timeout(WAIT_S):
            await tools.waiting.wait()
        assert first.process is not None
        assert await asyncio.to_thread(first.process.stop) == 0
        port = int(first.url.rsplit(":", 1)[1].split("/")[0])
        await asyncio.to_thread(processes, transport, "server", store=store, port=port)
        tools.released.set()
        async with asyncio.timeout(WAIT_S * 2):
            result = await rollout
    finally:
        rollout.cancel()
        await client.close()
    failed = [(t.turn_index, t.error_code, t.error) for t in result.turns if not t.success]
    assert result.success, (result.error, failed)
    assert result.tool_calls == reference.tool_calls
    assert result.final_output == reference.final_output


# ---------------------------------------------------------------------------------------------- tenants

BODY = {"model": "m", "input": "hi", "store": True, "metadata": {"answer_tokens": "2", "tool_calls": "0"}}


def https_client(server: RunningServer, key: str) -> httpx.AsyncClient:
    assert server.tls is not None
    return httpx.AsyncClient(
        base_url=server.url, verify=server.tls.client_ssl_context(), headers={"authorization": f"Bearer {key}"}
    )


async def continue_on(server: RunningServer, key: str, previous_id: str) -> tuple[int, dict[str, Any] | None]:
    """Continue ``previous_id`` on ``server`` with ``key``: (status, error object or None)."""
    body = {**BODY, "input": "more", "previous_response_id": previous_id}
    if server.transport == "https":
        async with https_client(server, key) as client:
            reply = await client.post("/responses", json=body)
        return reply.status_code, reply.json().get("error")
    assert server.tls is not None
    link: Link
    if server.transport == "ws":
        link = await WsLink.open_url(server.url, server.tls.client_ssl_context(), {"Authorization": f"Bearer {key}"})
        await link.send(orjson.dumps({"type": "response.create", **body}))
    else:
        link = await GrpcLink.open_target(server.url, server.tls.ca_pem_bytes, (("authorization", f"Bearer {key}"),))
        await link.send(bytes_field(2, orjson.dumps({"type": "response.create", **body})))
    try:
        while True:
            got = await link.recv()
            assert got is not None, link.ended
            if got[0].get("type") in TERMINAL:
                event = got[0]
                return (event.get("status", 200), event.get("error")) if event["type"] == "error" else (200, None)
    finally:
        await link.close()


@pytest.mark.parametrize("transport", ["https", "ws", "grpc"])
async def test_a_server_with_another_key_cannot_read_or_continue_a_response_on_the_same_store(
    serve: Any, tmp_path: Path, transport: str
) -> None:
    store = f"sqlite:{tmp_path / 'shared.db'}"
    a = await serve("https", api_key="sk-a", store=store)
    b = await serve(transport, api_key="sk-b", store=store)
    b_https = await serve("https", api_key="sk-b", store=store)
    async with https_client(a, "sk-a") as client:
        reply = await client.post("/responses", json=BODY)
        assert reply.status_code == 200, reply.text
        rid = reply.json()["id"]
        assert (await client.get(f"/responses/{rid}")).status_code == 200  # its own tenant reads it
    async with https_client(b_https, "sk-b") as client:
        for method, path in [("GET", f"/responses/{rid}"), ("GET", f"/responses/{rid}/input_items")]:
            reply = await client.request(method, path)
            assert reply.status_code == 404, (method, path, reply.text)
        assert (await client.delete(f"/responses/{rid}")).status_code == 404
    status, error = await continue_on(b, "sk-b", rid)
    assert status == 400 and error is not None and error["code"] == "previous_response_not_found", (status, error)
    async with https_client(a, "sk-a") as client:  # B's attempts changed nothing for A
        assert (await client.get(f"/responses/{rid}")).status_code == 200
    status, error = await continue_on(a, "sk-a", rid)
    assert (status, error) == (200, None)


# ---------------------------------------------------------------------------------------------- auth header

ACCEPTED = [
    "Bearer sk-K",
    "bearer sk-K",
    "BEARER sk-K",
    "bEaReR sk-K",
    " Bearer sk-K",
    "Bearer sk-K ",
    "  bearer  sk-K  ",
]
REFUSED = ["Bearer sk-k", "Bearersk-K", "Basic sk-K", "Bearer", "sk-K", "Bearer sk-K sk-K"]


async def https_status(server: RunningServer, authorization: str) -> int:
    """POST with ``Authorization: <authorization>`` written byte for byte (httpx will not send surrounding
    spaces; HTTP parsers drop them, RFC 9110 §5.5). Returns: the HTTP status."""
    assert server.tls is not None
    body = orjson.dumps({**BODY, "store": False})
    head = (
        f"POST /v1/responses HTTP/1.1\r\nHost: {server.host}\r\nAuthorization: {authorization}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    reader, writer = await asyncio.open_connection(
        server.host, server.port, ssl=server.tls.client_ssl_context(), server_hostname=server.host
    )
    try:
        writer.write(head.encode() + body)
        async with asyncio.timeout(WAIT_S):
            status_line = await reader.readline()
    finally:
        writer.close()
    return int(status_line.split()[1])


async def ws_verdict(url: str, server: RunningServer, authorization: str) -> bool:
    assert server.tls is not None
    try:
        link = await WsLink.open_url(url, server.tls.client_ssl_context(), {"Authorization": authorization})
    except Exception:
        return False
    await link.close()
    return True


async def grpc_verdict(server: RunningServer, authorization: str) -> bool:
    assert server.tls is not None
    body = orjson.dumps({**BODY, "store": False})
    async with grpc.aio.secure_channel(server.url, grpc.ssl_channel_credentials(server.tls.ca_pem_bytes)) as ch:
        call = ch.unary_stream("/turnbench.v1.Responses/CreateJson")(
            bytes_field(2, body), metadata=(("authorization", authorization),)
        )
        try:
            async for _ in call:
                pass
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAUTHENTICATED, exc
            return False
    return True


async def test_the_authorization_scheme_is_case_insensitive_and_spaces_around_it_are_ignored_on_every_transport(
    serve: Any,
) -> None:
    https = await serve("https", api_key="sk-K")
    ws = await serve("ws", api_key="sk-K")
    grpc_server = await serve("grpc", api_key="sk-K")
    verdicts: dict[str, dict[str, bool]] = {}
    for value in ACCEPTED + REFUSED:
        verdicts[value] = {
            "https": await https_status(https, value) == 200,
            "ws": await ws_verdict(ws.url, ws, value),
            "ws-on-https-port": await ws_verdict(https.url, https, value),
            "grpc": await grpc_verdict(grpc_server, value),
        }
    wrong = {
        value: got for value, got in verdicts.items() if set(got.values()) != {value in ACCEPTED}
    }  # accepted everywhere, or refused everywhere
    assert not wrong, wrong


# ---------------------------------------------------------------------------------------------- gRPC health


async def test_grpc_health_and_reflection_answer_without_a_key_while_the_responses_service_needs_one(
    serve: Any,
) -> None:
    """The decision, documented: the standard health check and server reflection answer without an API key (load
    balancers and ``grpcurl`` probe them without one; they reveal the service's schema, which the proto file in
    this repository publishes anyway, and nothing of any tenant); every ``turnbench.v1.Responses`` call needs it."""
    server = await serve("grpc", api_key="sk-K")
    assert server.tls is not None
    async with grpc.aio.secure_channel(server.url, grpc.ssl_channel_credentials(server.tls.ca_pem_bytes)) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        for name in ("", "turnbench.v1.Responses"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflect = reflection_pb2_grpc.ServerReflectionStub(ch)
        replies = [
            r
            async for r in reflect.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")])
            )
        ]
        names = {s.name for s in replies[0].list_services_response.service}
        assert "turnbench.v1.Responses" in names
        call = ch.unary_stream("/turnbench.v1.Responses/CreateJson")(bytes_field(2, orjson.dumps(BODY)))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call.read()
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert dict(refused.value.trailing_metadata() or ())[ERROR_CODE_KEY] == "invalid_api_key"


# ---------------------------------------------------------------------------------------------- mid-flight


class Responses:
    """HTTP/1.1 responses parsed off one connection, pipelined ones included (httptools)."""

    def __init__(self) -> None:
        self.done: list[tuple[int, bytes]] = []
        self._body: list[bytes] = []
        self.parser = httptools.HttpResponseParser(self)

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.done.append((self.parser.get_status_code(), b"".join(self._body)))
        self._body = []

    def feed(self, data: bytes) -> None:
        self.parser.feed_data(data)


async def test_a_second_https_request_sent_mid_flight_is_answered_after_the_first(serve: Any) -> None:
    """Request 2 is written on the connection while request 1 still streams (HTTP/1.1 pipelining): both are
    answered, in order, or the server closes after the first; never an error, and a new client is served."""
    server = await serve("https")
    assert server.tls is not None
    ctx = server.tls.client_ssl_context()

    def request(body: dict[str, Any]) -> bytes:
        data = orjson.dumps(body)
        return (
            f"POST /v1/responses HTTP/1.1\r\nHost: {server.host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n"
        ).encode() + data

    long = {**BODY, "store": False, "stream": True, "metadata": {"answer_tokens": "300", "tool_calls": "0"}}
    short = {**BODY, "store": False}
    reader, writer = await asyncio.open_connection(server.host, server.port, ssl=ctx, server_hostname=server.host)
    parsed = Responses()
    try:
        writer.write(request(long))
        async with asyncio.timeout(WAIT_S):
            parsed.feed(await reader.read(65536))  # response 1 has started
            writer.write(request(short))
            while len(parsed.done) < 2 and (data := await reader.read(65536)):
                parsed.feed(data)
    finally:
        writer.close()
    assert parsed.done, "no response at all"
    (status, body), *rest = parsed.done
    assert status == 200 and b"event: response.completed" in body, body[-300:]
    if rest:  # pipelined: answered after the first
        status, body = rest[0]
        assert status == 200 and orjson.loads(body)["status"] == "completed", body[:300]
    async with httpx.AsyncClient(verify=ctx) as client:
        assert (await client.post(server.url + "/responses", json=short)).status_code == 200


async def connections_of(server: RunningServer) -> int:
    if server.transport == "ws":
        return len(server.extra["connections"])
    if server.transport == "grpc":
        return len(server.extra["servicer"].connections)
    return len(server.extra["uvicorn"].server_state.connections)


@pytest.mark.parametrize("transport", ["https", "ws", "grpc"])
async def test_a_connection_dropped_mid_response_is_freed_and_the_server_serves_on(serve: Any, transport: str) -> None:
    """The client's TCP connection is aborted while a long response streams: the server lets go of it (no open
    connection left, the response never completes) and serves a new client."""
    server = await serve(transport, profile="fast")
    assert server.tls is not None
    long = {**BODY, "store": False, "metadata": {"answer_tokens": "3000", "tool_calls": "0"}}
    if transport == "https":
        reader, writer = await asyncio.open_connection(
            server.host, server.port, ssl=server.tls.client_ssl_context(), server_hostname=server.host
        )
        data = orjson.dumps({**long, "stream": True})
        writer.write(f"POST /v1/responses HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
        async with asyncio.timeout(WAIT_S):
            while b"output_text.delta" not in await reader.read(65536):
                pass
        writer.transport.abort()
    else:
        link: Link
        if transport == "ws":
            link = await WsLink.open(server)
            await link.send(orjson.dumps({"type": "response.create", **long}))
        else:
            link = await GrpcLink.open(server)
            await link.send(bytes_field(2, orjson.dumps({"type": "response.create", **long})))
        async with asyncio.timeout(WAIT_S):
            while (got := await link.recv()) is not None and got[0]["type"] != "response.output_text.delta":
                pass
        if isinstance(link, WsLink):
            link.ws.transport.abort()
        else:
            await link.close()
    async with asyncio.timeout(WAIT_S):
        while await connections_of(server):  # noqa: ASYNC110 -- the server's own count, read from outside
            await asyncio.sleep(0.05)
    await server.service.drain()
    statuses = [row["status"] for row in server.service.usage.rows()]
    assert "completed" not in statuses, statuses  # generation stopped with the peer gone
    if transport == "https":
        async with httpx.AsyncClient(verify=server.tls.client_ssl_context()) as client:
            assert (await client.post(server.url + "/responses", json=BODY)).status_code == 200
    else:
        link = await (WsLink.open(server) if transport == "ws" else GrpcLink.open(server))
        frame = orjson.dumps({"type": "response.create", **BODY})
        await link.send(frame if transport == "ws" else bytes_field(2, frame))
        kinds = []
        while (got := await link.recv()) is not None and got[0]["type"] not in TERMINAL:
            kinds.append(got[0]["type"])
        await link.close()
        assert got is not None and got[0]["type"] == "response.completed", (kinds, link.ended)
