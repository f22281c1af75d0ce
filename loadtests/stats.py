"""Every number the harness reports, computed from raw per-request samples (DESIGN §6), in one place.

Estimators: percentiles with linear interpolation, never from rounded buckets; a seeded, vectorised
percentile bootstrap for intervals (:func:`bootstrap_ci`); ratios between two samples of one run
(:func:`ratio_ci`), which cancels most machine drift.

Run statistics, from the measured rows of a run (warm-up dropped by :class:`loadtests.rundir.RunDir`) and
its cell and chunk records (``run.json``): per cell (:func:`cell_summaries`: what ``turnbench run`` prints
and ``summary.json`` holds), the headline (:func:`headline`: every cell against HTTPS ``full`` and
``store``), the ablations (:func:`ablations`) and the calibration residuals (:func:`calibration`);
:func:`summarize_run` computes them all, for the runner, the report and ``summary.json`` alike. Failed
rollouts are counted, never timed. The load generator's own verdicts (:func:`windowed_monitor`) are here
too: they are computed from the chunks' raw loop lags, which only the writer of a run sees.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt
import pandas as pd

from loadtests.machine import combine, contention
from loadtests.model import ChunkStat
from loadtests.monitor import MonitorReport, saturation
from loadtests.verdict import Verdict, verdicts

__all__ = [
    "BASELINES",
    "DEFAULT_QS",
    "RunSummary",
    "ablations",
    "bootstrap_ci",
    "calibration",
    "cell_monitor",
    "cell_summaries",
    "cell_table",
    "decomposition",
    "headline",
    "label",
    "percentiles",
    "ratio_ci",
    "rollout_decomposition",
    "summarize",
    "summarize_run",
    "windowed_monitor",
]

FloatArray = npt.NDArray[np.float64]
Values: TypeAlias = Iterable[float | None] | npt.NDArray[Any] | pd.Series
"""Raw samples: a list (None allowed), a numpy array or a pandas Series; non-finite values are dropped."""
Stat = Callable[..., Any]
"""A statistic called as ``stat(x, axis=-1)`` on a 2-D array (``np.median``, ``np.mean``, ...)."""
Record = Mapping[str, Any]
"""A cell or chunk as ``run.json`` lists it."""

DEFAULT_QS: tuple[float, ...] = (50, 90, 99)
_MAX_BOOT_CELLS = 8_000_000  # resampled values held at once (~64 MB of float64): bounds bootstrap memory

TURN_METRICS = ("ttft_ms", "ttfb_ms", "turn_ms", "latency_ms", "queue_ms", "bytes_up", "bytes_down")
ROLLOUT_METRICS = ("rollout_ms", "tool_ms", "connect_ms", "n_turns")
BY_TURN = (1, 5, 10, 20, 50)  # 1-based: turn k is the k-th request of a rollout
PRE_PREFILL = ("parse", "validate", "resolve", "safety", "render", "route")
CALIBRATION_PREFILL_MS = 20.0
CALIBRATION_TOKEN_MS = 5.0
N_BOOT_CELL = 1000  # per-cell intervals
N_BOOT_RATIO = 2000  # headline and ablation ratios
BASELINES: tuple[tuple[str, str], ...] = (("https", "full"), ("https", "store"))
"""The (transport, state) cells every other cell is compared with in the headline."""


# ------------------------------------------------------------------------------------------------ estimators


def _finite(values: Values) -> FloatArray:
    """Values as a 1-D float array with None/NaN/inf dropped (a failed turn has no TTFT, not a zero one)."""
    if isinstance(values, pd.Series | pd.Index):
        arr = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    elif isinstance(values, np.ndarray):
        arr = values.astype(np.float64).ravel()
    else:
        arr = np.asarray(list(values), dtype=np.float64)  # None becomes NaN
    finite: FloatArray = arr[np.isfinite(arr)]
    return finite


def _qkey(q: float) -> str:
    return f"p{q:g}"


def percentiles(values: Values, qs: Sequence[float] = DEFAULT_QS) -> dict[str, float]:
    """Percentiles of the finite values (linear interpolation), keyed ``p50``, ``p99.9`` ...; NaN if empty."""
    arr = _finite(values)
    if arr.size == 0:
        return {_qkey(q): math.nan for q in qs}
    got = np.percentile(arr, list(qs), method="linear")
    return {_qkey(q): float(v) for q, v in zip(qs, np.atleast_1d(got), strict=True)}


def _boot_stats(arr: FloatArray, stat: Stat, n_boot: int, rng: np.random.Generator) -> FloatArray:
    """``n_boot`` values of ``stat`` over resamples (with replacement) of ``arr``, in bounded chunks."""
    n = arr.size
    chunk = max(1, _MAX_BOOT_CELLS // n)
    out = np.empty(n_boot, dtype=np.float64)
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        out[start:stop] = np.asarray(stat(arr[idx], axis=-1), dtype=np.float64)
    return out


def _interval(boot: FloatArray, ci: float) -> tuple[float, float]:
    boot = boot[~np.isnan(boot)]
    if boot.size == 0:
        return math.nan, math.nan
    alpha = (1.0 - ci) / 2.0
    lo, hi = np.quantile(boot, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def bootstrap_ci(
    values: Values, stat: Stat = np.median, n_boot: int = 2000, ci: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """Percentile-bootstrap interval of ``stat`` over the finite values.

    Returns: ``(estimate, lo, hi)`` in the values' unit; NaNs if there are no values.
    """
    arr = _finite(values)
    if arr.size == 0:
        return math.nan, math.nan, math.nan
    est = float(stat(arr))
    if arr.size == 1:
        return est, est, est
    lo, hi = _interval(_boot_stats(arr, stat, n_boot, np.random.default_rng(seed)), ci)
    return est, lo, hi


def ratio_ci(
    a: Values, b: Values, stat: Stat = np.median, n_boot: int = 2000, ci: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """Bootstrap interval of ``stat(a) / stat(b)``, resampling ``a`` and ``b`` independently.

    Meant for two samples from one run (e.g. WS rollout_ms / HTTPS rollout_ms), so drift cancels.
    Returns: ``(ratio, lo, hi)``, dimensionless; NaNs if either sample is empty.
    """
    xa, xb = _finite(a), _finite(b)
    if xa.size == 0 or xb.size == 0:
        return math.nan, math.nan, math.nan
    rng = np.random.default_rng(seed)
    with np.errstate(divide="ignore", invalid="ignore"):
        est = float(np.float64(stat(xa)) / np.float64(stat(xb)))
        ratios = _boot_stats(xa, stat, n_boot, rng) / _boot_stats(xb, stat, n_boot, rng)
    lo, hi = _interval(ratios, ci)
    return est, lo, hi


def summarize(
    df: pd.DataFrame,
    by: Sequence[str] = ("transport", "state"),
    metrics: Sequence[str] = ("ttft_ms", "turn_ms", "latency_ms"),
    *,
    qs: Sequence[float] = DEFAULT_QS,
    n_boot: int = 2000,
    ci: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Per group and metric: ``n`` (finite values), percentiles, ``mean`` and the bootstrap CI of the
    median (``p50_lo``, ``p50_hi``). Long format: ``by + [metric, n, p50, ..., mean, p50_lo, p50_hi]``.

    Failed turns are not filtered here: pass ``df[df.success]`` when only successes should count.
    """
    by_cols = list(by)
    metric_cols = [m for m in metrics if m in df.columns]
    groups: Iterable[tuple[Any, pd.DataFrame]]
    groups = df.groupby(by_cols, dropna=False, sort=True) if by_cols else [((), df)]
    rows: list[dict[str, Any]] = []
    for key, group in groups:
        keys = key if isinstance(key, tuple) else (key,)
        for metric in metric_cols:
            values = _finite(group[metric])
            row: dict[str, Any] = dict(zip(by_cols, keys, strict=True))
            row["metric"] = metric
            row["n"] = int(values.size)
            row.update(percentiles(values, qs))
            row["mean"] = float(values.mean()) if values.size else math.nan
            _, row["p50_lo"], row["p50_hi"] = bootstrap_ci(values, np.median, n_boot, ci, seed)
            rows.append(row)
    columns = [*by_cols, "metric", "n", *(_qkey(q) for q in qs), "mean", "p50_lo", "p50_hi"]
    return pd.DataFrame(rows, columns=columns)


# ------------------------------------------------------------------------------------------------ run: cells


def label(df: pd.DataFrame) -> pd.Series:
    """``transport/state`` per row, the name a cell goes by in tables and legends."""
    return df["transport"].astype(str) + "/" + df["state"].astype(str)


def _label(cell: Record) -> str:
    return f"{cell['transport']}/{cell['state']}"


def _ok(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["success"].astype(bool)] if len(df) else df


def _rows(df: pd.DataFrame, cell: str) -> pd.DataFrame:
    return df[df["cell"] == cell] if len(df) else df


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


def _same_load(a: Record, b: Record) -> bool:
    return all(a[k] == b[k] for k in ("scenario", "profile", "concurrency", "arrival_rate_rps"))


def _reference(cell: Record, cells: Sequence[Record]) -> Record | None:
    """The https/full cell this cell's ratios are taken against (same scenario, profile, load; the same
    variant if there is one, else the default)."""
    matches = [o for o in cells if o["transport"] == "https" and o["state"] == "full" and _same_load(o, cell)]
    for o in matches:
        if o["variant"] == cell["variant"]:
            return o
    return next((o for o in matches if o["variant"] == "default"), None)


def provided(turns: pd.DataFrame) -> dict[str, bool]:
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


def stream_rates(turns: pd.DataFrame, server_cpu_s: float | None) -> dict[str, Any] | None:
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


def cell_summaries(
    turns: pd.DataFrame, rollouts: pd.DataFrame, cells: Sequence[Record], chunks: Sequence[Record]
) -> dict[str, dict[str, Any]]:
    """``summary.json["cells"]``: per cell, n, percentiles + CI of the turn and rollout metrics, TTFT per
    turn number, CPU per turn (server and client, in ms), recoveries, closed-loop throughput (concurrency ÷
    mean rollout time, rollouts/s), and the ratios of median TTFT, turn and rollout time vs ``https/full``.

    ``turns``/``rollouts``: the measured rows; ``cells``/``chunks``: the records of ``run.json``.
    """
    t_ok, r_ok = _ok(turns), _ok(rollouts)
    t_stats = (
        _stats_by_metric(summarize(t_ok, by=["cell"], metrics=TURN_METRICS, n_boot=N_BOOT_CELL)) if len(t_ok) else {}
    )
    r_stats = (
        _stats_by_metric(summarize(r_ok, by=["cell"], metrics=ROLLOUT_METRICS, n_boot=N_BOOT_CELL)) if len(r_ok) else {}
    )
    itl = _itl(t_ok)
    i_stats = _stats_by_metric(summarize(itl, by=["cell"], metrics=["itl_ms"], n_boot=N_BOOT_CELL)) if len(itl) else {}
    out: dict[str, dict[str, Any]] = {}
    for c in cells:
        cid = c["cell"]
        ct, cr, cr_all = _rows(t_ok, cid), _rows(r_ok, cid), _rows(rollouts, cid)
        failed = cr_all[~cr_all["success"].astype(bool)] if len(cr_all) else cr_all
        by_turn: dict[str, Any] = {}
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
        mine = [ch for ch in chunks if ch["cell"] == cid and not ch["warmup"]]
        n_turns = sum(int(ch["turns"]) for ch in mine)
        srv = [ch["server_cpu_s"] for ch in mine]
        ratios: dict[str, Any] = {}
        ref = _reference(c, cells)
        if ref is not None and ref["cell"] != cid and len(t_ok) and len(r_ok):
            rt, rr = _rows(t_ok, ref["cell"]), _rows(r_ok, ref["cell"])
            ratios = {
                "vs": ref["cell"],
                "rollout_ms": ratio_ci(cr["rollout_ms"], rr["rollout_ms"], n_boot=N_BOOT_CELL),
                "ttft_ms": ratio_ci(ct["ttft_ms"], rt["ttft_ms"], n_boot=N_BOOT_CELL),
                "turn_ms": ratio_ci(ct["turn_ms"], rt["turn_ms"], n_boot=N_BOOT_CELL),
            }
        mean_ms = float(cr["rollout_ms"].mean()) if len(cr) else math.nan
        out[cid] = {
            **{
                k: c.get(k)
                for k in (
                    "transport",
                    "server",
                    "state",
                    "scenario",
                    "profile",
                    "concurrency",
                    "arrival_rate_rps",
                    "mode",
                    "variant",
                    "tls",
                    "endpoint",
                    "rtt_ms",
                    "bandwidth_mbps",
                )
            },
            "n_rollouts": len(cr_all) - len(failed),
            "failed_rollouts": len(failed),
            "first_error": str(failed["error"].iloc[0]) if len(failed) else None,
            "n_turns": len(ct),
            "metrics": {**t_stats.get(cid, {}), **r_stats.get(cid, {}), **i_stats.get(cid, {})},
            "ttft_by_turn": by_turn,
            "server_cpu_ms_per_turn": (1000.0 * sum(srv) / n_turns) if n_turns and srv and None not in srv else None,
            "stream": stream_rates(ct, sum(srv) if srv and None not in srv else None),
            "provided": provided(ct),
            "client_cpu_ms_per_turn": (1000.0 * sum(ch["client_cpu_s"] for ch in mine) / n_turns) if n_turns else None,
            "recoveries": int(cr_all["recoveries"].sum()) if len(cr_all) and "recoveries" in cr_all else 0,
            "rollouts_per_s": c["concurrency"] * 1000.0 / mean_ms if c["mode"] == "closed" and mean_ms > 0 else None,
            "ratio_vs_https_full": ratios,
        }
    return out


def cell_table(summaries: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """The per-cell summaries as one table row per cell (the report's "All cells"): rollouts ok/failed,
    median rollout_ms with its CI, p90, median TTFT and turn_ms, mean bytes up/down per turn, recoveries,
    closed-loop throughput (rollouts/s). Sorted by scenario, profile, load, variant, transport, state."""

    def order(c: Mapping[str, Any]) -> tuple[Any, ...]:
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

    def metric(c: Mapping[str, Any], name: str, key: str) -> float:
        value = (c["metrics"].get(name) or {}).get(key)
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


# ------------------------------------------------------------------------------------------------ run: decomposition


def _chunk_shares(chunks: Sequence[Record]) -> dict[tuple[str, int], tuple[float, float | None]]:
    """(cell, round) → (client CPU ms, server process CPU ms) per rollout of that measured chunk."""
    out: dict[tuple[str, int], tuple[float, float | None]] = {}
    for ch in chunks:
        if ch["warmup"] or not ch["rollouts"]:
            continue
        n = int(ch["rollouts"])
        srv = ch.get("server_cpu_s")
        out[(str(ch["cell"]), int(ch["round"]))] = (
            1000.0 * float(ch["client_cpu_s"]) / n,
            None if srv is None else 1000.0 * float(srv) / n,
        )
    return out


def _sim_model_ms(turns: pd.DataFrame, settings: Mapping[str, Any]) -> npt.NDArray[np.float64] | None:
    """Per turn, the model time the ``sim`` engine's profile gives for the tokens it prefilled and decoded
    (``prefill_ms(computed, context) + token_ms(context) × decoded``), in ms; None when the server ran another
    engine, the profile is unknown here, or the turns lack the token counts."""
    if settings.get("engine", "sim") != "sim" or not settings.get("profile"):
        return None
    need = ("stage_prefill_tokens", "stage_decode_tokens", "input_tokens")
    if any(col not in turns for col in need):
        return None
    from turnbench.engine.sim import get_profile

    try:
        prof = get_profile(str(settings["profile"]))
    except ValueError:
        return None
    out = np.zeros(len(turns))
    cols = [pd.to_numeric(turns[col], errors="coerce").fillna(0).to_numpy() for col in need]
    for i, (computed, decoded, context) in enumerate(zip(*cols, strict=True)):
        out[i] = prof.prefill_ms(int(computed), int(context)) + prof.token_ms(int(context)) * int(decoded)
    return out


def rollout_decomposition(
    turns: pd.DataFrame, rollouts: pd.DataFrame, cells: Sequence[Record], chunks: Sequence[Record]
) -> pd.DataFrame:
    """Where each measured, successful rollout's time went, in ms — a split that does not depend on how busy
    the machine was, next to the wall clock that does.

    Columns: ``cell``, ``rollout_id``, ``round``, ``rollout_ms`` (measured); ``model_ms`` (the ``sim``
    engine's modelled prefill + decode time; for another engine, the prefill and decode stages' wall time less
    the server CPU spent inside them); ``tool_ms``; ``server_cpu_ms`` (the
    server process's CPU, its chunk's share per rollout; for ``inproc``, the stages' CPU);
    ``server_stage_cpu_ms`` (the pipeline stages' thread CPU, summed over turns) and ``stage_<name>_cpu_ms``;
    ``client_cpu_ms`` (the load generator's CPU, its chunk's share; ``inproc``: less the stages');
    ``predicted_ms`` = model + tool + server CPU + client CPU: the rollout had nothing ever waited for a
    CPU (a chunk at concurrency above 1 runs rollouts side by side, so there it is not a rollout time);
    ``rest_ms`` = measured − predicted: network, framing, waiting for a CPU (negative where CPU work
    overlapped model time).
    """
    columns = [
        "cell",
        "rollout_id",
        "round",
        "rollout_ms",
        "model_ms",
        "tool_ms",
        "server_cpu_ms",
        "server_stage_cpu_ms",
        "client_cpu_ms",
        "predicted_ms",
        "rest_ms",
    ]
    r_ok = _ok(rollouts)
    if not len(r_ok) or not len(turns):
        return pd.DataFrame(columns=columns)
    cpu_cols = [c for c in turns.columns if c.startswith("stage_") and c.endswith("_cpu_ms")]
    model = [s for s in ("prefill", "decode") if f"stage_{s}_wall_ms" in turns and f"stage_{s}_cpu_ms" in turns]
    num = [*cpu_cols, *(f"stage_{s}_wall_ms" for s in model)]
    t = turns[["cell", "rollout_id", *num]].copy()
    t[num] = t[num].apply(pd.to_numeric, errors="coerce").fillna(0.0)
    t["model_ms"] = 0.0
    for s in model:
        t["model_ms"] += (t[f"stage_{s}_wall_ms"] - t[f"stage_{s}_cpu_ms"]).clip(lower=0.0)
    for c in cells:  # the sim engine's own cost model, where it applies: free of the machine's load
        sel = (turns["cell"] == c["cell"]).to_numpy()
        if sel.any():
            nominal = _sim_model_ms(turns[sel], c.get("server_settings") or {})
            if nominal is not None:
                t.loc[sel, "model_ms"] = nominal
    t["server_stage_cpu_ms"] = t[cpu_cols].sum(axis=1) if cpu_cols else 0.0
    per = t.groupby(["cell", "rollout_id"], sort=False)[[*cpu_cols, "model_ms", "server_stage_cpu_ms"]].sum()
    out = r_ok[["cell", "rollout_id", "round", "rollout_ms", "tool_ms"]].join(per, on=["cell", "rollout_id"])
    shares = _chunk_shares(chunks)
    inproc = {str(c["cell"]) for c in cells if c.get("server") == "inproc" or c.get("transport") == "inproc"}
    client, server = [], []
    for cell, rnd, stage_cpu in zip(out["cell"], out["round"], out["server_stage_cpu_ms"], strict=True):
        cl, sv = shares.get((str(cell), int(rnd)), (math.nan, None))
        if cell in inproc:  # the service ran in the load generator's process
            client.append(cl - float(stage_cpu))
            server.append(float(stage_cpu))
        else:
            client.append(cl)
            server.append(math.nan if sv is None else sv)
    out["client_cpu_ms"] = client
    out["server_cpu_ms"] = server
    out["predicted_ms"] = out["model_ms"] + out["tool_ms"] + out["server_cpu_ms"] + out["client_cpu_ms"]
    out["rest_ms"] = out["rollout_ms"] - out["predicted_ms"]
    return out[[*columns, *cpu_cols]].reset_index(drop=True)


def decomposition(frame: pd.DataFrame, cells: Sequence[Record]) -> dict[str, dict[str, Any]]:
    """``summary.json["decomposition"]``: per cell, the *means* over rollouts of :func:`rollout_decomposition`
    (means add up: rollout = model + tool + server CPU + client CPU + rest), the server CPU per stage, and
    the median measured and predicted rollout times (what the headline's ratios use)."""
    out: dict[str, dict[str, Any]] = {}
    for c in cells:
        rows = _rows(frame, str(c["cell"]))
        if not len(rows):
            continue
        stage_cols = [k for k in rows.columns if k.startswith("stage_") and k.endswith("_cpu_ms")]

        def mean(col: str, rows: pd.DataFrame = rows) -> float:
            vals = _finite(rows[col])
            return float(vals.mean()) if vals.size else math.nan

        out[str(c["cell"])] = {
            "n": len(rows),
            "concurrency": c["concurrency"],
            **{
                k: mean(k)
                for k in (
                    "rollout_ms",
                    "model_ms",
                    "tool_ms",
                    "server_cpu_ms",
                    "server_stage_cpu_ms",
                    "client_cpu_ms",
                    "predicted_ms",
                    "rest_ms",
                )
            },
            "stages_cpu_ms": {k[6:-7]: mean(k) for k in stage_cols},
            "rollout_p50_ms": float(np.median(m)) if (m := _finite(rows["rollout_ms"])).size else math.nan,
            "predicted_p50_ms": float(np.median(p)) if (p := _finite(rows["predicted_ms"])).size else math.nan,
        }
    return out


# ------------------------------------------------------------------------------------------------ run: ratios


def _ratio_row(num: pd.Series, den: pd.Series, n_boot: int, seed: int) -> dict[str, float]:
    ratio, lo, hi = ratio_ci(num, den, n_boot=n_boot, seed=seed)
    return {
        "ratio": ratio,
        "lo": lo,
        "hi": hi,
        "change_pct": (ratio - 1) * 100,
        "change_lo": (lo - 1) * 100,
        "change_hi": (hi - 1) * 100,
    }


_PRED_KEYS = ("pred_ratio", "pred_lo", "pred_hi", "pred_reduction_pct", "pred_reduction_lo", "pred_reduction_hi")


def _tool_calls(rollouts: pd.DataFrame) -> int:
    if "n_tool_calls" in rollouts.columns and rollouts["n_tool_calls"].notna().any():
        return int(rollouts["n_tool_calls"].median())
    return max(0, int(rollouts["n_turns"].median()) - 1) if "n_turns" in rollouts.columns else 0


def headline(
    rollouts: pd.DataFrame,
    cells: Sequence[Record],
    *,
    concurrency: int | None = None,
    predicted: pd.DataFrame | None = None,
    n_boot: int = N_BOOT_RATIO,
    seed: int = 0,
) -> pd.DataFrame:
    """End-to-end rollout time of every cell against HTTPS ``full`` and HTTPS ``store``.

    Per scenario and profile, closed-loop cells at ``concurrency`` (default: the lowest measured), default
    variant only; the calibration scenario and the in-process reference are left out.
    Returns one row per (cell, baseline): ``cell`` is its ``transport/state`` label (``cell_id``, ``vs_id``:
    the two cells' ids); ``ratio`` = median rollout_ms of the cell ÷ that of the baseline, its bootstrap
    95% CI (``lo``, ``hi``), ``reduction_pct`` = (1 − ratio)·100 with ``reduction_lo/hi``, the medians in ms,
    sample counts and failed rollouts. With ``predicted`` (:func:`rollout_decomposition`) and concurrency 1,
    also ``pred_ratio`` [``pred_lo``, ``pred_hi``] and ``pred_reduction_pct`` [``pred_reduction_lo``,
    ``pred_reduction_hi``]: the same ratio of the rollout times the CPU decomposition predicts.
    """
    main = [
        c
        for c in cells
        if c["variant"] == "default"
        and c["scenario"] != "calibration"
        and c["transport"] != "inproc"
        and c["mode"] == "closed"
    ]
    if not main or rollouts.empty:
        return pd.DataFrame()
    conc = concurrency if concurrency is not None else min(int(c["concurrency"]) for c in main)
    main = [c for c in main if c["concurrency"] == conc]
    rows: list[dict[str, Any]] = []
    for scenario, profile in sorted({(c["scenario"], c["profile"]) for c in main}):
        group = sorted((c for c in main if (c["scenario"], c["profile"]) == (scenario, profile)), key=_label)
        tools = _tool_calls(rollouts[rollouts["cell"].isin([c["cell"] for c in group])])
        for base_t, base_s in BASELINES:
            base_cell = next((c for c in group if (c["transport"], c["state"]) == (base_t, base_s)), None)
            base = _rows(rollouts, base_cell["cell"]) if base_cell is not None else rollouts.iloc[:0]
            if base.empty:
                continue
            for cell in group:
                lab, rows_of_cell = _label(cell), _rows(rollouts, cell["cell"])
                if rows_of_cell.empty or (
                    cell["transport"] == "https" and (cell["state"] == base_s or base_s == "store")
                ):
                    continue
                ok, base_ok = _ok(rows_of_cell)["rollout_ms"], _ok(base)["rollout_ms"]
                rr = _ratio_row(ok, base_ok, n_boot, seed)
                pred = {k: math.nan for k in _PRED_KEYS}
                if predicted is not None and conc == 1 and len(predicted):
                    pa = _rows(predicted, cell["cell"])["predicted_ms"]
                    pb = _rows(predicted, base_cell["cell"])["predicted_ms"]  # type: ignore[index]
                    if _finite(pa).size and _finite(pb).size:
                        pr = _ratio_row(pa, pb, n_boot, seed)
                        pred = {
                            "pred_ratio": pr["ratio"],
                            "pred_lo": pr["lo"],
                            "pred_hi": pr["hi"],
                            "pred_reduction_pct": -pr["change_pct"],
                            "pred_reduction_lo": -pr["change_hi"],
                            "pred_reduction_hi": -pr["change_lo"],
                        }
                rows.append(
                    {
                        "scenario": scenario,
                        "profile": profile,
                        "concurrency": conc,
                        "tool_calls": tools,
                        "cell": lab,
                        "vs": f"{base_t}/{base_s}",
                        "cell_id": cell["cell"],
                        "vs_id": base_cell["cell"],  # type: ignore[index]
                        "ratio": rr["ratio"],
                        "lo": rr["lo"],
                        "hi": rr["hi"],
                        "reduction_pct": -rr["change_pct"],
                        "reduction_lo": -rr["change_hi"],
                        "reduction_hi": -rr["change_lo"],
                        "p50_ms": float(ok.median()),
                        "base_p50_ms": float(base_ok.median()),
                        "n": len(ok),
                        "n_base": len(base_ok),
                        "failed": len(rows_of_cell) - len(ok) + len(base) - len(base_ok),
                        **pred,
                    }
                )
    return pd.DataFrame(rows)


def _setting_change(name: str, value: Any) -> str:
    """``token_cache off``, ``tokens_per_chunk = 8``: a server setting as an ablation changes it."""
    if isinstance(value, bool):
        return f"{name} {'on' if value else 'off'}"
    return f"{name} = {value}"


def ablations(
    rollouts: pd.DataFrame, cells: Sequence[Record], *, n_boot: int = N_BOOT_RATIO, seed: int = 0
) -> pd.DataFrame:
    """Each variant cell against the default cell of the same scenario, profile, load, transport and
    state: ``setting`` = the server settings in which they differ; ``change_pct`` = (median rollout_ms
    off ÷ on − 1)·100 with its 95% CI; ``share_pct``: that slowdown as a share of the default cell's gap
    to HTTPS ``full`` in the same run (how much of the transport's advantage the mechanism explains;
    shares need not add up to 100%)."""

    def key(c: Record) -> tuple[Any, ...]:
        return (c["scenario"], c["profile"], c["concurrency"] or 0, c["transport"], c["state"], c["variant"])

    rows: list[dict[str, Any]] = []
    for c in sorted((c for c in cells if c["variant"] != "default"), key=key):
        same = [o for o in cells if o["variant"] == "default" and _same_load(o, c)]
        on_cell = next((o for o in same if (o["transport"], o["state"]) == (c["transport"], c["state"])), None)
        https = next((o for o in same if (o["transport"], o["state"]) == ("https", "full")), None)
        if on_cell is None:
            continue
        off, on = _ok(_rows(rollouts, c["cell"]))["rollout_ms"], _ok(_rows(rollouts, on_cell["cell"]))["rollout_ms"]
        changed = {k: v for k, v in c["settings"].items() if on_cell["settings"].get(k) != v}
        row: dict[str, Any] = {
            "scenario": c["scenario"],
            "profile": c["profile"],
            "concurrency": c["concurrency"],
            "transport": c["transport"],
            "state": c["state"],
            "variant": c["variant"],
            "setting": ", ".join(_setting_change(k, v) for k, v in sorted(changed.items())) or "(same server settings)",
            "cell": _label(c),
        }
        row.update(_ratio_row(off, on, n_boot, seed))
        on_ms, off_ms = float(on.median()), float(off.median())
        base = _ok(_rows(rollouts, https["cell"]))["rollout_ms"] if https is not None else pd.Series(dtype=float)
        gap = float(base.median()) - on_ms if len(base) else math.nan
        row.update(
            on_p50_ms=on_ms,
            off_p50_ms=off_ms,
            share_pct=(off_ms - on_ms) / gap * 100 if math.isfinite(gap) and gap > 0 else math.nan,
        )
        rows.append(row)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------ run: calibration


def calibration(turns: pd.DataFrame, cells: Sequence[Record]) -> dict[str, Any] | None:
    """Measured minus known on the ``calibration`` profile, per cell and per transport (median, ms).

    The server's part is known exactly: prefill 20 ms when there are uncached tokens, then chunk k of
    ``tokens_per_chunk`` tokens at +5 ms·tpc·(k+1). So TTFT should be 20 + 5·tpc ms and the inter-chunk gap
    5·tpc ms, with each cell's server's ``tokens_per_chunk`` (``server_settings`` of its record). What is
    left is the pipeline's pre-prefill stages (reported apart), the transport and the harness; ``inproc``
    has no transport, so ``ttft_minus_inproc_ms`` is the transport's share.
    """
    cal = [c for c in cells if c["profile"] == "calibration"]
    if not cal or not len(turns):
        return None
    t = turns[turns["success"].astype(bool) & turns["cell"].isin([c["cell"] for c in cal])].copy()
    if not len(t):
        return None
    step_of = {
        c["cell"]: CALIBRATION_TOKEN_MS * max(1, int(c["server_settings"].get("tokens_per_chunk", 1))) for c in cal
    }
    t["known_itl_ms"] = t["cell"].map(step_of)
    prefilled = t["stage_prefill_tokens"].fillna(1) > 0 if "stage_prefill_tokens" in t else True
    t["known_ttft_ms"] = np.where(prefilled, CALIBRATION_PREFILL_MS, 0.0) + t["known_itl_ms"]
    t["ttft_residual_ms"] = t["ttft_ms"] - t["known_ttft_ms"]
    pre = [f"stage_{s}_wall_ms" for s in PRE_PREFILL if f"stage_{s}_wall_ms" in t]
    t["server_pre_ms"] = t[pre].fillna(0.0).sum(axis=1) if pre else np.nan
    itl = _itl(t)
    itl["itl_residual_ms"] = itl["itl_ms"] - itl["cell"].map(step_of)

    def block(sel: pd.DataFrame, gaps: pd.DataFrame) -> dict[str, Any]:
        est, lo, hi = bootstrap_ci(sel["ttft_residual_ms"], n_boot=N_BOOT_CELL)
        return {
            "n_turns": len(sel),
            "ttft_ms": float(sel["ttft_ms"].median()),
            "ttft_residual_ms": est,
            "ttft_residual_ci": [lo, hi],
            "itl_ms": float(np.median(gaps["itl_ms"])) if len(gaps) else math.nan,
            "itl_residual_ms": float(np.median(gaps["itl_residual_ms"])) if len(gaps) else math.nan,
            "server_pre_ms": float(sel["server_pre_ms"].median()),
            "ttft_residual_net_ms": est - float(sel["server_pre_ms"].median()),
        }

    per_cell = {
        c["cell"]: {
            "transport": c["transport"],
            "state": c["state"],
            **block(t[t["cell"] == c["cell"]], itl[itl["cell"] == c["cell"]]),
        }
        for c in cal
        if (t["cell"] == c["cell"]).any()
    }
    by_transport: dict[str, Any] = {}
    for tr in dict.fromkeys(c["transport"] for c in cal):
        ids = [c["cell"] for c in cal if c["transport"] == tr]
        sel = t[t["cell"].isin(ids)]
        if len(sel):
            by_transport[tr] = block(sel, itl[itl["cell"].isin(ids)])
    base = by_transport.get("inproc")
    for r in by_transport.values():
        r["ttft_minus_inproc_ms"] = r["ttft_residual_ms"] - base["ttft_residual_ms"] if base else None
    step = step_of[cal[0]["cell"]]
    return {
        "known_ttft_ms": CALIBRATION_PREFILL_MS + step,
        "known_itl_ms": step,
        "tokens_per_chunk": int(step / CALIBRATION_TOKEN_MS),
        "cells": per_cell,
        "by_transport": by_transport,
        "harness_residual": base,
    }


# ------------------------------------------------------------------------------------------------ run: all


@dataclass(frozen=True)
class RunSummary:
    """Every statistic of one run; :meth:`as_json` is ``summary.json``."""

    cells: dict[str, dict[str, Any]]
    headline: pd.DataFrame
    ablations: pd.DataFrame
    calibration: dict[str, Any] | None
    decomposition: dict[str, dict[str, Any]] = field(default_factory=dict)
    verdicts: list[Verdict] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        def records(df: pd.DataFrame) -> list[dict[str, Any]]:
            return [{str(k): v for k, v in r.items()} for r in df.to_dict("records")]

        return {
            "verdicts": [v.as_json() for v in self.verdicts],
            "cells": self.cells,
            "headline": records(self.headline),
            "decomposition": self.decomposition,
            "ablations": records(self.ablations),
            "calibration": self.calibration,
        }


def summarize_run(
    turns: pd.DataFrame,
    rollouts: pd.DataFrame,
    cells: Sequence[Record],
    chunks: Sequence[Record],
    meta: Mapping[str, Any] | None = None,
) -> RunSummary:
    """Per-cell summaries, headline (measured and predicted), the decomposition, ablations, calibration, and
    the claim's verdicts (:func:`loadtests.verdict.verdicts`, which read ``meta``: run.json's monitor and
    bench records) from the measured rows and the records."""
    frame = rollout_decomposition(turns, rollouts, cells, chunks)
    head = headline(rollouts, cells, predicted=frame)
    return RunSummary(
        cells=cell_summaries(turns, rollouts, cells, chunks),
        headline=head,
        ablations=ablations(rollouts, cells),
        calibration=calibration(turns, cells),
        decomposition=decomposition(frame, cells),
        verdicts=verdicts(head.to_dict("records"), meta or {}),
    )


# ------------------------------------------------------------------------------------------------ load generator


def cell_monitor(chunks: Sequence[ChunkStat], *, cpu_threshold: float, lag_p99_threshold_ms: float) -> dict[str, Any]:
    """The load generator over ``chunks``: CPU as a fraction of one core, loop-lag p99 (ms), the verdict;
    and the machine meanwhile: ``background`` (:func:`loadtests.machine.combine` of the chunks' windows:
    other processes' CPU, idle cores, steal, CPU pressure) and ``contended`` (why, or None)."""
    wall = sum(c.wall_s for c in chunks)
    cpu = sum(c.client_cpu_s for c in chunks)
    lags = [x for c in chunks for x in c.lag_ms]
    util = cpu / wall if wall else float("nan")
    p99 = float(np.percentile(lags, 99)) if lags else float("nan")
    reason = saturation(util, p99, cpu_threshold=cpu_threshold, lag_p99_threshold_ms=lag_p99_threshold_ms)
    machine = combine(c.background for c in chunks)
    return {
        "cpu_util": util,
        "loop_lag_p99_ms": p99,
        "lag_samples": len(lags),
        "saturated": reason is not None,
        "reason": reason,
        "background": machine,
        "contended": contention(machine),
    }


def windowed_monitor(
    raw: MonitorReport, chunks: Sequence[ChunkStat], *, cpu_threshold: float, lag_p99_threshold_ms: float
) -> dict[str, Any]:
    """``run.json["monitor"]``: the load generator over the windows in which measured rollouts ran, and
    per cell (``cells``).

    Between chunks the runner collects garbage and starts/stops nothing that is timed, so stalls there
    cannot touch a sample; the whole-run report is kept under ``whole_run``.
    """
    limits = {"cpu_threshold": cpu_threshold, "lag_p99_threshold_ms": lag_p99_threshold_ms}
    measured = [c for c in chunks if not c.warmup] or list(chunks)
    win = cell_monitor(measured, **limits)
    lags = np.asarray([x for c in measured for x in c.lag_ms], dtype=np.float64)
    whole = {k: getattr(raw, k) for k in raw.__struct_fields__}
    by_cell: dict[str, list[ChunkStat]] = {}
    for c in chunks:
        if not c.warmup:
            by_cell.setdefault(c.cell, []).append(c)
    return {
        **whole,
        "cpu_util": win["cpu_util"],
        "loop_lag_p99_ms": win["loop_lag_p99_ms"],
        "lag_samples": win["lag_samples"],
        "loop_lag_p50_ms": float(np.median(lags)) if lags.size else float("nan"),
        "loop_lag_max_ms": float(lags.max()) if lags.size else float("nan"),
        "saturated": win["saturated"],
        "reason": win["reason"],
        "background": win["background"],
        "contended": win["contended"],
        "whole_run": whole,
        "cells": {cell: cell_monitor(mine, **limits) for cell, mine in by_cell.items()},
    }
