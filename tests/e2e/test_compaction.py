"""``POST /v1/responses/compact`` and ``POST /v1/responses/input_tokens`` through the official SDK, and the
compaction item sent back as input over every transport: create → compact → a new response from the compaction
item, whose usage shows the conversation it stands for (docs/protocol/http-sse.md, Compaction)."""

from __future__ import annotations

from typing import Any, cast

import openai
import pytest
from openai.types.responses import CompactedResponse, ResponseCompactionItem, ResponseUsage

from clients.base import TurnRecorder
from servers.base import RunningServer
from tests.conftest import TIMEOUT_FACTOR

pytestmark = pytest.mark.timeout(120 * TIMEOUT_FACTOR)

TOOLS: list[Any] = [
    {"type": "function", "name": "lookup", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}
]
META = {"tool_calls": "2", "seed": "4", "answer_tokens": "6"}
NEW = {"role": "user", "content": "Now summarise what you found."}
ANSWER = {"tool_calls": "0", "answer_tokens": "4"}
TERMINAL = ("response.completed", "response.failed", "response.incomplete", "error")


def sdk(server: RunningServer, api_key: str = "sk-test") -> openai.AsyncOpenAI:
    assert server.tls is not None
    http = openai.DefaultAsyncHttpxClient(verify=server.tls.client_ssl_context())
    return openai.AsyncOpenAI(api_key=api_key, base_url=server.url, http_client=http, max_retries=0)


async def conversation(client: openai.AsyncOpenAI) -> list[dict[str, Any]]:
    """A two-tool-call rollout, resent whole each turn: its history, answer included."""
    history: list[dict[str, Any]] = [{"role": "user", "content": "Find out why the index test fails."}]
    for _ in range(4):
        r = await client.responses.create(model="m", input=cast(Any, history), tools=TOOLS, metadata=META, store=False)
        out = r.output[-1]
        if out.type == "message":
            history.append({"role": "assistant", "content": r.output_text})
            return history
        assert out.type == "function_call"
        history += [
            {"type": "function_call", "call_id": out.call_id, "name": out.name, "arguments": out.arguments},
            {"type": "function_call_output", "call_id": out.call_id, "output": f"{out.name} found line 42 " * 20},
        ]
    raise AssertionError("no answer")


def check_compacted(compacted: CompactedResponse) -> dict[str, Any]:
    """The SDK's CompactedResponse, member for member; the user messages then one compaction item."""
    raw = compacted.model_dump(mode="json", warnings=False)
    assert set(raw) == set(CompactedResponse.model_fields)
    assert raw["object"] == "response.compaction" and isinstance(raw["created_at"], int)
    ResponseUsage.model_validate(raw["usage"])
    *kept, item = raw["output"]
    assert all(k["type"] == "message" and k["role"] == "user" for k in kept) and kept
    ResponseCompactionItem.model_validate(item)
    assert item["type"] == "compaction" and item["encrypted_content"].startswith("tbc1.")
    assert compacted.usage.output_tokens == 0 and compacted.usage.total_tokens == compacted.usage.input_tokens
    return {"type": "compaction", "id": item["id"], "encrypted_content": item["encrypted_content"]}


async def test_the_sdk_compacts_counts_and_continues_over_https(serve: Any) -> None:
    server = await serve("https", api_key="sk-test")
    async with sdk(server) as client:
        history = await conversation(client)
        counted = await client.responses.input_tokens.count(model="m", input=cast(Any, history), tools=TOOLS)
        assert counted.object == "response.input_tokens" and counted.input_tokens > 100
        compacted = await client.responses.compact(model="m", input=cast(Any, history))
        item = check_compacted(compacted)
        kept = [o.model_dump(mode="json", warnings=False) for o in compacted.output[:-1]]
        assert [k["content"][0]["text"] for k in kept] == [history[0]["content"]]  # kept verbatim

        # the compacted output then a new message: the context of the history resent, token for token
        resent = await client.responses.create(model="m", input=cast(Any, [*history, NEW]), metadata=ANSWER)
        cont = await client.responses.create(model="m", input=cast(Any, [*kept, item, NEW]), metadata=ANSWER)
        assert cont.status == "completed" and cont.output_text and cont.usage and resent.usage
        assert cont.usage.input_tokens == resent.usage.input_tokens
        # the compaction item alone stands for the calls, their outputs and the answer
        alone = await client.responses.create(model="m", input=cast(Any, [item, NEW]), metadata=ANSWER)
        bare = await client.responses.create(model="m", input=cast(Any, [NEW]), metadata=ANSWER)
        assert alone.usage is not None and bare.usage is not None
        assert alone.usage.input_tokens > bare.usage.input_tokens + 100
        count = await client.responses.input_tokens.count(model="m", input=cast(Any, [item, NEW]))
        assert count.input_tokens == alone.usage.input_tokens

        # from a stored response: compact its conversation by id
        stored = await client.responses.create(model="m", input=cast(Any, history), metadata=ANSWER, store=True)
        by_id = await client.responses.compact(model="m", previous_response_id=stored.id)
        check_compacted(by_id)
        assert by_id.usage.input_tokens > compacted.usage.input_tokens  # the stored answer joined it

        content = item["encrypted_content"]
        altered = content[:8] + ("B" if content[8] == "A" else "A") + content[9:]  # one byte of the payload
        forged = {**item, "encrypted_content": altered}
        with pytest.raises(openai.BadRequestError) as err:
            await client.responses.create(model="m", input=cast(Any, [NEW, forged]))
        assert err.value.code == "invalid_encrypted_content"
        assert cast(Any, err.value.body)["param"] == "input[1].encrypted_content"
        with pytest.raises(openai.BadRequestError):
            await client.responses.compact(model="m", input=cast(Any, [forged]))

    other = await serve("https", api_key="sk-other")  # another deployment's key: its items are foreign here
    async with sdk(other, "sk-other") as client:
        with pytest.raises(openai.BadRequestError) as err:
            await client.responses.create(model="m", input=cast(Any, [item, NEW]))
        assert err.value.code == "invalid_encrypted_content"


async def compaction_of(server: RunningServer) -> tuple[dict[str, Any], int]:
    """A compaction item made over HTTPS, and the input tokens of ``[item, NEW]``."""
    async with sdk(server) as client:
        item = check_compacted(await client.responses.compact(model="m", input=cast(Any, await conversation(client))))
        counted = await client.responses.input_tokens.count(model="m", input=cast(Any, [item, NEW]))
    return item, counted.input_tokens


async def test_the_sdk_continues_from_a_compaction_over_websocket_mode(serve: Any) -> None:
    server = await serve("https", api_key="sk-test")
    item, tokens = await compaction_of(server)
    assert server.tls is not None
    options = cast(Any, {"ssl": server.tls.client_ssl_context()})
    async with sdk(server) as client, client.responses.connect(websocket_connection_options=options) as conn:
        for body, code in (([item, NEW], None), ([{**item, "encrypted_content": "tbc1.forged.x"}, NEW], "error")):
            await conn.response.create(model="m", input=cast(Any, body), store=False, metadata=ANSWER)
            event = await conn.recv()
            while event.type not in TERMINAL:
                event = await conn.recv()
            if code is None:
                assert event.type == "response.completed", event
                assert cast(Any, event).response.usage.input_tokens == tokens
            else:
                assert event.type == "error"
                error = cast(Any, event).error
                assert (error.code, error.param) == ("invalid_encrypted_content", "input[0].encrypted_content")


@pytest.mark.parametrize(
    ("transport", "options"),
    [
        pytest.param("ws", {}, id="ws"),
        pytest.param("grpc", {"codec": "json"}, id="grpc-json"),
        pytest.param("grpc", {"codec": "typed"}, id="grpc-typed"),
        pytest.param("grpc", {"codec": "typed", "method": "create"}, id="grpc-typed-create"),
    ],
)
async def test_a_compaction_item_is_input_on_every_transport(
    serve: Any, connect: Any, transport: str, options: dict[str, Any]
) -> None:
    maker = await serve("https", api_key="sk-test")
    item, tokens = await compaction_of(maker)  # made by one server, read by another of the same deployment
    server = await serve(transport, api_key="sk-test")
    client = await connect(transport, server, **options)
    for content, ok in ((item["encrypted_content"], True), ("tbc1.e30.AAAA", False)):
        rec = TurnRecorder(transport, "full")
        rec.scheduled()
        body = {"model": "m", "input": [{**item, "encrypted_content": content}, NEW], "metadata": ANSWER}
        response = await client.create({**body, "store": False}, recorder=rec)
        result = rec.result()
        if ok:
            assert result.success, result.error
            assert response["usage"]["input_tokens"] == tokens
        else:
            assert not result.success and result.error_code == "invalid_encrypted_content"
            assert "input[0].encrypted_content" in (result.error or "")
