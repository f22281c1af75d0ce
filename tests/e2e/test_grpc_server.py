"""gRPC transport end to end: real TLS sockets on 127.0.0.1 port 0, server and clients on the test's loop.

Rollouts (Connect with previous_response_id vs full resend vs Create), codec equivalence, lanes, health,
reflection and graceful shutdown. Faults live in test_grpc_faults.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from clients.base import ClientConfig, TurnRecorder
from clients.grpc_client import GrpcClient
from servers.base import RunningServer, start_server
from tests.helpers import StreamingRecorder
from turnbench.settings import Settings
from turnbench.v1 import responses_pb2 as pb

TOOLS = [
    {
        "type": "function",
        "name": "lookup",
        "description": "look a thing up",
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
    }
]
META = {"tool_calls": "20", "answer_tokens": "24", "seed": "7"}
StartServer = Callable[..., Awaitable[RunningServer]]


@pytest.fixture
async def start() -> AsyncIterator[StartServer]:
    servers: list[RunningServer] = []

    async def _start(**overrides: Any) -> RunningServer:
        settings = Settings(tls=True, profile="instant", grace_s=1.0).replace(**overrides)
        server = await start_server("grpc", settings)
        servers.append(server)
        return server

    yield _start
    for server in servers:
        await server.stop()
        server.service.close()


def client_for(server: RunningServer, **options: Any) -> GrpcClient:
    assert server.tls is not None
    return GrpcClient(ClientConfig(url=server.url, ca_pem=server.tls.ca_pem_bytes, options=options))


def channel_for(server: RunningServer) -> grpc.aio.Channel:
    assert server.tls is not None
    return grpc.aio.secure_channel(server.url, grpc.ssl_channel_credentials(server.tls.ca_pem_bytes))


async def turn(client: GrpcClient, body: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    rec = TurnRecorder(client.transport, "connection")
    resp = await client.create(body, recorder=rec)
    return resp, rec.result()


async def rollout(client: GrpcClient, *, chained: bool) -> tuple[list[tuple[str, str]], str, list[str]]:
    """Run the scripted agent to its answer. Returns: (tool calls, final answer, server state per turn)."""
    history: list[dict[str, Any]] = [{"role": "user", "content": "find the answer"}]
    body: dict[str, Any] = {"model": "m", "input": list(history), "tools": TOOLS, "store": False, "metadata": META}
    calls: list[tuple[str, str]] = []
    states: list[str] = []
    for _ in range(25):
        resp, result = await turn(client, body)
        assert result.success, (result.error, result.error_code)
        assert result.ttft_ms is not None and result.turn_ms is not None and result.ttft_ms <= result.turn_ms
        states.append(resp["turnbench"]["state"])
        out = resp["output"][-1]
        if out["type"] == "message":
            return calls, out["content"][0]["text"], states
        calls.append((out["name"], out["arguments"]))
        result_item = {"type": "function_call_output", "call_id": out["call_id"], "output": f"result {len(calls)}"}
        history += [
            {"type": "function_call", "call_id": out["call_id"], "name": out["name"], "arguments": out["arguments"]},
            result_item,
        ]
        if chained:
            body = {**body, "previous_response_id": resp["id"], "input": [result_item]}
        else:
            body = {**body, "input": list(history)}
    raise AssertionError("no final answer after 25 turns")


async def test_20_turn_rollout_chained_equals_full_resend_and_create(start: StartServer) -> None:
    server = await start()
    results = {}
    for name, opts, chained in (
        ("chained", {}, True),
        ("resend", {}, False),
        ("create", {"method": "create"}, False),
        ("json-chained", {"codec": "json"}, True),
    ):
        async with client_for(server, **opts) as client:
            results[name] = await rollout(client, chained=chained)
    calls, answer, states = results["chained"]
    assert len(calls) == 20 and answer
    assert states == ["full"] + ["connection"] * 20  # continuations came from the stream's cache
    assert results["resend"][2] == ["full"] * 21
    for name in ("resend", "create", "json-chained"):
        assert results[name][:2] == (calls, answer), name


def normalized(events: list[dict[str, Any]]) -> list[Any]:
    """Events without what differs run to run: ids, timestamps, timings."""

    def strip(v: Any) -> Any:
        if isinstance(v, dict):
            out = {
                k: strip(x)
                for k, x in v.items()
                if k not in ("id", "item_id", "created_at", "previous_response_id", "call_id")
            }
            if isinstance(out.get("stages"), dict):
                out["stages"] = sorted(out["stages"])
            return out
        if isinstance(v, list):
            return [strip(x) for x in v]
        return v

    return [strip(e) for e in events]


async def test_typed_and_json_codecs_give_identical_events(start: StartServer) -> None:
    seqs = {}
    for codec in ("typed", "json"):
        server = await start()  # a fresh server each, so caches start equal
        async with client_for(server, codec=codec, record_events=True) as client:
            body = {
                "model": "m",
                "input": "go",
                "tools": TOOLS,
                "store": False,
                "metadata": {"tool_calls": "1", "answer_tokens": "6"},
            }
            first, _ = await turn(client, body)
            events = list(client.last_events)
            call = first["output"][-1]
            follow = {
                **body,
                "previous_response_id": first["id"],
                "input": [{"type": "function_call_output", "call_id": call["call_id"], "output": "42"}],
            }
            await turn(client, follow)
            seqs[codec] = normalized(events + client.last_events)
    assert [e["type"] for e in seqs["typed"]][:3] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
    ]
    assert "response.output_text.delta" in {e["type"] for e in seqs["typed"]}
    assert seqs["typed"] == seqs["json"]


async def test_create_method_answers_like_connect_with_no_connection_state(start: StartServer) -> None:
    server = await start()
    async with client_for(server, method="create", codec="json") as client:
        resp, result = await turn(client, {"model": "m", "input": "hi", "metadata": {"answer_tokens": "5"}})
    assert result.success and resp["status"] == "completed" and resp["turnbench"]["state"] == "full"
    assert result.bytes_up > 0 and result.bytes_down > result.bytes_up
    assert result.chunks == resp["usage"]["output_tokens"] > 0


async def test_lanes_run_fifo_within_a_lane_and_interleave_across(start: StartServer) -> None:
    server = await start(profile="calibration")  # 5 ms per token: responses overlap in time
    async with channel_for(server) as channel:
        call = channel.stream_stream(
            "/turnbench.v1.Responses/Connect",
            request_serializer=pb.ClientEvent.SerializeToString,
            response_deserializer=pb.ServerEvent.FromString,
        )()
        for lane, n in (("a", "4"), ("a", "3"), ("b", "4")):
            await call.write(
                pb.ClientEvent(
                    create=pb.CreateRequest(
                        model="m", text="hi", stream_id=lane, metadata={"answer_tokens": n, "tool_calls": "0"}
                    )
                )
            )
        order: list[tuple[str, str]] = []  # (lane, response id) per event, in arrival order
        done = 0
        while done < 3:
            ev = await call.read()
            kind = ev.WhichOneof("event")
            msg = getattr(ev, kind)
            if kind in ("created", "completed"):
                order.append((msg.stream_id, msg.response.id))
                done += kind == "completed"
        await call.done_writing()
        assert await call.code() == grpc.StatusCode.OK
    lane_a = [rid for lane, rid in order if lane == "a"]
    first, second = dict.fromkeys(lane_a)  # FIFO: a1 created, a1 completed, a2 created, a2 completed
    assert lane_a == [first, first, second, second]
    b_created = order.index(next(x for x in order if x[0] == "b"))
    assert b_created < order.index(("a", first), 1)  # lane b started before lane a's first response ended


async def test_health_reports_serving(start: StartServer) -> None:
    server = await start(api_key="sk-test")  # health needs no key
    async with channel_for(server) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for name in ("", "turnbench.v1.Responses"):
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=name))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Check(health_pb2.HealthCheckRequest(service="nope"))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_reflection_lists_and_describes_the_service(start: StartServer) -> None:
    server = await start()
    async with channel_for(server) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        call = stub.ServerReflectionInfo()
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        await call.write(reflection_pb2.ServerReflectionRequest(file_containing_symbol="turnbench.v1.Responses"))
        await call.done_writing()
        replies = [r async for r in call]
    names = {s.name for s in replies[0].list_services_response.service}
    assert "turnbench.v1.Responses" in names and "grpc.health.v1.Health" in names
    (blob,) = replies[1].file_descriptor_response.file_descriptor_proto
    assert b"turnbench/v1/responses.proto" in blob and b"ServerEvent" in blob


async def test_graceful_stop_lets_a_response_in_flight_finish(start: StartServer) -> None:
    server = await start(profile="calibration", grace_s=10.0)  # 20 ms prefill, 5 ms per token
    async with client_for(server, method="create") as client:
        rec = StreamingRecorder("grpc", "full")
        task = asyncio.create_task(
            client.create(
                {"model": "m", "input": "hi", "metadata": {"answer_tokens": "30", "tool_calls": "0"}}, recorder=rec
            )
        )
        await rec.streaming.wait()
        await server.stop()
        resp, result = await task, rec.result()
    assert result.success and resp["status"] == "completed"
    assert result.chunks == resp["usage"]["output_tokens"] >= 30  # every delta arrived
