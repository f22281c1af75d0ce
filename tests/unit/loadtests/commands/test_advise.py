"""The advise cost model: the fit recovers known per-turn costs, and predictions follow the workload (a full
resend pays for the history it re-sends, a network round trip for every turn and handshake)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from loadtests.commands.advise import Workload, crossover, fit, gains, predict


def synthetic(
    a: float, b: float, c: float, state: str, transport: str, n_rollouts: int = 4
) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(1)
    turns, rolls = [], []
    for rid in range(n_rollouts):
        size = 1024 * (1 + 7 * (rid % 2))  # 1 KB and 8 KB tool outputs
        hist = 3000.0
        for k in range(10):
            up = hist if state == "full" or k == 0 else size + 300
            turns.append(
                {
                    "transport": transport,
                    "state": state,
                    "cell": f"{transport}/{state}",
                    "rollout_id": rid,
                    "turn_index": k,
                    "bytes_up": up,
                    "success": True,
                    "warmup": False,
                    "_hist": hist,
                }
            )
            hist += size + 300
        rolls.append(
            {
                "transport": transport,
                "state": state,
                "rollout_id": rid,
                "success": True,
                "warmup": False,
                "connect_ms": 5.0,
                "n_turns": 10,
                "tool_ms": 0.0,
            }
        )
    t = pd.DataFrame(turns)
    running = t.groupby(["cell", "rollout_id"])["bytes_up"].cumsum() / 1024.0
    h = t["bytes_up"] / 1024.0 if state == "full" else running
    t["turn_ms"] = a + b * t["bytes_up"] / 1024.0 + c * h + rng.normal(0, 0.01, len(t))
    r = pd.DataFrame(rolls)
    sums = t.groupby("rollout_id")["turn_ms"].sum()
    r["turn_ms_sum"] = r["rollout_id"].map(sums)
    r["rollout_ms"] = r["turn_ms_sum"] + 0.5 * 10  # 0.5 ms of client time between turns
    return t, r


def test_fit_recovers_the_per_turn_costs() -> None:
    t1, r1 = synthetic(2.0, 0.30, 0.05, "connection", "ws")
    t2, r2 = synthetic(3.0, 0.40, 0.0, "full", "https")
    model = fit(pd.concat([t1, t2], ignore_index=True), pd.concat([r1, r2], ignore_index=True))
    ws = model["cells"]["ws/connection"]
    assert ws["a_ms"] == pytest.approx(2.0, abs=0.05) and ws["b_ms_per_up_kb"] == pytest.approx(0.30, abs=0.01)
    assert ws["c_ms_per_history_kb"] == pytest.approx(0.05, abs=0.005)
    assert ws["between_turns_ms"] == pytest.approx(0.5, abs=0.05) and ws["connect_ms"] == 5.0
    https = model["cells"]["https/full"]
    # full resend: request = history, so only their sum is identified
    assert https["b_ms_per_up_kb"] + https["c_ms_per_history_kb"] == pytest.approx(0.40, abs=0.01)


MODEL = {
    "first_request_kb": 3.0,
    "cells": {
        "https/full": {
            "a_ms": 2.0,
            "b_ms_per_up_kb": 0.2,
            "c_ms_per_history_kb": 0.0,
            "connect_ms": 4.0,
            "between_turns_ms": 0.3,
        },
        "ws/connection": {
            "a_ms": 1.0,
            "b_ms_per_up_kb": 0.2,
            "c_ms_per_history_kb": 0.0,
            "connect_ms": 5.0,
            "between_turns_ms": 0.3,
        },
    },
}


def test_full_resend_pays_for_its_history_and_the_network_for_every_turn() -> None:
    w = Workload(turns=21, tool_output_kb=8.0, tok_s=1000.0)
    p = predict(MODEL, w)
    assert p["https/full"]["overhead_ms"] > 5 * p["ws/connection"]["overhead_ms"]  # O(turns²) against O(turns)
    assert p["https/full"]["model_ms"] == p["ws/connection"]["model_ms"]  # the same model work either way
    far = predict(MODEL, Workload(turns=21, tool_output_kb=8.0, rtt_ms=50.0))
    assert far["ws/connection"]["network_ms"] - p["ws/connection"]["network_ms"] == pytest.approx(50.0 * (21 + 3))
    assert far["https/full"]["network_ms"] - p["https/full"]["network_ms"] == pytest.approx(50.0 * (21 + 2))
    assert gains(p, "https/full")["ws/connection"] < 0
    # WebSocket's extra handshake round trip must be paid back by the history https re-sends: later at 50 ms
    near_n = crossover(MODEL, Workload(tool_output_kb=8.0))
    far_n = crossover(MODEL, Workload(tool_output_kb=8.0, rtt_ms=50.0))
    assert near_n is not None and far_n is not None and far_n > near_n
    at, before = (
        predict(MODEL, Workload(turns=far_n, tool_output_kb=8.0, rtt_ms=50.0)),
        predict(MODEL, Workload(turns=far_n - 1, tool_output_kb=8.0, rtt_ms=50.0)),
    )
    assert at["ws/connection"]["rollout_ms"] < at["https/full"]["rollout_ms"]
    assert before["ws/connection"]["rollout_ms"] >= before["https/full"]["rollout_ms"]


def test_the_advise_command_prints_table_crossover_plot_and_validates(
    tmp_path: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    import json
    from pathlib import Path

    from loadtests.cli import main
    from loadtests.execution.plan import RunConfig
    from loadtests.runs import runner
    from loadtests.workload.scenarios import load_scenario

    base = Path(str(tmp_path))
    model = base / "model.json"
    model.write_text(json.dumps({**MODEL, "created_at": "2026-11-29T00:00:00"}))
    png = base / "gain.png"
    assert main(["advise", "--model", str(model), "--turns", "9", "--tool-output-kb", "8", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert (
        "ws/connection" in out and "crossover: ws/connection is predicted faster" in out and png.stat().st_size > 5000
    )
    run = runner.run(
        RunConfig(
            scenarios=[load_scenario("chat-1").replace(rollouts=2, rounds=1, warmup=0, concurrency=1)],
            transports=["ws"],
            states=("connection",),
            profiles=("instant",),
            out_dir=base / "run",
            quiet=True,
        )
    )
    assert main(["advise", "--model", str(model), "--validate", str(run.path)]) == 0
    assert "median absolute error" in capsys.readouterr().out
