"""``ws``: WebSocket mode with the ``websockets`` asyncio client, one persistent connection per rollout.

Each ``create`` sends ``{"type":"response.create", **body}`` as one text frame and hands every frame it
receives, as bytes (never via ``str``), to :meth:`~clients.record.TurnRecorder.interpret_json` until one
ends the turn (``response.completed|failed|incomplete`` or ``error``). One request at a time per client
object (the agent loop is sequential). Bytes: each frame's payload plus its WebSocket header
(:func:`frame_overhead`).

Failures never raise out of ``create``; they are recorded with a code the agent loop can act on:

============================== ==============================================================
``error`` frame                its ``error.code`` (``previous_response_not_found`` …)
close 1009                     ``payload_too_large`` (a frame over the server's message limit)
close after the limit frame    ``websocket_connection_limit_reached``
any other close or drop        ``connection_closed``
no connection could be opened  ``connection_error``
a frame that is no JSON object ``client_malformed_event`` (and the connection is closed)
============================== ==============================================================

Options (``ClientConfig.options``): ``ping_interval_s`` (default 20; None disables keep-alive pings),
``open_timeout_s`` (default 10). Compression is off, as in the official SDK (docs/design.md).
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from clients.base import ClientConfig, ResponsesClient, as_create_event
from clients.record import MALFORMED_EVENT, TurnRecorder
from turnbench.errors import ConnectionLimitError, PayloadTooLargeError

__all__ = ["WsClient", "closed_failure", "frame_overhead"]


def frame_overhead(nbytes: int, *, masked: bool) -> int:
    """WebSocket framing bytes around an ``nbytes`` payload (RFC 6455 §5.2; client frames are masked)."""
    header = 2 if nbytes < 126 else 4 if nbytes < 65536 else 10
    return header + (4 if masked else 0)


def closed_failure(exc: ConnectionClosed, limit_reached: bool) -> tuple[str, str]:
    """(message, code) of a connection that closed mid-turn: ``payload_too_large`` on close 1009,
    ``websocket_connection_limit_reached`` after the server said so on this connection (``limit_reached``),
    else ``connection_closed``."""
    if exc.rcvd is None:
        return f"connection lost: {exc}", "connection_closed"
    message = f"connection closed by the server: {exc.rcvd.code} {exc.rcvd.reason}".rstrip()
    if exc.rcvd.code == PayloadTooLargeError.ws_close:
        return message, PayloadTooLargeError.code
    return message, ConnectionLimitError.code if limit_reached else "connection_closed"


class WsClient(ResponsesClient):
    """WebSocket mode over one persistent connection to ``config.url + "/responses"``."""

    transport: ClassVar[str] = "ws"

    def __init__(self, config: ClientConfig) -> None:
        super().__init__(config)
        self._ws: ClientConnection | None = None
        self._limit_reached = False  # the server sent websocket_connection_limit_reached on this connection
        self.connect_ms: float | None = None

    @property
    def url(self) -> str:
        """``config.url + "/responses"``; an ``http(s)://`` base becomes ``ws(s)://``, as the SDK does."""
        base = self.config.url.rstrip("/")
        for http, ws in (("https://", "wss://"), ("http://", "ws://")):
            if base.startswith(http):
                base = ws + base[len(http) :]
        return base + "/responses"

    async def connect(self) -> float | None:
        """Open the connection (TCP + TLS + upgrade). Returns: its time in ms. Raises on refusal (401 …)."""
        if self._ws is not None:
            return self.connect_ms
        headers = {"Authorization": f"Bearer {self.config.api_key}"} if self.config.api_key else {}
        opts = self.config.options
        t0 = time.perf_counter_ns()
        self._ws = await connect(
            self.url,
            ssl=self.config.ssl_context,
            additional_headers=headers,
            compression=None,
            max_size=None,
            ping_interval=opts.get("ping_interval_s", 20.0),
            open_timeout=opts.get("open_timeout_s", 10.0),
        )
        self.connect_ms = (time.perf_counter_ns() - t0) / 1e6
        self._limit_reached = False
        return self.connect_ms

    async def close(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            try:
                await ws.close()
            except Exception:  # idempotent, and a dead peer has nothing left to close
                pass

    async def create(self, body: dict[str, Any], *, recorder: TurnRecorder) -> dict[str, Any]:
        """Send one ``response.create`` (``body`` laid flat beside ``type``); its events go to ``recorder``."""
        frame = orjson.dumps({"type": "response.create", **body})
        return await self._roundtrip(frame, recorder, binary=False)

    async def create_raw(
        self, payload: bytes | str, *, recorder: TurnRecorder, as_frame: bool = False, binary: bool = False
    ) -> dict[str, Any]:
        """Send ``payload`` as the body of one ``response.create`` (malformed-input tests).

        A payload that opens a JSON object gets ``"type":"response.create"`` put in front, byte for byte
        otherwise unchanged (a ``type`` inside it still wins: the last key counts), so the same raw HTTP
        bodies test every transport. ``as_frame=True`` sends the bytes exactly as one frame instead, and
        ``binary=True`` makes that a binary frame.
        """
        data = payload.encode() if isinstance(payload, str) else payload
        if not (as_frame or binary):
            data = as_create_event(data)
        return await self._roundtrip(data, recorder, binary=binary)

    async def _roundtrip(self, data: bytes, recorder: TurnRecorder, *, binary: bool) -> dict[str, Any]:
        if self._ws is None and not await self.connect_for(recorder):
            return {}
        ws = self._ws
        assert ws is not None
        recorder.sent(len(data) + frame_overhead(len(data), masked=True))
        try:
            try:
                await ws.send(data, text=not binary)
            except ConnectionClosed:
                pass  # frames that arrived before the close (the limit error) are still read below
            while True:
                frame = await ws.recv(decode=False)
                result = recorder.interpret_json(frame, len(frame) + frame_overhead(len(frame), masked=False))
                if result is not None:
                    break
        except ConnectionClosed as exc:
            recorder.fail(*closed_failure(exc, self._limit_reached))
            await self.close()
            return {}
        except BaseException:  # cancelled mid-turn: frames still in flight would confuse the next turn
            await self.close()
            raise
        if recorder.error_code == ConnectionLimitError.code:
            self._limit_reached = True  # the server closes this connection next
        elif recorder.error_code == MALFORMED_EVENT:
            await self.close()  # the stream is out of step: the next turn starts on a fresh connection
        return result
