"""Per-cell statistics of a run (:func:`cell_summaries`: what ``turnbench run`` prints and ``summary.json``
holds) and the frame helpers the other analyses share. Failed rollouts are counted, never timed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, cast

import numpy as np
import pandas as pd

from loadtests.analysis.estimators import bootstrap_ci, ratio_ci, summarize
from loadtests.analysis.records import (
    CellFields,
    CellSummary,
    MetricStats,
    Provided,
    Ratios,
    StatKey,
    StreamRates,
    TurnStats,
    stat,
)
from loadtests.execution.plan import CellRecord, ChunkRecord

TURN_METRICS = ("ttft_ms", "ttfb_ms", "turn_ms", "latency_ms", "queue_ms", "bytes_up", "bytes_down")
ROLLOUT_METRICS = ("rollout_ms", "tool_ms", "connect_ms", "n_turns")
BY_TURN = (1, 5, 10, 20, 50)  # 1-based: turn k is the k-th request of a rollout
N_BOOT_CELL = 1000  # per-cell intervals


def label(df: pd.DataFrame) -> pd.Series:
    """``transport/state`` per row, the name a cell goes by in tables and legends."""
    return df["transport"].astype(str) + "/" + df["state"].astype(str)


def cell_label(cell: CellRecord) -> str:
    return f"{cell['transport']}/{cell['state']}"


def successful(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["success"].astype(bool)] if len(df) else df


def cell_rows(df: pd.DataFrame, cell: str) -> pd.DataFrame:
    return df[df["cell"] == cell] if len(df) else df


def _stats_by_metric(long: pd.DataFrame) -> dict[str, dict[str, MetricStats]]:
    out: dict[str, dict[str, MetricStats]] = {}
    for row in long.to_dict("records"):
        cell, metric = str(row.pop("cell")), str(row.pop("metric"))
        out.setdefault(cell, {})[metric] = cast("MetricStats", row)  # summarize()'s columns
    return out


def itl_frame(turns: pd.DataFrame) -> pd.DataFrame:
    """One row per inter-token gap: (cell, itl_ms)."""
    if not len(turns):
        return pd.DataFrame({"cell": [], "itl_ms": []})
    ex = turns[["cell", "itl_ms"]].explode("itl_ms")
    ex["itl_ms"] = pd.to_numeric(ex["itl_ms"], errors="coerce")
    return ex.dropna()


def same_load(a: CellRecord, b: CellRecord) -> bool:
    return all(a[k] == b[k] for k in ("scenario", "profile", "concurrency", "arrival_rate_rps"))


def _reference(cell: CellRecord, cells: Sequence[CellRecord]) -> CellRecord | None:
    """The https/full cell this cell's ratios are taken against (same scenario, profile, load; the same
    variant if there is one, else the default)."""
    matches = [o for o in cells if o["transport"] == "https" and o["state"] == "full" and same_load(o, cell)]
    for o in matches:
        if o["variant"] == cell["variant"]:
            return o
    return next((o for o in matches if o["variant"] == "default"), None)


def provided(turns: pd.DataFrame) -> Provided:
    """What the endpoint reported beside its events, over a cell's measured turns: ``stages`` (the ``turnbench``
    extension's per-stage timings: a turnbench server) and ``usage`` (token counts in the final response)."""
    if not len(turns):
        return {"stages": False, "usage": False}
    stage_cols = [c for c in turns.columns if c.startswith("stage_")]
    stages = bool(stage_cols) and bool(turns[stage_cols].notna().to_numpy().any())
    usage = any(
        c in turns and bool((pd.to_numeric(turns[c], errors="coerce").fillna(0) > 0).any())
        for c in ("input_tokens", "output_tokens")
    )
    return {"stages": stages, "usage": usage}


def stream_rates(turns: pd.DataFrame, server_cpu_s: float | None) -> StreamRates | None:
    """The streaming path of one cell's measured turns (None without two content deltas in a turn):

    - ``tok_s`` (p50 over turns): output tokens after the first delta ÷ the time from the first delta to the
      last (``sum(itl_ms)``); a turn's tokens are split evenly over its deltas to find the first one's share;
    - ``tokens_per_delta``: output tokens ÷ content deltas (1 at one event per token; more when coalesced);
    - ``server_cpu_us_per_token``: the server process's CPU over the cell's chunks ÷ their output tokens
      (the per-turn work is included: a long answer makes it small);
    - ``bytes_down_per_token``: bytes received ÷ output tokens."""
    if not len(turns) or "chunks" not in turns:
        return None
    chunks = pd.to_numeric(turns["chunks"], errors="coerce").fillna(0.0)
    tokens = pd.to_numeric(turns["output_tokens"], errors="coerce").fillna(0.0)
    span_ms = turns["itl_ms"].map(lambda v: float(np.sum(v)) if v is not None and len(v) else 0.0)
    ok = (chunks >= 2) & (span_ms > 0)
    if not ok.any():
        return None
    rate = (tokens[ok] * (chunks[ok] - 1) / chunks[ok]) / (span_ms[ok] / 1000.0)
    total = float(tokens.sum())
    return {
        "n": int(ok.sum()),
        "tok_s": float(rate.median()),
        "tok_s_min": float(rate.min()),
        "tokens_per_turn": total / len(turns),
        "tokens_per_delta": total / float(chunks.sum()) if chunks.sum() else math.nan,
        "server_cpu_us_per_token": 1e6 * server_cpu_s / total if server_cpu_s is not None and total else None,
        "bytes_down_per_token": float(pd.to_numeric(turns["bytes_down"]).sum()) / total if total else math.nan,
    }


def _ttft_by_turn(ct: pd.DataFrame) -> dict[str, TurnStats]:
    """TTFT at the turn numbers of :data:`BY_TURN` that the cell's turns reach."""
    by_turn: dict[str, TurnStats] = {}
    for k in BY_TURN:
        vals = (
            pd.to_numeric(ct.loc[ct["turn_index"] == k - 1, "ttft_ms"], errors="coerce").dropna()
            if len(ct)
            else pd.Series(dtype=float)
        )
        if len(vals):
            est, lo, hi = bootstrap_ci(vals, n_boot=N_BOOT_CELL)
            by_turn[str(k)] = {
                "n": len(vals),
                "p50": est,
                "p50_lo": lo,
                "p50_hi": hi,
                "p99": float(np.percentile(vals.to_numpy(dtype=float), 99)),
            }
    return by_turn


def _ratios(c: CellRecord, cells: Sequence[CellRecord], t_ok: pd.DataFrame, r_ok: pd.DataFrame) -> Ratios:
    """The cell's median TTFT, turn and rollout time against its ``https/full`` reference (empty without one);
    ``t_ok``/``r_ok``: every cell's successful turns and rollouts."""
    ref = _reference(c, cells)
    if ref is None or ref["cell"] == c["cell"] or not len(t_ok) or not len(r_ok):
        return {}
    ct, cr = cell_rows(t_ok, c["cell"]), cell_rows(r_ok, c["cell"])
    rt, rr = cell_rows(t_ok, ref["cell"]), cell_rows(r_ok, ref["cell"])
    return {
        "vs": ref["cell"],
        "rollout_ms": ratio_ci(cr["rollout_ms"], rr["rollout_ms"], n_boot=N_BOOT_CELL),
        "ttft_ms": ratio_ci(ct["ttft_ms"], rt["ttft_ms"], n_boot=N_BOOT_CELL),
        "turn_ms": ratio_ci(ct["turn_ms"], rt["turn_ms"], n_boot=N_BOOT_CELL),
    }


def _metric_stats(frame: pd.DataFrame, metrics: Sequence[str]) -> dict[str, dict[str, MetricStats]]:
    """Per cell and metric, :class:`MetricStats` over the rows of ``frame``."""
    return _stats_by_metric(summarize(frame, by=["cell"], metrics=metrics, n_boot=N_BOOT_CELL)) if len(frame) else {}


def _cell_fields(c: CellRecord) -> CellFields:
    """The fields of a cell's record its summary repeats (``get``: None where an older ``run.json`` lacks one)."""
    return {
        "transport": c.get("transport"),
        "server": c.get("server"),
        "state": c.get("state"),
        "scenario": c.get("scenario"),
        "profile": c.get("profile"),
        "concurrency": c.get("concurrency"),
        "arrival_rate_rps": c.get("arrival_rate_rps"),
        "mode": c.get("mode"),
        "variant": c.get("variant"),
        "tls": c.get("tls"),
        "endpoint": c.get("endpoint"),
        "rtt_ms": c.get("rtt_ms"),
        "bandwidth_mbps": c.get("bandwidth_mbps"),
    }


def cell_summaries(
    turns: pd.DataFrame, rollouts: pd.DataFrame, cells: Sequence[CellRecord], chunks: Sequence[ChunkRecord]
) -> dict[str, CellSummary]:
    """``summary.json["cells"]``: per cell, n, percentiles + CI of the turn and rollout metrics, TTFT per
    turn number, CPU per turn (server and client, in ms), recoveries, closed-loop throughput (concurrency ÷
    mean rollout time, rollouts/s), and the ratios of median TTFT, turn and rollout time vs ``https/full``.

    ``turns``/``rollouts``: the measured rows; ``cells``/``chunks``: the records of ``run.json``.
    """
    t_ok, r_ok = successful(turns), successful(rollouts)
    t_stats, r_stats = _metric_stats(t_ok, TURN_METRICS), _metric_stats(r_ok, ROLLOUT_METRICS)
    i_stats = _metric_stats(itl_frame(t_ok), ["itl_ms"])
    out: dict[str, CellSummary] = {}
    for c in cells:
        cid = c["cell"]
        ct, cr, cr_all = cell_rows(t_ok, cid), cell_rows(r_ok, cid), cell_rows(rollouts, cid)
        failed = cr_all[~cr_all["success"].astype(bool)] if len(cr_all) else cr_all
        mine = [ch for ch in chunks if ch["cell"] == cid and not ch["warmup"]]
        n_turns = sum(int(ch["turns"]) for ch in mine)
        srv = [ch["server_cpu_s"] for ch in mine]
        srv_s = sum(s for s in srv if s is not None) if srv and None not in srv else None
        mean_ms = float(cr["rollout_ms"].mean()) if len(cr) else math.nan
        conc = c["concurrency"]
        throughput = conc * 1000.0 / mean_ms if c["mode"] == "closed" and conc is not None and mean_ms > 0 else None
        summary: CellSummary = {
            **_cell_fields(c),
            "n_rollouts": len(cr_all) - len(failed),
            "failed_rollouts": len(failed),
            "first_error": str(failed["error"].iloc[0]) if len(failed) else None,
            "n_turns": len(ct),
            "metrics": {**t_stats.get(cid, {}), **r_stats.get(cid, {}), **i_stats.get(cid, {})},
            "ttft_by_turn": _ttft_by_turn(ct),
            "server_cpu_ms_per_turn": (1000.0 * srv_s / n_turns) if n_turns and srv_s is not None else None,
            "stream": stream_rates(ct, srv_s),
            "provided": provided(ct),
            "client_cpu_ms_per_turn": (1000.0 * sum(ch["client_cpu_s"] for ch in mine) / n_turns) if n_turns else None,
            "recoveries": int(cr_all["recoveries"].sum()) if len(cr_all) and "recoveries" in cr_all else 0,
            "rollouts_per_s": throughput,
            "ratio_vs_https_full": _ratios(c, cells, t_ok, r_ok),
        }
        out[cid] = summary
    return out


def cell_table(summaries: Mapping[str, CellSummary]) -> pd.DataFrame:
    """The per-cell summaries as one table row per cell (the report's "All cells"): rollouts ok/failed,
    median rollout_ms with its CI, p90, median TTFT and turn_ms, mean bytes up/down per turn, recoveries,
    closed-loop throughput (rollouts/s). Sorted by scenario, profile, load, variant, transport, state."""

    def order(c: CellSummary) -> tuple[Any, ...]:
        return (
            c["scenario"],
            c["profile"],
            c["mode"],
            c["concurrency"] or 0,
            c["arrival_rate_rps"] or 0.0,
            c["variant"],
            c["transport"],
            c["state"],
        )

    def metric(c: CellSummary, name: str, key: StatKey) -> float:
        value = stat(c, name, key)
        return math.nan if value is None else float(value)

    rows = []
    for c in sorted(summaries.values(), key=order):
        load = {"concurrency": c["concurrency"]} if c["mode"] == "closed" else {"rate_rps": c["arrival_rate_rps"]}
        rows.append(
            {
                "scenario": c["scenario"],
                "profile": c["profile"],
                **load,
                "variant": c["variant"],
                "transport": c["transport"],
                "state": c["state"],
                "rollouts": c["n_rollouts"],
                "failed": c["failed_rollouts"],
                "rollout_p50_ms": metric(c, "rollout_ms", "p50"),
                "rollout_lo_ms": metric(c, "rollout_ms", "p50_lo"),
                "rollout_hi_ms": metric(c, "rollout_ms", "p50_hi"),
                "rollout_p90_ms": metric(c, "rollout_ms", "p90"),
                "ttft_p50_ms": metric(c, "ttft_ms", "p50"),
                "turn_p50_ms": metric(c, "turn_ms", "p50"),
                "bytes_up": metric(c, "bytes_up", "mean"),
                "bytes_down": metric(c, "bytes_down", "mean"),
                "recoveries": c["recoveries"],
                "rollouts_per_s": math.nan if c["rollouts_per_s"] is None else float(c["rollouts_per_s"]),
            }
        )
    return pd.DataFrame(rows)
