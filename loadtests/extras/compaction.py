"""Compaction, measured: a long coding-agent rollout that compacts its history every K tool-calling turns (the
scenario ``coding-agent-compact``), over every transport and state strategy, through the runner. Per cell: the
compact call's own time and bytes, the turn right after a compaction against the turn right before it (the
same context, give or take one tool output) and against ordinary turns, the bytes and input tokens a turn sends
around a compaction, and the chain restarting: the tokens the server renders for the turn after a compaction
(all of them, the connection cache and the store chain start again) against those of the turn before (only the
new items, where the state chains). A section of ``turnbench bench``; ``scripts/compaction.py`` runs it alone.
See docs/guides/compaction.md.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from loadtests.analysis.estimators import bootstrap_ci, finite, ratio_ci
from loadtests.execution.plan import Collected, RunConfig, plan_cells
from loadtests.extras.common import LOOPBACK, PROFILE, as_float, ci_range, ci_text, profile_text
from loadtests.extras.registry import OWN_SERVERS, Extra, ExtraResult
from loadtests.present.doc import Doc, format_number
from loadtests.present.plots import bytes_over_rollout
from loadtests.runs import runner
from loadtests.workload.scenarios import load_scenario

__all__ = ["EXTRA", "SCENARIO", "SIZES", "TRANSPORTS", "cell_stats", "conclusion", "measure", "plot", "render"]

SCENARIO = "coding-agent-compact"
TRANSPORTS = ("https", "ws", "grpc")
SIZES: dict[str, dict[str, Any]] = {
    "full": {"tool_calls": 26, "compact_every": 8, "rollouts": 2, "warmup": 0},
    "quick": {"tool_calls": 14, "compact_every": 6, "rollouts": 1, "warmup": 0},
}
""":func:`measure`'s arguments for ``turnbench bench`` (``full``) and ``bench --quick``: the scenario cut short so
the section stays within its share of the bench's time (``turnbench run --scenario coding-agent-compact`` runs
it whole); a full run is 3 compactions per rollout and 2 rollouts per cell, a quick one 2 and 1. The calls do not
end on a compaction, so the turn after each one calls a tool, as the turn before it does."""

_STAGE = "stage_render"


def turn_rows(collected: Collected) -> list[dict[str, Any]]:
    """One row per measured request (warm-up rollouts left out): where it ran, its phase, whether it is the
    model turn right before a compaction call (``before``), its time, bytes and tokens, and what the server
    rendered for it (``render_items``, ``render_tokens``: the items and tokens it tokenized afresh; ``redo_ms``: the
    wall time of its ``safety`` and ``render`` stages, the work a chained turn does for its new items only)."""
    rows: list[dict[str, Any]] = []
    for s in collected.samples:
        if s.warmup:
            continue
        turns = s.rollout.turns
        for k, t in enumerate(turns):
            render, safety = t.server_stages.get("render"), t.server_stages.get("safety")
            redo = [x.wall_ns for x in (render, safety) if x is not None]
            nxt = turns[k + 1] if k + 1 < len(turns) else None
            rows.append(
                {
                    "transport": s.cell.transport,
                    "state": s.cell.state,
                    "round": s.round,
                    "rollout": s.rollout.rollout_id,
                    "turn": t.turn_index,
                    "phase": t.phase,
                    "output_kind": t.output_kind,
                    "before": t.phase != "compact" and nxt is not None and nxt.phase == "compact",
                    "success": t.success,
                    "error_code": t.error_code,
                    "turn_ms": t.turn_ms,
                    "ttft_ms": t.ttft_ms,
                    "bytes_up": t.bytes_up,
                    "input_bytes": t.input_bytes,
                    "input_tokens": t.input_tokens,
                    "cached_tokens": t.cached_tokens,
                    "render_items": render.items if render is not None else None,
                    "render_tokens": render.tokens if render is not None else None,
                    "redo_ms": sum(redo) / 1e6 if redo else None,
                }
            )
    return rows


def _ci(values: Iterable[Any]) -> list[float]:
    est, lo, hi = bootstrap_ci(np.asarray([as_float(v) for v in values], dtype=np.float64))
    return [est, lo, hi]


def _median(values: Iterable[Any]) -> float:
    arr = finite(np.asarray([as_float(v) for v in values], dtype=np.float64))
    return float(np.median(arr)) if arr.size else math.nan


def cell_stats(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per transport/state, in the order the rows name them: ``[median, lo, hi]`` (a 95% bootstrap interval of the
    median) of the compact call's ms, of ordinary turns' (phase ``turn``, not right before a compaction), of the
    turns right before and right after a compaction (model turns that called a tool only: the final answer,
    which decodes far longer, would weigh on whichever group it falls in), and the ratio after ÷ before (its
    interval resampling both); medians of bytes sent, input tokens, tokens rendered, the safety and render
    stages' ms and the cached share of the input, before and after. Successful requests only; ``failed`` counts
    the others."""
    df = pd.DataFrame(list(rows))
    if df.empty:
        return []
    out: list[dict[str, Any]] = []
    for (transport, state), g in df.groupby(["transport", "state"], sort=False):
        ok = g[g["success"].astype(bool)]
        calls = ok["output_kind"] == "function_call"  # the final answer decodes far longer: not compared
        before = ok[ok["before"].astype(bool) & calls]
        compact, after = ok[ok["phase"] == "compact"], ok[(ok["phase"] == "after_compact") & calls]
        turn = ok[(ok["phase"] == "turn") & ~ok["before"].astype(bool) & calls]
        ratio = ratio_ci(
            pd.to_numeric(after["turn_ms"], errors="coerce"), pd.to_numeric(before["turn_ms"], errors="coerce")
        )

        def cached_share(part: pd.DataFrame) -> float:
            tokens = pd.to_numeric(part["input_tokens"], errors="coerce")
            cached = pd.to_numeric(part["cached_tokens"], errors="coerce")
            return _median((cached / tokens.where(tokens > 0)).tolist())

        out.append(
            {
                "transport": str(transport),
                "state": str(state),
                "rollouts": int(g[["round", "rollout"]].drop_duplicates().shape[0]),
                "compactions": len(compact),
                "failed": int((~g["success"].astype(bool)).sum()),
                "compact_ms": _ci(compact["turn_ms"]),
                "turn_ms": _ci(turn["turn_ms"]),
                "before_ms": _ci(before["turn_ms"]),
                "after_ms": _ci(after["turn_ms"]),
                "after_vs_before": list(ratio),
                "compact_bytes_up": _median(compact["bytes_up"]),
                "turn_bytes_up": _median(turn["bytes_up"]),
                "before_bytes_up": _median(before["bytes_up"]),
                "after_bytes_up": _median(after["bytes_up"]),
                "before_input_tokens": _median(before["input_tokens"]),
                "after_input_tokens": _median(after["input_tokens"]),
                "before_render_tokens": _median(before["render_tokens"]),
                "after_render_tokens": _median(after["render_tokens"]),
                "before_redo_ms": _median(before["redo_ms"]),
                "after_redo_ms": _median(after["redo_ms"]),
                "before_cached_share": cached_share(before),
                "after_cached_share": cached_share(after),
            }
        )
    return out


def measure(
    *,
    tool_calls: int = 26,
    compact_every: int = 8,
    rollouts: int = 2,
    warmup: int = 0,
    profile: str = PROFILE,
    transports: Sequence[str] = TRANSPORTS,
) -> ExtraResult:
    """Run the ``coding-agent-compact`` scenario with ``tool_calls`` calls compacted every ``compact_every``,
    ``rollouts`` measured rollouts (after ``warmup``) per cell, on every state strategy of ``transports``, as
    ``turnbench run`` runs it (a server process per protocol, TLS on, loopback); the WebSocket and gRPC cells
    compact through the HTTPS server. Returns: ``parameters``, ``rows`` (one per request: :func:`turn_rows`),
    ``cells`` (:func:`cell_stats`)."""
    sc = load_scenario(SCENARIO).replace(
        tool_calls=tool_calls,
        compact_every=compact_every,
        rollouts=rollouts,
        warmup=warmup,
        rounds=min(rollouts, 2),
        profile=profile,
    )
    config = RunConfig(scenarios=[sc], transports=list(transports), quiet=True)
    collected = runner.measure(config, plan_cells(config))
    rows = turn_rows(collected)
    return {
        "parameters": {
            "scenario": SCENARIO,
            "tool_calls": tool_calls,
            "compact_every": compact_every,
            "rollouts": rollouts,
            "warmup": warmup,
            "profile": profile,
            "tool_output_bytes": sc.tool_output_bytes,
            "tool_output_sigma": sc.tool_output_sigma,
            "tls": sc.tls,
            "transports": list(transports),
        },
        "rows": rows,
        "cells": cell_stats(rows),
    }


def _kib(v: Any) -> float:
    return as_float(v) / 1024.0


def _times(v: Any) -> str:
    return f"{format_number(as_float(v))}×"


def conclusion(cells: Sequence[Mapping[str, Any]]) -> str:
    """One sentence from the numbers: where compaction cut the bytes of a turn the most (the turn after it
    against the turn before it), and where the turn after a compaction cost the most time against the turn before
    it (with its interval) and how many more tokens the server rendered for it there."""
    known = [c for c in cells if math.isfinite(as_float(ci_range(c.get("after_vs_before"))[0]))]
    sized = [
        c
        for c in cells
        if math.isfinite(as_float(c.get("after_bytes_up")))
        and math.isfinite(as_float(c.get("before_bytes_up")))
        and as_float(c.get("before_bytes_up")) > 0
    ]
    if not known or not sized:
        return "No cell completed a compaction with a turn before and after it: there is nothing to compare."

    def name(c: Mapping[str, Any]) -> str:
        return f"{c.get('transport')}/{c.get('state')}"

    def share(c: Mapping[str, Any]) -> float:
        return as_float(c.get("after_bytes_up")) / as_float(c.get("before_bytes_up"))

    smallest = min(sized, key=share)
    largest = max(sized, key=share)
    slow = max(known, key=lambda c: ci_range(c.get("after_vs_before"))[0])
    r, lo, hi = ci_range(slow.get("after_vs_before"))
    return (
        f"The turn after a compaction sent {_times(share(smallest))} the bytes of the turn before it on "
        f"{name(smallest)} and {_times(share(largest))} on {name(largest)}; it took {_times(r)} the time of the turn "
        f"before it on {name(slow)} (95% interval {_times(lo)}–{_times(hi)}), where the server rendered "
        f"{format_number(as_float(slow.get('after_render_tokens')))} tokens for it against "
        f"{format_number(as_float(slow.get('before_render_tokens')))} for the turn before "
        f"({format_number(as_float(slow.get('after_redo_ms')))} ms of screening and rendering against "
        f"{format_number(as_float(slow.get('before_redo_ms')))} ms)."
    )


def render(doc: Doc, data: ExtraResult) -> None:
    """The compaction section: the workload, two tables (time; bytes and tokens), the result in one sentence."""
    p, cells = data["parameters"], data.get("cells", [])
    k = p.get("compact_every")
    doc.p(
        f"A coding agent's rollout of {p.get('tool_calls')} tool calls (tool outputs of "
        f"{format_number(as_float(p.get('tool_output_bytes')))} bytes median) compacts its history after every "
        f"{k}th tool-calling turn, as Codex does: `POST /v1/responses/compact` with the conversation so far, then "
        f"the conversation goes on from the compacted output (the user messages and one compaction item) with the "
        f"tool outputs as new input, at {profile_text(str(p.get('profile')))}; {p.get('rollouts')} rollout(s) per "
        "transport and state strategy, cells interleaved, each server in its own process. What each strategy "
        "sends after a compaction:"
    )
    doc.bullets(
        [
            "**full**: the compacted items and the new input, instead of the whole history.",
            "**store** and **connection**: the same, once, without `previous_response_id`: a new chain. The "
            "connection cache (WebSocket mode, gRPC) and the store chain start again from it; later turns chain "
            "on it as before. HTTPS with `store` compacts by the stored response's id and uploads no history.",
            "WebSocket-mode and gRPC clients compact over HTTPS, on the HTTPS server of the same deployment (the "
            "WebSocket-mode server answers only upgrades; the compaction item is signed with the deployment's "
            "key, so either server reads it).",
        ]
    )
    doc.p(
        "*compact call*: ms from sending `POST /v1/responses/compact` to its reply. *ordinary turn*: every model "
        "turn that is neither right before nor right after a compaction; *before* and *after*: the model turn "
        "right before a compaction call and the one right after it, whose contexts differ by one tool output. "
        "Only turns that called a tool are compared (the final answer decodes far longer). "
        "Turn times: ms from sending to the final event, median [95% bootstrap interval of the median]; *after ÷ "
        "before*: the ratio of the two medians, its interval resampling both. *rendered tokens*: what the server "
        "tokenized afresh for the turn (the `render` stage): a chained turn renders only its new items. *cached*: "
        "the share of input tokens the engine's prefix cache served. Raw rows in `compaction.json`."
    )
    doc.p(
        f"Caveats: {LOOPBACK} turnbench's compaction keeps the replaced items themselves (signed, compressed), so "
        "a continuation has the same context token for token: input tokens do not drop as after the real API's "
        "summary, only the bytes on the wire do. Few rollouts: the intervals are wide."
    )
    if not cells:
        doc.p("*No request completed: nothing to show.*")
        return
    names = [f"{c.get('transport')}/{c.get('state')}" for c in cells]
    times = pd.DataFrame(
        {
            "transport/state": names,
            "compactions": [c.get("compactions") for c in cells],
            "compact call ms": [ci_text(c.get("compact_ms")) for c in cells],
            "ordinary turn ms": [ci_text(c.get("turn_ms")) for c in cells],
            "before ms": [ci_text(c.get("before_ms")) for c in cells],
            "after ms": [ci_text(c.get("after_ms")) for c in cells],
            "after ÷ before": [ci_text(c.get("after_vs_before")) for c in cells],
            "failed": [c.get("failed") for c in cells],
        }
    )
    doc.table(times)
    wire = pd.DataFrame(
        {
            "transport/state": names,
            "compact call KiB sent": [_kib(c.get("compact_bytes_up")) for c in cells],
            "ordinary KiB sent": [_kib(c.get("turn_bytes_up")) for c in cells],
            "before KiB sent": [_kib(c.get("before_bytes_up")) for c in cells],
            "after KiB sent": [_kib(c.get("after_bytes_up")) for c in cells],
            "input tokens before": [as_float(c.get("before_input_tokens")) for c in cells],
            "input tokens after": [as_float(c.get("after_input_tokens")) for c in cells],
        }
    )
    doc.table(wire)
    doc.p(
        "The chain restarting: what the server did again for the turn after a compaction. A turn chained on the "
        "connection cache (WebSocket mode and gRPC, `connection` and `store`) screens and renders only its new "
        "items; the first turn of a new chain does it for the whole compacted conversation, as `full` does every "
        "turn (and HTTPS `store`, which hydrates the stored items, not their tokens)."
    )
    chain = pd.DataFrame(
        {
            "transport/state": names,
            "rendered tokens before": [as_float(c.get("before_render_tokens")) for c in cells],
            "rendered tokens after": [as_float(c.get("after_render_tokens")) for c in cells],
            "safety + render ms before": [as_float(c.get("before_redo_ms")) for c in cells],
            "safety + render ms after": [as_float(c.get("after_redo_ms")) for c in cells],
            "cached before": [as_float(c.get("before_cached_share")) for c in cells],
            "cached after": [as_float(c.get("after_cached_share")) for c in cells],
        }
    )
    doc.table(chain)
    doc.p(conclusion(cells))


def plot(data: ExtraResult, path: Path) -> str | None:
    """The bytes each request of a rollout sends, per transport and state, compaction calls marked."""
    drawn = bytes_over_rollout(pd.DataFrame(data.get("rows", [])), path)
    if drawn is None:
        return None
    return (
        "Bytes sent per request over the rollout (median over rollouts): the compaction calls (×) and the new "
        "chain each starts."
    )


EXTRA = Extra(
    "compaction",
    "Compaction: a long rollout that compacts its history",
    lambda quick: measure(**SIZES["quick" if quick else "full"]),
    render,
    "python scripts/compaction.py",
    (10.0, 25.0),  # 14 s and 33 s measured on a busy 2-core machine (load 4): three servers start side by side
    plot,
    needs=(OWN_SERVERS,),
    own_why="it starts turnbench's servers and reads the tokens they render for each turn",
)
"""This measurement as a section of ``turnbench bench``; ``est_s`` for a quiet 2-core machine (server start-up
included)."""
