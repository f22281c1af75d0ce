"""A small Responses server that is not turnbench, for ``--target`` tests: written from the public API's shape
alone, sharing no code with ``servers/``. It has no ``/healthz``, no ``turnbench`` extension (no stage
timings) and reports no ``usage``; it answers every request with the same three-word message, over HTTPS+SSE
(``POST /v1/responses``, Starlette on uvicorn) and WebSocket mode (``/v1/responses``, ``websockets``), and
remembers nothing (``previous_response_id`` is accepted and ignored)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route
from websockets.asyncio.server import ServerConnection, serve

WORDS = ("foreign", " server", " says hi")


def events(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The events of one answer, in the public API's order."""
    rid, mid = f"resp_{os.urandom(8).hex()}", f"msg_{os.urandom(8).hex()}"
    text = "".join(WORDS)
    base = {"id": rid, "object": "response", "model": body.get("model", "m"), "output": []}
    message = {"id": mid, "type": "message", "role": "assistant", "status": "completed"}
    out = [
        {"type": "response.created", "response": {**base, "status": "in_progress"}},
        {
            "type": "response.output_item.added",
            "output_index": 0,
            "item": {**message, "status": "in_progress", "content": []},
        },
        {
            "type": "response.content_part.added",
            "item_id": mid,
            "output_index": 0,
            "content_index": 0,
            "part": {"type": "output_text", "text": ""},
        },
    ]
    out += [
        {"type": "response.output_text.delta", "item_id": mid, "output_index": 0, "content_index": 0, "delta": w}
        for w in WORDS
    ]
    content = [{"type": "output_text", "text": text, "annotations": []}]
    out += [
        {"type": "response.output_text.done", "item_id": mid, "output_index": 0, "content_index": 0, "text": text},
        {"type": "response.output_item.done", "output_index": 0, "item": {**message, "content": content}},
        {
            "type": "response.completed",
            "response": {**base, "status": "completed", "output": [{**message, "content": content}]},
        },
    ]
    for k, ev in enumerate(out):
        ev["sequence_number"] = k
    return out


async def _sse(request: Request) -> StreamingResponse:
    body = await request.json()

    async def stream() -> AsyncIterator[bytes]:
        for ev in events(body):
            yield f"event: {ev['type']}\ndata: {json.dumps(ev)}\n\n".encode()

    return StreamingResponse(stream(), media_type="text/event-stream")


async def _ws(ws: ServerConnection) -> None:
    async for frame in ws:
        body = json.loads(frame)
        for ev in events(body):
            await ws.send(json.dumps(ev))


class Foreign:
    """Both servers on port 0 (plain TCP: the tests' point is the API, not TLS)."""

    def __init__(self) -> None:
        self.https_port = self.ws_port = 0
        self._tasks: list[asyncio.Task[Any]] = []

    async def __aenter__(self) -> Foreign:
        sock = socket.create_server(("127.0.0.1", 0))
        self.https_port = sock.getsockname()[1]
        app = Starlette(routes=[Route("/v1/responses", _sse, methods=["POST"])])
        self._uv = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self._tasks.append(asyncio.create_task(self._uv.serve(sockets=[sock])))
        self._ws = await serve(_ws, "127.0.0.1", 0, compression=None)
        self.ws_port = next(iter(self._ws.sockets)).getsockname()[1]
        for _ in range(500):
            if self._uv.started:
                break
            await asyncio.sleep(0.01)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._uv.should_exit = True
        self._ws.close()
        await self._ws.wait_closed()
        await asyncio.gather(*self._tasks, return_exceptions=True)
