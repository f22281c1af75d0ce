"""Every Response every server sends is the installed SDK's ``Response``, member for member.

Over real loopback sockets (TLS on, port 0): each Response of HTTPS (the SSE events, ``stream: false``, a
retrieve, a background ``queued``), of WebSocket mode and of gRPC (``Connect`` and ``Create``, both codecs) is
validated with the SDK's pydantic model, and its members compared with the model's fields: none missing, and
no other member than the four the docs name (docs/protocol/http-sse.md, The response object). A request's
parameters come back echoed; where it set none, the values the real API sends for a model without the feature.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
import pytest
from openai.types.responses import Response as SdkResponse
from websockets.asyncio.client import connect as ws_connect

from clients.base import TurnRecorder
from servers.base import RunningServer
from tests.conftest import TIMEOUT_FACTOR, client_config
from turnbench.schema import TERMINAL_TYPES

pytestmark = pytest.mark.timeout(120 * TIMEOUT_FACTOR)

EXTRAS = {"store", "presence_penalty", "frequency_penalty", "turnbench"}
"""Members beyond the SDK model's fields: the real API sends the first three; ``turnbench`` is the extension."""
MEMBERS = set(SdkResponse.model_fields) | EXTRAS
TOOL = {"type": "function", "name": "lookup", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}
ECHOED: dict[str, Any] = {
    "temperature": 0.25,
    "top_p": 0.5,
    "presence_penalty": 0.5,
    "frequency_penalty": -1.5,
    "top_logprobs": 3,
    "max_tool_calls": 4,
    "truncation": "auto",
    "reasoning": {"effort": "low", "summary": "concise"},
    "service_tier": "flex",
    "prompt_cache_key": "cache-key-1",
    "prompt_cache_retention": "24h",
    "safety_identifier": "user-1",
    "user": "user-1",
    "text": {"format": {"type": "text"}, "verbosity": "low"},
}
DEFAULTS: dict[str, Any] = {
    "temperature": 1.0,
    "top_p": 1.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "top_logprobs": 0,
    "max_tool_calls": None,
    "truncation": "disabled",
    "reasoning": {"effort": None, "summary": None},
    "service_tier": "default",
    "prompt_cache_key": None,
    "prompt_cache_retention": None,
    "safety_identifier": None,
    "user": None,
    "text": {"format": {"type": "text"}, "verbosity": "medium"},
    "background": False,
    **dict.fromkeys(
        (
            "access_programs",
            "conversation",
            "image",
            "input_transformations",
            "moderation",
            "prompt",
            "prompt_cache_diagnostics",
            "prompt_cache_options",
            "tool_usage",
        )
    ),
}
ANSWER = {"model": "m", "input": "hi", "store": False, "metadata": {"tool_calls": "0", "answer_tokens": "5"}}
CALL = {"model": "m", "input": "go", "tools": [TOOL], "store": False, "metadata": {"tool_calls": "1"}}
ECHO = {**ANSWER, **ECHOED}
CUT = {**ANSWER, "max_output_tokens": 16, "metadata": {"tool_calls": "0", "answer_tokens": "40"}}
BODIES = [ANSWER, CALL, ECHO, CUT]


def check(obj: dict[str, Any], body: dict[str, Any]) -> None:
    """``obj`` is a whole SDK Response with the request's parameters echoed (else the defaults)."""
    assert set(obj) == MEMBERS, f"missing {sorted(MEMBERS - set(obj))}, unknown {sorted(set(obj) - MEMBERS)}"
    SdkResponse.model_validate(obj)
    for name, default in DEFAULTS.items():
        assert obj[name] == body.get(name, default), name
    if obj["status"] == "completed":
        assert isinstance(obj["completed_at"], int) and obj["completed_at"] >= obj["created_at"]
    else:
        assert obj["completed_at"] is None


def check_events(events: list[dict[str, Any]], body: dict[str, Any]) -> int:
    """Every Response among ``events``; the last event ends the turn as ``body`` asks. Returns: how many."""
    responses = [e["response"] for e in events if "response" in e]
    assert [e["type"] for e in events if "response" in e][:2] == ["response.created", "response.in_progress"]
    for r in responses:
        check(r, body)
    expected = "response.incomplete" if body is CUT else "response.completed"
    assert events[-1]["type"] == expected and responses[-1]["usage"] is not None
    return len(responses)


def sse_events(raw: bytes) -> list[dict[str, Any]]:
    return [
        orjson.loads(line[6:])
        for frame in raw.split(b"\n\n")
        for line in frame.split(b"\n")
        if line.startswith(b"data: ")
    ]


async def test_every_https_response_is_the_sdk_response(serve: Any) -> None:
    server = await serve("https")
    async with httpx.AsyncClient(verify=server.tls.client_ssl_context(), base_url=server.url) as http:
        for body in BODIES:
            async with http.stream("POST", "/responses", json={**body, "stream": True}) as r:
                assert r.status_code == 200
                events = sse_events(b"".join([c async for c in r.aiter_raw()]))
            assert check_events(events, body) == 3
            whole = await http.post("/responses", json={**body, "store": True})
            assert whole.status_code == 200
            check(whole.json(), body)
            stored = await http.get(f"/responses/{whole.json()['id']}")
            assert stored.status_code == 200
            check(stored.json(), body)
            assert stored.json()["completed_at"] == whole.json()["completed_at"]
        queued = await http.post("/responses", json={**ECHO, "store": True, "background": True})
        assert queued.status_code == 200 and queued.json()["status"] == "queued"
        check(queued.json(), {**ECHO, "background": True})
        for _ in range(200):
            done = (await http.get(f"/responses/{queued.json()['id']}")).json()
            if done["status"] not in ("queued", "in_progress"):
                break
            await asyncio.sleep(0.05 * TIMEOUT_FACTOR)
        check(done, {**ECHO, "background": True})
        assert done["status"] == "completed"


async def test_every_websocket_response_is_the_sdk_response(serve: Any) -> None:
    server = await serve("ws")
    ssl = client_config(server).ssl_context
    async with ws_connect(server.url + "/responses", ssl=ssl, compression=None, max_size=None) as ws:
        for body in BODIES:
            await ws.send(orjson.dumps({"type": "response.create", **body}).decode())
            events: list[dict[str, Any]] = []
            while not events or events[-1]["type"] not in TERMINAL_TYPES:
                events.append(orjson.loads(await ws.recv(decode=False)))
            assert check_events(events, body) == 3


@pytest.mark.parametrize("method", ["connect", "create"])
@pytest.mark.parametrize("codec", ["typed", "json"])
async def test_every_grpc_response_is_the_sdk_response(serve: Any, connect: Any, codec: str, method: str) -> None:
    server: RunningServer = await serve("grpc")
    client = await connect("grpc", server, codec=codec, method=method, record_events=True)
    for body in BODIES:
        rec = TurnRecorder("grpc", "full")
        rec.scheduled()
        final = await client.create(body, recorder=rec)
        assert rec.result().success, rec.result().error
        assert check_events(client.last_events, body) == 3
        check(final, body)
