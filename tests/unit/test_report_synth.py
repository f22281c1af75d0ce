"""Synthetic run directories in the runner's format, with known medians, for the report/gate/compare tests.

``make_run`` writes ``turns``/``rollouts`` (Parquet + JSONL), ``run.json`` and ``summary.json`` exactly as
the runner's contract describes them. Rollout times of a cell are ``median × (1 + spread·k)`` for a
symmetric set of k, so the cell's median is exactly the given median and the headline ratios are known.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from loadtests.metrics import read_samples, write_samples
from turnbench.settings import STAGES, Settings

# (transport, state) -> median rollout_ms at the fast profile, concurrency 1
MEDIANS: dict[tuple[str, str], float] = {
    ("inproc", "full"): 500.0,
    ("https", "full"): 1000.0,
    ("https", "store"): 900.0,
    ("ws", "connection"): 600.0,
    ("ws", "store"): 700.0,
    ("grpc", "connection"): 660.0,
}
PROFILE_SCALE = {"fast": 1.0, "instant": 0.5}
# ablation variants on ws/connection (fast, c=1): factor on the default median
ABLATIONS = {"no-token_cache": 1.2, "no-incremental_checks": 1.1, "tokens_per_chunk-8": 0.95}
STAGE_CPU_MS = {"parse": 0.2, "validate": 0.3, "resolve": 0.05, "safety": 0.8, "render": 1.0, "route": 0.02,
                "prefill": 0.1, "decode": 0.5, "post": 0.3}


def _spread(n: int, spread: float) -> np.ndarray:
    k = np.linspace(-1.0, 1.0, n)
    return 1.0 + spread * k


def make_run(
    path: Path,
    *,
    medians: Mapping[tuple[str, str], float] = MEDIANS,
    n_rollouts: int = 9,
    n_turns: int = 21,
    spread: float = 0.1,
    concurrencies: tuple[int, ...] = (1, 4),
    profiles: tuple[str, ...] = ("fast", "instant"),
    scenario: str = "agent-20",
    ablations: Mapping[str, float] = ABLATIONS,
    stage_cpu_ms: Mapping[str, float] = STAGE_CPU_MS,
    cpu_factor: Mapping[tuple[str, str], float] | None = None,
    injected: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> Path:
    """Write a synthetic run directory at ``path``; returns it. Times in ms, bytes in bytes."""
    rng = np.random.default_rng(seed)
    turn_rows: list[dict[str, Any]] = []
    roll_rows: list[dict[str, Any]] = []
    cells: list[dict[str, Any]] = []
    rid = 0
    for profile in profiles:
        for conc in concurrencies:
            variants: dict[str, float] = {"default": 1.0}
            if profile == "fast" and conc == min(concurrencies):
                variants.update(ablations)
            for (transport, state), median in medians.items():
                for variant, factor in variants.items():
                    if variant != "default" and (transport, state) != ("ws", "connection"):
                        continue
                    cell = f"{scenario}/{profile}/c{conc}/{transport}/{state}/{variant}"
                    cells.append({"cell": cell, "transport": transport, "state": state, "profile": profile,
                                  "concurrency": conc, "variant": variant, "scenario": scenario,
                                  "server_settings": Settings(profile=profile).as_dict()})
                    m = median * PROFILE_SCALE[profile] * factor * (1.0 + 0.2 * (conc - 1))
                    times = m * _spread(n_rollouts, spread)
                    rng.shuffle(times)
                    cpu_f = (cpu_factor or {}).get((transport, state), 1.0)
                    for i, rollout_ms in enumerate(times):
                        common = {"transport": transport, "state": state, "rollout_id": rid,
                                  "scenario": scenario, "profile": profile, "concurrency": conc,
                                  "arrival_rate_rps": None, "mode": "closed", "cell": cell, "round": i % 3,
                                  "warmup": False, "variant": variant, "tls": True}
                        roll_rows.append({**common, "success": True, "rollout_ms": float(rollout_ms),
                                          "tool_ms": 5.0, "recoveries": 0, "recovery_ms": 0.0,
                                          "connect_ms": 3.0, "n_turns": n_turns, "n_tool_calls": n_turns - 1})
                        for t in range(n_turns):
                            turn_ms = float(rollout_ms) / n_turns
                            row = {**common, "turn_index": t, "success": True, "error_code": None,
                                   "ttft_ms": turn_ms * 0.4 + t * 0.1, "ttfb_ms": turn_ms * 0.3,
                                   "itl_ms": [1.0, 1.1], "itl_p50_ms": 1.05, "turn_ms": turn_ms,
                                   "latency_ms": turn_ms, "queue_ms": 0.0, "connect_ms": 3.0 if t == 0 else None,
                                   "chunks": 12, "events": 20, "output_tokens": 12, "input_tokens": 100 * (t + 1),
                                   "cached_tokens": 90 * t, "tool_ms": 0.25,
                                   "bytes_up": 4000 * (t + 1) if state == "full" else 4000,
                                   "bytes_down": 2000}
                            for stage in STAGES:
                                cpu = stage_cpu_ms.get(stage, 0.1) * cpu_f * float(rng.uniform(0.9, 1.1))
                                row[f"stage_{stage}_cpu_ms"] = cpu
                                row[f"stage_{stage}_wall_ms"] = cpu * 1.3
                                row[f"stage_{stage}_items"] = 1
                                row[f"stage_{stage}_tokens"] = 10
                            turn_rows.append(row)
                        rid += 1
    path.mkdir(parents=True, exist_ok=True)
    write_samples(pd.DataFrame(turn_rows), path / "turns")
    write_samples(pd.DataFrame(roll_rows), path / "rollouts")
    meta = {"created_at": "2026-01-01T00:00:00Z", "git_commit": "0123456789abcdef", "git_dirty": False,
            "python": "3.11.9", "platform": "Linux-x86_64", "cpu": "synthetic CPU, 2 cores",
            "versions": {"turnbench": "0.1.0", "numpy": np.__version__}, "argv": ["turnbench", "bench"],
            "scenarios": [scenario], "cells": cells, "servers": {},
            "monitor": {"cpu_util": 0.4, "loop_lag_p99_ms": 0.8, "saturated": False, "reason": None},
            "injected": dict(injected or {}),
            "calibration": [{"transport": "https", "ttft_known_ms": 25.0, "ttft_measured_ms": 26.5,
                             "residual_ms": 1.5}]}
    (path / "run.json").write_text(json.dumps(meta, indent=2))
    (path / "summary.json").write_text("{}")
    return path


def test_make_run_roundtrip(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", concurrencies=(1,), profiles=("fast",))
    rollouts = read_samples(run / "rollouts")
    turns = read_samples(run / "turns")
    https = rollouts[(rollouts.transport == "https") & (rollouts.state == "full")]
    assert float(https.rollout_ms.median()) == 1000.0
    assert len(turns) == len(rollouts) * 21
    assert turns.itl_ms.iloc[0] == [1.0, 1.1]
