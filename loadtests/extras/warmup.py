"""Warm-up, measured: the first turn's TTFT cold and after ``generate: false`` sent its instructions and tools
ahead, and what the server reports as cached input tokens for each. A section of ``turnbench bench``;
``scripts/warmup.py`` runs it alone. See docs/protocol/websocket-mode.md.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Mapping
from typing import Any

import pandas as pd
from websockets.asyncio.connection import Connection

from clients.agent import Toolbox
from loadtests.execution.procs import Endpoint
from loadtests.extras.common import (
    DELTAS,
    PROFILE,
    as_float,
    median_of,
    ms_text,
    next_event,
    open_ws,
    running_servers,
    server_text,
    setting_text,
)
from loadtests.extras.registry import Extra, ExtraResult
from loadtests.present.doc import Doc, format_number, round_frame
from turnbench.schema import TERMINAL_TYPES

SIZES: dict[str, dict[str, Any]] = {
    "full": {"rounds": 15, "instructions_kb": 16.0},
    "quick": {"rounds": 4, "instructions_kb": 16.0},
}
""":func:`measure`'s arguments for ``turnbench bench`` (``full``, the script's defaults) and ``bench --quick``."""


async def _turn(ws: Connection, event: dict[str, Any]) -> tuple[float | None, float, dict[str, Any]]:
    """Send ``event``; returns (TTFT ms or None, ms to the terminal event, the terminal event)."""
    t0 = time.perf_counter()
    await ws.send(json.dumps(event))
    first = None
    while True:
        ev = await next_event(ws)
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
    async with await open_ws(ep) as ws:
        cold = {"instructions": f"[round {k} cold] {instructions}", "tools": tools, "input": "go"}
        ttft, _, ev = await _turn(ws, {"type": "response.create", **task, **cold})
        out["cold_ttft_ms"] = ttft
        out["cold_cached_tokens"], out["cold_input_tokens"] = _cached(ev)
    async with await open_ws(ep) as ws:
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


def measure(*, rounds: int = 15, instructions_kb: float = 16.0, profile: str = PROFILE) -> ExtraResult:
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
    with running_servers(["ws"], profile) as eps:
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
        "medians": {k: median_of(r[k] for r in rows) for k in keys},
    }


def render(doc: Doc, data: ExtraResult) -> None:
    """The warm-up section: cold against warmed first-turn TTFT, cached tokens, the result in one sentence."""
    p, med = data["parameters"], data["medians"]
    doc.p(
        "An agent's first request carries its instructions and tool definitions before the task. WebSocket mode "
        "lets a client send them ahead, as `response.create` with `generate: false` (the server prepares the "
        "state and the model prefills it; nothing is generated), then start the first real turn from that "
        f"response (`previous_response_id`). Per round ({p['rounds']} rounds, with "
        f"{p['instructions_kb']:g} KB of instructions and the agent's {p['tools']} tool definitions), each on a "
        f"fresh connection to {server_text(data)}: **cold**, the first turn as usual (instructions, tools and "
        "task in one request); **warmed**, the `generate: false` request first, then the first turn. "
        "Instructions are not inherited through `previous_response_id`, so the warmed turn sends them again, "
        "as a Responses client does every turn, and the server finds them prefilled."
    )
    doc.p(
        "*TTFT*: ms from sending the first turn to its first token (medians). *cached tokens*: of the turn's "
        "input tokens, those the server reports as cached (`usage.input_tokens_details.cached_tokens`: served "
        "from the connection's KV state, not prefilled). The warm-up request's own time is shown apart: it can "
        "overlap the agent's start-up, before the task is known. Every request's instructions differ from their "
        "first token, so the engine's prefix cache serves no request from another."
    )
    doc.p(
        f"Caveats: {setting_text(data)} What warming saves is the prefill of the instructions and tools, so it "
        "grows with their size and the model's prefill speed; a server without a connection-local KV state saves less."
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
    cold, warm = as_float(med["cold_ttft_ms"]), as_float(med["warm_ttft_ms"])
    change = f" ({warm / cold - 1:+.0%})" if cold > 0 and math.isfinite(warm) else ""
    doc.p(
        f"A first turn after `generate: false` reached its first token in {ms_text(warm)} against {ms_text(cold)} cold"
        f"{change}, with {format_number(as_float(med['warm_cached_tokens']))} of its "
        f"{format_number(as_float(med['warm_input_tokens']))} input tokens cached; the warm-up request itself took "
        f"{ms_text(med['warmup_ms'])}, before the task was known."
    )


EXTRA = Extra(
    "warmup",
    "Warm-up: first-turn TTFT with generate: false",
    lambda quick: measure(**SIZES["quick" if quick else "full"]),
    render,
    "python scripts/warmup.py",
    (2.5, 4.5),  # 1.8 s, 3.8 s measured
    needs=("ws", "ws_continuation", "generate_false", "usage"),
)
"""This measurement as a section of ``turnbench bench``; ``est_s`` measured on a quiet 2-core machine (server
start-up included)."""
