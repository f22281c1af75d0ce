"""The engine role (an inference engine behind a gateway) and the injected per-request delay, in memory: what
each request's stages are, what its prefix cache saves, and what the usage log keeps of it."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from turnbench.engine.prefix_cache import ENGINE_BLOCK_TOKENS
from turnbench.schema import Response
from turnbench.service import ResponsesService
from turnbench.settings import Settings, parse_burn_map, parse_stage_map

HISTORY = [
    {"type": "message", "role": "developer", "content": "You are a coding agent. " * 40},
    {"type": "message", "role": "user", "content": "Find the failing test and fix it."},
]


def make_service(**overrides: Any) -> ResponsesService:
    return ResponsesService(Settings(**{"profile": "instant", "usage_db": ":memory:", **overrides}))


async def ask(service: ResponsesService, items: list[dict[str, Any]], **extra: Any) -> Response:
    events: list[Any] = []

    async def emit(event: Any) -> None:
        events.append(event)

    body = {"model": "m", "input": items, "metadata": {"tool_calls": "0", "answer_tokens": "8"}, **extra}
    session = service.new_session("https", connection=False)
    await service.respond(service.parse(json.dumps(body)), session, emit)
    response: Response = events[-1].response
    return response


async def test_the_engine_role_tokenizes_and_prefills_only_what_its_prefix_cache_lacks() -> None:
    service = make_service(role="engine")
    try:
        first = await ask(service, HISTORY)
        longer = [*HISTORY, {"type": "message", "role": "user", "content": "And run the linter."}]
        second = await ask(service, longer)
    finally:
        service.close()
    assert first.turnbench is not None and second.turnbench is not None
    for r in (first, second):
        stages = r.turnbench.stages  # type: ignore[union-attr]
        assert "safety" not in stages and "render" not in stages  # no API server stages
        assert stages["tokenize"].tokens == r.usage.input_tokens  # type: ignore[union-attr]  # the whole prompt
    assert first.usage is not None and second.usage is not None
    assert first.usage.input_tokens_details.cached_tokens == 0
    cached = second.usage.input_tokens_details.cached_tokens
    # the shared prefix, in whole 16-token blocks, comes from the cache; only the tail is prefilled
    assert cached >= first.usage.input_tokens - ENGINE_BLOCK_TOKENS and cached % ENGINE_BLOCK_TOKENS == 0
    assert second.turnbench.prefill_tokens == second.usage.input_tokens - cached
    assert second.turnbench.stages["prefill"].tokens < second.usage.input_tokens


async def test_the_engine_role_stores_nothing_and_the_api_role_screens_the_conversation() -> None:
    engine, api = make_service(role="engine"), make_service()
    try:
        kept = await ask(engine, HISTORY, store=True)
        screened = await ask(api, HISTORY, store=True)
        await engine.drain()
        await api.drain()
        assert not kept.store and engine.store.get(kept.id) is None
        assert screened.store and api.store.get(screened.id) is not None
    finally:
        engine.close()
        api.close()
    assert screened.turnbench is not None and {"safety", "render"} <= set(screened.turnbench.stages)


async def test_the_usage_log_keeps_each_request_in_order_of_arrival_with_its_stages() -> None:
    service = make_service(role="engine")
    try:
        ids = [(await ask(service, HISTORY[: k + 1])).id for k in range(2)]
        await service.drain()
        rows = service.usage.rows()
    finally:
        service.close()
    assert [r["response_id"] for r in rows] == ids
    assert [r["arrival"] for r in rows] == [1, 2]
    for row in rows:
        assert row["role"] == "engine" and row["endpoint"] == "responses" and row["elapsed_ms"] > 0
        stages = json.loads(row["stages"])
        assert {"parse", "validate", "tokenize", "prefill", "decode"} <= set(stages)
        assert stages["tokenize"]["tokens"] == row["input_tokens"]


async def test_an_injected_delay_is_a_stage_of_its_own() -> None:
    service = make_service(role="engine", inject_ms=parse_stage_map("7"))
    plain = make_service(role="engine")
    try:
        slowed = await ask(service, HISTORY)
        normal = await ask(plain, HISTORY)
    finally:
        service.close()
        plain.close()
    assert slowed.turnbench is not None and normal.turnbench is not None
    assert slowed.turnbench.stages["injected"].wall_ns >= 7_000_000  # asyncio.sleep never wakes early
    assert "injected" not in normal.turnbench.stages


def test_inject_ms_takes_a_bare_number_and_burn_us_does_not() -> None:
    assert parse_stage_map("5") == {"injected": 5.0}
    assert parse_stage_map("2.5,safety=1") == {"injected": 2.5, "safety": 1.0}
    assert Settings.from_env({"TURNBENCH_INJECT_MS": "5", "TURNBENCH_ROLE": "engine"}).inject_ms == {"injected": 5.0}
    assert Settings.from_env({"TURNBENCH_ROLE": "engine"}).role == "engine"
    for bad in ("fast", "safety=x", "-1", "nosuchstage=1"):
        with pytest.raises(ValueError):
            parse_stage_map(bad)
    with pytest.raises(ValueError):
        parse_burn_map("5")
    with pytest.raises(ValueError):
        Settings.from_env({"TURNBENCH_ROLE": "gateway"})


@given(st.floats(min_value=0, max_value=1e6, allow_nan=False))
def test_any_non_negative_number_is_an_injected_delay(ms: float) -> None:
    assert parse_stage_map(repr(ms)) == {"injected": ms}


def test_a_usage_log_of_an_older_version_gains_the_new_columns(tmp_path: Any) -> None:
    import sqlite3

    from turnbench.state import UsageLog, UsageRow

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE usage (response_id TEXT PRIMARY KEY, created_at REAL, model TEXT, transport TEXT, "
            "state TEXT, input_tokens INT, cached_tokens INT, output_tokens INT, status TEXT)"
        )
        db.execute("INSERT INTO usage VALUES ('resp_old', 1.0, 'm', 'https', 'full', 10, 0, 5, 'completed')")
    db.close()
    log = UsageLog(str(path))
    try:
        log.write(UsageRow("resp_new", "m", "ws", "connection", 20, 16, 5, "completed", arrival=1, request_id="r1"))
        rows = {r["response_id"]: r for r in log.rows()}
    finally:
        log.close()
    assert rows["resp_old"]["arrival"] is None and rows["resp_old"]["input_tokens"] == 10
    assert (rows["resp_new"]["arrival"], rows["resp_new"]["request_id"], rows["resp_new"]["stages"]) == (1, "r1", "{}")
