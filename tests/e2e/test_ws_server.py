"""WebSocket mode end to end: real loopback sockets, TLS on, port 0, the server on the test's loop.

What is asserted is behaviour, order and the server's own stage figures, never a wall-clock duration.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from clients.base import ResponsesClient, TurnRecorder, TurnResult
from servers.base import RunningServer
from tests.helpers import usage_rows
from turnbench.schema import TERMINAL_TYPES

pytestmark = pytest.mark.timeout(60)

TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "name": "lookup",
        "description": "Look a word up.",
        "parameters": {
            "type": "object",
            "properties": {"q": {"type": "string", "enum": ["alpha", "beta", "gamma"]}},
            "required": ["q"],
        },
    },
    {
        "type": "function",
        "name": "count",
        "description": "Count to n.",
        "parameters": {"type": "object", "properties": {"n": {"type": "integer", "minimum": 1, "maximum": 9}}},
    },
]


def tool_output(call: dict[str, Any], size: int = 300) -> str:
    """A deterministic tool result of about ``size`` bytes."""
    head = f"{call['name']}({call['arguments']}) ->"
    return (head + " result" * (size // 7))[:size]


async def turn(client: ResponsesClient, body: dict[str, Any]) -> tuple[TurnResult, dict[str, Any]]:
    rec = TurnRecorder(client.transport, "test")
    rec.scheduled()
    response = await client.safe_create(body, recorder=rec)
    return rec.result(), response


async def rollout(
    client: ResponsesClient, mode: str, meta: dict[str, str], size: int = 300
) -> list[tuple[TurnResult, dict[str, Any]]]:
    """Tool loop to the final answer: ``connection`` sends the parent id + new items, ``full`` everything."""
    history: list[dict[str, Any]] = [{"type": "message", "role": "user", "content": "Find out."}]
    new, prev, turns = list(history), None, []
    for _ in range(60):
        body: dict[str, Any] = {"model": "m", "tools": TOOLS, "store": False, "metadata": meta}
        body.update(
            {"input": history} if mode == "full" or prev is None else {"input": new, "previous_response_id": prev}
        )
        result, response = await turn(client, body)
        assert result.success, (result.error_code, result.error)
        turns.append((result, response))
        calls = [o for o in response["output"] if o["type"] == "function_call"]
        if not calls:
            return turns
        prev, new = response["id"], []
        for c in calls:
            fco = {"type": "function_call_output", "call_id": c["call_id"], "output": tool_output(c, size)}
            history += [
                {"type": "function_call", "call_id": c["call_id"], "name": c["name"], "arguments": c["arguments"]},
                fco,
            ]
            new.append(fco)
    raise AssertionError("no final answer")


def answer(response: dict[str, Any]) -> str:
    return "".join(p["text"] for o in response["output"] if o["type"] == "message" for p in o["content"])


@asynccontextmanager
async def raw(server: RunningServer, path: str = "/responses", **kw: Any) -> AsyncIterator[ClientConnection]:
    assert server.tls is not None
    url = server.url.replace("https://", "wss://", 1)  # the HTTPS server's own upgrade route
    async with connect(url + path, ssl=server.tls.client_ssl_context(), compression=None, max_size=None, **kw) as ws:
        yield ws


async def read_turn(ws: ClientConnection) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    while not events or events[-1]["type"] not in TERMINAL_TYPES:
        events.append(orjson.loads(await ws.recv(decode=False)))
    return events


def create(**body: Any) -> str:
    return orjson.dumps({"type": "response.create", "model": "m", "store": False, **body}).decode()


HI = {"input": "hi", "metadata": {"tool_calls": "0", "answer_tokens": "4"}}


# ---------------------------------------------------------------------------------------------- state


async def test_twenty_turn_rollout_on_one_connection_equals_full_resend(serve, connect):
    server = await serve("ws")
    meta = {"tool_calls": "20", "seed": "11"}
    cached = await rollout(await connect("ws", server), "connection", meta)
    full = await rollout(await connect("ws", server), "full", meta)
    assert len(cached) == len(full) == 21
    assert [r["output"][0].get("arguments") for _, r in cached] == [r["output"][0].get("arguments") for _, r in full]
    assert answer(cached[-1][1]) == answer(full[-1][1]) != ""
    states = [r["turnbench"]["state"] for _, r in cached]
    assert states == ["full"] + ["connection"] * 20
    assert all(r["store"] is False for _, r in cached)


async def test_store_false_chain_is_local_to_its_connection(serve, connect):
    server = await serve("ws")
    first = await connect("ws", server)
    _, r1 = await turn(
        first, {"model": "m", "input": "go", "tools": TOOLS, "store": False, "metadata": {"tool_calls": "2"}}
    )
    call = r1["output"][0]
    cont = {
        "model": "m",
        "previous_response_id": r1["id"],
        "store": False,
        "tools": TOOLS,
        "input": [{"type": "function_call_output", "call_id": call["call_id"], "output": "42"}],
    }
    async with raw(server) as ws:
        await ws.send(create(**{k: v for k, v in cont.items() if k != "model"}))
        (err,) = await read_turn(ws)
        assert err["type"] == "error" and err["status"] == 400
        assert err["error"]["code"] == "previous_response_not_found"
        assert err["error"]["param"] == "previous_response_id"
        await ws.send(create(**HI))  # the same connection still serves
        assert (await read_turn(ws))[-1]["type"] == "response.completed"
    result, r2 = await turn(first, cont)  # and the chain goes on where it was made
    assert result.success and r2["turnbench"]["state"] == "connection"


async def test_store_true_chain_hydrates_on_a_new_connection(serve, connect):
    server = await serve("ws")
    _, r1 = await turn(
        await connect("ws", server),
        {"model": "m", "input": "go", "tools": TOOLS, "store": True, "metadata": {"tool_calls": "2"}},
    )
    other = await connect("ws", server)
    call = r1["output"][0]
    result, r2 = await turn(
        other,
        {
            "model": "m",
            "previous_response_id": r1["id"],
            "store": True,
            "input": [{"type": "function_call_output", "call_id": call["call_id"], "output": "42"}],
        },
    )
    assert result.success, result.error
    assert (await usage_rows(server))[-1]["state"] == "store" == r2["turnbench"]["state"]
    assert r2["previous_response_id"] == r1["id"]


async def test_failed_continuation_evicts_its_parent(serve, connect):
    server = await serve("ws")
    client = await connect("ws", server)
    _, r1 = await turn(
        client, {"model": "m", "input": "go", "tools": TOOLS, "store": False, "metadata": {"tool_calls": "2"}}
    )
    bad = {
        "model": "m",
        "previous_response_id": r1["id"],
        "store": False,
        "input": [{"type": "function_call_output", "call_id": 7, "output": "x"}],
    }
    result, _ = await turn(client, bad)
    assert result.error_code == "invalid_request_error" and "call_id" in (result.error or "")
    good = {**bad, "input": [{"type": "function_call_output", "call_id": r1["output"][0]["call_id"], "output": "x"}]}
    result, _ = await turn(client, good)
    assert result.error_code == "previous_response_not_found"
    result, _ = await turn(client, {"model": "m", **HI, "store": False})
    assert result.success


async def test_generate_false_returns_a_usable_previous_response_id(serve, connect):
    server = await serve("ws")
    client = await connect("ws", server)
    result, warm = await turn(
        client, {"model": "m", "input": "context", "tools": TOOLS, "store": False, "generate": False}
    )
    assert result.success and warm["status"] == "completed" and warm["output"] == []
    assert result.chunks == 0
    result, r2 = await turn(
        client,
        {
            "model": "m",
            "previous_response_id": warm["id"],
            "input": "go on",
            "store": False,
            "metadata": {"tool_calls": "0", "answer_tokens": "3"},
        },
    )
    assert result.success and r2["turnbench"]["state"] == "connection" and answer(r2)


# ---------------------------------------------------------------------------------------------- ordering


async def test_queued_request_is_served_after_the_first_in_order(serve):
    server = await serve("ws", profile="fast")  # 1 ms per token: the two would interleave if not queued
    async with raw(server) as ws:
        await ws.send(create(input="one", metadata={"tool_calls": "0", "answer_tokens": "40"}))
        await ws.send(create(input="two", metadata={"tool_calls": "0", "answer_tokens": "7"}))
        first, second = await read_turn(ws), await read_turn(ws)
    assert first[0]["type"] == second[0]["type"] == "response.created"
    assert first[-1]["type"] == second[-1]["type"] == "response.completed"
    # "one" asked for a longer answer than "two": it came first, and no event of "two" is inside it
    assert first[-1]["response"]["usage"]["output_tokens"] > second[-1]["response"]["usage"]["output_tokens"]
    for events in (first, second):
        assert [e["sequence_number"] for e in events] == list(range(len(events)))
        assert len({e["response"]["id"] for e in events if "response" in e}) == 1


async def test_error_of_a_queued_request_waits_for_the_one_in_flight(serve):
    server = await serve("ws", profile="fast")
    async with raw(server) as ws:
        await ws.send(create(input="one", metadata={"tool_calls": "0", "answer_tokens": "30"}))
        await ws.send("{broken")
        first = await read_turn(ws)
        assert first[-1]["type"] == "response.completed"
        (err,) = await read_turn(ws)
        assert err["error"]["code"] == "invalid_json"


@pytest.mark.parametrize("inflight", [1, 16])
async def test_inflight_bound_makes_further_lanes_wait(serve, inflight):
    server = await serve("ws", profile="fast", max_inflight_per_connection=inflight)
    async with raw(server) as ws:
        for lane in ("a", "b"):
            await ws.send(create(stream_id=lane, input=lane, metadata={"tool_calls": "0", "answer_tokens": "30"}))
        events: list[dict[str, Any]] = []
        while sum(e["type"] == "response.completed" for e in events) < 2:
            events.append(orjson.loads(await ws.recv()))
    lanes = [e["stream_id"] for e in events]
    switches = sum(1 for x, y in itertools.pairwise(lanes) if x != y)
    if inflight == 1:  # the second lane starts only after the first one's response is complete
        assert lanes == ["a"] * lanes.count("a") + ["b"] * lanes.count("b")
    else:  # two lanes, both active: their events interleave
        assert switches > 1


# ---------------------------------------------------------------------------------------------- errors

BAD_FRAMES = [
    pytest.param("{not json", "invalid_json", None, id="malformed-json"),
    pytest.param(create(input="x", frobnicate=1), "unknown_parameter", "frobnicate", id="unknown-field"),
    pytest.param(create(input=5), "invalid_request_error", "input", id="wrong-type"),
    pytest.param('{"model": "m", "input": "x"}', "invalid_request_error", "type", id="missing-type"),
    pytest.param('{"type": "response.inject", "input": []}', "unknown_event_type", "type", id="unknown-event"),
    pytest.param(b'{"type": "response.create"}', "invalid_frame_type", None, id="binary-frame"),
    pytest.param(create(input="x", stream_id=""), "invalid_stream_id", "stream_id", id="empty-stream-id"),
]


@pytest.mark.parametrize(("frame", "code", "param"), BAD_FRAMES)
async def test_bad_frame_gets_an_error_frame_and_the_connection_serves(serve, frame, code, param):
    server = await serve("ws")
    async with raw(server) as ws:
        await ws.send(frame)
        (err,) = await read_turn(ws)
        assert err["status"] == 400 and err["error"]["type"] == "invalid_request_error"
        assert (err["error"]["code"], err["error"]["param"]) == (code, param), err
        await ws.send(create(**HI))
        assert (await read_turn(ws))[-1]["type"] == "response.completed"


async def test_named_lane_events_and_errors_carry_the_stream_id(serve):
    server = await serve("ws")
    async with raw(server) as ws:
        await ws.send(create(stream_id="lane-a", **HI))
        events = await read_turn(ws)
        assert {e.get("stream_id") for e in events} == {"lane-a"}
        await ws.send(create(stream_id="lane-a", input="x", previous_response_id="resp_gone"))
        (err,) = await read_turn(ws)
        assert err["stream_id"] == "lane-a" and err["error"]["code"] == "previous_response_not_found"


async def test_auth_is_checked_before_the_upgrade(serve, connect):
    server = await serve("ws", api_key="sk-right")
    for headers in ({"Authorization": "Bearer sk-wrong"}, {}):
        with pytest.raises(InvalidStatus) as info:
            async with raw(server, additional_headers=headers):
                pass
        assert info.value.response.status_code == 401
        assert orjson.loads(info.value.response.body)["error"]["code"] == "invalid_api_key"
    with pytest.raises(InvalidStatus) as info:
        async with raw(server, path="/other", additional_headers={"Authorization": "Bearer sk-right"}):
            pass
    assert info.value.response.status_code == 404
    result, _ = await turn(await connect("ws", server), {"model": "m", **HI})
    assert result.success, result.error


async def test_health_check(serve):
    server = await serve("ws")
    assert server.tls is not None
    async with httpx.AsyncClient(verify=server.tls.client_ssl_context()) as http:
        r = await http.get(f"https://127.0.0.1:{server.port}/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok", "transport": "ws", "pid": os.getpid()}


# ---------------------------------------------------------------------------------------------- stages


async def test_cached_continuation_touches_only_the_new_items(serve, connect):
    server = await serve("ws")
    meta = {"tool_calls": "6", "seed": "3"}
    cached = await rollout(await connect("ws", server), "connection", meta)
    full = await rollout(await connect("ws", server), "full", meta)
    for k in range(1, 7):
        c, f = cached[k][1]["turnbench"]["stages"], full[k][1]["turnbench"]["stages"]
        assert c["validate"]["items"] == 1 and c["render"]["items"] == 1 and c["safety"]["items"] == 1
        assert f["validate"]["items"] == 1 + 2 * k == f["render"]["items"]
        assert c["render"]["tokens"] < f["render"]["tokens"]


@pytest.mark.parametrize("overlap", [True, False], ids=["overlap-on", "overlap-off"])
async def test_post_stage_is_off_the_critical_path_with_overlap(serve, connect, monkeypatch, overlap):
    server = await serve("ws", overlap_post=overlap, inject_ms={"post": 200})
    usage = server.service.usage
    gate = threading.Event()  # usage writes wait here: a post that is on the critical path blocks the turn
    write = usage.write
    monkeypatch.setattr(usage, "write", lambda row: (gate.wait(10), write(row)))
    if not overlap:
        gate.set()
    client = await connect("ws", server)
    try:
        r1, resp1 = await turn(
            client, {"model": "m", "input": "go", "tools": TOOLS, "store": False, "metadata": {"tool_calls": "1"}}
        )
        post1 = resp1["turnbench"]["stages"]["post"]["wall_ns"]
        written_after_1 = usage.count()
        call = resp1["output"][0]
        r2, resp2 = await turn(
            client,
            {
                "model": "m",
                "previous_response_id": resp1["id"],
                "store": False,
                "input": [{"type": "function_call_output", "call_id": call["call_id"], "output": "x"}],
            },
        )
        written_after_2 = usage.count()
    finally:
        gate.set()
    assert r1.success and r2.success and resp2["turnbench"]["state"] == "connection"
    if overlap:  # both turns answered while turn 1's post was still pending
        assert post1 < 200_000_000 and written_after_1 == written_after_2 == 0
    else:  # the terminal event waited for post, injected 200 ms included
        assert post1 >= 200_000_000 and (written_after_1, written_after_2) == (1, 2)
    await server.service.drain()
    assert usage.count() == 2
