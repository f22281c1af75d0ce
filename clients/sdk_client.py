"""The official ``openai`` SDK as turnbench clients: what an SDK user pays, unchanged but for a base URL.

- :class:`SdkHttpsClient` (``sdk-https``): ``client.responses.create(**body, stream=True)`` on
  ``openai.AsyncOpenAI`` (openai ≥ 3 carries ``httpx2``, not ``httpx``).
- :class:`SdkWsClient` (``sdk-ws``): ``client.responses.connect()``, WebSocket mode as an SDK user writes it.

Both take the SDK's typed events as an SDK user gets them; a non-terminal event is timed and counted by
its type, a terminal or error event goes to :meth:`~clients.record.TurnRecorder.interpret` as its JSON
object, so the outcome is read exactly as for every other client.
"""

from __future__ import annotations

import inspect
import time
from typing import Any

import openai
import orjson
from openai.resources.responses import AsyncResponses
from openai.resources.responses.responses import AsyncResponsesResponseResource
from websockets.exceptions import ConnectionClosed

from clients.base import ClientConfig, ResponsesClient
from clients.record import TurnRecorder
from clients.ws_client import closed_failure, frame_overhead
from turnbench.errors import ConnectionLimitError
from turnbench.schema import TERMINAL_TYPES

__all__ = ["SdkHttpsClient", "SdkWsClient"]


def _create_params() -> frozenset[str]:
    """Keyword parameters ``responses.create`` takes by name; anything else travels in ``extra_body``."""
    params = inspect.signature(AsyncResponses.create).parameters
    return frozenset(params) - {"self", "extra_headers", "extra_query", "extra_body", "timeout", "stream"}


class SdkHttpsClient(ResponsesClient):
    """``openai.AsyncOpenAI`` pointed at ``config.url``; TLS trusts ``config.ssl_context``; no retries.

    The SDK exposes no per-event byte counts: ``bytes_down`` is the body size its HTTP client downloaded
    and ``bytes_up`` the request it built (body and headers), both added when the stream ends.

    Options: ``timeout_s`` (float, default 600): the SDK's request timeout, s.
    """

    transport = "sdk-https"
    _params: frozenset[str] | None = None

    def __init__(self, config: ClientConfig) -> None:
        super().__init__(config)
        self.timeout_s = float(config.options.get("timeout_s", 600.0))
        self._client: openai.AsyncOpenAI | None = None

    def _make(self) -> openai.AsyncOpenAI:
        verify: Any = self.config.ssl_context if self.config.ssl_context is not None else True
        return openai.AsyncOpenAI(
            api_key=self.config.api_key or "sk-turnbench",
            base_url=self.config.url,
            max_retries=0,
            timeout=self.timeout_s,
            http_client=openai.DefaultAsyncHttpxClient(verify=verify),
        )

    async def connect(self) -> float | None:
        """Creates the SDK client; its HTTP pool connects lazily on the first request. Returns: None."""
        if self._client is None:
            self._client = self._make()
        return None

    async def create(self, body: dict[str, Any], *, recorder: TurnRecorder) -> dict[str, Any]:
        """``responses.create(**body, stream=True)``; events into ``recorder``. Never raises."""
        if self._client is None:
            self._client = self._make()
        if SdkHttpsClient._params is None:
            SdkHttpsClient._params = _create_params()
        known = SdkHttpsClient._params
        kwargs = {k: v for k, v in body.items() if k in known}
        extra = {k: v for k, v in body.items() if k not in known and k != "stream"}
        result: dict[str, Any] = {}
        recorder.sent(0)  # the SDK builds the request; its size is added from the request it sent
        try:
            stream = await self._client.responses.create(**kwargs, extra_body=extra or None, stream=True)
            async with stream:
                async for event in stream:
                    if event.type not in TERMINAL_TYPES:
                        recorder.on_event(event.type)
                    elif (outcome := recorder.interpret(event.model_dump(mode="json"))) is not None:
                        result = outcome
                    # read on after the terminal event: the stream's byte count is taken once it has ended
                request = stream.response.request
                recorder.add_bytes(
                    up=len(request.content) + sum(len(k) + len(v) + 4 for k, v in request.headers.raw) + 2,
                    down=stream.response.num_bytes_downloaded,
                )
        except openai.APIStatusError as exc:
            err = exc.body.get("error", exc.body) if isinstance(exc.body, dict) else {}
            code = err.get("code") if isinstance(err, dict) else None
            message = err.get("message") if isinstance(err, dict) else None
            recorder.fail(str(message or exc.message), str(code or f"http_{exc.status_code}"))
        except (openai.APIConnectionError, openai.APIResponseValidationError) as exc:
            recorder.fail(f"{type(exc).__name__}: {exc}", "connection_error")
        return result

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()


def _ws_create_params() -> frozenset[str]:
    """Keyword parameters the SDK's WebSocket ``conn.response.create`` takes (``stream_id``, ``generate`` …)."""
    return frozenset(inspect.signature(AsyncResponsesResponseResource.create).parameters) - {"self"}


class SdkWsClient(ResponsesClient):
    """``openai.AsyncOpenAI(..., websocket_base_url=config.url).responses.connect()``: WebSocket mode as an
    SDK user writes it, one connection per client. TLS trusts ``config.ssl_context`` (passed to
    ``websockets`` through ``websocket_connection_options``); the SDK's auto-reconnect stays off.

    Each ``create`` is ``conn.response.create(**body)`` (a body key the SDK does not know goes out through
    ``conn.send``), then ``recv_bytes`` + ``parse_event`` per frame, as ``conn.recv()`` does. ``bytes_up``
    is the compact JSON of the event (the SDK's own encoding is a few bytes longer), ``bytes_down`` each
    frame and its header; failures are recorded with the same codes as the ``ws`` client.
    """

    transport = "sdk-ws"
    _params: frozenset[str] | None = None

    def __init__(self, config: ClientConfig) -> None:
        super().__init__(config)
        self._client: openai.AsyncOpenAI | None = None
        self._conn: Any = None  # openai.resources.responses.responses.AsyncResponsesConnection
        self._limit_reached = False
        self.connect_ms: float | None = None

    def _urls(self) -> tuple[str, str]:
        """(HTTP base URL, WebSocket base URL) from ``config.url``, whichever scheme it has."""
        url = self.config.url.rstrip("/")
        swap = {"wss://": "https://", "ws://": "http://", "https://": "wss://", "http://": "ws://"}
        for prefix, other in swap.items():
            if url.startswith(prefix):
                pair = (url, other + url[len(prefix) :])
                return pair if prefix.startswith("http") else (pair[1], pair[0])
        return url, url

    async def connect(self) -> float | None:
        """Open the SDK connection (TCP + TLS + upgrade). Returns: its time in ms. Raises on refusal."""
        if self._conn is not None:
            return self.connect_ms
        if self._client is None:
            http_url, ws_url = self._urls()
            self._client = openai.AsyncOpenAI(
                api_key=self.config.api_key or "sk-turnbench",
                base_url=http_url,
                websocket_base_url=ws_url,
                max_retries=0,
            )
        options: Any = {"ssl": self.config.ssl_context} if self.config.ssl_context is not None else {}
        t0 = time.perf_counter_ns()
        self._conn = await self._client.responses.connect(websocket_connection_options=options).enter()
        self.connect_ms = (time.perf_counter_ns() - t0) / 1e6
        self._limit_reached = False
        return self.connect_ms

    async def reconnect(self) -> float | None:
        """A fresh connection (its cache is empty); the SDK client is kept, as an SDK user keeps it, so
        rebuilding it (its HTTP pool and TLS setup) is not counted as reconnect time. Returns: connect
        time in ms."""
        await self._close_conn()
        return await self.connect()

    async def _close_conn(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await conn.close()
            except Exception:  # idempotent; a dead peer has nothing left to close
                pass

    async def close(self) -> None:
        await self._close_conn()
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    async def create(self, body: dict[str, Any], *, recorder: TurnRecorder) -> dict[str, Any]:
        """One ``response.create`` over the SDK connection, events into ``recorder``. Never raises."""
        if self._conn is None and not await self.connect_for(recorder):
            return {}
        if SdkWsClient._params is None:
            SdkWsClient._params = _ws_create_params()
        conn = self._conn
        nbytes = len(orjson.dumps({"type": "response.create", **body}))
        recorder.sent(nbytes + frame_overhead(nbytes, masked=True))
        try:
            try:
                if body.keys() <= SdkWsClient._params:
                    await conn.response.create(**body)
                else:
                    await conn.send({"type": "response.create", **body})
            except ConnectionClosed:
                pass  # frames that came before the close (the limit error) are still read below
            while True:
                data = await conn.recv_bytes()
                event = conn.parse_event(data)  # the SDK user's typed event
                nbytes = len(data) + frame_overhead(len(data), masked=False)
                if event.type not in TERMINAL_TYPES:
                    recorder.on_event(event.type, nbytes)
                elif (result := recorder.interpret_json(data, nbytes)) is not None:
                    break
        except ConnectionClosed as exc:
            recorder.fail(*closed_failure(exc, self._limit_reached))
            await self._close_conn()
            return {}
        except BaseException:  # cancelled mid-turn: leftover frames would confuse the next turn
            await self._close_conn()
            raise
        if recorder.error_code == ConnectionLimitError.code:
            self._limit_reached = True  # the server closes this connection next
        return result
