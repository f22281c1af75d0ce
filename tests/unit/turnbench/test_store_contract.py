"""One contract for every ResponseStore (memory, SQLite, Redis): what is put comes back whole, a delete
forgets, namespaces (API keys) never see each other's responses, the count bound holds, and two services on
one shared store continue each other's store=true chains (two server hosts behind one client)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.unit.turnbench.test_service import make_service, turn, types
from turnbench.schema import Response
from turnbench.state import StoredResponse, StoreLimits, open_store


def stored(n: int) -> StoredResponse:
    response = Response(id=f"resp_{n:05d}", created_at=0, model="m", output=[], status="completed")
    return StoredResponse(response=response, items=[{"type": "message", "role": "user", "content": f"turn {n}"}])


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store_url(request: Any, tmp_path: Path) -> str:
    if request.param == "memory":
        return "memory"
    if request.param == "sqlite":
        return f"sqlite:{tmp_path / 'store.db'}"
    url: str = request.getfixturevalue("redis_url")
    import redis

    redis.Redis.from_url(url).flushdb()  # each test starts from an empty database
    return url


def test_put_get_delete_round_trip(store_url: str) -> None:
    s = open_store(store_url)
    s.put(stored(1))
    back = s.get("resp_00001")
    assert back is not None and back.response.id == "resp_00001" and back.items[0].content == "turn 1"
    assert s.get("resp_99999") is None
    assert s.delete("resp_00001") is True and s.get("resp_00001") is None and s.delete("resp_00001") is False
    s.close()


def test_namespaces_do_not_see_each_other(store_url: str) -> None:
    if store_url == "memory":
        pytest.skip("a memory store is one process with one key")
    a, b = open_store(store_url, tenant="key-a"), open_store(store_url, tenant="key-b")
    a.put(stored(2))
    assert a.get("resp_00002") is not None and b.get("resp_00002") is None and b.delete("resp_00002") is False
    a.close()
    b.close()


def test_the_count_bound_keeps_the_newest(store_url: str) -> None:
    s = open_store(store_url, limits=StoreLimits(max_entries=50))
    for n in range(300):
        s.put(stored(n))
    if hasattr(s, "prune"):
        s.prune()
    kept = [n for n in range(300) if s.get(f"resp_{n:05d}") is not None]
    assert len(kept) == 50 and kept == list(range(250, 300))
    s.close()


async def test_two_services_on_one_store_continue_each_others_chains(store_url: str) -> None:
    if store_url == "memory":
        pytest.skip("a memory store is not shared between processes or hosts")
    host_a, host_b = make_service(store=store_url), make_service(store=store_url)
    first = await turn(
        host_a, host_a.new_session("https", connection=False), {"model": "m", "input": "hi", "store": True}
    )
    rid = first[-1].response.id
    await host_a.drain()  # post wrote it (overlapped with the answer)
    body = {"model": "m", "input": "and then?", "store": True, "previous_response_id": rid}
    second = await turn(host_b, host_b.new_session("https", connection=False), body)
    assert types(second)[-1] == "response.completed" and second[-1].response.previous_response_id == rid
    assert second[-1].response.usage.input_tokens > first[-1].response.usage.input_tokens  # the history came along
    host_a.close()
    host_b.close()


async def test_a_connection_response_is_in_a_shared_store_when_it_completes(store_url: str) -> None:
    """On a store other processes read, a connection's store=true write is not overlapped with the next
    request: it lands before ``response.completed`` (another host may get the next turn at once). The post
    stage burns 50 ms so an overlapped write would still be in flight when the response is read back."""
    if store_url == "memory":
        pytest.skip("a memory store is this process's alone: a reader here waits for a write in flight")
    host_a = make_service(store=store_url, burn_us={"post": 50_000.0})
    session = host_a.new_session("ws", connection=True)
    events = await turn(host_a, session, {"model": "m", "input": "hi", "store": True})
    rid = events[-1].response.id
    other = open_store(store_url)  # another process's view: no in-process wait for a pending write
    try:
        assert other.shared and other.get(rid) is not None
    finally:
        other.close()
        await host_a.drain()
        host_a.close()


def _open_usage_log(path: str, start: float, results: Any) -> None:
    import time

    from turnbench.state import UsageLog

    while time.time() < start:  # every process opens the file at the same moment
        pass
    try:
        UsageLog(path).close()
        results.put("ok")
    except Exception as exc:
        results.put(repr(exc))


def test_processes_opening_one_new_sqlite_file_together_all_succeed(tmp_path: Path) -> None:
    """``--workers`` processes open the same new store and usage files together at start-up. Switching the
    journal to WAL then failed at once with "database is locked" in about one round in three (4 processes;
    12 failures in 30 rounds before the fix); it now waits, as every other statement does."""
    import multiprocessing
    import time

    ctx = multiprocessing.get_context("fork")
    failures = []
    for k in range(12):
        results = ctx.Queue()
        start = time.time() + 0.3
        procs = [
            ctx.Process(target=_open_usage_log, args=(str(tmp_path / f"u{k}.db"), start, results)) for _ in range(4)
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        failures += [r for r in (results.get(timeout=10) for _ in procs) if r != "ok"]
    assert failures == []
