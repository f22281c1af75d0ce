"""The claim's verdict: which figure stands (measured on a quiet machine, predicted on a contended one when
they disagree), whether the claim holds, and the caveats in words; and the report leading with it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from loadtests.analysis.verdict import CLAIM, interval_text, verdicts
from loadtests.present.doc import Doc
from loadtests.report import render as report
from tests.unit.loadtests.report.test_report_synth import make_run


def _row(reduction: tuple[float, float, float], predicted: tuple[float, float, float] | None, **kw: Any) -> dict:
    row: dict[str, Any] = {
        "scenario": "agent-20",
        "profile": "fast",
        "concurrency": 1,
        "tool_calls": 20,
        "cell": "ws/connection",
        "vs": "https/full",
        "cell_id": "a:ws",
        "vs_id": "a:https",
        "reduction_pct": reduction[0],
        "reduction_lo": reduction[1],
        "reduction_hi": reduction[2],
        "n": 6,
        "n_base": 6,
        "failed": 0,
    }
    if predicted is not None:
        row.update(pred_reduction_pct=predicted[0], pred_reduction_lo=predicted[1], pred_reduction_hi=predicted[2])
    row.update(kw)
    return row


def _meta(contended: bool = False, quick: bool = False, saturated: bool = False) -> dict[str, Any]:
    cell = {"contended": "other processes used 1.4 of 2 cores while 0.00 stayed idle" if contended else None}
    if saturated:
        cell.update(saturated=True, reason="cpu 0.95 of a core > 0.90")
    return {"monitor": {"cells": {"a:ws": cell, "a:https": {}}}, "bench": {"quick": quick}}


def test_quiet_and_agreeing_the_measured_figure_stands() -> None:
    (v,) = verdicts([_row((33.0, 29.0, 38.0), (31.0, 27.0, 36.0))], _meta())
    assert v.answer == "holds" and v.stands == "measured" and v.agree is True and not v.indicative
    assert v.size == "about the claimed ~40%" and v.caveats == []
    line = v.line()
    assert line.startswith("**Verdict: the claim holds**") and "measured −33% [−38%, −29%]" in line
    assert "predicted from the CPU split −31% [−36%, −27%]" in line and "n = 6 and 6" in line


def test_contended_and_disagreeing_the_predicted_figure_stands() -> None:
    # the busy box of the issue: measured −64%, while the CPU split still says about a third
    (v,) = verdicts([_row((64.0, 60.0, 68.0), (34.0, 30.0, 38.0))], _meta(contended=True))
    assert v.stands == "predicted" and v.agree is False and v.figure == (34.0, 30.0, 38.0)
    assert v.answer == "holds" and v.size == "about the claimed ~40%"  # judged on the figure that stands
    assert "the predicted figure stands (the machine was contended)" in v.line()
    assert any("The machine was contended (other processes used 1.4 of 2 cores" in c for c in v.caveats)
    assert any("figure that stands is the one predicted from the CPU split: −34%" in c for c in v.caveats)


def test_disagreeing_on_a_quiet_machine_keeps_the_measured_figure() -> None:
    (v,) = verdicts([_row((20.0, 15.0, 25.0), (35.0, 32.0, 38.0))], _meta())
    assert v.stands == "measured" and v.agree is False and v.size == "smaller than the claimed ~40%"
    assert any("quiet machine" in c for c in v.caveats)


def test_contended_but_agreeing_says_so() -> None:
    (v,) = verdicts([_row((33.0, 29.0, 38.0), (31.0, 27.0, 36.0))], _meta(contended=True))
    assert v.stands == "measured" and any("agree, so the measured one stands" in c for c in v.caveats)


@pytest.mark.parametrize(
    ("reduction", "answer"),
    [((30.0, 12.0, 45.0), "holds"), ((5.0, -10.0, 20.0), "inconclusive"), ((-12.0, -20.0, -3.0), "does not hold")],
)
def test_answer_follows_the_interval(reduction: tuple[float, float, float], answer: str) -> None:
    (v,) = verdicts([_row(reduction, None)], _meta())
    assert v.answer == answer and v.predicted is None and v.agree is None


def test_quick_low_n_saturated_and_failed_runs_are_labelled() -> None:
    (v,) = verdicts([_row((33.0, 29.0, 38.0), None, n=3, failed=2)], _meta(quick=True, saturated=True))
    assert v.indicative and v.line().startswith("**Indicative: the claim holds**")
    text = " ".join(v.caveats)
    assert "Indicative only: a quick run with 3 rollouts" in text
    assert "load generator saturated (cpu 0.95 of a core" in text and "2 rollouts of these two cells failed" in text
    (short,) = verdicts([_row((33.0, 29.0, 38.0), None, n=4)], _meta())
    assert short.indicative and "a short run with 4 rollouts" in short.caveats[0]


def test_the_claims_regime_comes_first() -> None:
    rows = [_row((80.0, 75.0, 85.0), None, profile="instant"), _row((33.0, 29.0, 38.0), None, profile="fast")]
    rows.append({**_row((10.0, 5.0, 15.0), None), "cell": "grpc/connection"})  # not the claim's pair
    rows.append(_row((46.0, 40.0, 50.0), None, scenario="coding-agent-50", tool_calls=50, n=3, n_base=3))
    rows.append(_row((5.0, 1.0, 9.0), None, scenario="agent-5", tool_calls=5, n=20, n_base=20))
    order = [(v.scenario, v.profile) for v in verdicts(rows, _meta())]
    assert order == [
        ("agent-20", "fast"),  # 20+ tool calls, the fast model, and the most rollouts
        ("coding-agent-50", "fast"),
        ("agent-20", "instant"),
        ("agent-5", "fast"),  # fewer than 20 tool calls: not the claim's regime
    ]


def test_interval_text_reads_as_a_change_in_time() -> None:
    assert interval_text((33.2, 29.0, 38.1)) == "−33% [−38%, −29%]"
    assert interval_text((-4.5, -9.0, 1.2)) == "+4.5% [−1.2%, +9.0%]"


def test_the_report_leads_with_the_verdict_then_the_caveats(tmp_path: Path) -> None:
    quiet = make_run(tmp_path / "quiet", concurrencies=(1,), profiles=("fast",), ablations={}, meta={"bench": {}})
    md = report.write_report(quiet)["md"].read_text()
    lines = [line for line in md.splitlines() if line.strip()]
    assert lines[0] == "# turnbench report"
    assert lines[1] == f"**Claim under test:** {CLAIM} (tested by `ws/connection` against `https/full`)."
    assert lines[2].startswith("**Verdict: the claim holds** on `agent-20`") and "measured −40%" in lines[2]
    assert lines[3] == "**Caveats:**" and md.index("**Caveats:**") < md.index("## Headline")
    assert "no cell ran on a contended machine" in md
    busy = make_run(tmp_path / "busy", concurrencies=(1,), profiles=("fast",), ablations={}, other_cores=1.5)
    md = report.write_report(busy)["md"].read_text()
    caveats = md[md.index("**Caveats:**") : md.index("## Headline")]
    assert "The machine was contended (other processes used 1.5 of 2 cores" in caveats
    assert "other processes used 1.50 of 2 cores on average" in caveats


def test_inconclusive_reads_as_such() -> None:
    (v,) = verdicts([_row((5.0, -10.0, 20.0), None)], _meta())
    assert v.line().startswith("**Verdict: inconclusive** on `agent-20`")


def test_a_run_cut_short_by_its_time_budget_says_so_first(tmp_path: Path) -> None:
    cut = {"rounds_planned": 3, "rounds_run": 1, "rollouts_dropped": 40, "reason": "round 2 would take ~200 s"}
    d = make_run(tmp_path / "cut", concurrencies=(1,), profiles=("fast",), ablations={}, meta={"trimmed": cut})
    md = report.write_report(d)["md"].read_text()
    caveats = md[md.index("**Caveats:**") : md.index("## Headline")]
    assert "Cut short to fit the time budget: 1 of 3 measured rounds ran and 40 rollouts were dropped" in caveats


def test_size_follows_the_estimate_and_each_caveat_kind_is_listed_once() -> None:
    rows = [_row((72.0, 38.0, 90.0), None, n=3), _row((80.0, 60.0, 90.0), None, profile="instant", n=3)]
    first, second = verdicts(rows, _meta(quick=True, saturated=True))
    assert first.size == "larger than the claimed ~40%"  # a wide interval does not change the words
    assert first.caveat_kinds == second.caveat_kinds == ["indicative", "saturated"]
    d = Doc("t")
    report._verdict_section(d, [first, second], {})
    text = d.markdown(Path("."))
    assert text.count("Indicative only") == 1 and text.count("load generator saturated") == 1


def test_a_run_against_targets_names_their_model_not_the_profile() -> None:
    """Against servers the run did not start, the scenario's profile says nothing about the model behind them."""
    targets = {"servers": {"https/fast/tls": {"server": "https", "kind": "target"},
                           "ws/fast/tls": {"server": "ws", "kind": "target"}}}  # fmt: skip
    (v,) = verdicts([_row((33.0, 29.0, 38.0), None)], {**_meta(), **targets})
    assert v.on_target and "against the endpoint's own model (`--target`)" in v.line() and "`fast`" not in v.line()
    mixed = {"servers": {"a": {"server": "https", "kind": "process"}, "b": {"server": "ws", "kind": "target"}}}
    (w,) = verdicts([_row((33.0, 29.0, 38.0), None)], {**_meta(), **mixed})
    assert not w.on_target and "at `fast`" in w.line()
