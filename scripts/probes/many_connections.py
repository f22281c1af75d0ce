"""Many connections held open at once: ``--connections`` WebSocket connections and as many gRPC ``Connect``
streams (each on a channel of its own), all open together against one server per transport, then each sends
one request while all the others stay open.

Each server runs in its own process (as ``turnbench run`` starts them, TLS on, the ``instant`` profile). Per
transport it prints: connections opened, requests that succeeded, errors (with the first one), the time to
open them all, the p50/p99 turn time of the requests (sent in waves of ``--wave``), and the server's RSS
before, with all connections open, and after they closed. Exit status 0 only with zero errors.

  python scripts/many_connections.py                     # 1,000 per transport
  python scripts/many_connections.py --connections 200 --transports ws
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from clients.base import ResponsesClient, TurnRecorder, make_client
from loadtests.execution.procs import start_server_process, stop_endpoints


def raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, needed) if hard > 0 else needed, hard))


async def measure(transport: str, n: int, wave: int, workdir: Path) -> dict[str, Any]:
    ep = start_server_process(transport, workdir=workdir / transport, profile="instant", tls=True)
    assert ep.process is not None
    ps = psutil.Process(ep.process.pid)
    rss0 = ps.memory_info().rss
    clients: list[ResponsesClient] = []
    errors: list[str] = []
    try:
        t0 = time.perf_counter()

        async def open_one() -> None:
            c = make_client(transport, ep.client_config())
            try:
                await c.connect()
                clients.append(c)
            except Exception as exc:
                errors.append(f"connect: {type(exc).__name__}: {exc}")
                await c.close()

        for i in range(0, n, wave):  # opened in waves: a burst of n TLS handshakes would only time the backlog
            await asyncio.gather(*(open_one() for _ in range(min(wave, n - i))))
        open_s = time.perf_counter() - t0
        rss_open = ps.memory_info().rss
        turn_ms: list[float] = []

        async def ask(c: ResponsesClient) -> None:
            rec = TurnRecorder(transport, "connection")
            rec.scheduled()
            await c.safe_create(
                {"model": "m", "input": "hi", "store": False, "metadata": {"answer_tokens": "8"}}, recorder=rec
            )
            r = rec.result()
            if r.success and r.turn_ms is not None:
                turn_ms.append(r.turn_ms)
            else:
                errors.append(f"request: {r.error_code}: {r.error}")

        for i in range(0, len(clients), wave):
            await asyncio.gather(*(ask(c) for c in clients[i : i + wave]))
        rss_peak = ps.memory_info().rss
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
    await asyncio.sleep(1.0)
    rss_after = ps.memory_info().rss
    code = stop_endpoints({transport: ep})[transport]
    q = statistics.quantiles(turn_ms, n=100) if len(turn_ms) >= 2 else [float("nan")] * 99
    return {
        "transport": transport,
        "opened": len(clients),
        "ok": len(turn_ms),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "open_s": open_s,
        "turn_p50_ms": q[49],
        "turn_p99_ms": q[98],
        "rss_mb": [round(x / 2**20, 1) for x in (rss0, rss_open, rss_peak, rss_after)],
        "server_exit": code,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--connections", type=int, default=1000, help="connections per transport (default 1000)")
    p.add_argument("--transports", default="ws,grpc", help="default ws,grpc")
    p.add_argument("--wave", type=int, default=100, help="connections opened, and requests sent, at once (100)")
    args = p.parse_args(argv)
    raise_fd_limit(4 * args.connections + 256)  # the client's sockets (and gRPC's channel fds) with headroom
    ok = True
    with tempfile.TemporaryDirectory(prefix="turnbench-many-") as tmp:
        for t in args.transports.split(","):
            r = asyncio.run(measure(t, args.connections, args.wave, Path(tmp)))
            ok = ok and r["errors"] == 0 and r["ok"] == args.connections and r["server_exit"] == 0
            print(
                f"{t:<5} opened {r['opened']:>5}  requests ok {r['ok']:>5}  errors {r['errors']}  "
                f"open all {r['open_s']:.1f} s  turn p50/p99 {r['turn_p50_ms']:.1f}/{r['turn_p99_ms']:.1f} ms  "
                f"server RSS MB before/open/peak/after {r['rss_mb']}  exit {r['server_exit']}",
                flush=True,
            )
            if r["first_error"]:
                print(f"      first error: {r['first_error']}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
