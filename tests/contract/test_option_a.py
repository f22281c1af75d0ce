"""Option A, one long response per rollout (``long_response``, ``response.done``, ``response.append``), as one
contract over WebSocket mode and gRPC ``Connect`` (json codec): the drivers of ``test_connection.py``.

A long response pauses at each tool call with ``response.done`` (status ``requires_action``, that segment's
output) and resumes on ``response.append``; its id, sequence numbers and output indices run on across the
pauses; an answer ends it with the whole rollout's output. Refused appends are typed errors on the response's
lane and leave it paused. Order and content are asserted, never time.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from clients.agent import Toolbox, run_rollout
from clients.base import ClientConfig, make_client
from tests.conftest import TIMEOUT_FACTOR
from tests.contract.test_connection import Driver, create
from tests.contract.test_connection import transport as transport

pytestmark = pytest.mark.timeout(90 * TIMEOUT_FACTOR)

TOOL = {"type": "function", "name": "read_file", "parameters": {"type": "object", "properties": {"path": {}}}}


def long_create(tool_calls: int = 2, arg_words: int = 4, **body: Any) -> dict[str, Any]:
    meta = {"tool_calls": str(tool_calls), "answer_tokens": "4", "seed": "3", "arg_words": str(arg_words)}
    return create(tools=[TOOL], metadata=meta, long_response=True, **body)


def append(rid: str, *items: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": "response.append", "response_id": rid, "input": list(items), **extra}


def output_of(call: dict[str, Any], text: str = "file contents") -> dict[str, Any]:
    return {"type": "function_call_output", "call_id": call["call_id"], "output": text}


async def until(conn: Driver, *types: str) -> list[dict[str, Any]]:
    """Every event up to the first of ``types`` (the connection must not end first)."""
    events: list[dict[str, Any]] = []
    while not events or events[-1]["type"] not in types:
        event = await conn.recv()
        assert event is not None, (events, conn.ended)
        events.append(event)
    return events


async def test_a_long_response_pauses_at_each_tool_call_and_resumes_on_append(serve, transport):
    name, open_conn = transport
    server = await serve(name)
    async with open_conn(server, None) as conn:
        await conn.send(long_create(tool_calls=2))
        seen = await until(conn, "response.done")
        rid = seen[0]["response"]["id"]
        for _ in range(2):
            done = seen[-1]["response"]
            assert done["id"] == rid and done["status"] == "requires_action"
            (call,) = done["output"]  # this segment's output only
            assert call["type"] == "function_call" and call["status"] == "completed"
            assert done["turnbench"]["stages"]["decode"]["tokens"] > 0  # the segment's own stages
            await conn.send(append(rid, output_of(call)))
            more = await until(conn, "response.done", "response.completed")
            assert "response.created" not in {e["type"] for e in more}  # the same response goes on
            seen += more
        final = seen[-1]["response"]
        assert seen[-1]["type"] == "response.completed" and final["id"] == rid
        kinds = [o["type"] for o in final["output"]]
        assert kinds == ["function_call", "function_call", "message"]  # the whole rollout's output
        assert [e["sequence_number"] for e in seen] == list(range(len(seen)))
        added = [e["output_index"] for e in seen if e["type"] == "response.output_item.added"]
        assert added == [0, 1, 2]
        # the rollout is cached like any response: a plain continuation of it works on this connection
        await conn.send(create(input="thanks", previous_response_id=rid))
        assert (await conn.response())[-1]["type"] == "response.completed"


async def test_refused_appends_are_typed_errors_and_the_response_stays_paused(serve, transport):
    name, open_conn = transport
    server = await serve(name)
    async with open_conn(server, None) as conn:
        await conn.send(long_create(tool_calls=1))
        seen = await until(conn, "response.done")
        rid, call = seen[0]["response"]["id"], seen[-1]["response"]["output"][0]
        bad = [
            (append("resp_nope", output_of(call)), "response_not_found", "response_id"),
            (append(rid, {"type": "function_call_output", "call_id": "call_x", "output": "?"}), None, "call_id"),
            (append(rid, output_of(call), extra=1), "unknown_parameter", "extra"),
            ({"type": "response.append", "response_id": rid}, None, "input"),
            (append(rid, {"type": "bogus"}), None, "input[0].type"),
        ]
        for event, code, param in bad:
            await conn.send(event)
            (err,) = await until(conn, "error")
            assert err["error"]["type"] == "invalid_request_error" or err["error"]["code"] == "response_not_found"
            if code is not None:
                assert err["error"]["code"] == code, err
            assert param in (err["error"]["param"] or ""), err
        # a steer cannot target a long response: it is continued by append
        await conn.send({"type": "response.steer", "previous_response_id": rid, "input": "stop"})
        (failed,) = await until(conn, "response.steer.failed")
        assert failed["error"]["code"] == "invalid_input"
        await conn.send(append(rid, output_of(call)))  # still paused: a valid append resumes it
        assert (await conn.response())[-1]["type"] == "response.completed"
        await conn.send(append(rid, output_of(call)))  # it is over: nothing named rid runs any more
        (err,) = await until(conn, "error")
        assert err["error"]["code"] == "response_not_found"


async def test_an_append_while_the_response_samples_is_refused(serve, transport):
    name, open_conn = transport
    server = await serve(name, profile="frontier")  # ~65 tok/s: the arguments take seconds to sample
    async with open_conn(server, None) as conn:
        await conn.send(long_create(tool_calls=1, arg_words=200))
        created = (await until(conn, "response.created"))[-1]
        rid = created["response"]["id"]
        await conn.send(append(rid, {"type": "message", "role": "user", "content": "too early"}))
        events = await until(conn, "error")
        assert events[-1]["error"]["code"] == "response_not_paused"
        assert "response.done" not in {e["type"] for e in events}
        done = (await until(conn, "response.done"))[-1]["response"]
        await conn.send(append(rid, output_of(done["output"][0])))
        assert (await conn.response())[-1]["type"] == "response.completed"


async def test_long_response_needs_a_persistent_connection(serve):
    server = await serve("https")
    assert server.tls is not None
    async with httpx.AsyncClient(verify=server.tls.client_ssl_context()) as http:
        body = {k: v for k, v in long_create().items() if k != "type"}
        r = await http.post(server.url + "/responses", json=body)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "unsupported_parameter" and r.json()["error"]["param"] == "long_response"


async def test_the_ws_long_client_runs_the_same_rollout_as_ws_without_a_lookup_per_turn(serve):
    """The same agent loop over option A (``ws-long``) and option B (``ws``): the same tool calls and answer;
    B resolves its previous response every turn, A never after its first."""
    server = await serve("ws")
    assert server.tls is not None
    results = {}
    for name in ("ws-long", "ws"):
        client = make_client(name, ClientConfig(url=server.url, ssl_context=server.tls.client_ssl_context()))
        await client.connect()
        try:
            results[name] = await run_rollout(
                client, state="connection", toolbox=Toolbox(), metadata={"tool_calls": "4", "seed": "5"}
            )
        finally:
            await client.close()
    a, b = results["ws-long"], results["ws"]
    assert a.success and b.success, (a.error, b.error)
    assert a.tool_calls == b.tool_calls and a.final_output == b.final_output and len(a.turns) == len(b.turns) == 5
    assert len({t.response_id for t in a.turns}) == 1 and len({t.response_id for t in b.turns}) == 5
    assert all("resolve" in t.server_stages for t in b.turns[1:])
    assert not any("resolve" in t.server_stages for t in a.turns[1:])
    assert all(t.ttft_ms is not None and t.turn_ms is not None for t in a.turns)
