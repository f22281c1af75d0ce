"""Locust's raw samples, merged: every worker process of a distributed run (``--processes N``, or ``--master``
and ``--worker`` across hosts) writes its own ``--tb-samples PATH.<pid>`` file of rollouts; :func:`merge` puts
them into one set of rows, so the figures are the same whether one process or ten generated the load, and
:func:`summary` gives per transport the rollouts finished, their rate, and turn, TTFT and rollout percentiles
from the raw samples (Locust's own statistics round response times into buckets: a live view only)."""

from __future__ import annotations

import glob
from collections.abc import Iterable
from pathlib import Path

import msgspec
import numpy as np
import pandas as pd

from clients.base import RolloutResult
from loadtests.runs.rundir import rollouts_frame, turns_frame, write_samples

__all__ = ["merge", "read_samples", "summary", "write_merged"]

_decoder = msgspec.json.Decoder(RolloutResult)


def read_samples(paths: Iterable[str | Path]) -> list[RolloutResult]:
    """Every rollout in ``paths`` (JSON Lines, one rollout per line); a line cut short by a killed worker is
    skipped, never a failure of the merge."""
    out: list[RolloutResult] = []
    for path in paths:
        for line in Path(path).read_bytes().splitlines():
            if line.strip():
                try:
                    out.append(_decoder.decode(line))
                except msgspec.DecodeError:
                    continue
    return out


def _end_ns(r: RolloutResult) -> int:
    """When a rollout's last turn ended, on the host's monotonic clock (every process of a host shares it)."""
    return max((t.t_send_ns + int((t.turn_ms or 0.0) * 1e6) for t in r.turns), default=0)


def merge(prefix: str | Path, *, until_ns: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """The turns and rollouts of every ``<prefix>.<pid>`` file, and the files read. ``until_ns``: only the
    rollouts finished by then (``time.perf_counter_ns()`` of this host: a worker that outlived its master
    must not add rollouts the run did not count)."""
    files = sorted(glob.glob(f"{glob.escape(str(prefix))}.*"))
    rollouts = read_samples(files)
    if until_ns is not None:
        rollouts = [r for r in rollouts if _end_ns(r) <= until_ns]
    return turns_frame(t for r in rollouts for t in r.turns), rollouts_frame(rollouts), files


def write_merged(prefix: str | Path, out: Path, *, until_ns: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`merge`, written as ``out/turns.{parquet,jsonl}`` and ``out/rollouts.{parquet,jsonl}``."""
    turns, rollouts, _ = merge(prefix, until_ns=until_ns)
    write_samples(turns, out / "turns")
    write_samples(rollouts, out / "rollouts")
    return turns, rollouts


def summary(turns: pd.DataFrame, rollouts: pd.DataFrame, duration_s: float) -> pd.DataFrame:
    """Per transport and state: rollouts finished (ok, failed), rollouts/s over ``duration_s``, and p50/p99 of
    turn time, TTFT and rollout time in ms, from the raw samples."""
    rows = []
    for (tr, st), r in rollouts.groupby(["transport", "state"]):
        ok = r[r["success"].astype(bool)]
        t = turns[(turns["transport"] == tr) & (turns["state"] == st) & turns["success"].astype(bool)]

        def pct(s: pd.Series, q: float) -> float:
            v = pd.to_numeric(s, errors="coerce").dropna().to_numpy(dtype=float)
            return float(np.percentile(v, q)) if v.size else float("nan")

        rows.append(
            {
                "transport": tr,
                "state": st,
                "rollouts": len(ok),
                "failed": len(r) - len(ok),
                "rollouts_per_s": len(ok) / duration_s if duration_s > 0 else float("nan"),
                "turn_p50_ms": pct(t["turn_ms"], 50),
                "turn_p99_ms": pct(t["turn_ms"], 99),
                "ttft_p50_ms": pct(t["ttft_ms"], 50),
                "ttft_p99_ms": pct(t["ttft_ms"], 99),
                "rollout_p50_ms": pct(ok["rollout_ms"], 50),
            }
        )
    return pd.DataFrame(rows)
