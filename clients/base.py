"""One result record for every client, the recorder that fills it, and the client interface.

Every transport client (``https``, ``ws``, ``grpc``, ``sdk-*``) streams the events of one ``response.create``
into a :class:`TurnRecorder` and hands back the same :class:`TurnResult`, so the metrics, the report and the
gate never know which transport produced a sample (DESIGN §6). A recorder never raises: a failure is
``success=False`` plus ``error`` text and an ``error_code``.

Time comes from one injectable monotonic clock (default ``time.perf_counter_ns``): timestamps in ns,
durations in ms. ``t_send`` is just before the first request byte is written; ``t_scheduled`` is when the
request was due (open loop) or ``t_send`` (closed loop).

- ``queue_ms``: scheduled -> send (queueing before send is reported, never hidden).
- ``ttfb_ms``: send -> first event of any kind (lifecycle events such as ``response.created`` count).
- ``ttft_ms``: send -> first *content* delta (:data:`CONTENT_DELTA_TYPES`).
- ``itl_ms``: gaps between consecutive content deltas.
- ``turn_ms``: send -> terminal event (:data:`TERMINAL_TYPES`), or -> the failure if the turn failed first.
- ``latency_ms``: scheduled -> terminal, so ``latency_ms == queue_ms + turn_ms``.
"""

from __future__ import annotations

import abc
import dataclasses
import importlib
import math
import ssl
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, ClassVar

import msgspec

from turnbench.transports import get_transport

__all__ = [
    "CONTENT_DELTA_TYPES",
    "FAILURE_TYPES",
    "TERMINAL_TYPES",
    "ClientConfig",
    "ResponsesClient",
    "RolloutResult",
    "StageTiming",
    "TurnRecorder",
    "TurnResult",
    "client_class",
    "make_client",
]

Clock = Callable[[], int]

CONTENT_DELTA_TYPES: frozenset[str] = frozenset(
    {"response.output_text.delta", "response.function_call_arguments.delta"}
)
"""Event types that carry model output; they define TTFT, ITL and ``chunks``."""

TERMINAL_TYPES: frozenset[str] = frozenset(
    {"response.completed", "response.failed", "response.incomplete", "error"}
)
"""Event types that end a turn; the first one seen stamps ``turn_ms``."""

FAILURE_TYPES: frozenset[str] = frozenset({"response.failed", "error"})
"""Terminal event types that make the turn a failure unless the client reports details via ``fail``."""


class StageTiming(msgspec.Struct):
    """One server pipeline stage as the server reports it: wall and CPU time in ns, and work counts."""

    wall_ns: int
    cpu_ns: int
    items: int = 0
    tokens: int = 0
    chars: int = 0


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
    server_stages: dict[str, StageTiming] = {}
    tool_ms: float = 0.0


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

    A transport client calls, in order: ``scheduled`` (optional, open loop), ``sent``, ``on_event`` per
    event received, ``on_response`` with the final Response object, ``fail`` on any error, and the caller
    finally takes ``result()``. No method raises.
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
    ) -> None:
        self.transport, self.state = transport, state
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
        self.server_stages: dict[str, StageTiming] = {}

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

    def on_event(self, event_type: str, nbytes: int = 0, *, t_ns: int | None = None) -> None:
        """Record one received event of ``nbytes`` bytes (payload and framing) at ``t_ns`` (default now).

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
        elif event_type in TERMINAL_TYPES:
            self.t_terminal_ns = t
            if event_type in FAILURE_TYPES and self.success:
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
            self.fail(f"malformed response: {exc!r}", "client_malformed_response")

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
                    self.server_stages[str(name)] = StageTiming(
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
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class ClientConfig:
    """How to reach a server; the same for every transport.

    ``url`` is the server's base URL as :class:`servers.base.RunningServer` prints it: ``https://H:P/v1``,
    ``wss://H:P/v1`` (clients append ``/responses``, as the official SDK does) or ``H:P`` for gRPC.
    ``options`` carries transport-specific knobs (``new_connection``, ``codec``, ``method`` …), each
    documented on its client class.
    """

    url: str
    api_key: str | None = None
    ssl_context: ssl.SSLContext | None = None  # None: plaintext
    ca_pem: bytes | None = None  # the CA as PEM, for clients that take bytes (grpc)
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)


class ResponsesClient(abc.ABC):
    """The interface every transport client implements; usable as an async context manager.

    Constructed as ``cls(config)``. ``create_raw`` sends a payload byte-for-byte (malformed input tests).

    ``create`` must not raise for transport or protocol errors: it fills ``recorder.fail`` and returns
    ``{}``. :meth:`safe_create` enforces that for callers that must never see an exception.
    """

    transport: ClassVar[str]

    def __init__(self, config: ClientConfig) -> None:
        self.config = config

    async def create_raw(self, payload: bytes, *, recorder: TurnRecorder) -> dict[str, Any]:
        """Send ``payload`` unmodified as one request (JSON transports); for malformed-input tests."""
        raise NotImplementedError(f"{self.transport} client has no raw mode")

    @abc.abstractmethod
    async def connect(self) -> float | None:
        """Open the connection. Returns: TCP+TLS+handshake time in ms, or None if connectionless/lazy."""

    @abc.abstractmethod
    async def create(self, body: dict[str, Any], *, recorder: TurnRecorder) -> dict[str, Any]:
        """Send one ``response.create``, stream its events into ``recorder``, return the final Response.

        Returns: the Response object dict from the terminal event, or ``{}`` after ``recorder.fail``.
        """

    @abc.abstractmethod
    async def close(self) -> None:
        """Close the connection; idempotent."""

    async def reconnect(self) -> float | None:
        """Close, then connect: a fresh connection (a connection-local cache starts empty), as the agent
        loop asks for after a lost connection. Returns: the connect time in ms (None if connectionless).
        Raises: what :meth:`connect` raises when no connection can be opened.
        """
        await self.close()
        return await self.connect()

    async def connect_for(self, recorder: TurnRecorder) -> bool:
        """Connect lazily for a turn: the handshake time goes on the turn's ``connect_ms`` (apart from
        its latency); a failure is recorded as ``connection_error``. Returns: whether the client is connected.
        """
        try:
            ms = await self.connect()
        except Exception as exc:
            recorder.fail(f"could not connect to {self.config.url}: {type(exc).__name__}: {exc}",
                          "connection_error")
            return False
        if recorder.connect_ms is None:
            recorder.connect_ms = ms
        return True

    async def safe_create(self, body: dict[str, Any], *, recorder: TurnRecorder) -> dict[str, Any]:
        """``create``, with any exception a client let escape recorded as a failure (cancellation passes)."""
        try:
            return await self.create(body, recorder=recorder)
        except Exception as exc:
            recorder.fail(f"{type(exc).__name__}: {exc}", "client_exception")
            return {}

    async def __aenter__(self) -> ResponsesClient:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def client_class(transport: str) -> type[ResponsesClient]:
    """The client class of ``transport``, imported from the module its row of the transport table names.

    Raises: ``ValueError`` for a name that is not in the table.
    """
    row = get_transport(transport)
    cls: type[ResponsesClient] = getattr(importlib.import_module(row.client_module), row.client_class)
    return cls


def make_client(transport: str, config: ClientConfig) -> ResponsesClient:
    """A new, unconnected client of ``transport`` for ``config``."""
    return client_class(transport)(config)
