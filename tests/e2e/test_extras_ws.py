"""WebSocket mode's measurements (``loadtests/extras/``: steering, fanout, warmup) at their smallest sizes:
each runs against real server processes, every request completes, what the server did is visible in the data
(the steered answer ended ``incomplete`` and its successor continued it; every sub-agent forked from the
orchestrator; the warmed first turn's input was cached), and each section renders its table from the data as
bench stores it (JSON). No assertion on how long anything took."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from loadtests.extras import fanout, steering, warmup
from loadtests.present.doc import Doc
from loadtests.runs.rundir import write_json
from tests.conftest import TIMEOUT_FACTOR

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(180 * TIMEOUT_FACTOR)


def rendered(
    tmp_path: Path, name: str, render: Callable[[Doc, Mapping[str, Any]], None], data: Mapping[str, Any]
) -> str:
    """``data`` through ``<name>.json`` (as ``turnbench bench`` stores it: strict JSON, NaN as null), then its
    section as Markdown."""
    stored = json.loads(write_json(tmp_path / f"{name}.json", data).read_text(encoding="utf-8"))
    doc = Doc("wsmode")
    render(doc, stored)
    return doc.markdown(tmp_path)


def table_rows(md: str, header: str) -> list[list[str]]:
    """The body rows of the Markdown table whose header row starts with ``header``, as cells."""
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def test_steering_steers_and_re_creates_and_renders(tmp_path: Path) -> None:
    data = steering.measure(rounds=1, answer_tokens=200, after=20, profile="fast")  # ~1,000 tok/s: streaming
    rows = {r["way"]: r for r in data["rounds"]}
    assert set(rows) == set(steering.WAYS)
    steer, cancel = rows["steer"], rows["cancel and re-create"]
    # the steered answer stopped early, and the response the server started by itself continued it
    assert steer["steered_status"] == "incomplete" and steer["steered_reason"] == "steered"
    assert steer["steered_id"].startswith("resp_") and steer["successor_of"] == steer["steered_id"]
    for r in rows.values():
        assert r["corrected_status"] == "completed" and r["corrected_output_tokens"] > 0
        assert r["wasted_tokens"] >= 20 and r["first_ms"] is not None and r["done_ms"] is not None
    assert cancel["successor_of"] is None  # nothing continues a closed connection's answer
    md = rendered(tmp_path, "steering", steering.render, data)
    table = table_rows(md, "| way | to first token ms | to corrected answer ms | tokens wasted |")
    assert [r[0] for r in table] == list(steering.WAYS)
    assert all(cell not in ("n/a", "—") for r in table for cell in r)
    assert "Steering reached the corrected answer's first token in " in md
    assert "In 1 of 1 rounds the steered answer ended `incomplete`" in md


def test_fanout_every_way_forks_every_sub_agent_and_renders(tmp_path: Path) -> None:
    n = 3
    data = fanout.measure(subagents=n, rounds=1, answer_tokens=8, parent_kb=1.0, profile="instant")
    rows = {r["way"]: r for r in data["rounds"]}
    assert list(rows) == list(fanout.WAYS)
    for way, r in rows.items():
        # every sub-agent completed, named the orchestrator and had its whole conversation in its context
        assert r["completed"] == n and r["continued"] == n, (way, r)
        assert r["cpu_ms"] >= r["fanout_cpu_ms"] >= 0.0
    md = rendered(tmp_path, "fanout", fanout.render, data)
    table = table_rows(md, "| way | wall ms | server CPU, round ms | server CPU, fan-out ms | completed |")
    assert [r[0] for r in table] == list(fanout.WAYS)
    assert [r[-1] for r in table] == [f"{n}/{n}"] * 3
    assert f"One connection's lanes finished the fan-out of {n} sub-agents in " in md
    assert "of server CPU per round" in md


def test_warmup_prefills_the_first_turn_and_renders(tmp_path: Path) -> None:
    """The server reports the warmed first turn's instructions and tools as cached input (prefilled by the
    ``generate: false`` request), and none of the cold turn's."""
    data = warmup.measure(rounds=2, instructions_kb=4.0, profile="instant")
    assert len(data["rounds"]) == 2
    for r in data["rounds"]:
        assert r["warmup_output_tokens"] == 0  # generate: false generated nothing
        assert r["cold_cached_tokens"] == 0 and r["cold_input_tokens"] > 1000  # 4 KB of instructions
        # all but the task ("go") came from the warm-up's KV state
        assert r["warm_input_tokens"] - 10 <= r["warm_cached_tokens"] < r["warm_input_tokens"]
        assert r["cold_ttft_ms"] is not None and r["warm_ttft_ms"] is not None
    md = rendered(tmp_path, "warmup", warmup.render, data)
    table = {r[0]: r[1:] for r in table_rows(md, "| request | TTFT ms | to completed ms |")}
    assert list(table) == ["cold first turn", "warmed first turn", "the warm-up (generate: false)"]
    assert table["cold first turn"][-1] == "0"  # cached tokens
    assert table["the warm-up (generate: false)"][0] == "—"  # it has no first token
    assert "A first turn after `generate: false` reached its first token in " in md


def test_warmup_script_prints_its_table_and_writes_the_data(tmp_path: Path) -> None:
    out = tmp_path / "warmup.json"
    argv = ["--rounds", "1", "--instructions-kb", "1", "--profile", "instant", "--json", str(out)]
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "warmup.py"), *argv],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120 * TIMEOUT_FACTOR,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "cold (one request):" in done.stdout and "warmed (generate: false first):" in done.stdout
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data["parameters"]["rounds"] == 1 and len(data["rounds"]) == 1
    assert data["medians"]["warm_cached_tokens"] > 0


def test_extras_are_the_three_sections_sized_for_bench() -> None:
    EXTRAS = [steering.EXTRA, fanout.EXTRA, warmup.EXTRA]
    assert [(e.name, e.title) for e in EXTRAS] == [
        ("steering", "Steering: correcting a running answer"),
        ("fanout", "Fan-out: one orchestrator, N sub-agents"),
        ("warmup", "Warm-up: first-turn TTFT with generate: false"),
    ]
    for e in EXTRAS:
        quick, full = e.est_s
        assert 0 < quick <= full <= 20 and quick <= 8
        assert e.command.startswith("python scripts/")
