"""Statistics from raw per-request samples (DESIGN §6): never from rounded buckets.

Results become pandas frames (one row per turn or per rollout), percentiles come from the raw values with
linear interpolation, and uncertainty from a seeded, vectorised bootstrap. Ratios between two transports are
computed inside one run (``ratio_ci``), which cancels most machine drift. Samples are kept as Parquet plus
JSONL so a report can be recomputed without rerunning the benchmark.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeAlias

import msgspec
import numpy as np
import numpy.typing as npt
import pandas as pd

from clients.base import RolloutResult, TurnResult

__all__ = [
    "DEFAULT_QS",
    "bootstrap_ci",
    "percentiles",
    "ratio_ci",
    "read_samples",
    "rollouts_frame",
    "summarize",
    "turns_frame",
    "write_samples",
]

FloatArray = npt.NDArray[np.float64]
Values: TypeAlias = Iterable[float | None] | npt.NDArray[Any] | pd.Series
"""Raw samples: a list (None allowed), a numpy array or a pandas Series; non-finite values are dropped."""
Stat = Callable[..., Any]
"""A statistic called as ``stat(x, axis=-1)`` on a 2-D array (``np.median``, ``np.mean``, ...)."""

DEFAULT_QS: tuple[float, ...] = (50, 90, 99)
_STAGE_FIELDS = ("items", "tokens", "chars")
_MAX_BOOT_CELLS = 8_000_000  # resampled values held at once (~64 MB of float64): bounds bootstrap memory


def _finite(values: Values) -> FloatArray:
    """Values as a 1-D float array with None/NaN/inf dropped (a failed turn has no TTFT, not a zero one)."""
    if isinstance(values, pd.Series | pd.Index):
        arr = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    elif isinstance(values, np.ndarray):
        arr = values.astype(np.float64).ravel()
    else:
        arr = np.asarray(list(values), dtype=np.float64)  # None becomes NaN
    finite: FloatArray = arr[np.isfinite(arr)]
    return finite


def _turn_row(turn: TurnResult) -> dict[str, Any]:
    row: dict[str, Any] = msgspec.structs.asdict(turn)
    stages = row.pop("server_stages")
    itl = list(turn.itl_ms)
    row["itl_ms"] = itl
    row["itl_p50_ms"] = float(np.median(itl)) if itl else math.nan
    row["itl_p99_ms"] = float(np.percentile(itl, 99)) if itl else math.nan
    for name, timing in stages.items():
        row[f"stage_{name}_wall_ms"] = timing.wall_ns / 1e6
        row[f"stage_{name}_cpu_ms"] = timing.cpu_ns / 1e6
        for field in _STAGE_FIELDS:
            row[f"stage_{name}_{field}"] = getattr(timing, field)
    return row


def turns_frame(results: Iterable[TurnResult]) -> pd.DataFrame:
    """One row per turn: every :class:`TurnResult` field, ``itl_ms`` as a list column plus ``itl_p50_ms``
    and ``itl_p99_ms``, and server stages flattened to ``stage_<name>_{wall_ms,cpu_ms,items,tokens,chars}``
    (NaN where a turn lacks a stage)."""
    rows = [_turn_row(t) for t in results]
    if not rows:
        return pd.DataFrame(columns=[*TurnResult.__struct_fields__, "itl_p50_ms", "itl_p99_ms"]).drop(
            columns=["server_stages"]
        )
    return pd.DataFrame.from_records(rows)


def rollouts_frame(results: Iterable[RolloutResult]) -> pd.DataFrame:
    """One row per rollout: its scalar fields plus per-turn sums (``n_turns``, ``turns_failed``,
    ``bytes_up``, ``bytes_down``, ``input_tokens``, ``cached_tokens``, ``output_tokens``, ``turn_ms_sum``),
    ``n_tool_calls`` and ``tool_names`` (list column)."""
    rows: list[dict[str, Any]] = []
    for r in results:
        row: dict[str, Any] = msgspec.structs.asdict(r)
        turns: list[TurnResult] = row.pop("turns")
        calls: list[tuple[str, str]] = row.pop("tool_calls")
        row["n_turns"] = len(turns)
        row["turns_failed"] = sum(not t.success for t in turns)
        for field in ("bytes_up", "bytes_down", "input_tokens", "cached_tokens", "output_tokens"):
            row[field] = sum(getattr(t, field) for t in turns)
        row["turn_ms_sum"] = sum(t.turn_ms for t in turns if t.turn_ms is not None)
        row["n_tool_calls"] = len(calls)
        row["tool_names"] = [name for name, _ in calls]
        rows.append(row)
    if not rows:
        cols = [f for f in RolloutResult.__struct_fields__ if f not in ("turns", "tool_calls")]
        return pd.DataFrame(columns=cols)
    return pd.DataFrame.from_records(rows)


def _qkey(q: float) -> str:
    return f"p{q:g}"


def percentiles(values: Values, qs: Sequence[float] = DEFAULT_QS) -> dict[str, float]:
    """Percentiles of the finite values (linear interpolation), keyed ``p50``, ``p99.9`` ...; NaN if empty."""
    arr = _finite(values)
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
    values: Values,
    stat: Stat = np.median,
    n_boot: int = 2000,
    ci: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Percentile-bootstrap interval of ``stat`` over the finite values.

    Returns: ``(estimate, lo, hi)`` in the values' unit; NaNs if there are no values.
    """
    arr = _finite(values)
    if arr.size == 0:
        return math.nan, math.nan, math.nan
    est = float(stat(arr))
    if arr.size == 1:
        return est, est, est
    lo, hi = _interval(_boot_stats(arr, stat, n_boot, np.random.default_rng(seed)), ci)
    return est, lo, hi


def ratio_ci(
    a: Values,
    b: Values,
    stat: Stat = np.median,
    n_boot: int = 2000,
    ci: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Bootstrap interval of ``stat(a) / stat(b)``, resampling ``a`` and ``b`` independently.

    Meant for two samples from one run (e.g. WS rollout_ms / HTTPS rollout_ms), so drift cancels.
    Returns: ``(ratio, lo, hi)``, dimensionless; NaNs if either sample is empty.
    """
    xa, xb = _finite(a), _finite(b)
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
            values = _finite(group[metric])
            row: dict[str, Any] = dict(zip(by_cols, keys, strict=True))
            row["metric"] = metric
            row["n"] = int(values.size)
            row.update(percentiles(values, qs))
            row["mean"] = float(values.mean()) if values.size else math.nan
            _, row["p50_lo"], row["p50_hi"] = bootstrap_ci(values, np.median, n_boot, ci, seed)
            rows.append(row)
    columns = [*by_cols, "metric", "n", *(_qkey(q) for q in qs), "mean", "p50_lo", "p50_hi"]
    return pd.DataFrame(rows, columns=columns)


def write_samples(df: pd.DataFrame, path_stem: str | Path) -> tuple[Path, Path]:
    """Write ``<stem>.parquet`` (pyarrow) and ``<stem>.jsonl`` beside it; creates the folder.

    Returns: the two paths written.
    """
    stem = Path(path_stem)
    if stem.suffix in (".parquet", ".jsonl"):
        stem = stem.with_suffix("")
    stem.parent.mkdir(parents=True, exist_ok=True)
    parquet, jsonl = stem.with_suffix(".parquet"), stem.with_suffix(".jsonl")
    df.to_parquet(parquet, engine="pyarrow", index=False)
    df.to_json(jsonl, orient="records", lines=True, double_precision=15)
    return parquet, jsonl


def _lists_back(df: pd.DataFrame) -> pd.DataFrame:
    """Parquet list cells come back as numpy arrays; make them plain lists again, as written."""
    for col in df.columns:
        if df[col].dtype == object:
            first = df[col].dropna()
            if len(first) and isinstance(first.iloc[0], np.ndarray):
                df[col] = df[col].map(lambda v: v.tolist() if isinstance(v, np.ndarray) else v)
    return df


def read_samples(path: str | Path) -> pd.DataFrame:
    """Read samples written by :func:`write_samples`: a ``.parquet`` or ``.jsonl`` path, or the bare stem
    (Parquet preferred)."""
    p = Path(path)
    if p.suffix not in (".parquet", ".jsonl"):
        p = p.with_suffix(".parquet") if p.with_suffix(".parquet").exists() else p.with_suffix(".jsonl")
    if p.suffix == ".parquet":
        return _lists_back(pd.read_parquet(p, engine="pyarrow"))
    return pd.read_json(p, orient="records", lines=True)
