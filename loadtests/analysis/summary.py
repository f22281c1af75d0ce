"""Every statistic of one run at once (:func:`summarize_run`; :class:`RunSummary` is ``summary.json``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from loadtests.analysis.calibration import calibration
from loadtests.analysis.cells import cell_summaries
from loadtests.analysis.decomposition import decomposition, rollout_decomposition
from loadtests.analysis.headline import ablations, headline
from loadtests.analysis.records import Calibration, CellDecomposition, CellSummary, SummaryFile
from loadtests.analysis.verdict import Verdict, verdicts
from loadtests.execution.plan import CellRecord, ChunkRecord


@dataclass(frozen=True)
class RunSummary:
    """Every statistic of one run; :meth:`as_json` is ``summary.json``."""

    cells: dict[str, CellSummary]
    headline: pd.DataFrame
    ablations: pd.DataFrame
    calibration: Calibration | None
    decomposition: dict[str, CellDecomposition] = field(default_factory=dict)
    verdicts: list[Verdict] = field(default_factory=list)

    def as_json(self) -> SummaryFile:
        def records(df: pd.DataFrame) -> list[dict[str, Any]]:
            return [{str(k): v for k, v in r.items()} for r in df.to_dict("records")]

        return {
            "verdicts": [v.as_json() for v in self.verdicts],
            "cells": self.cells,
            "headline": records(self.headline),
            "decomposition": self.decomposition,
            "ablations": records(self.ablations),
            "calibration": self.calibration,
        }


def summarize_run(
    turns: pd.DataFrame,
    rollouts: pd.DataFrame,
    cells: Sequence[CellRecord],
    chunks: Sequence[ChunkRecord],
    meta: Mapping[str, Any] | None = None,
) -> RunSummary:
    """Per-cell summaries, headline (measured and predicted), the decomposition, ablations, calibration, and
    the claim's verdicts (:func:`loadtests.verdict.verdicts`, which read ``meta``: run.json's monitor and
    bench records) from the measured rows and the records."""
    frame = rollout_decomposition(turns, rollouts, cells, chunks)
    head = headline(rollouts, cells, predicted=frame)
    return RunSummary(
        cells=cell_summaries(turns, rollouts, cells, chunks),
        headline=head,
        ablations=ablations(rollouts, cells),
        calibration=calibration(turns, cells),
        decomposition=decomposition(frame, cells),
        verdicts=verdicts(head.to_dict("records"), meta or {}),
    )
