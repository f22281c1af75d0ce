"""The gate's judgement on synthetic runs with known ratios and CPU: it passes on identical data and on
noise within the tolerance, fails on a regression beyond it, and the command's exit codes say so."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from loadtests import gate
from loadtests.cli import main
from loadtests.rundir import RunDir
from tests.unit.test_report_synth import MEDIANS, make_run

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


def test_metrics_are_ratios_and_normalized_cpu(base: dict[str, gate.Metric]) -> None:
    ratio = base["ratio rollout ws/connection ÷ https/full"]
    assert ratio["kind"] == "ratio" and ratio["value"] == pytest.approx(0.6)
    assert ratio["lo"] <= 0.6 <= ratio["hi"]
    assert base["ratio rollout https/full ÷ inproc/full"]["value"] == pytest.approx(2.0)
    render = base["cpu ms/turn render ws/connection"]
    assert render["kind"] == "cpu" and render["raw_ms"] == pytest.approx(1.0, rel=0.05)
    assert render["value"] == pytest.approx(render["raw_ms"] * gate.NORMAL_REF_MS / REF_MS)
    assert render["floor"] == pytest.approx(gate.CPU_FLOOR_MS * gate.NORMAL_REF_MS / REF_MS)
    assert base["cpu ms/turn total ws/connection"]["raw_ms"] == pytest.approx(3.27, rel=0.05)


def test_identical_data_passes(base: dict[str, gate.Metric]) -> None:
    table, passed = gate.judge(base, base)
    assert passed and set(table["status"]) == {"ok"}


def test_noise_within_tolerance_passes(base: dict[str, gate.Metric], tmp_path: Path) -> None:
    noisy = {**MEDIANS, ("ws", "connection"): 660.0, ("grpc", "connection"): 600.0}  # ±10%
    current = metrics_of(gate_run(tmp_path / "noisy", noisy, seed=7, cpu_factor={("ws", "connection"): 1.2}))
    table, passed = gate.judge(current, base)
    assert passed, gate.format_judgement(table)


def test_ratio_regression_beyond_tolerance_fails(base: dict[str, gate.Metric], tmp_path: Path) -> None:
    slow = {**MEDIANS, ("ws", "connection"): 900.0}  # ws/https 0.6 -> 0.9: +50%
    table, passed = gate.judge(metrics_of(gate_run(tmp_path / "slow", slow)), base)
    assert not passed
    bad = table[table["status"] == "REGRESSED"]
    assert "ratio rollout ws/connection ÷ https/full" in set(bad["metric"])
    text = gate.format_judgement(table)
    assert "REGRESSED" in text and "+50.0%" in text


def test_cpu_regression_fails_and_improvement_passes(base: dict[str, gate.Metric], tmp_path: Path) -> None:
    burnt = metrics_of(gate_run(tmp_path / "cpu", cpu_factor={("ws", "connection"): 3.0}))
    table, passed = gate.judge(burnt, base)
    assert not passed
    assert "cpu ms/turn render ws/connection" in set(table.loc[table["status"] == "REGRESSED", "metric"])
    table, passed = gate.judge(base, burnt)  # the other way round: faster
    assert passed and "improved" in set(table["status"])


def test_tiny_cpu_moves_stay_under_the_floor() -> None:
    base = {"cpu route x": {"kind": "cpu", "value": 0.001, "lo": 0.001, "hi": 0.001, "floor": 0.005}}
    now = {"cpu route x": {"kind": "cpu", "value": 0.003, "lo": 0.003, "hi": 0.003, "floor": 0.005}}
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
    assert data["tolerances"] == {"ratio": 0.25, "cpu": 0.5} and data["cpu_reference_ms"] == REF_MS
    assert main(["gate", "--run", str(good), "--baseline", str(baseline)]) == 0
    assert "gate: PASS" in capsys.readouterr().out
    slow = gate_run(tmp_path / "slow", {**MEDIANS, ("ws", "connection"): 900.0})
    assert main(["gate", "--run", str(slow), "--baseline", str(baseline)]) == 1
    out = capsys.readouterr().out
    assert "gate: FAIL" in out and "REGRESSED" in out
    # a looser tolerance, deliberately given, lets the same run pass
    assert main(["gate", "--run", str(slow), "--baseline", str(baseline), "--ratio-tolerance", "0.6"]) == 0


def test_gate_refuses_a_run_that_is_not_a_gate_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = make_run(tmp_path / "bench")  # two profiles, two concurrency levels, no reference CPU
    (tmp_path / "b.json").write_text(json.dumps({"metrics": {"x": {"kind": "ratio", "value": 1.0}}}))
    assert main(["gate", "--run", str(d), "--baseline", str(tmp_path / "b.json")]) == 2
    assert "not made by `turnbench gate`" in capsys.readouterr().err


def test_broken_baseline_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "b.json").write_text("{not json")
    with pytest.raises(gate.GateError, match="not valid JSON"):
        gate.read_baseline(tmp_path / "b.json")
    (tmp_path / "b.json").write_text("{}")
    with pytest.raises(gate.GateError, match="no metrics"):
        gate.read_baseline(tmp_path / "b.json")


def test_github_workflow_runs_the_same_gate() -> None:
    text = (Path(__file__).resolve().parents[2] / ".github" / "workflows" / "gate.yml").read_text()
    assert "actions/checkout@" in text and "actions/setup-python@" in text and 'python-version: "3.11"' in text
    assert "make gate" in text and "actions/upload-artifact@" in text and "reports/" in text
