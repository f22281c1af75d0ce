"""``turnbench advise``: predicted rollout time per transport and state for *your* agent, from a cost model
fitted to what this machine measured.

**The fit** (``--fit``, or the first time: ~1 minute). One run of agent-shaped rollouts at the ``instant``
profile (no model time: what is left is API overhead) with two tool-output sizes (1 KB and 8 KB), over
https/full, https/store, ws/connection, ws/store and grpc/connection. Per transport and state it fits, by
least squares over every measured turn, the turn's time (request sent → response completed, at concurrency
1 on loopback: server and client CPU, framing, the event loop) as ``a + b·up_KB + c·history_KB``, where
``up_KB`` is what the request carried and ``history_KB`` the conversation so far (for a full resend the two
are the same); and it keeps the median connect time and the client's own time between turns. Written to
``reports/advise/model.json`` with the machine it was measured on.

**The prediction** for a workload (``--turns N --tool-output-kb K --tok-s R --rtt-ms T`` …, or
``--trace FILE``: its conversations' turns, sizes and gaps): per turn, the fitted overhead at that turn's
sizes, plus the model's time (the ``fast`` profile's prefill of the new tokens, and decode at ``R`` tok/s),
plus one round trip, plus the bytes at ``--bandwidth-mbps``; per rollout, the connect time plus the handshake
round trips (TCP and TLS 1.3: 2; WebSocket's upgrade: 3; gRPC's HTTP/2 preface rides with TLS: 2) and the
tool time. It prints each transport's predicted rollout time and its gain over https/full and https/store,
the crossover (the fewest turns at which ws/connection beats https/full), and plots the gain against turns.

**Validated, not asserted**: ``--validate RUN_DIR …`` predicts every concurrency-1 cell of measured runs from
their own scenario (turns, output sizes, profile, RTT) and prints the error against the measured median
rollout time. What it leaves out: waiting for a CPU (a busy machine), concurrency, the kernel's congestion
window on a WAN, and a model whose speed depends on the batch.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypedDict

import numpy as np
import pandas as pd

from loadtests.workload.scenarios import State

__all__ = ["CELLS", "CellFit", "CostModel", "Prediction", "Workload", "cmd_advise", "fit", "predict", "validate"]

CELLS: tuple[tuple[str, State], ...] = (
    ("https", "full"),
    ("https", "store"),
    ("ws", "connection"),
    ("ws", "store"),
    ("grpc", "connection"),
)
HANDSHAKE_RTTS = {"https": 2, "ws": 3, "grpc": 2}
"""Round trips before a new connection's first request: TCP, TLS 1.3, and WebSocket's upgrade."""
FIT_SIZES_KB = (1, 8)
MODEL_PATH = Path("reports") / "advise" / "model.json"
ITEM_OVERHEAD_BYTES = 300  # a function call and its output item's JSON around the tool's text


class CellFit(TypedDict):
    """One ``transport/state`` of the cost model: a turn's overhead ``a + b·up_KB + c·history_KB`` in ms, the
    fit's RMS residual, the turns fitted, the median connect time and the client's time between turns."""

    a_ms: float
    b_ms_per_up_kb: float
    c_ms_per_history_kb: float
    residual_ms: float
    turns: int
    connect_ms: float
    between_turns_ms: float


class CostModel(TypedDict):
    """``reports/advise/model.json`` (:func:`fit`): the fit per ``transport/state`` and where it was measured."""

    version: int
    created_at: str
    machine: dict[str, str]
    first_request_kb: float
    cells: dict[str, CellFit]


class Prediction(TypedDict):
    """A predicted rollout (:func:`predict`) and its parts, in ms."""

    rollout_ms: float
    overhead_ms: float
    model_ms: float
    network_ms: float
    tool_ms: float


@dataclass(frozen=True)
class Workload:
    """One agent's shape: ``turns`` requests (tool calls + the answer), each tool output ``tool_output_kb``,
    ``gap_ms`` of client time per tool call, the model's decode rate, the answer and per-call argument
    lengths, and the network."""

    turns: int = 21
    tool_output_kb: float = 4.0
    gap_ms: float = 0.0
    tok_s: float = 1000.0
    answer_tokens: int = 64
    arg_tokens: int = 20
    rtt_ms: float = 0.0
    bandwidth_mbps: float | None = None
    sizes_kb: tuple[float, ...] = ()  # per tool call, overriding tool_output_kb (a trace's)
    gaps_ms: tuple[float, ...] = ()


# ------------------------------------------------------------------------------------------------ fit


def _history_kb(t: pd.DataFrame) -> pd.Series:
    """Per turn, the conversation so far in KB: a full resend's request, else the running sum of requests."""
    up = t["bytes_up"].astype(float) / 1024.0
    running = t.sort_values("turn_index").groupby(["cell", "rollout_id"])["bytes_up"].cumsum().astype(float) / 1024.0
    return pd.Series(np.where(t["state"] == "full", up, running.reindex(t.index)), index=t.index)


def fit(turns: pd.DataFrame, rollouts: pd.DataFrame) -> CostModel:
    """Coefficients per transport/state from a fit run's measured rows (see the module docstring)."""
    t = turns[turns["success"].astype(bool) & ~turns["warmup"].astype(bool)].copy()
    r = rollouts[rollouts["success"].astype(bool) & ~rollouts["warmup"].astype(bool)]
    t["up_kb"] = t["bytes_up"].astype(float) / 1024.0
    t["hist_kb"] = _history_kb(t)
    cells: dict[str, CellFit] = {}
    for (tr, st), g in t.groupby(["transport", "state"]):
        x = np.column_stack([np.ones(len(g)), g["up_kb"], g["hist_kb"]])
        y = g["turn_ms"].astype(float).to_numpy()
        coef, *_ = np.linalg.lstsq(x, y, rcond=None)
        resid = y - x @ coef
        rg = r[(r["transport"] == tr) & (r["state"] == st)]
        between = (rg["rollout_ms"] - rg["turn_ms_sum"] - rg["tool_ms"]) / rg["n_turns"].clip(lower=1)
        cells[f"{tr}/{st}"] = {
            "a_ms": float(coef[0]),
            "b_ms_per_up_kb": float(coef[1]),
            "c_ms_per_history_kb": float(coef[2]),
            "residual_ms": float(np.sqrt(np.mean(resid**2))),
            "turns": len(g),
            "connect_ms": float(pd.to_numeric(rg["connect_ms"], errors="coerce").median()),
            "between_turns_ms": float(between.median()) if len(between) else 0.0,
        }
    first = t[t["turn_index"] == 0]["bytes_up"].astype(float)
    return {
        "version": 1,
        "created_at": datetime.now(UTC).isoformat(),
        "machine": {"python": platform.python_version(), "cpu": platform.processor() or platform.machine()},
        "first_request_kb": float(first.median() / 1024.0) if len(first) else 3.5,
        "cells": cells,
    }


def run_fit(out: Path) -> CostModel:
    """Run the fit matrix into ``out`` (a run directory) and fit it."""
    from loadtests.commands.bench import Group, run_matrix

    states: dict[str, tuple[State, ...]] = {}
    for tr, st in CELLS:
        states[tr] = (*states.get(tr, ()), st)
    groups = [
        Group(
            scenario="agent-20",
            profile="instant",
            concurrency=1,
            states=states,
            sizing={
                "rollouts": 3,
                "rounds": 3,
                "warmup": 1,
                "tool_calls": 12,
                "tool_output_bytes": kb * 1024,
                "tool_output_sigma": 0.0,
            },
            variant=f"kb{kb}",
        )
        for kb in FIT_SIZES_KB
    ]
    run = run_matrix(groups, out, argv=sys.argv, quiet=True)
    return fit(run.turns, run.rollouts)


# ------------------------------------------------------------------------------------------------ predict


def _model_ms(w: Workload, new_tokens: float, context_tokens: float, out_tokens: int) -> float:
    from turnbench.engine.sim import get_profile

    prof = get_profile("fast")
    return prof.prefill_ms(int(new_tokens), int(context_tokens)) + out_tokens * 1000.0 / w.tok_s


def predict(model: CostModel, w: Workload) -> dict[str, Prediction]:
    """Per ``transport/state``: predicted rollout ms and its parts (overhead, model, network, tool)."""
    calls = max(0, w.turns - 1)
    sizes = list(w.sizes_kb) or [w.tool_output_kb] * calls
    gaps = list(w.gaps_ms) or [w.gap_ms] * calls
    first = float(model["first_request_kb"])
    per_call = [s + ITEM_OVERHEAD_BYTES / 1024.0 for s in sizes]
    hist = [first + sum(per_call[:k]) for k in range(len(sizes) + 1)]  # KB of conversation at turn k
    rate = w.bandwidth_mbps * 1e6 / 8 / 1024.0 if w.bandwidth_mbps else None  # KB per second
    out: dict[str, Prediction] = {}
    for key, c in model["cells"].items():
        tr, st = key.split("/")
        overhead = model_ms = net = 0.0
        for k in range(len(sizes) + 1):
            up = hist[k] if (st == "full" or k == 0) else per_call[k - 1]
            overhead += (
                c["a_ms"] + c["b_ms_per_up_kb"] * up + c["c_ms_per_history_kb"] * hist[k] + c["between_turns_ms"]
            )
            new_tokens = (up if k == 0 else per_call[k - 1]) * 1024.0 / 4.0
            out_tokens = w.answer_tokens if k == len(sizes) else w.arg_tokens
            model_ms += _model_ms(w, new_tokens, hist[k] * 1024.0 / 4.0, out_tokens)
            net += w.rtt_ms + (1000.0 * up / rate if rate else 0.0)
        connect = c["connect_ms"] + HANDSHAKE_RTTS.get(tr, 2) * w.rtt_ms
        tool = sum(gaps)
        out[key] = {
            "rollout_ms": overhead + model_ms + net + connect + tool,
            "overhead_ms": overhead,
            "model_ms": model_ms,
            "network_ms": net + connect,
            "tool_ms": tool,
        }
    return out


def gains(pred: Mapping[str, Prediction], base: str) -> dict[str, float]:
    """Per cell: predicted rollout time vs ``base`` − 1, in %."""
    b = pred[base]["rollout_ms"]
    return {k: 100.0 * (v["rollout_ms"] / b - 1.0) for k, v in pred.items()}


def crossover(model: CostModel, w: Workload, cell: str = "ws/connection", base: str = "https/full") -> int | None:
    """The fewest turns (1–200) at which ``cell`` is predicted faster than ``base``."""
    for n in range(1, 201):
        p = predict(model, _with_turns(w, n))
        if p[cell]["rollout_ms"] < p[base]["rollout_ms"]:
            return n
    return None


def _with_turns(w: Workload, n: int) -> Workload:
    return Workload(**{**w.__dict__, "turns": n, "sizes_kb": (), "gaps_ms": ()})


# ------------------------------------------------------------------------------------------------ validate


def validate(model: CostModel, runs: Sequence[Path]) -> pd.DataFrame:
    """Predicted vs measured median rollout time for every concurrency-1 cell of ``runs`` that the model
    covers; columns: run, cell, measured_ms, predicted_ms, error_pct."""
    from clients.agent import Toolbox
    from loadtests.runs.rundir import RunDir
    from turnbench.engine.sim import get_profile

    rows = []
    for path in runs:
        run = RunDir(path)
        r = run.rollouts[run.rollouts["success"].astype(bool) & ~run.rollouts["warmup"].astype(bool)]
        for c in run.cells:
            key = f"{c['transport']}/{c['state']}"
            if key not in model["cells"] or c.get("concurrency") != 1:
                continue
            rc = r[r["cell"] == c["cell"]]
            if not len(rc):
                continue
            scen = (run.meta.get("scenarios") or {}).get(c["scenario"]) or {}
            tok_s = get_profile(c["profile"]).tok_s
            turns = int(rc["n_turns"].median())
            preds = []
            for rid in rc["rollout_id"]:  # each rollout's own tool output sizes: its toolbox is seeded by its index
                box = Toolbox(
                    output_bytes=int(scen.get("tool_output_bytes", 4096)),
                    output_sigma=float(scen.get("tool_output_sigma", 0.0)),
                    seed=int(scen.get("seed", 0)) * 100_003 + int(rid),
                )
                w = Workload(
                    turns=turns,
                    sizes_kb=tuple(box.target_bytes(k) / 1024.0 for k in range(turns - 1)),
                    gaps_ms=tuple([float(rc["tool_ms"].median()) / max(1, turns - 1)] * (turns - 1)),
                    tok_s=tok_s if math.isfinite(tok_s) else 1e9,
                    answer_tokens=int(scen.get("answer_tokens", 64)),
                    rtt_ms=float(c.get("rtt_ms") or 0.0),
                )
                preds.append(predict(model, w)[key]["rollout_ms"])
            pred = float(np.median(preds))
            measured = float(rc["rollout_ms"].median())
            rows.append(
                {
                    "run": Path(path).name,
                    "cell": c["cell"],
                    "measured_ms": measured,
                    "predicted_ms": pred,
                    "error_pct": 100.0 * (pred / measured - 1.0),
                }
            )
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------ command


def _workload(args: argparse.Namespace) -> Workload:
    if args.trace:
        from loadtests.workload.trace import conversations, read_trace

        convs = conversations(read_trace(args.trace))
        longest = max(convs, key=lambda c: len(c.tool_output_bytes))
        return Workload(
            turns=len(longest.tool_output_bytes) + 1,
            sizes_kb=tuple(b / 1024.0 for b in longest.tool_output_bytes),
            gaps_ms=longest.gaps_ms,
            tok_s=args.tok_s,
            answer_tokens=longest.answer_tokens,
            rtt_ms=args.rtt_ms,
            bandwidth_mbps=args.bandwidth_mbps,
        )
    return Workload(
        turns=args.turns,
        tool_output_kb=args.tool_output_kb,
        gap_ms=args.gap_ms,
        tok_s=args.tok_s,
        answer_tokens=args.answer_tokens,
        rtt_ms=args.rtt_ms,
        bandwidth_mbps=args.bandwidth_mbps,
    )


def _plot(model: CostModel, w: Workload, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    turns = list(range(1, max(41, w.turns + 1)))
    preds = [predict(model, _with_turns(w, n)) for n in turns]
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for key in model["cells"]:
        if key == "https/full":
            continue
        ax.plot(turns, [100.0 * (p[key]["rollout_ms"] / p["https/full"]["rollout_ms"] - 1.0) for p in preds], label=key)
    ax.axhline(0, color="grey", linewidth=1)
    ax.axvline(w.turns, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("turns per rollout (tool calls + 1)")
    ax.set_ylabel("predicted rollout time vs https/full (%)")
    ax.set_title(f"{w.tool_output_kb:g} KB tool outputs, {w.tok_s:g} tok/s, RTT {w.rtt_ms:g} ms")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def cmd_advise(args: argparse.Namespace) -> int:
    path: Path = args.model
    model: CostModel
    if args.fit or not path.is_file():
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        print(f"advise: measuring the cost model (~1 min) → {path}", file=sys.stderr)
        model = run_fit(Path("reports") / "runs" / f"{stamp}-advise-fit")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(model, indent=1))
    model = json.loads(path.read_text())
    if args.validate:
        table = validate(model, args.validate)
        if table.empty:
            print("no concurrency-1 cell of those runs is covered by the model")
            return 1
        print(table.to_string(index=False, float_format=lambda v: f"{v:.1f}"))
        print(f"median absolute error: {table['error_pct'].abs().median():.1f}% over {len(table)} cells")
        return 0
    w = _workload(args)
    pred = predict(model, w)
    nan = dict.fromkeys(pred, math.nan)
    vs_full = gains(pred, "https/full") if "https/full" in pred else nan
    vs_store = gains(pred, "https/store") if "https/store" in pred else nan
    print(
        f"{w.turns} turns, {sum(w.sizes_kb) / max(1, len(w.sizes_kb)) if w.sizes_kb else w.tool_output_kb:.1f} KB "
        f"tool outputs, {w.tok_s:g} tok/s, RTT {w.rtt_ms:g} ms (model fitted {model['created_at'][:19]})"
    )
    print(f"{'transport/state':<16} {'rollout ms':>11} {'overhead':>9} {'model':>8} {'network':>8} {'tools':>8} "
          f"{'vs https/full':>14} {'vs https/store':>15}")  # fmt: skip
    for key, p in sorted(pred.items(), key=lambda kv: kv[1]["rollout_ms"]):
        print(
            f"{key:<16} {p['rollout_ms']:>11.1f} {p['overhead_ms']:>9.1f} {p['model_ms']:>8.1f} "
            f"{p['network_ms']:>8.1f} {p['tool_ms']:>8.1f} {vs_full[key]:>+13.1f}% {vs_store[key]:>+14.1f}%"
        )
    n = crossover(model, w)
    print(
        "crossover: ws/connection is predicted faster than https/full from "
        + (f"{n} turn{'s' if n != 1 else ''} per rollout" if n else "no rollout length up to 200 turns")
    )
    if args.plot:
        _plot(model, w, args.plot)
        print(f"plot: {args.plot}")
    return 0
