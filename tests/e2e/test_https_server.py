"""The HTTPS+SSE server over real loopback sockets (TLS on, port 0), driven by turnbench's clients and by
plain httpx: rollouts, the OpenAI error shapes, limits, SSE framing, disconnects and timeouts."""

from __future__ import annotations

import asyncio
import os
import re
import socket
from typing import Any

import httpx
import orjson
import pytest

from clients.base import ClientConfig, ResponsesClient, TurnRecorder, make_client
from servers.base import RunningServer
from tests.conftest import TIMEOUT_FACTOR, client_config
from tests.helpers import usage_rows

pytestmark = pytest.mark.timeout(120 * TIMEOUT_FACTOR)

TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "name": "lookup",
        "description": "Look a topic up in the project notes.",
        "parameters": {
            "type": "object",
            "required": ["topic", "depth"],
            "properties": {
                "topic": {"type": "string", "enum": ["cache", "parser", "index"]},
                "depth": {"type": "integer", "minimum": 1, "maximum": 3},
            },
        },
    }
]
CLIENTS = [
    pytest.param("https", {}, id="httpx"),
    pytest.param("https", {"network_backend": "anyio"}, id="httpx-anyio"),
    pytest.param("https-raw", {}, id="raw"),
]
# docs/protocol/http-sse.md, Order rules: one output item per response (the scripted model's shape)
SPEC_ORDER = re.compile(
    r"created in_progress output_item\.added "
    r"(content_part\.added (output_text\.delta )*output_text\.done content_part\.done "
    r"|(function_call_arguments\.delta )*function_call_arguments\.done )"
    r"output_item\.done (completed|incomplete|failed)"
)


def run_tool(call: dict[str, Any]) -> str:
    """The client side of the tool: deterministic output from the model's arguments."""
    args = orjson.loads(call["arguments"])
    return f"{call['name']}({args['topic']}, depth={args['depth']}): 3 notes found"


async def rollout(
    client: ResponsesClient, state: str, turns: int = 20, *, seed: int = 11, answer_words: int = 24
) -> tuple[str, list[Any], list[Any]]:
    """An agent loop of ``turns`` turns (turns-1 tool calls, then the answer), state ``full`` or ``store``.

    Returns: (final answer text, the tool calls made, the per-turn results).
    """
    meta = {"tool_calls": str(turns - 1), "seed": str(seed), "answer_tokens": str(answer_words)}
    history: list[dict[str, Any]] = [{"role": "user", "content": "Why does the index test fail?"}]
    new_items, prev, calls, results = list(history), None, [], []
    for turn in range(turns):
        body: dict[str, Any] = {"model": "m", "tools": TOOLS, "metadata": meta, "stream": True}
        if state == "full":
            body |= {"input": history, "store": False}
        else:
            body |= {"input": new_items, "store": True, "previous_response_id": prev}
        rec = TurnRecorder(client.transport, state, turn_index=turn)
        response = await client.create(body, recorder=rec)
        result = rec.result()
        assert result.success, (turn, result.error_code, result.error)
        results.append(result)
        item = response["output"][-1]
        if item["type"] == "message":
            return item["content"][0]["text"], calls, results
        calls.append((item["name"], item["arguments"]))
        call = {k: item[k] for k in ("type", "call_id", "name", "arguments")}
        output = {"type": "function_call_output", "call_id": item["call_id"], "output": run_tool(item)}
        history += [call, output]
        new_items, prev = [output], response["id"]
    raise AssertionError(f"no answer after {turns} turns")


@pytest.mark.parametrize(("transport", "options"), CLIENTS)
async def test_rollout_full_and_store_agree(serve, connect, transport, options):
    server = await serve("https")
    client = await connect(transport, server, **options)
    full_answer, full_calls, full = await rollout(client, "full")
    store_answer, store_calls, store = await rollout(client, "store")
    assert len(full) == len(store) == 20
    assert len(full_calls) == 19 and full_calls == store_calls
    assert full_answer == store_answer and len(full_answer.split()) == 24
    states = [row["state"] for row in await usage_rows(server)]
    assert states.count("store") == 19 and states.count("full") == 21
    # full re-sends the history: its requests grow; store sends one item after the first turn
    assert full[-1].bytes_up > 4 * full[1].bytes_up
    assert max(r.bytes_up for r in store[1:]) < full[-1].bytes_up / 4
    for r in full + store:
        assert r.ttft_ms is not None and r.turn_ms is not None and 0 < r.ttft_ms <= r.turn_ms
        assert r.chunks > 0 and r.bytes_down > 0 and "render" in r.server_stages


async def _post(
    server: RunningServer, content: Any, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any], httpx.Headers]:
    ssl = server.tls.client_ssl_context() if server.tls else False
    async with httpx.AsyncClient(verify=ssl) as http:
        r = await http.post(
            server.url + "/responses", content=content, headers={"content-type": "application/json", **(headers or {})}
        )
        return r.status_code, r.json(), r.headers


def _body(**fields: Any) -> bytes:
    return orjson.dumps({"model": "m", "input": "hi", **fields})


@pytest.mark.parametrize(
    ("payload", "status", "code", "param"),
    [
        pytest.param(b'{"model": "m", "input": ', 400, "invalid_json", None, id="bad-json"),
        pytest.param(b'{"model": 5, "input": "hi"}', 400, "invalid_request_error", "model", id="wrong-type"),
        pytest.param(
            _body(input=[{"type": "function_call_output", "call_id": 7, "output": "x"}]),
            400,
            "invalid_request_error",
            "input[0].call_id",
            id="wrong-item-type",
        ),
        pytest.param(_body(temperature_k=1), 400, "unknown_parameter", "temperature_k", id="unknown-field"),
        pytest.param(
            _body(previous_response_id="resp_nope"),
            400,
            "previous_response_not_found",
            "previous_response_id",
            id="unknown-previous",
        ),
        pytest.param(b'{"input": "hi"}', 400, "invalid_request_error", "model", id="missing-model"),
    ],
)
async def test_bad_requests_get_openai_errors(serve, payload, status, code, param):
    server = await serve("https")
    got, body, _ = await _post(server, payload)
    assert got == status
    assert body["error"]["code"] == code and body["error"]["param"] == param
    assert body["error"]["type"] == "invalid_request_error" and body["error"]["message"]


@pytest.mark.parametrize(("transport", "options"), CLIENTS)
async def test_clients_record_errors_without_raising(serve, connect, transport, options):
    server = await serve("https")
    client = await connect(transport, server, **options)
    rec = TurnRecorder(transport, "full")
    assert await client.create_raw(b"{nope", recorder=rec) == {}
    result = rec.result()
    assert not result.success and result.error_code == "invalid_json" and "JSON" in (result.error or "")
    rec = TurnRecorder(transport, "store")
    await client.create({"model": "m", "input": "x", "previous_response_id": "resp_gone"}, recorder=rec)
    assert rec.result().error_code == "previous_response_not_found"
    ok = TurnRecorder(transport, "full")  # the same client keeps working
    await client.create({"model": "m", "input": "x", "store": False}, recorder=ok)
    assert ok.result().success


@pytest.mark.parametrize(("transport", "options"), CLIENTS)
async def test_client_never_raises_on_connection_error(transport, options):
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = ClientConfig(url=f"http://127.0.0.1:{port}/v1", options=options)
    client = make_client(transport, config)
    rec = TurnRecorder(transport, "full")
    assert await client.create({"model": "m", "input": "x"}, recorder=rec) == {}
    await client.close()
    assert rec.result().error_code == "connection_error"


async def test_auth(serve, connect):
    server = await serve("https", api_key="sk-right")
    status, body, _ = await _post(server, _body(), {"authorization": "Bearer sk-wrong"})
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    assert body["error"]["message"] == "Incorrect API key provided."
    status, body, _ = await _post(server, _body())
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    wrong = await connect("https", server, api_key="sk-wrong")
    rec = TurnRecorder("https", "full")
    await wrong.create({"model": "m", "input": "x"}, recorder=rec)
    assert rec.result().error_code == "invalid_api_key"
    right = await connect("https", server)  # the fixture passes the server's key
    rec = TurnRecorder("https", "full")
    resp = await right.create({"model": "m", "input": "x", "store": True}, recorder=rec)
    assert rec.result().success
    async with httpx.AsyncClient(verify=server.tls.client_ssl_context()) as http:
        assert (await http.get(f"{server.url}/responses/{resp['id']}")).status_code == 401
        key = {"authorization": "Bearer sk-right"}
        ok = await http.get(f"{server.url}/responses/{resp['id']}", headers=key)
        assert ok.status_code == 200 and ok.json()["id"] == resp["id"]
        health = await http.get(server.url.removesuffix("/v1") + "/healthz")  # no key needed
        assert health.json() == {"status": "ok", "transport": "https", "pid": os.getpid()}


async def test_oversized_body_is_413_and_server_keeps_serving(serve, connect):
    server = await serve("https", max_body_bytes=2048)
    big = _body(input="x" * 4096)
    status, body, headers = await _post(server, big)  # Content-Length over the limit: refused unread
    assert status == 413 and body["error"]["code"] == "payload_too_large"
    assert "2048" in body["error"]["message"] and headers["connection"] == "close"

    async def chunked() -> Any:  # no Content-Length: counted while reading
        for _ in range(8):
            yield b" " * 1024

    status, body, _ = await _post(server, chunked())
    assert status == 413 and body["error"]["code"] == "payload_too_large"
    client = await connect("https", server)
    rec = TurnRecorder("https", "full")
    await client.create({"model": "m", "input": "small"}, recorder=rec)
    assert rec.result().success


async def test_stream_false_returns_the_response_and_store_retrieves_it(serve):
    server = await serve("https")
    status, resp, headers = await _post(server, _body(store=True, metadata={"tool_calls": "0"}))
    assert status == 200 and headers["content-type"] == "application/json"
    assert resp["object"] == "response" and resp["status"] == "completed"
    assert resp["output"][0]["type"] == "message" and resp["usage"]["output_tokens"] > 0
    status, unstored, _ = await _post(server, _body(store=False))
    async with httpx.AsyncClient(verify=server.tls.client_ssl_context()) as http:
        got = await http.get(f"{server.url}/responses/{resp['id']}")
        assert got.status_code == 200
        assert got.json()["id"] == resp["id"] and got.json()["output"] == resp["output"]
        missing = await http.get(f"{server.url}/responses/{unstored['id']}")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


async def _sse(server: RunningServer, body: dict[str, Any]) -> tuple[httpx.Headers, bytes]:
    async with httpx.AsyncClient(verify=server.tls.client_ssl_context()) as http:
        async with http.stream("POST", server.url + "/responses", json=body) as r:
            assert r.status_code == 200
            return r.headers, b"".join([chunk async for chunk in r.aiter_raw()])


@pytest.mark.parametrize("tool_calls", ["1", "0"], ids=["function-call", "message"])
async def test_sse_framing_and_event_order(serve, tool_calls):
    server = await serve("https")
    headers, raw = await _sse(
        server,
        {
            "model": "m",
            "input": "go",
            "tools": TOOLS,
            "stream": True,
            "metadata": {"tool_calls": tool_calls, "answer_tokens": "6"},
        },
    )
    assert headers["content-type"] == "text/event-stream" and headers["cache-control"] == "no-cache"
    assert raw.endswith(b"\n\n") and b"[DONE]" not in raw and b"\r" not in raw
    names, seqs = [], []
    for block in raw[:-2].split(b"\n\n"):
        event_line, data_line = block.split(b"\n")  # exactly two lines per event
        assert event_line.startswith(b"event: ") and data_line.startswith(b"data: ")
        data = orjson.loads(data_line[6:])
        assert data["type"] == event_line[7:].decode()
        names.append(data["type"].removeprefix("response."))
        seqs.append(data["sequence_number"])
    assert SPEC_ORDER.fullmatch(" ".join(names)), names
    assert seqs == list(range(len(seqs)))
    kind = "function_call_arguments.delta" if tool_calls == "1" else "output_text.delta"
    assert kind in names


async def test_client_disconnect_stops_generation(serve, connect):
    server = await serve("https", profile="frontier")  # ~65 tok/s: 500 tokens would take ~8 s
    stats = server.service.engine.stats
    warm = await connect("https", server)
    rec = TurnRecorder("https", "full")
    await warm.create(
        {"model": "m", "input": "warm", "metadata": {"answer_tokens": "2", "tool_calls": "0"}}, recorder=rec
    )
    assert rec.result().success
    await asyncio.sleep(0.05)
    baseline, before = len(asyncio.all_tasks()), stats.decoded_tokens
    body = {"model": "m", "input": "long", "stream": True, "metadata": {"answer_tokens": "500", "tool_calls": "0"}}
    response_id = None
    async with httpx.AsyncClient(verify=server.tls.client_ssl_context()) as http:
        async with http.stream("POST", server.url + "/responses", json=body) as r:
            async for chunk in r.aiter_raw():
                if response_id is None:
                    data = chunk.split(b"\ndata: ", 1)[1].split(b"\n")[0]
                    response_id = orjson.loads(data)["response"]["id"]
                if b"output_text.delta" in chunk:
                    break  # leaving the block mid-body closes the connection
    deadline = asyncio.get_running_loop().time() + 10 * TIMEOUT_FACTOR
    while len(asyncio.all_tasks()) > baseline:  # the request task and its watcher end
        assert asyncio.get_running_loop().time() < deadline, asyncio.all_tasks()
        await asyncio.sleep(0.02)
    decoded = stats.decoded_tokens
    await asyncio.sleep(0.3)  # ~20 token steps at 65 tok/s: a running decode would move the counter
    assert stats.decoded_tokens == decoded and decoded - before < 300  # the whole answer is ~600 tokens
    assert response_id is not None and all(row["response_id"] != response_id for row in await usage_rows(server))
    rec = TurnRecorder("https", "full")  # and the server keeps serving
    await warm.create(
        {"model": "m", "input": "again", "metadata": {"answer_tokens": "2", "tool_calls": "0"}}, recorder=rec
    )
    assert rec.result().success


async def test_request_timeout(serve, connect):
    server = await serve("https", profile="frontier", request_timeout_s=0.3)
    long = {"model": "m", "input": "long", "metadata": {"answer_tokens": "500", "tool_calls": "0"}}
    status, body, _ = await _post(server, orjson.dumps(long))  # stream=false: nothing sent yet → 408
    assert status == 408 and body["error"]["code"] == "request_timeout"
    client = await connect("https", server)
    rec = TurnRecorder("https", "full")
    response = await client.create(long, recorder=rec)  # streaming: response.failed ends it
    assert response["status"] == "failed" and response["error"]["code"] == "request_timeout"
    result = rec.result()
    assert not result.success and result.error_code == "request_timeout" and result.chunks > 0


@pytest.mark.parametrize(("transport", "options"), CLIENTS)
async def test_new_connection_per_request(serve, transport, options):
    server = await serve("https")
    client = make_client(transport, client_config(server, new_connection=True, **options))
    try:
        assert await client.connect() is not None
        for _ in range(3):
            rec = TurnRecorder(transport, "full")
            await client.create({"model": "m", "input": "x", "store": False}, recorder=rec)
            result = rec.result()
            assert result.success and result.connect_ms is not None and result.connect_ms > 0
    finally:
        await client.close()


async def test_concurrent_requests_on_one_client(serve, connect):
    server = await serve("https")
    clients = [await connect("https", server), await connect("https-raw", server)]
    recs = [TurnRecorder(c.transport, "full") for c in clients for _ in range(6)]
    body = {"model": "m", "input": "x", "store": False, "metadata": {"tool_calls": "0", "answer_tokens": "16"}}
    await asyncio.gather(*(clients[i // 6].create(body, recorder=r) for i, r in enumerate(recs)))
    results = [r.result() for r in recs]
    assert all(r.success for r in results) and len({r.chunks for r in results}) == 1 and results[0].chunks > 0


async def test_unknown_routes_answer_in_the_openai_shape(serve):
    server = await serve("https")
    async with httpx.AsyncClient(verify=server.tls.client_ssl_context()) as http:
        missing = await http.get(server.url + "/embeddings")
        wrong_method = await http.get(server.url + "/responses")  # POST only (GET upgrades to WebSocket)
    assert missing.status_code == 404 and wrong_method.status_code == 405
    for r in (missing, wrong_method):
        assert r.json()["error"]["message"].startswith("Invalid URL (GET /v1/")
