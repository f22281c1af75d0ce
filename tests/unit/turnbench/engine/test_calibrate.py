"""``turnbench calibrate``: measured points -> a sim profile the sim engine serves (``--profile file:PATH``)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from loadtests.cli import main as turnbench
from turnbench.engine import make_engine
from turnbench.engine.calibrate import calibrate, measure
from turnbench.engine.fit import fit_points
from turnbench.engine.sim import SimEngine, SimProfile, get_profile, load_profile, profile_dict
from turnbench.settings import Settings

TRUTH = SimProfile(
    "truth",
    "a known cost model",
    prefill_base_ms=2.0,
    prefill_ms_per_token=0.004,
    prefill_ms_per_token_kctx=0.002,
    prefill_ms_per_ctx_token=0.001,
    decode_ms_per_token=1.0,
    decode_ms_per_token_kctx=0.5,
)
COSTS = [k for k in profile_dict(TRUTH) if k.endswith("_ms") or "_ms_per_" in k]


async def test_measuring_the_sim_engine_recovers_its_profile() -> None:
    """The whole loop on an engine whose costs are known: prefill charges are exact (the model's), so the fit
    returns the same coefficients; decode is paced by sleeps that never end early."""
    rows = await measure(SimEngine(TRUTH), [128, 512], [64, 256], decode_tokens=8, reps=1, vocab=8192)
    assert {r["incremental_computed_tokens"][-1] for r in rows} == {64, 256}
    doc = calibrate(rows, name="got", description="test")
    got = doc["profile"]
    for key in ("prefill_base_ms", "prefill_ms_per_token", "prefill_ms_per_token_kctx", "prefill_ms_per_ctx_token"):
        assert got[key] == pytest.approx(getattr(TRUTH, key), rel=0.02, abs=1e-4), key
    assert doc["fit"]["max_abs_residual_pct"] < 1
    slowest = TRUTH.token_ms(512 + 64)
    assert got["decode_ms_per_token"] + got["decode_ms_per_token_kctx"] * 0.576 >= 0.9 * slowest


def test_nonnegative_fit_drops_a_term_the_data_pull_below_zero() -> None:
    # prefill time that falls with context: a plain fit gives a negative per-context cost, a cost model can't
    points = [(100, 1000, 10.0), (100, 2000, 9.0), (200, 1000, 12.0), (200, 3000, 10.0), (400, 4000, 13.0)]
    decode = [(1000, 100.0), (4000, 100.0)]
    assert fit_points(points, decode)["prefill_ms_per_ctx_token"] < 0
    got = fit_points(points, decode, nonnegative=True)
    assert all(got[k] >= 0 for k in got)


def test_profile_file_is_served_by_the_sim_engine(tmp_path: Path) -> None:
    path = tmp_path / "h200-1b.json"
    path.write_text(json.dumps({"profile": profile_dict(replace(TRUTH, name="h200-1b")), "rows": []}))
    assert get_profile(f"file:{path}") == replace(TRUTH, name="h200-1b")
    eng = make_engine(Settings(engine="sim", profile=f"file:{path}", usage_db=":memory:"))
    assert eng.name == "sim:h200-1b"
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps({"decode_ms_per_token": 2.5}))  # a bare object of fields: the rest default
    assert load_profile(bare) == SimProfile("bare", f"loaded from {bare}", decode_ms_per_token=2.5)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ('{"decode_ms_per_tok": 1}', "unknown fields"),
        ('{"prefill_base_ms": -1}', "negative"),
        ("[1, 2]", "expected a JSON object"),
        ("{", "cannot read"),
    ],
)
def test_bad_profile_files_are_refused(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "p.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=match):
        get_profile(f"file:{path}")


def test_calibrate_command_measures_the_torch_engine(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("torch")
    out = tmp_path / "cpu-tiny.json"
    assert turnbench(["calibrate", "--engine", "torch", "--device", "cpu", "--quick", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert f"--profile file:{out}" in capsys.readouterr().out
    assert doc["engine"]["name"] == "torch:cpu-tiny" and doc["engine"]["decode"] == "static"
    assert [r["context"] for r in doc["rows"]] == [128, 512]
    for r in doc["rows"]:
        assert r["incremental_computed_tokens"][-1] == 64  # only the new tokens, onto the handle's KV
        assert r["incremental_logits_cosine"] > 0.9999 and r["decode_logits_cosine"] > 0.9999
        assert r["full_prefill_ms"] > 0 and r["decode_tok_s"] > 0 and r["decode_device_tok_s"] > 0
    profile = load_profile(out)
    assert profile.name == "measured-torch-cpu-tiny" and profile.decode_ms_per_token > 0
    assert all(getattr(profile, k) >= 0 for k in COSTS)
