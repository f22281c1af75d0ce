"""How the conformance cases talk to an endpoint: plain HTTP requests, an SSE stream read event by event, and a
WebSocket-mode connection. Written against the public API only (``httpx`` and ``websockets``, no turnbench
client), so any Responses server can be checked: what comes back is kept raw, for the cases to judge.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from dataclasses import dataclass, field
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

__all__ = ["TERMINAL", "HttpReply", "Target", "WsSession", "WsUnavailable", "http_client"]

TERMINAL = frozenset({"response.completed", "response.failed", "response.incomplete", "error"})
"""The event types that end one response (or refuse its request)."""


@dataclass(frozen=True)
class Target:
    """One endpoint under test: ``transport`` (``https`` or ``ws``), its base URL (``…/v1``), TLS trust, key."""

    transport: str
    url: str
    ssl_context: ssl.SSLContext | None = None
    api_key: str | None = None
    model: str = "gpt-4o-mini"
    timeout_s: float = 30.0

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


@dataclass
class HttpReply:
    """A reply as it came: its status, content type, text, the JSON it parsed to (None if it did not), and for
    a stream its events in order (each a parsed ``data:`` payload; a payload that is not JSON is kept as
    ``{"_unparsed": text}``)."""

    status: int
    content_type: str
    text: str = ""
    body: Any = None
    events: list[Any] = field(default_factory=list)

    @property
    def error(self) -> dict[str, Any]:
        """The ``error`` object of an error reply ({} when there is none)."""
        err = self.body.get("error") if isinstance(self.body, dict) else None
        return dict(err) if isinstance(err, dict) else {}

    def describe(self) -> str:
        return f"HTTP {self.status} {self.content_type or '(no content type)'}: {self.text[:200]!r}"


def http_client(target: Target) -> httpx.AsyncClient:
    verify: ssl.SSLContext | bool = target.ssl_context if target.ssl_context is not None else True
    return httpx.AsyncClient(
        base_url=target.url.rstrip("/") + "/", verify=verify, timeout=target.timeout_s, headers=target.headers()
    )


def _parsed(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


async def http_call(client: httpx.AsyncClient, method: str, path: str, body: Any = None) -> HttpReply:
    """One request; a ``"stream": true`` body's reply is read as SSE (every ``data:`` payload an event)."""
    streaming = isinstance(body, dict) and body.get("stream") is True
    async with client.stream(method, path, json=body) as r:
        ctype = r.headers.get("content-type", "").split(";")[0].strip()
        if not (streaming and ctype == "text/event-stream"):
            text = (await r.aread()).decode("utf-8", "replace")
            return HttpReply(r.status_code, ctype, text, _parsed(text))
        reply = HttpReply(r.status_code, ctype)
        data: list[str] = []
        async for line in r.aiter_lines():
            if line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
            elif line == "" and data:
                payload = "\n".join(data)
                data = []
                if payload != "[DONE]":
                    parsed = _parsed(payload)
                    reply.events.append(parsed if parsed is not None else {"_unparsed": payload})
        if data and "\n".join(data) != "[DONE]":
            parsed = _parsed("\n".join(data))
            reply.events.append(parsed if parsed is not None else {"_unparsed": "\n".join(data)})
        return reply


class WsUnavailable(Exception):
    """The endpoint refused the WebSocket handshake (no WebSocket mode there): ``status`` is its HTTP status."""

    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(message)
        self.status = status


class WsSession:
    """One WebSocket-mode connection: ``send`` a client event, ``recv`` the next server message (parsed),
    ``until_done`` the events of a lane up to and including the one that ends its response."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self._conn: ClientConnection | None = None
        self.received: list[Any] = []  # every message, in order

    async def __aenter__(self) -> WsSession:
        url = self.target.url.rstrip("/") + "/responses"
        try:
            self._conn = await asyncio.wait_for(
                connect(
                    url,
                    ssl=self.target.ssl_context if url.startswith("wss:") else None,
                    additional_headers=self.target.headers(),
                    max_size=None,
                    compression=None,
                ),
                self.target.timeout_s,
            )
        except InvalidStatus as exc:
            raise WsUnavailable(
                exc.response.status_code, f"handshake refused: HTTP {exc.response.status_code}"
            ) from exc
        except (OSError, TimeoutError) as exc:
            raise WsUnavailable(None, f"could not connect to {url}: {exc!r}") from exc
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._conn is not None:
            await self._conn.close()

    async def send(self, event: dict[str, Any]) -> None:
        assert self._conn is not None
        await self._conn.send(json.dumps(event))

    async def recv(self) -> Any:
        """The next message, parsed (``{"_unparsed": text}`` when it is not JSON); raises TimeoutError past the
        target's timeout and ``ConnectionClosed`` when the server closed."""
        assert self._conn is not None
        frame = await asyncio.wait_for(self._conn.recv(), self.target.timeout_s)
        text = frame.decode("utf-8", "replace") if isinstance(frame, bytes) else frame
        parsed = _parsed(text)
        message = parsed if parsed is not None else {"_unparsed": text}
        self.received.append(message)
        return message

    async def until_done(self, count: int = 1) -> list[Any]:
        """Messages until ``count`` responses (or refusals) have ended, on any lane."""
        out: list[Any] = []
        ended = 0
        while ended < count:
            try:
                message = await self.recv()
            except ConnectionClosed as exc:
                raise ConnectionError(f"the server closed the connection: {exc}") from exc
            out.append(message)
            if isinstance(message, dict) and message.get("type") in TERMINAL:
                ended += 1
        return out
