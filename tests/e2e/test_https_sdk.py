"""The official ``openai`` SDK against the HTTPS server, changed only by ``base_url`` (and trusting our CA):
a multi-turn function-calling loop with ``responses.create(stream=True)``, then ``responses.retrieve``."""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import openai
import pytest
from openai.types.responses import (
    ResponseCompletedEvent,
    ResponseFunctionCallArgumentsDeltaEvent,
    ResponseTextDeltaEvent,
)

from tests.conftest import TIMEOUT_FACTOR
from tests.e2e.test_https_server import TOOLS, rollout, run_tool

pytestmark = pytest.mark.timeout(120 * TIMEOUT_FACTOR)
TURNS = 6  # 5 tool calls, then the answer
META = {"tool_calls": str(TURNS - 1), "seed": "5", "answer_tokens": "12"}


def _tool_output(item: Any) -> dict[str, Any]:
    output = run_tool({"name": item.name, "arguments": item.arguments})
    return {"type": "function_call_output", "call_id": item.call_id, "output": output}


async def test_async_sdk_function_calling_loop_and_retrieve(serve):
    server = await serve("https", api_key="sk-sdk")
    http = openai.DefaultAsyncHttpxClient(verify=server.tls.client_ssl_context())
    sdk = openai.AsyncOpenAI(api_key="sk-sdk", base_url=server.url, http_client=http, max_retries=0)
    async with sdk as client:
        prev, new_input, deltas, calls = None, "Why does the index test fail?", 0, []
        for _ in range(TURNS):
            stream = await client.responses.create(
                model="m",
                input=new_input,
                tools=TOOLS,
                metadata=META,
                store=True,
                stream=True,
                **({"previous_response_id": prev} if prev else {}),
            )
            final = None
            async for event in stream:
                if isinstance(event, ResponseFunctionCallArgumentsDeltaEvent | ResponseTextDeltaEvent):
                    deltas += 1
                if isinstance(event, ResponseCompletedEvent):
                    final = event.response
            assert final is not None and final.status == "completed"
            item = final.output[-1]
            if item.type == "message":
                break
            assert item.type == "function_call"
            calls.append(item.name)
            new_input, prev = [_tool_output(item)], final.id
        assert len(calls) == TURNS - 1 and deltas > TURNS
        assert final.output_text and final.usage is not None and final.usage.output_tokens > 0
        stored = await client.responses.retrieve(final.id)
        assert stored.id == final.id and stored.output_text == final.output_text
        assert stored.previous_response_id == prev

        with pytest.raises(openai.BadRequestError) as err:
            await client.responses.create(model="m", input="x", previous_response_id="resp_gone", stream=True)
        assert err.value.code == "previous_response_not_found"
    async with openai.AsyncOpenAI(
        api_key="sk-bad",
        base_url=server.url,
        max_retries=0,
        http_client=openai.DefaultAsyncHttpxClient(verify=server.tls.client_ssl_context()),
    ) as bad:
        with pytest.raises(openai.AuthenticationError):
            await bad.responses.create(model="m", input="x", stream=True)


def _sync_loop(url: str, ctx: ssl.SSLContext) -> tuple[str, str, str]:
    """The sync SDK, full history each turn (store=false), then one stored answer retrieved."""
    with openai.OpenAI(
        api_key="sk-none", base_url=url, max_retries=0, http_client=openai.DefaultHttpxClient(verify=ctx)
    ) as client:
        history: list[Any] = [{"role": "user", "content": "Why does the index test fail?"}]
        for _ in range(TURNS):
            final = None
            with client.responses.create(
                model="m", input=history, tools=TOOLS, metadata=META, store=False, stream=True
            ) as stream:
                for event in stream:
                    if event.type == "response.completed":
                        final = event.response
            assert final is not None
            item = final.output[-1]
            if item.type == "message":
                break
            history += [
                {"type": "function_call", "call_id": item.call_id, "name": item.name, "arguments": item.arguments},
                _tool_output(item),
            ]
        answer = final.output_text
        stored = client.responses.create(model="m", input="hello", store=True, metadata={"tool_calls": "0"})
        return answer, stored.output_text, client.responses.retrieve(stored.id).output_text


async def test_sync_sdk_in_a_thread_matches_async_turnbench_clients(serve, connect):
    server = await serve("https")  # the server runs on this loop; the sync SDK blocks a worker thread
    ctx = server.tls.client_ssl_context()
    answer, stored, retrieved = await asyncio.to_thread(_sync_loop, server.url, ctx)
    assert stored == retrieved and stored
    client = await connect("https", server)
    ours, _, _ = await rollout(client, "full", turns=TURNS, seed=5, answer_words=12)
    assert answer == ours  # same seed, same tools: the same answer whichever client asked


async def test_sdk_client_in_the_registry(serve, connect):
    server = await serve("https")
    client = await connect("sdk-https", server)
    answer, calls, results = await rollout(client, "store", turns=4)
    assert len(calls) == 3 and answer
    for r in results:
        assert r.success and r.ttft_ms is not None and r.bytes_up > 0 and r.bytes_down > 0
        assert "render" in r.server_stages  # the SDK keeps the unknown `turnbench` field
