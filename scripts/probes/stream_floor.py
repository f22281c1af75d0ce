"""What one small event costs each library on loopback, without turnbench: the floor our streaming path is
measured against.

For each library a server process (TLS on, the same certificates as turnbench's servers) streams ``--events``
messages of the size turnbench's token deltas have on that transport, awaiting each send as turnbench's
servers do, to one client in this process:

- ``asyncio``: a raw TLS stream (``StreamWriter.write`` + ``drain``), SSE-sized messages: the loopback floor;
- ``sse``: Starlette's ``StreamingResponse`` on uvicorn (h11, httptools where installed), one SSE event per
  message, read with httpx;
- ``websockets``: the ``websockets`` asyncio server, one text frame per message;
- ``grpc``: a grpc.aio unary-stream handler, one ``context.write`` per message (raw bytes, no protobuf).

Printed per library: events/s as the client saw them, and the server process's CPU per event (µs; from
``time.process_time`` around the sends, so start-up is not counted). Compare with the ``srv µs/tok`` column
of ``make stream`` at one event per token: the difference is turnbench's own share (the pipeline, the event
objects, the connection's writer).

  python scripts/stream_floor.py                 # 20,000 events per library
  python scripts/stream_floor.py --events 5000 --libs grpc,websockets
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import ssl
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from turnbench.tls import generate_tls

SIZES = {"asyncio": 237, "sse": 237, "websockets": 193, "grpc": 69}
"""Bytes per event: what one token's delta takes on that transport in turnbench (``make stream``'s table)."""
LIBS = tuple(SIZES)


def _server_ctx(cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


def _serve(lib: str, n: int, cert: str, key: str, q: Any) -> None:
    """The server process: bind port 0, report the port, stream ``n`` events to the first client, report the
    CPU the sends took."""
    import uvloop

    uvloop.run(_serve_async(lib, n, cert, key, q))


async def _serve_async(lib: str, n: int, cert: str, key: str, q: Any) -> None:
    payload = b"x" * SIZES[lib]
    done = asyncio.Event()
    cpu: list[float] = []

    def timed_start() -> None:
        cpu.append(time.process_time())

    def timed_end() -> None:
        cpu.append(time.process_time())
        done.set()

    if lib == "asyncio":

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readline()
            timed_start()
            for _ in range(n):
                writer.write(payload)
                await writer.drain()
            timed_end()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=_server_ctx(cert, key))
        q.put(server.sockets[0].getsockname()[1])
        async with server:
            await done.wait()
    elif lib == "websockets":
        from websockets.asyncio.server import ServerConnection, serve

        text = payload.decode()

        async def ws_handler(ws: ServerConnection) -> None:
            await ws.recv()
            timed_start()
            for _ in range(n):
                await ws.send(text)
            timed_end()
            await ws.close()

        async with serve(ws_handler, "127.0.0.1", 0, ssl=_server_ctx(cert, key), compression=None) as srv:
            q.put(next(iter(srv.sockets)).getsockname()[1])
            await done.wait()
    elif lib == "grpc":
        import grpc

        async def stream(_req: bytes, context: Any) -> None:
            timed_start()
            for _ in range(n):
                await context.write(payload)
            timed_end()

        server = grpc.aio.server()
        handler = grpc.unary_stream_rpc_method_handler(stream)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("floor.F", {"S": handler}),))
        pem = [(Path(key).read_bytes(), Path(cert).read_bytes())]  # noqa: ASYNC240 (start-up, before timing)
        port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials(pem))
        await server.start()
        q.put(port)
        await done.wait()
        await server.stop(grace=1.0)
    else:  # sse
        import uvicorn
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import StreamingResponse
        from starlette.routing import Route

        event = b"event: response.output_text.delta\ndata: " + payload[:200] + b"\n\n"

        async def events() -> AsyncIterator[bytes]:
            timed_start()
            for _ in range(n):
                yield event
            timed_end()

        async def endpoint(_request: Request) -> StreamingResponse:
            return StreamingResponse(events(), media_type="text/event-stream")

        config = uvicorn.Config(
            Starlette(routes=[Route("/s", endpoint, methods=["POST"])]),
            host="127.0.0.1",
            port=0,
            ssl_certfile=cert,
            ssl_keyfile=key,
            log_level="warning",
            lifespan="off",
        )
        userver = uvicorn.Server(config)
        task = asyncio.create_task(userver.serve())
        for _ in range(3000):  # uvicorn says it has started only through this flag
            if userver.started:
                break
            await asyncio.sleep(0.01)
        q.put(userver.servers[0].sockets[0].getsockname()[1])
        await done.wait()
        await asyncio.sleep(0.2)  # let the last bytes leave
        userver.should_exit = True
        await task
    q.put(cpu[1] - cpu[0])


async def _client(lib: str, port: int, n: int, ca: bytes) -> float:
    """Read ``n`` events; return the seconds from the first to the last."""
    ctx = ssl.create_default_context(cadata=ca.decode())
    first = last = 0.0
    got = 0

    def tick() -> None:
        nonlocal first, last, got
        last = time.perf_counter()
        if not got:
            first = last
        got += 1

    if lib == "asyncio":
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="localhost")
        writer.write(b"go\n")
        size = SIZES[lib]
        while got < n:
            await reader.readexactly(size)
            tick()
        writer.close()
    elif lib == "websockets":
        from websockets.asyncio.client import connect

        async with connect(f"wss://localhost:{port}", ssl=ctx, compression=None, max_queue=None) as ws:
            await ws.send("go")
            while got < n:
                await ws.recv()
                tick()
    elif lib == "grpc":
        import grpc

        creds = grpc.ssl_channel_credentials(ca)
        opts = [("grpc.ssl_target_name_override", "localhost")]
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", creds, options=opts) as channel:
            call = channel.unary_stream("/floor.F/S", request_serializer=None, response_deserializer=None)(b"")
            async for _ in call:
                tick()
    else:
        import httpx

        async with (
            httpx.AsyncClient(verify=ctx) as client,
            client.stream("POST", f"https://localhost:{port}/s") as r,
        ):
            async for line in r.aiter_lines():
                if line.startswith("data:"):
                    tick()
    if got != n:
        raise RuntimeError(f"{lib}: {got} events of {n}")
    return last - first


def measure(lib: str, n: int, files: tuple[str, str], ca: bytes) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=_serve, args=(lib, n, *files, q), daemon=True)
    proc.start()
    try:
        port = q.get(timeout=30)
        wall = asyncio.run(_client(lib, port, n, ca))
        server_cpu = q.get(timeout=60)
    finally:
        proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()
    return {"events_per_s": (n - 1) / wall, "server_us_per_event": 1e6 * server_cpu / n}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=20_000, help="events per library (default 20,000)")
    p.add_argument("--libs", default=",".join(LIBS), help=f"default {','.join(LIBS)}")
    args = p.parse_args(argv)
    tls = generate_tls()
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
        cert.write_bytes(tls.cert_chain_pem_bytes)
        key.write_bytes(tls.private_key_pem_bytes)
        print(f"{'library':<11} {'bytes/event':>11} {'events/s':>10} {'server µs/event':>16}")
        for lib in args.libs.split(","):
            if lib not in SIZES:
                p.error(f"unknown library {lib!r}: choose from {', '.join(LIBS)}")
            r = measure(lib, args.events, (str(cert), str(key)), tls.ca_pem_bytes)
            print(f"{lib:<11} {SIZES[lib]:>11} {r['events_per_s']:>10,.0f} {r['server_us_per_event']:>16.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
