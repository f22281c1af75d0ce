"""WebSocket mode (spec §a): ``GET /v1/responses`` upgraded, one JSON object per text frame, both ways.

The adapter is I/O only: each frame becomes a :class:`~turnbench.connection.Submission`
(``service.parse_client_event``), the core's :class:`~turnbench.connection.Connection` does the rest (lanes, the
in-flight limit, the request timeout, the lifetime limit, error order, drain), and how a connection ended
becomes a close code (:data:`CLOSE`). A frame over ``max_message_bytes`` is closed 1009 with a reason by the
WebSocket library itself, before it reaches the connection.

Two I/O flavours share :func:`serve_websocket` through :class:`FrameIO`: the standalone ``websockets`` server
(:func:`start`, the benchmark default) and :func:`handle_starlette_websocket`, which the HTTPS server mounts
on its own ``/v1/responses`` so an SDK user changes only the call. Per-message compression is off on purpose:
+25% latency on small frames (docs/design.md), and the official SDK turns it off too.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator
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
from turnbench.auth import check_api_key
from turnbench.connection import Connection, ConnectionGone, ConnectionSet, Ending, Submission
from turnbench.errors import InvalidRequestError, TurnbenchError, as_turnbench_error
from turnbench.prepared import Append
from turnbench.schema import encode
from turnbench.service import ResponsesService
from turnbench.settings import Settings
from turnbench.tls import TLSMaterial
from turnbench.transports import WS

__all__ = ["CLOSE", "PATH", "FrameIO", "handle_starlette_websocket", "serve_websocket", "start"]

log = logging.getLogger("turnbench.ws")
PATH = "/v1/responses"
HEALTH_PATH = "/healthz"

CLOSE: dict[str, tuple[int, str]] = {
    "peer_closed": (1000, ""),
    "lifetime": (1000, "connection lifetime limit reached"),
    "shutdown": (1001, "server shutting down"),
    "error": (1011, "server error"),
}
"""How a connection ended → (close code, reason): this adapter's one mapping table. An ``error`` ending uses
the error's own ``ws_close`` when it has one."""


class FrameIO(Protocol):
    """One WebSocket as :func:`serve_websocket` needs it, whatever library carries it.

    ``recv``: the next message, ``str`` (text frame) or ``bytes`` (binary frame), ``None`` once closed.
    ``send_text``: UTF-8 JSON as one text frame; raises :class:`ConnectionGone` if the peer is gone.
    ``close``: close with a code and reason; never raises.
    ``send_survives_cancel``: a ``send_text`` cancelled while it waits wrote its frame whole or not at all.
    """

    send_survives_cancel: bool

    async def recv(self) -> str | bytes | None: ...
    async def send_text(self, data: bytes) -> None: ...
    async def close(self, code: int, reason: str) -> None: ...


def submission(frame: str | bytes, service: ResponsesService) -> Submission:
    """One frame as the connection takes it: a parsed ``response.create``, or the error it earned."""
    if isinstance(frame, bytes):
        return Submission.refused(
            InvalidRequestError(
                "Binary frames are not supported: send each event as one JSON text frame.",
                None,
                code="invalid_frame_type",
            ),
            encode,
        )
    try:
        parsed = service.parse_client_event(frame)
        if isinstance(parsed, dict):
            return Submission.steering(parsed, encode)
        if isinstance(parsed, Append):
            return Submission.appending(parsed, encode)
        return Submission.of(parsed, encode)
    except TurnbenchError as err:
        return Submission.refused(err, encode)
    except Exception as exc:  # a bug in decoding: refused as a server_error (logged), the connection goes on
        unexpected = as_turnbench_error(exc)
        log.error("frame refused by an unexpected error (%s)", unexpected.error_id, exc_info=exc)
        return Submission.refused(unexpected, encode)


async def _frames(io: FrameIO, service: ResponsesService) -> AsyncIterator[Submission]:
    while (frame := await io.recv()) is not None:
        yield submission(frame, service)


async def serve_websocket(io: FrameIO, service: ResponsesService, connections: ConnectionSet) -> Ending:
    """Serve one upgraded WebSocket until it ends, then close it with the code :data:`CLOSE` maps to."""
    conn = Connection(service, "ws", io.send_text, send_survives_cancel=io.send_survives_cancel)
    ending = await connections.serve(conn, _frames(io, service))
    code, reason = CLOSE[ending.reason]
    if ending.reason == "error" and ending.error is not None:
        code, reason = ending.error.ws_close or code, ending.error.message[:120]
    await io.close(code, reason)
    return ending


# ---------------------------------------------------------------------------------------------- websockets


class _WebsocketsIO:
    """:class:`FrameIO` over a ``websockets`` server connection."""

    # websockets writes a frame to the transport at once and then awaits only the drain
    send_survives_cancel = True

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
    headers = Headers(
        [("Content-Type", "application/json"), ("Content-Length", str(len(payload))), ("Connection", "close")]
    )
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="turnbench"'
    return Response(status, HTTPStatus(status).phrase, headers, payload)


async def start(settings: Settings, service: ResponsesService, tls: TLSMaterial | None) -> RunningServer:
    """Serve WebSocket mode on ``settings.host:settings.port`` (0 picks a port) on the running loop.

    ``GET /healthz`` answers ``{"status":"ok","transport":"ws","pid":N}`` (N: which ``--workers`` worker); any
    other path than ``/v1/responses`` is 404; a wrong or missing key is 401 with the Responses error body,
    before any upgrade.
    """
    connections = ConnectionSet()

    def process_request(connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.partition("?")[0]
        if path == HEALTH_PATH:
            return _json_response(200, {"status": "ok", "transport": "ws", "pid": os.getpid()})
        if path != PATH:
            return _json_response(
                404, errors.NotFoundError(f"Unknown path {path!r}: WebSocket mode lives at {PATH}.", None).to_body()
            )
        try:
            check_api_key(request.headers.get("Authorization"), settings.api_key)
        except errors.AuthenticationError as denied:
            return _json_response(401, denied.to_body())
        return None

    async def handler(ws: ServerConnection) -> None:
        await serve_websocket(_WebsocketsIO(ws), service, connections)

    server: Server = await serve(
        handler,
        settings.host,
        settings.port,
        ssl=tls.server_ssl_context() if tls is not None else None,
        process_request=process_request,
        compression=None,  # deliberate (docs/design.md), and what the official SDK negotiates
        max_size=settings.max_message_bytes,
        ping_interval=settings.ping_interval_s,
        ping_timeout=settings.ping_timeout_s,
        server_header="turnbench-ws",
        reuse_port=settings.reuse_port,
    )
    port = next(iter(server.sockets)).getsockname()[1]

    async def stop() -> None:
        server.close(close_connections=False)  # stop accepting; open connections drain
        await connections.drain()
        await server.wait_closed()

    return RunningServer(
        "ws",
        settings.host,
        port,
        WS.url(settings.host, port, tls is not None),
        service,
        tls,
        stop,
        extra={"connections": connections, "server": server, "compression": None},
    )


# ---------------------------------------------------------------------------------------------- starlette


class _StarletteIO:
    """:class:`FrameIO` over a Starlette ``WebSocket`` (uvicorn enforces its own ``ws_max_size`` too)."""

    send_survives_cancel = False  # uvicorn's protocols are not checked for it: the writer task sends

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
        if (
            frame is not None
            and 4 * len(frame) > self.max_bytes
            and len(frame.encode() if isinstance(frame, str) else frame) > self.max_bytes
        ):
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
    websocket: WebSocket, service: ResponsesService, connections: ConnectionSet
) -> None:
    """WebSocket mode on a Starlette route (the HTTPS server's ``/v1/responses``): same protocol, same limits.

    A wrong or missing key is denied before the upgrade: HTTP 401 with the error body where the ASGI server
    supports denial responses, else a close 1008.
    """
    try:
        check_api_key(websocket.headers.get("authorization"), service.settings.api_key)
    except errors.AuthenticationError as denied:
        if "websocket.http.response" in websocket.scope.get("extensions", {}):
            await websocket.send_denial_response(
                JSONResponse(
                    denied.to_body(), status_code=401, headers={"WWW-Authenticate": 'Bearer realm="turnbench"'}
                )
            )
        else:
            await websocket.close(1008, "invalid_api_key")
        return
    await websocket.accept()
    await serve_websocket(_StarletteIO(websocket, service.settings.max_message_bytes), service, connections)
