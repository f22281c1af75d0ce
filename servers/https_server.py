"""HTTPS+SSE transport: Starlette on uvicorn (httptools), the OpenAI Responses HTTP API byte for byte.
With ``Settings.http2`` the same app is served over HTTP/2 by hypercorn (:mod:`servers.https_h2`).

Routes::

    POST   /v1/responses                     stream=true: text/event-stream (``event: T\ndata: JSON\n\n``, no
                                             [DONE]); stream=false: the final Response JSON; background=true:
                                             ``queued`` at once (or streamed), run on after the client leaves
    GET    /v1/responses/{id}                a stored (store=true) response, 404 otherwise; ?stream=true
                                             [&starting_after=N] follows a running background response
    DELETE /v1/responses/{id}                delete a stored response (a running background one is cancelled)
    POST   /v1/responses/input_tokens        the input tokens a response.create would count
    POST   /v1/responses/compact             the conversation compacted: its user messages, one compaction item
    POST   /v1/responses/{id}/cancel         cancel a background response
    GET    /v1/responses/{id}/input_items    its input items, paged (limit, order, after)
    GET    /v1/models, /v1/models/{id}       the model names it suggests (any name is served)
    POST   /v1/chat/completions              Chat Completions over the same core (turnbench.chat): chat.completion,
                                             or chat.completion.chunk events ending with ``data: [DONE]``
    GET    /healthz                          {"status": "ok", "transport": "https", "pid": N}
    GET    /health                           200, empty body: vLLM's health route, which gateways poll
    WS     /v1/responses                     WebSocket mode, served by ``servers.ws_server`` on the same port

The adapter only moves bytes: decode → :class:`ResponsesService` → encode, errors mapped in
:func:`error_reply`. A client that disconnects cancels the request task (:class:`_DisconnectGuard`), which
closes the service's event generator: generation stops and frees its work; ``request_timeout_s`` is the
core's (``service.respond``), with the body upload counted. uvicorn runs in the caller's event loop; signals
stay with the process owner; ``stop()`` drains for ``grace_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, get_args

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response as HttpResponse
from starlette.responses import StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.types import Message, Receive, Scope, Send
from starlette.websockets import WebSocket
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from servers.base import RunningServer
from servers.ws_server import handle_starlette_websocket
from turnbench import errors
from turnbench.auth import check_api_key
from turnbench.chat import ChatAnswer, decode_chat, to_responses
from turnbench.connection import ConnectionSet
from turnbench.prepared import ParsedRequest
from turnbench.schema import ErrorEvent, Event, ResponseFailed, encode
from turnbench.service import ResponsesService
from turnbench.settings import Settings
from turnbench.state import Session
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
        log.error("unexpected error (%s)", err.error_id, exc_info=exc)
    return err.http_status, orjson.dumps(err.to_body())


class _DisconnectGuard:
    """Cancels the request task when the client disconnects mid-response (the engine stops decoding for a
    peer that is gone). One task on ``receive()``, started once the body is read: uvicorn answers it only at
    disconnect or completion. ``disconnected`` tells the request task why it was cancelled."""

    __slots__ = ("_watch", "disconnected", "task")

    def __init__(self) -> None:
        self.task: asyncio.Task[Any] = asyncio.current_task()  # type: ignore[assignment]  # inside a request
        self.disconnected = False
        self._watch: asyncio.Future[Message] | None = None

    def watch(self, receive: Receive) -> None:
        self._watch = asyncio.ensure_future(receive())
        self._watch.add_done_callback(self._on_receive)

    def _on_receive(self, fut: asyncio.Future[Message]) -> None:
        if not fut.cancelled() and fut.exception() is None and fut.result()["type"] == "http.disconnect":
            self.disconnected = True
            self.task.cancel()

    def close(self) -> None:
        """Idempotent; after it, a disconnect no longer touches the task."""
        if self._watch is not None:
            self._watch.remove_done_callback(self._on_receive)
            self._watch.cancel()


def _header(scope: Scope, name: bytes) -> bytes | None:
    return next((v for k, v in scope["headers"] if k == name), None)


REQUEST_ID_HEADERS = (b"x-request-id", b"x-client-request-id")
"""Where a caller (a gateway) names its request: the first of these it sends is kept in the usage log."""


def request_id(scope: Scope) -> str | None:
    """The caller's id for this request (:data:`REQUEST_ID_HEADERS`), at most 200 characters; None if none."""
    for name in REQUEST_ID_HEADERS:
        value = _header(scope, name)
        if value:
            return value.decode("latin-1")[:200]
    return None


class ResponsesEndpoint:
    """``POST /v1/responses`` as a raw ASGI app: the hot path, so no Request/Response objects.

    ``request_timeout_s`` covers the whole request, body upload included: before the response starts it is a
    408, after ``response.created`` the stream ends with ``response.failed`` (the core's ``respond``).
    """

    def __init__(self, service: ResponsesService, settings: Settings) -> None:
        self.service, self.settings = service, settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        guard = _DisconnectGuard()
        stream = _SseStream(send)
        service, timeout_s = self.service, self.settings.request_timeout_s
        upload: asyncio.Timeout | None = None
        try:
            check_api_key(_header(scope, b"authorization"), self.settings.api_key)
            deadline = asyncio.get_running_loop().time() + timeout_s
            async with asyncio.timeout_at(deadline) as upload:
                body = await read_body(scope, receive, self.settings.max_body_bytes)
            if body is None:
                return  # the client left before sending its whole body: nobody to answer
            guard.watch(receive)
            parsed = service.parse(body)
            parsed.request_id = request_id(scope)
            session = service.new_session("https", connection=False)
            remaining = deadline - asyncio.get_running_loop().time()
            if parsed.request.background:
                await self._background(parsed, session, stream, send)
                return
            if not parsed.request.stream:
                await self._whole(parsed, session, send, remaining)
                return
            await service.respond(parsed, session, stream.emit, timeout_s=remaining)
            await stream.end()
        except asyncio.CancelledError:
            if not guard.disconnected:
                raise  # server shutdown: not ours to swallow
            guard.task.uncancel()  # the client is gone: nothing to answer
        except TimeoutError as exc:  # the upload's deadline, or a bug's own TimeoutError (a server_error)
            late = upload is not None and upload.expired()
            await self._fail(
                send,
                stream,
                errors.RequestTimeoutError(
                    f"The request did not finish within {timeout_s:g} s (the body was still arriving)."
                )
                if late
                else exc,
            )
        except Exception as exc:  # TurnbenchError before the stream, or a bug mid-stream
            await self._fail(send, stream, exc)
        finally:
            guard.close()

    async def _whole(self, parsed: ParsedRequest, session: Session, send: Send, timeout_s: float) -> None:
        """stream=false: run to the terminal event, answer with its Response (500 if it failed)."""
        last: list[Event] = []

        async def keep(event: Event) -> None:
            last[:] = [event]

        await self.service.respond(parsed, session, keep, timeout_s=timeout_s)
        response = getattr(last[0], "response", None) if last else None
        if response is None or isinstance(last[0], ResponseFailed):
            err = (response.error if response is not None else None) or {}
            kind = (
                errors.RequestTimeoutError if err.get("code") == errors.RequestTimeoutError.code else errors.ServerError
            )  # nothing was sent yet: the failure becomes the status
            await send_bytes(send, *error_reply(kind(err.get("message", "The response failed."), code=err.get("code"))))
        else:
            await send_bytes(send, 200, encode(response))

    async def _background(self, parsed: ParsedRequest, session: Session, stream: _SseStream, send: Send) -> None:
        """``background: true``: answered at once (``queued``), or streamed; a client that leaves does not stop
        it (``turnbench.background``)."""
        job = await self.service.start_background(parsed, session)
        if not parsed.request.stream:
            await send_bytes(send, 200, encode(self.service.background.queued(job)))
            return
        async for event in job.follow():
            await stream.emit(event)
        await stream.end()

    @staticmethod
    async def _fail(send: Send, stream: _SseStream, exc: BaseException) -> None:
        """Before the headers: a status and error body. Mid-stream: an ``error`` event, then the end."""
        status, body = error_reply(exc)
        if not stream.started:
            # after a 413 the rest of the body may still be on its way: never read it as the next request
            # (HTTP/2: h2 drops the Connection header; the stream ends alone)
            await send_bytes(send, status, body, close=status == 413)
            return
        err = errors.as_turnbench_error(exc)
        await stream.emit(
            ErrorEvent(sequence_number=stream.seq + 1, code=err.code, message=err.message, param=err.param)
        )
        await stream.end()


class ChatEndpoint:
    """``POST /v1/chat/completions``: a chat request as one stateless response of the same core
    (:mod:`turnbench.chat`), answered as ``chat.completion`` or as ``chat.completion.chunk`` events ending with
    ``data: [DONE]``. Errors before the stream: a status and the OpenAI error body; in it: ``data: {"error"}``."""

    def __init__(self, service: ResponsesService, settings: Settings) -> None:
        self.service, self.settings = service, settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        guard = _DisconnectGuard()
        stream = _ChatStream(send)
        service, timeout_s = self.service, self.settings.request_timeout_s
        try:
            check_api_key(_header(scope, b"authorization"), self.settings.api_key)
            deadline = asyncio.get_running_loop().time() + timeout_s
            async with asyncio.timeout_at(deadline):
                body = await read_body(scope, receive, self.settings.max_body_bytes)
            if body is None:
                return
            guard.watch(receive)
            t0 = time.perf_counter_ns()
            chat = decode_chat(body)
            parsed = service.parse_obj(to_responses(chat), nbytes=len(body), decode_ns=time.perf_counter_ns() - t0)
            parsed.request_id, parsed.endpoint = request_id(scope), "chat.completions"
            session = service.new_session("https", connection=False)
            include_usage = chat.stream_options is not None and chat.stream_options.include_usage
            answer = ChatAnswer(chat.model, include_usage=include_usage)
            remaining = deadline - asyncio.get_running_loop().time()
            if not chat.stream:
                last: list[Event] = []

                async def keep(event: Event) -> None:
                    last[:] = [event]

                await service.respond(parsed, session, keep, timeout_s=remaining)
                response = getattr(last[0], "response", None) if last else None
                if response is None or isinstance(last[0], ResponseFailed):
                    err = (response.error if response is not None else None) or {}
                    raise errors.ServerError(err.get("message", "The response failed."), code=err.get("code"))
                await send_bytes(send, 200, orjson.dumps(answer.completion(response)))
                return

            async def emit(event: Event) -> None:
                if isinstance(event, ResponseFailed):
                    err = event.response.error or {}
                    await stream.data({"error": {"message": err.get("message"), "type": "server_error", **err}})
                for chunk in answer.chunks(event):
                    await stream.data(chunk)

            await service.respond(parsed, session, emit, timeout_s=remaining)
            await stream.done()
        except asyncio.CancelledError:
            if not guard.disconnected:
                raise
            guard.task.uncancel()
        except Exception as exc:
            status, body = error_reply(exc)
            if not stream.started:
                await send_bytes(send, status, body, close=status == 413)
            else:
                await stream.data(orjson.loads(body))
                await stream.done()
        finally:
            guard.close()


class _ChatStream:
    """The SSE response of one chat request: ``data: JSON`` frames, then ``data: [DONE]``."""

    __slots__ = ("_send", "started")

    def __init__(self, send: Send) -> None:
        self._send = send
        self.started = False

    async def _frame(self, frame: bytes, *, more: bool) -> None:
        if not self.started:
            await self._send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
            self.started = True
        await self._send({"type": "http.response.body", "body": frame, "more_body": more})

    async def data(self, obj: dict[str, Any]) -> None:
        await self._frame(b"data: %s\n\n" % orjson.dumps(obj), more=True)

    async def done(self) -> None:
        await self._frame(b"data: [DONE]\n\n", more=False)


class _SseStream:
    """The SSE response of one request: headers before the first event, one frame per event, the end."""

    __slots__ = ("_send", "seq", "started")

    def __init__(self, send: Send) -> None:
        self._send = send
        self.started = False
        self.seq = -1

    async def emit(self, event: Event) -> None:
        if not self.started:
            await self._send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
            self.started = True
        self.seq = event.sequence_number
        await self._send({"type": "http.response.body", "body": sse_frame(event), "more_body": True})

    async def end(self) -> None:
        await self._send({"type": "http.response.body", "body": b"", "more_body": False})


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
                    f"exceeds the server limit of {limit} bytes (max_body_bytes)."
                )
        elif chunk:
            chunks.append(chunk)
        if not more:
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def send_bytes(send: Send, status: int, body: bytes, *, close: bool = False) -> None:
    headers = [*JSON_HEADERS, (b"content-length", b"%d" % len(body)), *([(b"connection", b"close")] * close)]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def build_app(service: ResponsesService, settings: Settings, connections: ConnectionSet) -> Starlette:
    """The ASGI app: Responses routes, health check and the WebSocket-mode route on one port. Its WebSocket
    connections are counted in ``connections``, so stopping the server drains them."""
    endpoint = ResponsesEndpoint(service, settings)
    chat = ChatEndpoint(service, settings)

    def api(handler: Callable[[Request], Awaitable[Any]]) -> Callable[[Request], Awaitable[HttpResponse]]:
        """A JSON route: auth checked first, the handler's result encoded, every error in the Responses shape."""

        async def route(request: Request) -> HttpResponse:
            try:
                check_api_key(_header(request.scope, b"authorization"), settings.api_key)
                body, status = encode(await handler(request)), 200
            except Exception as exc:
                status, body = error_reply(exc)
            return HttpResponse(body, status, media_type="application/json")

        return route

    async def retrieve(request: Request) -> HttpResponse:
        """``GET /v1/responses/{id}``; ``?stream=true[&starting_after=N]`` follows a running background one."""
        query = request.query_params
        if query.get("stream") not in ("true", "1"):
            return await api(lambda r: service.retrieve(r.path_params["response_id"]))(request)
        try:
            check_api_key(_header(request.scope, b"authorization"), settings.api_key)
            job = service.background.running.get(request.path_params["response_id"])
            if job is None:
                raise errors.InvalidRequestError(
                    "Only a background response that is still running can be streamed; retrieve it without "
                    "stream=true.",
                    "stream",
                )
            after = int(query.get("starting_after", "-1"))
        except (errors.TurnbenchError, ValueError) as exc:
            err = (
                exc
                if isinstance(exc, errors.TurnbenchError)
                else errors.InvalidRequestError(f"Invalid 'starting_after': {exc}", "starting_after")
            )
            status, body = error_reply(err)
            return HttpResponse(body, status, media_type="application/json")

        async def frames() -> AsyncIterator[bytes]:
            async for event in job.follow(after):
                yield sse_frame(event)

        return StreamingResponse(frames(), media_type="text/event-stream", headers={"cache-control": "no-cache"})

    async def body(request: Request) -> bytes:
        payload = await read_body(request.scope, request.receive, settings.max_body_bytes)
        if payload is None:  # the client left before sending its whole body: whatever we answer, nobody reads it
            raise errors.InvalidRequestError("The request body was not received in full.", None)
        return payload

    async def input_tokens(request: Request) -> Any:
        return await service.count_input_tokens(await body(request))

    async def compact(request: Request) -> Any:
        return await service.compact(await body(request))

    async def delete(request: Request) -> dict[str, Any]:
        response_id = request.path_params["response_id"]
        await service.delete(response_id)
        return {"id": response_id, "object": "response.deleted", "deleted": True}

    async def cancel(request: Request) -> Any:
        return await service.background.cancel(request.path_params["response_id"])

    async def input_items(request: Request) -> dict[str, Any]:
        """A page of the input items: ``limit`` (1-100, default 20), ``order`` (desc by default, as the
        Responses API), ``after`` (an item id: the page starts after it)."""
        query = request.query_params
        try:
            limit = int(query.get("limit", "20"))
        except ValueError:
            limit = 0
        if not 1 <= limit <= 100:
            raise errors.InvalidRequestError("Invalid 'limit': expected an integer from 1 to 100.", "limit")
        order = query.get("order", "desc")
        if order not in ("asc", "desc"):
            raise errors.InvalidRequestError("Invalid 'order': expected 'asc' or 'desc'.", "order")
        items = await service.input_items(request.path_params["response_id"])
        if order == "desc":
            items.reverse()
        after = query.get("after")
        if after is not None:
            ids = [i["id"] for i in items]
            if after not in ids:
                raise errors.InvalidRequestError(f"Invalid 'after': no input item {after!r}.", "after")
            items = items[ids.index(after) + 1 :]
        page = items[:limit]
        return {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(items) > limit,
        }

    started = int(time.time())

    def model_card(model_id: str) -> dict[str, Any]:
        """OpenAI's model object, with vLLM's members beside (a gateway may read ``max_model_len``)."""
        return {
            "id": model_id,
            "object": "model",
            "created": started,
            "owned_by": "turnbench",
            "root": model_id,
            "parent": None,
            "max_model_len": settings.max_context_tokens,
        }

    async def models(request: Request) -> dict[str, Any]:
        """Any model name is served (the scripted model answers for each); these are the names it suggests."""
        names = ["turnbench", f"turnbench-{settings.engine}-{settings.profile}"]
        return {"object": "list", "data": [model_card(n) for n in names]}

    async def model(request: Request) -> dict[str, Any]:
        return model_card(request.path_params["model"])

    health = orjson.dumps({"status": "ok", "transport": "https", "pid": os.getpid()})  # pid: which --workers worker

    async def healthz(request: Request) -> HttpResponse:
        return HttpResponse(health, media_type="application/json")

    async def vllm_health(request: Request) -> HttpResponse:
        """``GET /health`` as vLLM answers it (a gateway polls it before it serves): 200, empty body."""
        return HttpResponse(b"", 200)

    async def websocket_mode(websocket: WebSocket) -> None:
        await handle_starlette_websocket(websocket, service, connections)

    async def no_route(request: Request, exc: Exception) -> HttpResponse:
        status = getattr(exc, "status_code", 404)
        return HttpResponse(
            orjson.dumps(
                {
                    "error": {
                        "message": f"Invalid URL ({request.method} {request.url.path})",
                        "type": "invalid_request_error",
                        "param": None,
                        "code": None,
                    }
                }
            ),
            status,
            media_type="application/json",
        )

    return Starlette(
        exception_handlers={404: no_route, 405: no_route},
        routes=[
            Route("/v1/responses", endpoint, methods=["POST"]),
            Route("/v1/responses/input_tokens", api(input_tokens), methods=["POST"]),
            Route("/v1/responses/compact", api(compact), methods=["POST"]),
            Route("/v1/responses/{response_id}", retrieve, methods=["GET"]),
            Route("/v1/responses/{response_id}", api(delete), methods=["DELETE"]),
            Route("/v1/responses/{response_id}/cancel", api(cancel), methods=["POST"]),
            Route("/v1/responses/{response_id}/input_items", api(input_items), methods=["GET"]),
            Route("/v1/models", api(models), methods=["GET"]),
            Route("/v1/models/{model:path}", api(model), methods=["GET"]),
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/health", vllm_health, methods=["GET"]),
            WebSocketRoute("/v1/responses", websocket_mode),
        ],
    )


class _HeaderTimeoutProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, plus a deadline for each request's headers (``header_timeout_s``): a
    client that opens a connection and sends its headers a byte at a time is closed when it passes, instead of
    holding a socket (and a file descriptor) for as long as it likes. uvicorn has no such timeout of its own."""

    header_timeout_s = 10.0  # replaced per server by a subclass (see ``start``)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        self._arm()

    def _arm(self) -> None:
        if self._header_timer is None:
            loop = asyncio.get_running_loop()
            self._header_timer = loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            log.info("closing a connection whose request headers took over %g s", self.header_timeout_s)
            self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()  # the next request on a keep-alive connection: its headers get the same deadline

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


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
    connections = ConnectionSet()  # WebSocket mode on this port: drained before the HTTP server stops
    app = build_app(service, settings, connections)
    if settings.http2:
        from servers.https_h2 import start_hypercorn  # hypercorn is imported only for the variant

        return await start_hypercorn(app, settings, service, tls, keep_alive_s=KEEP_ALIVE_S, connections=connections)
    server_ctx = tls.server_ssl_context() if tls is not None else None
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="none",
        http=type("HeaderTimeoutProtocol", (_HeaderTimeoutProtocol,), {"header_timeout_s": settings.header_timeout_s}),
        ws="websockets-sansio",
        lifespan="off",
        log_level="warning",
        log_config=None,
        access_log=False,
        ssl_context_factory=(lambda cfg, default: server_ctx) if server_ctx else None,
        timeout_keep_alive=KEEP_ALIVE_S,
        timeout_graceful_shutdown=max(1, math.ceil(settings.grace_s)),
        ws_max_size=settings.max_message_bytes,
        ws_ping_interval=settings.ping_interval_s,
        ws_ping_timeout=settings.ping_timeout_s,
        ws_per_message_deflate=False,
    )  # as the official SDK negotiates: small frames, no compression
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.create_server(
        (settings.host, settings.port), family=family, backlog=config.backlog, reuse_port=settings.reuse_port
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name="turnbench-https")
    while not server.started:
        if task.done():
            sock.close()
            raise OSError(f"https server failed to start: {task.exception()!r}")
        await asyncio.sleep(0.002)
    port = int(sock.getsockname()[1])

    async def stop() -> None:
        await connections.drain()  # uvicorn would close open WebSockets at once
        server.should_exit = True
        await task

    return RunningServer(
        transport="https",
        host=settings.host,
        port=port,
        url=HTTPS.url(settings.host, port, tls is not None),
        service=service,
        tls=tls,
        _stop=stop,
        extra={"uvicorn": server, "server": "uvicorn", "http": "1.1", "connections": connections},
    )
