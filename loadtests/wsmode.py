"""WebSocket mode's own mechanisms, measured (issue #17): steering a running answer, one orchestrator fanning
out to N sub-agents, a warmed-up first turn.

Each measurement starts the server processes it needs (as ``turnbench run`` starts them: TLS on, loopback,
a simulated model profile, default ``fast``: ~1,000 tok/s), runs its rounds interleaved (every way once per
round, so a machine that slows down midway slows all of them alike), stops the servers and returns JSON-able
data: ``parameters``, ``rounds`` (one row per round and way, raw values) and ``medians`` (per way; fan-out's
server CPU also as ``means``, since the kernel counts CPU time in 10 ms ticks). They are
extras of ``turnbench bench`` (:data:`EXTRAS`: a section of the report each, rendered from that data);
``scripts/steer_bench.py``, ``scripts/fanout.py`` and ``scripts/warmup.py`` run them alone.

- :func:`measure_steering`: a mid-answer correction as ``response.steer`` against closing the connection and
  re-creating the request with the whole conversation (time to the corrected answer's first token and end,
  tokens of the first answer wasted);
- :func:`measure_fanout`: N forks of one orchestrator response on N lanes of one connection, over N WebSocket
  connections (``store=true``), over N HTTPS requests (``store=true``): wall time and server CPU;
- :func:`measure_warmup`: the first turn's TTFT cold and after ``generate: false`` sent its instructions and
  tools ahead, and what the server reports as cached input tokens for each.

Times are in ms, measured by this process (the client) with ``time.perf_counter``; server CPU is the server
process's user + system time (psutil), in ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.connection import Connection

from clients.agent import Toolbox
from loadtests.doc import Doc, format_number, round_frame
from loadtests.extras import Extra
from loadtests.procs import Endpoint, ServerError, start_server_process, stop_endpoints
from turnbench.engine.sim import PROFILES
from turnbench.schema import TERMINAL_TYPES
from turnbench.tls import load_ca

__all__ = [
    "EXTRAS",
    "FANOUT_SIZES",
    "FANOUT_WAYS",
    "STEERING_SIZES",
    "STEERING_WAYS",
    "WARMUP_SIZES",
    "measure_fanout",
    "measure_steering",
    "measure_warmup",
    "render_fanout",
    "render_steering",
    "render_warmup",
]

PROFILE = "fast"
"""The default server profile: ~1,000 tok/s decode, prefill 4x faster than ``h200-8b`` (model time is
simulated by the ``sim`` engine's cost model)."""

STEERING_WAYS = ("steer", "cancel and re-create")
FANOUT_WAYS = ("ws lanes", "ws connections", "https store")
STEERING_SIZES: dict[str, dict[str, Any]] = {
    "full": {"rounds": 5, "answer_tokens": 600, "after": 100},
    "quick": {"rounds": 3, "answer_tokens": 300, "after": 50},
}
""":func:`measure_steering`'s arguments for ``turnbench bench`` (``full``, the script's defaults) and
``bench --quick``."""
FANOUT_SIZES: dict[str, dict[str, Any]] = {
    "full": {"subagents": 8, "rounds": 10, "answer_tokens": 64, "parent_kb": 8.0},
    "quick": {"subagents": 8, "rounds": 3, "answer_tokens": 64, "parent_kb": 8.0},
}
""":func:`measure_fanout`'s arguments, as :data:`STEERING_SIZES`."""
WARMUP_SIZES: dict[str, dict[str, Any]] = {
    "full": {"rounds": 15, "instructions_kb": 16.0},
    "quick": {"rounds": 4, "instructions_kb": 16.0},
}
""":func:`measure_warmup`'s arguments, as :data:`STEERING_SIZES`."""

TASK = "Write the migration report for the parser module."
FIX = "Correction: only the tests changed, keep it to the test report."
DELTAS = ("response.output_text.delta", "response.function_call_arguments.delta")
CPU_TICK_MS = 10.0
"""The resolution of a process's CPU time as Linux reports it (``/proc``: 100 ticks per second)."""


# ------------------------------------------------------------------------------------------ shared


async def _open(ep: Endpoint) -> ClientConnection:
    """A WebSocket-mode connection to ``ep``, as the SDK opens one (no compression, no frame size limit)."""
    assert ep.ca_path is not None
    return await connect(f"{ep.url}/responses", ssl=load_ca(ep.ca_path), compression=None, max_size=None)


async def _event(ws: Connection) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(await ws.recv())
    return event


@contextlib.contextmanager
def _servers(servers: Sequence[str], profile: str) -> Iterator[dict[str, Endpoint]]:
    """Server processes for one measurement (:func:`_start`), in a temporary folder, stopped on the way out;
    one that then exits with a non-zero status (it crashed, or failed to drain) raises :class:`ServerError`."""
    with tempfile.TemporaryDirectory(prefix="turnbench-wsmode-") as tmp:
        eps = _start(servers, Path(tmp), profile)
        try:
            yield eps
        finally:
            codes = stop_endpoints(eps)
        bad = [f"{key} exited with {code}" for key, code in codes.items() if code]
        if bad:
            tails = "\n".join(ep.process.log_tail() for ep in eps.values() if ep.process is not None)
            raise ServerError(f"{'; '.join(bad)}:\n{tails}")


def _start(servers: Sequence[str], workdir: Path, profile: str) -> dict[str, Endpoint]:
    """One server process per protocol of ``servers`` (TLS on), started side by side, each in its own folder
    under ``workdir``; if one fails, those started are stopped and its error is raised."""
    with ThreadPoolExecutor(max_workers=len(servers)) as pool:
        futures = {
            s: pool.submit(start_server_process, s, workdir=workdir / s, profile=profile, tls=True) for s in servers
        }
        started: dict[str, Endpoint] = {}
        errors: list[BaseException] = []
        for s, fut in futures.items():
            try:
                started[s] = fut.result()
            except BaseException as exc:  # every server that did start must still be stopped
                errors.append(exc)
    if errors:
        stop_endpoints(started)
        raise errors[0]
    return started


def _median(values: Iterable[Any]) -> float | None:
    """The median of the finite numbers of ``values`` (None and NaN left out); None when there are none."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return statistics.median(xs) if xs else None


def _mean(values: Iterable[Any]) -> float | None:
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return statistics.fmean(xs) if xs else None


def _per_way(rounds: Sequence[Mapping[str, Any]], ways: Sequence[str], keys: Sequence[str], how: Any) -> Any:
    """``{way: {key: how(values of the rounds of that way)}}``."""
    return {w: {k: how(r[k] for r in rounds if r["way"] == w) for k in keys} for w in ways}


def _num(v: Any) -> float:
    return math.nan if v is None else float(v)


def _ms(v: Any) -> str:
    return f"{format_number(_num(v))} ms"


def _profile_text(profile: str) -> str:
    """``the simulated `fast` profile (~1,000 tok/s)``: a profile's name and speed, for a sentence."""
    p = PROFILES.get(profile)
    return f"the `{profile}` profile" if p is None else f"the simulated `{profile}` profile ({p.rate_text})"


LOOPBACK = (
    "Client and server share this machine and talk over loopback (TLS included): no network delay is in these "
    "numbers. The model is simulated (the `sim` engine's cost model spends prefill and decode time as waits), "
    "so model time is the profile's, not a GPU's."
)


# ------------------------------------------------------------------------------------------ steering


def _create(answer: int, **extra: Any) -> str:
    meta = {"tool_calls": "0", "answer_tokens": str(answer)}
    return json.dumps({"type": "response.create", "model": "m", "store": False, "metadata": meta, **extra})


async def _first_part(ws: Connection, answer: int, after: int, k: int) -> tuple[str, int]:
    """Start the answer; return (its id, deltas received) once ``after`` deltas have arrived."""
    await ws.send(_create(answer, input=f"[{k}] {TASK}"))
    rid, got = "", 0
    while got < after:
        ev = await _event(ws)
        if ev["type"] == "response.created":
            rid = ev["response"]["id"]
        elif ev["type"] == "response.output_text.delta":
            got += 1
        elif ev["type"] in TERMINAL_TYPES:
            raise RuntimeError(f"the first answer ended after {got} of {after} deltas: {ev}")
    return rid, got


async def _steer_way(ep: Endpoint, answer: int, after: int, k: int) -> dict[str, Any]:
    """The correction as ``response.steer``; the server starts the successor by itself."""
    async with await _open(ep) as ws:
        rid, got = await _first_part(ws, answer, after, k)
        t0 = time.perf_counter()
        await ws.send(json.dumps({"type": "response.steer", "previous_response_id": rid, "input": FIX}))
        row: dict[str, Any] = {"steered_status": None, "steered_reason": None, "successor_of": None}
        wasted, first, last = got, None, None
        current = rid
        while last is None:
            ev = await _event(ws)
            kind = ev["type"]
            if kind in ("response.steer.failed", "error"):
                raise RuntimeError(f"the steer was refused: {ev}")
            if kind == "response.created":
                current = ev["response"]["id"]
                if current != rid:
                    row["successor_of"] = ev["response"].get("previous_response_id")
            elif kind == "response.output_text.delta":
                if current == rid:
                    wasted += 1
                elif first is None:
                    first = (time.perf_counter() - t0) * 1000.0
            elif kind in TERMINAL_TYPES and current == rid:
                resp = ev["response"]
                row["steered_status"] = resp.get("status")
                row["steered_reason"] = (resp.get("incomplete_details") or {}).get("reason")
            elif kind in TERMINAL_TYPES:
                last = (time.perf_counter() - t0) * 1000.0
                row["corrected_status"] = ev["response"]["status"]
                row["corrected_output_tokens"] = ev["response"]["usage"]["output_tokens"]
        return {"first_ms": first, "done_ms": last, "wasted_tokens": wasted, "steered_id": rid, **row}


async def _cancel_way(ep: Endpoint, answer: int, after: int, k: int) -> dict[str, Any]:
    """The correction by closing the connection (the only cancel WebSocket mode has) and re-creating the
    request, with the whole conversation and the correction, on a new connection."""
    ws = await _open(ep)
    _, got = await _first_part(ws, answer, after, k)
    t0 = time.perf_counter()
    await ws.close()
    history = [
        {"type": "message", "role": "user", "content": f"[{k}] {TASK}"},
        {"type": "message", "role": "user", "content": FIX},
    ]
    first = None
    async with await _open(ep) as ws2:
        await ws2.send(_create(answer, input=history))
        while True:
            ev = await _event(ws2)
            if first is None and ev["type"] == "response.output_text.delta":
                first = (time.perf_counter() - t0) * 1000.0
            if ev["type"] in TERMINAL_TYPES:
                if ev["type"] == "error":
                    raise RuntimeError(f"the re-created request was refused: {ev}")
                done = (time.perf_counter() - t0) * 1000.0
                return {
                    "first_ms": first,
                    "done_ms": done,
                    "wasted_tokens": got,
                    "corrected_status": ev["response"]["status"],
                    "corrected_output_tokens": ev["response"]["usage"]["output_tokens"],
                    "steered_status": None,
                    "steered_reason": None,
                    "successor_of": None,
                    "steered_id": None,
                }


def measure_steering(
    *, rounds: int = 5, answer_tokens: int = 600, after: int = 100, profile: str = PROFILE
) -> dict[str, Any]:
    """A user corrects an agent mid-answer, applied both ways of :data:`STEERING_WAYS`, ``rounds`` times
    (interleaved), against one ws server process.

    Per round and way: an answer of ``answer_tokens`` streams; after ``after`` deltas the correction is sent;
    ``first_ms``/``done_ms`` = ms from the correction to the corrected answer's first delta / its terminal
    event; ``wasted_tokens`` = deltas of the first answer the client received; ``corrected_status`` and
    ``corrected_output_tokens`` of the corrected answer; for ``steer``, how the steered answer ended
    (``steered_status``, ``steered_reason``) and the ``previous_response_id`` of the response the server
    started after it (``successor_of``: the steered answer's id, ``steered_id``, when it continued it).
    """
    rows: list[dict[str, Any]] = []
    with _servers(["ws"], profile) as eps:
        for k in range(rounds):
            steer = asyncio.run(_steer_way(eps["ws"], answer_tokens, after, 2 * k))
            rows.append({"round": k, "way": STEERING_WAYS[0], **steer})
            cancel = asyncio.run(_cancel_way(eps["ws"], answer_tokens, after, 2 * k + 1))
            rows.append({"round": k, "way": STEERING_WAYS[1], **cancel})
    keys = ("first_ms", "done_ms", "wasted_tokens")
    return {
        "parameters": {
            "rounds": rounds,
            "answer_tokens": answer_tokens,
            "after": after,
            "profile": profile,
            "tls": True,
            "correction": FIX,
        },
        "rounds": rows,
        "medians": _per_way(rows, STEERING_WAYS, keys, _median),
    }


def render_steering(doc: Doc, data: Mapping[str, Any]) -> None:
    """The steering section: what is compared and how, the medians per way, the result in one sentence."""
    p, med, rows = data["parameters"], data["medians"], data["rounds"]
    doc.p(
        f"A user corrects an agent while its answer streams. Per round an answer of {p['answer_tokens']} tokens "
        f"streams from one WebSocket-mode server process at {_profile_text(p['profile'])}; once "
        f"{p['after']} tokens have arrived the correction is sent, two ways, interleaved round by round:"
    )
    doc.bullets(
        [
            "**steer**: `response.steer` on the same connection. The answer stops at the next token and ends "
            "`incomplete` (reason `steered`); the server starts the successor by itself, on the same lane, "
            "continuing from the partial answer with the correction.",
            "**cancel and re-create**: the client closes the connection (WebSocket mode has no cancel event) "
            "and sends a new request, with the whole conversation and the correction, on a new connection (its "
            "TLS handshake included). The partial answer was never stored: it is lost.",
        ]
    )
    doc.p(
        "*to first token* and *to corrected answer*: ms from sending the correction to the corrected answer's "
        f"first token and to its end (it is {p['answer_tokens']} tokens long, so the second is mostly decode "
        "time, alike for both ways); *tokens wasted*: tokens of the first answer the client received, those "
        f"still in flight when the correction arrived included. Medians of {p['rounds']} rounds; each round's "
        "values are in `steering.json`."
    )
    doc.p(
        f"Caveats: {LOOPBACK} A real network adds a round trip to both ways and a TCP + TLS handshake (one to two "
        "more round trips) to re-creating. After a close the server may generate a few more tokens before it "
        "notices; the client never sees them, so they are not counted. The conversation here is one short "
        "message: a real one re-sent whole would cost re-creating more prefill."
    )
    df = pd.DataFrame(
        {
            "way": list(STEERING_WAYS),
            "to first token ms": [_num(med[w]["first_ms"]) for w in STEERING_WAYS],
            "to corrected answer ms": [_num(med[w]["done_ms"]) for w in STEERING_WAYS],
            "tokens wasted": [_num(med[w]["wasted_tokens"]) for w in STEERING_WAYS],
        }
    )
    doc.table(round_frame(df))
    steer, cancel = med[STEERING_WAYS[0]], med[STEERING_WAYS[1]]
    steered = [r for r in rows if r["way"] == STEERING_WAYS[0]]
    ok = sum(r["steered_reason"] == "steered" and r["successor_of"] == r["steered_id"] for r in steered)
    doc.p(
        f"Steering reached the corrected answer's first token in {_ms(steer['first_ms'])} against "
        f"{_ms(cancel['first_ms'])} for cancel-and-recreate, and its end in {_ms(steer['done_ms'])} against "
        f"{_ms(cancel['done_ms'])}; it wasted {format_number(_num(steer['wasted_tokens']))} tokens against "
        f"{format_number(_num(cancel['wasted_tokens']))}. In {ok} of {len(steered)} rounds the steered answer "
        "ended `incomplete` (reason `steered`) and the server started its successor."
    )


# ------------------------------------------------------------------------------------------ fan-out


def _body(text: str, tokens: int, **extra: Any) -> dict[str, Any]:
    return {"model": "m", "input": text, "metadata": {"tool_calls": "0", "answer_tokens": str(tokens)}, **extra}


async def _until_terminals(ws: Connection, n: int) -> list[dict[str, Any]]:
    done: list[dict[str, Any]] = []
    while len(done) < n:
        ev = await _event(ws)
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
    async with await _open(ep) as ws:
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
    async with await _open(ep) as ws:
        await ws.send(json.dumps({"type": "response.create", **_body(parent, 8, store=True)}))
        orchestrator = (await _until_terminals(ws, 1))[0]["response"]
    conns = [await _open(ep) for _ in range(n)]
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
    assert ep.ca_path is not None
    limits = httpx.Limits(max_connections=n + 1, max_keepalive_connections=n + 1)
    async with httpx.AsyncClient(verify=load_ca(ep.ca_path), limits=limits, timeout=120.0) as http:
        r = await http.post(f"{ep.url}/responses", json=_body(parent, 8, store=True))
        orchestrator = r.json()
        # warm the pool: each fork then has its connection, as the WebSocket ways have theirs
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


def measure_fanout(
    *,
    subagents: int = 8,
    rounds: int = 10,
    answer_tokens: int = 64,
    parent_kb: float = 8.0,
    profile: str = PROFILE,
) -> dict[str, Any]:
    """One orchestrator response, then ``subagents`` forks of it at once, the three ways of
    :data:`FANOUT_WAYS`, ``rounds`` times (interleaved), against a ws and an https server process.

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
    with _servers(["ws", "https"], profile) as eps:
        for k in range(rounds):
            for way in FANOUT_WAYS:
                server, fn = _FANOUT_FNS[way]
                proc = eps[server].process
                assert proc is not None
                cpu0 = proc.cpu_s()
                row = asyncio.run(fn(eps[server], plan, subagents, answer_tokens, proc.cpu_s))
                rows.append({"round": k, "way": way, "cpu_ms": (proc.cpu_s() - cpu0) * 1000.0, **row})
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
        "medians": _per_way(rows, FANOUT_WAYS, keys, _median),
        "means": _per_way(rows, FANOUT_WAYS, keys, _mean),
    }


def render_fanout(doc: Doc, data: Mapping[str, Any]) -> None:
    """The fan-out section: the three ways, wall time and server CPU per way, the result in one sentence."""
    p, med, mean = data["parameters"], data["medians"], data["means"]
    n = p["subagents"]
    doc.p(
        f"An orchestrator's response (its input: a plan of {p['parent_kb']:g} KB), then {n} sub-agents forked from "
        f"it at once, each writing {p['answer_tokens']} tokens, at {_profile_text(p['profile'])}. The same work three "
        "ways, interleaved round by round, against a WebSocket-mode and an HTTPS server process:"
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
    doc.p(
        f"Caveats: {LOOPBACK} Server CPU is the server process's only (the client's is not counted) and covers "
        "one process per way (the ws ways share one, HTTPS has its own)."
    )
    rounds = data["rounds"]
    df = pd.DataFrame(
        {
            "way": list(FANOUT_WAYS),
            "wall ms": [_num(med[w]["wall_ms"]) for w in FANOUT_WAYS],
            "server CPU, round ms": [_num(mean[w]["cpu_ms"]) for w in FANOUT_WAYS],
            "server CPU, fan-out ms": [_num(mean[w]["fanout_cpu_ms"]) for w in FANOUT_WAYS],
            "completed": [
                f"{sum(r['completed'] for r in rounds if r['way'] == w)}/{n * p['rounds']}" for w in FANOUT_WAYS
            ],
        }
    )
    doc.table(round_frame(df))
    lanes, conns, https = (med[w] for w in FANOUT_WAYS)
    cpu = [mean[w]["cpu_ms"] for w in FANOUT_WAYS]
    doc.p(
        f"One connection's lanes finished the fan-out of {n} sub-agents in {_ms(lanes['wall_ms'])} against "
        f"{_ms(conns['wall_ms'])} over {n} WebSocket connections and {_ms(https['wall_ms'])} over {n} HTTPS "
        f"requests, for {_ms(cpu[0])}, {_ms(cpu[1])} and {_ms(cpu[2])} of server CPU per round."
    )


# ------------------------------------------------------------------------------------------ warm-up


async def _turn(ws: Connection, event: dict[str, Any]) -> tuple[float | None, float, dict[str, Any]]:
    """Send ``event``; returns (TTFT ms or None, ms to the terminal event, the terminal event)."""
    t0 = time.perf_counter()
    await ws.send(json.dumps(event))
    first = None
    while True:
        ev = await _event(ws)
        if first is None and ev.get("type") in DELTAS:
            first = (time.perf_counter() - t0) * 1000.0
        if ev.get("type") in TERMINAL_TYPES:
            if ev["type"] != "response.completed":
                raise RuntimeError(f"a warm-up turn did not complete: {ev}")
            return first, (time.perf_counter() - t0) * 1000.0, ev


def _cached(ev: Mapping[str, Any]) -> tuple[int, int]:
    """(cached input tokens, input tokens) of a completed response's usage."""
    usage = ev["response"]["usage"]
    return int((usage.get("input_tokens_details") or {}).get("cached_tokens") or 0), int(usage["input_tokens"])


async def _warmup_round(ep: Endpoint, instructions: str, k: int) -> dict[str, Any]:
    tools = Toolbox().definitions()
    task = {"model": "m", "store": False, "metadata": {"tool_calls": "0", "answer_tokens": "16", "seed": str(k)}}
    out: dict[str, Any] = {}
    # each request's instructions are its own from their first token, so the engine's prefix cache (64-token
    # blocks) serves neither one round from another nor the warm-up from this round's cold turn
    async with await _open(ep) as ws:
        cold = {"instructions": f"[round {k} cold] {instructions}", "tools": tools, "input": "go"}
        ttft, _, ev = await _turn(ws, {"type": "response.create", **task, **cold})
        out["cold_ttft_ms"] = ttft
        out["cold_cached_tokens"], out["cold_input_tokens"] = _cached(ev)
    async with await _open(ep) as ws:
        warm = {"type": "response.create", **task, "instructions": f"[round {k} warm] {instructions}", "tools": tools}
        _, out["warmup_ms"], ev = await _turn(ws, {**warm, "input": [], "generate": False})
        out["warmup_output_tokens"] = ev["response"]["usage"]["output_tokens"]
        # instructions are not inherited through previous_response_id: the first turn sends them again, as a
        # Responses client does every turn, and the server finds them already prefilled
        first = {**warm, "input": "go", "previous_response_id": ev["response"]["id"]}
        ttft, _, ev = await _turn(ws, first)
        out["warm_ttft_ms"] = ttft
        out["warm_cached_tokens"], out["warm_input_tokens"] = _cached(ev)
    return out


def measure_warmup(*, rounds: int = 15, instructions_kb: float = 16.0, profile: str = PROFILE) -> dict[str, Any]:
    """The first turn's TTFT cold and warmed by ``generate: false``, ``rounds`` times (interleaved), against one
    ws server process, with ``instructions_kb`` KB of instructions and the agent's tool set
    (:class:`clients.agent.Toolbox`).

    Per round, each on a fresh connection: ``cold_ttft_ms`` (instructions, tools and the task in one request)
    and ``warm_ttft_ms`` (the first turn after a ``generate: false`` request sent the same instructions and
    tools; ``warmup_ms``: that request's own time to ``response.completed``, ``warmup_output_tokens`` what it
    generated); ``*_cached_tokens`` / ``*_input_tokens``: the first turn's ``usage.input_tokens`` and, of them,
    ``input_tokens_details.cached_tokens`` (served from a KV cache, not prefilled).
    """
    instructions = "You are a careful coding agent; read before you write. " * int(instructions_kb * 1024 / 56)
    with _servers(["ws"], profile) as eps:
        rows = [
            {"round": k, "way": "first turn", **asyncio.run(_warmup_round(eps["ws"], instructions, k))}
            for k in range(rounds)
        ]
    keys = [k for k in rows[0] if k not in ("round", "way")] if rows else []
    return {
        "parameters": {
            "rounds": rounds,
            "instructions_kb": instructions_kb,
            "tools": len(Toolbox().definitions()),
            "profile": profile,
            "tls": True,
        },
        "rounds": rows,
        "medians": {k: _median(r[k] for r in rows) for k in keys},
    }


def render_warmup(doc: Doc, data: Mapping[str, Any]) -> None:
    """The warm-up section: cold against warmed first-turn TTFT, cached tokens, the result in one sentence."""
    p, med = data["parameters"], data["medians"]
    doc.p(
        "An agent's first request carries its instructions and tool definitions before the task. WebSocket mode "
        "lets a client send them ahead, as `response.create` with `generate: false` (the server prepares the "
        "state and the model prefills it; nothing is generated), then start the first real turn from that "
        f"response (`previous_response_id`). Per round ({p['rounds']} rounds at {_profile_text(p['profile'])}, with "
        f"{p['instructions_kb']:g} KB of instructions and the agent's {p['tools']} tool definitions), each on a "
        "fresh connection to one "
        "WebSocket-mode server process: **cold**, the first turn as usual (instructions, tools and task in one "
        "request); **warmed**, the `generate: false` request first, then the first turn. Instructions are not "
        "inherited through `previous_response_id`, so the warmed turn sends them again, as a Responses client "
        "does every turn, and the server finds them prefilled."
    )
    doc.p(
        "*TTFT*: ms from sending the first turn to its first token (medians). *cached tokens*: of the turn's "
        "input tokens, those the server reports as cached (`usage.input_tokens_details.cached_tokens`: served "
        "from the connection's KV state, not prefilled). The warm-up request's own time is shown apart: it can "
        "overlap the agent's start-up, before the task is known. Every request's instructions differ from their "
        "first token, so the engine's prefix cache serves no request from another."
    )
    doc.p(
        f"Caveats: {LOOPBACK} What warming saves is the prefill of the instructions and tools, so it grows with "
        "their size and the model's prefill speed; a server without a connection-local KV state saves less."
    )
    df = pd.DataFrame(  # object columns: None (not applicable) shows as "—", numbers as doc.cell_text rounds them
        {
            "request": ["cold first turn", "warmed first turn", "the warm-up (generate: false)"],
            "TTFT ms": [med["cold_ttft_ms"], med["warm_ttft_ms"], None],
            "to completed ms": [None, None, med["warmup_ms"]],
            "input tokens": [med["cold_input_tokens"], med["warm_input_tokens"], None],
            "cached tokens": [med["cold_cached_tokens"], med["warm_cached_tokens"], None],
        },
        dtype=object,
    )
    doc.table(round_frame(df))
    cold, warm = _num(med["cold_ttft_ms"]), _num(med["warm_ttft_ms"])
    change = f" ({warm / cold - 1:+.0%})" if cold > 0 and math.isfinite(warm) else ""
    doc.p(
        f"A first turn after `generate: false` reached its first token in {_ms(warm)} against {_ms(cold)} cold"
        f"{change}, with {format_number(_num(med['warm_cached_tokens']))} of its "
        f"{format_number(_num(med['warm_input_tokens']))} input tokens cached; the warm-up request itself took "
        f"{_ms(med['warmup_ms'])}, before the task was known."
    )


# ------------------------------------------------------------------------------------------ extras


def _sized(fn: Callable[..., dict[str, Any]], sizes: Mapping[str, Mapping[str, Any]]) -> Callable[[bool], Any]:
    return lambda quick: fn(**sizes["quick" if quick else "full"])


EXTRAS = (
    Extra(
        "steering",
        "Steering: correcting a running answer",
        _sized(measure_steering, STEERING_SIZES),
        render_steering,
        "python scripts/steer_bench.py",
        (5.0, 11.0),  # 4.1 s, 10.3 s measured
    ),
    Extra(
        "fanout",
        "Fan-out: one orchestrator, N sub-agents",
        _sized(measure_fanout, FANOUT_SIZES),
        render_fanout,
        "python scripts/fanout.py",
        (5.0, 9.0),  # 4.8 s, 10.2 s measured on a busy machine (load 2.5): two servers start side by side
    ),
    Extra(
        "warmup",
        "Warm-up: first-turn TTFT with generate: false",
        _sized(measure_warmup, WARMUP_SIZES),
        render_warmup,
        "python scripts/warmup.py",
        (2.5, 4.5),  # 1.8 s, 3.8 s measured
    ),
)
"""The three sections of ``turnbench bench`` (:mod:`loadtests.extras`); ``est_s`` measured on a quiet 2-core
machine (server start-up included)."""
