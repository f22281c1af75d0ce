"""The gate's judgement on synthetic runs with known ratios and CPU: it passes on identical data, on noise
within the tolerance, on a machine twice as slow and when one stage got faster; it fails on a slower
transport, 2 ms more CPU in one stage (on a slow machine too) and a costlier client; it says when the machine
was contended; and the command's exit codes say so."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from loadtests.cli import main
from loadtests.commands import gate
from loadtests.runs.rundir import RunDir
from tests.unit.loadtests.report.test_report_synth import CLIENT, MEDIANS, OUTSIDE, make_run

REF_MS = 10.0


def gate_run(path: Path, medians: dict[tuple[str, str], float] | None = None, **kw: Any) -> Path:
    """A synthetic gate run: one scenario, the instant profile, concurrency 1, the reference CPU recorded."""
    return make_run(
        path,
        medians=medians or MEDIANS,
        profiles=("instant",),
        concurrencies=(1,),
        ablations={},
        n_rollouts=12,
        meta={"gate": {"cpu_reference_ms": [REF_MS, REF_MS]}},
        **kw,
    )


def metrics_of(path: Path, **kw: Any) -> dict[str, gate.Metric]:
    return gate.gate_metrics(RunDir(path), cpu_ref_ms=REF_MS, n_boot=500, **kw)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> dict[str, gate.Metric]:
    return metrics_of(gate_run(tmp_path_factory.mktemp("gate") / "base"))


def test_metrics_are_stage_and_process_cpu_ratios_and_scaled_totals(base: dict[str, gate.Metric]) -> None:
    ratio = base["ratio rollout ws/connection ÷ https/full"]
    assert ratio["kind"] == "ratio" and ratio["value"] == pytest.approx(0.6)
    assert ratio["lo"] <= 0.6 <= ratio["hi"]
    assert "ratio rollout https/full ÷ inproc/full" not in base  # the gate runs no in-process reference
    render = base["cpu ms/turn render ws/connection"]
    assert render["kind"] == "stage" and render["cell"] == "ws/connection"
    assert render["value"] == pytest.approx(1.0, rel=0.03) and render["lo"] < render["value"] < render["hi"]
    assert render["floor"] == gate.CPU_FLOOR_MS
    outside = base["cpu ms/turn outside-stages ws/connection"]  # the server process beyond its stages
    assert outside["kind"] == "process" and outside["value"] == pytest.approx(3.27 * OUTSIDE, rel=0.05)
    client = base["cpu ms/turn client ws/connection"]
    assert client["value"] == pytest.approx(3.27 * (1 + OUTSIDE) * CLIENT, rel=0.05)
    total = base["cpu ms/turn total ws/connection (reference-scaled)"]
    assert total["kind"] == "cpu" and total["raw_ms"] == pytest.approx(3.27, rel=0.05)
    assert total["value"] == pytest.approx(total["raw_ms"] * gate.NORMAL_REF_MS / REF_MS)


def test_identical_data_passes(base: dict[str, gate.Metric]) -> None:
    table, passed = gate.judge(base, base)
    assert passed and set(table["status"]) == {"ok"}


def test_noise_within_tolerance_passes(base: dict[str, gate.Metric], tmp_path: Path) -> None:
    noisy = {**MEDIANS, ("ws", "connection"): 660.0, ("grpc", "connection"): 600.0}  # ±10%
    current = metrics_of(gate_run(tmp_path / "noisy", noisy, seed=7, cpu_factor={("ws", "connection"): 1.2}))
    table, passed = gate.judge(current, base)
    assert passed, gate.format_judgement(table)


def test_a_machine_twice_as_slow_passes(base: dict[str, gate.Metric], tmp_path: Path) -> None:
    """Every stage, the servers and the client twice as slow (a busy host): the speed factor takes it."""
    slow = {cell: 2.0 for cell in MEDIANS}
    current = gate.gate_metrics(RunDir(gate_run(tmp_path / "slow", seed=3, cpu_factor=slow)), cpu_ref_ms=REF_MS)
    assert gate.speed_factors(current, base)["ws/connection"] == pytest.approx(2.0, rel=0.03)
    table, passed = gate.judge(current, base)
    assert passed, gate.format_judgement(table)
    moved = table.set_index("metric")["change_pct"]
    assert abs(moved["cpu ms/turn render ws/connection"]) < 5 and abs(moved["cpu ms/turn client ws/connection"]) < 5
    assert moved["cpu ms/turn total ws/connection (reference-scaled)"] == pytest.approx(100, abs=8)  # the guard
    assert "ws/connection ×2.0" in gate.format_judgement(table)


def test_ratio_regression_beyond_tolerance_fails(base: dict[str, gate.Metric], tmp_path: Path) -> None:
    slow = {**MEDIANS, ("ws", "connection"): 900.0}  # ws/https 0.6 -> 0.9: +50%
    table, passed = gate.judge(metrics_of(gate_run(tmp_path / "slow", slow)), base)
    assert not passed
    bad = table[table["status"] == "REGRESSED"]
    assert "ratio rollout ws/connection ÷ https/full" in set(bad["metric"])
    text = gate.format_judgement(table)
    assert "REGRESSED" in text and "+50.0%" in text


def test_two_ms_in_one_stage_fails_even_on_a_slow_machine(base: dict[str, gate.Metric], tmp_path: Path) -> None:
    """2 ms of CPU per turn in ``render`` (what ``--burn render=2000`` adds) on a machine 1.5× slower."""
    slow = {cell: 1.5 for cell in MEDIANS}
    burnt = gate.gate_metrics(
        RunDir(gate_run(tmp_path / "burnt", cpu_factor=slow, stage_extra_ms={"render": 2.0})), cpu_ref_ms=REF_MS
    )
    assert gate.speed_factors(burnt, base)["ws/connection"] == pytest.approx(1.5, rel=0.05)  # render is outvoted
    table, passed = gate.judge(burnt, base)
    assert not passed
    regressed = set(table.loc[table["status"] == "REGRESSED", "metric"])
    assert {f"cpu ms/turn render {cell}" for cell in ("ws/connection", "https/full", "grpc/connection")} <= regressed
    assert not any("safety" in m or "ratio" in m for m in regressed), gate.format_judgement(table)


def test_one_stage_getting_faster_fails_nothing_else(base: dict[str, gate.Metric], tmp_path: Path) -> None:
    """The other way round (the burnt run as the baseline): render improved, and no other stage looks worse."""
    burnt = gate.gate_metrics(RunDir(gate_run(tmp_path / "burnt", stage_extra_ms={"render": 2.0})), cpu_ref_ms=REF_MS)
    table, passed = gate.judge(base, burnt)
    assert passed, gate.format_judgement(table)
    assert "cpu ms/turn render ws/connection" in set(table.loc[table["status"] == "improved", "metric"])


def test_a_client_regression_fails(base: dict[str, gate.Metric], tmp_path: Path) -> None:
    current = metrics_of(gate_run(tmp_path / "client", client_factor=2.0))
    table, passed = gate.judge(current, base)
    assert not passed
    regressed = set(table.loc[table["status"] == "REGRESSED", "metric"])
    assert "cpu ms/turn client ws/connection" in regressed, gate.format_judgement(table)


def test_the_gate_says_when_the_machine_was_contended(tmp_path: Path) -> None:
    busy = RunDir(gate_run(tmp_path / "busy", other_cores=1.5))
    summary = gate.machine_summary(busy)
    assert summary["contended"] and "other processes used 1.5 of 2 cores" in summary["contended"]
    assert "CONTENDED" in gate.machine_text(summary)
    quiet = gate.machine_summary(RunDir(gate_run(tmp_path / "quiet")))
    assert quiet["contended"] is None and "CONTENDED" not in gate.machine_text(quiet)


def test_tiny_cpu_moves_stay_under_the_floor() -> None:
    base = {"cpu route x": {"kind": "stage", "cell": "x", "value": 0.001, "lo": 0.001, "hi": 0.001, "floor": 0.5}}
    now = {"cpu route x": {"kind": "stage", "cell": "x", "value": 0.003, "lo": 0.003, "hi": 0.003, "floor": 0.5}}
    _, passed = gate.judge(now, base)
    assert passed  # tripled, but by less than the absolute floor per turn


def test_missing_metric_fails_new_metric_passes(base: dict[str, gate.Metric]) -> None:
    current = dict(base)
    name = "ratio rollout grpc/connection ÷ ws/connection"
    del current[name]
    table, passed = gate.judge(current, base)
    assert not passed and table.set_index("metric").loc[name, "status"] == "MISSING"
    table, passed = gate.judge(base, current)
    assert passed and table.set_index("metric").loc[name, "status"] == "new"


def test_gate_command_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good, baseline = gate_run(tmp_path / "good"), tmp_path / "baseline.json"
    assert main(["gate", "--run", str(tmp_path / "good"), "--baseline", str(baseline)]) == 2
    assert "make baseline" in capsys.readouterr().err
    assert main(["gate", "--run", str(good), "--baseline", str(baseline), "--write-baseline"]) == 0
    data = json.loads(baseline.read_text())
    assert data["tolerances"] == gate.TOLERANCES and data["cpu_reference_ms"] == REF_MS
    assert data["version"] == 2 and data["machine"]["contended"] is None
    assert main(["gate", "--run", str(good), "--baseline", str(baseline)]) == 0
    assert "gate: PASS" in capsys.readouterr().out
    slow = gate_run(tmp_path / "slow", {**MEDIANS, ("ws", "connection"): 900.0})
    assert main(["gate", "--run", str(slow), "--baseline", str(baseline)]) == 1
    out = capsys.readouterr().out
    assert "gate: FAIL" in out and "REGRESSED" in out
    # a looser tolerance, deliberately given, lets the same run pass
    assert main(["gate", "--run", str(slow), "--baseline", str(baseline), "--ratio-tolerance", "0.6"]) == 0
    assert main(["gate", "--run", str(slow), "--baseline", str(baseline), "--tolerance", "ratio=0.6"]) == 0
    capsys.readouterr()
    assert main(["gate", "--run", str(slow), "--baseline", str(baseline), "--tolerance", "nope=1"]) == 2
    assert "--tolerance" in capsys.readouterr().err


def test_gate_refuses_a_run_that_is_not_a_gate_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = make_run(tmp_path / "bench")  # two profiles, two concurrency levels, no reference CPU
    (tmp_path / "b.json").write_text(json.dumps({"version": 2, "metrics": {"x": {"kind": "ratio", "value": 1.0}}}))
    assert main(["gate", "--run", str(d), "--baseline", str(tmp_path / "b.json")]) == 2
    assert "not made by `turnbench gate`" in capsys.readouterr().err


def test_broken_baseline_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "b.json").write_text("{not json")
    with pytest.raises(gate.GateError, match="not valid JSON"):
        gate.read_baseline(tmp_path / "b.json")
    (tmp_path / "b.json").write_text("{}")
    with pytest.raises(gate.GateError, match="no metrics"):
        gate.read_baseline(tmp_path / "b.json")
    (tmp_path / "b.json").write_text(json.dumps({"version": 1, "metrics": {"x": {"kind": "cpu", "value": 1.0}}}))
    with pytest.raises(gate.GateError, match="another version of the gate"):
        gate.read_baseline(tmp_path / "b.json")


def test_github_workflow_runs_the_same_gate() -> None:
    text = (Path(__file__).resolve().parents[4] / ".github" / "workflows" / "gate.yml").read_text()
    assert "actions/checkout@" in text and "actions/setup-python@" in text and 'python-version: "3.11"' in text
    assert "make gate" in text and "actions/upload-artifact@" in text and "reports/" in text
