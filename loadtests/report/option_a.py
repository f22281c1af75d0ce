"""Option A against option B: the report's comparison of one long response per rollout (``ws-long``) with
``previous_response_id`` chaining (``ws``, what shipped), from the cells of one run.

Both run the same agent loop and the same metrics (:mod:`clients.ws_long_client` maps the loop's turns onto
option A's ``response.done`` / ``response.append``), on the same WebSocket server, interleaved in one run, so
their ratio is read like the headline's. Per scenario, profile and concurrency where a run has both
``ws-long/connection`` and ``ws/connection`` (default variant, closed loop), :func:`comparison` gives the
rollout medians, their ratio with its bootstrap 95% interval, what A saves per turn, and the server CPU per
turn of each; :func:`add_section` renders it with the migration cost of adopting A (``migration.json``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
import pandas as pd

from loadtests.analysis.estimators import ratio_ci
from loadtests.analysis.headline import N_BOOT_RATIO
from loadtests.analysis.records import CellSummary
from loadtests.execution.plan import CellRecord
from loadtests.present.doc import Doc, format_number
from loadtests.workload.scenarios import State

__all__ = ["A", "B", "Comparison", "add_section", "comparison"]

A: tuple[str, State] = ("ws-long", "connection")
"""Option A's cell: the whole rollout one response."""
B: tuple[str, State] = ("ws", "connection")
"""Option B's cell: a response per turn, chained by ``previous_response_id`` through the connection cache."""

_STAGES = ("parse", "validate", "resolve", "safety", "render", "route", "post")


def _stage_cpu_per_turn(turns: pd.DataFrame, cell: str) -> dict[str, float]:
    """Mean CPU ms per turn of each pre- and post-model stage, over the cell's successful turns."""
    t = turns[(turns["cell"] == cell) & turns["success"].astype(bool)]
    out = {}
    for s in _STAGES:
        col = f"stage_{s}_cpu_ms"
        out[s] = float(pd.to_numeric(t[col], errors="coerce").fillna(0.0).mean()) if col in t and len(t) else math.nan
    return out


class Comparison(msgspec.Struct, kw_only=True):
    """Option A against option B on one scenario, profile and concurrency (:func:`comparison`); in ms."""

    scenario: str
    profile: str
    concurrency: int
    turns: float
    n_a: int
    n_b: int
    failed: int
    p50_a_ms: float
    p50_b_ms: float
    ratio: float
    lo: float
    hi: float
    saved_ms_per_turn: float
    bytes_a: tuple[float, float]
    bytes_b: tuple[float, float]
    server_cpu_a_ms: float | None
    server_cpu_b_ms: float | None
    stages_a: dict[str, float]
    stages_b: dict[str, float]


def _load(c: CellRecord) -> tuple[str, str, int]:
    return c["scenario"], c["profile"], int(c["concurrency"] or 0)  # closed loop: set


def comparison(
    rollouts: pd.DataFrame,
    turns: pd.DataFrame,
    cells: Sequence[CellRecord],
    summaries: Mapping[str, CellSummary],
) -> list[Comparison]:
    """One row per scenario, profile and concurrency that has both an option A and an option B cell.

    Each row: the medians (ms) and counts, ``ratio`` = median A ÷ median B with ``lo``/``hi`` (bootstrap 95%),
    ``saved_ms_per_turn`` = (median B − median A) ÷ the median turns per rollout, the server CPU per turn
    (ms) of each, the pipeline stages' CPU per turn of each (``stages_a``/``stages_b``: stage → ms) and the
    median bytes up and down per rollout (``bytes_a``/``bytes_b``)."""
    main = [c for c in cells if c.get("variant") == "default" and c.get("mode") == "closed"]
    rows: list[Comparison] = []
    for scenario, profile, conc in sorted({_load(c) for c in main}):
        group = [c for c in main if _load(c) == (scenario, profile, conc)]
        a = next((c for c in group if (c["transport"], c["state"]) == A), None)
        b = next((c for c in group if (c["transport"], c["state"]) == B), None)
        if a is None or b is None:
            continue
        ra = rollouts[(rollouts["cell"] == a["cell"]) & rollouts["success"].astype(bool)]
        rb = rollouts[(rollouts["cell"] == b["cell"]) & rollouts["success"].astype(bool)]
        if ra.empty or rb.empty:
            continue
        ratio, lo, hi = ratio_ci(ra["rollout_ms"], rb["rollout_ms"], n_boot=N_BOOT_RATIO)
        p50_a, p50_b = float(ra["rollout_ms"].median()), float(rb["rollout_ms"].median())
        n_turns = float(pd.concat([ra["n_turns"], rb["n_turns"]]).median())
        sa, sb = summaries.get(a["cell"]), summaries.get(b["cell"])
        rows.append(
            Comparison(
                scenario=scenario,
                profile=profile,
                concurrency=conc,
                turns=n_turns,
                n_a=len(ra),
                n_b=len(rb),
                failed=int((rollouts["cell"].isin([a["cell"], b["cell"]])).sum()) - len(ra) - len(rb),
                p50_a_ms=p50_a,
                p50_b_ms=p50_b,
                ratio=ratio,
                lo=lo,
                hi=hi,
                saved_ms_per_turn=(p50_b - p50_a) / n_turns if n_turns else math.nan,
                bytes_a=(float(ra["bytes_up"].median()), float(ra["bytes_down"].median())),
                bytes_b=(float(rb["bytes_up"].median()), float(rb["bytes_down"].median())),
                server_cpu_a_ms=sa["server_cpu_ms_per_turn"] if sa else None,
                server_cpu_b_ms=sb["server_cpu_ms_per_turn"] if sb else None,
                stages_a=_stage_cpu_per_turn(turns, a["cell"]),
                stages_b=_stage_cpu_per_turn(turns, b["cell"]),
            )
        )
    return rows


def _num(v: float | None) -> float:
    return math.nan if v is None else float(v)


def _view(rows: Sequence[Comparison]) -> pd.DataFrame:
    out = []
    for r in rows:
        sa, sb = r.stages_a, r.stages_b
        out.append(
            {
                "scenario": r.scenario,
                "profile": r.profile,
                "c": r.concurrency,
                "turns": r.turns,
                "A median ms (n)": f"{r.p50_a_ms:,.1f} ({r.n_a})",
                "B median ms (n)": f"{r.p50_b_ms:,.1f} ({r.n_b})",
                "A ÷ B [95% CI]": f"{r.ratio:.3f} [{r.lo:.3f}, {r.hi:.3f}]",
                "A saves per turn ms": format_number(r.saved_ms_per_turn),
                "server CPU/turn A → B ms": f"{format_number(_num(r.server_cpu_a_ms))} → "
                f"{format_number(_num(r.server_cpu_b_ms))}",
                "stages CPU/turn A → B ms": f"{format_number(sum(sa.values()))} → {format_number(sum(sb.values()))}",
                "resolve + post A → B ms": f"{format_number(sa['resolve'] + sa['post'])} → "
                f"{format_number(sb['resolve'] + sb['post'])}",
                "bytes up/down per rollout A → B": f"{r.bytes_a[0]:,.0f}/{r.bytes_a[1]:,.0f} → "
                f"{r.bytes_b[0]:,.0f}/{r.bytes_b[1]:,.0f}",
            }
        )
    return pd.DataFrame(out)


def _sentence(r: Comparison) -> str:
    verb = "less" if r.ratio <= 1 else "more"
    return (
        f"On `{r.scenario}` at `{r.profile}`, concurrency {r.concurrency}, option A's rollouts "
        f"({r.p50_a_ms:,.0f} ms median) took {r.ratio:.2f}× the time of option B's ({r.p50_b_ms:,.0f} ms): "
        f"{abs(1 - r.ratio) * 100:.1f}% {verb} (95% CI of the ratio {r.lo:.2f} to {r.hi:.2f}), "
        f"{r.saved_ms_per_turn:+.2f} ms per turn saved by A."
    )


API_CHANGES = (
    "a rollout is one response: its id no longer names a turn, so nothing per turn can be retrieved, stored, "
    "forked or chained (`previous_response_id`, `store`, forks on lanes all lose their meaning);",
    "a turn ends at `response.done` (status `requires_action`), a new non-terminal event every client, SDK and "
    "proxy must learn; the output of `response.completed` is the whole rollout's;",
    "the next turn is `response.append`, a second client event beside `response.create`, with its own errors "
    "(`response_not_found`, `response_not_paused`);",
    "the response's life spans the client's tool time: the request timeout, usage accounting and the "
    "in-flight slot are held across tools, and a dropped connection loses the whole rollout, not one turn;",
    "it exists only on a persistent connection (HTTPS has no way to append to a running response).",
)


def add_section(d: Doc, rows: Sequence[Comparison], migration: Mapping[str, Any] | None, *, run_has_a: bool) -> None:
    """The report's option A vs B section: what was compared, the table, a sentence per row, and the
    migration cost of A beside B's."""
    d.h2("Option A vs B: one long response against previous_response_id")
    d.p(
        "WebSocket mode's two designs (docs/guides/option-a.md), measured on one WebSocket server in one run. "
        "**Option A** "
        "(`ws-long/connection`, never shipped): the rollout is one response; the server pauses sampling at each "
        "tool call (`response.done`), the client appends the tool output to the same response "
        "(`response.append`, the increment only) and sampling resumes. **Option B** (`ws/connection`, what "
        "shipped): a response per turn, `previous_response_id` plus the increment, from the connection cache. "
        "Both run the same agent loop, interleaved. A skips, per turn, the lookup of the previous response "
        "(`resolve`), the response's lifecycle events and its cache record (`post`); checks and rendering run on "
        "the increment in both. *A saves per turn*: (median B − median A) ÷ turns per rollout."
    )
    if not rows:
        d.p(
            "*This run has no option A and option B pair"
            + (" with successful rollouts" if run_has_a else "")
            + " (`turnbench run --transports ws,ws-long --states connection` measures one).*"
        )
    else:
        d.table(_view(rows))
        d.bullets(_sentence(r) for r in rows)
    d.p("**What adopting A costs a client**, beyond the lines below:")
    d.bullets(API_CHANGES)
    cost = next((c for c in (migration or {}).get("clients", []) if c.get("transport") == "ws-long"), None)
    ws = next((c for c in (migration or {}).get("clients", []) if c.get("transport") == "ws"), None)
    if cost is not None and ws is not None:
        d.p(
            f"Lines, computed as for WebSocket and gRPC (*Migration cost*): option B's client writes "
            f"{ws['written']} lines over the HTTPS client; option A's adds `{cost['file']}` ({cost['written']} "
            f"lines written over the HTTPS client, on top of B's {cost.get('support_lines', 0)} normalized lines it "
            "builds on), an adapter that keeps the per-turn agent loop unchanged. A loop written against A "
            "directly would change instead: its turn no longer ends in a completed response."
        )
