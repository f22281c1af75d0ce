"""gRPC clients: ``turnbench.v1.Responses`` over grpc.aio, one result record like every transport.

Registered transports (``config.options`` can override each default):

- ``grpc``: ``Connect`` stream, typed codec — the WebSocket-mode equivalent (``previous_response_id`` is
  served from the stream's cache).
- ``grpc-json``: ``Connect`` stream, json codec (``ServerEvent.json``): the WebSocket JSON objects over
  gRPC, so a report can tell serialization cost from transport cost.
- ``grpc-create``: one ``Create`` call per request (``CreateJson`` for the json codec), like HTTPS.

Options: ``codec`` = ``"typed"`` | ``"json"``; ``method`` = ``"connect"`` | ``"create"``;
``connect_timeout_s`` (default 10); ``record_events`` = True keeps every event of the last request as a
JSON-shaped dict in ``last_events`` (tests; it costs a conversion per event). A body the typed schema
cannot carry exactly (an unknown parameter, a wrong type) is sent through the json codec, so the server
judges it as on the other transports. One request at a time per client (like the Agents SDK).

``create`` connects first when needed (a failure is ``connection_error``); after a call fails, the next
request opens a new ``Connect`` stream on the same channel (its cache starts empty, as after a WebSocket
reconnect); ``reconnect()`` opens a new channel. ``create`` never raises for transport or protocol
errors: gRPC status codes map onto Responses error codes (the server's ``turnbench-error-code`` trailing
metadata first). Byte counts are the serialized message plus gRPC's 5-byte message prefix (HTTP/2 frames
are not counted).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

import grpc
import msgspec
import orjson

from clients.base import ClientConfig, ResponsesClient, as_create_event
from clients.record import MALFORMED_EVENT, TurnRecorder
from turnbench.errors import ConnectionLimitError
from turnbench.schema import TERMINAL_TYPES
from turnbench.v1 import responses_pb2 as pb
from turnbench.v1.convert import EVENT_TYPES, Unrepresentable, body_to_proto, event_from_proto
from turnbench.v1.convert_request import bytes_field

__all__ = ["GrpcClient", "GrpcCreateClient", "GrpcJsonClient", "status_code"]

SERVICE = "/turnbench.v1.Responses/"
PREFIX_BYTES = 5  # gRPC length-prefixed message: 1 flag byte + 4 length bytes
STATUS_CODES: dict[grpc.StatusCode, str] = {
    grpc.StatusCode.UNAUTHENTICATED: "invalid_api_key",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "payload_too_large",
    grpc.StatusCode.INVALID_ARGUMENT: "invalid_request_error",
    grpc.StatusCode.DEADLINE_EXCEEDED: "request_timeout",
    grpc.StatusCode.UNAVAILABLE: "connection_closed",
    grpc.StatusCode.CANCELLED: "connection_closed",
    grpc.StatusCode.NOT_FOUND: "not_found",
    grpc.StatusCode.INTERNAL: "server_error",
}


def status_code(exc: grpc.aio.AioRpcError) -> str:
    """The Responses error code for a failed call: the server's own code, else one mapped from the status."""
    for key, value in exc.trailing_metadata() or ():
        if key == "turnbench-error-code":
            return str(value)
    return STATUS_CODES.get(exc.code(), f"grpc_{exc.code().name.lower()}")


def _field(tag: int, payload: bytes) -> bytes:
    """A length-delimited field of ``ClientEvent`` (``tag`` is field_number << 3 | 2)."""
    return bytes_field(tag >> 3, payload)


_CREATE_TAG, _JSON_TAG = 1 << 3 | 2, 2 << 3 | 2  # ClientEvent.create, ClientEvent.json
_EVENT_JSON_TAG = b"\x82\x01"  # ServerEvent.json (field 16): no typed event starts with these bytes


def _split_json(raw: bytes) -> bytes | None:
    """The JSON payload of a ``ServerEvent{json}``, read without building a message; None if typed."""
    if not raw.startswith(_EVENT_JSON_TAG):
        return None
    n = shift = 0
    i = 2
    while True:
        b = raw[i]
        n |= (b & 0x7F) << shift
        i += 1
        if b < 0x80:
            break
        shift += 7
    return raw[i:] if len(raw) - i == n else None


class GrpcClient(ResponsesClient):
    """``Connect`` stream with the typed codec; see the module docstring for options."""

    transport: ClassVar[str] = "grpc"
    default_codec: ClassVar[str] = "typed"
    default_method: ClassVar[str] = "connect"

    def __init__(self, config: ClientConfig) -> None:
        super().__init__(config)
        opts = config.options
        self.codec: str = opts.get("codec", self.default_codec)
        self.method: str = opts.get("method", self.default_method)
        if self.codec not in ("typed", "json") or self.method not in ("connect", "create"):
            raise ValueError(
                f"grpc client: codec must be typed|json, method connect|create; got {self.codec!r}, {self.method!r}"
            )
        self.record_events = bool(opts.get("record_events", False))
        self.last_events: list[dict[str, Any]] = []
        self._metadata = (("authorization", f"Bearer {config.api_key}"),) if config.api_key else ()
        self._channel: grpc.aio.Channel | None = None
        self._call: grpc.aio.StreamStreamCall | None = None
        self._lock: asyncio.Lock | None = None
        self.connect_ms: float | None = None

    # ------------------------------------------------------------------------------------------ connection

    async def connect(self) -> float | None:
        """Open the channel, wait until it is ready (TCP+TLS+HTTP/2) and open the Connect stream.

        Returns: the time this took, in ms (the first time's, when already connected).
        Raises: ``grpc.aio.AioRpcError`` or ``asyncio.TimeoutError`` if no channel could be opened within
        ``connect_timeout_s`` (option, default 10).
        """
        if self._channel is not None:
            return self.connect_ms
        t0 = time.perf_counter_ns()
        cfg = self.config
        options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
        if cfg.ca_pem is not None or cfg.ssl_context is not None:
            creds = grpc.ssl_channel_credentials(root_certificates=cfg.ca_pem)
            self._channel = grpc.aio.secure_channel(cfg.url, creds, options=options)
        else:
            self._channel = grpc.aio.insecure_channel(cfg.url, options=options)
        self._lock = asyncio.Lock()
        try:
            await asyncio.wait_for(self._channel.channel_ready(), cfg.options.get("connect_timeout_s", 10.0))
        except BaseException:
            await self.close()
            raise
        if self.method == "connect":
            call = self._open_stream()
            try:
                await call.wait_for_connection()
            except grpc.aio.AioRpcError:
                pass  # refused at once (e.g. UNAUTHENTICATED): the first create records why
        self.connect_ms = (time.perf_counter_ns() - t0) / 1e6
        return self.connect_ms

    def _open_stream(self) -> grpc.aio.StreamStreamCall:
        assert self._channel is not None
        self._call = self._channel.stream_stream(SERVICE + "Connect")(metadata=self._metadata)
        return self._call

    async def close(self) -> None:
        """Cancel the stream and close the channel (the server drops the stream's cache); idempotent."""
        call, channel = self._call, self._channel
        self._call = self._channel = None
        if call is not None:
            call.cancel()
        if channel is not None:
            await channel.close()

    # ------------------------------------------------------------------------------------------ requests

    def _encode(self, body: dict[str, Any]) -> tuple[bytes, bool]:
        """``body`` as ``CreateRequest`` bytes (True) or JSON bytes (False: the json codec)."""
        if self.codec == "typed":
            try:
                return body_to_proto(body).SerializeToString(), True
            except Unrepresentable:
                pass  # let the server judge it, as over the other transports
        if self.method == "connect":
            body = {"type": "response.create", **body}  # the WebSocket frame, byte for byte
        return msgspec.json.encode(body), False

    async def create(self, body: dict[str, Any], *, recorder: TurnRecorder) -> dict[str, Any]:
        """Send one request and stream its events into ``recorder``.

        Returns: the final Response object as a dict, or ``{}`` after ``recorder.fail``.
        """
        try:
            message, typed = self._encode(body)
        except (TypeError, msgspec.EncodeError) as exc:
            recorder.fail(f"request body is not JSON: {exc}", "client_invalid_body")
            return {}
        return await self._send(message, typed, recorder)

    async def create_raw(self, payload: bytes, *, recorder: TurnRecorder) -> dict[str, Any]:
        """Send ``payload`` in the ``json`` field of a ``ClientEvent``: as the WebSocket frame on ``Connect``
        (``"type":"response.create"`` put in front, as the ws client does), unmodified on ``CreateJson``."""
        return await self._send(as_create_event(payload) if self.method == "connect" else payload, False, recorder)

    async def _send(self, payload: bytes, typed: bool, recorder: TurnRecorder) -> dict[str, Any]:
        if (self._channel is None or self._lock is None) and not await self.connect_for(recorder):
            return {}
        assert self._lock is not None
        async with self._lock:
            try:
                if self.method == "create":
                    return await self._unary(payload, typed, recorder)
                return await self._on_stream(_field(_CREATE_TAG if typed else _JSON_TAG, payload), recorder)
            except grpc.aio.AioRpcError as exc:
                self._call = None  # the stream is over: the next request opens a new one (empty cache)
                recorder.fail(exc.details() or exc.code().name, status_code(exc))
                return {}
            except asyncio.InvalidStateError as exc:  # the stream finished between our check and the write
                self._call = None
                recorder.fail(str(exc), "connection_closed")
                return {}
            except asyncio.CancelledError:
                if self._call is not None:  # the rest of this turn would arrive on the next request
                    self._call.cancel()
                    self._call = None
                raise

    async def _on_stream(self, message: bytes, recorder: TurnRecorder) -> dict[str, Any]:
        call = self._call if self._call is not None and not self._call.done() else self._open_stream()
        recorder.sent(len(message) + PREFIX_BYTES)
        await call.write(message)
        result = await self._read_turn(call.read, recorder)
        if result is None:
            self._call = None
            await self._fail_from_status(call, recorder)
            return {}
        if recorder.error_code == ConnectionLimitError.code:
            self._call = None  # the server ends this stream after that error
        elif recorder.error_code == MALFORMED_EVENT:
            self._call = None
            call.cancel()  # the stream is out of step: the next request opens a new one
        return result

    async def _unary(self, payload: bytes, typed: bool, recorder: TurnRecorder) -> dict[str, Any]:
        assert self._channel is not None
        path, request = ("Create", payload) if typed else ("CreateJson", _field(_JSON_TAG, payload))
        call = self._channel.unary_stream(SERVICE + path)(request, metadata=self._metadata)
        recorder.sent(len(request) + PREFIX_BYTES)
        try:
            result = await self._read_turn(call.read, recorder)
            if result is None:
                await self._fail_from_status(call, recorder)
                return {}
            return result
        finally:
            call.cancel()  # a no-op once the server has finished

    async def _fail_from_status(self, call: Any, recorder: TurnRecorder) -> None:
        """The stream ended before a terminal event: record its status."""
        code = await call.code()
        if code == grpc.StatusCode.OK:
            recorder.fail("stream ended without a terminal event", "connection_closed")
        else:
            recorder.fail(await call.details() or code.name, STATUS_CODES.get(code, "connection_closed"))

    async def _read_turn(self, read: Callable[[], Awaitable[Any]], recorder: TurnRecorder) -> dict[str, Any] | None:
        """Read events into ``recorder`` until one ends the turn. Returns: what the recorder's interpreter
        returned for it (the Response dict, or ``{}`` after a failure), or None if the stream ended first.

        A json event goes to the interpreter as its JSON text. A typed event that cannot end the turn is
        only timed and counted by type (no conversion); one that can is converted to its JSON shape first.
        """
        self.last_events = []
        while True:
            raw = await read()
            if raw is grpc.aio.EOF:
                return None
            nbytes = len(raw) + PREFIX_BYTES
            payload = _split_json(raw)
            if payload is not None:
                if self.record_events:  # tests: keep the event as it came (a malformed one fails below)
                    with contextlib.suppress(orjson.JSONDecodeError):
                        self.last_events.append(orjson.loads(payload))
                result = recorder.interpret_json(payload, nbytes)
            else:
                se = pb.ServerEvent.FromString(raw)
                etype = EVENT_TYPES.get(se.WhichOneof("event") or "", "")
                if not etype or (etype not in TERMINAL_TYPES and not self.record_events):
                    recorder.on_event(etype, nbytes)
                    continue
                event = msgspec.to_builtins(event_from_proto(se))
                if self.record_events:
                    self.last_events.append(event)
                result = recorder.interpret(event, nbytes)
            if result is not None:
                return result


class GrpcJsonClient(GrpcClient):
    """``Connect`` stream with the json codec (WebSocket JSON objects in ``ServerEvent.json``)."""

    transport: ClassVar[str] = "grpc-json"
    default_codec: ClassVar[str] = "json"


class GrpcCreateClient(GrpcClient):
    """One stateless ``Create`` call per request, like HTTPS (no connection state)."""

    transport: ClassVar[str] = "grpc-create"
    default_method: ClassVar[str] = "create"
