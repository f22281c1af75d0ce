"""The run directory: frames with labels, summaries without warm-up, calibration residuals, read-back."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from clients.base import RolloutResult, StageTiming, TurnResult
from loadtests.monitor import MonitorReport
from loadtests.runner import Cell, ChunkStat, Collected, RunConfig, Sample, load_run
from loadtests.runner_out import LABELS, format_table, frames, write_run
from loadtests.runner_stats import calibration
from loadtests.scenarios import Scenario, load_scenario


def _cell(transport: str, state: str, scenario: Scenario, profile: str = "fast") -> Cell:
    return Cell(cell=f"{scenario.name}:{transport}:{state}", scenario=scenario, transport=transport,
                server=transport, state=state, profile=profile, concurrency=1, arrival_rate_rps=None,
                variant="default", tls=transport != "inproc")


def _turn(cell: Cell, i: int, ttft: float, itl: list[float], prefill_tokens: int = 50) -> TurnResult:
    return TurnResult(transport=cell.transport, state=cell.state, rollout_id=0, turn_index=i, ttft_ms=ttft,
                      ttfb_ms=ttft - 1, itl_ms=itl, turn_ms=ttft + sum(itl) + 1, latency_ms=ttft + sum(itl) + 1,
                      bytes_up=1000, bytes_down=2000, server_stages={
                          "validate": StageTiming(wall_ns=1_000_000, cpu_ns=1_000_000),
                          "prefill": StageTiming(wall_ns=20_000_000, cpu_ns=0, tokens=prefill_tokens)})


def _rollout(cell: Cell, rid: int, ttft: float, itl: list[float], ok: bool = True) -> RolloutResult:
    turns = [_turn(cell, i, ttft, itl) for i in range(3)]
    return RolloutResult(transport=cell.transport, state=cell.state, rollout_id=rid, success=ok,
                         error=None if ok else "boom: it broke", turns=turns,
                         rollout_ms=sum(t.turn_ms or 0 for t in turns), connect_ms=2.0)


def _monitor(saturated: bool = False) -> MonitorReport:
    return MonitorReport(cpu_util=0.1, loop_lag_p50_ms=0.1, loop_lag_p99_ms=0.5, loop_lag_max_ms=0.9,
                         saturated=saturated)


def _collected(cells: list[Cell], ttft: dict[str, float], itl: dict[str, list[float]]) -> Collected:
    samples, chunks = [], []
    for c in cells:
        samples.append(Sample(_rollout(c, 0, 999.0, [99.0]), c, 0, True))  # warm-up: must not count
        for rid in (1, 2):
            samples.append(Sample(_rollout(c, rid, ttft[c.transport], itl[c.transport]), c, 1, False))
        samples.append(Sample(_rollout(c, 3, ttft[c.transport], itl[c.transport], ok=False), c, 1, False))
        chunks += [ChunkStat(cell=c.cell, round=0, warmup=True, rollouts=1, turns=3, wall_s=0.1, client_cpu_s=0.01,
                             server_cpu_s=0.5, lag_ms=[50.0]),
                   ChunkStat(cell=c.cell, round=1, warmup=False, rollouts=3, turns=9, wall_s=1.0,
                             client_cpu_s=0.1, server_cpu_s=0.09 if c.transport != "inproc" else None,
                             lag_ms=[0.5, 0.7])]
    return Collected(samples=samples, chunks=chunks, monitor=_monitor(), loop="test")


def test_calibration_residuals_are_measured_minus_known() -> None:
    sc = load_scenario("calibration")
    cells = [_cell("ws", "connection", sc, "calibration"), _cell("inproc", "connection", sc, "calibration")]
    col = _collected(cells, {"ws": 28.0, "inproc": 26.5}, {"ws": [5.5, 5.5], "inproc": [5.25, 5.25]})
    tdf, _ = frames(col)
    cal = calibration(tdf, cells)
    assert cal is not None and cal["known_ttft_ms"] == 25.0 and cal["known_itl_ms"] == 5.0
    ws, inproc = cal["by_transport"]["ws"], cal["by_transport"]["inproc"]
    assert ws["ttft_residual_ms"] == pytest.approx(3.0) and ws["itl_residual_ms"] == pytest.approx(0.5)
    assert inproc["ttft_residual_ms"] == pytest.approx(1.5) and inproc["itl_residual_ms"] == pytest.approx(0.25)
    assert ws["ttft_minus_inproc_ms"] == pytest.approx(1.5) and cal["harness_residual"] == inproc
    assert ws["server_pre_ms"] == pytest.approx(1.0) and ws["ttft_residual_net_ms"] == pytest.approx(2.0)
    assert calibration(tdf, cells, tokens_per_chunk=2)["known_itl_ms"] == 10.0  # type: ignore[index]
    assert calibration(tdf, [_cell("ws", "connection", sc, "fast")]) is None  # not a calibration cell


def test_no_uncached_tokens_means_no_prefill_in_the_known_ttft() -> None:
    sc = load_scenario("calibration")
    cell = _cell("ws", "connection", sc, "calibration")
    col = _collected([cell], {"ws": 6.0}, {"ws": [5.0]})
    for s in col.samples:
        for t in s.rollout.turns:
            t.server_stages["prefill"].tokens = 0
    cal = calibration(frames(col)[0], [cell])
    assert cal is not None and cal["by_transport"]["ws"]["ttft_residual_ms"] == pytest.approx(1.0)


def test_write_and_load_run_roundtrip(tmp_path: Path) -> None:
    sc = load_scenario("agent-5")
    cells = [_cell("https", "full", sc), _cell("ws", "connection", sc)]
    col = _collected(cells, {"https": 20.0, "ws": 10.0}, {"https": [1.0], "ws": [1.0]})
    config = RunConfig(scenarios=[sc], transports=["https", "ws"], argv=["turnbench", "run"])
    servers = {c.endpoint_key: {"transport": c.transport, "kind": "process", "pid": 1, "exit_code": 0,
                                "cpu_s": 0.2, "settings": {"profile": "fast"}} for c in cells}
    data = write_run(tmp_path / "run", config, cells, col, servers)
    for name in ("turns.parquet", "turns.jsonl", "rollouts.parquet", "rollouts.jsonl", "run.json", "summary.json"):
        assert (tmp_path / "run" / name).is_file(), name
    back = load_run(tmp_path / "run")
    assert set(LABELS) <= set(back.turns.columns) and set(LABELS) <= set(back.rollouts.columns)
    assert len(back.turns) == len(data.turns) == 2 * 4 * 3 and back.turns["warmup"].sum() == 2 * 3
    assert back.turns["itl_ms"].iloc[0] == [99.0]  # list column survives Parquet
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    for key in ("created_at", "git_commit", "git_dirty", "python", "platform", "cpu", "versions", "argv",
                "scenarios", "cells", "servers", "monitor", "injected", "calibration"):
        assert key in meta, key
    assert meta["calibration"] is None and meta["scenarios"]["agent-5"]["tool_calls"] == 5
    ws = back.summary["cells"]["agent-5:ws:connection"]
    assert ws["n_rollouts"] == 2 and ws["failed_rollouts"] == 1 and ws["first_error"] == "boom: it broke"
    assert ws["metrics"]["ttft_ms"]["p50"] == 10.0 and ws["metrics"]["ttft_ms"]["n"] == 9  # warm-up left out
    assert ws["ttft_by_turn"]["1"]["p50"] == 10.0 and "10" not in ws["ttft_by_turn"]
    assert ws["server_cpu_ms_per_turn"] == pytest.approx(10.0)  # 0.09 s over 9 measured turns
    assert ws["ratio_vs_https_full"]["vs"] == "agent-5:https:full"
    assert ws["ratio_vs_https_full"]["ttft_ms"][0] == pytest.approx(0.5)
    assert not meta["monitor"]["saturated"] and meta["monitor"]["loop_lag_p99_ms"] < 1.0  # warm-up lag excluded
    table = format_table(back)
    assert "rollout_ms p50/p99" in table and "connection" in table and "10.0/10.0" in table


def test_json_has_no_nan(tmp_path: Path) -> None:
    sc = load_scenario("agent-5")
    cells = [_cell("ws", "store", sc)]
    col = _collected(cells, {"ws": math.nan}, {"ws": []})
    write_run(tmp_path, RunConfig(scenarios=[sc], transports=["ws"]), cells, col,
              {cells[0].endpoint_key: {"transport": "ws", "kind": "target", "settings": {}}})
    text = (tmp_path / "summary.json").read_text()
    assert "NaN" not in text and json.loads(text)["cells"]["agent-5:ws:store"]["ttft_by_turn"] == {}
