"""The target gate's judgment on synthetic samples shaped like a run against an endpoint (5 cells, 13 turns a
rollout, turn time growing with the history where the state is resent): it passes on a repeat measured on
another day (noise that only adds time, as a busy machine does: waiting for a CPU), and fails on +5 ms per
turn (a per-request regression upstream: +65 ms per 13-turn rollout), on a quiet and on a busy machine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadtests.commands import gate_target as gt
from loadtests.commands.gate import format_judgement, judge, kind_values

CELLS: dict[str, tuple[float, float]] = {
    # label: (ms of a turn's own cost at turn 0, ms more per earlier turn resent)
    "https/full": (10.0, 2.0),
    "https/store": (9.0, 0.3),
    "ws/full": (7.0, 1.5),
    "ws/connection": (4.0, 0.0),
    "ws/store": (4.5, 0.0),
}
TURNS = 13


def samples(
    seed: int, *, add_ms: float = 0.0, busy: float = 0.3, rollouts: int = 6
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rollouts, turns) frames. ``busy``: the share of turns that wait for a CPU (an exponential wait of
    mean 8 ms, plus 10% slower for the whole run on a busy day); ``add_ms``: added to every turn."""
    rng = np.random.default_rng(seed)
    slow = 1.0 + 0.1 * busy
    turn_rows, roll_rows = [], []
    for label, (base, grow) in CELLS.items():
        t, s = label.split("/")
        for _ in range(rollouts):
            total = 0.0
            for k in range(TURNS):
                own = (base + grow * k) * slow * rng.uniform(0.97, 1.05)
                wait = rng.exponential(8.0) if rng.random() < busy else 0.0
                turn = own + wait + add_ms
                ttft = turn * 0.8
                total += turn
                turn_rows.append(
                    {
                        "label": label,
                        "transport": t,
                        "state": s,
                        "turn_ms": turn,
                        "ttft_ms": ttft,
                        "bytes_up": 2000.0 + (3000.0 * k if s == "full" else 0.0),
                        "bytes_down": 1500.0,
                        "success": True,
                        "warmup": False,
                        "variant": "default",
                    }
                )
            roll_rows.append(
                {"label": label, "rollout_ms": total, "success": True, "warmup": False, "variant": "default"}
            )
    return pd.DataFrame(roll_rows), pd.DataFrame(turn_rows)


def metrics(seed: int, **kw: Any) -> dict[str, gt.Metric]:
    return gt.target_metrics(*samples(seed, **kw), n_boot=400)


@pytest.fixture(scope="module")
def baseline() -> dict[str, gt.Metric]:
    return metrics(1)


def failed(current: dict[str, gt.Metric], base: dict[str, gt.Metric]) -> list[str]:
    table, passed = judge(current, base, gt.TARGET_TOLERANCES)
    bad = table.loc[table["status"].isin(["REGRESSED", "MISSING"]), "metric"].tolist()
    assert passed == (not bad)
    return bad


def test_the_metric_set(baseline: dict[str, gt.Metric]) -> None:
    kinds = {m["kind"] for m in baseline.values()}
    assert kinds == {"ratio", "turn", "median", "tail", "bytes"}
    for cell in CELLS:
        for what in ("turn", "ttft"):
            assert {f"{what} ms {q} {cell}" for q in gt.QUANTILES} <= set(baseline)
    assert "ratio rollout ws/connection ÷ https/full" in baseline
    assert all(m["lo"] <= m["value"] <= m["hi"] for m in baseline.values())


@pytest.mark.parametrize("seed", [2, 3, 4, 5])
def test_repeats_pass(baseline: dict[str, gt.Metric], seed: int) -> None:
    assert failed(metrics(seed), baseline) == []


@pytest.mark.parametrize("seed", [2, 3])
def test_a_busier_day_passes(baseline: dict[str, gt.Metric], seed: int) -> None:
    """Twice as many turns wait for a CPU and the run is a bit slower: noise the gate must let pass."""
    assert failed(metrics(seed, busy=0.6), baseline) == []


@pytest.mark.parametrize(("seed", "busy"), [(2, 0.0), (3, 0.3), (4, 0.6)])
def test_five_ms_per_turn_fails(baseline: dict[str, gt.Metric], seed: int, busy: float) -> None:
    bad = failed(metrics(seed, add_ms=5.0, busy=busy), baseline)
    assert bad, "a 5 ms per-turn regression passed"
    caught = {m.split(" ", 3)[3] for m in bad if " p10 " in m}
    assert {"ws/connection", "ws/store"} <= caught  # the fast cells see +5 ms most plainly


def test_one_ms_per_turn_is_below_the_floor(baseline: dict[str, gt.Metric]) -> None:
    assert failed(metrics(2, add_ms=1.0), baseline) == []


def test_a_missing_cell_fails(baseline: dict[str, gt.Metric]) -> None:
    r, t = samples(2)
    current = gt.target_metrics(r[r["label"] != "ws/store"], t[t["label"] != "ws/store"], n_boot=200)
    assert any("ws/store" in m for m in failed(current, baseline))


def test_no_ttft_is_unmeasured_not_a_crash() -> None:
    r, t = samples(2)
    t["ttft_ms"] = np.nan
    m = gt.target_metrics(r, t, n_boot=100)
    assert not any(k.startswith("ttft") for k in m) and any(k.startswith("turn ms p10") for k in m)


def test_the_baseline_file_round_trips(tmp_path: Path, baseline: dict[str, gt.Metric]) -> None:
    path = tmp_path / "b.json"
    path.write_text(json.dumps({"version": 2, "metrics": baseline}))
    with pytest.raises(FileNotFoundError, match="not a baseline of `turnbench gate --target`"):
        gt._read(path)  # the stored gate's shape: no target
    path.write_text(json.dumps({"version": 2, "metrics": baseline, "target": {"https": "u"}}))
    assert gt._read(path)["metrics"] == baseline
    with pytest.raises(FileNotFoundError, match="no baseline"):
        gt._read(tmp_path / "none.json")


def _tolerances(items: list[str]) -> dict[str, float]:
    return kind_values(items, gt.TARGET_TOLERANCES, flag="--tolerance", value="F")


def _floors(items: list[str]) -> dict[str, float]:
    return kind_values(items, gt.FLOORS, flag="--floor", value="N")


def test_tolerance_and_floor_flags(baseline: dict[str, gt.Metric]) -> None:
    assert _tolerances(["turn=0.5"])["turn"] == 0.5
    with pytest.raises(ValueError, match="KIND=F"):
        _tolerances(["stage=0.5"])
    assert _floors(["turn=3"])["turn"] == 3.0 and _floors([])["median"] == gt.FLOORS["median"]
    with pytest.raises(ValueError, match="KIND=N"):
        _floors(["turn"])
    # a lower floor judges the same +3 ms per turn a regression that the default floor lets pass
    current = metrics(2, add_ms=3.0, busy=0.0)
    assert failed(current, baseline) == []
    low = {k: cast(gt.Metric, {**m, "floor": 1.0 if m["kind"] == "turn" else m["floor"]}) for k, m in baseline.items()}
    assert failed(current, low)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(list(gt.TARGET_TOLERANCES)),
            st.floats(allow_nan=True, allow_infinity=True),
            st.floats(allow_nan=True, allow_infinity=True),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_the_judgment_renders_any_number(rows: list[tuple[str, float, float]]) -> None:
    base = {f"m{i} {k}": _m(k, b) for i, (k, b, _) in enumerate(rows)}
    cur = {f"m{i} {k}": _m(k, c) for i, (k, _, c) in enumerate(rows)}
    table, _ = judge(cur, base, gt.TARGET_TOLERANCES)
    text = format_judgement(table)
    assert all(name in text for name in list(base)[:12])


def _m(kind: str, v: float) -> gt.Metric:
    return cast(gt.Metric, {"kind": kind, "value": v, "lo": v, "hi": v, "floor": gt.FLOORS[kind]})


@pytest.mark.parametrize(
    ("argv", "baseline", "write"),
    [
        (["gate", "--write-baseline"], Path("reports/baseline.json"), True),
        (["gate", "--write-baseline", "b.json"], Path("b.json"), True),
        (["gate", "--stored", "--baseline", "c.json"], Path("c.json"), False),
        (["gate"], Path("reports/baseline.json"), False),
    ],
)
def test_the_gate_without_target_keeps_its_flags(
    argv: list[str], baseline: Path, write: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from loadtests.cli.main import build_parser
    from loadtests.commands import gate_paired

    seen: dict[str, Any] = {}
    monkeypatch.setattr(gate_paired, "cmd_gate", lambda args: seen.update(vars(args)) or 0)
    args = build_parser().parse_args(argv)
    assert args.func(args) == 0
    assert seen["baseline"] == baseline and seen["write_baseline"] is write


@pytest.mark.parametrize(
    ("runs", "confirm", "code", "measured"),
    [
        (["slow", "fast"], 1, 0, 2),  # a busy moment, not seen again: pass
        (["slow", "slow"], 1, 1, 2),  # a regression shows every time: fail
        (["slow"], 0, 1, 1),  # --confirm 0: one run judged
        (["fast"], 1, 0, 1),  # a pass is not measured again
    ],
)
def test_a_failure_is_confirmed_by_a_rerun(
    runs: list[str],
    confirm: int,
    code: int,
    measured: int,
    baseline: dict[str, gt.Metric],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import argparse
    from types import SimpleNamespace

    path = tmp_path / "b.json"
    path.write_text(json.dumps({"version": 2, "metrics": baseline, "target": {"https": "u"}}))
    frames = {"fast": samples(7), "slow": samples(8, add_ms=5.0)}
    queue = list(runs)
    made: list[Path] = []

    def fake_run(target: Any, out: Path, **kw: Any) -> tuple[Any, Any, Any, float]:
        made.append(out)
        r, t = frames[queue.pop(0)]
        return SimpleNamespace(rollouts=r, turns=t, meta={}, path=out), None, {}, 10.0

    monkeypatch.setattr(gt, "run_target_gate", fake_run)
    monkeypatch.setattr(gt, "unmeasured", lambda *a: [])
    args = argparse.Namespace(
        write_baseline=None,
        baseline=path,
        tolerance=[],
        target=["https=http://h/v1"],
        ca=None,
        api_key=None,
        out=tmp_path / "run",
        rollouts=6,
        confirm=confirm,
    )
    assert gt.cmd_gate_target(args) == code
    assert len(made) == measured and not queue
    assert made[1:] == [tmp_path / f"run-confirm{k}" for k in range(1, measured)]
    assert capsys.readouterr().out.count("gate: FAIL") == runs[:measured].count("slow")
