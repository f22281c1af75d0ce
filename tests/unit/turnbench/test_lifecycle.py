"""A response's lifecycle on a connection: every transition of the table is taken through the methods the
connection and the service call, every other (state, event) pair is refused with ``LifecycleError``, and what
the transitions carry (steers, the call stub, the cut, option A's append and its reply) comes out right."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import get_args

import pytest

from turnbench.errors import InvalidRequestError, ServiceUnavailableError
from turnbench.lifecycle import (
    LONG_ONLY,
    STEER_ONLY,
    TRANSITIONS,
    Append,
    LifecycleError,
    LifecycleEvent,
    ResponseLifecycle,
    State,
)
from turnbench.pipeline import StageTimer

STATES: tuple[State, ...] = get_args(State)
EVENTS: tuple[LifecycleEvent, ...] = get_args(LifecycleEvent)


def _encode(event: object) -> bytes:
    return b"{}"


def _append(rid: str = "resp_1") -> Append:
    return Append(rid, [{"type": "function_call_output", "call_id": "call_1", "output": "ok"}], StageTimer(), 10)


def fire(lc: ResponseLifecycle, event: LifecycleEvent) -> None:
    """Fire ``event`` the way the connection or the service does: through its method."""
    calls: dict[LifecycleEvent, Callable[[], object]] = {
        "start": lambda: lc.start("resp_1"),
        "call": lambda: lc.call("call_1", "read_file"),
        "steer": lambda: lc.steer("steer_1", [{"role": "user", "content": "stop"}], _encode),
        "cut": lc.cut,
        "pause": lc.pause,
        "append": lambda: lc.hand(_append()),
        "refuse": lambda: lc.refuse(_append(), InvalidRequestError("bad", "input")),
        "resume": lambda: lc.resume(_append()),
        "finish": lc.finish,
    }
    calls[event]()


PATHS: dict[tuple[State, bool], tuple[LifecycleEvent, ...]] = {
    ("preparing", False): (),
    ("running", False): ("start",),
    ("steered", False): ("start", "steer"),
    ("cut", False): ("start", "steer", "cut"),
    ("ended", False): ("finish",),
    ("preparing", True): (),
    ("running", True): ("start",),
    ("paused", True): ("start", "call", "pause"),
    ("resuming", True): ("start", "call", "pause", "append"),
    ("ended", True): ("finish",),
}
"""How each state is reached, for a steerable (False) and a long (True) response."""


def reach(state: State, long: bool) -> ResponseLifecycle:
    lc = ResponseLifecycle(long=long)
    for event in PATHS[(state, long)]:
        fire(lc, event)
    assert lc.state == state
    return lc


def allowed_kind(state: State, event: LifecycleEvent) -> list[bool]:
    """The kinds (long or not) a legal ``(state, event)`` is taken by."""
    return [
        long for long in (False, True) if (state, long) in PATHS and event not in (STEER_ONLY if long else LONG_ONLY)
    ]


LEGAL = [(s, e, long) for (s, e) in TRANSITIONS for long in allowed_kind(s, e)]
ILLEGAL = [
    (s, e, long)
    for (s, long) in PATHS
    for e in EVENTS
    if (s, e) not in TRANSITIONS or e in (STEER_ONLY if long else LONG_ONLY)
]


def test_every_transition_is_taken_by_some_response_and_every_state_is_reached() -> None:
    assert {(s, e) for s, e, _ in LEGAL} == set(TRANSITIONS)
    assert {s for s, _ in PATHS} == set(STATES)
    assert not [s for s in STATES if s != "ended" and (s, "finish") not in TRANSITIONS]  # anything may end
    assert not [e for e in EVENTS if ("ended", e) in TRANSITIONS]  # nothing follows the end


@pytest.mark.parametrize(
    ("state", "event", "long"), LEGAL, ids=[f"{s}-{e}-{'long' if lg else 'steer'}" for s, e, lg in LEGAL]
)
async def test_a_legal_event_leads_to_the_state_the_table_names(
    state: State, event: LifecycleEvent, long: bool
) -> None:
    lc = reach(state, long)
    fire(lc, event)
    assert lc.state == TRANSITIONS[(state, event)]


@pytest.mark.parametrize(
    ("state", "event", "long"), ILLEGAL, ids=[f"{s}-{e}-{'long' if lg else 'steer'}" for s, e, lg in ILLEGAL]
)
async def test_an_illegal_event_is_refused_and_the_state_stays(state: State, event: LifecycleEvent, long: bool) -> None:
    lc = reach(state, long)
    with pytest.raises(LifecycleError, match=r"not allowed|none was awaited|while not paused"):
        fire(lc, event)
    assert lc.state == state


async def test_a_steered_message_stops_and_its_cut_and_steers_outlive_the_end() -> None:
    lc = ResponseLifecycle()
    lc.start("resp_1")
    assert not lc.should_stop() and lc.response_id == "resp_1"
    lc.steer("steer_1", [{"role": "user", "content": "a"}], _encode)
    lc.steer("steer_2", [{"role": "user", "content": "b"}], _encode)
    assert lc.should_stop() and [sid for sid, _ in lc.steers] == ["steer_1", "steer_2"]
    assert lc.steer_encode is _encode
    lc.cut()
    lc.steer("steer_3", [{"role": "user", "content": "c"}], _encode)  # a steer during post still queues
    lc.finish()
    assert lc.cut_short and len(lc.steers) == 3 and lc.calls == []


async def test_a_steered_function_call_keeps_its_stub_and_is_not_cut() -> None:
    lc = ResponseLifecycle()
    lc.start("resp_1")
    lc.steer("steer_1", [{"role": "user", "content": "a"}], _encode)
    lc.call("call_7", "read_file")
    lc.finish()
    assert not lc.cut_short
    assert lc.calls == [{"type": "function_call_output", "call_id": "call_7", "name": "read_file"}]


async def test_an_append_is_answered_none_when_it_resumes_and_its_error_when_refused() -> None:
    lc = ResponseLifecycle(long=True)
    lc.start("resp_1")
    assert not lc.accepts_append
    lc.pause()
    assert lc.accepts_append
    first = _append()
    waiter = asyncio.ensure_future(lc.appended())
    reply = lc.hand(first)
    assert not lc.accepts_append and await waiter is first
    err = InvalidRequestError("bad", "input")
    lc.refuse(first, err)
    assert reply.result() is err and lc.accepts_append  # paused again, for the next append
    second = _append()
    waiter = asyncio.ensure_future(lc.appended())
    reply = lc.hand(second)
    assert await waiter is second
    lc.resume(second)
    assert reply.result() is None and lc.state == "running" and not lc.accepts_append


async def test_the_end_answers_an_append_handed_over_and_not_yet_checked() -> None:
    lc = ResponseLifecycle(long=True)
    lc.start("resp_1")
    lc.pause()
    reply = lc.hand(_append())
    lc.finish()
    answer = reply.result()
    assert isinstance(answer, ServiceUnavailableError) and "ended before" in answer.message


async def test_a_pause_abandoned_by_a_cancelled_wait_accepts_no_append() -> None:
    lc = ResponseLifecycle(long=True)
    lc.start("resp_1")
    lc.pause()
    waiter = asyncio.ensure_future(lc.appended())
    await asyncio.sleep(0)
    waiter.cancel()  # the response's task is cancelled while it waits (its timeout, the connection ending)
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert lc.state == "paused" and not lc.accepts_append
    with pytest.raises(LifecycleError, match="none was awaited"):
        lc.hand(_append())
