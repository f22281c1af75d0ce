"""The run directory: rows with labels, warm-up kept on disk but never summarised, run.json written once and
required, summary.json from the statistics module, calibration residuals, read-back."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from clients.base import RolloutResult, TurnResult
from loadtests.cli.run import format_table
from loadtests.execution.monitor import MonitorReport
from loadtests.execution.plan import Cell, ChunkStat, Collected, RunConfig, Sample
from loadtests.runs.rundir import (
    LABELS,
    RunDir,
    RunDirError,
    read_samples,
    rollouts_frame,
    turns_frame,
    write_samples,
)
from loadtests.workload.scenarios import Scenario, load_scenario
from tests.helpers import synthetic_turn
from turnbench.schema import StageStat
from turnbench.settings import Settings


def _cell(transport: str, state: str, scenario: Scenario, profile: str = "fast", **settings: Any) -> Cell:
    return Cell(
        cell=f"{scenario.name}:{transport}:{state}",
        scenario=scenario,
        transport=transport,
        state=state,
        profile=profile,
        concurrency=1,
        arrival_rate_rps=None,
        variant="default",
        tls=transport != "inproc",
        server_settings=settings,
    )


def _turn(cell: Cell, i: int, ttft: float, itl: list[float], prefill_tokens: int = 50) -> TurnResult:
    return TurnResult(
        transport=cell.transport,
        state=cell.state,
        rollout_id=0,
        turn_index=i,
        ttft_ms=ttft,
        ttfb_ms=ttft - 1,
        itl_ms=itl,
        turn_ms=ttft + sum(itl) + 1,
        latency_ms=ttft + sum(itl) + 1,
        bytes_up=1000,
        bytes_down=2000,
        server_stages={
            "validate": StageStat(wall_ns=1_000_000, cpu_ns=1_000_000),
            "prefill": StageStat(wall_ns=20_000_000, cpu_ns=0, tokens=prefill_tokens),
        },
    )


def _rollout(cell: Cell, rid: int, ttft: float, itl: list[float], ok: bool = True) -> RolloutResult:
    turns = [_turn(cell, i, ttft, itl) for i in range(3)]
    return RolloutResult(
        transport=cell.transport,
        state=cell.state,
        rollout_id=rid,
        success=ok,
        error=None if ok else "boom: it broke",
        turns=turns,
        rollout_ms=sum(t.turn_ms or 0 for t in turns),
        connect_ms=2.0,
    )


def _collected(cells: list[Cell], ttft: dict[str, float], itl: dict[str, list[float]]) -> Collected:
    samples, chunks = [], []
    for c in cells:
        samples.append(Sample(_rollout(c, 0, 999.0, [99.0]), c, 0, True))  # warm-up: must not count
        for rid in (1, 2):
            samples.append(Sample(_rollout(c, rid, ttft[c.transport], itl[c.transport]), c, 1, False))
        samples.append(Sample(_rollout(c, 3, ttft[c.transport], itl[c.transport], ok=False), c, 1, False))
        chunks += [
            ChunkStat(
                cell=c.cell,
                round=0,
                warmup=True,
                rollouts=1,
                turns=3,
                wall_s=0.1,
                client_cpu_s=0.01,
                server_cpu_s=0.5,
                lag_ms=[50.0],
            ),
            ChunkStat(
                cell=c.cell,
                round=1,
                warmup=False,
                rollouts=3,
                turns=9,
                wall_s=1.0,
                client_cpu_s=0.1,
                server_cpu_s=0.09 if c.transport != "inproc" else None,
                lag_ms=[0.5, 0.7],
            ),
        ]
    servers = {
        c.endpoint_key: {
            "server": c.server,
            "kind": "process",
            "pid": 1,
            "exit_code": 0,
            "cpu_s": 0.2,
            "settings": Settings(profile=c.profile, **c.server_settings).as_dict(),
        }
        for c in cells
    }
    monitor = MonitorReport(
        cpu_util=0.1, loop_lag_p50_ms=0.1, loop_lag_p99_ms=0.5, loop_lag_max_ms=0.9, saturated=False
    )
    return Collected(samples=samples, chunks=chunks, monitor=monitor, loop="test", servers=servers)


def _write(
    path: Path,
    cells: list[Cell],
    ttft: dict[str, float],
    itl: dict[str, list[float]],
    meta: dict[str, Any] | None = None,
) -> RunDir:
    config = RunConfig(scenarios=[c.scenario for c in cells], transports=[], argv=["turnbench", "run"])
    return RunDir.write(path, config, cells, _collected(cells, ttft, itl), meta)


def test_calibration_residuals_are_measured_minus_known(tmp_path: Path) -> None:
    sc = load_scenario("calibration")
    cells = [_cell("ws", "connection", sc, "calibration"), _cell("inproc", "connection", sc, "calibration")]
    run = _write(tmp_path, cells, {"ws": 28.0, "inproc": 26.5}, {"ws": [5.5, 5.5], "inproc": [5.25, 5.25]})
    cal = run.summary["calibration"]
    assert cal is not None and cal["known_ttft_ms"] == 25.0 and cal["known_itl_ms"] == 5.0
    ws, inproc = cal["by_transport"]["ws"], cal["by_transport"]["inproc"]
    assert ws["ttft_residual_ms"] == pytest.approx(3.0) and ws["itl_residual_ms"] == pytest.approx(0.5)
    assert inproc["ttft_residual_ms"] == pytest.approx(1.5) and inproc["itl_residual_ms"] == pytest.approx(0.25)
    assert ws["ttft_minus_inproc_ms"] == pytest.approx(1.5) and cal["harness_residual"] == inproc
    assert ws["server_pre_ms"] == pytest.approx(1.0) and ws["ttft_residual_net_ms"] == pytest.approx(2.0)
    assert "calibration: known TTFT 25 ms" in format_table(run)


def test_calibration_knows_each_server_s_framing(tmp_path: Path) -> None:
    sc = load_scenario("calibration")
    cell = _cell("ws", "connection", sc, "calibration", tokens_per_chunk=2)  # chunks of 2 tokens: 10 ms apart
    cal = _write(tmp_path, [cell], {"ws": 31.0}, {"ws": [10.5]}).summary["calibration"]
    assert cal["known_itl_ms"] == 10.0 and cal["known_ttft_ms"] == 30.0 and cal["tokens_per_chunk"] == 2
    assert cal["by_transport"]["ws"]["itl_residual_ms"] == pytest.approx(0.5)
    plain = _write(tmp_path / "fast", [_cell("ws", "connection", sc, "fast")], {"ws": 31.0}, {"ws": [10.5]})
    assert plain.summary["calibration"] is None  # not a calibration cell


def test_no_uncached_tokens_means_no_prefill_in_the_known_ttft(tmp_path: Path) -> None:
    sc = load_scenario("calibration")
    cell = _cell("ws", "connection", sc, "calibration")
    col = _collected([cell], {"ws": 6.0}, {"ws": [5.0]})
    for s in col.samples:
        for t in s.rollout.turns:
            t.server_stages["prefill"].tokens = 0
    run = RunDir.write(tmp_path, RunConfig(scenarios=[sc], transports=["ws"]), [cell], col)
    assert run.summary["calibration"]["by_transport"]["ws"]["ttft_residual_ms"] == pytest.approx(1.0)


def test_write_and_read_back(tmp_path: Path) -> None:
    sc = load_scenario("agent-5")
    cells = [_cell("https", "full", sc), _cell("ws", "connection", sc)]
    run = _write(
        tmp_path / "run",
        cells,
        {"https": 20.0, "ws": 10.0},
        {"https": [1.0], "ws": [1.0]},
        meta={"bench": {"groups": [], "wall_s": 1.5}},
    )
    for name in ("turns.parquet", "turns.jsonl", "rollouts.parquet", "rollouts.jsonl", "run.json", "summary.json"):
        assert (tmp_path / "run" / name).is_file(), name
    back = RunDir(tmp_path / "run")
    assert set(LABELS) <= set(back.turns.columns) and set(LABELS) <= set(back.rollouts.columns)
    # warm-up rows are kept on disk and dropped by the one accessor
    everything = back.samples("turns", warmup=True)
    assert len(everything) == 2 * 4 * 3 and everything["warmup"].sum() == 2 * 3
    assert len(back.turns) == 2 * 3 * 3 and not back.turns["warmup"].any()
    assert everything["itl_ms"].iloc[0] == [99.0]  # list column survives Parquet
    assert set(back.rollouts["label"]) == {"https/full", "ws/connection"}
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    for key in (
        "created_at",
        "git_commit",
        "git_dirty",
        "python",
        "platform",
        "cpu",
        "versions",
        "argv",
        "scenarios",
        "cells",
        "servers",
        "monitor",
        "injected",
        "chunks",
    ):
        assert key in meta, key
    assert meta["bench"] == {"groups": [], "wall_s": 1.5}  # the maker's entries, written with the rest
    assert meta["scenarios"]["agent-5"]["tool_calls"] == 5
    assert meta["cells"][1]["endpoint"] == "ws/fast/tls" and meta["cells"][1]["server_settings"]["profile"] == "fast"
    ws = run.summary["cells"]["agent-5:ws:connection"]
    assert ws["n_rollouts"] == 2 and ws["failed_rollouts"] == 1 and ws["first_error"] == "boom: it broke"
    assert ws["metrics"]["ttft_ms"]["p50"] == 10.0 and ws["metrics"]["ttft_ms"]["n"] == 9  # warm-up left out
    assert ws["ttft_by_turn"]["1"]["p50"] == 10.0 and "10" not in ws["ttft_by_turn"]
    assert ws["server_cpu_ms_per_turn"] == pytest.approx(10.0)  # 0.09 s over 9 measured turns
    assert ws["ratio_vs_https_full"]["vs"] == "agent-5:https:full"
    assert ws["ratio_vs_https_full"]["ttft_ms"][0] == pytest.approx(0.5)
    assert not meta["monitor"]["saturated"] and meta["monitor"]["loop_lag_p99_ms"] < 1.0  # warm-up lag excluded
    assert back.statistics().as_json()["cells"].keys() == run.summary["cells"].keys()
    table = format_table(back)
    assert "rollout_ms p50/p99" in table and "connection" in table and "10.0/10.0" in table


def test_json_has_no_nan(tmp_path: Path) -> None:
    sc = load_scenario("agent-5")
    run = _write(tmp_path, [_cell("ws", "store", sc)], {"ws": math.nan}, {"ws": []})
    text = (tmp_path / "summary.json").read_text()
    assert "NaN" not in text and run.summary["cells"]["agent-5:ws:store"]["ttft_by_turn"] == {}


def test_a_directory_without_run_json_is_not_a_run(tmp_path: Path) -> None:
    sc = load_scenario("agent-5")
    _write(tmp_path / "run", [_cell("ws", "store", sc)], {"ws": 5.0}, {"ws": [1.0]})
    (tmp_path / "run" / "run.json").unlink()
    with pytest.raises(RunDirError, match=r"has no run\.json"):
        RunDir(tmp_path / "run")
    with pytest.raises(RunDirError, match="does not exist"):
        RunDir(tmp_path / "nowhere")
    (tmp_path / "meta-only").mkdir()
    (tmp_path / "meta-only" / "run.json").write_text("{}")
    with pytest.raises(RunDirError, match=r"no turns\.parquet or turns\.jsonl"):
        RunDir(tmp_path / "meta-only")


# ------------------------------------------------------------------------------------------------ rows


def test_turns_frame_flattens() -> None:
    df = turns_frame([synthetic_turn(i) for i in range(6)])
    assert len(df) == 6 and "server_stages" not in df.columns
    assert df.loc[0, "itl_ms"] == [1.0, 2.0, 4.0] and df.loc[0, "itl_p50_ms"] == 2.0
    assert math.isnan(df.loc[1, "itl_p50_ms"])
    assert df.loc[0, "stage_parse_wall_ms"] == 2.0 and df.loc[0, "stage_parse_cpu_ms"] == 1.5
    assert df.loc[0, "stage_parse_items"] == 4 and df.loc[0, "stage_parse_chars"] == 10
    assert math.isnan(df.loc[1, "stage_parse_wall_ms"])
    assert turns_frame([]).empty and "ttft_ms" in turns_frame([]).columns


def test_rollouts_frame() -> None:
    turns = [synthetic_turn(i) for i in range(3)]
    r = RolloutResult(
        transport="ws",
        state="connection",
        rollout_id=0,
        success=True,
        turns=turns,
        rollout_ms=50.0,
        tool_calls=[("grep", "{}"), ("read", "{}")],
    )
    df = rollouts_frame([r])
    row = df.iloc[0]
    assert row["n_turns"] == 3 and row["n_tool_calls"] == 2 and row["tool_names"] == ["grep", "read"]
    assert row["bytes_down"] == 3003 and row["output_tokens"] == 60 and row["turn_ms_sum"] == 45.0
    assert "turns" not in df.columns and rollouts_frame([]).empty


def test_samples_round_trip(tmp_path: Path) -> None:
    df = turns_frame([synthetic_turn(i) for i in range(4)] + [synthetic_turn(5, ttft=None, ok=False)])
    parquet, jsonl = write_samples(df, tmp_path / "out" / "samples")
    assert parquet.name == "samples.parquet" and jsonl.name == "samples.jsonl"
    assert jsonl.read_text().count("\n") == len(df)
    for path in (parquet, jsonl, tmp_path / "out" / "samples"):
        back = read_samples(path)
        assert len(back) == len(df)
        assert back["ttft_ms"].tolist()[:4] == df["ttft_ms"].tolist()[:4]
        assert back.loc[0, "itl_ms"] == [1.0, 2.0, 4.0]
        assert back["transport"].tolist() == df["transport"].tolist()
    assert read_samples(parquet)["bytes_down"].tolist() == df["bytes_down"].tolist()
