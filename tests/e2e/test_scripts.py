"""The measurement scripts as a user runs them, at their smallest sizes: the streaming table (coalescing off and
on), each library's floor per event, and throughput/capacity at 1 and 2 workers."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TIMEOUT_FACTOR

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(300 * TIMEOUT_FACTOR)


def script(name: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / name), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=240 * TIMEOUT_FACTOR,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_stream_bench_coalescing_carries_more_tokens_per_event(tmp_path: Path) -> None:
    out = script(
        "stream_bench.py", "--profiles", "instant", "--transports", "ws,grpc", "--tokens", "600", "--rollouts", "2",
        "--coalesce", "16", "--out", str(tmp_path / "run"),
    )  # fmt: skip
    rows = [line.split() for line in out.splitlines() if line.startswith("instant ")]
    per_delta = {(r[1], r[3]): float(r[6]) for r in rows}  # (transport, variant) → tokens per delta
    assert set(per_delta) == {(t, v) for t in ("ws", "grpc") for v in ("default", "coalesce-16")}
    for t in ("ws", "grpc"):
        assert per_delta[(t, "default")] == 1.0 and per_delta[(t, "coalesce-16")] > 8  # instant: always behind


def test_stream_floor_measures_every_library() -> None:
    out = script("probes/stream_floor.py", "--events", "400")
    rows = {m.group(1): (float(m.group(2).replace(",", "")), float(m.group(3))) for m in
            re.finditer(r"^(\w+)\s+\d+\s+([\d,]+)\s+([\d.]+)$", out, re.M)}  # fmt: skip
    assert set(rows) == {"asyncio", "sse", "websockets", "grpc"}
    assert all(rate > 0 and cpu > 0 for rate, cpu in rows.values())


def test_capacity_at_one_and_two_workers(tmp_path: Path) -> None:
    script(
        "capacity.py", "--transports", "ws", "--workers", "1,2", "--rates", "4", "--rollouts", "3", "--duration-s", "1",
        "--concurrency", "2", "--out", str(tmp_path),
    )  # fmt: skip
    data = json.loads((tmp_path / "capacity.json").read_text())
    assert [(c["workers"], c["transport"]) for c in data["capacity"]] == [(1, "ws"), (2, "ws")]
    assert all(c["rollouts_per_s"] > 0 for c in data["capacity"])
    assert (tmp_path / "capacity.png").stat().st_size > 10_000 and "| ws | connection | 2 |" in (
        tmp_path / "capacity.md"
    ).read_text()


def test_many_connections_held_open_all_answer() -> None:
    out = script("probes/many_connections.py", "--connections", "30", "--wave", "10")
    lines = [line for line in out.splitlines() if "opened" in line]
    assert len(lines) == 2 and all("requests ok    30  errors 0" in line and "exit 0" in line for line in lines), out


def test_locust_distributed_run_merges_every_workers_rollouts(tmp_path: Path) -> None:
    """A master and two worker processes for a few seconds: the merged raw samples hold exactly the rollouts
    Locust counted, from both workers' files."""
    script(
        "load.py", "--transports", "ws", "--run-time", "3s", "--users", "2", "--processes", "2", "--out", str(tmp_path)
    )
    files = list(tmp_path.glob("ws-samples.*"))
    assert len(files) == 2  # one per worker process
    stats = {
        row.split(",")[1]: int(row.split(",")[2]) for row in (tmp_path / "ws_stats.csv").read_text().splitlines()[1:]
    }
    data = json.loads((tmp_path / "load.json").read_text())
    merged = data["results"][0]["rows"][0]
    assert merged["rollouts"] + merged["failed"] == stats["rollout"] > 0 and merged["failed"] == 0
    assert (tmp_path / "ws" / "turns.parquet").is_file() and (tmp_path / "ws.html").is_file()


def test_cross_host_hydration_from_redis_and_sqlite(redis_url: str) -> None:
    """Two server processes on one store: every configuration's rollouts succeed, and a reconnect to the other
    host hydrates from the store (its resolve stage costs more than the connection cache's)."""
    out = script("cross_host.py", "--rollouts", "1", "--tool-calls", "3")
    rows = {(line[:7].strip(), line[8:40].strip()): line.split()[-4:] for line in out.splitlines()[1:] if line.strip()}
    assert len(rows) == 8 and all(int(v[0]) == 1 for v in rows.values()), out
    for store in ("redis", "sqlite"):
        assert float(rows[(store, "ws/store, reconnect each turn")][1]) > float(
            rows[(store, "ws/connection, one host")][1]
        )


def test_fanout_three_ways() -> None:
    out = script("fanout.py", "--subagents", "3", "--rounds", "1", "--profile", "instant", "--parent-kb", "1")
    rows = [line.split() for line in out.splitlines() if line.startswith(("ws ", "https "))]
    assert [" ".join(r[:2]) for r in rows] == ["ws lanes", "ws connections", "https store"]
    assert all(float(r[2]) > 0 for r in rows)


def test_warmup_prefills_the_first_turn() -> None:
    """At the fast profile (prefill costs model time), a first turn after generate:false answers sooner than a
    cold one: its instructions and tools were prefilled before it was sent."""
    out = script("warmup.py", "--rounds", "3", "--instructions-kb", "16")
    cold = float(re.search(r"cold \(one request\):\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    warm = float(re.search(r"warmed \(generate: false first\):\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    assert warm < cold, out


def test_steer_bench_both_ways_reach_the_corrected_answer() -> None:
    out = script("steer_bench.py", "--rounds", "1", "--answer-tokens", "200", "--after", "20")
    rows = {line[:22].strip(): line.split()[-3:] for line in out.splitlines() if line.startswith(("steer ", "cancel"))}
    assert set(rows) == {"steer", "cancel and re-create"}, out
    assert all(float(v[1]) > 0 and float(v[2]) >= 20 for v in rows.values())


def test_compaction_script_prints_every_cell_and_writes_the_data(tmp_path: Path) -> None:
    out_json = tmp_path / "compaction.json"
    args = ["--tool-calls", "8", "--compact-every", "4", "--rollouts", "1", "--profile", "instant"]
    out = script("compaction.py", *args, "--transports", "ws", "--json", str(out_json))
    rows = [line.split() for line in out.splitlines() if line.startswith("ws/")]
    assert sorted(r[0] for r in rows) == ["ws/connection", "ws/full", "ws/store"], out
    assert all(r[1] == "2" for r in rows)  # two compactions in each rollout
    assert "The turn after a compaction sent " in out
    data = json.loads(out_json.read_text(encoding="utf-8"))
    assert data["parameters"]["compact_every"] == 4 and len(data["cells"]) == 3
