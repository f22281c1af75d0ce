"""pytest-benchmark for the hot paths: request decode, event encode, pipeline stages, the state cache.

``make test`` runs these once each as plain tests (pyproject passes ``--benchmark-disable``); measure with::

    pytest tests/bench --benchmark-enable --benchmark-only

The conversation is the agent loop's own shape (user message, then ``function_call`` /
``function_call_output`` pairs with ~4 KB tool outputs over the shipped corpus); ``full`` works on every item,
``connection`` only on the items a cached continuation adds (the last tool output), which is the
stateless request's extra cost that docs/design.md points at.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import msgspec
import orjson
import pytest

from clients.agent import SEARCH_TERMS, Toolbox
from clients.base import ClientConfig, TurnRecorder, make_client
from turnbench import pipeline
from turnbench.schema import (
    InputItem,
    OutputTextDelta,
    Response,
    ResponseCompleted,
    StageStat,
    decode_request,
    decode_response,
    encode,
    item_text,
)
from turnbench.service import ResponsesService
from turnbench.settings import Settings
from turnbench.state import ConversationRecord, StateCache

pytestmark = pytest.mark.timeout(120)

Benchmark = Callable[..., Any]


def conversation(tool_calls: int, output_bytes: int = 4096) -> list[dict[str, Any]]:
    """The agent loop's ``full`` history after ``tool_calls`` tool calls: 1 + 2·tool_calls items."""
    tb = Toolbox(output_bytes=output_bytes)
    items: list[dict[str, Any]] = [{"type": "message", "role": "user", "content": "Investigate the repository."}]
    for i in range(tool_calls):
        path = tb.files[i % len(tb.files)]
        name, args = (
            ("read_file", {"path": path})
            if i % 2 == 0
            else ("search_text", {"query": SEARCH_TERMS[i % len(SEARCH_TERMS)], "path": path})
        )
        arguments = json.dumps(args, separators=(",", ":"))
        items.append({"type": "function_call", "call_id": f"call_{i}", "name": name, "arguments": arguments})
        items.append({"type": "function_call_output", "call_id": f"call_{i}", "output": tb.execute(name, arguments, i)})
    return items


def body(items: list[dict[str, Any]]) -> bytes:
    return orjson.dumps(
        {"model": "turnbench-sim", "input": items, "tools": Toolbox().definitions(), "store": False, "stream": True}
    )


@pytest.fixture(scope="module")
def service() -> Any:
    svc = ResponsesService(Settings(profile="instant", usage_db=":memory:"))
    yield svc
    svc.close()


@pytest.fixture(scope="module")
def response(service: ResponsesService) -> Response:
    """A real final Response of a 20-turn ``full`` request, through the ``inproc`` client."""

    async def one() -> dict[str, Any]:
        client = make_client("inproc", ClientConfig(url="", options={"service": service}))
        await client.connect()
        rec = TurnRecorder("inproc", "full")
        out = await client.create(orjson.loads(body(conversation(20))), recorder=rec)
        await client.close()
        await service.drain()
        assert rec.result().success
        return out

    return decode_response(orjson.dumps(asyncio.run(one())))


@pytest.mark.parametrize("n_items", [1, 20, 50])
def test_decode_request(benchmark: Benchmark, n_items: int) -> None:
    payload = body(conversation(25)[:n_items])
    req = benchmark(decode_request, payload)
    assert isinstance(req.input, list) and len(req.input) == n_items


def test_encode_text_delta(benchmark: Benchmark) -> None:
    ev = OutputTextDelta(
        sequence_number=7, item_id="msg_1", output_index=0, content_index=0, delta=" token", logprobs=[]
    )
    assert b'"response.output_text.delta"' in benchmark(encode, ev)


def test_encode_completed(benchmark: Benchmark, response: Response) -> None:
    ev = ResponseCompleted(sequence_number=99, response=response)
    assert len(benchmark(encode, ev)) > 1000


def _items(strategy: str) -> list[dict[str, Any]]:
    items = conversation(20)
    return items if strategy == "full" else items[-1:]  # connection: the new tool output only


@pytest.mark.parametrize("strategy", ["full", "connection"])
def test_stage_validate(benchmark: Benchmark, strategy: str) -> None:
    raw = _items(strategy)
    typed, origins = benchmark(lambda: pipeline.validate_items(raw, StageStat()))
    assert len(typed) == len(raw) and origins is None


def _typed(strategy: str) -> list[InputItem]:
    return pipeline.validate_items(_items(strategy), StageStat())[0]


@pytest.mark.parametrize("strategy", ["full", "connection"])
def test_stage_safety(benchmark: Benchmark, service: ResponsesService, strategy: str) -> None:
    texts = [item_text(i) for i in _typed(strategy)]
    st = StageStat()
    benchmark(pipeline.safety_check, service.safety, texts, st)
    assert st.chars >= sum(len(t) for t in texts) // 2


@pytest.mark.parametrize("strategy", ["full", "connection"])
def test_stage_render(benchmark: Benchmark, service: ResponsesService, strategy: str) -> None:
    items = _typed(strategy)
    tokens = benchmark(lambda: pipeline.render_items(service.tokenizer, items, StageStat()))
    assert len(tokens) > (20_000 if strategy == "full" else 500)


def test_state_cache_put_get(benchmark: Benchmark, response: Response) -> None:
    items = _typed("full")
    records = [
        ConversationRecord(
            response=msgspec.structs.replace(response, id=f"resp_{i}"),
            items=items,
            tools=[],
            instructions=None,
            lane=None,
            nbytes=100_000,
        )
        for i in range(512)
    ]
    cache = StateCache(max_entries=256)

    def put_get() -> int:
        hits = 0
        for rec in records:
            cache.put(rec)
            hits += cache.get(rec.response_id) is not None
        return hits

    assert benchmark(put_get) == len(records)
    assert len(cache) == 1  # one lane: each put replaces the lane's previous response
