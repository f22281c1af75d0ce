"""The paired gate's arithmetic: the paired bootstrap cancels what moved both arms, the judgement's statuses
and floors, and how the base revision is chosen."""

from __future__ import annotations

import numpy as np
import pytest

from loadtests.commands import gate_paired as gp


def test_a_paired_ratio_sees_through_drift_that_an_unpaired_one_does_not() -> None:
    rng = np.random.default_rng(1)
    drift = rng.uniform(1.0, 3.0, size=200)  # the machine: each pair's moment is 1-3x slower
    base = 2.0 * drift * rng.normal(1.0, 0.02, size=200)
    cand = 2.2 * drift * rng.normal(1.0, 0.02, size=200)  # +10% real change
    ratio, lo, hi = gp.paired_ratio(cand, base, "mean")
    assert ratio == pytest.approx(1.1, rel=0.02) and 1.05 < lo < 1.1 < hi < 1.15
    # the same samples, unpaired (each arm resampled on its own): the drift stays in, the interval is far wider
    rng2 = np.random.default_rng(2)
    a = cand[rng2.integers(0, 200, size=(2000, 200))].mean(axis=1)
    b = base[rng2.integers(0, 200, size=(2000, 200))].mean(axis=1)
    unpaired_lo, unpaired_hi = np.percentile(a / b, [2.5, 97.5])
    assert (unpaired_hi - unpaired_lo) > 5 * (hi - lo)


def _row(kind: str, base: float, cand: float, lo: float, hi: float) -> dict[str, object]:
    return {"metric": f"{kind} x", "kind": kind, "cell": "x", "base": base, "candidate": cand,
            "ratio": cand / base, "lo": lo, "hi": hi, "pairs": 10}  # fmt: skip


def test_judge_needs_the_whole_interval_past_the_tolerance_and_the_floor() -> None:
    rows = [
        _row("stage", 3.0, 5.0, 1.6, 1.8),  # +2 ms, interval above 1.35: REGRESSED
        _row("stage", 0.1, 0.3, 2.5, 3.5),  # tripled, but +0.2 ms: under the floor
        _row("stage", 3.0, 3.6, 1.1, 1.3),  # +20%: interval reaches under 1.35
        _row("rollout", 100.0, 160.0, 1.4, 1.9),  # rollouts have no floor
        _row("turn", 6.0, 3.0, 0.45, 0.55),  # halved: improved
    ]
    table, passed = gp.judge_paired(rows)
    assert list(table["status"]) == ["REGRESSED", "ok", "ok", "REGRESSED", "improved"] and not passed
    table, passed = gp.judge_paired(rows[1:3])
    assert passed and "2 metrics" in gp.format_paired(table)
    assert gp.judge_paired([])[1] is False  # nothing judged is no pass


def test_the_base_revision_is_resolved_or_refused() -> None:
    head, why = gp.resolve_base("HEAD", None)
    assert len(head) == 40 and why == "--against HEAD"
    with pytest.raises(gp.BaseUnavailable, match="no base revision"):
        gp.resolve_base("no-such-revision-anywhere", None)
    stale = {"git_commit": "0" * 40}  # a baseline from a commit this clone does not have: the next choice
    commit, why = gp.resolve_base(None, stale)
    assert len(commit) == 40 and why in ("the merge base with origin/main", "HEAD")
