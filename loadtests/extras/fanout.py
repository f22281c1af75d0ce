"""Fan-out, measured: N forks of one orchestrator response on N lanes of one connection, over N WebSocket
connections (``store=true``), over N HTTPS requests (``store=true``): wall time and server CPU (also as means,
since the kernel counts CPU time in 10 ms ticks). A section of ``turnbench bench``; ``scripts/fanout.py`` runs
it alone. See docs/guides/forks.md.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx
import pandas as pd
from websockets.asyncio.connection import Connection

from loadtests.execution.procs import Endpoint
from loadtests.extras.common import (
    CPU_TICK_MS,
    PROFILE,
    as_float,
    mean_of,
    median_of,
    ms_text,
    next_event,
    open_ws,
    per_way,
    profile_text,
    running_servers,
    server_text,
    setting_text,
)
from loadtests.extras.registry import Extra, ExtraResult
from loadtests.present.doc import Doc, round_frame
from turnbench.schema import TERMINAL_TYPES
from turnbench.tls import load_ca

WAYS = ("ws lanes", "ws connections", "https store")
SIZES: dict[str, dict[str, Any]] = {
    "full": {"subagents": 8, "rounds": 10, "answer_tokens": 64, "parent_kb": 8.0},
    "quick": {"subagents": 8, "rounds": 3, "answer_tokens": 64, "parent_kb": 8.0},
}
""":func:`measure`'s arguments for ``turnbench bench`` (``full``, the script's defaults) and ``bench --quick``."""


def _body(text: str, tokens: int, **extra: Any) -> dict[str, Any]:
    return {"model": "m", "input": text, "metadata": {"tool_calls": "0", "answer_tokens": str(tokens)}, **extra}


async def _until_terminals(ws: Connection, n: int) -> list[dict[str, Any]]:
    done: list[dict[str, Any]] = []
    while len(done) < n:
        ev = await next_event(ws)
        if ev.get("type") in TERMINAL_TYPES:
            done.append(ev)
    return done


Cpu = Callable[[], float]
"""The server process's CPU time so far, in s."""


def _fork_row(t0: float, cpu0: float, cpu: Cpu, parent: Mapping[str, Any], forks: Sequence[Any]) -> dict[str, Any]:
    """One fan-out's figures: ``forks`` are the sub-agents' final response objects (None: it got none)."""
    wall, cpu_s = (time.perf_counter() - t0) * 1000.0, (cpu() - cpu0) * 1000.0
    done = [f for f in forks if f is not None and f.get("status") == "completed"]
    context = parent["usage"]["input_tokens"] + parent["usage"]["output_tokens"]
    return {
        "wall_ms": wall,
        "fanout_cpu_ms": cpu_s,
        "completed": len(done),
        # a fork continued the parent: it names it, and its context holds the parent's whole conversation
        "continued": sum(
            f["previous_response_id"] == parent["id"] and f["usage"]["input_tokens"] > context for f in done
        ),
    }


async def _ws_lanes(ep: Endpoint, parent: str, n: int, tokens: int, cpu: Cpu) -> dict[str, Any]:
    """One connection: the N forks on N lanes, each from the connection cache (``store=false``)."""
    async with await open_ws(ep) as ws:
        await ws.send(json.dumps({"type": "response.create", **_body(parent, 8, store=False)}))
        orchestrator = (await _until_terminals(ws, 1))[0]["response"]
        t0, cpu0 = time.perf_counter(), cpu()
        for k in range(n):
            fork = _body(f"sub-task {k}", tokens, store=False, previous_response_id=orchestrator["id"])
            await ws.send(json.dumps({"type": "response.create", **fork, "stream_id": f"sub{k}"}))
        done = await _until_terminals(ws, n)
        return _fork_row(t0, cpu0, cpu, orchestrator, [e.get("response") for e in done])


async def _ws_connections(ep: Endpoint, parent: str, n: int, tokens: int, cpu: Cpu) -> dict[str, Any]:
    """N more connections, one fork each, hydrating the stored parent (``store=true``)."""
    async with await open_ws(ep) as ws:
        await ws.send(json.dumps({"type": "response.create", **_body(parent, 8, store=True)}))
        orchestrator = (await _until_terminals(ws, 1))[0]["response"]
    conns = [await open_ws(ep) for _ in range(n)]
    try:
        t0, cpu0 = time.perf_counter(), cpu()

        async def one(k: int, ws: Connection) -> Any:
            fork = _body(f"sub-task {k}", tokens, store=True, previous_response_id=orchestrator["id"])
            await ws.send(json.dumps({"type": "response.create", **fork}))
            return (await _until_terminals(ws, 1))[0].get("response")

        forks = await asyncio.gather(*(one(k, ws) for k, ws in enumerate(conns)))
        return _fork_row(t0, cpu0, cpu, orchestrator, forks)
    finally:
        await asyncio.gather(*(ws.close() for ws in conns))


async def _https_store(ep: Endpoint, parent: str, n: int, tokens: int, cpu: Cpu) -> dict[str, Any]:
    """N concurrent ``POST /v1/responses`` continuing the stored parent (``store=true``)."""
    limits = httpx.Limits(max_connections=n + 1, max_keepalive_connections=n + 1)
    verify = load_ca(ep.ca_path) if ep.tls and ep.ca_path else True
    headers = {"Authorization": f"Bearer {ep.api_key}"} if ep.api_key else {}
    async with httpx.AsyncClient(verify=verify, limits=limits, timeout=120.0, headers=headers) as http:
        r = await http.post(f"{ep.url}/responses", json=_body(parent, 8, store=True))
        orchestrator = r.json()
        # warm the pool: each fork then has its connection, as the WebSocket ways have theirs (an endpoint
        # without /healthz answers 404, which warms it all the same)
        await asyncio.gather(*(http.get(ep.url.removesuffix("/v1") + "/healthz") for _ in range(n)))
        t0, cpu0 = time.perf_counter(), cpu()

        async def one(k: int) -> Any:
            body = _body(f"sub-task {k}", tokens, store=True, previous_response_id=orchestrator["id"])
            resp = await http.post(f"{ep.url}/responses", json=body)
            return resp.json() if resp.status_code == 200 else None

        forks = await asyncio.gather(*(one(k) for k in range(n)))
        return _fork_row(t0, cpu0, cpu, orchestrator, forks)


_FANOUT_FNS = {
    "ws lanes": ("ws", _ws_lanes),
    "ws connections": ("ws", _ws_connections),
    "https store": ("https", _https_store),
}


async def fork_out(way: str, ep: Endpoint, parent: str, n: int, tokens: int, cpu: Cpu) -> dict[str, Any]:
    """One fan-out of ``n`` forks, the ``way`` of :data:`WAYS`, against ``ep`` (TLS or not); ``cpu``: the
    server's CPU time so far, in s. Its row: ``wall_ms``, ``fanout_cpu_ms``, ``completed``, ``continued``."""
    return await _FANOUT_FNS[way][1](ep, parent, n, tokens, cpu)


def measure(
    *,
    subagents: int = 8,
    rounds: int = 10,
    answer_tokens: int = 64,
    parent_kb: float = 8.0,
    profile: str = PROFILE,
) -> ExtraResult:
    """One orchestrator response, then ``subagents`` forks of it at once, the three ways of
    :data:`WAYS`, ``rounds`` times (interleaved), against a ws and an https server process.

    The orchestrator's input is ``parent_kb`` KB of plan; each sub-agent writes ``answer_tokens`` tokens.
    Per round and way: ``wall_ms`` = the first fork sent → the last one's final event; ``cpu_ms`` = the server
    process's CPU over the whole round (the orchestrator request, opening and closing the connections the way
    needs, the forks); ``fanout_cpu_ms`` = its CPU over ``wall_ms`` only; ``completed`` = forks that completed;
    ``continued`` = those that named the orchestrator as ``previous_response_id`` and had its whole
    conversation in their context. ``means``: per way, CPU readings tick at 10 ms, so their mean over rounds
    is the figure to read (a median sits on a tick).
    """
    plan = "Plan: " + "the parser reads each file and the tests check it " * int(parent_kb * 1024 / 50)
    rows: list[dict[str, Any]] = []
    with running_servers(["ws", "https"], profile) as eps:
        for k in range(rounds):
            for way in WAYS:
                server, fn = _FANOUT_FNS[way]
                proc = eps[server].process  # None: an endpoint of someone else's, whose CPU is not ours to read
                cpu: Cpu = proc.cpu_s if proc is not None else (lambda: math.nan)
                cpu0 = cpu()
                row = asyncio.run(fn(eps[server], plan, subagents, answer_tokens, cpu))
                rows.append({"round": k, "way": way, "cpu_ms": (cpu() - cpu0) * 1000.0, **row})
    keys = ("wall_ms", "cpu_ms", "fanout_cpu_ms", "completed", "continued")
    return {
        "parameters": {
            "subagents": subagents,
            "rounds": rounds,
            "answer_tokens": answer_tokens,
            "parent_kb": parent_kb,
            "profile": profile,
            "tls": True,
            "cpu_tick_ms": CPU_TICK_MS,
        },
        "rounds": rows,
        "medians": per_way(rows, WAYS, keys, median_of),
        "means": per_way(rows, WAYS, keys, mean_of),
    }


def render(doc: Doc, data: ExtraResult) -> None:
    """The fan-out section: the three ways, wall time and server CPU per way, the result in one sentence."""
    p, med, mean = data["parameters"], data["medians"], data["means"]
    n = p["subagents"]
    target = bool(data.get("target"))
    where = (
        server_text(data) if target else f"a WebSocket-mode and an HTTPS server process at {profile_text(p['profile'])}"
    )
    doc.p(
        f"An orchestrator's response (its input: a plan of {p['parent_kb']:g} KB), then {n} sub-agents forked from "
        f"it at once, each writing {p['answer_tokens']} tokens. The same work three ways, interleaved round by "
        f"round, against {where}:"
    )
    doc.bullets(
        [
            f"**ws lanes**: one connection; the {n} forks are `response.create` on {n} lanes (`stream_id`) with "
            "the orchestrator's id as `previous_response_id`: they run side by side, each continuing from the "
            "connection cache (`store=false`).",
            f"**ws connections**: {n} more WebSocket connections, one fork each; the orchestrator was stored "
            "(`store=true`), so every connection hydrates it from the store.",
            f"**https store**: {n} concurrent `POST /v1/responses` with `previous_response_id` (`store=true`), "
            "each hydrating the parent; the client's connection pool is warmed first, as the WebSocket ways "
            "have their connections open.",
        ]
    )
    doc.p(
        "*wall*: ms from the first fork sent to the last one's final event (median of "
        f"{p['rounds']} rounds). *server CPU, round*: the server process's CPU time (user + system) over the "
        "whole round: the orchestrator request, opening and closing the connections the way needs (TLS "
        f"handshakes), the {n} forks. *server CPU, fan-out*: the same over the wall time only (a fork's "
        "bookkeeping after its final event may fall outside). Both are means over the rounds: the kernel counts "
        f"CPU time in {p.get('cpu_tick_ms', CPU_TICK_MS):g} ms ticks, so a single reading is that coarse. "
        "*completed*: forks that completed, of those sent, summed over rounds."
    )
    if target:
        doc.p("*Server CPU is not measured against an endpoint of someone else's: its process is not ours to read.*")
    doc.p(
        f"Caveats: {setting_text(data)} Server CPU is the server process's only (the client's is not counted) "
        "and covers one process per way (the ws ways share one, HTTPS has its own)."
    )
    rounds = data["rounds"]
    df = pd.DataFrame(
        {
            "way": list(WAYS),
            "wall ms": [as_float(med[w]["wall_ms"]) for w in WAYS],
            "server CPU, round ms": [as_float(mean[w]["cpu_ms"]) for w in WAYS],
            "server CPU, fan-out ms": [as_float(mean[w]["fanout_cpu_ms"]) for w in WAYS],
            "completed": [f"{sum(r['completed'] for r in rounds if r['way'] == w)}/{n * p['rounds']}" for w in WAYS],
        }
    )
    doc.table(round_frame(df))
    lanes, conns, https = (med[w] for w in WAYS)
    cpu = [mean[w]["cpu_ms"] for w in WAYS]
    doc.p(
        f"One connection's lanes finished the fan-out of {n} sub-agents in {ms_text(lanes['wall_ms'])} against "
        f"{ms_text(conns['wall_ms'])} over {n} WebSocket connections and {ms_text(https['wall_ms'])} over {n} HTTPS "
        "requests"
        + (
            "."
            if target
            else f", for {ms_text(cpu[0])}, {ms_text(cpu[1])} and {ms_text(cpu[2])} of server CPU per round."
        )
    )


EXTRA = Extra(
    "fanout",
    "Fan-out: one orchestrator, N sub-agents",
    lambda quick: measure(**SIZES["quick" if quick else "full"]),
    render,
    "python scripts/fanout.py",
    (5.0, 9.0),  # 4.8 s, 10.2 s measured on a busy machine (load 2.5): two servers start side by side
    needs=("https_json", "ws", "lanes", "lanes_concurrent", "ws_continuation", "forks", "store", "usage"),
)
"""This measurement as a section of ``turnbench bench``; ``est_s`` measured on a quiet 2-core machine (server
start-up included)."""
