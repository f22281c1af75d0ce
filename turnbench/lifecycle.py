"""The states of one response on a connection, and the transitions between them, written once.

A response on a WebSocket-mode or gRPC ``Connect`` connection can be steered (``response.steer``, see
docs/guides/steering.md) or, as option A's long response (docs/guides/option-a.md), paused at each tool call
until a ``response.append`` resumes it. The connection and the service both act on it; neither touches its
state directly: each calls one method of :class:`ResponseLifecycle`, which fires one event of
:data:`TRANSITIONS` and refuses any other with :class:`LifecycleError`::

    preparing ──start──▶ running ──steer──▶ steered ──cut──▶ cut    steered: a message stops at its next token
                          │    ▲                                     cut: it ends incomplete, reason "steered"
                    pause │    └──────resume──────┐
                          ▼                       │
                        paused ──append──▶ resuming                  option A: paused at a tool call until
                          ▲                       │                  a response.append passes its checks
                          └──────refuse───────────┘

    every state but ended ─finish─▶ ended

A steerable response is never paused, and a long one never steered (:data:`LONG_ONLY`, :data:`STEER_ONLY`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from turnbench.errors import ServiceUnavailableError
from turnbench.pipeline import StageTimer

__all__ = [
    "LONG_ONLY",
    "STEER_ONLY",
    "TRANSITIONS",
    "Append",
    "LifecycleError",
    "LifecycleEvent",
    "ResponseLifecycle",
    "State",
]

State = Literal["preparing", "running", "steered", "cut", "paused", "resuming", "ended"]
LifecycleEvent = Literal["start", "call", "steer", "cut", "pause", "append", "refuse", "resume", "finish"]

TRANSITIONS: dict[tuple[State, LifecycleEvent], State] = {
    # the request passed its checks: response.created is on its way (the service's generate)
    ("preparing", "start"): "running",
    # a function call is planned: its required_input stub is what held steers wait for
    ("running", "call"): "running",
    ("steered", "call"): "steered",
    # response.steer accepted: a message stops at its next token; more steers queue behind the first
    ("running", "steer"): "steered",
    ("steered", "steer"): "steered",
    ("cut", "steer"): "cut",
    # the answer stopped early for the steer: it ends incomplete, reason "steered"
    ("steered", "cut"): "cut",
    # option A: a long response stops at its tool call (response.done) and waits for response.append
    ("running", "pause"): "paused",
    ("paused", "append"): "resuming",  # an append was handed over: its input is being checked
    ("resuming", "refuse"): "paused",  # the append was refused: the response waits for the next one
    ("resuming", "resume"): "running",  # the append was taken: sampling goes on in the same response
    # the response ended (completed, incomplete, failed, cancelled) or was refused before it started
    ("preparing", "finish"): "ended",
    ("running", "finish"): "ended",
    ("steered", "finish"): "ended",
    ("cut", "finish"): "ended",
    ("paused", "finish"): "ended",
    ("resuming", "finish"): "ended",
}
"""Every legal ``(state, event)`` and the state it leads to; any other pair is a bug (:class:`LifecycleError`)."""

LONG_ONLY: frozenset[LifecycleEvent] = frozenset({"pause", "append", "refuse", "resume"})
"""Events only a long response (option A) takes."""
STEER_ONLY: frozenset[LifecycleEvent] = frozenset({"steer", "cut"})
"""Events only a steerable (not long) response takes."""


class LifecycleError(RuntimeError):
    """An event its response's state does not allow: a bug in the connection or the service, never the
    client's doing (the client's mistakes are refused with typed errors before any event is fired)."""


@dataclass(slots=True)
class Append:
    """Option A's ``response.append``, parsed: the paused response it names, the raw input, its parse timings
    (the next segment's stages start with them) and size. :meth:`ResponseLifecycle.hand` sets ``reply``,
    which the response resolves with None (accepted: sampling resumes) or the error that refused it (the
    response stays paused)."""

    response_id: str
    input: str | list[dict[str, Any]]
    timer: StageTimer
    nbytes: int
    reply: asyncio.Future[Exception | None] | None = None


Steer = tuple[str, list[dict[str, Any]]]
"""One accepted steering input: its id (``steer_…``) and its items."""


class ResponseLifecycle:
    """One response's state on a connection, and what its transitions carry: the steering inputs queued on
    it, the function call it stopped at, and (option A) the append it waits for.

    The connection makes it (``long``: the request's ``long_response``) before the request is prepared and
    finishes it when the response is over; the service's ``generate`` starts, cuts, pauses and resumes it.
    """

    __slots__ = ("_append", "_calls", "_cut", "_encode", "_long", "_response_id", "_state", "_steers", "_waiting")

    def __init__(self, *, long: bool = False) -> None:
        self._long = long
        self._response_id: str | None = None
        self._state: State = "preparing"
        self._steers: list[Steer] = []
        self._encode: Callable[[Any], bytes] | None = None
        self._calls: list[dict[str, Any]] = []
        self._cut = False
        self._waiting: asyncio.Future[Append] | None = None  # paused: resolved with the append handed over
        self._append: Append | None = None  # resuming: the append being checked

    def __repr__(self) -> str:
        return f"ResponseLifecycle({self._response_id!r}, state={self._state!r}, long={self._long})"

    # ------------------------------------------------------------------------------------------ reading

    @property
    def long(self) -> bool:
        """Whether it is option A's long response (paused at tool calls; never steered)."""
        return self._long

    @property
    def response_id(self) -> str | None:
        """Its response's id, once started."""
        return self._response_id

    @property
    def state(self) -> State:
        return self._state

    @property
    def steers(self) -> list[Steer]:
        """The steering inputs accepted for this response, in arrival order (a copy)."""
        return list(self._steers)

    @property
    def steer_encode(self) -> Callable[[Any], bytes] | None:
        """The codec the last steer came in (its answers use it); None if no steer came."""
        return self._encode

    @property
    def calls(self) -> list[dict[str, Any]]:
        """The function call it stopped at as ``required_input`` stubs (empty: it made none)."""
        return [dict(c) for c in self._calls]

    @property
    def cut_short(self) -> bool:
        """Whether its answer stopped early for a steer (it ends incomplete, reason ``"steered"``)."""
        return self._cut

    def should_stop(self) -> bool:
        """Whether a message being sampled stops at its next token (a steer was accepted)."""
        return self._state in ("steered", "cut")

    @property
    def accepts_append(self) -> bool:
        """Whether it is paused at a tool call with no append being checked (option A)."""
        return self._state == "paused" and self._waiting is not None and not self._waiting.done()

    # ------------------------------------------------------------------------------------------ events

    def _fire(self, event: LifecycleEvent) -> None:
        """Move to the state :data:`TRANSITIONS` gives for ``event``; raise :class:`LifecycleError` if none."""
        nxt = TRANSITIONS.get((self._state, event))
        wrong_kind = event in (STEER_ONLY if self._long else LONG_ONLY)
        if nxt is None or wrong_kind:
            kind = "long" if self._long else "steerable"
            raise LifecycleError(f"{self!r}: event {event!r} is not allowed for a {kind} response in {self._state!r}")
        self._state = nxt

    def start(self, response_id: str) -> None:
        """Service: the request passed every check and its response (``response_id``) starts."""
        self._fire("start")
        self._response_id = response_id

    def call(self, call_id: str, name: str) -> None:
        """Service: the segment being sampled is a function call (its stub is what held steers wait for)."""
        self._fire("call")
        self._calls = [{"type": "function_call_output", "call_id": call_id, "name": name}]

    def steer(self, steer_id: str, items: list[dict[str, Any]], encode: Callable[[Any], bytes]) -> None:
        """Connection: queue a steering input (``encode``: the codec it came in); a message being sampled
        stops at its next token, a function call finishes (its steers then wait for the tool's output)."""
        self._fire("steer")
        self._steers.append((steer_id, items))
        self._encode = encode

    def cut(self) -> None:
        """Service: the answer stopped early for the steer; the response ends incomplete, reason "steered"."""
        self._fire("cut")
        self._cut = True

    def pause(self) -> None:
        """Service (option A): the response stopped at its tool call; from now on :meth:`hand` may give it
        the ``response.append`` that resumes it. Call before sending ``response.done``: an append the client
        sends on reading it must find the response paused."""
        self._fire("pause")
        self._waiting = asyncio.get_running_loop().create_future()

    def hand(self, append: Append) -> asyncio.Future[Exception | None]:
        """Connection (option A): give ``append`` to the paused response (check :attr:`accepts_append`
        first). Returns: its ``reply``, resolved with None (sampling resumed) or the error that refused it."""
        waiting = self._waiting
        if waiting is None or waiting.done():
            raise LifecycleError(f"{self!r}: an append was handed over while none was awaited")
        self._fire("append")
        self._append = append
        append.reply = asyncio.get_running_loop().create_future()
        waiting.set_result(append)
        return append.reply

    async def appended(self) -> Append:
        """Service (option A): wait until the connection hands over an append (state ``resuming`` then)."""
        if self._waiting is None:
            raise LifecycleError(f"{self!r}: waited for an append while not paused")
        return await self._waiting

    def refuse(self, append: Append, error: Exception) -> None:
        """Service (option A): ``append`` failed its checks; its sender gets ``error`` and the response
        waits, paused, for the next one."""
        self._fire("refuse")
        self._append = None
        self._waiting = asyncio.get_running_loop().create_future()
        _answer(append, error)

    def resume(self, append: Append) -> None:
        """Service (option A): ``append`` passed its checks; sampling goes on in the same response."""
        self._fire("resume")
        self._append = self._waiting = None
        _answer(append, None)

    def finish(self) -> None:
        """Connection: the response is over (or was refused before it started). An append handed over and
        not yet answered is refused, so its sender is answered and its task ends."""
        self._fire("finish")
        append, self._append, self._waiting = self._append, None, None
        if append is not None:
            _answer(append, ServiceUnavailableError("The response ended before this response.append was applied."))


def _answer(append: Append, error: Exception | None) -> None:
    """Resolve an append's ``reply``: None (it resumed the response) or the error that refused it."""
    if append.reply is not None and not append.reply.done():
        append.reply.set_result(error)
