"""The GPU check script's CPU dry run: the model part measures decode, calibration and batching, as on a GPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from turnbench.engine.sim import load_profile

pytest.importorskip("torch")

SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "probes" / "gpu_check.py"


def test_dry_run_of_the_model_part(tmp_path: Path) -> None:
    argv = [sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--parts", "model:cpu-tiny"]
    done = subprocess.run([*argv, "--out", str(tmp_path), "--budget-s", "150"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    part = json.loads((tmp_path / "summary.json").read_text())["parts"]["model:cpu-tiny"]
    assert part["status"] == "ok"
    decode = part["decode"]
    assert decode["served_tok_s"] > 0 and decode["step_tok_s"] > 0 and decode["bandwidth_limit_tok_s"] > 0
    assert all(r["incremental_logits_cosine"] > 0.9999 for r in part["calibration"]["rows"])
    runs = {(r["decode"], r["concurrent"]): r for r in part["batching"]}
    assert set(runs) == {("static", 1), ("static", 4), ("dynamic", 1), ("dynamic", 4)}
    assert runs[("static", 4)]["mean_rows_per_step"] > 1  # the four shared forward passes
    assert len(runs[("dynamic", 4)]["per_request_tok_s"]) == 4
    assert load_profile(tmp_path / "calibrated-cpu-tiny.json").name == "cpu-cpu-tiny"
    assert "decode b=1 ctx 128" in done.stdout  # the closing table
