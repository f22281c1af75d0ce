"""HTTPS+SSE transport: Starlette on uvicorn (httptools), the OpenAI Responses HTTP API byte for byte.
With ``Settings.http2`` the same app is served over HTTP/2 by hypercorn (:mod:`servers.https_h2`).

Routes::

    POST /v1/responses        stream=true: text/event-stream (``event: T\\ndata: JSON\\n\\n``, no [DONE])
                              stream=false: the final Response JSON (500 + error body if it failed)
    GET  /v1/responses/{id}   a stored (store=true) response, 404 otherwise
    GET  /healthz             {"status": "ok", "transport": "https"}
    WS   /v1/responses        WebSocket mode, served by ``servers.ws_server`` on the same port

The adapter only moves bytes: decode → :class:`ResponsesService` → encode, errors mapped in
:func:`error_reply`. A client that disconnects, or a request that outlives ``request_timeout_s``, cancels
the request task (:class:`_Guard`), which closes the service's event generator: generation stops and
frees its work. uvicorn runs in the caller's event loop; signals stay with the process owner, ``stop()``
drains for ``grace_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import importlib
import logging
import math
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any, get_args

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response as HttpResponse
from starlette.routing import Route, WebSocketRoute
from starlette.types import Message, Receive, Scope, Send
from starlette.websockets import WebSocket

from servers.base import RunningServer
from turnbench import errors
from turnbench.schema import ErrorEvent, Event, ResponseFailed, encode
from turnbench.service import ResponsesService
from turnbench.settings import Settings
from turnbench.tls import TLSMaterial
from turnbench.transports import HTTPS

log = logging.getLogger("turnbench.https")

JSON_HEADERS = [(b"content-type", b"application/json")]
SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
LINGER_BYTES = 4 * 1024 * 1024  # oversized input read and dropped before a 413 (see read_body)
KEEP_ALIVE_S = 120  # idle keep-alive; longer than any tool call between turns, so turns reuse connections
_TYPES: dict[type, bytes] = {cls: str(cls.__struct_config__.tag).encode() for cls in get_args(Event)}


def sse_frame(event: Event) -> bytes:
    """One Server-Sent Event: ``event: <type>\\ndata: <json>\\n\\n`` (the type is the struct's tag)."""
    return b"event: %s\ndata: %s\n\n" % (_TYPES[type(event)], encode(event))


def error_reply(exc: BaseException) -> tuple[int, bytes]:
    """Every error as (HTTP status, OpenAI error body): the one mapping of this adapter."""
    err = errors.as_turnbench_error(exc)
    if err is not exc:
        log.error("unexpected error", exc_info=exc)
    return err.http_status, orjson.dumps(err.to_body())


class _Guard:
    """Cancels the request task when the client disconnects or ``request_timeout_s`` passes; ``reason`` says
    which. Cheaper than a task group: one timer and, once the body is read, one task on ``receive()``
    (uvicorn answers it only at disconnect or completion). A cancellation without a reason is re-raised."""

    __slots__ = ("_closed", "_timer", "_watch", "reason", "task")

    def __init__(self, timeout_s: float) -> None:
        self.task: asyncio.Task[Any] = asyncio.current_task()  # type: ignore[assignment]  # inside a request
        self.reason: str | None = None
        self._closed = False
        self._timer = asyncio.get_running_loop().call_later(timeout_s, self._fire, "timeout")
        self._watch: asyncio.Future[Message] | None = None

    def watch(self, receive: Receive) -> None:
        self._watch = asyncio.ensure_future(receive())
        self._watch.add_done_callback(self._on_receive)

    def _on_receive(self, fut: asyncio.Future[Message]) -> None:
        if not fut.cancelled() and fut.exception() is None and fut.result()["type"] == "http.disconnect":
            self._fire("disconnect")

    def _fire(self, reason: str) -> None:
        if not self._closed and self.reason is None:
            self.reason = reason
            self.task.cancel()

    def close(self) -> None:
        """Idempotent; after it, neither a timeout nor a disconnect touches the task."""
        self._closed = True
        self._timer.cancel()
        if self._watch is not None:
            self._watch.cancel()


class ResponsesEndpoint:
    """``POST /v1/responses`` as a raw ASGI app: the hot path, so no Request/Response objects."""

    def __init__(self, service: ResponsesService, settings: Settings) -> None:
        self.service, self.settings = service, settings
        self.bearer = b"Bearer " + settings.api_key.encode() if settings.api_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        guard = _Guard(self.settings.request_timeout_s)
        agen: AsyncIterator[Event] | None = None
        started = False  # response headers sent
        seq = -1
        try:
            check_auth(self.bearer, scope["headers"])
            body = await read_body(scope, receive, self.settings.max_body_bytes)
            if body is None:
                return  # the client left before sending its whole body: nobody to answer
            guard.watch(receive)
            service = self.service
            parsed = service.parse(body)
            agen = service.create(parsed, service.new_session("https", connection=False))
            first = await agen.__anext__()  # errors before response.created raise here
            if not parsed.request.stream:
                await self._whole(first, agen, send)
                return
            await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
            started = True
            seq = first.sequence_number
            await send({"type": "http.response.body", "body": sse_frame(first), "more_body": True})
            async for ev in agen:
                seq = ev.sequence_number
                await send({"type": "http.response.body", "body": sse_frame(ev), "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if guard.reason is None:
                raise  # server shutdown: not ours to swallow
            guard.close()
            guard.task.uncancel()
            if guard.reason == "timeout":
                await self._fail(send, started, seq, errors.RequestTimeoutError(
                    f"The request did not finish within {self.settings.request_timeout_s:g} s."))
        except Exception as exc:  # TurnbenchError before the stream, or a bug mid-stream
            await self._fail(send, started, seq, exc)
        finally:
            guard.close()
            if agen is not None:
                await agen.aclose()  # type: ignore[attr-defined]  # stops generation if it still runs

    async def _whole(self, first: Event, agen: AsyncIterator[Event], send: Send) -> None:
        """stream=false: run to the terminal event, answer with its Response (500 if it failed)."""
        last = first
        async for last in agen:  # noqa: B007  # only the terminal event matters
            pass
        response = getattr(last, "response", None)
        if response is None or isinstance(last, ResponseFailed):
            err = (response.error if response is not None else None) or {}
            await send_bytes(send, *error_reply(errors.ServerError(err.get("message", "The response failed."),
                                                            code=err.get("code"))))
        else:
            await send_bytes(send, 200, encode(response))

    @staticmethod
    async def _fail(send: Send, started: bool, seq: int, exc: BaseException) -> None:
        """Before the headers: a status and error body. Mid-stream: an ``error`` event, then the end."""
        status, body = error_reply(exc)
        if not started:
            # after a 413 the rest of the body may still be on its way: never read it as the next request
            # (HTTP/2: h2 drops the Connection header; the stream ends alone)
            await send_bytes(send, status, body, close=status == 413)
            return
        err = errors.as_turnbench_error(exc)
        frame = sse_frame(ErrorEvent(sequence_number=seq + 1, code=err.code, message=err.message,
                                     param=err.param))
        await send({"type": "http.response.body", "body": frame, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def check_auth(bearer: bytes | None, headers: list[tuple[bytes, bytes]]) -> None:
    """Raise ``AuthenticationError`` unless ``Authorization: Bearer <key>`` matches (if a key is set)."""
    if bearer is None:
        return
    for name, value in headers:
        if name == b"authorization" and hmac.compare_digest(value, bearer):
            return
    raise errors.AuthenticationError("Incorrect API key provided.")


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes | None:
    """The request body, at most ``limit`` bytes (Content-Length checked first, chunked bodies counted).

    An oversized body is still read and dropped (up to ``LINGER_BYTES`` more) before the 413: closing with
    unread input resets the connection and the client would lose the answer. Returns: the body, or None
    if the client disconnected first. Raises: ``PayloadTooLargeError``.
    """
    declared = next((int(v) for k, v in scope["headers"] if k == b"content-length" and v.isdigit()), 0)
    chunks: list[bytes] = []
    size = 0
    over = declared > limit
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return None
        chunk = msg.get("body", b"")
        size += len(chunk)
        over = over or size > limit
        more = msg.get("more_body", False)
        if over:
            if not more or size > limit + LINGER_BYTES:
                raise errors.PayloadTooLargeError(
                    f"Request body too large: {max(size, declared)} bytes{' (at least)' if more else ''} "
                    f"exceeds the server limit of {limit} bytes (max_body_bytes).")
        elif chunk:
            chunks.append(chunk)
        if not more:
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def send_bytes(send: Send, status: int, body: bytes, *, close: bool = False) -> None:
    headers = [*JSON_HEADERS, (b"content-length", b"%d" % len(body)), *([(b"connection", b"close")] * close)]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def build_app(service: ResponsesService, settings: Settings) -> Starlette:
    """The ASGI app: Responses routes, health check and the WebSocket-mode route on one port."""
    endpoint = ResponsesEndpoint(service, settings)

    async def retrieve(request: Request) -> HttpResponse:
        try:
            check_auth(endpoint.bearer, request.scope["headers"])
            body, status = encode(await service.retrieve(request.path_params["response_id"])), 200
        except Exception as exc:
            status, body = error_reply(exc)
        return HttpResponse(body, status, media_type="application/json")

    async def healthz(request: Request) -> HttpResponse:
        return HttpResponse(b'{"status":"ok","transport":"https"}', media_type="application/json")

    async def websocket_mode(websocket: WebSocket) -> None:
        ws_server = importlib.import_module("servers.ws_server")  # the WebSocket transport owns this route
        await ws_server.handle_starlette_websocket(websocket, service, settings)

    async def no_route(request: Request, exc: Exception) -> HttpResponse:
        status = getattr(exc, "status_code", 404)
        return HttpResponse(orjson.dumps({"error": {
            "message": f"Invalid URL ({request.method} {request.url.path})", "type": "invalid_request_error",
            "param": None, "code": None}}), status, media_type="application/json")

    return Starlette(exception_handlers={404: no_route, 405: no_route}, routes=[
        Route("/v1/responses", endpoint, methods=["POST"]),
        Route("/v1/responses/{response_id}", retrieve, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        WebSocketRoute("/v1/responses", websocket_mode),
    ])


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: the process owner (CLI, test) decides when to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def start(settings: Settings, service: ResponsesService, tls: TLSMaterial | None) -> RunningServer:
    """Start uvicorn in the running event loop; returns once it listens (port 0: the bound port).

    The socket is bound here: a bind error is an ``OSError`` for the caller (uvicorn would ``sys.exit``).
    With ``settings.http2`` the same app runs on hypercorn instead (HTTP/2: :mod:`servers.https_h2`).
    """
    if settings.http2:
        from servers.https_h2 import start_hypercorn  # hypercorn is imported only for the variant

        return await start_hypercorn(build_app(service, settings), settings, service, tls, keep_alive_s=KEEP_ALIVE_S)
    server_ctx = tls.server_ssl_context() if tls is not None else None
    config = uvicorn.Config(
        build_app(service, settings), host=settings.host, port=settings.port, loop="none",
        http="httptools", ws="websockets-sansio", lifespan="off", log_level="warning", log_config=None,
        access_log=False, ssl_context_factory=(lambda cfg, default: server_ctx) if server_ctx else None,
        timeout_keep_alive=KEEP_ALIVE_S, timeout_graceful_shutdown=max(1, math.ceil(settings.grace_s)),
        ws_max_size=settings.max_message_bytes, ws_ping_interval=settings.ping_interval_s,
        ws_ping_timeout=settings.ping_timeout_s,
        ws_per_message_deflate=False)  # as the official SDK negotiates: small frames, no compression
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.create_server((settings.host, settings.port), family=family, backlog=config.backlog)
    server = _Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name="turnbench-https")
    while not server.started:
        if task.done():
            sock.close()
            raise OSError(f"https server failed to start: {task.exception()!r}")
        await asyncio.sleep(0.002)
    port = int(sock.getsockname()[1])

    async def stop() -> None:
        server.should_exit = True
        await task

    return RunningServer(
        transport="https", host=settings.host, port=port,
        url=HTTPS.url(settings.host, port, tls is not None), service=service, tls=tls, _stop=stop,
        extra={"uvicorn": server, "server": "uvicorn", "http": "1.1"})
