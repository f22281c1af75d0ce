"""The calibration residuals: measured minus known on the ``calibration`` sim profile (:func:`calibration`)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from loadtests.analysis.cells import N_BOOT_CELL, itl_frame
from loadtests.analysis.estimators import bootstrap_ci
from loadtests.analysis.records import Calibration, CalibrationBlock, CalibrationCell
from loadtests.execution.plan import CellRecord

PRE_PREFILL = ("parse", "validate", "resolve", "safety", "render", "route")
CALIBRATION_PREFILL_MS = 20.0
CALIBRATION_TOKEN_MS = 5.0


def calibration(turns: pd.DataFrame, cells: Sequence[CellRecord]) -> Calibration | None:
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
    itl = itl_frame(t)
    itl["itl_residual_ms"] = itl["itl_ms"] - itl["cell"].map(step_of)

    def block(sel: pd.DataFrame, gaps: pd.DataFrame) -> CalibrationBlock:
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

    per_cell: dict[str, CalibrationCell] = {
        c["cell"]: {
            "transport": c["transport"],
            "state": c["state"],
            **block(t[t["cell"] == c["cell"]], itl[itl["cell"] == c["cell"]]),
        }
        for c in cal
        if (t["cell"] == c["cell"]).any()
    }
    by_transport: dict[str, CalibrationBlock] = {}
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
