"""A minimal HTTP/1.1 client on asyncio streams: the floor that the httpx client is measured against.

Same requests, the same reply reading (:mod:`clients.http_reply`) and the same record as
:class:`clients.https_client.HttpsClient` (``transport = "https-raw"``); the request head is written by hand
and the response is read with Content-Length or chunked framing. It keeps a small pool of idle keep-alive
connections, so concurrent ``create`` calls each get their own connection. It speaks only what our servers
(and the OpenAI API) answer: no redirects, no compression, no proxies, no cookies.

Options: ``new_connection`` (bool): a new TCP(+TLS) connection per request, closed after it;
``timeout_s`` (float, default 600): the whole request, s.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson

from clients.base import ClientConfig, ResponsesClient
from clients.http_reply import SSEDecoder, record_error_reply, record_json_reply, record_sse
from clients.record import TurnRecorder

__all__ = ["RawHttpClient"]


@dataclass(slots=True)
class _Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    connect_ms: float


@dataclass(slots=True)
class _Head:
    status: int
    nbytes: int
    content_length: int | None
    chunked: bool
    close: bool
    event_stream: bool


class _StaleConnection(Exception):
    """A reused keep-alive connection was closed by the server before any response byte."""


class RawHttpClient(ResponsesClient):
    """Hand-written HTTP/1.1 over ``asyncio.open_connection`` (TLS via ``config.ssl_context``)."""

    transport = "https-raw"

    def __init__(self, config: ClientConfig) -> None:
        super().__init__(config)
        u = urlsplit(config.url)
        self.tls: ssl.SSLContext | None = config.ssl_context if u.scheme == "https" else None
        self.host = u.hostname or "127.0.0.1"
        self.port = u.port or (443 if u.scheme == "https" else 80)
        self.new_connection = bool(config.options.get("new_connection", False))
        self.timeout_s = float(config.options.get("timeout_s", 600.0))
        prefix = u.path.rstrip("/")
        host_hdr = f"[{self.host}]" if ":" in self.host else self.host
        common = f"Host: {host_hdr}:{self.port}\r\n"
        if config.api_key:
            common += f"Authorization: Bearer {config.api_key}\r\n"
        if self.new_connection:
            common += "Connection: close\r\n"
        self._post_head = (
            f"POST {prefix}/responses HTTP/1.1\r\n{common}Content-Type: application/json\r\n"
            "Accept: text/event-stream\r\nContent-Length: "
        ).encode()
        health = prefix.removesuffix("/v1") + "/healthz"
        self._get_health = f"GET {health} HTTP/1.1\r\n{common}\r\n".encode()
        self._idle: list[_Conn] = []

    async def _open(self) -> _Conn:
        t0 = time.perf_counter_ns()
        reader, writer = await asyncio.open_connection(
            self.host, self.port, ssl=self.tls, server_hostname=self.host if self.tls else None
        )
        return _Conn(reader, writer, (time.perf_counter_ns() - t0) / 1e6)

    async def connect(self) -> float | None:
        """Open one keep-alive connection and warm it with ``GET /healthz``. Returns: TCP+TLS time, ms."""
        conn = await self._open()
        self._idle.append(conn)
        await self.ping()
        return conn.connect_ms

    async def ping(self) -> int:
        """``GET /healthz``. Returns: the HTTP status (benchmark floor: no pipeline work)."""
        status, _ = await self._exchange(self._get_health, None)
        return status

    async def _exchange(self, request: bytes, recorder: TurnRecorder | None) -> tuple[int, dict[str, Any]]:
        """Write ``request`` and read one response, retrying once on a stale keep-alive connection."""
        for attempt in (0, 1):
            reused = bool(self._idle) and attempt == 0
            conn = self._idle.pop() if reused else await self._open()
            if not reused and recorder is not None and self.new_connection:
                recorder.connect_ms = conn.connect_ms
            try:
                status, result, keep = await self._roundtrip(conn, request, recorder, reused)
            except _StaleConnection:
                await _close(conn)
                continue
            except BaseException:
                await _close(conn)
                raise
            if keep and not self.new_connection:
                self._idle.append(conn)
            else:
                await _close(conn)
            return status, result
        raise ConnectionError("server closed two connections without answering")

    async def _roundtrip(
        self, conn: _Conn, request: bytes, recorder: TurnRecorder | None, reused: bool
    ) -> tuple[int, dict[str, Any], bool]:
        reader = conn.reader
        conn.writer.write(request)
        try:
            raw = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if reused and not exc.partial:
                raise _StaleConnection from exc
            raise
        head = _parse_head(raw)
        if recorder is None:  # ping: read and drop the body
            await _read_body(reader, head)
            return head.status, {}, not head.close
        recorder.add_bytes(down=head.nbytes)
        if head.status != 200:
            return (
                head.status,
                record_error_reply(head.status, await _read_body(reader, head), recorder),
                not head.close,
            )
        if not head.event_stream:
            return 200, record_json_reply(await _read_body(reader, head), recorder), not head.close
        decoder, result, clock = SSEDecoder(), None, recorder.clock
        if not head.chunked:  # an event stream that ends with the connection
            while chunk := await reader.read(65536):
                t = clock()
                if result is None:
                    result = record_sse(decoder.feed(chunk), recorder, t)
            return 200, result or {}, False
        while True:
            line = await reader.readuntil(b"\r\n")
            size = int(line.split(b";", 1)[0], 16)
            if size == 0:
                await _skip_trailers(reader)
                recorder.add_bytes(down=len(line) + 2)
                break
            chunk = await reader.readexactly(size + 2)
            t = clock()
            recorder.add_bytes(down=len(line) + 2)
            if result is None:
                result = record_sse(decoder.feed(chunk[:-2]), recorder, t)
        return 200, result or {}, not head.close

    async def create(self, body: dict[str, Any], *, recorder: TurnRecorder) -> dict[str, Any]:
        """Always streams (``stream: true`` is added when missing), as every turnbench transport does."""
        if body.get("stream") is not True:
            body = {**body, "stream": True}
        return await self.create_raw(orjson.dumps(body), recorder=recorder)

    async def create_raw(self, payload: bytes, *, recorder: TurnRecorder) -> dict[str, Any]:
        """POST ``payload`` as is; stream SSE (or read the JSON reply) into ``recorder``. Never raises."""
        request = self._post_head + b"%d\r\n\r\n" % len(payload) + payload
        recorder.sent(len(request))
        try:
            async with asyncio.timeout(self.timeout_s):
                _, result = await self._exchange(request, recorder)
            return result
        except TimeoutError:
            recorder.fail(f"no complete response within {self.timeout_s:g} s", "connection_error")
        except (OSError, EOFError, ValueError, asyncio.LimitOverrunError) as exc:
            recorder.fail(f"{type(exc).__name__}: {exc}", "connection_error")
        return {}

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            await _close(conn)


def _parse_head(raw: bytes) -> _Head:
    """Status line and the headers this client acts on (names are case-insensitive)."""
    lines = raw.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length: int | None = None
    chunked = close = stream = False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = value.endswith(b"chunked")
        elif name == b"connection":
            close = b"close" in value
        elif name == b"content-type":
            stream = value.startswith(b"text/event-stream")
    return _Head(status, len(raw), length, chunked, close, stream)


async def _read_body(reader: asyncio.StreamReader, head: _Head) -> bytes:
    if head.chunked:
        parts: list[bytes] = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
            if size == 0:
                await _skip_trailers(reader)
                return b"".join(parts)
            parts.append((await reader.readexactly(size + 2))[:-2])
    if head.content_length is not None:
        return await reader.readexactly(head.content_length)
    return await reader.read()  # until the server closes


async def _skip_trailers(reader: asyncio.StreamReader) -> None:
    while await reader.readuntil(b"\r\n") != b"\r\n":
        pass


async def _close(conn: _Conn) -> None:
    conn.writer.close()
    try:
        await conn.writer.wait_closed()
    except (OSError, ssl.SSLError):
        pass  # already reset by the peer: closed either way
