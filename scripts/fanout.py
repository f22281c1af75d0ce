"""Fan-out: one orchestrator response, then N sub-agents forked from it at once (issue #17).

Three ways to do the same work, against server processes started as ``turnbench run`` starts them (TLS on,
``--profile``, default ``fast``):

- ``ws lanes``: one WebSocket connection; the N forks are ``response.create`` on N lanes (``stream_id``) with
  the orchestrator's id as ``previous_response_id``: they run side by side, each from the connection cache;
- ``ws connections``: N more WebSocket connections, one fork each (the parent is stored, ``store=true``, so
  every connection hydrates it from the store);
- ``https store``: N concurrent ``POST /v1/responses`` with ``previous_response_id`` (``store=true``).

Each sub-agent writes ``--answer-tokens`` tokens after a parent of ``--parent-kb`` KB of context. Printed per
way, as medians over ``--rounds`` interleaved rounds: the fan-out's wall time (the first fork sent → the last
one completed) and the server process's CPU over it.

  python scripts/fanout.py                       # N = 8, 5 rounds
  python scripts/fanout.py --subagents 16 --profile instant
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from websockets.asyncio.client import ClientConnection, connect  # noqa: E402

from loadtests.procs import Endpoint, start_server_process, stop_endpoints  # noqa: E402
from turnbench.schema import TERMINAL_TYPES  # noqa: E402
from turnbench.tls import load_ca  # noqa: E402


def body(text: str, tokens: int, **extra: Any) -> dict[str, Any]:
    return {"model": "m", "input": text, "metadata": {"tool_calls": "0", "answer_tokens": str(tokens)}, **extra}


async def until_terminals(ws: ClientConnection, n: int) -> list[dict[str, Any]]:
    done: list[dict[str, Any]] = []
    while len(done) < n:
        ev = json.loads(await ws.recv())
        if ev.get("type") in TERMINAL_TYPES or ev.get("type") == "error":
            done.append(ev)
    return done


async def ws_lanes(ep: Endpoint, parent: str, n: int, tokens: int) -> tuple[float, bool]:
    async with connect(f"{ep.url}/responses", ssl=load_ca(str(ep.ca_path)), compression=None, max_size=None) as ws:
        await ws.send(json.dumps({"type": "response.create", **body(parent, 8, store=False)}))
        pid = (await until_terminals(ws, 1))[0]["response"]["id"]
        t0 = time.perf_counter()
        for k in range(n):
            fork = body(f"sub-task {k}", tokens, store=False, previous_response_id=pid, stream_id=f"sub{k}")
            await ws.send(json.dumps({"type": "response.create", **fork}))
        done = await until_terminals(ws, n)
        return time.perf_counter() - t0, all(e["type"] == "response.completed" for e in done)


async def ws_connections(ep: Endpoint, parent: str, n: int, tokens: int) -> tuple[float, bool]:
    ctx = load_ca(str(ep.ca_path))
    async with connect(f"{ep.url}/responses", ssl=ctx, compression=None, max_size=None) as ws:
        await ws.send(json.dumps({"type": "response.create", **body(parent, 8, store=True)}))
        pid = (await until_terminals(ws, 1))[0]["response"]["id"]
    conns = [await connect(f"{ep.url}/responses", ssl=ctx, compression=None, max_size=None) for _ in range(n)]
    try:
        t0 = time.perf_counter()

        async def one(k: int, ws: ClientConnection) -> bool:
            fork = body(f"sub-task {k}", tokens, store=True, previous_response_id=pid)
            await ws.send(json.dumps({"type": "response.create", **fork}))
            return (await until_terminals(ws, 1))[0]["type"] == "response.completed"

        ok = await asyncio.gather(*(one(k, ws) for k, ws in enumerate(conns)))
        return time.perf_counter() - t0, all(ok)
    finally:
        await asyncio.gather(*(ws.close() for ws in conns))


async def https_store(ep: Endpoint, parent: str, n: int, tokens: int) -> tuple[float, bool]:
    limits = httpx.Limits(max_connections=n + 1, max_keepalive_connections=n + 1)
    async with httpx.AsyncClient(verify=load_ca(str(ep.ca_path)), limits=limits, timeout=120.0) as http:
        r = await http.post(f"{ep.url}/responses", json=body(parent, 8, store=True))
        pid = r.json()["id"]
        # warm the pool: each fork then has its connection, as the WebSocket ways have theirs
        await asyncio.gather(*(http.get(ep.url.removesuffix("/v1") + "/healthz") for _ in range(n)))
        t0 = time.perf_counter()

        async def one(k: int) -> bool:
            resp = await http.post(
                f"{ep.url}/responses", json=body(f"sub-task {k}", tokens, store=True, previous_response_id=pid)
            )
            return resp.status_code == 200 and resp.json().get("status") == "completed"

        ok = await asyncio.gather(*(one(k) for k in range(n)))
        return time.perf_counter() - t0, all(ok)


WAYS = {"ws lanes": ("ws", ws_lanes), "ws connections": ("ws", ws_connections), "https store": ("https", https_store)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--subagents", type=int, default=8)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--answer-tokens", type=int, default=64)
    p.add_argument("--parent-kb", type=float, default=8.0)
    p.add_argument("--profile", default="fast")
    args = p.parse_args(argv)
    parent = "Plan: " + "the parser reads each file and the tests check it " * int(args.parent_kb * 1024 / 50)
    with tempfile.TemporaryDirectory(prefix="turnbench-fanout-") as tmp:
        eps = {
            s: start_server_process(s, workdir=Path(tmp) / s, profile=args.profile, tls=True) for s in ("ws", "https")
        }
        results: dict[str, list[tuple[float, float]]] = {w: [] for w in WAYS}
        ok = True
        try:
            for _ in range(args.rounds):
                for way, (server, fn) in WAYS.items():
                    ep = eps[server]
                    assert ep.process is not None
                    cpu0 = ep.process.cpu_s()
                    wall, good = asyncio.run(fn(ep, parent, args.subagents, args.answer_tokens))
                    results[way].append((wall, ep.process.cpu_s() - cpu0))
                    ok = ok and good
        finally:
            stop_endpoints(eps)
    print(f"fan-out of {args.subagents} sub-agents ({args.answer_tokens} tokens each, {args.parent_kb:g} KB parent, "
          f"profile {args.profile}), median of {args.rounds} rounds")  # fmt: skip
    print(f"{'way':<16} {'wall ms':>9} {'server CPU ms':>14}  (CPU: the whole round, parent included)")
    for way, rows in results.items():
        wall = statistics.median(r[0] for r in rows) * 1000.0
        cpu = statistics.median(r[1] for r in rows) * 1000.0
        print(f"{way:<16} {wall:>9.1f} {cpu:>14.1f}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
