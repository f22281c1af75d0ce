"""The run directory: one class writes it and reads it back, for the runner, the report, the gate and compare.

Layout::

    <dir>/turns.parquet + turns.jsonl        one row per turn: the TurnResult fields (stages flattened) + LABELS
    <dir>/rollouts.parquet + rollouts.jsonl  one row per rollout: per-turn sums + LABELS + queue_ms
    <dir>/run.json                           how to rerun it and what it ran on: environment, argv, scenarios,
                                             cells, servers, chunks, load-generator monitor, injected latency,
                                             and whatever its maker adds (``bench``, ``gate``)
    <dir>/summary.json                       :func:`loadtests.stats.summarize_run` of the rows above

``LABELS`` are ``scenario, profile, concurrency, arrival_rate_rps, mode, cell, round, warmup, variant, tls,
rtt_ms`` (the emulated network's round trip, 0 on loopback).

Decisions, in one place:

- **Warm-up rows are kept on disk** (``warmup == True``, so a reader can look at cold starts) and dropped by
  one accessor: :meth:`RunDir.samples` (``warmup=False`` by default), behind :attr:`RunDir.turns` and
  :attr:`RunDir.rollouts`. No statistic sees a warm-up row.
- **run.json is required**: without it a directory is not a run (:class:`RunDirError` says so); the cells,
  servers and chunks every statistic needs are in it.
- **run.json is written once**, with everything its maker passes (bench's matrix, the gate's reference CPU
  measurements) before it is written; nothing patches it afterwards.

Every cell record in run.json is :meth:`loadtests.model.Cell.record` (``settings``: what the cell asked its
server for) plus ``server_settings``: every Settings field of the server that served it, as it ran.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import platform
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import msgspec
import numpy as np
import pandas as pd

from clients.base import RolloutResult, TurnResult
from loadtests.analysis.cells import label
from loadtests.analysis.records import SummaryFile
from loadtests.analysis.summary import RunSummary, summarize_run
from loadtests.execution.loadgen import windowed_monitor
from loadtests.execution.plan import Cell, CellRecord, ChunkRecord, ChunkStat, Collected, RunConfig
from loadtests.workload.scenarios import Scenario

__all__ = [
    "LABELS",
    "RunDir",
    "RunDirError",
    "default_out_dir",
    "environment",
    "jsonable",
    "read_samples",
    "rollouts_frame",
    "turns_frame",
    "write_json",
    "write_samples",
]

LABELS = (
    "scenario",
    "profile",
    "concurrency",
    "arrival_rate_rps",
    "mode",
    "cell",
    "round",
    "warmup",
    "variant",
    "tls",
    "rtt_ms",
)
VERSIONS = (
    "turnbench",
    "websockets",
    "grpcio",
    "protobuf",
    "httpx",
    "httpcore",
    "starlette",
    "uvicorn",
    "hypercorn",
    "openai",
    "msgspec",
    "orjson",
    "uvloop",
    "tokenizers",
    "numpy",
    "pandas",
    "pyarrow",
    "locust",
)
_STAGE_FIELDS = ("items", "tokens", "chars")
Kind = Literal["turns", "rollouts"]


class RunDirError(FileNotFoundError):
    """A directory that is not a run directory: missing, without run.json, or without samples."""


# ------------------------------------------------------------------------------------------------ rows


def _turn_row(turn: TurnResult) -> dict[str, Any]:
    row: dict[str, Any] = msgspec.structs.asdict(turn)
    stages = row.pop("server_stages")
    itl = list(turn.itl_ms)
    row["itl_ms"] = itl
    row["itl_p50_ms"] = float(np.median(itl)) if itl else math.nan
    row["itl_p99_ms"] = float(np.percentile(itl, 99)) if itl else math.nan
    for name, timing in stages.items():
        row[f"stage_{name}_wall_ms"] = timing.wall_ns / 1e6
        row[f"stage_{name}_cpu_ms"] = timing.cpu_ns / 1e6
        for field in _STAGE_FIELDS:
            row[f"stage_{name}_{field}"] = getattr(timing, field)
    return row


def turns_frame(results: Iterable[TurnResult]) -> pd.DataFrame:
    """One row per turn: every :class:`TurnResult` field, ``itl_ms`` as a list column plus ``itl_p50_ms``
    and ``itl_p99_ms``, and server stages flattened to ``stage_<name>_{wall_ms,cpu_ms,items,tokens,chars}``
    (NaN where a turn lacks a stage)."""
    rows = [_turn_row(t) for t in results]
    if not rows:
        return pd.DataFrame(columns=[*TurnResult.__struct_fields__, "itl_p50_ms", "itl_p99_ms"]).drop(
            columns=["server_stages"]
        )
    return pd.DataFrame.from_records(rows)


def rollouts_frame(results: Iterable[RolloutResult]) -> pd.DataFrame:
    """One row per rollout: its scalar fields plus per-turn sums (``n_turns``, ``turns_failed``,
    ``bytes_up``, ``bytes_down``, ``input_tokens``, ``cached_tokens``, ``output_tokens``, ``turn_ms_sum``),
    ``n_tool_calls`` and ``tool_names`` (list column)."""
    rows: list[dict[str, Any]] = []
    for r in results:
        row: dict[str, Any] = msgspec.structs.asdict(r)
        turns: list[TurnResult] = row.pop("turns")
        calls: list[tuple[str, str]] = row.pop("tool_calls")
        row["n_turns"] = len(turns)
        row["turns_failed"] = sum(not t.success for t in turns)
        for field in ("bytes_up", "bytes_down", "input_tokens", "cached_tokens", "output_tokens"):
            row[field] = sum(getattr(t, field) for t in turns)
        row["turn_ms_sum"] = sum(t.turn_ms for t in turns if t.turn_ms is not None)
        row["n_tool_calls"] = len(calls)
        row["tool_names"] = [name for name, _ in calls]
        rows.append(row)
    if not rows:
        return pd.DataFrame(columns=[f for f in RolloutResult.__struct_fields__ if f not in ("turns", "tool_calls")])
    return pd.DataFrame.from_records(rows)


def _labelled_frames(collected: Collected) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Turn and rollout frames with the label columns (one label row per sample)."""
    turn_rows: list[dict[str, Any]] = []
    roll_rows: list[dict[str, Any]] = []
    turns: list[TurnResult] = []
    rollouts: list[RolloutResult] = []
    for s in collected.samples:
        labels = {**s.cell.labels(), "round": s.round, "warmup": s.warmup}
        rollouts.append(s.rollout)
        roll_rows.append({**labels, "queue_ms": s.rollout.turns[0].queue_ms if s.rollout.turns else math.nan})
        for t in s.rollout.turns:
            turns.append(t)
            turn_rows.append(labels)
    tdf, rdf = turns_frame(turns), rollouts_frame(rollouts)
    for df, rows, cols in ((tdf, turn_rows, LABELS), (rdf, roll_rows, (*LABELS, "queue_ms"))):
        extra = pd.DataFrame.from_records(rows, columns=list(cols))
        for col in extra.columns:
            df[col] = extra[col].to_numpy() if len(df) else pd.Series(dtype=object)
        if len(df):
            df["concurrency"] = df["concurrency"].astype("Int64")
            df["arrival_rate_rps"] = df["arrival_rate_rps"].astype("float64")
    return tdf, rdf


def write_samples(df: pd.DataFrame, path_stem: str | Path) -> tuple[Path, Path]:
    """Write ``<stem>.parquet`` (pyarrow) and ``<stem>.jsonl`` beside it; creates the folder.

    Returns: the two paths written.
    """
    stem = Path(path_stem)
    if stem.suffix in (".parquet", ".jsonl"):
        stem = stem.with_suffix("")
    stem.parent.mkdir(parents=True, exist_ok=True)
    parquet, jsonl = stem.with_suffix(".parquet"), stem.with_suffix(".jsonl")
    df.to_parquet(parquet, engine="pyarrow", index=False)
    df.to_json(jsonl, orient="records", lines=True, double_precision=15)
    return parquet, jsonl


def _lists_back(df: pd.DataFrame) -> pd.DataFrame:
    """Parquet list cells come back as numpy arrays; make them plain lists again, as written."""
    for col in df.columns:
        if df[col].dtype == object:
            first = df[col].dropna()
            if len(first) and isinstance(first.iloc[0], np.ndarray):
                df[col] = df[col].map(lambda v: v.tolist() if isinstance(v, np.ndarray) else v)
    return df


def read_samples(path: str | Path) -> pd.DataFrame:
    """Read samples written by :func:`write_samples`: a ``.parquet`` or ``.jsonl`` path, or the bare stem
    (Parquet preferred)."""
    p = Path(path)
    if p.suffix not in (".parquet", ".jsonl"):
        p = p.with_suffix(".parquet") if p.with_suffix(".parquet").exists() else p.with_suffix(".jsonl")
    if p.suffix == ".parquet":
        return _lists_back(pd.read_parquet(p, engine="pyarrow"))
    return pd.read_json(p, orient="records", lines=True)


# ------------------------------------------------------------------------------------------------ run.json


def jsonable(value: Any) -> Any:
    """NaN/inf → None, numpy scalars → Python, tuples → lists, recursively (strict JSON)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is pd.NA or value is pd.NaT:
        return None
    return value


def write_json(path: Path, data: Any) -> Path:
    """``data`` as strict JSON (no NaN: missing is null), indented; returns ``path``."""
    path.write_text(json.dumps(jsonable(data), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return path


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=Path(__file__).resolve().parents[2],
            check=True,
        )
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
    import psutil

    versions: dict[str, str | None] = {}
    for name in VERSIONS:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    status = _git("status", "--porcelain")
    return {
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
        "python": sys.version.split()[0],
        "python_full": sys.version,
        "platform": platform.platform(),
        "cpu": {
            "model": _cpu_model(),
            "count": os.cpu_count(),
            "physical": psutil.cpu_count(logical=False),
            "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        },
        "versions": versions,
    }


def default_out_dir(scenarios: Sequence[Scenario]) -> Path:
    """``reports/runs/<UTC timestamp>-<scenario names>`` under the current directory."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return Path("reports") / "runs" / f"{stamp}-{'+'.join(s.name for s in scenarios)}"


def _injected(servers: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Per server, its non-zero ``inject_ms``/``burn_us`` knobs (a target's are unknown)."""
    out: dict[str, Any] = {}
    for key, rec in servers.items():
        if rec.get("kind") == "target":
            out[key] = "unknown: external target (its own settings apply)"
            continue
        knobs = {
            name: nz
            for name in ("inject_ms", "burn_us")
            if (nz := {k: v for k, v in dict(rec["settings"].get(name) or {}).items() if v})
        }
        if knobs:
            out[key] = knobs
    return out


def _meta(config: RunConfig, cells: Sequence[Cell], collected: Collected) -> dict[str, Any]:
    """run.json without its maker's additions: enough to rerun the run and to judge it."""
    servers = collected.servers
    return {
        "created_at": datetime.now(UTC).isoformat(),
        **environment(),
        "argv": list(config.argv) or list(sys.argv),
        "loop": collected.loop,
        "gc": config.gc,
        "task_tag": config.task_tag,
        "scenarios": {c.scenario.name: c.scenario.as_dict() for c in cells},
        "cells": [{**c.record(), "server_settings": servers[c.endpoint_key]["settings"]} for c in cells],
        "servers": servers,
        "monitor": {
            **windowed_monitor(
                collected.monitor,
                collected.chunks,
                cpu_threshold=config.cpu_threshold,
                lag_p99_threshold_ms=config.lag_p99_threshold_ms,
            ),
            "system": collected.system,
        },
        "injected": _injected(servers),
        "isolation": collected.isolation,
        "trimmed": collected.trimmed,
        "chunks": [_chunk_record(ch) for ch in collected.chunks],
    }


def _chunk_record(ch: ChunkStat) -> ChunkRecord:
    """A chunk as run.json lists it: its event-loop lag as a p99, the reference CPU only where it was timed."""
    record: ChunkRecord = {
        "cell": ch.cell,
        "round": ch.round,
        "warmup": ch.warmup,
        "rollouts": ch.rollouts,
        "turns": ch.turns,
        "wall_s": ch.wall_s,
        "client_cpu_s": ch.client_cpu_s,
        "server_cpu_s": ch.server_cpu_s,
        "lag_p99_ms": float(np.percentile(ch.lag_ms, 99)) if ch.lag_ms else None,
        "background": ch.background,
    }
    if ch.reference_cpu_ms is not None:
        record["reference_cpu_ms"] = ch.reference_cpu_ms
    return record


# ------------------------------------------------------------------------------------------------ the class


class RunDir:
    """A run directory. ``RunDir(path)`` opens one (raising :class:`RunDirError` when ``path`` is not a run);
    :meth:`write` makes one. Frames and records are read once, on first use."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise RunDirError(f"run directory {self.path} does not exist")
        if not (self.path / "run.json").is_file():
            raise RunDirError(f"{self.path} is not a turnbench run directory: it has no run.json")
        for stem in ("turns", "rollouts"):
            if not any((self.path / f"{stem}{ext}").is_file() for ext in (".parquet", ".jsonl")):
                raise RunDirError(f"{self.path}: no {stem}.parquet or {stem}.jsonl")

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @classmethod
    def write(
        cls,
        path: Path,
        config: RunConfig,
        cells: Sequence[Cell],
        collected: Collected,
        meta: Mapping[str, Any] | None = None,
    ) -> RunDir:
        """Write the whole directory: samples, run.json (with ``meta`` added: the maker's own entries),
        then summary.json computed from what was written. Returns: the directory, opened."""
        path.mkdir(parents=True, exist_ok=True)
        tdf, rdf = _labelled_frames(collected)
        write_samples(tdf, path / "turns")
        write_samples(rdf, path / "rollouts")
        write_json(path / "run.json", {**_meta(config, cells, collected), **(meta or {})})
        run = cls(path)
        write_json(path / "summary.json", {"run": str(path), **run.statistics().as_json()})
        return run

    @cached_property
    def meta(self) -> dict[str, Any]:
        """run.json."""
        data: dict[str, Any] = json.loads((self.path / "run.json").read_text(encoding="utf-8"))
        return data

    @cached_property
    def summary(self) -> SummaryFile:
        """summary.json as written with the run (``{}`` if it was removed)."""
        p = self.path / "summary.json"
        data: SummaryFile = json.loads(p.read_text(encoding="utf-8")) if p.is_file() else {}
        return data

    @property
    def cells(self) -> list[CellRecord]:
        """The cell records (run.json ``cells``)."""
        cells: list[CellRecord] = self.meta["cells"]
        return cells

    @property
    def chunks(self) -> list[ChunkRecord]:
        """One record per cell and round (run.json ``chunks``): rollouts, turns, wall and CPU time in s."""
        chunks: list[ChunkRecord] = self.meta["chunks"]
        return chunks

    @cached_property
    def _frames(self) -> dict[str, pd.DataFrame]:
        out = {}
        for kind in ("turns", "rollouts"):
            df = read_samples(self.path / kind)
            df["warmup"] = df["warmup"].astype(bool)
            df["success"] = df["success"].astype(bool)
            df["label"] = label(df)
            out[kind] = df
        return out

    def samples(self, kind: Kind, *, warmup: bool = False) -> pd.DataFrame:
        """The ``turns`` or ``rollouts`` rows: measured only (the default), or with the warm-up rows too."""
        df = self._frames[kind]
        return df if warmup else df[~df["warmup"]].reset_index(drop=True)

    @property
    def turns(self) -> pd.DataFrame:
        """Measured turns (warm-up dropped)."""
        return self.samples("turns")

    @property
    def rollouts(self) -> pd.DataFrame:
        """Measured rollouts (warm-up dropped)."""
        return self.samples("rollouts")

    def statistics(self) -> RunSummary:
        """:func:`loadtests.stats.summarize_run` of this run (computed now from the rows on disk)."""
        return summarize_run(self.turns, self.rollouts, self.cells, self.chunks, self.meta)
