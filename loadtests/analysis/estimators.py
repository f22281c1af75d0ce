"""Estimators over raw per-request samples (docs/concepts/measurements.md).

Percentiles with linear interpolation, never from rounded buckets; a seeded, vectorised percentile bootstrap
for intervals (:func:`bootstrap_ci`); ratios between two samples of one run (:func:`ratio_ci`), which cancels
most machine drift; :func:`summarize` for a long table of them per group. Non-finite values are dropped.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt
import pandas as pd

FloatArray = npt.NDArray[np.float64]
Values: TypeAlias = Iterable[float | None] | npt.NDArray[Any] | pd.Series
"""Raw samples: a list (None allowed), a numpy array or a pandas Series; non-finite values are dropped."""
Stat = Callable[..., Any]
"""A statistic called as ``stat(x, axis=-1)`` on a 2-D array (``np.median``, ``np.mean``, ...)."""

DEFAULT_QS: tuple[float, ...] = (50, 90, 99)
_MAX_BOOT_CELLS = 8_000_000  # resampled values held at once (~64 MB of float64): bounds bootstrap memory


def finite(values: Values) -> FloatArray:
    """Values as a 1-D float array with None/NaN/inf dropped (a failed turn has no TTFT, not a zero one)."""
    if isinstance(values, pd.Series | pd.Index):
        arr = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    elif isinstance(values, np.ndarray):
        arr = values.astype(np.float64).ravel()
    else:
        arr = np.asarray(list(values), dtype=np.float64)  # None becomes NaN
    finite: FloatArray = arr[np.isfinite(arr)]
    return finite


def _qkey(q: float) -> str:
    return f"p{q:g}"


def percentiles(values: Values, qs: Sequence[float] = DEFAULT_QS) -> dict[str, float]:
    """Percentiles of the finite values (linear interpolation), keyed ``p50``, ``p99.9`` ...; NaN if empty."""
    arr = finite(values)
    if arr.size == 0:
        return {_qkey(q): math.nan for q in qs}
    got = np.percentile(arr, list(qs), method="linear")
    return {_qkey(q): float(v) for q, v in zip(qs, np.atleast_1d(got), strict=True)}


def _boot_stats(arr: FloatArray, stat: Stat, n_boot: int, rng: np.random.Generator) -> FloatArray:
    """``n_boot`` values of ``stat`` over resamples (with replacement) of ``arr``, in bounded chunks."""
    n = arr.size
    chunk = max(1, _MAX_BOOT_CELLS // n)
    out = np.empty(n_boot, dtype=np.float64)
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        out[start:stop] = np.asarray(stat(arr[idx], axis=-1), dtype=np.float64)
    return out


def _interval(boot: FloatArray, ci: float) -> tuple[float, float]:
    boot = boot[~np.isnan(boot)]
    if boot.size == 0:
        return math.nan, math.nan
    alpha = (1.0 - ci) / 2.0
    lo, hi = np.quantile(boot, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def bootstrap_ci(
    values: Values, stat: Stat = np.median, n_boot: int = 2000, ci: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """Percentile-bootstrap interval of ``stat`` over the finite values.

    Returns: ``(estimate, lo, hi)`` in the values' unit; NaNs if there are no values.
    """
    arr = finite(values)
    if arr.size == 0:
        return math.nan, math.nan, math.nan
    est = float(stat(arr))
    if arr.size == 1:
        return est, est, est
    lo, hi = _interval(_boot_stats(arr, stat, n_boot, np.random.default_rng(seed)), ci)
    return est, lo, hi


def ratio_ci(
    a: Values, b: Values, stat: Stat = np.median, n_boot: int = 2000, ci: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """Bootstrap interval of ``stat(a) / stat(b)``, resampling ``a`` and ``b`` independently.

    Meant for two samples from one run (e.g. WS rollout_ms / HTTPS rollout_ms), so drift cancels.
    Returns: ``(ratio, lo, hi)``, dimensionless; NaNs if either sample is empty.
    """
    xa, xb = finite(a), finite(b)
    if xa.size == 0 or xb.size == 0:
        return math.nan, math.nan, math.nan
    rng = np.random.default_rng(seed)
    with np.errstate(divide="ignore", invalid="ignore"):
        est = float(np.float64(stat(xa)) / np.float64(stat(xb)))
        ratios = _boot_stats(xa, stat, n_boot, rng) / _boot_stats(xb, stat, n_boot, rng)
    lo, hi = _interval(ratios, ci)
    return est, lo, hi


def summarize(
    df: pd.DataFrame,
    by: Sequence[str] = ("transport", "state"),
    metrics: Sequence[str] = ("ttft_ms", "turn_ms", "latency_ms"),
    *,
    qs: Sequence[float] = DEFAULT_QS,
    n_boot: int = 2000,
    ci: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Per group and metric: ``n`` (finite values), percentiles, ``mean`` and the bootstrap CI of the
    median (``p50_lo``, ``p50_hi``). Long format: ``by + [metric, n, p50, ..., mean, p50_lo, p50_hi]``.

    Failed turns are not filtered here: pass ``df[df.success]`` when only successes should count.
    """
    by_cols = list(by)
    metric_cols = [m for m in metrics if m in df.columns]
    groups: Iterable[tuple[Any, pd.DataFrame]]
    groups = df.groupby(by_cols, dropna=False, sort=True) if by_cols else [((), df)]
    rows: list[dict[str, Any]] = []
    for key, group in groups:
        keys = key if isinstance(key, tuple) else (key,)
        for metric in metric_cols:
            values = finite(group[metric])
            row: dict[str, Any] = dict(zip(by_cols, keys, strict=True))
            row["metric"] = metric
            row["n"] = int(values.size)
            row.update(percentiles(values, qs))
            row["mean"] = float(values.mean()) if values.size else math.nan
            _, row["p50_lo"], row["p50_hi"] = bootstrap_ci(values, np.median, n_boot, ci, seed)
            rows.append(row)
    columns = [*by_cols, "metric", "n", *(_qkey(q) for q in qs), "mean", "p50_lo", "p50_hi"]
    return pd.DataFrame(rows, columns=columns)
