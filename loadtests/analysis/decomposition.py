"""Where a rollout's time goes: per rollout, the server's stages, the model time the sim profile predicts, the
client's and the transport's share (:func:`rollout_decomposition`), and per cell (:func:`decomposition`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from loadtests.analysis.cells import cell_rows, successful
from loadtests.analysis.estimators import finite
from loadtests.analysis.records import CellDecomposition
from loadtests.execution.plan import CellRecord, ChunkRecord


def _chunk_shares(chunks: Sequence[ChunkRecord]) -> dict[tuple[str, int], tuple[float, float | None]]:
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
    turns: pd.DataFrame, rollouts: pd.DataFrame, cells: Sequence[CellRecord], chunks: Sequence[ChunkRecord]
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
    r_ok = successful(rollouts)
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


def decomposition(frame: pd.DataFrame, cells: Sequence[CellRecord]) -> dict[str, CellDecomposition]:
    """``summary.json["decomposition"]``: per cell, the *means* over rollouts of :func:`rollout_decomposition`
    (means add up: rollout = model + tool + server CPU + client CPU + rest), the server CPU per stage, and
    the median measured and predicted rollout times (what the headline's ratios use)."""
    out: dict[str, CellDecomposition] = {}
    for c in cells:
        rows = cell_rows(frame, str(c["cell"]))
        if len(rows):
            out[str(c["cell"])] = _cell_decomposition(rows, c["concurrency"])
    return out


def _cell_decomposition(rows: pd.DataFrame, concurrency: int | None) -> CellDecomposition:
    def mean(col: str) -> float:
        vals = finite(rows[col])
        return float(vals.mean()) if vals.size else math.nan

    def median(col: str) -> float:
        vals = finite(rows[col])
        return float(np.median(vals)) if vals.size else math.nan

    stage_cols = [k for k in rows.columns if k.startswith("stage_") and k.endswith("_cpu_ms")]
    return {
        "n": len(rows),
        "concurrency": concurrency,
        "rollout_ms": mean("rollout_ms"),
        "model_ms": mean("model_ms"),
        "tool_ms": mean("tool_ms"),
        "server_cpu_ms": mean("server_cpu_ms"),
        "server_stage_cpu_ms": mean("server_stage_cpu_ms"),
        "client_cpu_ms": mean("client_cpu_ms"),
        "predicted_ms": mean("predicted_ms"),
        "rest_ms": mean("rest_ms"),
        "stages_cpu_ms": {k[6:-7]: mean(k) for k in stage_cols},
        "rollout_p50_ms": median("rollout_ms"),
        "predicted_p50_ms": median("predicted_ms"),
    }
