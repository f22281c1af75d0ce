"""``turnbench record``: a Responses-API proxy that writes an agent's shape as a trace
(:mod:`loadtests.workload.trace`).

Point an agent app's ``base_url`` at it (``http://HOST:PORT/v1``); it forwards every request unchanged to
``--upstream`` (HTTPS+SSE ``POST /v1/responses``, WebSocket mode on ``/v1/responses``, and any other path as
is) and streams every answer back unchanged, while it writes one trace line per ``response.create``: the
input items' kinds, sizes, token counts (turnbench's tokenizer) and SHA-256s, the tool outputs new in the
request, the client's gap since the previous response of the same conversation, what the model answered
(kind, output tokens) and the TTFT and duration seen upstream. Content is kept only with ``--keep-content``.

A conversation is followed by ``previous_response_id`` where the client sends one; a full-resend client's
request joins the conversation whose last input (plus that turn's output) its input begins with; any other
request starts a conversation (a WebSocket connection may carry several, one after the other).

  turnbench record --upstream https://127.0.0.1:8443/v1 --ca /tmp/turnbench-ca.pem --listen 127.0.0.1:8800
  OPENAI_BASE_URL=http://127.0.0.1:8800/v1 python my_agent.py      # then Ctrl-C the proxy
  turnbench run --trace reports/traces/<stamp>.jsonl
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import signal
import ssl
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from turnbench.tokenizer import load_tokenizer

__all__ = ["Recorder", "build_app", "cmd_record"]

CONTENT_DELTAS = ("response.output_text.delta", "response.function_call_arguments.delta")
TERMINAL = ("response.completed", "response.failed", "response.incomplete", "error")
HOP_HEADERS = {"host", "content-length", "connection", "keep-alive", "transfer-encoding", "upgrade", "accept-encoding"}


def _item_text(item: Mapping[str, Any]) -> str:
    if isinstance(item.get("output"), str):
        return str(item["output"])
    if isinstance(item.get("arguments"), str):
        return str(item["arguments"])
    content = item.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping))
    return ""


class Recorder:
    """The trace being written: conversations followed across requests, one JSON line per turn."""

    def __init__(self, out: IO[str], *, keep_content: bool = False) -> None:
        self.out, self.keep = out, keep_content
        self.t0 = time.monotonic()
        self.tok = load_tokenizer()
        self.by_response: dict[str, str] = {}  # response id → conversation
        self.convs: dict[str, dict[str, Any]] = {}  # conversation → its last input hashes, end time, turn
        self.turns = 0

    def _item(self, item: Any) -> dict[str, Any]:
        raw = json.dumps(item, sort_keys=True, separators=(",", ":")).encode()
        d = item if isinstance(item, Mapping) else {"type": "message", "content": str(item)}
        text = _item_text(d)
        out = {
            "type": d.get("type", "message"),
            "role": d.get("role"),
            "bytes": len(raw),
            "tokens": self.tok.count(text) if text else 0,
            "sha256": hashlib.sha256(raw).hexdigest(),
        }
        if self.keep:
            out["content"] = d
        return out

    def begin(self, body: Mapping[str, Any], transport: str, connection: str | None = None) -> dict[str, Any]:
        """A request is leaving: which conversation, which items are new, the client's gap."""
        now = time.monotonic()
        raw_input = body.get("input")
        items = (
            raw_input if isinstance(raw_input, list) else [{"type": "message", "role": "user", "content": raw_input}]
        )
        described = [self._item(i) for i in items]
        hashes = [d["sha256"] for d in described]
        prev = body.get("previous_response_id")
        conv = self.by_response.get(prev) if isinstance(prev, str) else None
        new_from = 0
        if conv is None and not prev:
            best = None  # a full resend: the conversation whose last request this one extends
            for cid, c in self.convs.items():
                h = c["hashes"]
                if (
                    h
                    and len(h) < len(hashes)
                    and hashes[: len(h)] == h
                    and (best is None or len(h) > len(self.convs[best]["hashes"]))
                ):
                    best = cid
            conv = best
            if conv is not None:
                new_from = len(self.convs[conv]["hashes"])
        if conv is None:
            conv = connection if connection is not None and connection not in self.convs else f"c{len(self.convs)}"
            self.convs[conv] = {"hashes": [], "end": None, "turn": -1}
        c = self.convs[conv]
        new = described[new_from:]
        c["turn"] += 1
        c["hashes"] = hashes
        return {
            "conversation": conv,
            "turn": c["turn"],
            "transport": transport,
            "t_ms": round((now - self.t0) * 1000.0, 3),
            "gap_ms": round((now - c["end"]) * 1000.0, 3) if c["end"] is not None else None,
            "previous_response_id": prev,
            "input": described,
            "input_bytes": sum(d["bytes"] for d in described),
            "new_items": len(new),
            "tool_outputs": [d["bytes"] for d in new if d["type"] == "function_call_output"],
            "tools": len(body.get("tools") or []),
            "_t": now,
            "_first": None,
        }

    def event(self, turn: dict[str, Any], ev: Mapping[str, Any]) -> bool:
        """One event of the answer; returns True on the one that ends it (the turn is then written)."""
        etype = ev.get("type")
        if etype in CONTENT_DELTAS and turn["_first"] is None:
            turn["_first"] = time.monotonic()
        if etype not in TERMINAL:
            return False
        self.finish(turn, ev.get("response") if isinstance(ev.get("response"), Mapping) else None, etype)
        return True

    def finish(self, turn: dict[str, Any], response: Mapping[str, Any] | None, status: str | None) -> None:
        now = time.monotonic()
        response = response or {}
        output = response.get("output") or []
        kinds = [o.get("type") for o in output if isinstance(o, Mapping)]
        usage = response.get("usage") if isinstance(response.get("usage"), Mapping) else {}
        out_tokens = (usage or {}).get("output_tokens")
        if not isinstance(out_tokens, int):  # no usage: count what came back
            out_tokens = sum(self.tok.count(_item_text(o)) for o in output if isinstance(o, Mapping))
        rid = response.get("id")
        conv = turn["conversation"]
        if isinstance(rid, str):
            self.by_response[rid] = conv
        c = self.convs[conv]
        c["end"] = now
        c["hashes"] = c["hashes"] + [self._item(o)["sha256"] for o in output]  # a full resend echoes them
        record = {k: v for k, v in turn.items() if not k.startswith("_")}
        record.update(
            response_id=rid,
            status=response.get("status") or status,
            output_kind="function_call" if "function_call" in kinds else ("message" if kinds else None),
            output_items=len(output),
            output_tokens=out_tokens,
            ttft_ms=round((turn["_first"] - turn["_t"]) * 1000.0, 3) if turn["_first"] else None,
            duration_ms=round((now - turn["_t"]) * 1000.0, 3),
        )
        self.out.write(json.dumps(record) + "\n")
        self.out.flush()
        self.turns += 1


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: the command's own stop the proxy and close the trace."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _sse_events(buffer: bytearray, chunk: bytes) -> list[dict[str, Any]]:
    """Complete SSE events in ``buffer`` + ``chunk`` (the rest stays in ``buffer``)."""
    buffer += chunk.replace(b"\r\n", b"\n")
    out = []
    while (end := buffer.find(b"\n\n")) >= 0:
        block, buffer[:] = bytes(buffer[:end]), buffer[end + 2 :]
        data = b"\n".join(line[5:].lstrip(b" ") for line in block.split(b"\n") if line.startswith(b"data:"))
        if data and data != b"[DONE]":
            with contextlib.suppress(ValueError):
                ev = json.loads(data)
                if isinstance(ev, dict):
                    out.append(ev)
    return out


def build_app(upstream: str, recorder: Recorder, *, verify: ssl.SSLContext | bool = True) -> Starlette:
    """The proxy app: ``upstream`` is the upstream's base URL (``https://host:port/v1``)."""
    base = upstream.rstrip("/")
    root = base.removesuffix("/v1")
    ws_base = root.replace("https://", "wss://", 1).replace("http://", "ws://", 1) + "/v1"
    client = httpx.AsyncClient(verify=verify, timeout=httpx.Timeout(600.0, connect=10.0))

    def headers(request: Request | WebSocket) -> dict[str, str]:
        return {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}

    async def responses(request: Request) -> Response:
        body_bytes = await request.body()
        try:
            body = json.loads(body_bytes)
        except ValueError:
            body = None
        turn = recorder.begin(body, "https") if isinstance(body, dict) else None
        req = client.build_request("POST", f"{base}/responses", content=body_bytes, headers=headers(request))
        up = await client.send(req, stream=True)
        kind = up.headers.get("content-type", "")
        out_headers = {k: v for k, v in up.headers.items() if k.lower() not in HOP_HEADERS | {"content-encoding"}}
        if turn is None or "text/event-stream" not in kind:
            data = await up.aread()
            await up.aclose()
            if turn is not None:
                with contextlib.suppress(ValueError):
                    resp = json.loads(data)
                    recorder.finish(turn, resp if isinstance(resp, dict) else None, str(up.status_code))
            return Response(data, status_code=up.status_code, headers=out_headers)

        async def stream() -> AsyncIterator[bytes]:
            buffer = bytearray()
            done = False
            try:
                async for chunk in up.aiter_raw():
                    for ev in _sse_events(buffer, chunk):
                        done = recorder.event(turn, ev) or done
                    yield chunk
            finally:
                await up.aclose()
                if not done:
                    recorder.finish(turn, None, "interrupted")

        return StreamingResponse(stream(), status_code=up.status_code, headers=out_headers)

    async def passthrough(request: Request) -> Response:
        url = f"{root}{request.url.path}" + (f"?{request.url.query}" if request.url.query else "")
        up = await client.request(request.method, url, content=await request.body(), headers=headers(request))
        out_headers = {k: v for k, v in up.headers.items() if k.lower() not in HOP_HEADERS | {"content-encoding"}}
        return Response(up.content, status_code=up.status_code, headers=out_headers)

    async def websocket(ws: WebSocket) -> None:
        hdrs = {k: v for k, v in headers(ws).items() if k.lower().startswith(("authorization", "openai-"))}
        ctx = verify if isinstance(verify, ssl.SSLContext) else None
        try:
            upstream_ws = await ws_connect(
                f"{ws_base}/responses", additional_headers=hdrs, ssl=ctx if ws_base.startswith("wss") else None,
                compression=None, max_size=None,
            )  # fmt: skip
        except Exception as exc:
            await ws.close(code=1011, reason=f"upstream: {exc}"[:120])
            return
        await ws.accept()
        connection = f"ws{id(ws):x}"
        pending: list[dict[str, Any]] = []  # turns in flight on this connection, in order

        async def client_to_upstream() -> None:
            while True:
                msg = await ws.receive()
                if msg["type"] == "websocket.disconnect":
                    await upstream_ws.close()
                    return
                text: str = msg["text"] if msg.get("text") is not None else (msg.get("bytes") or b"").decode()
                with contextlib.suppress(ValueError):
                    body = json.loads(text)
                    if isinstance(body, dict) and body.get("type") == "response.create":
                        pending.append(recorder.begin(body, "ws", connection))
                await upstream_ws.send(text)

        async def upstream_to_client() -> None:
            async for frame in upstream_ws:
                text = frame if isinstance(frame, str) else frame.decode()
                with contextlib.suppress(ValueError):
                    ev = json.loads(text)
                    if isinstance(ev, dict) and pending and recorder.event(pending[0], ev):
                        pending.pop(0)
                await ws.send_text(text)

        tasks = [asyncio.create_task(client_to_upstream()), asyncio.create_task(upstream_to_client())]
        with contextlib.suppress(WebSocketDisconnect, ConnectionClosed, RuntimeError):
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await upstream_ws.close()
        with contextlib.suppress(Exception):  # the agent may have closed it first (WebSocketDisconnect)
            await ws.close()

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        yield
        await client.aclose()

    app = Starlette(
        routes=[
            Route("/v1/responses", responses, methods=["POST"]),
            WebSocketRoute("/v1/responses", websocket),
            Route("/{path:path}", passthrough, methods=["GET", "POST", "DELETE", "PUT", "PATCH"]),
        ],
        lifespan=lifespan,
    )
    return app


async def _record(args: argparse.Namespace) -> int:
    host, _, port = args.listen.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--listen {args.listen!r}: expected HOST:PORT")
    path = args.trace or Path("reports") / "traces" / f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=args.ca) if args.ca else True
    with path.open("a", encoding="utf-8") as out:
        recorder = Recorder(out, keep_content=args.keep_content)
        config = uvicorn.Config(
            build_app(args.upstream, recorder, verify=verify), host=host, port=int(port), log_level="warning",
            lifespan="on", ws="websockets-sansio", ws_per_message_deflate=False,
        )  # fmt: skip
        server = _Server(config)
        task = asyncio.create_task(server.serve())
        for _ in range(1000):
            if server.started or task.done():
                break
            await asyncio.sleep(0.01)
        if not server.started:
            await task
            return 1
        bound = server.servers[0].sockets[0].getsockname()[1]
        print(
            f"recording to {path}: point the agent at http://{host}:{bound}/v1 (upstream {args.upstream})", flush=True
        )
        print(f"PORT={bound}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        server.should_exit = True
        await task
        print(f"{recorder.turns} turns in {len(recorder.convs)} conversations written to {path}", flush=True)
    return 0


def cmd_record(args: argparse.Namespace) -> int:
    return asyncio.run(_record(args))
