"""gRPC transport: ``turnbench.v1.Responses`` on grpc.aio, a thin adapter over the shared core.

- ``Connect`` (bidi stream) is a WebSocket-mode connection: one :class:`~turnbench.service.Session` with its
  connection-local cache, requests FIFO per ``stream_id`` lane (lanes run concurrently, at most
  ``max_inflight_per_connection`` responses at once), ``previous_response_id`` served from the cache.
- ``Create`` (typed request) and ``CreateJson`` (either codec) are one stateless request, like HTTPS.

Each request is answered in the codec it came in: typed ``ServerEvent`` messages, or the json codec (the
WebSocket server's JSON objects in ``ServerEvent.json``). Messages are (de)serialized here, not by grpc, so
the protobuf decode is timed into the ``parse`` stage and the json codec's envelope costs a few bytes.

Faults: a request-scoped error (:class:`InvalidRequestError`, :class:`ServerError`) is an in-stream
``ws_error`` (WebSocket error shape) and the stream keeps serving; anything else ends the call with the
error's gRPC status and ``turnbench-error-code`` trailing metadata: UNAUTHENTICATED (``authorization:
Bearer`` metadata), INVALID_ARGUMENT (undecodable message), RESOURCE_EXHAUSTED (grpc's own message-size
limit), DEADLINE_EXCEEDED (``request_timeout_s``). A cancelled call cancels its responses and clears its cache.
Health (grpc.health.v1, SERVING for "" and the service) and server reflection are registered, so stock
gRPC tools can list and call it.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from servers.base import RunningServer
from turnbench.errors import (
    AuthenticationError,
    ConnectionLimitError,
    InvalidRequestError,
    RequestTimeoutError,
    TurnbenchError,
    as_turnbench_error,
    is_request_scoped,
)
from turnbench.schema import Event, WsErrorEvent, encode, ws_error_event
from turnbench.service import ParsedRequest, ResponsesService
from turnbench.settings import Settings
from turnbench.state import Session
from turnbench.tls import TLSMaterial
from turnbench.transports import GRPC
from turnbench.v1 import responses_pb2 as pb
from turnbench.v1.convert import event_to_proto, request_from_proto
from turnbench.v1.convert_request import bytes_field

log = logging.getLogger("turnbench.grpc")
SERVICE = "turnbench.v1.Responses"
ERROR_CODE_KEY = "turnbench-error-code"  # trailing metadata: the Responses error code of a failed call

Codec = Callable[[Event | WsErrorEvent], bytes]
Send = Callable[[Event | WsErrorEvent], Awaitable[None]]


def encode_typed(ev: Event | WsErrorEvent) -> bytes:
    """One event as a serialized typed ``ServerEvent``."""
    return event_to_proto(ev).SerializeToString()


def encode_json(ev: Event | WsErrorEvent) -> bytes:
    """One event as ``ServerEvent{json: <the WebSocket JSON object>}``, framed by hand (no message object)."""
    return bytes_field(16, encode(ev))  # ServerEvent.json is field 16


error_event = ws_error_event  # the same frame as the WebSocket server's (core)


def codec_of(event: pb.ClientEvent | pb.CreateRequest) -> Codec:
    """Answer a request in the codec it came in."""
    is_json = isinstance(event, pb.ClientEvent) and event.WhichOneof("event") == "json"
    return encode_json if is_json else encode_typed


_request_scoped = is_request_scoped


class Fatal(Exception):
    """A connection-level fault: the call ends with ``status`` (and the Responses ``code`` in metadata)."""

    def __init__(self, status: grpc.StatusCode, message: str, code: str) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code

    @classmethod
    def of(cls, err: TurnbenchError) -> Fatal:
        return cls(getattr(grpc.StatusCode, err.grpc_status, grpc.StatusCode.INTERNAL), err.message, err.code)


async def _abort(context: grpc.aio.ServicerContext[Any, Any], fatal: Fatal) -> None:
    await context.abort(fatal.status, fatal.message, trailing_metadata=((ERROR_CODE_KEY, fatal.code),))


class ResponsesServicer:
    """The three RPCs; each takes the raw request bytes (identity deserializer) and writes raw bytes."""

    def __init__(self, settings: Settings, service: ResponsesService) -> None:
        self.settings, self.service = settings, service
        self.connections: set[Connection] = set()  # open Connect streams (tests, stats)
        expected = f"Bearer {settings.api_key}" if settings.api_key is not None else None
        self._expected_auth = expected.encode() if expected is not None else None

    async def authorize(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """Abort with UNAUTHENTICATED unless ``authorization: Bearer <api_key>`` is sent (when a key is set)."""
        if self._expected_auth is None:
            return
        got = next((v for k, v in context.invocation_metadata() or () if k == "authorization"), "")
        got_bytes = got.encode() if isinstance(got, str) else got
        if not hmac.compare_digest(got_bytes, self._expected_auth):
            err = AuthenticationError("Incorrect API key provided.")
            await _abort(context, Fatal.of(err))

    def decode(self, raw: bytes) -> tuple[pb.ClientEvent, int]:
        """Raw bytes → ``ClientEvent`` and the decode time in ns (raises :class:`Fatal` if undecodable)."""
        t0 = time.perf_counter_ns()
        try:
            return pb.ClientEvent.FromString(raw), time.perf_counter_ns() - t0
        except DecodeError as exc:
            raise Fatal(grpc.StatusCode.INVALID_ARGUMENT, f"Undecodable message: {exc}",
                        "invalid_request_error") from exc

    def parse(self, event: pb.ClientEvent | pb.CreateRequest, nbytes: int,
              decode_ns: int) -> tuple[ParsedRequest, Codec]:
        """The ``parse`` stage for either codec; raises the core's request-scoped errors.

        Returns: the parsed request and the codec its events are answered in.
        """
        if isinstance(event, pb.CreateRequest):
            req: pb.CreateRequest | None = event
        else:
            kind = event.WhichOneof("event")
            req = event.create if kind == "create" else None
            if kind == "json":
                parsed = self.service.parse(event.json)
                parsed.timer.add("parse", wall_ns=decode_ns, cpu_ns=decode_ns)  # the envelope's decode
                if parsed.request.type not in (None, "response.create"):
                    raise InvalidRequestError(
                        f"Unsupported event type {parsed.request.type!r}: expected 'response.create'.",
                        "type", code="invalid_event_type")
                return parsed, encode_json
        if req is None:
            raise InvalidRequestError("The ClientEvent carries no request (set 'create' or 'json').", "event")
        t0 = time.perf_counter_ns()
        obj = request_from_proto(req)
        decode_ns += time.perf_counter_ns() - t0
        return self.service.parse_obj(obj, nbytes=nbytes, decode_ns=decode_ns), encode_typed

    async def respond(self, parsed: ParsedRequest, session: Session, send: Send) -> None:
        """Stream one response. Request-scoped errors before ``response.created`` become an in-stream
        error event; connection-level ones raise :class:`Fatal`."""
        sid = parsed.request.stream_id
        try:
            async with asyncio.timeout(self.settings.request_timeout_s):
                events = self.service.create(parsed, session)
                try:
                    try:
                        first = await anext(events)
                    except StopAsyncIteration:
                        return
                    except Exception as exc:
                        if not isinstance(exc, TurnbenchError):
                            log.exception("request failed before response.created")
                        err = as_turnbench_error(exc)
                        if not _request_scoped(err):
                            raise Fatal.of(err) from exc
                        await send(error_event(err, sid))
                        return
                    await send(first)
                    async for ev in events:
                        await send(ev)
                finally:
                    await events.aclose()  # a cancelled call stops the engine here
        except TimeoutError as exc:
            err = RequestTimeoutError(f"The request did not finish within {self.settings.request_timeout_s:g} s.")
            raise Fatal.of(err) from exc

    # ------------------------------------------------------------------------------------------ RPCs

    async def connect(self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await self.authorize(context)
        conn = Connection(self, context)
        self.connections.add(conn)
        try:
            fatal = await conn.run(requests)
        finally:
            self.connections.discard(conn)
            await conn.close()
        if fatal is not None:
            await _abort(context, fatal)

    async def create(self, raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await self.authorize(context)
        try:
            t0 = time.perf_counter_ns()
            try:
                req = pb.CreateRequest.FromString(raw)
            except DecodeError as exc:
                raise Fatal(grpc.StatusCode.INVALID_ARGUMENT, f"Undecodable message: {exc}",
                            "invalid_request_error") from exc
            await self._one_shot(req, len(raw), time.perf_counter_ns() - t0, context)
        except Fatal as fatal:
            await _abort(context, fatal)

    async def create_json(self, raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await self.authorize(context)
        try:
            event, decode_ns = self.decode(raw)
            await self._one_shot(event, len(raw), decode_ns, context)
        except Fatal as fatal:
            await _abort(context, fatal)

    async def _one_shot(self, event: pb.ClientEvent | pb.CreateRequest, nbytes: int, decode_ns: int,
                        context: grpc.aio.ServicerContext[Any, Any]) -> None:
        codec = codec_of(event)

        async def send(ev: Event | WsErrorEvent) -> None:
            await context.write(codec(ev))

        try:
            parsed, codec = self.parse(event, nbytes, decode_ns)
        except TurnbenchError as err:
            if not _request_scoped(err):
                raise Fatal.of(err) from err
            await send(error_event(err, None))
            return
        await self.respond(parsed, self.service.new_session("grpc", connection=False), send)


class Connection:
    """One ``Connect`` stream: reads requests, runs each in its own task (FIFO per lane), one writer."""

    def __init__(self, servicer: ResponsesServicer, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self.servicer, self.context = servicer, context
        s = servicer.settings
        self.session = servicer.service.new_session("grpc", connection=True)
        self.tasks: set[asyncio.Task[None]] = set()
        self._inflight = asyncio.Semaphore(s.max_inflight_per_connection)
        self._write_lock = asyncio.Lock()  # grpc allows one outstanding write per call
        self._fatal: asyncio.Future[Fatal] = asyncio.get_running_loop().create_future()

    async def send(self, codec: Codec, ev: Event | WsErrorEvent) -> None:
        data = codec(ev)
        async with self._write_lock:
            await self.context.write(data)

    async def run(self, requests: AsyncIterator[bytes]) -> Fatal | None:
        """Serve until the client half-closes and every response is done, or a connection-level fault."""
        reader = asyncio.ensure_future(self._read(requests))
        try:
            await asyncio.wait((reader, self._fatal), return_when=asyncio.FIRST_COMPLETED)
            if not self._fatal.done():
                reader.result()  # re-raise a reader failure (Fatal included)
                while self.tasks and not self._fatal.done():  # half-closed: finish what was asked
                    waiting: set[asyncio.Future[Any]] = {*self.tasks, self._fatal}
                    await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        except Fatal as fatal:
            return fatal
        finally:
            reader.cancel()
        return self._fatal.result() if self._fatal.done() else None

    async def _read(self, requests: AsyncIterator[bytes]) -> None:
        s = self.servicer.settings
        async for raw in requests:
            event, decode_ns = self.servicer.decode(raw)
            codec = codec_of(event)
            if time.perf_counter_ns() - self.session.opened_ns > s.connection_lifetime_s * 1e9:
                await self.send(codec, error_event(ConnectionLimitError(s.connection_lifetime_s / 60), None))
                return  # stop reading; responses in flight finish, then the call ends
            parsed: ParsedRequest | None = None
            try:
                parsed, codec = self.servicer.parse(event, len(raw), decode_ns)
                lane = self.session.lane(parsed.request.stream_id, s.max_lanes)
            except TurnbenchError as err:
                if not _request_scoped(err):
                    raise Fatal.of(err) from err
                if parsed is not None:
                    sid = parsed.request.stream_id
                else:  # the typed request names its lane even when the core refused it
                    sid = event.create.stream_id if event.create.HasField("stream_id") else None
                await self.send(codec, error_event(err, sid))
                continue
            task = asyncio.create_task(self._respond(parsed, lane, codec))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _respond(self, parsed: ParsedRequest, lane: asyncio.Lock, codec: Codec) -> None:
        async def send(ev: Event | WsErrorEvent) -> None:
            await self.send(codec, ev)

        try:
            async with lane, self._inflight:  # FIFO within the lane: locks wake waiters in order
                await self.servicer.respond(parsed, self.session, send)
        except Fatal as fatal:
            if not self._fatal.done():
                self._fatal.set_result(fatal)
        except asyncio.CancelledError:
            raise
        except Exception:  # the call went away under a write, or a bug: never leave the reader hanging
            log.exception("gRPC response failed")
            if not self._fatal.done():
                self._fatal.set_result(Fatal(grpc.StatusCode.INTERNAL, "internal error", "server_error"))

    async def close(self) -> None:
        """Cancel responses still running (a cancelled or failed call) and drop the connection's cache."""
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        self.session.close()


def _server_options(s: Settings) -> list[tuple[str, Any]]:
    opts: list[tuple[str, Any]] = [
        ("grpc.max_send_message_length", s.max_message_bytes),
        ("grpc.max_receive_message_length", s.max_message_bytes),
        ("grpc.so_reuseport", 0),  # port 0 must be a port of our own
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 5000),  # clients may keep-alive every 5 s
        ("grpc.http2.max_ping_strikes", 2),
    ]
    if s.ping_interval_s:
        opts += [
            ("grpc.keepalive_time_ms", int(s.ping_interval_s * 1000)),
            ("grpc.keepalive_timeout_ms", int((s.ping_timeout_s or 20.0) * 1000)),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
        ]
    return opts


async def start(settings: Settings, service: ResponsesService, tls: TLSMaterial | None) -> RunningServer:
    """Start the gRPC server on the running loop; ``url`` is ``HOST:PORT`` (what a grpc channel takes)."""
    servicer = ResponsesServicer(settings, service)
    server = grpc.aio.server(options=_server_options(settings))
    handlers = {
        "Connect": grpc.stream_stream_rpc_method_handler(servicer.connect),
        "Create": grpc.unary_stream_rpc_method_handler(servicer.create),
        "CreateJson": grpc.unary_stream_rpc_method_handler(servicer.create_json),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection((SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server)

    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    address = f"{host}:{settings.port}"
    if tls is not None:
        creds = grpc.ssl_server_credentials([(tls.private_key_pem_bytes, tls.cert_chain_pem_bytes)])
        port = server.add_secure_port(address, creds)
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"gRPC server could not bind {address}")
    await server.start()

    async def stop() -> None:
        await health_servicer.enter_graceful_shutdown()
        await server.stop(grace=settings.grace_s)

    return RunningServer(
        transport="grpc", host=settings.host, port=port, url=GRPC.url(settings.host, port, tls is not None),
        service=service, tls=tls,
        _stop=stop, extra={"servicer": servicer, "health": health_servicer},
    )
