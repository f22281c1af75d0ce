"""The bounds in the core, without sockets: stores bounded by entries, bytes and age and namespaced
by API key; a request refused for its item count or context length; long texts tokenized in pieces with the
same result; deep or cyclic tool schemas refused or cut, never a crash."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from tests.unit.turnbench.test_service import make_service, turn, types
from turnbench import state
from turnbench.errors import InvalidRequestError
from turnbench.safety import _TOKEN_RE, _tokenize
from turnbench.schema import MAX_SCHEMA_DEPTH, Response, decode_request, nesting_depth
from turnbench.state import MemoryResponseStore, SQLiteResponseStore, StoredResponse, StoreLimits, tenant_of
from turnbench.tokenizer import PIECE_CHARS, load_tokenizer, pieces


def stored(n: int, pad: int = 0) -> StoredResponse:
    response = Response(id=f"resp_{n}", created_at=0, model="m", output=[], status="completed")
    return StoredResponse(response=response, items=[{"type": "message", "role": "user", "content": "x" * pad}])


class Clock:
    """A monotonic and wall clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(state.time, "monotonic", c)
    monkeypatch.setattr(state.time, "time", c)
    return c


def test_the_memory_store_keeps_the_newest_entries_within_its_count_and_byte_bounds() -> None:
    store = MemoryResponseStore(StoreLimits(max_entries=5, max_bytes=10**9))
    for n in range(12):
        store.put(stored(n))
    assert len(store) == 5
    assert store.get("resp_6") is None and store.get("resp_7") is not None and store.get("resp_11") is not None
    one = store.nbytes // 5
    small = MemoryResponseStore(StoreLimits(max_entries=1000, max_bytes=3 * one + one // 2))
    for n in range(10):
        small.put(stored(n))
    assert len(small) == 3 and small.nbytes <= 3 * one + one // 2
    assert [small.get(f"resp_{n}") is not None for n in (6, 7, 8, 9)] == [False, True, True, True]
    small.put(stored(100, pad=10 * one))  # larger than the whole bound: nothing older survives it
    assert len(small) <= 1


def test_the_memory_store_forgets_responses_older_than_its_ttl(clock: Clock) -> None:
    store = MemoryResponseStore(StoreLimits(ttl_s=60.0))
    store.put(stored(1))
    clock.now += 30
    store.put(stored(2))
    assert store.get("resp_1") is not None
    clock.now += 31  # resp_1 is 61 s old, resp_2 31 s
    assert store.get("resp_1") is None and store.get("resp_2") is not None
    clock.now += 30
    store.put(stored(3))
    assert len(store) == 1 and store.get("resp_3") is not None


def test_sqlite_prunes_beyond_its_bounds_and_keys_see_only_their_own_responses(tmp_path: Any, clock: Clock) -> None:
    path = str(tmp_path / "store.db")
    a = SQLiteResponseStore(path, StoreLimits(max_entries=4, ttl_s=100.0), tenant=tenant_of("key-a"))
    b = SQLiteResponseStore(path, StoreLimits(max_entries=4, ttl_s=100.0), tenant=tenant_of("key-b"))
    try:
        for n in range(6):
            clock.now += 1
            a.put(stored(n))
        assert a.get("resp_5") is not None and b.get("resp_5") is None  # another key: not found
        assert not b.delete("resp_5") and a.get("resp_5") is not None
        assert a.prune() == 2  # the two oldest beyond 4
        assert a.get("resp_0") is None and a.get("resp_2") is not None
        clock.now += 101
        assert a.get("resp_5") is None  # expired, even before a prune deletes it
        assert a.prune() == 4
    finally:
        a.close()
        b.close()
    assert tenant_of(None) == "" and tenant_of("k") != tenant_of("K") and "k" not in tenant_of("k")


async def test_too_many_input_items_is_a_400_before_any_work() -> None:
    service = make_service(max_input_items=50)
    session = service.new_session("t", connection=False)
    ok = await turn(service, session, {"model": "m", "input": [{"role": "user", "content": "x"}] * 50})
    assert types(ok)[-1] == "response.completed"
    with pytest.raises(InvalidRequestError) as err:
        await turn(service, session, {"model": "m", "input": [{"role": "user", "content": "x"}] * 51})
    assert (err.value.code, err.value.param) == ("array_above_max_length", "input")
    assert "maximum length 50" in str(err.value) and "length 51" in str(err.value)


async def test_a_conversation_past_the_context_window_is_context_length_exceeded() -> None:
    service = make_service(max_context_tokens=400)
    session = service.new_session("t", connection=True)
    first = await turn(service, session, {"model": "m", "input": "word " * 100, "metadata": {"tool_calls": "0"}})
    assert types(first)[-1] == "response.completed"
    with pytest.raises(InvalidRequestError) as err:
        await turn(service, session, {"model": "m", "input": "word " * 600})
    assert err.value.code == "context_length_exceeded" and "at most 400" in str(err.value)


def test_long_texts_are_tokenized_in_pieces_with_the_ids_and_tokens_of_the_whole() -> None:
    rng = random.Random(5)
    words = ["lorem", "ipsum,", "dolor.", "\n", "  ", "don't", "中文", "éa", "\t", "(x)", "12,345", "a  b"]
    text = " ".join(rng.choice(words) for _ in range(4 * PIECE_CHARS // 3))
    parts = list(pieces(text))
    assert len(parts) > 3 and "".join(parts) == text and max(map(len, parts)) <= 4 * PIECE_CHARS
    tok = load_tokenizer()
    assert tok.encode(text) == tok._tok.encode(text, add_special_tokens=False).ids
    assert _tokenize(text) == _TOKEN_RE.findall(text.lower())
    no_space = "x" * (10 * PIECE_CHARS)  # no place to cut: cut anyway, nothing lost
    assert "".join(pieces(no_space)) == no_space and len(list(pieces(no_space))) > 1


def nested_schema(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(depth - 1):
        schema = {"anyOf": [schema]}
    return schema


def test_a_tool_schema_nested_too_deeply_is_a_400_naming_the_tool() -> None:
    assert nesting_depth(nested_schema(10), 64) == 2 * 10 - 1  # each anyOf is a dict and a list
    assert nesting_depth(nested_schema(1000), 64) == 65  # counted no further than the limit + 1
    ok = {"model": "m", "input": "hi", "tools": [{"type": "function", "name": "f", "parameters": nested_schema(20)}]}
    assert decode_request(json.dumps(ok)).tools[0].name == "f"
    deep = {**ok, "tools": [{"type": "function", "name": "f", "parameters": nested_schema(MAX_SCHEMA_DEPTH)}]}
    with pytest.raises(InvalidRequestError) as err:
        decode_request(json.dumps(deep))
    assert err.value.param == "tools[0]" and "nested more than" in str(err.value)


async def test_a_self_referential_schema_gets_an_answer_not_a_server_error() -> None:
    service = make_service()
    session = service.new_session("t", connection=False)
    schema = {"$ref": "#/$defs/A", "$defs": {"A": {"anyOf": [{"$ref": "#/$defs/A"}]}}}
    body = {
        "model": "m",
        "input": "x",
        "tool_choice": "required",
        "tools": [{"type": "function", "name": "f", "parameters": schema}],
    }
    events = await turn(service, session, body)
    assert types(events)[-1] == "response.completed"
    assert events[-1].response.output[0].name == "f"
