"""What an HTTP client library costs per request: httpx (and others) against a minimal raw HTTP/1.1 client.

The server runs in a separate process, started as ``turnbench run`` starts its servers
(:func:`loadtests.procs.start_server_process`: ``https``, profile ``instant``, one with TLS and one without),
so client CPU is not mixed with server CPU. ``httpx-h2`` is the same httpx client over
HTTP/2 against the hypercorn variant (``--http2``: a third/fourth server process), and ``httpx-hc`` is
HTTP/1.1 against that same hypercorn server (server and protocol cost apart). Each client sends the same
requests one at a time on one connection (keep-alive) or a new connection per request, in interleaved
rounds (A B A B …) to cancel drift, and the table gives the per-request wall time (median, p99, µs) and
the client process CPU per request (µs).

Workloads:
  ping    GET /healthz: HTTP only, no pipeline work (the floor)
  small   POST /v1/responses, stream=false, a ~8-token answer: the JSON reply
  stream  POST /v1/responses, stream=true, --answer-tokens deltas: SSE parsing too

  python scripts/https_overhead.py                      # everything, 2000 requests per cell
  python scripts/https_overhead.py --clients httpx,raw --tls off --conn keepalive --workloads ping -n 500
  python scripts/https_overhead.py --clients httpx,httpx-hc,httpx-h2 --conn keepalive   # HTTP/2 variant
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from clients.base import TurnRecorder
from clients.https_client import HttpsClient
from clients.raw_http_client import RawHttpClient
from loadtests.execution.procs import Endpoint, start_server_process

CLIENTS = ("raw", "httpx", "httpx-stock", "aiohttp", "sdk", "httpx-h2", "httpx-hc")
HYPERCORN = ("httpx-h2", "httpx-hc")  # clients of the hypercorn (http2=true) server


def start_server(tls: bool, tmp: Path, http2: bool = False) -> Endpoint:
    """The ``https`` server (``http2``: on hypercorn) in a child process, healthy."""
    return start_server_process(
        "https", workdir=tmp / f"https-tls{tls:d}-h2{http2:d}", profile="instant", tls=tls, settings={"http2": http2}
    )


@dataclass
class Cell:
    client: str
    tls: bool
    conn: str
    workload: str
    wall_ns: list[int] = field(default_factory=list)
    cpu_ns: int = 0
    failures: int = 0


Call = Callable[[], Awaitable[bool]]


def body(workload: str, answer_tokens: int) -> dict[str, Any]:
    words = answer_tokens if workload == "stream" else 8
    return {
        "model": "m",
        "input": "Say something short.",
        "store": False,
        "stream": workload == "stream",
        "metadata": {"tool_calls": "0", "answer_tokens": str(words)},
    }


async def make_call(
    name: str, server: Endpoint, new_conn: bool, workload: str, answer_tokens: int
) -> tuple[Call, Callable[[], Awaitable[None]]]:
    """A zero-argument request function for ``name`` and its close function."""
    payload = body(workload, answer_tokens)
    if name == "aiohttp":
        return await _aiohttp_call(server, server.client_config().ssl_context, new_conn, workload, payload)
    if name == "sdk":
        from clients.sdk_client import SdkHttpsClient

        client: Any = SdkHttpsClient(server.client_config())
        if workload != "stream":
            raise ValueError("sdk: stream workload only")
    else:
        cls = RawHttpClient if name == "raw" else HttpsClient
        backend = "anyio" if name == "httpx-stock" else "asyncio"
        client = cls(server.client_config(new_connection=new_conn, network_backend=backend, http2=name == "httpx-h2"))
    await client.connect()
    if name == "httpx-h2" and client.http_version != "HTTP/2":
        raise RuntimeError(f"httpx-h2: the server answered {client.http_version}")
    if workload == "ping":

        async def ping() -> bool:
            return bool(await client.ping() == 200)

        return ping, client.close

    raw = orjson.dumps(payload)  # create() always streams; the JSON reply needs the body as is

    async def create() -> bool:
        rec = TurnRecorder(name, "full")
        if workload == "small" and name != "sdk":
            await client.create_raw(raw, recorder=rec)
        else:
            await client.create(payload, recorder=rec)
        return rec.success

    return create, client.close


async def _aiohttp_call(
    server: Endpoint, ctx: Any, new_conn: bool, workload: str, payload: dict[str, Any]
) -> tuple[Call, Callable[[], Awaitable[None]]]:
    """aiohttp for comparison only (the same requests; SSE read with ``iter_any`` and split by hand)."""
    import aiohttp

    conn = aiohttp.TCPConnector(ssl=ctx if ctx is not None else False, force_close=new_conn)
    session = aiohttp.ClientSession(connector=conn)
    base = server.url.rstrip("/")
    health = base.removesuffix("/v1") + "/healthz"
    data = orjson.dumps(payload)
    headers = {"content-type": "application/json"}
    await (await session.get(health)).read()

    async def call() -> bool:
        if workload == "ping":
            async with session.get(health) as r:
                await r.read()
                return r.status == 200
        async with session.post(base + "/responses", data=data, headers=headers) as r:
            if workload == "small":
                return bool(r.status == 200 and orjson.loads(await r.read())["status"] == "completed")
            buf, ok = b"", False
            async for chunk in r.content.iter_any():
                buf += chunk
                *events, buf = buf.split(b"\n\n")
                for ev in events:
                    obj = orjson.loads(ev.split(b"\ndata: ", 1)[1])
                    ok = ok or obj["type"] == "response.completed"
            return ok

    return call, session.close


async def run_round(call: Call, cell: Cell, n: int) -> None:
    gc.collect()
    c0 = time.process_time_ns()
    for _ in range(n):
        t0 = time.perf_counter_ns()
        ok = await call()
        cell.wall_ns.append(time.perf_counter_ns() - t0)
        cell.failures += not ok
    cell.cpu_ns += time.process_time_ns() - c0


async def bench(args: argparse.Namespace, servers: dict[tuple[bool, bool], Endpoint]) -> list[Cell]:
    cells: list[Cell] = []
    per_round = max(1, args.requests // args.rounds)
    for tls in args.tls:
        for conn in args.conn:
            for workload in args.workloads:
                names = [c for c in args.clients if not (c == "sdk" and workload != "stream")]
                group = [Cell(c, tls, conn, workload) for c in names]
                calls = [
                    await make_call(c, servers[tls, c in HYPERCORN], conn == "new", workload, args.answer_tokens)
                    for c in names
                ]
                for call, _ in calls:
                    for _ in range(args.warmup):
                        await call()
                for _ in range(args.rounds):
                    for (call, _), cell in zip(calls, group, strict=True):
                        await run_round(call, cell, per_round)
                for _, close in calls:
                    await close()
                for cell in group:
                    print_row(cell, header=not cells)
                    cells.append(cell)
    return cells


def pct(values: list[int], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] / 1e3


def print_row(c: Cell, *, header: bool) -> None:
    if header:
        print(
            f"{'client':11} {'tls':4} {'conn':9} {'workload':8} {'n':>6} {'median_us':>10} {'p99_us':>9} "
            f"{'cpu_us/req':>10} {'fail':>5}"
        )
    n = len(c.wall_ns)
    print(
        f"{c.client:11} {'on' if c.tls else 'off':4} {c.conn:9} {c.workload:8} {n:6d} "
        f"{statistics.median(c.wall_ns) / 1e3:10.0f} {pct(c.wall_ns, 0.99):9.0f} "
        f"{c.cpu_ns / n / 1e3:10.0f} {c.failures:5d}",
        flush=True,
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", "--requests", type=int, default=2000, help="requests per cell (default 2000)")
    p.add_argument("--warmup", type=int, default=200, help="unmeasured requests per client first")
    p.add_argument("--rounds", type=int, default=4, help="interleaved rounds per cell (default 4)")
    p.add_argument(
        "--clients",
        default="raw,httpx,httpx-stock,aiohttp",
        help=f"comma list of {', '.join(CLIENTS)} (httpx: turnbench's HttpsClient; "
        "httpx-stock: the same on httpx's own anyio network backend; httpx-h2 / httpx-hc: HTTP/2 / "
        "HTTP/1.1 against the hypercorn server)",
    )
    p.add_argument("--tls", default="off,on", help="comma list of on, off")
    p.add_argument("--conn", default="keepalive,new", help="comma list of keepalive, new")
    p.add_argument("--workloads", default="ping,small,stream", help="comma list of ping, small, stream")
    p.add_argument("--answer-tokens", type=int, default=64, help="deltas per stream response (default 64)")
    p.add_argument("--json", type=Path, help="also write the cells (with raw samples) here")
    a = p.parse_args(argv)
    a.clients = [c for c in a.clients.split(",") if c]
    if bad := set(a.clients) - set(CLIENTS):
        p.error(f"unknown clients: {', '.join(sorted(bad))}")
    a.tls = [{"on": True, "off": False}[t] for t in a.tls.split(",") if t]
    a.conn = [c for c in a.conn.split(",") if c]
    a.workloads = [w for w in a.workloads.split(",") if w]
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import uvloop

    with tempfile.TemporaryDirectory(prefix="turnbench-overhead-") as tmp:
        kinds = {c in HYPERCORN for c in args.clients}
        servers: dict[tuple[bool, bool], Endpoint] = {}
        try:
            for tls in set(args.tls):
                for h2 in kinds:
                    servers[tls, h2] = start_server(tls, Path(tmp), h2)
            pids = [s.process.pid for s in servers.values() if s.process is not None]
            print(
                f"# python {sys.version.split()[0]}, {os.cpu_count()} CPUs, uvloop client, server pids "
                f"{pids}; wall per request (µs), client CPU per request"
            )
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                cells = runner.run(bench(args, servers))
        finally:
            for s in servers.values():
                if s.process is not None:
                    s.process.stop(10.0)
    if args.json:
        args.json.write_bytes(orjson.dumps([c.__dict__ for c in cells], option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
