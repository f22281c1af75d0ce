"""Forks and the eviction rules of the connection cache (docs/protocol/websocket-mode.md, The connection cache), one
contract over WebSocket mode and gRPC
``Connect`` (json codec), driven as ``test_connection.py`` drives them.

What the spec says, and what is asserted here:

- "Send a completed response's ID as ``previous_response_id`` with a **new** ``stream_id``. Both branches can
  then run concurrently": a fork runs beside the parent's own continuation on its lane.
- "A cross-lane fork that errors preserves the shared parent": refused before ``response.created`` (an invalid
  input) or failed after it (the request timeout), the parent still serves its lane and another fork.
- "A same-lane continuation that returns 4xx/5xx evicts the referenced ``previous_response_id``": a later
  continuation of it gets ``previous_response_not_found`` with ``store=false``; with ``store=true`` it is
  hydrated from the store (a cache miss: "may hydrate older response IDs from persisted state").
- "With ``store=false``, the parent may be evicted before a queued fork starts. Wait for the fork's
  ``response.in_progress`` before advancing the source lane, or retry with full input": the server keeps each
  lane's latest response (a.5), so a fork queued behind its lane's running response loses a parent whose lane
  has moved on. It gets ``previous_response_not_found`` on its lane, the connection goes on serving, and the
  retry with full input completes; a fork that started first (``response.in_progress``) completes; with
  ``store=true`` the queued fork hydrates the parent.

A same-lane continuation refused while its body is decoded (before ``prepare``: a member of the wrong type)
evicts its parent too: the decoder's skip-scan reads ``previous_response_id`` on that error path.

Real TLS sockets on 127.0.0.1, port 0. The order of events is asserted, never how long anything took; where a
case needs one response to finish before another, the first is tens of times shorter, and the test checks
that order before it asserts what follows from it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from servers.base import RunningServer
from tests.contract.test_connection import TRANSPORTS, Driver, Opener, create
from tests.helpers import usage_rows
from turnbench.schema import TERMINAL_TYPES

Events = list[dict[str, Any]]
ServeFn = Callable[..., Any]

UNKNOWN_CALL = [{"type": "function_call_output", "call_id": "call_nobody_made", "output": "42"}]
"""A continuation's input the server refuses in ``prepare`` (after it looked the parent up): the output of a
function call the conversation never made."""


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> tuple[str, Opener]:
    value: tuple[str, Opener] = request.param
    return value


async def collect(conn: Driver, done: Callable[[Events], bool], events: Events | None = None) -> Events:
    """Read events (appended to ``events``) until ``done(events)``; the connection must not end first."""
    events = [] if events is None else events
    while not done(events):
        event = await conn.recv()
        assert event is not None, (events[-5:], conn.ended)
        events.append(event)
    return events


def ends(events: Events, lane: str | None) -> Events:
    """The terminal events (an ``error`` included) of ``lane`` (None: the default lane), in order."""
    return [e for e in events if e.get("stream_id") == lane and e["type"] in TERMINAL_TYPES]


def ended(lane: str | None, n: int = 1) -> Callable[[Events], bool]:
    return lambda events: len(ends(events, lane)) >= n


def index(events: Events, lane: str | None, kind: str) -> int:
    """The position of ``lane``'s first event of type ``kind`` (``"terminal"``: its first terminal event)."""
    for i, e in enumerate(events):
        if e.get("stream_id") == lane and (e["type"] == kind or (kind == "terminal" and e["type"] in TERMINAL_TYPES)):
            return i
    raise AssertionError(f"no {kind} on lane {lane!r} in {[e['type'] for e in events]}")


async def parent_on(conn: Driver, lane: str | None, **body: Any) -> dict[str, Any]:
    """A completed response on ``lane``: the parent. Returns its response object."""
    await conn.send(create(lane, answer_tokens=2, input="plan the work", **body))
    (done,) = ends(await collect(conn, ended(lane)), lane)
    assert done["type"] == "response.completed", done
    response: dict[str, Any] = done["response"]
    return response


def context_tokens(response: dict[str, Any]) -> int:
    """The tokens of ``response``'s whole conversation: what a continuation of it starts from."""
    usage = response["usage"]
    return int(usage["input_tokens"]) + int(usage["output_tokens"])


def assert_not_found(event: dict[str, Any], lane: str | None, pid: str) -> None:
    """``event`` is the spec's ``previous_response_not_found`` error for ``pid``, on ``lane``."""
    assert event["type"] == "error" and event["status"] == 400, event
    assert event.get("stream_id") == lane
    err = event["error"]
    assert err["code"] == "previous_response_not_found" and err["param"] == "previous_response_id"
    assert err["message"] == f"Previous response with id '{pid}' not found."


async def states(server: RunningServer) -> dict[str, str]:
    """How the server resolved each finished response's state (``connection``, ``store``, ``full``), by id."""
    return {row["response_id"]: row["state"] for row in await usage_rows(server)}


async def fail(conn: Driver, how: str, lane: str | None, pid: str) -> dict[str, Any]:
    """Send a continuation of ``pid`` on ``lane`` that fails ``how``: ``refused`` before ``response.created``
    (an ``error`` event, 400), or ``failed`` after it (``response.failed``: the server's request timeout, which
    the test's server sets to 1 s). Returns its terminal event."""
    if how == "refused":
        await conn.send(create(lane, input=UNKNOWN_CALL, previous_response_id=pid))
    else:
        await conn.send(create(lane, answer_tokens=300, input="write it all", previous_response_id=pid))
    (last,) = ends(await collect(conn, ended(lane)), lane)
    if how == "refused":
        assert last["type"] == "error" and last["status"] == 400 and last["error"]["param"] == "input[0].call_id"
    else:
        assert last["type"] == "response.failed" and last["response"]["error"]["code"] == "request_timeout"
        assert last["response"]["previous_response_id"] == pid  # it ran: response.created came first
    return last


FAILURES = [pytest.param("refused", id="refused"), pytest.param("failed", id="failed")]


async def test_a_fork_runs_beside_its_parents_own_continuation(serve: ServeFn, transport: tuple[str, Opener]) -> None:
    """The parent's lane goes on and a fork of the same parent starts on a new lane at the same time: both run
    (each starts before the other ends), both continue the parent from the connection cache, both complete."""
    name, open_conn = transport
    server = await serve(name, profile="frontier")  # ~65 tok/s: a 30-token answer streams for ~0.5 s
    async with open_conn(server, None) as conn:
        parent = await parent_on(conn, "main")
        pid = parent["id"]
        await conn.send(create("main", answer_tokens=30, input="next step", previous_response_id=pid))
        await conn.send(create("fork", answer_tokens=30, input="sub-task", previous_response_id=pid))
        events = await collect(conn, lambda ev: ended("main")(ev) and ended("fork")(ev))
    assert index(events, "fork", "response.created") < index(events, "main", "terminal")
    assert index(events, "main", "response.created") < index(events, "fork", "terminal")
    done = [ends(events, lane)[0] for lane in ("main", "fork")]
    for ev in done:
        assert ev["type"] == "response.completed", ev
        assert ev["response"]["previous_response_id"] == pid
        assert ev["response"]["usage"]["input_tokens"] > context_tokens(parent)  # the parent's history came along
    resolved = await states(server)
    assert [resolved[ev["response"]["id"]] for ev in done] == ["connection", "connection"]


@pytest.mark.parametrize("how", FAILURES)
async def test_a_failed_cross_lane_fork_keeps_the_shared_parent(
    serve: ServeFn, transport: tuple[str, Opener], how: str
) -> None:
    name, open_conn = transport
    server = await serve(name, profile="frontier", request_timeout_s=1.0)
    async with open_conn(server, None) as conn:
        parent = await parent_on(conn, "main")
        pid = parent["id"]
        await fail(conn, how, "fork", pid)
        await conn.send(create("fork", input="sub-task, again", previous_response_id=pid))  # the fork retried
        (fork,) = ends(await collect(conn, ended("fork")), "fork")
        await conn.send(create("main", input="next step", previous_response_id=pid))  # the parent's own lane
        (cont,) = ends(await collect(conn, ended("main")), "main")
    for ev in (fork, cont):
        assert ev["type"] == "response.completed", ev
        assert ev["response"]["previous_response_id"] == pid
        assert ev["response"]["usage"]["input_tokens"] > context_tokens(parent)
    resolved = await states(server)
    assert resolved[fork["response"]["id"]] == resolved[cont["response"]["id"]] == "connection"


SAME_LANE = [
    pytest.param("refused", "main", id="refused-named-lane"),
    pytest.param("refused", None, id="refused-default-lane"),
    pytest.param("failed", "main", id="failed-named-lane"),
]


@pytest.mark.parametrize("store", [False, True], ids=["store-false", "store-true"])
@pytest.mark.parametrize(("how", "lane"), SAME_LANE)
async def test_a_failed_same_lane_continuation_evicts_its_parent(
    serve: ServeFn, transport: tuple[str, Opener], how: str, lane: str | None, store: bool
) -> None:
    """After the failure the parent is gone from the connection cache, for its lane and for a fork alike:
    ``previous_response_not_found`` with ``store=false``, hydrated from the store with ``store=true``; either
    way the connection goes on serving."""
    name, open_conn = transport
    server = await serve(name, profile="frontier", request_timeout_s=1.0)
    async with open_conn(server, None) as conn:
        parent = await parent_on(conn, lane, store=store)
        pid = parent["id"]
        await fail(conn, how, lane, pid)
        await conn.send(create(lane, input="next step", previous_response_id=pid, store=store))
        (again,) = ends(await collect(conn, ended(lane)), lane)
        await conn.send(create("fork", input="sub-task", previous_response_id=pid, store=store))
        (fork,) = ends(await collect(conn, ended("fork")), "fork")
        await conn.send(create(lane, input="start over: plan the work, next step"))  # no parent: full input
        (fresh,) = ends(await collect(conn, ended(lane)), lane)
    assert fresh["type"] == "response.completed"
    if not store:
        assert_not_found(again, lane, pid)
        assert_not_found(fork, "fork", pid)
        return
    resolved = await states(server)
    for ev in (again, fork):  # a cache miss: the parent came back from the store
        assert ev["type"] == "response.completed" and ev["response"]["previous_response_id"] == pid, ev
        assert ev["response"]["usage"]["input_tokens"] > context_tokens(parent)
        assert resolved[ev["response"]["id"]] == "store"


async def test_a_same_lane_continuation_refused_while_decoding_evicts_its_parent_too(
    serve: ServeFn, transport: tuple[str, Opener]
) -> None:
    """A continuation whose body does not match the request schema is refused with a 400 on its lane, as one
    refused in ``prepare`` is; the spec makes no difference between them."""
    name, open_conn = transport
    server = await serve(name)
    async with open_conn(server, None) as conn:
        pid = (await parent_on(conn, "main"))["id"]
        await conn.send(create("main", input=5, previous_response_id=pid))  # `input`: a string or a list
        (refused,) = ends(await collect(conn, ended("main")), "main")
        assert refused["type"] == "error" and refused["status"] == 400 and refused["error"]["param"] == "input"
        await conn.send(create("main", input="next step", previous_response_id=pid))
        (again,) = ends(await collect(conn, ended("main")), "main")
    assert_not_found(again, "main", pid)


@pytest.mark.parametrize("store", [False, True], ids=["store-false", "store-true"])
async def test_a_queued_fork_loses_a_parent_whose_lane_moved_on(
    serve: ServeFn, transport: tuple[str, Opener], store: bool
) -> None:
    """The fork waits on its lane behind a long response; meanwhile the parent's own lane continues and
    completes, and the cache keeps only that lane's latest response. With ``store=false`` the fork then gets
    ``previous_response_not_found`` on its lane (the spec's warning), the connection goes on, and the retry
    with full input completes; with ``store=true`` the fork hydrates the parent and completes."""
    name, open_conn = transport
    server = await serve(name, profile="frontier")  # ~65 tok/s: 150 tokens stream for ~2.3 s
    async with open_conn(server, None) as conn:
        parent = await parent_on(conn, "main", store=store)
        pid = parent["id"]
        await conn.send(create("fork", answer_tokens=150, input="a long answer first", store=store))
        await conn.send(create("fork", input="sub-task", previous_response_id=pid, store=store))  # queued
        await conn.send(create("main", answer_tokens=1, input="next step", previous_response_id=pid, store=store))
        events = await collect(conn, lambda ev: ended("main")(ev) and ended("fork", 2)(ev))
        (cont,) = ends(events, "main")
        long, fork = ends(events, "fork")
        # the precondition: the parent's lane moved on before the fork left its queue
        assert events.index(cont) < events.index(long), "the 1-token continuation finished after 150 tokens"
        assert cont["type"] == long["type"] == "response.completed"
        if not store:
            assert_not_found(fork, "fork", pid)
            await conn.send(create("fork", input="plan the work, then the sub-task"))  # retry with full input
            (retry,) = ends(await collect(conn, ended("fork", 3), events), "fork")[2:]
            assert retry["type"] == "response.completed" and retry["response"]["previous_response_id"] is None
            return
    assert fork["type"] == "response.completed" and fork["response"]["previous_response_id"] == pid
    assert (await states(server))[fork["response"]["id"]] == "store"


async def test_a_fork_that_started_keeps_its_parent_when_the_lane_moves_on(
    serve: ServeFn, transport: tuple[str, Opener]
) -> None:
    """The spec's advice: wait for the fork's ``response.in_progress`` before advancing the source lane. With
    ``store=false`` the fork then completes although the parent leaves the cache while it runs (the lane moved
    on, and no lane's latest response is the parent any more): a later fork of it is refused."""
    name, open_conn = transport
    server = await serve(name, profile="frontier")
    async with open_conn(server, None) as conn:
        parent = await parent_on(conn, "main")
        pid = parent["id"]
        await conn.send(create("fork", answer_tokens=60, input="sub-task", previous_response_id=pid))
        events = await collect(conn, lambda ev: any(e["type"] == "response.in_progress" for e in ev))
        await conn.send(create("main", answer_tokens=1, input="next step", previous_response_id=pid))
        await collect(conn, lambda ev: ended("main")(ev) and ended("fork")(ev), events)
        (cont,), (fork,) = ends(events, "main"), ends(events, "fork")
        assert events.index(cont) < events.index(fork)  # the lane moved on while the fork ran
        for ev in (cont, fork):
            assert ev["type"] == "response.completed" and ev["response"]["previous_response_id"] == pid, ev
        assert fork["response"]["usage"]["input_tokens"] > context_tokens(parent)
        await conn.send(create("late", input="one more sub-task", previous_response_id=pid))
        (late,) = ends(await collect(conn, ended("late")), "late")
        assert_not_found(late, "late", pid)
