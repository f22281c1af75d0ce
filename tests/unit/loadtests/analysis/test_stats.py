"""The estimators of the statistics module: percentiles, bootstrap intervals, ratios, grouped summaries."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from loadtests.analysis.estimators import bootstrap_ci, percentiles, ratio_ci, summarize
from loadtests.runs.rundir import turns_frame
from tests.helpers import synthetic_turn


@pytest.mark.parametrize(
    "values",
    [np.arange(1, 101, dtype=float), np.array([3.0, 1.0, 2.0]), np.array([7.5]), np.linspace(0, 1, 17) ** 3],
)
def test_percentiles_match_numpy(values: np.ndarray) -> None:
    got = percentiles(values, qs=(50, 90, 99, 99.9))
    want = np.percentile(values, [50, 90, 99, 99.9], method="linear")
    assert list(got) == ["p50", "p90", "p99", "p99.9"]
    assert list(got.values()) == pytest.approx(list(want))


def test_percentiles_drop_missing_and_empty_is_nan() -> None:
    assert percentiles([1.0, None, 3.0, float("nan")])["p50"] == 2.0
    assert all(math.isnan(v) for v in percentiles([]).values())
    assert percentiles(pd.Series([1.0, 2.0, None]))["p50"] == 1.5


def test_bootstrap_ci_contains_truth_and_narrows() -> None:
    rng = np.random.default_rng(42)
    true_median = 20.0 * np.log(2.0)  # exponential, mean 20 ms
    widths = []
    for n in (50, 500, 5000):
        sample = rng.exponential(20.0, size=n)
        est, lo, hi = bootstrap_ci(sample, n_boot=1000, seed=1)
        assert est == pytest.approx(float(np.median(sample)))
        assert lo <= est <= hi
        assert lo <= true_median <= hi
        widths.append(hi - lo)
    assert widths[0] > widths[1] > widths[2]


def test_bootstrap_is_seeded_and_accepts_mean() -> None:
    sample = np.random.default_rng(0).normal(5.0, 1.0, size=200)
    assert bootstrap_ci(sample, seed=3) == bootstrap_ci(sample, seed=3)
    est, lo, hi = bootstrap_ci(sample, stat=np.mean, n_boot=500)
    assert est == pytest.approx(sample.mean()) and lo < est < hi
    assert all(math.isnan(v) for v in bootstrap_ci([]))
    assert bootstrap_ci([4.0]) == (4.0, 4.0, 4.0)


def test_ratio_ci() -> None:
    rng = np.random.default_rng(7)
    a = rng.lognormal(3.0, 0.3, size=400)
    est, lo, hi = ratio_ci(a, a.copy(), n_boot=1000)
    assert est == pytest.approx(1.0) and lo < 1.0 < hi and hi - lo < 0.2
    est, lo, hi = ratio_ci(a * 0.6, a, n_boot=1000)
    assert est == pytest.approx(0.6) and lo < 0.6 < hi and hi < 1.0
    assert all(math.isnan(v) for v in ratio_ci([], a))


def test_summarize_groups() -> None:
    turns = [synthetic_turn(i, "ws", ttft=10.0 + i) for i in range(20)]
    turns += [synthetic_turn(i, "https", ttft=20.0 + i) for i in range(20)]
    turns.append(synthetic_turn(99, "https", ttft=None, ok=False))
    s = summarize(turns_frame(turns), by=["transport"], metrics=["ttft_ms", "turn_ms", "missing"], n_boot=200)
    assert list(s.columns) == ["transport", "metric", "n", "p50", "p90", "p99", "mean", "p50_lo", "p50_hi"]
    assert len(s) == 4
    ws = s[(s.transport == "ws") & (s.metric == "ttft_ms")].iloc[0]
    assert ws["n"] == 20 and ws["p50"] == pytest.approx(19.5) and ws["p50_lo"] <= 19.5 <= ws["p50_hi"]
    https = s[(s.transport == "https") & (s.metric == "ttft_ms")].iloc[0]
    assert https["n"] == 20  # the failed turn has no TTFT and is not counted as zero
    whole = summarize(turns_frame(turns), by=[], metrics=["ttft_ms"], n_boot=100)
    assert len(whole) == 1 and whole.iloc[0]["n"] == 40
