"""gRPC transport: ``turnbench.v1.Responses`` on grpc.aio, a thin adapter over the shared core.

- ``Connect`` (bidi stream) is a WebSocket-mode connection: the core's
  :class:`~turnbench.connection.Connection` (lanes, in-flight limit, request timeout, lifetime, drain) over
  the stream. A half-close finishes what was asked; a cancelled call cancels its responses and frees its state.
- ``Create`` (typed request) and ``CreateJson`` (either codec) are one stateless request, like HTTPS.

Each request is answered in the codec it came in: typed ``ServerEvent`` messages, or the json codec (the
WebSocket server's JSON objects in ``ServerEvent.json``). Messages are (de)serialized here, not by grpc, so
the protobuf decode is timed into the ``parse`` stage and the json codec's envelope costs a few bytes. A
``response.steer`` (``Connect`` only) comes in either codec too: a typed ``ClientEvent.steer`` is handed to the
connection as the JSON event's members, checked there as over WebSocket, and answered with typed
``steer_accepted|pending|failed`` events.

Errors: a refused request (an undecodable message included) is an in-stream ``error`` event in the WebSocket
error shape, and a ``Connect`` stream keeps serving. A call ends with a gRPC status (:func:`abort`: the
error's ``grpc_status`` and the ``turnbench-error-code`` trailer) only where the connection itself ends:
UNAUTHENTICATED (``authorization: Bearer`` metadata), UNAVAILABLE (server shutdown), RESOURCE_EXHAUSTED
(grpc's own message-size limit). At the lifetime limit the error event is sent and the call ends with OK.
Health (grpc.health.v1, SERVING for "" and the service) and server reflection are registered, so stock
gRPC tools can list and call it. Both answer without an API key, deliberately: a load balancer's health probe
carries no application key, and reflection tells only what ``protos/`` publishes; every ``Responses`` RPC
checks the key.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeAlias

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from servers.base import RunningServer
from turnbench.auth import check_api_key
from turnbench.connection import Connection, ConnectionGone, ConnectionSet, Encode, Submission
from turnbench.errors import InvalidRequestError, TurnbenchError, as_turnbench_error, unknown_event_type
from turnbench.prepared import Append, ParsedRequest
from turnbench.schema import Event, WsErrorEvent, encode
from turnbench.service import ResponsesService
from turnbench.settings import Settings
from turnbench.tls import TLSMaterial
from turnbench.transports import GRPC
from turnbench.v1 import responses_pb2 as pb
from turnbench.v1.convert import ServerEventStruct, event_to_proto, request_from_proto, steer_from_proto
from turnbench.v1.convert_request import bytes_field, input_from_proto

__all__ = ["ERROR_CODE_KEY", "SERVICE", "ResponsesServicer", "abort", "encode_json", "encode_typed", "start"]

log = logging.getLogger("turnbench.grpc")
SERVICE = "turnbench.v1.Responses"
ERROR_CODE_KEY = "turnbench-error-code"  # trailing metadata: the Responses error code of a failed call
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


def encode_typed(ev: ServerEventStruct) -> bytes:
    """One event (a response's, an error, a steer's answer) as a serialized typed ``ServerEvent``."""
    return event_to_proto(ev).SerializeToString()


def encode_json(ev: ServerEventStruct) -> bytes:
    """One event as ``ServerEvent{json: <the WebSocket JSON object>}``, framed by hand (no message object)."""
    return bytes_field(16, encode(ev))  # ServerEvent.json is field 16


async def abort(context: Context, err: TurnbenchError) -> None:
    """End the call with ``err``'s gRPC status and its Responses code in the trailer: this adapter's one
    mapping (the status names live on the error classes, so the core never imports grpc)."""
    status = getattr(grpc.StatusCode, err.grpc_status, grpc.StatusCode.INTERNAL)
    await context.abort(status, err.message, trailing_metadata=((ERROR_CODE_KEY, err.code),))


def _writer(context: Context) -> Callable[[bytes], Any]:
    async def send(data: bytes) -> None:
        try:
            await context.write(data)
        except Exception as exc:  # the call is over (cancelled, aborted): grpc raises its own kinds
            raise ConnectionGone(str(exc)) from exc

    return send


class ResponsesServicer:
    """The three RPCs; each takes the raw request bytes (identity deserializer) and writes raw bytes."""

    def __init__(self, settings: Settings, service: ResponsesService) -> None:
        self.settings, self.service = settings, service
        self.connections = ConnectionSet()  # open Connect streams: drained by a graceful stop

    async def authorize(self, context: Context) -> None:
        """Abort with UNAUTHENTICATED unless ``authorization: Bearer <api_key>`` is sent (when a key is set)."""
        got = next((v for k, v in context.invocation_metadata() or () if k == "authorization"), None)
        try:
            check_api_key(got, self.settings.api_key)
        except TurnbenchError as err:
            await abort(context, err)

    # ------------------------------------------------------------------------------------------ decoding

    def submission(self, raw: bytes, *, connection: bool) -> Submission:
        """One ``ClientEvent`` as the core takes it. ``connection``: a ``Connect`` message, whose json codec
        carries the WebSocket frame (``type`` required); else ``CreateJson``'s body (``type`` optional)."""
        t0 = time.perf_counter_ns()
        try:
            event = pb.ClientEvent.FromString(raw)
        except DecodeError as exc:
            return Submission.refused(InvalidRequestError(f"Undecodable message: {exc}", None), encode_typed)
        decode_ns = time.perf_counter_ns() - t0
        kind = event.WhichOneof("event")
        if kind == "json":
            return self._json(event.json, len(raw), decode_ns, connection=connection)
        if kind == "create":
            return self._typed(event.create, len(raw), decode_ns)
        if kind == "steer":
            if not connection:  # CreateJson: one stateless request, no running response to steer
                return Submission.refused(unknown_event_type("response.steer"), encode_typed)
            return Submission.steering(steer_from_proto(event.steer), encode_typed)
        if kind == "append":
            if not connection:  # CreateJson: no long response runs on a stateless call
                return Submission.refused(unknown_event_type("response.append"), encode_typed)
            m = event.append
            value = input_from_proto(m)
            append = self.service.append_from(
                m.response_id, [] if value is None else value, nbytes=len(raw), parse_ns=(decode_ns, decode_ns)
            )
            return Submission.appending(append, encode_typed)
        return Submission.refused(
            InvalidRequestError(
                "The ClientEvent carries no request (set 'create', 'steer', 'append' or 'json').", "event"
            ),
            encode_typed,
        )

    def create_submission(self, raw: bytes) -> Submission:
        """A ``Create`` call's ``CreateRequest``."""
        t0 = time.perf_counter_ns()
        try:
            req = pb.CreateRequest.FromString(raw)
        except DecodeError as exc:
            return Submission.refused(InvalidRequestError(f"Undecodable message: {exc}", None), encode_typed)
        return self._typed(req, len(raw), time.perf_counter_ns() - t0)

    def _json(self, payload: str, nbytes: int, decode_ns: int, *, connection: bool) -> Submission:
        try:
            if connection:
                event = self.service.parse_client_event(payload)
                if isinstance(event, dict):  # response.steer: the json codec carries WebSocket mode's events
                    return Submission.steering(event, encode_json)
                if isinstance(event, Append):  # option A's response.append
                    event.timer.add("parse", wall_ns=decode_ns, cpu_ns=decode_ns)
                    return Submission.appending(event, encode_json)
                parsed = event
            else:
                parsed = self.service.parse(payload)
                if parsed.request.type not in (None, "response.create"):
                    raise unknown_event_type(parsed.request.type)
        except Exception as exc:
            return Submission.refused(_refusal(exc), encode_json)
        parsed.timer.add("parse", wall_ns=decode_ns, cpu_ns=decode_ns)  # the envelope's decode
        return Submission.of(parsed, encode_json)

    def _typed(self, req: pb.CreateRequest, nbytes: int, decode_ns: int) -> Submission:
        try:
            parsed = self._parse_typed(req, nbytes, decode_ns)
        except Exception as exc:
            err = _refusal(exc)
            err.stream_id = req.stream_id if req.HasField("stream_id") else None  # its lane, though refused
            return Submission.refused(err, encode_typed)
        return Submission.of(parsed, encode_typed)

    def _parse_typed(self, req: pb.CreateRequest, nbytes: int, decode_ns: int) -> ParsedRequest:
        t0 = time.perf_counter_ns()
        obj = request_from_proto(req)
        decode_ns += time.perf_counter_ns() - t0
        return self.service.parse_obj(obj, nbytes=nbytes, decode_ns=decode_ns)

    # ------------------------------------------------------------------------------------------ RPCs

    async def connect(self, requests: AsyncIterator[bytes], context: Context) -> None:
        await self.authorize(context)

        async def submissions() -> AsyncIterator[Submission]:
            async for raw in requests:
                # a large message is decoded and converted on a worker thread (100k protobuf items: ~0.3 s)
                yield await self.service.run_cpu(len(raw), functools.partial(self.submission, raw, connection=True))

        conn = Connection(self.service, "grpc", _writer(context), encode_typed)
        ending = await self.connections.serve(conn, submissions(), half_close=True)
        if ending.reason in ("shutdown", "error") and ending.error is not None:
            await abort(context, ending.error)

    async def create(self, raw: bytes, context: Context) -> None:
        await self.authorize(context)
        await self._one_shot(await self.service.run_cpu(len(raw), lambda: self.create_submission(raw)), context)

    async def create_json(self, raw: bytes, context: Context) -> None:
        await self.authorize(context)
        await self._one_shot(
            await self.service.run_cpu(len(raw), lambda: self.submission(raw, connection=False)), context
        )

    async def _one_shot(self, sub: Submission, context: Context) -> None:
        """One stateless request. Refused before its response starts, the call ends with the error's status
        (and code trailer), as POST answers with an HTTP status; after it, the events say how it ended."""
        encode_event: Encode = sub.encode

        async def emit(event: Event | WsErrorEvent) -> None:
            await context.write(encode_event(event))

        if sub.request is None:
            await abort(context, sub.error or InvalidRequestError("Empty request.", None))
            return
        session = self.service.new_session("grpc", connection=False)
        try:
            await self.service.respond(sub.request, session, emit, timeout_s=self.settings.request_timeout_s)
        except Exception as exc:
            await abort(context, _refusal(exc))


def _refusal(exc: Exception) -> TurnbenchError:
    """A refused request's error; anything else than a ``TurnbenchError`` is a logged ``server_error``."""
    err = as_turnbench_error(exc)
    if err is not exc:
        log.error("request refused by an unexpected error (%s)", err.error_id, exc_info=exc)
    return err


def _server_options(s: Settings) -> list[tuple[str, Any]]:
    opts: list[tuple[str, Any]] = [
        ("grpc.max_send_message_length", s.max_message_bytes),
        ("grpc.max_receive_message_length", s.max_message_bytes),
        ("grpc.so_reuseport", int(s.reuse_port)),  # off: port 0 must be a port of our own
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
        await servicer.connections.drain()  # Connect streams: refuse new requests, finish those in flight
        await server.stop(grace=settings.grace_s)

    return RunningServer(
        transport="grpc",
        host=settings.host,
        port=port,
        url=GRPC.url(settings.host, port, tls is not None),
        service=service,
        tls=tls,
        _stop=stop,
        extra={"servicer": servicer, "health": health_servicer},
    )
