"""``turnbench compare``: two run directories side by side, per cell, with the change and its CI."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtests.cli import main
from loadtests.commands import gate
from loadtests.runs.rundir import RunDir
from tests.unit.loadtests.report.test_report_synth import MEDIANS, make_run


def test_compare_per_cell_change(tmp_path: Path) -> None:
    a = make_run(tmp_path / "a", concurrencies=(1,), profiles=("fast",), ablations={})
    b = make_run(
        tmp_path / "b",
        concurrencies=(1,),
        profiles=("fast",),
        ablations={},
        medians={**MEDIANS, ("ws", "connection"): 750.0},
    )
    df = gate.compare_runs(RunDir(a), RunDir(b), n_boot=300).set_index(["transport", "state"])
    assert df.loc[("ws", "connection"), "rollout_ms change %"] == pytest.approx(25.0)
    lo, hi = df.loc[("ws", "connection"), "rollout_ms CI"]
    assert lo < 25.0 < hi
    assert df.loc[("https", "full"), "rollout_ms change %"] == pytest.approx(0.0)
    assert df.loc[("ws", "connection"), "ttft_ms A"] < df.loc[("ws", "connection"), "ttft_ms B"]


def test_compare_command_prints_and_writes_markdown(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = make_run(tmp_path / "a", concurrencies=(1,), profiles=("fast",), ablations={})
    md = tmp_path / "cmp.md"
    assert main(["compare", str(a), str(a), "--md", str(md)]) == 0
    out = capsys.readouterr().out
    assert "agent-20 fast c1 ws/connection" in out and "+0.0%" in out
    assert md.read_text().count("\n|") >= 6
    assert main(["compare", str(a), str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
