"""HTTPS+SSE client on httpx: ``POST /v1/responses`` with ``stream: true``, SSE parsed by hand.

Options (``ClientConfig.options``):

- ``new_connection`` (bool, default False): a new TCP(+TLS) connection per request (``Connection: close``);
  its connect time lands in the turn's ``connect_ms``.
- ``http2`` (bool, default False): HTTP/2 (httpx on ``h2``). Over TLS ALPN offers ``h2`` and ``http/1.1``
  (uvicorn answers HTTP/1.1; the server's ``http2`` setting serves h2 with hypercorn); cleartext uses h2c
  with prior knowledge (HTTP/2 only). ``http_version`` records what the last response used. The
  ``https-h2`` transport (:class:`HttpsH2Client`) is this with ``http2`` on by default.
- ``timeout_s`` (float, default 600): connect, read and write timeout, s.
- ``network_backend`` (``"asyncio"`` | ``"anyio"``, default ``"asyncio"``): httpcore's byte transport.
  ``anyio`` is httpx's stock one; ``asyncio`` (:class:`StreamsBackend`) is the same httpx, httpcore and h11
  over plain asyncio streams, without anyio's cancel scopes and extra loop passes, and with the request
  head and body written in one ``send``: about 20% less client CPU per request (see
  ``scripts/probes/https_overhead.py``). With HTTP/2 writes are flushed on the next loop pass instead (several
  requests share the connection; one must not wait for another's read).

Bytes: ``bytes_up`` is the JSON body plus the request head (approximated from the headers sent);
``bytes_down`` is the SSE text of every event plus the response head and chunked-encoding framing
(reconstructed; TLS records and TCP are not counted, on any transport). Over HTTP/2 the same, with a
9-byte frame header per DATA chunk in place of the chunk-size line and the header block counted
uncompressed (HPACK makes it smaller).

The reply is read by :mod:`clients.http_reply`, shared with the raw HTTP/1.1 client
(:mod:`clients.raw_http_client`), so both record exactly the same way; the asyncio network backend is
:mod:`clients.streams_backend`.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Mapping
from typing import Any, ClassVar

import httpx
import orjson

from clients.base import ClientConfig, ResponsesClient
from clients.http_reply import SSEDecoder, head_bytes, record_error_reply, record_json_reply, record_sse
from clients.record import TurnRecorder
from clients.streams_backend import StreamsBackend

__all__ = ["HttpsClient", "HttpsH2Client"]

log = logging.getLogger("turnbench.https.client")


NO_HEALTH_PATH = (404, 405, 501)
"""What ``GET /healthz`` answers on a Responses server that is not turnbench's: the connection is warm anyway."""


class HttpsClient(ResponsesClient):
    """httpx ``AsyncClient`` (keep-alive pool, TLS verified against ``config.ssl_context``)."""

    transport = "https"
    serves_compact = True
    default_http2: ClassVar[bool] = False

    def __init__(self, config: ClientConfig) -> None:
        super().__init__(config)
        opts = config.options
        self.new_connection = bool(opts.get("new_connection", False))
        self.http2 = bool(opts.get("http2", self.default_http2))
        self.http_version: str | None = None  # of the last response: "HTTP/1.1" or "HTTP/2"
        self.timeout_s = float(opts.get("timeout_s", 600.0))
        if self.http2:
            try:
                import h2  # noqa: F401  # httpx needs it for HTTP/2
            except ImportError as exc:
                raise ValueError("http2=True needs the 'h2' package (pip install 'httpx[http2]')") from exc
        self.network_backend = str(opts.get("network_backend", "asyncio"))
        if self.network_backend not in ("asyncio", "anyio"):
            raise ValueError(f"network_backend: expected 'asyncio' or 'anyio', got {self.network_backend!r}")
        self.base = config.url.rstrip("/")
        self.url = self.base + "/responses"
        self.compact_url = self.url + "/compact"
        self.health_url = self.base.removesuffix("/v1") + "/healthz"
        headers = {"content-type": "application/json", "accept": "text/event-stream"}
        if config.api_key:
            headers["authorization"] = f"Bearer {config.api_key}"
        if self.new_connection and not self.http2:  # HTTP/2 forbids it; the pool keeps no idle connection
            headers["connection"] = "close"
        self.headers = headers
        # request line + Host + httpx's own accept-encoding/user-agent/content-length: about 120 bytes
        self._head_up = head_bytes(headers) + len(self.url) + 120
        self._client: httpx.AsyncClient | None = None

    def _make_client(self) -> httpx.AsyncClient:
        limits = httpx.Limits(
            max_keepalive_connections=0 if self.new_connection else 100, max_connections=None, keepalive_expiry=None
        )
        ctx = self.config.ssl_context
        verify: ssl.SSLContext | bool = ctx if ctx is not None else True
        # cleartext HTTP/2 is h2c with prior knowledge: http1 off (over TLS, ALPN chooses)
        http1 = not (self.http2 and self.url.startswith("http:"))
        transport = httpx.AsyncHTTPTransport(
            verify=verify, http1=http1, http2=self.http2, limits=limits, trust_env=False
        )
        if self.network_backend == "asyncio":
            # httpx takes no backend argument; its pool is built by this transport and used by it alone
            transport._pool._network_backend = StreamsBackend(hold_writes=not self.http2)
        return httpx.AsyncClient(
            transport=transport, timeout=httpx.Timeout(self.timeout_s), headers=self.headers, trust_env=False
        )

    async def connect(self) -> float | None:
        """Open and warm one pooled connection with ``GET /healthz``. Returns: TCP+TLS time, ms. An endpoint
        that has no such path (404, 405, 501: not a turnbench server) is warmed all the same; another error
        status raises."""
        if self._client is None:
            self._client = self._make_client()
        stamps: dict[str, int] = {}

        async def trace(name: str, info: Mapping[str, Any]) -> None:
            stamps.setdefault(name, time.perf_counter_ns())

        r = await self._client.get(self.health_url, extensions={"trace": trace})
        await r.aclose()
        if r.status_code not in NO_HEALTH_PATH:
            r.raise_for_status()
        self.http_version = r.http_version
        return _connect_ms(stamps)

    async def ping(self) -> int:
        """``GET /healthz`` on the pool. Returns: the HTTP status (benchmark floor: no pipeline work)."""
        if self._client is None:
            self._client = self._make_client()
        return (await self._client.get(self.health_url)).status_code

    async def create(self, body: dict[str, Any], *, recorder: TurnRecorder) -> dict[str, Any]:
        """Always streams (``stream: true`` is added when missing), as every turnbench transport does."""
        if body.get("stream") is not True:
            body = {**body, "stream": True}
        return await self.create_raw(orjson.dumps(body), recorder=recorder)

    async def create_raw(self, payload: bytes, *, recorder: TurnRecorder) -> dict[str, Any]:
        """POST ``payload`` as is; stream SSE (or read the JSON reply) into ``recorder``. Never raises."""
        if self._client is None:
            self._client = self._make_client()
        stamps: dict[str, int] = {}
        ext: dict[str, Any] = {}
        if self.new_connection:

            async def trace(name: str, info: Mapping[str, Any]) -> None:
                stamps.setdefault(name, time.perf_counter_ns())

            ext["trace"] = trace
        recorder.sent(len(payload) + self._head_up)
        try:
            async with self._client.stream("POST", self.url, content=payload, extensions=ext) as r:
                if stamps:
                    recorder.connect_ms = _connect_ms(stamps)
                self.http_version = version = r.http_version
                h2 = version == "HTTP/2"
                # + "HTTP/1.1 200 OK\r\n", or HTTP/2's HEADERS frame header; per chunk: its size line and CRLF,
                # or a DATA frame header
                recorder.add_bytes(down=head_bytes(r.headers) + (9 if h2 else 17))
                if r.status_code != 200:
                    return record_error_reply(r.status_code, await r.aread(), recorder)
                if not r.headers.get("content-type", "").startswith("text/event-stream"):
                    return record_json_reply(await r.aread(), recorder)
                decoder, result = SSEDecoder(), None
                clock = recorder.clock
                async for chunk in r.aiter_raw():
                    t = clock()
                    recorder.add_bytes(down=9 if h2 else len(b"%x" % len(chunk)) + 4)
                    if result is None:
                        result = record_sse(decoder.feed(chunk), recorder, t)
                    # after the terminal event keep reading: the connection returns to the pool only
                    # once the body has ended
            return result if result is not None else {}
        except httpx.HTTPError as exc:
            recorder.fail(f"{type(exc).__name__}: {exc}", "connection_error")
        except OSError as exc:
            recorder.fail(f"{type(exc).__name__}: {exc}", "connection_error")
        return {}

    async def compact(self, body: dict[str, Any], *, recorder: TurnRecorder) -> dict[str, Any]:
        """``POST /v1/responses/compact`` on the same pool (its JSON reply recorded as one terminal event)."""
        if self._client is None:
            self._client = self._make_client()
        payload = orjson.dumps(body)
        recorder.sent(len(payload) + self._head_up + len("/compact"))
        try:
            r = await self._client.post(self.compact_url, content=payload, headers={"accept": "application/json"})
        except (httpx.HTTPError, OSError) as exc:
            recorder.fail(f"{type(exc).__name__}: {exc}", "connection_error")
            return {}
        self.http_version = r.http_version
        recorder.add_bytes(down=head_bytes(r.headers) + (9 if r.http_version == "HTTP/2" else 17))
        if r.status_code != 200:
            return record_error_reply(r.status_code, r.content, recorder)
        return record_json_reply(r.content, recorder)

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()


def _connect_ms(stamps: Mapping[str, int]) -> float | None:
    """TCP connect (+ TLS handshake) time from httpcore trace stamps, ms; None if no connection was made."""
    t0 = stamps.get("connection.connect_tcp.started")
    t1 = stamps.get("connection.start_tls.complete") or stamps.get("connection.connect_tcp.complete")
    return None if t0 is None or t1 is None else (t1 - t0) / 1e6


class HttpsH2Client(HttpsClient):
    """``https-h2``: :class:`HttpsClient` with ``http2`` on by default, for a server started with
    ``http2=true`` (``turnbench serve https --http2``, ``turnbench run --set http2=true``).

    Over TLS a server that answers HTTP/1.1 (uvicorn) is still served, with a warning at ``connect`` (the
    runner's every-transport checks start default servers); option ``require_http2=True`` makes that an
    error instead. Cleartext h2c needs an HTTP/2 server either way.
    """

    transport = "https-h2"
    default_http2 = True

    async def connect(self) -> float | None:
        ms = await super().connect()
        if self.http2 and self.http_version != "HTTP/2":
            message = (
                f"https-h2: the server at {self.base} answered {self.http_version}, not HTTP/2; serve "
                "it with http2=true (turnbench serve https --http2, or turnbench run --set http2=true)"
            )
            if self.config.options.get("require_http2", False):
                raise ConnectionError(message)
            log.warning(message)
        return ms
