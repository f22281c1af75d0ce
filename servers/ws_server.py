"""WebSocket mode (spec §a): ``GET /v1/responses`` upgraded, one JSON object per text frame, both ways.

A connection is one :class:`~turnbench.service.Session`: its connection-local cache lets a continuation send
``previous_response_id`` and only the new items (DESIGN §3). The adapter decodes, calls the service, encodes,
maps errors::

    frame ──parse on receipt──▶ task ──lane lock (FIFO)──▶ in-flight slot ──▶ service.create ──▶ frames

* Request N+1 is parsed while N still runs; with ``overlap_post`` N's ``post`` runs beside N+1's pipeline.
* A lane (``stream_id``; none = default) runs its requests one at a time, FIFO: a ``response.create`` sent
  while one is in flight is queued, never rejected; at most ``max_inflight_per_connection`` run at once.
* A ``TurnbenchError`` becomes an ``error`` frame, sent in its lane's order; the connection keeps serving.
* ``connection_lifetime_s``: the ``websocket_connection_limit_reached`` frame, then close 1000 (what is in
  flight is cancelled). A frame over ``max_message_bytes``: close 1009 with a reason (websockets).
* A closed or dropped connection cancels its requests (the engine stops decoding) and frees its state.

Two I/O flavours share :class:`WsConnection` through :class:`FrameIO`: the standalone ``websockets`` server
(:func:`start`, the benchmark default) and :func:`handle_starlette_websocket`, which the HTTPS server mounts
on its own ``/v1/responses`` so an SDK user changes only the call. Per-message compression is off on purpose:
+25% latency on small frames (DESIGN §9), and the official SDK turns it off too.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import Coroutine
from http import HTTPStatus
from typing import Any, Protocol

import orjson
from starlette.responses import JSONResponse
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from servers.base import RunningServer
from turnbench import errors
from turnbench.errors import AuthenticationError, InvalidRequestError, TurnbenchError, as_turnbench_error
from turnbench.schema import encode, ws_error_event
from turnbench.service import ParsedRequest, ResponsesService
from turnbench.settings import Settings
from turnbench.state import STREAM_ID as _STREAM_ID
from turnbench.tls import TLSMaterial
from turnbench.transports import WS

__all__ = ["PATH", "FrameIO", "WsConnection", "check_bearer", "handle_starlette_websocket", "start"]

log = logging.getLogger("turnbench.ws")
PATH = "/v1/responses"
HEALTH_PATH = "/healthz"


class ConnectionGone(Exception):
    """The peer is gone (closed or dropped); whatever was being sent is lost."""


class FrameIO(Protocol):
    """One WebSocket as :class:`WsConnection` needs it, whatever library carries it.

    ``recv``: the next message, ``str`` (text frame) or ``bytes`` (binary frame), ``None`` once closed.
    ``send_text``: UTF-8 JSON as one text frame; raises :class:`ConnectionGone` if the peer is gone.
    ``close``: close with a code and reason; never raises.
    """

    async def recv(self) -> str | bytes | None: ...
    async def send_text(self, data: bytes) -> None: ...
    async def close(self, code: int, reason: str) -> None: ...


def check_bearer(authorization: str | None, api_key: str | None) -> AuthenticationError | None:
    """The error to answer an upgrade with, or None when ``Authorization: Bearer <api_key>`` matches."""
    if not api_key:
        return None
    given = authorization or ""
    if not given.startswith("Bearer "):
        return AuthenticationError("You didn't provide an API key. Send 'Authorization: Bearer <key>'.")
    if not hmac.compare_digest(given[7:].strip().encode(), api_key.encode()):
        return AuthenticationError("Incorrect API key provided.")
    return None


def _peek(frame: str) -> dict[str, Any]:
    """The frame as a dict, best effort: error path only (the event ``type`` and ``stream_id``)."""
    with contextlib.suppress(orjson.JSONDecodeError):
        obj = orjson.loads(frame)
        return obj if isinstance(obj, dict) else {}
    return {}


def _valid_sid(stream_id: object) -> str | None:
    return stream_id if isinstance(stream_id, str) and _STREAM_ID.match(stream_id) else None


class WsConnection:
    """The protocol of one connection: its session and cache, its queued and running requests, its limits."""

    def __init__(self, io: FrameIO, service: ResponsesService) -> None:
        self.io, self.service, self.settings = io, service, service.settings
        self.session = service.new_session("ws", connection=True)
        self.tasks: set[asyncio.Task[None]] = set()
        self.draining = False  # set by a graceful stop: new requests are refused, running ones finish
        self._slots = asyncio.Semaphore(max(1, self.settings.max_inflight_per_connection))
        self.idle = asyncio.Event()  # set while no request of this connection is queued or running
        self.idle.set()
        self.closed = asyncio.Event()  # set once the connection is over and its state freed

    async def serve(self) -> None:
        """Read frames until the peer closes or the lifetime limit; then cancel what runs, free the state."""
        reader = asyncio.create_task(self._read_loop())
        try:
            done, _ = await asyncio.wait({reader}, timeout=self.settings.connection_lifetime_s)
            if reader in done:
                reader.result()
            else:
                reader.cancel()
                await self._cancel_tasks()
                err = errors.ConnectionLimitError(self.settings.connection_lifetime_s / 60.0)
                with contextlib.suppress(ConnectionGone):
                    await self._send_error(err, None)
                await self.io.close(err.ws_close or 1000, "connection lifetime limit reached")
        finally:
            reader.cancel()
            await self._cancel_tasks()
            self.session.close()
            self.closed.set()

    async def shutdown(self, code: int, reason: str) -> None:
        """Cancel every request of this connection and close it (graceful stop, after its grace time)."""
        await self._cancel_tasks()
        await self.io.close(code, reason)

    # ------------------------------------------------------------------------------------------ frames

    async def _read_loop(self) -> None:
        while (frame := await self.io.recv()) is not None:
            self._on_frame(frame)

    def _on_frame(self, frame: str | bytes) -> None:
        if isinstance(frame, bytes):
            self._spawn(self._error_in_lane(InvalidRequestError(
                "Binary frames are not supported: send each event as one JSON text frame.", None,
                code="invalid_frame_type"), None))
            return
        if self.draining:
            refused = errors.ServiceUnavailableError("The server is shutting down; open a new connection.")
            self._spawn(self._error_in_lane(refused, _valid_sid(_peek(frame).get("stream_id"))))
            return
        try:
            parsed = self.service.parse(frame)
        except TurnbenchError as exc:
            obj = _peek(frame)
            kind = obj.get("type")
            err = self._unknown_type(kind) if isinstance(kind, str) and kind != "response.create" else exc
            self._spawn(self._error_in_lane(err, _valid_sid(obj.get("stream_id"))))
            return
        kind = parsed.request.type
        if kind != "response.create":
            self._spawn(self._error_in_lane(self._unknown_type(kind), _valid_sid(parsed.request.stream_id)))
            return
        self._spawn(self._respond(parsed))

    @staticmethod
    def _unknown_type(kind: str | None) -> InvalidRequestError:
        if kind is None:
            return InvalidRequestError("Missing required parameter: 'type' ('response.create').", "type")
        return InvalidRequestError(f"Unsupported event type {kind!r}: this server accepts 'response.create'.",
                                   "type", code="unknown_event_type")

    # ------------------------------------------------------------------------------------------ requests

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(self._guard(coro))
        self.tasks.add(task)
        self.idle.clear()
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not self.tasks:
            self.idle.set()

    @staticmethod
    async def _guard(coro: Coroutine[Any, Any, None]) -> None:
        try:
            await coro
        except ConnectionGone:
            pass  # the reader sees the close too and cleans up
        except Exception:
            log.exception("websocket request task failed")

    async def _error_in_lane(self, err: TurnbenchError, stream_id: str | None) -> None:
        """An error frame, sent after the requests queued before it on its lane (clients read in order)."""
        try:
            lock = self.session.lane(stream_id, self.settings.max_lanes)
        except TurnbenchError:
            lock = self.session.lane(None)
        async with lock:
            await self._send_error(err, stream_id)

    async def _respond(self, parsed: ParsedRequest) -> None:
        sid = parsed.request.stream_id
        lane = _valid_sid(sid)  # an invalid id queues on the default lane; create() then refuses it
        try:
            lock = self.session.lane(lane, self.settings.max_lanes)
        except TurnbenchError as err:  # too many named lanes
            await self._send_error(err, lane)
            return
        async with lock, self._slots:
            await self._stream(parsed, lane)

    async def _stream(self, parsed: ParsedRequest, lane: str | None) -> None:
        agen = self.service.create(parsed, self.session)
        try:
            try:
                first = await anext(agen)
            except StopAsyncIteration:
                return
            except Exception as exc:  # raised before response.created: bad input, unknown parent …
                err = as_turnbench_error(exc)
                if not isinstance(exc, TurnbenchError):
                    log.exception("response.create failed before response.created")
                await self._send_error(err, lane)
                if err.ws_close is not None:
                    await self.io.close(err.ws_close, err.message[:120])
                return
            await self.io.send_text(encode(first))
            async for event in agen:
                await self.io.send_text(encode(event))
        finally:
            await agen.aclose()  # a dropped peer closes it: the engine stops, the parent is evicted

    async def _send_error(self, err: TurnbenchError, stream_id: str | None) -> None:
        await self.io.send_text(encode(ws_error_event(err, stream_id)))

    async def _cancel_tasks(self) -> None:
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


# ---------------------------------------------------------------------------------------------- websockets


class _WebsocketsIO:
    """:class:`FrameIO` over a ``websockets`` server connection."""

    def __init__(self, ws: ServerConnection) -> None:
        self.ws = ws

    async def recv(self) -> str | bytes | None:
        try:
            return await self.ws.recv()
        except ConnectionClosed:
            return None

    async def send_text(self, data: bytes) -> None:
        try:
            await self.ws.send(data, text=True)  # UTF-8 bytes as a text frame, no decode/encode round trip
        except ConnectionClosed as exc:
            raise ConnectionGone(str(exc)) from exc

    async def close(self, code: int, reason: str) -> None:
        with contextlib.suppress(Exception):  # already closed or dropped: nothing left to do
            await self.ws.close(code, reason)


def _json_response(status: int, body: dict[str, Any]) -> Response:
    """A plain HTTP answer to an upgrade request (health check, 404, 401), JSON body."""
    payload = orjson.dumps(body)
    headers = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(payload))),
                       ("Connection", "close")])
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="turnbench"'
    return Response(status, HTTPStatus(status).phrase, headers, payload)


async def start(settings: Settings, service: ResponsesService, tls: TLSMaterial | None) -> RunningServer:
    """Serve WebSocket mode on ``settings.host:settings.port`` (0 picks a port) on the running loop.

    ``GET /healthz`` answers ``{"status":"ok","transport":"ws"}``; any other path than ``/v1/responses`` is
    404; a wrong or missing key is 401 with the Responses error body, before any upgrade.
    """
    connections: set[WsConnection] = set()

    def process_request(connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.partition("?")[0]
        if path == HEALTH_PATH:
            return _json_response(200, {"status": "ok", "transport": "ws"})
        if path != PATH:
            return _json_response(404, errors.NotFoundError(
                f"Unknown path {path!r}: WebSocket mode lives at {PATH}.", None).to_body())
        denied = check_bearer(request.headers.get("Authorization"), settings.api_key)
        return _json_response(401, denied.to_body()) if denied is not None else None

    async def handler(ws: ServerConnection) -> None:
        conn = WsConnection(_WebsocketsIO(ws), service)
        connections.add(conn)
        try:
            await conn.serve()
        finally:
            connections.discard(conn)

    server: Server = await serve(
        handler, settings.host, settings.port,
        ssl=tls.server_ssl_context() if tls is not None else None,
        process_request=process_request,
        compression=None,  # deliberate: DESIGN §9, and what the official SDK negotiates
        max_size=settings.max_message_bytes,
        ping_interval=settings.ping_interval_s, ping_timeout=settings.ping_timeout_s,
        server_header="turnbench-ws",
    )
    port = next(iter(server.sockets)).getsockname()[1]

    async def stop() -> None:
        server.close(close_connections=False)  # stop accepting; open connections keep serving
        for conn in connections:
            conn.draining = True
        waits = [asyncio.create_task(c.idle.wait()) for c in connections]
        if waits:
            await asyncio.wait(waits, timeout=settings.grace_s)
        for w in waits:
            w.cancel()
        await asyncio.gather(*(c.shutdown(1001, "server shutting down") for c in list(connections)))
        await server.wait_closed()

    url = WS.url(settings.host, port, tls is not None)
    return RunningServer("ws", settings.host, port, url, service, tls, stop,
                         extra={"connections": connections, "server": server, "compression": None})


# ---------------------------------------------------------------------------------------------- starlette


class _StarletteIO:
    """:class:`FrameIO` over a Starlette ``WebSocket`` (uvicorn enforces its own ``ws_max_size`` too)."""

    def __init__(self, ws: WebSocket, max_bytes: int) -> None:
        self.ws = ws
        self.max_bytes = max_bytes

    async def recv(self) -> str | bytes | None:
        try:
            message = await self.ws.receive()
        except (WebSocketDisconnect, RuntimeError, OSError):
            return None
        if message["type"] != "websocket.receive":
            return None
        frame: str | bytes | None = message.get("text")
        if frame is None:
            frame = message.get("bytes")
        # a str of n characters is at most 4n UTF-8 bytes: encode only when that could pass the limit
        if frame is not None and 4 * len(frame) > self.max_bytes and len(
                frame.encode() if isinstance(frame, str) else frame) > self.max_bytes:
            await self.close(1009, f"message exceeds the {self.max_bytes}-byte limit")
            return None
        return frame

    async def send_text(self, data: bytes) -> None:
        try:
            await self.ws.send_text(data.decode())
        except (WebSocketDisconnect, RuntimeError, OSError) as exc:
            raise ConnectionGone(str(exc)) from exc

    async def close(self, code: int, reason: str) -> None:
        if self.ws.application_state == WebSocketState.CONNECTED:
            with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
                await self.ws.close(code, reason)


async def handle_starlette_websocket(
    websocket: WebSocket, service: ResponsesService, settings: Settings
) -> None:
    """WebSocket mode on a Starlette route (the HTTPS server's ``/v1/responses``): same protocol, same limits.

    A wrong or missing key is denied before the upgrade: HTTP 401 with the error body where the ASGI server
    supports denial responses, else a close 1008.
    """
    denied = check_bearer(websocket.headers.get("authorization"), settings.api_key)
    if denied is not None:
        if "websocket.http.response" in websocket.scope.get("extensions", {}):
            await websocket.send_denial_response(JSONResponse(
                denied.to_body(), status_code=401, headers={"WWW-Authenticate": 'Bearer realm="turnbench"'}))
        else:
            await websocket.close(1008, "invalid_api_key")
        return
    await websocket.accept()
    io = _StarletteIO(websocket, settings.max_message_bytes)
    await WsConnection(io, service).serve()
    await io.close(1000, "")
