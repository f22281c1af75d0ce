"""The core's half of images, files, compaction and the echoed parameters, in memory (the sim's ``instant``
profile): what each costs in tokens, what each refuses and with which ``param``, and the compaction codec."""

from __future__ import annotations

import base64
import json
import zlib
from typing import Any

import msgspec
import pytest

from turnbench import pipeline
from turnbench.compaction import PREFIX, Compactor, _b64, compaction_key
from turnbench.errors import InvalidRequestError
from turnbench.schema import (
    FILE_TOKENS,
    IMAGE_TOKENS,
    CompactionItem,
    FunctionCallItem,
    FunctionCallOutputItem,
    InputText,
    MessageItem,
    StageStat,
    convert_item,
)
from turnbench.service import ResponsesService
from turnbench.settings import Settings
from turnbench.tokenizer import load_tokenizer

PNG = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n not really").decode()
TEXT_FILE = base64.b64encode(b"def f(x):\n    return x + 1\n" * 20).decode()


def make_service(**overrides: Any) -> ResponsesService:
    return ResponsesService(Settings(**{"profile": "instant", "usage_db": ":memory:", **overrides}))


async def final(service: ResponsesService, body: dict[str, Any], connection: bool = False) -> Any:
    events: list[Any] = []

    async def emit(event: Any) -> None:
        events.append(event)

    session = service.new_session("test", connection=connection)
    await service.respond(service.parse(json.dumps(body)), session, emit)
    return events[-1].response


def message(*parts: dict[str, Any]) -> dict[str, Any]:
    return {"role": "user", "content": [{"type": "input_text", "text": "look at this"}, *parts]}


# ---------------------------------------------------------------------------------------------- tokens


def tokens_of(item: dict[str, Any]) -> int:
    return len(pipeline.render_items(load_tokenizer(), [convert_item(item, 0)], StageStat()))


@pytest.mark.parametrize("detail", ["low", "high", "auto", "original"])
def test_an_image_costs_a_fixed_count_per_detail(detail: str) -> None:
    text_only = tokens_of(message())
    assert tokens_of(message({"type": "input_image", "image_url": PNG, "detail": detail})) == (
        text_only + IMAGE_TOKENS[detail]
    )
    assert tokens_of(message({"type": "input_image", "file_id": "file-1", "detail": detail})) == (
        text_only + IMAGE_TOKENS[detail]
    )


def test_a_file_costs_its_texts_tokens_or_a_fixed_count() -> None:
    tok, text_only = load_tokenizer(), tokens_of(message())
    as_text = base64.b64decode(TEXT_FILE).decode()
    for data in (TEXT_FILE, "data:text/x-python;base64," + TEXT_FILE):
        assert tokens_of(message({"type": "input_file", "file_data": data, "filename": "f.py"})) == (
            text_only + tok.count(as_text)
        )
    binary = base64.b64encode(bytes(range(256))).decode()
    for part in ({"file_data": binary}, {"file_id": "file-1"}, {"file_url": "https://example.com/a.pdf"}):
        assert tokens_of(message({"type": "input_file", **part})) == text_only + FILE_TOKENS


def test_a_message_of_text_parts_renders_as_before() -> None:
    tok = load_tokenizer()
    item = MessageItem(role="user", content=[InputText(text="one "), InputText(text="two")])
    assert pipeline.render_items(tok, [item], StageStat()) == tok.encode("<|user|>one two")


def test_the_same_image_is_the_same_tokens_and_another_differs() -> None:
    tok = load_tokenizer()

    def render(url: str) -> list[int]:
        item = convert_item(message({"type": "input_image", "image_url": url, "detail": "low"}), 0)
        return pipeline.render_items(tok, [item], StageStat())

    assert render(PNG) == render(PNG) != render("https://example.com/other.png")


async def test_usage_counts_the_images_tokens() -> None:
    service = make_service()
    try:
        meta = {"tool_calls": "0", "answer_tokens": "3"}
        plain = await final(service, {"model": "m", "input": [message()], "metadata": meta})
        image = message({"type": "input_image", "image_url": PNG, "detail": "low"})
        seen = await final(service, {"model": "m", "input": [image], "metadata": meta})
        assert seen.usage.input_tokens == plain.usage.input_tokens + IMAGE_TOKENS["low"]
    finally:
        service.close()


# ---------------------------------------------------------------------------------------------- refusals

BAD_PARTS = [
    ({"type": "input_image", "detail": "low"}, "input[0].content[1].image_url", "missing_required_parameter"),
    ({"type": "input_image", "image_url": "ftp://x/y.png"}, "input[0].content[1].image_url", "invalid_value"),
    ({"type": "input_image", "image_url": "data:text/plain;base64,aGk="}, "input[0].content[1].image_url", None),
    ({"type": "input_image", "image_url": "data:image/png;base64,@@@"}, "input[0].content[1].image_url", None),
    ({"type": "input_image", "image_url": PNG, "file_id": "file-1"}, "input[0].content[1].file_id", None),
    ({"type": "input_image", "image_url": PNG, "detail": "huge"}, "input[0].content[1].detail", None),
    ({"type": "input_image", "image_url": 5}, "input[0].content[1].image_url", None),
    ({"type": "input_image", "file_id": ""}, "input[0].content[1].file_id", "invalid_value"),
    ({"type": "input_file", "filename": "a.txt"}, "input[0].content[1].file_data", "missing_required_parameter"),
    ({"type": "input_file", "file_data": "not base64!"}, "input[0].content[1].file_data", "invalid_value"),
    ({"type": "input_file", "file_url": "file:///etc/passwd"}, "input[0].content[1].file_url", "invalid_value"),
    ({"type": "input_file", "file_id": "f", "file_url": "https://x/y"}, "input[0].content[1].file_url", None),
    ({"type": "input_audio", "data": "x"}, "input[0].content[1].type", None),
]


@pytest.mark.parametrize(("part", "param", "code"), BAD_PARTS, ids=[str(i) for i in range(len(BAD_PARTS))])
def test_a_malformed_part_is_refused_naming_its_member(part: dict[str, Any], param: str, code: str | None) -> None:
    with pytest.raises(InvalidRequestError) as err:
        convert_item(message(part), 0)
    assert err.value.param == param and err.value.type == "invalid_request_error" and err.value.message
    if code is not None:
        assert err.value.code == code


# ---------------------------------------------------------------------------------------------- parameters

BAD_PARAMS = [
    ({"temperature": 2.5}, "temperature", "decimal_above_max_value"),
    ({"temperature": -0.1}, "temperature", "decimal_below_min_value"),
    ({"top_p": 1.5}, "top_p", "decimal_above_max_value"),
    ({"presence_penalty": -3}, "presence_penalty", "decimal_below_min_value"),
    ({"frequency_penalty": 2.01}, "frequency_penalty", "decimal_above_max_value"),
    ({"top_logprobs": 21}, "top_logprobs", "integer_above_max_value"),
    ({"top_logprobs": -1}, "top_logprobs", "integer_below_min_value"),
    ({"max_tool_calls": -1}, "max_tool_calls", "integer_below_min_value"),
    ({"safety_identifier": "x" * 65}, "safety_identifier", "string_above_max_length"),
    ({"text": {"verbosity": "loud"}}, "text.verbosity", "invalid_value"),
    ({"temperature": "hot"}, "temperature", "invalid_request_error"),
    ({"truncation": "sometimes"}, "truncation", "invalid_request_error"),
    ({"service_tier": "gold"}, "service_tier", "invalid_request_error"),
    ({"reasoning": {"effort": "extreme"}}, "reasoning.effort", "invalid_request_error"),
    ({"reasoning": {"budget": 3}}, "reasoning.budget", "unknown_parameter"),
    ({"prompt_cache_retention": "1w"}, "prompt_cache_retention", "invalid_request_error"),
]


@pytest.mark.parametrize(("extra", "param", "code"), BAD_PARAMS, ids=[p for _, p, _ in BAD_PARAMS])
async def test_an_out_of_range_parameter_is_refused(extra: dict[str, Any], param: str, code: str) -> None:
    service = make_service()
    try:
        with pytest.raises(InvalidRequestError) as err:
            await final(service, {"model": "m", "input": "hi", **extra})
        assert (err.value.param, err.value.code) == (param, code)
    finally:
        service.close()


async def test_the_ranges_bounds_are_accepted_and_echoed() -> None:
    service = make_service()
    try:
        edges = {"temperature": 2, "top_p": 0, "presence_penalty": -2, "frequency_penalty": 2, "top_logprobs": 20}
        response = await final(service, {"model": "m", "input": "hi", "metadata": {"tool_calls": "0"}, **edges})
        assert response.status == "completed"
        assert {k: getattr(response, k) for k in edges} == edges
        assert response.service_tier == "default" and response.completed_at is not None
    finally:
        service.close()


# ---------------------------------------------------------------------------------------------- compaction

HISTORY: list[Any] = [
    MessageItem(role="developer", content="be brief"),
    FunctionCallItem(call_id="c1", name="f", arguments="{}"),
    FunctionCallOutputItem(call_id="c1", output="42"),
]


def test_the_codec_round_trips_and_is_versioned() -> None:
    compactor = Compactor(compaction_key(None), 1 << 20)
    content = compactor.encode(HISTORY)
    assert content.startswith(PREFIX)
    item = msgspec.convert({"type": "compaction", "encrypted_content": content}, CompactionItem)
    assert compactor.expand(item, 0) == HISTORY


def _refused(compactor: Compactor, content: str) -> InvalidRequestError:
    item = CompactionItem(encrypted_content=content)
    with pytest.raises(InvalidRequestError) as err:
        compactor.expand(item, 3)
    assert err.value.param == "input[3].encrypted_content" and err.value.code == "invalid_encrypted_content"
    return err.value


def test_an_altered_truncated_or_foreign_content_is_refused() -> None:
    compactor = Compactor(compaction_key(None), 1 << 20)
    content = compactor.encode(HISTORY)
    signed, _, tag = content.rpartition(".")
    flipped = signed[:-1] + ("A" if signed[-1] != "A" else "B")
    for bad in ("", "hello", PREFIX, content[:-3], f"{flipped}.{tag}", content + "x", "tbc2." + content[5:]):
        _refused(compactor, bad)
    _refused(Compactor(compaction_key("sk-other"), 1 << 20), content)  # another deployment's key


def test_a_signed_payload_of_another_version_or_over_the_size_bound_is_refused() -> None:
    compactor = Compactor(compaction_key(None), 1 << 20)
    _refused(Compactor(compaction_key(None), 16), compactor.encode(HISTORY))
    # a version this server does not read, signed with its own key
    payload = _b64(zlib.compress(msgspec.json.encode({"v": 2, "items": []})))
    signed = PREFIX + payload
    forged = f"{signed}.{_b64(compactor._tag(signed.encode()))}"
    assert "version 2" in _refused(compactor, forged).message


async def test_compact_then_continue_from_the_compaction_item() -> None:
    service = make_service()
    try:
        tools = [{"type": "function", "name": "f", "parameters": {"type": "object", "properties": {}}}]
        first = await final(
            service, {"model": "m", "input": "start", "tools": tools, "store": True, "metadata": {"tool_calls": "1"}}
        )
        call = first.output[0]
        history = [
            {"role": "user", "content": "start"},
            {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
            {"type": "function_call_output", "call_id": call.call_id, "output": "the result"},
        ]
        counted = await service.count_input_tokens(json.dumps({"model": "m", "input": history}).encode())
        compacted = await service.compact(json.dumps({"model": "m", "input": history}).encode())
        assert compacted.usage.input_tokens == counted.input_tokens
        kept, item = compacted.output[:-1], msgspec.to_builtins(compacted.output[-1])
        assert [k["role"] for k in kept] == ["user"] and item["type"] == "compaction"
        meta = {"tool_calls": "0", "answer_tokens": "3"}
        new = {"role": "user", "content": "go on"}
        # the whole compacted output then a new message: the same context as the history itself
        whole = await final(service, {"model": "m", "input": [*kept, item, new], "metadata": meta})
        resent = await final(service, {"model": "m", "input": [*history, new], "metadata": meta})
        assert whole.usage.input_tokens == resent.usage.input_tokens
        # the compaction item alone stands for the call and its output, a function_call_output may answer it
        alone = await final(service, {"model": "m", "input": [item, new], "metadata": meta})
        user_only = await final(service, {"model": "m", "input": [new], "metadata": meta})
        assert alone.usage.input_tokens > user_only.usage.input_tokens
        with pytest.raises(InvalidRequestError) as err:
            orphan = {"type": "function_call_output", "call_id": "nope", "output": "x"}
            await final(service, {"model": "m", "input": [item, new, orphan]})
        assert err.value.param == "input[2].call_id"  # the index as sent, not as expanded
        # compacting from a stored parent: its items (and tools) come along, as input_tokens counts them
        body = json.dumps({"model": "m", "previous_response_id": first.id, "input": history[2:]}).encode()
        chained = await service.compact(body)
        assert chained.usage.input_tokens == (await service.count_input_tokens(body)).input_tokens
        assert chained.usage.input_tokens > compacted.usage.input_tokens  # the parent's tools are in its header
    finally:
        service.close()
