"""Per-cell statistics of a run, the calibration residuals, and the environment record.

Everything here is computed from the raw sample frames (warm-up rows dropped): percentiles with linear
interpolation and bootstrap intervals of the median (:mod:`loadtests.metrics`), ratios against the
``https``/``full`` cell of the same scenario, profile and load computed inside the run (``ratio_ci``).
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from loadtests.metrics import bootstrap_ci, ratio_ci, summarize

if TYPE_CHECKING:
    from loadtests.monitor import MonitorReport
    from loadtests.runner import Cell, ChunkStat, RunConfig

__all__ = ["calibration", "environment", "summarize_cells", "windowed_monitor"]

TURN_METRICS = ("ttft_ms", "ttfb_ms", "turn_ms", "latency_ms", "queue_ms", "bytes_up", "bytes_down")
ROLLOUT_METRICS = ("rollout_ms", "tool_ms", "connect_ms", "n_turns")
BY_TURN = (1, 5, 10, 20, 50)
PRE_PREFILL = ("parse", "validate", "resolve", "safety", "render", "route")
VERSIONS = ("turnbench", "websockets", "grpcio", "protobuf", "httpx", "httpcore", "starlette", "uvicorn",
            "openai", "msgspec", "orjson", "uvloop", "tokenizers", "numpy", "pandas", "pyarrow", "locust")
CALIBRATION_PREFILL_MS = 20.0
CALIBRATION_TOKEN_MS = 5.0
N_BOOT = 1000


def _measured(df: pd.DataFrame) -> pd.DataFrame:
    if not len(df):
        return df
    return df[~df["warmup"].astype(bool)]


def _stats_by_metric(long: pd.DataFrame) -> dict[str, dict[str, dict[str, Any]]]:
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for row in long.to_dict("records"):
        out.setdefault(str(row.pop("cell")), {})[str(row.pop("metric"))] = row
    return out


def _itl(turns: pd.DataFrame) -> pd.DataFrame:
    """One row per inter-token gap: (cell, itl_ms)."""
    if not len(turns):
        return pd.DataFrame({"cell": [], "itl_ms": []})
    ex = turns[["cell", "itl_ms"]].explode("itl_ms")
    ex["itl_ms"] = pd.to_numeric(ex["itl_ms"], errors="coerce")
    return ex.dropna()


def windowed_monitor(raw: MonitorReport, chunks: Sequence[ChunkStat], config: RunConfig) -> dict[str, Any]:
    """run.json["monitor"]: the load generator over the windows in which measured rollouts ran.

    Between chunks the runner collects garbage and starts/stops nothing that is timed, so stalls there
    cannot touch a sample; the whole-run report is kept under ``whole_run``.
    """
    measured = [c for c in chunks if not c.warmup] or list(chunks)
    win = _cell_monitor(measured, config)
    lags = np.asarray([x for c in measured for x in c.lag_ms], dtype=np.float64)
    out = {k: getattr(raw, k) for k in raw.__struct_fields__}
    out.update(cpu_util=win["cpu_util"], loop_lag_p99_ms=win["loop_lag_p99_ms"], lag_samples=win["lag_samples"],
               loop_lag_p50_ms=float(np.median(lags)) if lags.size else float("nan"),
               loop_lag_max_ms=float(lags.max()) if lags.size else float("nan"),
               saturated=win["saturated"], reason=win["reason"],
               whole_run={k: getattr(raw, k) for k in raw.__struct_fields__})
    return out


def _cell_monitor(chunks: Sequence[ChunkStat], config: RunConfig) -> dict[str, Any]:
    wall = sum(c.wall_s for c in chunks)
    cpu = sum(c.client_cpu_s for c in chunks)
    lags = [x for c in chunks for x in c.lag_ms]
    util = cpu / wall if wall else float("nan")
    p99 = float(np.percentile(lags, 99)) if lags else float("nan")
    reasons = []
    if util > config.cpu_threshold:
        reasons.append(f"cpu {util:.2f} of a core > {config.cpu_threshold:.2f}")
    if p99 > config.lag_p99_threshold_ms:
        reasons.append(f"event-loop lag p99 {p99:.1f} ms > {config.lag_p99_threshold_ms:g} ms")
    return {"cpu_util": util, "loop_lag_p99_ms": p99, "lag_samples": len(lags), "saturated": bool(reasons),
            "reason": "; ".join(reasons) or None}


def _reference(cell: Cell, cells: Sequence[Cell]) -> Cell | None:
    """The https/full cell this cell's ratios are taken against (same scenario, profile, load, variant)."""
    def same(o: Cell) -> bool:
        return (o.transport == "https" and o.state == "full" and o.scenario.name == cell.scenario.name
                and o.profile == cell.profile and o.concurrency == cell.concurrency
                and o.arrival_rate_rps == cell.arrival_rate_rps)

    matches = [o for o in cells if same(o)]
    for o in matches:
        if o.variant == cell.variant:
            return o
    return next((o for o in matches if o.variant == "default"), None)


def summarize_cells(turns: pd.DataFrame, rollouts: pd.DataFrame, cells: Sequence[Cell],
                    chunks: Sequence[ChunkStat], config: RunConfig) -> dict[str, dict[str, Any]]:
    """summary.json["cells"]: per cell, n, percentiles + CI of the turn and rollout metrics, TTFT per turn
    number, CPU per turn (server and client), the load generator's view, ratios vs https/full."""
    t_all, r_all = _measured(turns), _measured(rollouts)
    t_ok = t_all[t_all["success"].astype(bool)] if len(t_all) else t_all
    r_ok = r_all[r_all["success"].astype(bool)] if len(r_all) else r_all
    t_stats = _stats_by_metric(summarize(t_ok, by=["cell"], metrics=TURN_METRICS, n_boot=N_BOOT)) if len(t_ok) else {}
    r_stats = _stats_by_metric(summarize(r_ok, by=["cell"], metrics=ROLLOUT_METRICS, n_boot=N_BOOT)) \
        if len(r_ok) else {}
    itl = _itl(t_ok)
    i_stats = _stats_by_metric(summarize(itl, by=["cell"], metrics=["itl_ms"], n_boot=N_BOOT)) if len(itl) else {}
    out: dict[str, dict[str, Any]] = {}
    for c in cells:
        ct = t_ok[t_ok["cell"] == c.cell] if len(t_ok) else t_ok
        cr_all = r_all[r_all["cell"] == c.cell] if len(r_all) else r_all
        failed = cr_all[~cr_all["success"].astype(bool)] if len(cr_all) else cr_all
        by_turn: dict[str, Any] = {}
        for k in BY_TURN:
            vals = pd.to_numeric(ct.loc[ct["turn_index"] == k - 1, "ttft_ms"], errors="coerce").dropna() \
                if len(ct) else pd.Series(dtype=float)
            if len(vals):
                est, lo, hi = bootstrap_ci(vals, n_boot=N_BOOT)
                by_turn[str(k)] = {"n": len(vals), "p50": est, "p50_lo": lo, "p50_hi": hi,
                                   "p99": float(np.percentile(vals.to_numpy(dtype=float), 99))}
        mine = [ch for ch in chunks if ch.cell == c.cell and not ch.warmup]
        n_turns = sum(ch.turns for ch in mine)
        srv = [ch.server_cpu_s for ch in mine]
        ratios: dict[str, Any] = {}
        ref = _reference(c, cells)
        if ref is not None and ref.cell != c.cell and len(t_ok) and len(r_ok):
            rt = t_ok[t_ok["cell"] == ref.cell]
            rr = r_ok[r_ok["cell"] == ref.cell]
            cr = r_ok[r_ok["cell"] == c.cell]
            ratios = {"vs": ref.cell,
                      "rollout_ms": ratio_ci(cr["rollout_ms"], rr["rollout_ms"], n_boot=N_BOOT),
                      "ttft_ms": ratio_ci(ct["ttft_ms"], rt["ttft_ms"], n_boot=N_BOOT),
                      "turn_ms": ratio_ci(ct["turn_ms"], rt["turn_ms"], n_boot=N_BOOT)}
        out[c.cell] = {
            "transport": c.transport, "server": c.server, "state": c.state, "scenario": c.scenario.name,
            "profile": c.profile, "concurrency": c.concurrency, "arrival_rate_rps": c.arrival_rate_rps,
            "mode": c.mode, "variant": c.variant, "tls": c.tls,
            "n_rollouts": int(len(cr_all) - len(failed)), "failed_rollouts": len(failed),
            "first_error": str(failed["error"].iloc[0]) if len(failed) else None,
            "n_turns": len(ct),
            "metrics": {**t_stats.get(c.cell, {}), **r_stats.get(c.cell, {}), **i_stats.get(c.cell, {})},
            "ttft_by_turn": by_turn,
            "server_cpu_ms_per_turn": (1000.0 * sum(s for s in srv if s is not None) / n_turns)
            if n_turns and srv and all(s is not None for s in srv) else None,
            "client_cpu_ms_per_turn": (1000.0 * sum(ch.client_cpu_s for ch in mine) / n_turns) if n_turns else None,
            "monitor": _cell_monitor(mine, config),
            "ratio_vs_https_full": ratios,
        }
    return out


def calibration(turns: pd.DataFrame, cells: Sequence[Cell], *, tokens_per_chunk: int = 1) -> dict[str, Any] | None:
    """Measured minus known on the ``calibration`` profile, per cell and per transport (median, ms).

    The server's part is known exactly: prefill 20 ms when there are uncached tokens, then chunk k of
    ``tokens_per_chunk`` tokens at +5 ms·tpc·(k+1). So TTFT should be 20 + 5·tpc ms and the inter-chunk gap
    5·tpc ms. What is left is the pipeline's pre-prefill stages (reported apart), the transport and the
    harness; ``inproc`` has no transport, so ``ttft_minus_inproc_ms`` is the transport's share.
    """
    cal = [c for c in cells if c.profile == "calibration"]
    t = _measured(turns)
    if not cal or not len(t):
        return None
    t = t[t["success"].astype(bool) & t["cell"].isin([c.cell for c in cal])].copy()
    if not len(t):
        return None
    step = CALIBRATION_TOKEN_MS * max(1, tokens_per_chunk)
    prefilled = t["stage_prefill_tokens"].fillna(1) > 0 if "stage_prefill_tokens" in t else True
    t["known_ttft_ms"] = np.where(prefilled, CALIBRATION_PREFILL_MS, 0.0) + step
    t["ttft_residual_ms"] = t["ttft_ms"] - t["known_ttft_ms"]
    pre = [f"stage_{s}_wall_ms" for s in PRE_PREFILL if f"stage_{s}_wall_ms" in t]
    t["server_pre_ms"] = t[pre].fillna(0.0).sum(axis=1) if pre else np.nan
    itl = _itl(t)

    def block(sel: pd.DataFrame, gaps: pd.Series) -> dict[str, Any]:
        est, lo, hi = bootstrap_ci(sel["ttft_residual_ms"], n_boot=N_BOOT)
        gap_med = float(np.median(gaps)) if len(gaps) else float("nan")
        return {"n_turns": len(sel), "ttft_ms": float(sel["ttft_ms"].median()), "ttft_residual_ms": est,
                "ttft_residual_ci": [lo, hi], "itl_ms": gap_med, "itl_residual_ms": gap_med - step,
                "server_pre_ms": float(sel["server_pre_ms"].median()),
                "ttft_residual_net_ms": est - float(sel["server_pre_ms"].median())}

    per_cell = {c.cell: {"transport": c.transport, "state": c.state,
                         **block(t[t["cell"] == c.cell], itl.loc[itl["cell"] == c.cell, "itl_ms"])}
                for c in cal if (t["cell"] == c.cell).any()}
    by_transport: dict[str, Any] = {}
    for tr in dict.fromkeys(c.transport for c in cal):
        ids = [c.cell for c in cal if c.transport == tr]
        sel = t[t["cell"].isin(ids)]
        if len(sel):
            by_transport[tr] = block(sel, itl.loc[itl["cell"].isin(ids), "itl_ms"])
    base = by_transport.get("inproc")
    for r in by_transport.values():
        r["ttft_minus_inproc_ms"] = r["ttft_residual_ms"] - base["ttft_residual_ms"] if base else None
    return {"known_ttft_ms": CALIBRATION_PREFILL_MS + step, "known_itl_ms": step,
            "tokens_per_chunk": tokens_per_chunk, "cells": per_cell, "by_transport": by_transport,
            "harness_residual": base}


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent.parent, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict[str, Any]:
    """Commit, dirtiness, Python, platform, CPU and library versions: what a rerun needs to match."""
    versions: dict[str, str | None] = {}
    for name in VERSIONS:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    status = _git("status", "--porcelain")
    import psutil

    return {"git_commit": _git("rev-parse", "HEAD"), "git_dirty": None if status is None else bool(status),
            "python": sys.version.split()[0], "python_full": sys.version, "platform": platform.platform(),
            "cpu": {"model": _cpu_model(), "count": os.cpu_count(),
                    "physical": psutil.cpu_count(logical=False), "affinity": len(os.sched_getaffinity(0))
                    if hasattr(os, "sched_getaffinity") else None},
            "versions": versions}
