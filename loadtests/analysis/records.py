"""The records the analysis writes into ``summary.json`` and every reader of it takes back: per cell
(:class:`CellSummary`), the calibration (:class:`Calibration`), the decomposition (:class:`CellDecomposition`)
and the file itself (:class:`SummaryFile`).

They are ``TypedDict`` s: plain dicts at run time, so the JSON written is what it always was, and the
readers of ``summary.json`` get their keys checked. A float that is NaN in the process is ``null`` in the
file (:func:`loadtests.runs.rundir.jsonable`); readers treat both as missing.
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict

from loadtests.execution.plan import CellFields
from loadtests.workload.scenarios import State

__all__ = [
    "Calibration",
    "CalibrationBlock",
    "CalibrationCell",
    "CellDecomposition",
    "CellFields",
    "CellSummary",
    "Interval",
    "MetricStats",
    "Provided",
    "Ratios",
    "StatKey",
    "StreamRates",
    "SummaryFile",
    "TurnStats",
    "stat",
]

Interval = tuple[float, float, float]
"""An estimate with its bootstrap 95% interval: ``(estimate, lo, hi)`` (a list in JSON)."""


class MetricStats(TypedDict):
    """One metric of a cell over its measured rows (:func:`loadtests.analysis.estimators.summarize`): ``n``
    finite values, percentiles, the mean and the bootstrap 95% CI of the median."""

    n: int
    p50: float
    p90: float
    p99: float
    mean: float
    p50_lo: float
    p50_hi: float


StatKey = Literal["n", "p50", "p90", "p99", "mean", "p50_lo", "p50_hi"]
"""A key of :class:`MetricStats`."""


class TurnStats(TypedDict):
    """TTFT at one turn number: the median with its CI, and p99."""

    n: int
    p50: float
    p50_lo: float
    p50_hi: float
    p99: float


class StreamRates(TypedDict):
    """The streaming path of a cell's turns (:func:`loadtests.analysis.cells.stream_rates`)."""

    n: int
    tok_s: float
    tok_s_min: float
    tokens_per_turn: float
    tokens_per_delta: float
    server_cpu_us_per_token: float | None
    bytes_down_per_token: float


class Provided(TypedDict):
    """What the endpoint reported beside its events: per-stage timings, token usage."""

    stages: bool
    usage: bool


class Ratios(TypedDict, total=False):
    """Median ratios of a cell against its ``https/full`` reference (``vs``, a cell id); empty without one."""

    vs: str
    rollout_ms: Interval
    ttft_ms: Interval
    turn_ms: Interval


class CellSummary(CellFields):
    """``summary.json["cells"][cell]`` (:func:`loadtests.analysis.cells.cell_summaries`): the cell's record
    fields, its counts, per-metric statistics (``metrics``: metric name → stats; ``ttft_by_turn``: turn number
    as a string → stats), CPU per turn in ms, the streaming path, and the ratios against ``https/full``."""

    n_rollouts: int
    failed_rollouts: int
    first_error: str | None
    n_turns: int
    metrics: dict[str, MetricStats]
    ttft_by_turn: dict[str, TurnStats]
    server_cpu_ms_per_turn: float | None
    stream: StreamRates | None
    provided: Provided
    client_cpu_ms_per_turn: float | None
    recoveries: int
    rollouts_per_s: float | None
    ratio_vs_https_full: Ratios


class CalibrationBlock(TypedDict):
    """Measured minus known on the ``calibration`` profile over some turns (a cell's, a transport's), in ms;
    ``ttft_minus_inproc_ms`` only per transport (None without an ``inproc`` cell)."""

    n_turns: int
    ttft_ms: float
    ttft_residual_ms: float
    ttft_residual_ci: list[float]
    itl_ms: float
    itl_residual_ms: float
    server_pre_ms: float
    ttft_residual_net_ms: float
    ttft_minus_inproc_ms: NotRequired[float | None]


class CalibrationCell(CalibrationBlock):
    """A calibration cell's block, with its transport and state."""

    transport: str
    state: State


class Calibration(TypedDict):
    """``summary.json["calibration"]`` (:func:`loadtests.analysis.calibration.calibration`)."""

    known_ttft_ms: float
    known_itl_ms: float
    tokens_per_chunk: int
    cells: dict[str, CalibrationCell]
    by_transport: dict[str, CalibrationBlock]
    harness_residual: CalibrationBlock | None


class CellDecomposition(TypedDict):
    """``summary.json["decomposition"][cell]`` (:func:`loadtests.analysis.decomposition.decomposition`): means
    over rollouts in ms (they add up), server CPU per stage, and the median measured and predicted rollout."""

    n: int
    concurrency: int | None
    rollout_ms: float
    model_ms: float
    tool_ms: float
    server_cpu_ms: float
    server_stage_cpu_ms: float
    client_cpu_ms: float
    predicted_ms: float
    rest_ms: float
    stages_cpu_ms: dict[str, float]
    rollout_p50_ms: float
    predicted_p50_ms: float


class SummaryFile(TypedDict, total=False):
    """``summary.json``: :meth:`loadtests.analysis.summary.RunSummary.as_json` and the run directory it
    summarizes (``run``). ``headline``, ``ablations`` and ``verdicts``: one record per row."""

    run: str
    verdicts: list[dict[str, Any]]
    cells: dict[str, CellSummary]
    headline: list[dict[str, Any]]
    decomposition: dict[str, CellDecomposition]
    ablations: list[dict[str, Any]]
    calibration: Calibration | None


def stat(cell: CellSummary, metric: str, key: StatKey) -> float | None:
    """One statistic of one metric of a cell (``stat(c, "ttft_ms", "p50")``); None where the cell has no such
    metric (or, read back from ``summary.json``, where it was NaN)."""
    stats = cell["metrics"].get(metric)
    return stats.get(key) if stats else None
