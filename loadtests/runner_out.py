"""The run directory: what ``turnbench run`` leaves behind, and the one reader the report uses.

Layout (the contract with ``turnbench report``)::

    <out>/turns.parquet + turns.jsonl        one row per turn (metrics.turns_frame + LABELS)
    <out>/rollouts.parquet + rollouts.jsonl  one row per rollout (metrics.rollouts_frame + LABELS + queue_ms)
    <out>/run.json                           how to rerun it and what it ran on (see ``build_meta``)
    <out>/summary.json                       per cell: percentiles + bootstrap CIs, ratios vs https/full

``LABELS`` are ``scenario, profile, concurrency, arrival_rate_rps, mode, cell, round, warmup, variant, tls``.
Warm-up rows are kept (``warmup == True``) and dropped from every summary. Summaries are computed from the
raw samples, never from rounded buckets.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from loadtests.metrics import read_samples, rollouts_frame, turns_frame, write_samples
from loadtests.runner_stats import calibration, environment, summarize_cells, windowed_monitor
from turnbench.settings import Settings

if TYPE_CHECKING:
    from loadtests.procs import Endpoint
    from loadtests.runner import Cell, Collected, RunConfig
    from loadtests.scenarios import Scenario

__all__ = ["LABELS", "RunData", "format_table", "load_run", "write_run"]

LABELS = ("scenario", "profile", "concurrency", "arrival_rate_rps", "mode", "cell", "round", "warmup",
          "variant", "tls")
TABLE_TURNS = (1, 10, 20)  # 1-based: turn k is the k-th request of a rollout


@dataclass
class RunData:
    """A run directory in memory: raw samples and the run record (``summary`` from summary.json)."""

    turns: pd.DataFrame
    rollouts: pd.DataFrame
    meta: dict[str, Any]
    summary: dict[str, Any] = field(default_factory=dict)


def jsonable(value: Any) -> Any:
    """NaN/inf → None, numpy scalars → Python, tuples → lists, recursively (strict JSON for run.json)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def default_out_dir(scenarios: Sequence[Scenario]) -> Path:
    """``reports/runs/<UTC timestamp>-<scenario names>`` under the current directory."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return Path("reports") / "runs" / f"{stamp}-{'+'.join(s.name for s in scenarios)}"


def server_record(ep: Endpoint, exit_code: int | None, cpu_ready_s: float | None) -> dict[str, Any]:
    """run.json["servers"][key]: how it was started, its PID, its CPU time while serving, its exit."""
    proc = ep.process
    kind = "process" if proc is not None else ("inproc" if ep.transport == "inproc" else "target")
    total = proc.cpu_s() if proc is not None else None
    # what the server ran with: defaults, then TURNBENCH_* variables (inherited), then the runner's flags
    settings = Settings.from_env(**ep.settings).as_dict() if kind != "target" else {}
    return {"transport": ep.transport, "kind": kind, "url": ep.url or None,
            "argv": proc.argv if proc is not None else None, "pid": proc.pid if proc is not None else None,
            "cpu_s": None if total is None or cpu_ready_s is None else total - cpu_ready_s,
            "cpu_startup_s": cpu_ready_s if proc is not None else None, "exit_code": exit_code,
            "settings": settings}


def frames(collected: Collected) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Turn and rollout frames with the label columns (one label row per sample)."""
    turn_rows: list[dict[str, Any]] = []
    roll_rows: list[dict[str, Any]] = []
    turns = []
    rollouts = []
    for s in collected.samples:
        labels = {**s.cell.labels(), "round": s.round, "warmup": s.warmup}
        rollouts.append(s.rollout)
        roll_rows.append({**labels, "queue_ms": s.rollout.turns[0].queue_ms if s.rollout.turns else math.nan})
        for t in s.rollout.turns:
            turns.append(t)
            turn_rows.append(labels)
    tdf, rdf = turns_frame(turns), rollouts_frame(rollouts)
    for df, rows in ((tdf, turn_rows), (rdf, roll_rows)):
        extra = pd.DataFrame.from_records(rows, columns=[*LABELS, "queue_ms"] if rows is roll_rows else LABELS)
        for col in extra.columns:
            df[col] = extra[col].to_numpy() if len(df) else pd.Series(dtype=object)
    for df in (tdf, rdf):
        if len(df):
            df["concurrency"] = df["concurrency"].astype("Int64")
            df["arrival_rate_rps"] = df["arrival_rate_rps"].astype("float64")
    return tdf, rdf


def _injected(config: RunConfig, servers: dict[str, dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, rec in servers.items():
        if rec.get("kind") == "target":
            out[key] = "unknown: external target (its own settings apply)"
            continue
        knobs = {name: {k: v for k, v in dict(rec["settings"].get(name) or {}).items() if v}
                 for name in ("inject_ms", "burn_us")}
        knobs = {k: v for k, v in knobs.items() if v}
        if knobs:
            out[key] = knobs
    return out


def build_meta(config: RunConfig, cells: Sequence[Cell], collected: Collected,
               servers: dict[str, dict[str, Any]], cell_stats: dict[str, Any],
               calib: dict[str, Any] | None) -> dict[str, Any]:
    """run.json: enough to rerun the run and to judge it (commit, versions, CPU, servers, monitor)."""
    return {
        "created_at": datetime.now(UTC).isoformat(),
        **environment(),
        "argv": list(config.argv) or list(sys.argv),
        "loop": collected.loop,
        "gc": config.gc,
        "task_tag": config.task_tag,
        "scenarios": {s.name: s.as_dict() for s in config.scenarios},
        "cells": [{"cell": c.cell, "transport": c.transport, "server": c.server, "state": c.state,
                   "scenario": c.scenario.name, "profile": c.profile, "concurrency": c.concurrency,
                   "arrival_rate_rps": c.arrival_rate_rps, "mode": c.mode, "variant": c.variant, "tls": c.tls,
                   "endpoint": c.endpoint_key, "server_settings": servers[c.endpoint_key]["settings"]}
                  for c in cells],
        "servers": servers,
        "monitor": {**windowed_monitor(collected.monitor, collected.chunks, config), "system": collected.system,
                    "cells": {k: v["monitor"] for k, v in cell_stats.items()}},
        "injected": _injected(config, servers),
        "calibration": calib,
        "chunks": [{"cell": ch.cell, "round": ch.round, "warmup": ch.warmup, "rollouts": ch.rollouts,
                    "turns": ch.turns, "wall_s": ch.wall_s, "client_cpu_s": ch.client_cpu_s,
                    "server_cpu_s": ch.server_cpu_s,
                    "lag_p99_ms": float(np.percentile(ch.lag_ms, 99)) if ch.lag_ms else None}
                   for ch in collected.chunks],
    }


def write_run(out: Path, config: RunConfig, cells: Sequence[Cell], collected: Collected,
              servers: dict[str, dict[str, Any]]) -> RunData:
    """Write the whole run directory; returns it as :class:`RunData`."""
    out.mkdir(parents=True, exist_ok=True)
    tdf, rdf = frames(collected)
    write_samples(tdf, out / "turns")
    write_samples(rdf, out / "rollouts")
    tpc = Settings.from_env(**config.server_settings).tokens_per_chunk
    cell_stats = summarize_cells(tdf, rdf, cells, collected.chunks, config)
    calib = calibration(tdf, cells, tokens_per_chunk=tpc)
    meta = jsonable(build_meta(config, cells, collected, servers, cell_stats, calib))
    summary = jsonable({"run": str(out), "cells": cell_stats})
    (out / "run.json").write_text(json.dumps(meta, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    (out / "summary.json").write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return RunData(turns=tdf, rollouts=rdf, meta=meta, summary=summary)


def load_run(directory: str | Path) -> RunData:
    """Read a run directory written by ``turnbench run`` (Parquet preferred, JSONL otherwise)."""
    d = Path(directory)
    if not (d / "run.json").is_file():
        raise FileNotFoundError(f"{d} is not a turnbench run directory (no run.json)")
    meta = json.loads((d / "run.json").read_text(encoding="utf-8"))
    summary_path = d / "summary.json"
    summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.is_file() else {}
    return RunData(turns=read_samples(d / "turns"), rollouts=read_samples(d / "rollouts"), meta=meta,
                   summary=summary)


# ---------------------------------------------------------------------------------------------- text


def _f(v: Any, digits: int = 1) -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{digits}f}"


def _pair(stats: dict[str, Any] | None, digits: int = 1) -> str:
    if not stats:
        return "-"
    return f"{_f(stats.get('p50'), digits)}/{_f(stats.get('p99'), digits)}"


def format_table(data: RunData) -> str:
    """Plain aligned text: one block per scenario/profile/load, one row per transport and state."""
    cells: dict[str, Any] = data.summary.get("cells", {})
    blocks: dict[str, list[dict[str, Any]]] = {}
    for cid, c in cells.items():
        load = f"rate {c['arrival_rate_rps']:g}/s" if c["mode"] == "open" else f"concurrency {c['concurrency']}"
        head = f"{c['scenario']} · profile {c['profile']} · {load}" + \
            (f" · variant {c['variant']}" if c["variant"] != "default" else "")
        blocks.setdefault(head, []).append({"cell": cid, **c})
    header = ["transport", "state", "rollouts", "rollout_ms p50/p99",
              *(f"ttft t{k} p50/p99" for k in TABLE_TURNS), "up B/turn", "down B/turn", "srv cpu ms/turn",
              "connect_ms"]
    lines = ["(ms; p50/p99 from raw samples; turn k = k-th request of a rollout; warm-up excluded)"]
    for head, rows in blocks.items():
        table = [header]
        for c in rows:
            by_turn = c.get("ttft_by_turn", {})
            table.append([
                c["transport"], c["state"], f"{c['n_rollouts']}" + (f" ({c['failed_rollouts']} failed)"
                                                                    if c["failed_rollouts"] else ""),
                _pair(c["metrics"].get("rollout_ms")),
                *(_pair(by_turn.get(str(k))) for k in TABLE_TURNS),
                _f((c["metrics"].get("bytes_up") or {}).get("mean"), 0),
                _f((c["metrics"].get("bytes_down") or {}).get("mean"), 0),
                _f(c.get("server_cpu_ms_per_turn"), 2),
                _f((c["metrics"].get("connect_ms") or {}).get("p50"), 2),
            ])
        widths = [max(len(r[i]) for r in table) for i in range(len(header))]
        lines += ["", head]
        lines += ["  ".join(v.rjust(w) if i > 1 else v.ljust(w) for i, (v, w) in enumerate(zip(r, widths,
                                                                                            strict=True)))
                  for r in table]
    calib = data.meta.get("calibration")
    if calib:
        lines += ["", f"calibration: known TTFT {calib['known_ttft_ms']:g} ms, ITL {calib['known_itl_ms']:g} ms; "
                  "residual = measured - known (median)"]
        for t, r in calib["by_transport"].items():
            lines.append(f"  {t:<12} ttft residual {_f(r['ttft_residual_ms'], 2):>7} ms  "
                         f"itl residual {_f(r['itl_residual_ms'], 3):>7} ms  "
                         f"minus inproc {_f(r.get('ttft_minus_inproc_ms'), 2):>7} ms  "
                         f"(server pre-prefill stages {_f(r['server_pre_ms'], 2)} ms)")
    return "\n".join(lines)


def print_warnings(data: RunData, file: IO[str]) -> int:
    """Print saturation, failure and server-exit warnings. Returns: the exit status the run should have."""
    status = 0
    mon = data.meta["monitor"]
    if mon.get("saturated"):
        print(f"WARNING: the load generator saturated ({mon.get('reason')}): its own delays are in the "
              "latencies, which then blame the transport for the client. Lower the load or use more cores.",
              file=file)
        system = mon.get("system") or {}
        busy, util = system.get("cpu_busy"), mon.get("cpu_util")
        if busy is not None and util is not None and util < 0.5:
            print(f"  the client itself used only {util:.0%} of a core; the machine was {busy:.0%} busy on "
                  f"{system.get('cores')} cores (load average {system.get('loadavg_1m_end'):.1f}): the stalls "
                  "come from CPU contention (the servers, other processes), which delays the client all "
                  "the same", file=file)
    for cid, m in mon.get("cells", {}).items():
        if m.get("saturated"):
            note = " (inproc runs the service in this process)" if ":inproc:" in cid else ""
            print(f"WARNING: cell {cid} saturated the load generator: {m.get('reason')}{note}", file=file)
    cells = data.summary.get("cells", {})
    for cid, c in cells.items():
        if c["failed_rollouts"]:
            print(f"WARNING: {c['failed_rollouts']} of {c['n_rollouts'] + c['failed_rollouts']} rollouts "
                  f"failed in {cid}: {c.get('first_error')}", file=file)
    if cells and all(c["n_rollouts"] == 0 for c in cells.values()):
        status = 1
    for key, s in data.meta["servers"].items():
        if s["kind"] == "process" and s["exit_code"] != 0:
            print(f"ERROR: server {key} (pid {s['pid']}) exited with status {s['exit_code']}", file=file)
            status = 1
    return status
