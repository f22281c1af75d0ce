"""The headline: every cell's rollout time against HTTPS ``full`` and ``store`` of the same load, measured and
predicted (:func:`headline`), and the ablations, one setting changed at a time (:func:`ablations`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pandas as pd

from loadtests.analysis.cells import cell_label, cell_rows, same_load, successful
from loadtests.analysis.estimators import finite, ratio_ci
from loadtests.execution.plan import CellRecord
from loadtests.workload.scenarios import State

N_BOOT_RATIO = 2000  # headline and ablation ratios
BASELINES: tuple[tuple[str, State], ...] = (("https", "full"), ("https", "store"))
"""The (transport, state) cells every other cell is compared with in the headline."""


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
    cells: Sequence[CellRecord],
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
    conc = concurrency if concurrency is not None else min(int(c["concurrency"] or 0) for c in main)  # closed loop: set
    main = [c for c in main if c["concurrency"] == conc]
    rows: list[dict[str, Any]] = []
    for scenario, profile in sorted({(c["scenario"], c["profile"]) for c in main}):
        group = sorted((c for c in main if (c["scenario"], c["profile"]) == (scenario, profile)), key=cell_label)
        tools = _tool_calls(rollouts[rollouts["cell"].isin([c["cell"] for c in group])])
        for base_t, base_s in BASELINES:
            base_cell = next((c for c in group if (c["transport"], c["state"]) == (base_t, base_s)), None)
            base = cell_rows(rollouts, base_cell["cell"]) if base_cell is not None else rollouts.iloc[:0]
            if base.empty:
                continue
            for cell in group:
                lab, rows_of_cell = cell_label(cell), cell_rows(rollouts, cell["cell"])
                if rows_of_cell.empty or (
                    cell["transport"] == "https" and (cell["state"] == base_s or base_s == "store")
                ):
                    continue
                ok, base_ok = successful(rows_of_cell)["rollout_ms"], successful(base)["rollout_ms"]
                rr = _ratio_row(ok, base_ok, n_boot, seed)
                pred = {k: math.nan for k in _PRED_KEYS}
                if predicted is not None and conc == 1 and len(predicted):
                    pa = cell_rows(predicted, cell["cell"])["predicted_ms"]
                    pb = cell_rows(predicted, base_cell["cell"])["predicted_ms"]  # type: ignore[index]
                    if finite(pa).size and finite(pb).size:
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
    rollouts: pd.DataFrame, cells: Sequence[CellRecord], *, n_boot: int = N_BOOT_RATIO, seed: int = 0
) -> pd.DataFrame:
    """Each variant cell against the default cell of the same scenario, profile, load, transport and
    state: ``setting`` = the server settings in which they differ; ``change_pct`` = (median rollout_ms
    off ÷ on − 1)·100 with its 95% CI; ``share_pct``: that slowdown as a share of the default cell's gap
    to HTTPS ``full`` in the same run (how much of the transport's advantage the mechanism explains;
    shares need not add up to 100%)."""

    def key(c: CellRecord) -> tuple[Any, ...]:
        return (c["scenario"], c["profile"], c["concurrency"] or 0, c["transport"], c["state"], c["variant"])

    rows: list[dict[str, Any]] = []
    for c in sorted((c for c in cells if c["variant"] != "default"), key=key):
        same = [o for o in cells if o["variant"] == "default" and same_load(o, c)]
        on_cell = next((o for o in same if (o["transport"], o["state"]) == (c["transport"], c["state"])), None)
        https = next((o for o in same if (o["transport"], o["state"]) == ("https", "full")), None)
        if on_cell is None:
            continue
        off, on = (
            successful(cell_rows(rollouts, c["cell"]))["rollout_ms"],
            successful(cell_rows(rollouts, on_cell["cell"]))["rollout_ms"],
        )
        changed = {k: v for k, v in c["settings"].items() if on_cell["settings"].get(k) != v}
        row: dict[str, Any] = {
            "scenario": c["scenario"],
            "profile": c["profile"],
            "concurrency": c["concurrency"],
            "transport": c["transport"],
            "state": c["state"],
            "variant": c["variant"],
            "setting": ", ".join(_setting_change(k, v) for k, v in sorted(changed.items())) or "(same server settings)",
            "cell": cell_label(c),
        }
        row.update(_ratio_row(off, on, n_boot, seed))
        on_ms, off_ms = float(on.median()), float(off.median())
        base = (
            successful(cell_rows(rollouts, https["cell"]))["rollout_ms"]
            if https is not None
            else pd.Series(dtype=float)
        )
        gap = float(base.median()) - on_ms if len(base) else math.nan
        row.update(
            on_p50_ms=on_ms,
            off_p50_ms=off_ms,
            share_pct=(off_ms - on_ms) / gap * 100 if math.isfinite(gap) and gap > 0 else math.nan,
        )
        rows.append(row)
    return pd.DataFrame(rows)
