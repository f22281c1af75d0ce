"""Steering, measured: a mid-answer correction as ``response.steer`` against closing the connection and
re-creating the request with the whole conversation (time to the corrected answer's first token and end, tokens
of the first answer wasted). A section of ``turnbench bench``; ``scripts/steer_bench.py`` runs it alone.
See docs/guides/steering.md.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pandas as pd
from websockets.asyncio.connection import Connection

from loadtests.execution.procs import Endpoint
from loadtests.extras.common import (
    FIX,
    PROFILE,
    TASK,
    as_float,
    median_of,
    ms_text,
    next_event,
    open_ws,
    per_way,
    running_servers,
    server_text,
    setting_text,
)
from loadtests.extras.registry import Extra, ExtraResult
from loadtests.present.doc import Doc, format_number, round_frame
from turnbench.schema import TERMINAL_TYPES

WAYS = ("steer", "cancel and re-create")
SIZES: dict[str, dict[str, Any]] = {
    "full": {"rounds": 5, "answer_tokens": 600, "after": 100},
    "quick": {"rounds": 3, "answer_tokens": 300, "after": 50},
}
""":func:`measure`'s arguments for ``turnbench bench`` (``full``, the script's defaults) and
``bench --quick``."""


def _create(answer: int, **extra: Any) -> str:
    meta = {"tool_calls": "0", "answer_tokens": str(answer)}
    return json.dumps({"type": "response.create", "model": "m", "store": False, "metadata": meta, **extra})


async def _first_part(ws: Connection, answer: int, after: int, k: int) -> tuple[str, int]:
    """Start the answer; return (its id, deltas received) once ``after`` deltas have arrived."""
    await ws.send(_create(answer, input=f"[{k}] {TASK}"))
    rid, got = "", 0
    while got < after:
        ev = await next_event(ws)
        if ev["type"] == "response.created":
            rid = ev["response"]["id"]
        elif ev["type"] == "response.output_text.delta":
            got += 1
        elif ev["type"] in TERMINAL_TYPES:
            raise RuntimeError(f"the first answer ended after {got} of {after} deltas: {ev}")
    return rid, got


async def _steer_way(ep: Endpoint, answer: int, after: int, k: int) -> dict[str, Any]:
    """The correction as ``response.steer``; the server starts the successor by itself."""
    async with await open_ws(ep) as ws:
        rid, got = await _first_part(ws, answer, after, k)
        t0 = time.perf_counter()
        await ws.send(json.dumps({"type": "response.steer", "previous_response_id": rid, "input": FIX}))
        row: dict[str, Any] = {"steered_status": None, "steered_reason": None, "successor_of": None}
        wasted, first, last = got, None, None
        current = rid
        while last is None:
            ev = await next_event(ws)
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
    ws = await open_ws(ep)
    _, got = await _first_part(ws, answer, after, k)
    t0 = time.perf_counter()
    await ws.close()
    history = [
        {"type": "message", "role": "user", "content": f"[{k}] {TASK}"},
        {"type": "message", "role": "user", "content": FIX},
    ]
    first = None
    async with await open_ws(ep) as ws2:
        await ws2.send(_create(answer, input=history))
        while True:
            ev = await next_event(ws2)
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


def measure(*, rounds: int = 5, answer_tokens: int = 600, after: int = 100, profile: str = PROFILE) -> ExtraResult:
    """A user corrects an agent mid-answer, applied both ways of :data:`WAYS`, ``rounds`` times
    (interleaved), against one ws server process.

    Per round and way: an answer of ``answer_tokens`` streams; after ``after`` deltas the correction is sent;
    ``first_ms``/``done_ms`` = ms from the correction to the corrected answer's first delta / its terminal
    event; ``wasted_tokens`` = deltas of the first answer the client received; ``corrected_status`` and
    ``corrected_output_tokens`` of the corrected answer; for ``steer``, how the steered answer ended
    (``steered_status``, ``steered_reason``) and the ``previous_response_id`` of the response the server
    started after it (``successor_of``: the steered answer's id, ``steered_id``, when it continued it).
    """
    rows: list[dict[str, Any]] = []
    with running_servers(["ws"], profile) as eps:
        for k in range(rounds):
            steer = asyncio.run(_steer_way(eps["ws"], answer_tokens, after, 2 * k))
            rows.append({"round": k, "way": WAYS[0], **steer})
            cancel = asyncio.run(_cancel_way(eps["ws"], answer_tokens, after, 2 * k + 1))
            rows.append({"round": k, "way": WAYS[1], **cancel})
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
        "medians": per_way(rows, WAYS, keys, median_of),
    }


def render(doc: Doc, data: ExtraResult) -> None:
    """The steering section: what is compared and how, the medians per way, the result in one sentence."""
    p, med, rows = data["parameters"], data["medians"], data["rounds"]
    doc.p(
        f"A user corrects an agent while its answer streams. Per round an answer of {p['answer_tokens']} tokens "
        f"streams from {server_text(data)}; once "
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
        f"Caveats: {setting_text(data)} A real network adds a round trip to both ways and a TCP + TLS handshake "
        "(one to two more round trips) to re-creating. After a close the server may generate a few more tokens "
        "before it notices; the client never sees them, so they are not counted. The conversation here is one "
        "short message: a real one re-sent whole would cost re-creating more prefill."
    )
    df = pd.DataFrame(
        {
            "way": list(WAYS),
            "to first token ms": [as_float(med[w]["first_ms"]) for w in WAYS],
            "to corrected answer ms": [as_float(med[w]["done_ms"]) for w in WAYS],
            "tokens wasted": [as_float(med[w]["wasted_tokens"]) for w in WAYS],
        }
    )
    doc.table(round_frame(df))
    steer, cancel = med[WAYS[0]], med[WAYS[1]]
    steered = [r for r in rows if r["way"] == WAYS[0]]
    ok = sum(r["steered_reason"] == "steered" and r["successor_of"] == r["steered_id"] for r in steered)
    doc.p(
        f"Steering reached the corrected answer's first token in {ms_text(steer['first_ms'])} against "
        f"{ms_text(cancel['first_ms'])} for cancel-and-recreate, and its end in {ms_text(steer['done_ms'])} against "
        f"{ms_text(cancel['done_ms'])}; it wasted {format_number(as_float(steer['wasted_tokens']))} tokens against "
        f"{format_number(as_float(cancel['wasted_tokens']))}. In {ok} of {len(steered)} rounds the steered answer "
        "ended `incomplete` (reason `steered`) and the server started its successor."
    )


EXTRA = Extra(
    "steering",
    "Steering: correcting a running answer",
    lambda quick: measure(**SIZES["quick" if quick else "full"]),
    render,
    "python scripts/steer_bench.py",
    (5.0, 11.0),  # 4.1 s, 10.3 s measured
    needs=("ws", "steer", "usage"),
)
"""This measurement as a section of ``turnbench bench``; ``est_s`` measured on a quiet 2-core machine (server
start-up included)."""
