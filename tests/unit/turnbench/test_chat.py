"""Chat Completions onto the Responses core: the request's conversion, its refusals, and the answer's chunks."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from turnbench.chat import ChatAnswer, decode_chat, to_responses
from turnbench.errors import InvalidRequestError
from turnbench.service import ResponsesService
from turnbench.settings import Settings

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "read_file",
            "description": "read a file",
            "parameters": {"type": "object", "properties": {"path": {"type": "string"}}},
        },
    }
]


def chat(**body: Any) -> bytes:
    return orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], **body})


def test_every_message_role_becomes_its_input_item() -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "look: "},
                {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "read_file", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "data"}]},
        {"role": "assistant", "content": "done"},
    ]
    body = to_responses(
        decode_chat(
            chat(
                messages=messages,
                tools=TOOLS,
                tool_choice={"type": "function", "function": {"name": "read_file"}},
                max_tokens=5,
                seed=9,
            )
        )
    )
    assert [i["type"] for i in body["input"]] == [
        "message",
        "message",
        "function_call",
        "function_call_output",
        "message",
    ]
    assert body["input"][1]["content"][1] == {"type": "input_image", "image_url": "https://x/y.png", "detail": "auto"}
    assert body["input"][2] == {"type": "function_call", "call_id": "c1", "name": "read_file", "arguments": "{}"}
    assert body["input"][3] == {"type": "function_call_output", "call_id": "c1", "output": "data"}
    assert body["input"][4]["content"] == [{"type": "output_text", "text": "done"}]
    assert body["tools"][0]["name"] == "read_file" and body["tools"][0]["parameters"]["type"] == "object"
    assert body["tool_choice"] == {"type": "function", "name": "read_file"}
    assert (body["store"], body["max_output_tokens"], body["metadata"]) == (False, 5, {"seed": "9"})


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({"messages": [{"role": "assistant", "content": ""}]}, "messages[0].content"),
        ({"n": 2}, "n"),
        ({"tools": [{"type": "web_search", "function": {"name": "x"}}]}, "tools[0].type"),
        ({"max_tokens": "many"}, "max_tokens"),
        ({"response_format": {"type": "yaml"}}, "response_format"),
    ],
)
def test_a_malformed_chat_request_is_refused_naming_its_member(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        to_responses(decode_chat(chat(**body)))
    assert info.value.param == param and info.value.http_status == 400


async def run_chat(service: ResponsesService, payload: bytes) -> tuple[list[dict[str, Any]], ChatAnswer, Any]:
    req = decode_chat(payload)
    parsed = service.parse_obj(to_responses(req), nbytes=len(payload))
    parsed.endpoint = "chat.completions"
    answer = ChatAnswer(req.model, include_usage=True)
    chunks: list[dict[str, Any]] = []
    last: list[Any] = []

    async def emit(event: Any) -> None:
        chunks.extend(answer.chunks(event))
        last[:] = [event]

    await service.respond(parsed, service.new_session("https", connection=False), emit)
    return chunks, answer, last[0].response


async def test_a_streamed_answer_is_chunks_with_its_tool_call_and_usage_last() -> None:
    service = ResponsesService(Settings(profile="instant", usage_db=":memory:"))
    try:
        chunks, answer, response = await run_chat(service, chat(tools=TOOLS, metadata={"tool_calls": "1"}))
        await service.drain()
        row = service.usage.rows()[-1]
    finally:
        service.close()
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    calls = [tc for c in chunks for ch in c["choices"] for tc in ch["delta"].get("tool_calls", [])]
    assert calls[0]["function"]["name"] == "read_file" and calls[0]["id"].startswith("call_")
    arguments = "".join(tc["function"].get("arguments", "") for tc in calls)
    assert json.loads(arguments) == json.loads(response.output[0].arguments)
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["prompt_tokens"] == response.usage.input_tokens
    whole = answer.completion(response)
    assert whole["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] == arguments
    assert row["endpoint"] == "chat.completions" and row["input_tokens"] == response.usage.input_tokens


async def test_a_small_max_tokens_cuts_the_answer_short() -> None:
    service = ResponsesService(Settings(profile="instant", usage_db=":memory:"))
    try:
        chunks, answer, response = await run_chat(service, chat(max_completion_tokens=3, metadata={"tool_calls": "0"}))
    finally:
        service.close()
    whole = answer.completion(response)
    assert whole["choices"][0]["finish_reason"] == "length" and whole["usage"]["completion_tokens"] == 3
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == whole["choices"][0]["message"]["content"]
