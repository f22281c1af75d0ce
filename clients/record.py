"""One result record for every client, and the recorder that fills it from the events of one turn.

Every transport client (``https``, ``ws``, ``grpc``, ``sdk-*``) hands the events of one ``response.create``
to a :class:`TurnRecorder` and gets back the same :class:`TurnResult`, so the metrics, the report and the
gate never know which transport produced a sample (docs/concepts/measurements.md). The recorder is also the one place
that
interprets what an event means (:meth:`TurnRecorder.interpret`); a client only frames and decodes. A
recorder never raises: a failure is ``success=False`` plus ``error`` text and an ``error_code``.

Time comes from one injectable monotonic clock (default ``time.perf_counter_ns``): timestamps in ns,
durations in ms. ``t_send`` is just before the first request byte is written; ``t_scheduled`` is when the
request was due (open loop) or ``t_send`` (closed loop).

- ``queue_ms``: scheduled -> send (queueing before send is reported, never hidden).
- ``ttfb_ms``: send -> first event of any kind (lifecycle events such as ``response.created`` count).
- ``ttft_ms``: send -> first *content* delta (:data:`~turnbench.schema.CONTENT_DELTA_TYPES`).
- ``itl_ms``: gaps between consecutive content deltas.
- ``turn_ms``: send -> terminal event (:data:`~turnbench.schema.TERMINAL_TYPES`, or option A's pause,
  ``response.done``: :data:`~turnbench.schema.TURN_END_TYPES`), or -> the failure if the turn failed first.
- ``latency_ms``: scheduled -> terminal, so ``latency_ms == queue_ms + turn_ms``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import msgspec
import orjson

from turnbench.schema import CONTENT_DELTA_TYPES, TURN_END_TYPES, StageStat

__all__ = ["MALFORMED_EVENT", "MALFORMED_RESPONSE", "PHASES", "RolloutResult", "TurnRecorder", "TurnResult"]

Clock = Callable[[], int]

MALFORMED_EVENT = "client_malformed_event"
"""Failure code of an event that is not a JSON object: the stream is out of step with the turn."""

MALFORMED_RESPONSE = "client_malformed_response"
"""Failure code of a terminal event (or reply body) whose Response object is missing or unusable."""

_FAILURE_TYPES = frozenset({"response.failed", "error"})

PHASES = ("turn", "compact", "after_compact")
"""What a request of a rollout is (:attr:`TurnResult.phase`): an ordinary model turn, a compaction call
(``POST /v1/responses/compact``), or the first model turn after a compaction (the one that sends the compacted
history and, on a chaining state strategy, starts a new chain)."""
"""Terminal event types that make the turn a failure even before its details are known."""


class TurnResult(msgspec.Struct, kw_only=True):
    """One ``response.create`` as one client saw it. Durations in ms, byte counts in bytes."""

    transport: str
    state: str
    rollout_id: int = 0
    turn_index: int = 0
    success: bool = True
    error: str | None = None
    error_code: str | None = None
    response_id: str | None = None
    output_kind: str | None = None
    t_scheduled_ns: int = 0
    t_send_ns: int = 0
    queue_ms: float = 0.0
    connect_ms: float | None = None
    ttfb_ms: float | None = None
    ttft_ms: float | None = None
    itl_ms: list[float] = []
    turn_ms: float | None = None
    latency_ms: float | None = None
    chunks: int = 0
    events: int = 0
    output_tokens: int = 0
    input_tokens: int = 0
    cached_tokens: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    server_stages: dict[str, StageStat] = {}
    tool_ms: float = 0.0
    phase: str = "turn"  # one of PHASES
    input_bytes: int = 0  # the request's ``input`` as JSON, bytes: the history (or new items) it carried


class RolloutResult(msgspec.Struct, kw_only=True):
    """One agent rollout (several turns). ``rollout_ms``: first send -> final answer, incl. tool time."""

    transport: str
    state: str
    rollout_id: int
    success: bool
    error: str | None = None
    turns: list[TurnResult]
    rollout_ms: float
    tool_ms: float = 0.0
    recoveries: int = 0
    recovery_ms: float = 0.0
    connect_ms: float | None = None
    final_output: str | None = None
    tool_calls: list[tuple[str, str]] = []
    compactions: int = 0  # compaction calls that succeeded


def _ms(delta_ns: int) -> float:
    return delta_ns / 1e6


def _as_int(value: object) -> int:
    """Best-effort int from a wire value; anything unusable counts as 0 (the recorder never raises)."""
    if isinstance(value, int) or (isinstance(value, float) and math.isfinite(value)):
        return int(value)
    return 0


def _get(mapping: object, key: str) -> object:
    return mapping.get(key) if isinstance(mapping, Mapping) else None


class TurnRecorder:
    """Collects the timestamps and counters of one turn and builds its :class:`TurnResult`.

    A transport client calls, in order: ``scheduled`` (optional, open loop), ``sent``, then per event
    received :meth:`interpret` (or :meth:`interpret_json` with the event's JSON bytes) until one ends the
    turn (it returns the Response, or ``{}``, instead of None), ``fail`` on a transport error, and the
    caller finally takes ``result()``. No method raises.

    Clients whose events arrive already typed (protobuf messages, the SDK's models) may record a
    non-terminal event with :meth:`on_event` (its type is all that is read of it) and hand only terminal
    and error events to :meth:`interpret`.
    """

    def __init__(
        self,
        transport: str,
        state: str,
        *,
        rollout_id: int = 0,
        turn_index: int = 0,
        tool_ms: float = 0.0,
        connect_ms: float | None = None,
        clock: Clock = time.perf_counter_ns,
        phase: str = "turn",
    ) -> None:
        self.transport, self.state = transport, state
        self.phase = phase
        self.input_bytes = 0  # set by the caller: the JSON size of the request's input
        self.rollout_id, self.turn_index = rollout_id, turn_index
        self.tool_ms = tool_ms
        self.connect_ms = connect_ms
        self.clock = clock
        self.success = True
        self._failure_inferred = False  # failure guessed from an event type; details from fail() replace it
        self.error: str | None = None
        self.error_code: str | None = None
        self.response_id: str | None = None
        self.output_kind: str | None = None
        self.t_scheduled_ns: int | None = None
        self.t_send_ns: int | None = None
        self.t_first_event_ns: int | None = None
        self.t_first_delta_ns: int | None = None
        self.t_last_delta_ns: int | None = None
        self.t_terminal_ns: int | None = None
        self.itl_ms: list[float] = []
        self.chunks = self.events = 0  # content deltas; all events
        self.bytes_up = self.bytes_down = 0
        self.input_tokens = self.output_tokens = self.cached_tokens = 0  # server-reported usage
        self.server_stages: dict[str, StageStat] = {}

    def _now(self, t_ns: int | None) -> int:
        return self.clock() if t_ns is None else t_ns

    def scheduled(self, t_ns: int | None = None) -> None:
        """Stamp when the request was due (open loop). Defaults to now on the recorder's clock."""
        self.t_scheduled_ns = self._now(t_ns)

    def sent(self, nbytes_up: int = 0, *, t_ns: int | None = None) -> None:
        """Stamp ``t_send`` (first call only) and add ``nbytes_up`` bytes of request payload and framing.

        A request written in several frames may call this once per frame; only the first stamps time.
        """
        if self.t_send_ns is None:
            self.t_send_ns = self._now(t_ns)
        self.bytes_up += max(0, nbytes_up)

    def add_bytes(self, *, up: int = 0, down: int = 0) -> None:
        """Count bytes not tied to an event (e.g. HTTP headers, WebSocket control frames)."""
        self.bytes_up += max(0, up)
        self.bytes_down += max(0, down)

    # ---------------------------------------------------------------------------------------- events

    def interpret(self, event: object, nbytes: int = 0, *, t_ns: int | None = None) -> dict[str, Any] | None:
        """Record one decoded event of ``nbytes`` bytes (payload and framing) received at ``t_ns`` (default
        now), and on the event that ends the turn record its outcome.

        ``event`` is the JSON object as the server sent it (a dict). Both error shapes are understood: the
        WebSocket one, ``{"type": "error", "error": {"code", "message", "type"}}``, and the SSE one,
        ``{"type": "error", "code", "message"}``. On ``response.completed|failed|incomplete`` the usage,
        server stages, response id and output kind come from its ``response`` (:meth:`on_response`); a
        ``failed`` response fails the turn with its error code and message.

        Returns: the Response dict on a terminal event (a failed one included); ``{}`` when the turn failed
        on this event (an ``error`` event: its ``code``, else its ``type``; a terminal event without a
        Response object: ``client_malformed_response``; an event that is not an object:
        ``client_malformed_event``); None while the turn goes on. Once the turn has ended (a terminal event
        or :meth:`fail`), later events are counted (``events``, ``bytes_down``), change nothing else and
        return None.
        """
        t = self._now(t_ns)
        ended = self.t_terminal_ns is not None
        raw_kind = _get(event, "type")
        kind = raw_kind if isinstance(raw_kind, str) else ""  # a list or an object is no event type
        self.on_event(kind, nbytes, t_ns=t)
        if ended:
            return None
        if not isinstance(event, Mapping):
            self.fail(f"event is not a JSON object: {event!r:.80}", MALFORMED_EVENT, t_ns=t)
            return {}
        if kind not in TURN_END_TYPES:
            return None
        if kind == "error":
            inner = event.get("error")
            err: Mapping[str, Any] = inner if isinstance(inner, Mapping) else event  # WS shape, else SSE shape
            code = err.get("code") or err.get("type") or "error"
            self.fail(str(err.get("message") or "error event"), str(code), t_ns=t)
            return {}
        response = event.get("response")
        if not isinstance(response, dict):
            self.fail(f"{kind} event without a response object", MALFORMED_RESPONSE, t_ns=t)
            return {}
        self.on_response(response)
        return response

    def interpret_json(self, data: bytes, nbytes: int = 0, *, t_ns: int | None = None) -> dict[str, Any] | None:
        """:meth:`interpret` the event whose JSON text is ``data``.

        Undecodable ``data`` fails the turn with ``client_malformed_event`` (its bytes are not counted: it
        is no event) and returns ``{}``.
        """
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            if self.t_terminal_ns is not None:
                return None
            self.fail(f"undecodable event: {data[:80]!r}", MALFORMED_EVENT, t_ns=t_ns)
            return {}
        return self.interpret(event, nbytes, t_ns=t_ns)

    def on_event(self, event_type: str, nbytes: int = 0, *, t_ns: int | None = None) -> None:
        """Time and count one received event of ``nbytes`` bytes (payload and framing) at ``t_ns`` (default
        now), knowing only its type; :meth:`interpret` calls it for every event.

        The first event stamps TTFB; content deltas stamp TTFT and ITL; the first terminal event stamps the
        end of the turn. Events after the terminal one are still counted (bytes, events) but move no clock.
        """
        t = self._now(t_ns)
        self.events += 1
        self.bytes_down += max(0, nbytes)
        if self.t_first_event_ns is None:
            self.t_first_event_ns = t
        if self.t_terminal_ns is not None:
            return
        if event_type in CONTENT_DELTA_TYPES:
            self.chunks += 1
            if self.t_last_delta_ns is None:
                self.t_first_delta_ns = t
            else:
                self.itl_ms.append(_ms(t - self.t_last_delta_ns))
            self.t_last_delta_ns = t
        elif event_type in TURN_END_TYPES:
            self.t_terminal_ns = t
            if event_type in _FAILURE_TYPES and self.success:
                self.success = False
                self._failure_inferred = True
                self.error = event_type
                self.error_code = event_type

    def on_response(self, response: Mapping[str, Any]) -> None:
        """Take id, usage, output kind and server stage timings from a final Response object dict.

        Tolerates missing or malformed fields (they stay at their defaults). A response whose
        ``status`` is ``failed`` marks the turn failed with the response's ``error`` code and message.
        """
        try:
            self._take_response(response)
        except Exception as exc:  # never raise: a malformed response is a recorded failure
            self.fail(f"malformed response: {exc!r}", MALFORMED_RESPONSE)

    def _take_response(self, response: Mapping[str, Any]) -> None:
        rid = _get(response, "id")
        if isinstance(rid, str):
            self.response_id = rid
        usage = _get(response, "usage")
        if isinstance(usage, Mapping):
            self.input_tokens = _as_int(usage.get("input_tokens"))
            self.output_tokens = _as_int(usage.get("output_tokens"))
            self.cached_tokens = _as_int(_get(usage.get("input_tokens_details"), "cached_tokens"))
        output = _get(response, "output")
        if isinstance(output, list) and output:
            kind = _get(output[-1], "type")
            if isinstance(kind, str):
                self.output_kind = kind
        stages = _get(_get(response, "turnbench"), "stages")
        if isinstance(stages, Mapping):
            for name, raw in stages.items():
                if isinstance(raw, Mapping):
                    self.server_stages[str(name)] = StageStat(
                        wall_ns=_as_int(raw.get("wall_ns")),
                        cpu_ns=_as_int(raw.get("cpu_ns")),
                        items=_as_int(raw.get("items")),
                        tokens=_as_int(raw.get("tokens")),
                        chars=_as_int(raw.get("chars")),
                    )
        if _get(response, "status") == "failed":
            err = _get(response, "error")
            code = _get(err, "code")
            message = _get(err, "message")
            self.fail(
                message if isinstance(message, str) else "response failed",
                code if isinstance(code, str) else "response_failed",
            )

    # ---------------------------------------------------------------------------------------- outcome

    def fail(self, error: str, code: str | None = None, *, t_ns: int | None = None) -> None:
        """Mark the turn failed. The first explicit failure wins over one inferred from an event type.

        If the turn has been sent but not terminated, the failure time ends it (``turn_ms`` = time to fail).
        """
        if self.success or self._failure_inferred:
            self.success = False
            self._failure_inferred = False
            self.error = error
            self.error_code = code
        if self.t_send_ns is not None and self.t_terminal_ns is None:
            self.t_terminal_ns = self._now(t_ns)

    def result(self) -> TurnResult:
        """Build the record. A turn that was sent but never saw a terminal event is reported failed."""
        success, error, code = self.success, self.error, self.error_code
        if success and self.t_send_ns is not None and self.t_terminal_ns is None:
            success, error, code = False, "stream ended without a terminal event", "no_terminal_event"
        if success and self.t_send_ns is None:
            success, error, code = False, "request was never sent", "not_sent"
        t_send = self.t_send_ns
        t_sched = self.t_scheduled_ns if self.t_scheduled_ns is not None else t_send

        def since(t: int | None, t0: int | None) -> float | None:
            return None if t is None or t0 is None else _ms(t - t0)

        queue = since(t_send, t_sched)
        return TurnResult(
            transport=self.transport,
            state=self.state,
            rollout_id=self.rollout_id,
            turn_index=self.turn_index,
            success=success,
            error=error,
            error_code=code,
            response_id=self.response_id,
            output_kind=self.output_kind,
            t_scheduled_ns=t_sched or 0,
            t_send_ns=t_send or 0,
            queue_ms=queue if queue is not None else 0.0,
            connect_ms=self.connect_ms,
            ttfb_ms=since(self.t_first_event_ns, t_send),
            ttft_ms=since(self.t_first_delta_ns, t_send),
            itl_ms=list(self.itl_ms),
            turn_ms=since(self.t_terminal_ns, t_send),
            latency_ms=since(self.t_terminal_ns, t_sched),
            chunks=self.chunks,
            events=self.events,
            output_tokens=self.output_tokens,
            input_tokens=self.input_tokens,
            cached_tokens=self.cached_tokens,
            bytes_up=self.bytes_up,
            bytes_down=self.bytes_down,
            server_stages=dict(self.server_stages),
            tool_ms=self.tool_ms,
            phase=self.phase,
            input_bytes=self.input_bytes,
        )
