"""The load generator's own verdict over a run: its CPU and event-loop lag in the windows where measured
rollouts ran, overall and per cell, with the machine's background load meanwhile (``run.json["monitor"]``).

Computed from the chunks' raw loop lags, which only the writer of a run sees.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from loadtests.execution.machine import combine, contention
from loadtests.execution.monitor import MonitorReport, saturation
from loadtests.execution.plan import ChunkStat


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
