"""The compaction section from its data alone: the rows a run leaves (which request is a compaction call, the turn
right before it, right after it or an ordinary one), the statistics per transport and state, a conclusion
computed from them, and a section and a figure that render any numbers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clients.record import RolloutResult, TurnResult
from loadtests.execution.monitor import MonitorReport
from loadtests.execution.plan import Collected, RunConfig, Sample, plan_cells
from loadtests.extras import compaction
from loadtests.extras.registry import EXTRA_MODULES, ExtraResult, all_extras
from loadtests.present.doc import Doc
from loadtests.workload.scenarios import load_scenario
from turnbench.schema import StageStat

PHASES = ["turn", "turn", "compact", "after_compact", "turn", "compact", "after_compact", "turn"]


def turn(k: int, phase: str, state: str, *, up: int, ms: float, tokens: int, rendered: int) -> TurnResult:
    stages = {} if phase == "compact" else {"render": StageStat(wall_ns=rendered * 1000, tokens=rendered, items=1)}
    kind = "compaction" if phase == "compact" else "message" if k == len(PHASES) - 1 else "function_call"
    return TurnResult(
        output_kind=kind,
        transport="ws",
        state=state,
        turn_index=k,
        phase=phase,
        turn_ms=ms,
        bytes_up=up,
        input_tokens=tokens,
        cached_tokens=tokens // 2,
        server_stages=stages,
    )


def collected(state: str) -> Collected:
    """One rollout of PHASES: the turn after a compaction sends 3x the bytes and takes 2x the time of the one
    before; the server renders all its tokens, against 10 for a chained turn. The last turn is the answer."""
    cells = plan_cells(RunConfig(scenarios=[load_scenario("coding-agent-compact")], transports=["ws"]))
    cell = next(c for c in cells if c.state == state)
    turns = []
    for k, phase in enumerate(PHASES):
        tokens = 1000 + 100 * k
        if phase == "after_compact":
            turns.append(turn(k, phase, state, up=3000, ms=20.0, tokens=tokens, rendered=tokens))
        elif phase == "compact":
            turns.append(turn(k, phase, state, up=9000, ms=5.0, tokens=tokens, rendered=0))
        elif k == len(PHASES) - 1:
            turns.append(turn(k, phase, state, up=1000, ms=500.0, tokens=tokens, rendered=10))  # the long answer
        else:
            turns.append(turn(k, phase, state, up=1000, ms=10.0, tokens=tokens, rendered=10))
    rollout = RolloutResult(transport="ws", state=state, rollout_id=0, success=True, turns=turns, rollout_ms=1.0)
    warm = RolloutResult(transport="ws", state=state, rollout_id=9, success=True, turns=turns[:1], rollout_ms=1.0)
    monitor = MonitorReport(
        cpu_util=0.1, loop_lag_p50_ms=0.1, loop_lag_p99_ms=0.2, loop_lag_max_ms=0.3, saturated=False
    )
    samples = [Sample(rollout, cell, 1, False), Sample(warm, cell, 0, True)]
    return Collected(samples=samples, chunks=[], monitor=monitor, loop="asyncio")


def test_rows_say_which_request_is_which() -> None:
    rows = compaction.turn_rows(collected("connection"))
    assert len(rows) == len(PHASES)  # the warm-up rollout is left out
    assert [r["phase"] for r in rows] == PHASES
    assert [r["turn"] for r in rows if r["before"]] == [1, 4]  # the model turn right before each compaction call
    assert rows[3]["render_tokens"] == rows[3]["input_tokens"] and rows[1]["render_tokens"] == 10
    assert rows[2]["render_tokens"] is None  # a compaction call renders nothing for the model


def test_stats_compare_the_turn_after_with_the_turn_before() -> None:
    (cell,) = compaction.cell_stats(compaction.turn_rows(collected("connection")))
    assert (cell["transport"], cell["state"], cell["compactions"], cell["failed"]) == ("ws", "connection", 2, 0)
    assert cell["after_vs_before"][0] == pytest.approx(2.0)
    assert cell["after_ms"][0] == 20.0 and cell["before_ms"][0] == 10.0 and cell["compact_ms"][0] == 5.0
    assert cell["turn_ms"] == [10.0, 10.0, 10.0]  # the ordinary turns: turn 0 (turn 7 is the answer, left out)
    assert cell["after_bytes_up"] / cell["before_bytes_up"] == pytest.approx(3.0)
    assert cell["compact_bytes_up"] == 9000
    assert cell["after_render_tokens"] > cell["before_render_tokens"] == 10
    assert cell["after_cached_share"] == pytest.approx(0.5, abs=0.01)


def test_the_conclusion_is_computed_from_the_numbers() -> None:
    rows = compaction.turn_rows(collected("connection")) + compaction.turn_rows(collected("full"))
    for r in rows:
        if r["state"] == "full" and r["phase"] == "after_compact":
            r["bytes_up"], r["turn_ms"] = 500, 11.0  # full: the history shrank, the time barely moved
    text = compaction.conclusion(compaction.cell_stats(rows))
    assert "sent 0.5× the bytes of the turn before it on ws/full and 3× on ws/connection" in text
    assert "it took 2× the time of the turn before it on ws/connection" in text
    assert compaction.conclusion([]).startswith("No cell completed a compaction")


def test_the_section_renders_its_tables_and_its_figure(tmp_path: Path) -> None:
    rows = compaction.turn_rows(collected("store"))
    data: ExtraResult = {"parameters": {"tool_calls": 4, "compact_every": 2}, "rows": rows}
    data["cells"] = compaction.cell_stats(rows)
    doc = Doc("t")
    compaction.render(doc, data)
    md = doc.markdown(tmp_path)
    assert "| ws/store | 2 | 5 | 10 | 10 | 20 | 2 | 0 |" in md
    assert "The turn after a compaction sent 3× the bytes" in md
    caption = compaction.plot(data, tmp_path / "plots" / "compaction.png")
    assert caption and (tmp_path / "plots" / "compaction.png").stat().st_size > 1000
    assert compaction.plot({"rows": []}, tmp_path / "none.png") is None


def test_it_is_a_section_of_bench() -> None:
    assert "loadtests.extras.compaction" in EXTRA_MODULES
    extra = next(e for e in all_extras() if e.name == "compaction")
    assert extra.plot is compaction.plot and extra.command == "python scripts/compaction.py"
    quick, full = extra.est_s
    assert 0 < quick < full
    assert compaction.SIZES["quick"]["tool_calls"] < compaction.SIZES["full"]["tool_calls"]


ANY = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.none(), st.integers(-(10**12), 10**12))
CELL_KEYS = [
    "compact_bytes_up", "turn_bytes_up", "before_bytes_up", "after_bytes_up", "before_input_tokens",
    "after_input_tokens", "before_render_tokens", "after_render_tokens", "before_redo_ms", "after_redo_ms",
    "before_cached_share", "after_cached_share", "compactions", "failed",
]  # fmt: skip
RANGES = ["compact_ms", "turn_ms", "before_ms", "after_ms", "after_vs_before"]


@st.composite
def cells(draw: Any) -> list[dict[str, Any]]:
    out = []
    for k in range(draw(st.integers(0, 4))):
        cell: dict[str, Any] = {"transport": f"t{k}", "state": draw(st.sampled_from(["full", "store"]))}
        cell |= {key: draw(ANY) for key in CELL_KEYS}
        cell |= {key: draw(st.one_of(st.lists(ANY, max_size=4), ANY)) for key in RANGES}
        out.append(cell)
    return out


@settings(max_examples=80, deadline=None)
@given(cells(), ANY, ANY)
def test_the_section_renders_any_numbers(cells: list[dict[str, Any]], calls: Any, size: Any) -> None:
    data: ExtraResult = {"parameters": {"tool_calls": calls, "tool_output_bytes": size, "profile": "fast"}}
    data["cells"] = cells
    doc = Doc("t")
    compaction.render(doc, data)
    md = doc.markdown(Path("."))
    assert md.count("| transport/state |") == (3 if cells else 0)
    text = compaction.conclusion(cells)
    assert text.endswith(".") and "nan" not in text.lower().replace("n/a", "")
