"""The gateway study's numbers from raw rows: the summary, the verdict on transfer, the section (any numbers)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from loadtests.extras import gateway
from loadtests.extras.gateway import GATEWAY, IMPLS, WAYS, plot, render, summarize, transfers, way_name
from loadtests.extras.registry import ExtraResult
from loadtests.present.doc import Doc


def _row(impl: str, way: str, rnd: int, turn_ms: float, turns: int = 5, up_ms: float | None = None) -> dict[str, Any]:
    new = 40 if (impl == "turnbench" and way == "ws/connection") else 400 + 100 * turns
    return {
        "impl": impl,
        "way": way,
        "round": rnd,
        "success": True,
        "error": None,
        "rollout_ms": turn_ms * turns,
        "turns": turns,
        "turn_ms": [turn_ms] * turns,
        "ttft_ms": [turn_ms / 2] * turns,
        "bytes_up": [1000] * turns,
        "bytes_down": [500] * turns,
        "input_tokens": [new + 10] * turns,
        "cached_tokens": [10] * turns,
        "upstream_requests": turns if impl == GATEWAY else 0,
        "upstream_ms": [up_ms] * turns if (impl == GATEWAY and up_ms is not None) else [],
        "upstream_input_tokens": [900] * turns if impl == GATEWAY else [],
        "upstream_cached_tokens": [800] * turns if impl == GATEWAY else [],
    }


def _data(times: dict[tuple[str, str], float], rounds: int = 5, up_ms: float = 60.0) -> dict[str, Any]:
    rows = [
        _row(impl, way, r, times[impl, way] * (1 + 0.01 * r), up_ms=up_ms)
        for r in range(rounds)
        for impl in IMPLS
        for way in (way_name(t, s) for t, s in WAYS)
    ]
    fan = [
        {"impl": i, "way": w, "round": 0, "wall_ms": 50.0, "fanout_cpu_ms": 1.0, "completed": 4, "continued": 4}
        for i in IMPLS
        for w in ("ws lanes", "ws connections")
    ]
    return {"fast": {"rows": rows, "fanout": fan}}


def _times(own_ws: float, gw_ws: float) -> dict[tuple[str, str], float]:
    t = {(i, way_name(a, b)): 100.0 for i in IMPLS for a, b in WAYS}
    t["turnbench", "ws/connection"] = own_ws
    t[GATEWAY, "ws/connection"] = gw_ws
    return t


def test_a_saving_on_both_transfers() -> None:
    med = summarize(_data(_times(55.0, 60.0)))["fast"]
    assert med["turnbench"]["ws/connection"]["ratio"][0] == 0.55
    ok, why = transfers(med)
    assert ok is True and "saves on both" in why and "−45%" in why


def test_a_saving_only_on_turnbench_does_not_transfer_and_says_why() -> None:
    med = summarize(_data(_times(55.0, 101.0)))["fast"]
    ok, why = transfers(med)
    assert ok is False
    assert "900 input tokens per request" in why and "40 new tokens per turn" in why


def test_the_gateway_cost_is_turn_time_minus_upstream_time() -> None:
    med = summarize(_data(_times(55.0, 100.0), up_ms=60.0))["fast"]
    # turn 100 ms (x1.00..1.04 by round) minus 60 ms upstream: the median over rollouts is round 2's
    assert math.isclose(med[GATEWAY]["https/full"]["gateway_ms_per_turn"], 102.0 - 60.0)
    assert med["turnbench"]["https/full"]["gateway_ms_per_turn"] is None  # no upstream behind its own servers


def test_unmatched_upstream_rows_give_no_gateway_cost() -> None:
    data = _data(_times(55.0, 100.0))
    for r in data["fast"]["rows"]:
        if r["impl"] == GATEWAY:
            r["upstream_ms"] = r["upstream_ms"][:-1]  # one request missing from the upstream's log
    med = summarize(data)["fast"]
    assert med[GATEWAY]["https/full"]["gateway_ms_per_turn"] is None


def test_failed_rollouts_are_counted_not_summarized() -> None:
    data = _data(_times(55.0, 60.0))
    bad = data["fast"]["rows"][0]
    bad.update(success=False, error="boom", rollout_ms=None)
    med = summarize(data)["fast"]
    assert med[bad["impl"]][bad["way"]]["failed"] == 1
    assert med[bad["impl"]][bad["way"]]["n"] == 4


def _result(data: dict[str, Any]) -> ExtraResult:
    params = {**gateway.SIZES["quick"], "gateway": GATEWAY, "gateway_version": "0.9.0", "concurrency": 1}
    return {"parameters": params, "medians": summarize(data), "rounds": [], "rows": []}


def test_the_section_gives_the_table_and_the_verdict() -> None:
    doc = Doc("t")
    render(doc, _result(_data(_times(55.0, 101.0))))
    md = doc.markdown(Path("."))
    assert "It does not transfer" in md and "ws/connection" in md and "−45%" in md


finite_or_not = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-(10**12), 10**12))


@settings(max_examples=60, deadline=None)
@given(own=finite_or_not, gw=finite_or_not, up=finite_or_not)
def test_the_section_renders_any_numbers(own: float, gw: float, up: float) -> None:
    data = _data(_times(100.0, 100.0))
    for r in data["fast"]["rows"]:
        r["turn_ms"] = [own] * r["turns"]
        r["rollout_ms"] = gw
        if r["impl"] == GATEWAY:
            r["upstream_ms"] = [up] * r["turns"]
    doc = Doc("t")
    render(doc, _result(data))
    assert "Does turnbench's answer transfer?" in doc.markdown(Path("."))


def test_the_figure_shows_each_ratio_and_says_so(tmp_path: Path) -> None:
    path = tmp_path / "gateway.png"
    caption = plot(_result(_data(_times(55.0, 101.0))), path)
    assert caption is not None and "on the same implementation" in caption
    assert path.read_bytes().startswith(b"\x89PNG")


def test_no_figure_without_a_finite_ratio(tmp_path: Path) -> None:
    data = _data(_times(55.0, 101.0))
    for r in data["fast"]["rows"]:
        r.update(success=False, rollout_ms=None)
    assert plot(_result(data), tmp_path / "none.png") is None
