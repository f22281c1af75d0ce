"""The answer a run gives, in words: the claim under test, the measured answer with its interval, whether it
holds, and then what limits it (a quick run, few rollouts, a contended machine, a saturated load generator).

The claim (docs/background.md): WebSocket mode, which keeps the conversation on the connection, gives *up to
~40% lower end-to-end latency* for agent rollouts of 20+ tool calls than HTTPS re-sending the history. The
cell pair that tests it is ``ws/connection`` against ``https/full`` in the headline
(:func:`loadtests.stats.headline`).

Two figures answer it. The **measured** one is the ratio of median rollout times. The **predicted** one is
the same ratio of the rollout times the CPU decomposition gives (:func:`loadtests.stats.rollout_decomposition`:
model time + tool time + server CPU + client CPU), which leaves out waiting for a CPU. On a quiet machine the
two agree; when other processes hold the CPUs, every CPU-heavy step of the full-resend cell also waits in the
run queue, and the measured reduction grows with the machine's load, not with the transport. So: when the two
disagree (one lies outside the other's interval) and the machine was contended, the predicted figure stands
and the verdict says why; when they disagree on a quiet machine, the gap is network, framing or waiting that
the CPU split does not see, and the measured figure stands.

The answer: ``holds`` when the reduction that stands is above zero with 95% confidence, ``does not hold``
when it is at or below zero, else ``inconclusive``; its size is compared with the claimed ~40%. A quick run or
one with fewer than :data:`MIN_ROLLOUTS` rollouts per cell is labelled *indicative*.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["CLAIM", "CLAIM_REDUCTION_PCT", "MIN_ROLLOUTS", "Verdict", "verdicts"]

CLAIM = (
    "WebSocket mode (the conversation kept on the connection) gives up to ~40% lower end-to-end latency than "
    "HTTPS re-sending the history, for agent rollouts of 20+ tool calls"
)
CLAIM_REDUCTION_PCT = 40.0
CLAIM_CELLS = ("ws/connection", "https/full")
MIN_ROLLOUTS = 5
PROFILE_ORDER = ("fast", "frontier", "h200-8b", "instant")
"""Which profile's verdict comes first: a fast model is the regime the claim is about; ``instant`` (no model
time) shows the API overhead alone."""

Interval = tuple[float, float, float]


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and math.isfinite(v)


def _pct(v: float) -> str:
    return f"{-v:+.0f}%" if abs(v) >= 10 else f"{-v:+.1f}%"


def interval_text(iv: Interval) -> str:
    """``(33.2, 29.0, 38.1)`` (a reduction in %, with its CI) → ``−33% [−38%, −29%]`` (a change in time)."""
    est, lo, hi = iv
    return f"{_pct(est)} [{_pct(hi)}, {_pct(lo)}]".replace("-", "−")


@dataclass
class Verdict:
    """The claim's answer on one scenario and profile. Reductions are in % (positive: WebSocket faster)."""

    scenario: str
    profile: str
    concurrency: int
    tool_calls: int
    n: int
    n_base: int
    measured: Interval
    predicted: Interval | None
    stands: str  # "measured" or "predicted"
    answer: str  # "holds", "does not hold", "inconclusive"
    size: str  # how the standing reduction compares with the claimed ~40%
    indicative: bool
    contended: str | None  # why the machine counted as contended in either cell, else None
    agree: bool | None  # measured and predicted agree (None: no prediction)
    caveats: list[str] = field(default_factory=list)
    caveat_kinds: list[str] = field(default_factory=list)  # one per caveat: a report lists each kind once
    on_target: bool = False  # measured against servers of someone else's (--target): their model, not the profile

    @property
    def figure(self) -> Interval:
        """The reduction that stands."""
        return self.predicted if self.stands == "predicted" and self.predicted is not None else self.measured

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        """One sentence: the measured answer, its interval, whether the claim holds (Markdown)."""
        label = "Indicative" if self.indicative else "Verdict"
        pred = f"; predicted from the CPU split {interval_text(self.predicted)}" if self.predicted else ""
        which = (
            " — the predicted figure stands (the machine was contended)"
            if self.stands == "predicted"
            else (" — the measured figure stands" if self.agree is False else "")
        )
        answer = "inconclusive" if self.answer == "inconclusive" else f"the claim {self.answer}"
        where = "against the endpoint's own model (`--target`)" if self.on_target else f"at `{self.profile}`"
        return (
            f"**{label}: {answer}** on `{self.scenario}` ({self.tool_calls} tool calls) {where}, "
            f"concurrency {self.concurrency}: `ws/connection` vs `https/full` rollout time measured "
            f"{interval_text(self.measured)}{pred}{which}; {self.size}. "
            f"(n = {self.n} and {self.n_base} rollouts; change in median rollout time, 95% CI)"
        )


def _answer(iv: Interval) -> str:
    _, lo, hi = iv
    if not (_finite(lo) and _finite(hi)):
        return "inconclusive"
    if lo > 0:
        return "holds"
    if hi <= 0:
        return "does not hold"
    return "inconclusive"


def _size(iv: Interval) -> str:
    """The estimate against the claimed ~40%, ±10 points (the estimate, not the interval: a short run's wide
    interval must not change the words)."""
    est = iv[0]
    if not _finite(est):
        return "no estimate"
    if est <= 0:
        return "no reduction"
    if est > CLAIM_REDUCTION_PCT + 10:
        return f"larger than the claimed ~{CLAIM_REDUCTION_PCT:.0f}%"
    if est < CLAIM_REDUCTION_PCT - 10:
        return f"smaller than the claimed ~{CLAIM_REDUCTION_PCT:.0f}%"
    return f"about the claimed ~{CLAIM_REDUCTION_PCT:.0f}%"


def _outside(x: float, iv: Interval) -> bool:
    return _finite(x) and _finite(iv[1]) and _finite(iv[2]) and not (iv[1] <= x <= iv[2])


def _cell_notes(monitor: Mapping[str, Any], cell_ids: Sequence[str]) -> tuple[str | None, str | None]:
    """(why the machine was contended, why the load generator saturated) in these cells, or None each."""
    cells = monitor.get("cells") if isinstance(monitor.get("cells"), Mapping) else {}
    contended, saturated = [], []
    for cid in cell_ids:
        m = cells.get(cid) if isinstance(cells, Mapping) else None
        if not isinstance(m, Mapping):
            continue
        if m.get("contended"):
            contended.append(str(m["contended"]))
        if m.get("saturated"):
            saturated.append(str(m.get("reason")))
    return (contended[0] if contended else None), (saturated[0] if saturated else None)


def _row_verdict(row: Mapping[str, Any], meta: Mapping[str, Any]) -> Verdict:
    measured: Interval = (row["reduction_pct"], row["reduction_lo"], row["reduction_hi"])
    predicted: Interval | None = None
    if _finite(row.get("pred_reduction_pct")):
        predicted = (row["pred_reduction_pct"], row["pred_reduction_lo"], row["pred_reduction_hi"])
    monitor = meta.get("monitor") if isinstance(meta.get("monitor"), Mapping) else {}
    contended, saturated = _cell_notes(monitor or {}, [str(row.get("cell_id")), str(row.get("vs_id"))])
    agree = None
    if predicted is not None:
        agree = not (_outside(predicted[0], measured) or _outside(measured[0], predicted))
    stands = "predicted" if (agree is False and contended and predicted is not None) else "measured"
    quick = bool((meta.get("bench") or {}).get("quick"))
    n, n_base = int(row["n"]), int(row["n_base"])
    indicative = quick or min(n, n_base) < MIN_ROLLOUTS
    figure = predicted if stands == "predicted" and predicted is not None else measured
    caveats: dict[str, str] = {}
    if indicative:
        why = "a quick run" if quick else "a short run"
        caveats["indicative"] = (
            f"Indicative only: {why} with {min(n, n_base)} rollouts in the smaller cell (at least {MIN_ROLLOUTS} "
            "are needed for a result); `make bench` measures it properly."
        )
    if contended:
        gap = (
            f"The measured ratio ({interval_text(measured)}) includes time spent waiting for a CPU, which "
            "`https/full` pays on every turn for its larger CPU work"
        )
        if stands == "predicted":
            caveats["contended"] = (
                f"The machine was contended ({contended}). {gap}, so it depends on what else the machine ran; the "
                f"figure that stands is the one predicted from the CPU split: {interval_text(figure)}. Under heavy "
                "contention the CPU time itself grows (caches, the host's other tenants), more for the full "
                "resend's work, so that figure then leans towards a larger reduction: quote it from a quiet run."
            )
        else:
            caveats["contended"] = (
                f"The machine was contended ({contended}), but the measured and predicted figures agree, so the "
                "measured one stands."
            )
    elif agree is False:
        caveats["disagree"] = (
            "Measured and predicted disagree on a quiet machine: the difference is time the CPU split does not "
            "see (network, framing, waiting), so the measured figure stands."
        )
    if saturated:
        caveats["saturated"] = (
            f"The load generator saturated ({saturated}): its own delays are in the rollout times of these cells."
        )
    if int(row.get("failed") or 0):
        caveats["failed"] = f"{int(row['failed'])} rollouts of these two cells failed and are not timed."
    return Verdict(
        scenario=str(row["scenario"]),
        profile=str(row["profile"]),
        concurrency=int(row["concurrency"]),
        tool_calls=int(row["tool_calls"]),
        n=n,
        n_base=n_base,
        measured=measured,
        predicted=predicted,
        stands=stands,
        answer=_answer(figure),
        size=_size(figure),
        indicative=indicative,
        contended=contended,
        agree=agree,
        caveats=list(caveats.values()),
        caveat_kinds=list(caveats),
        on_target=on_target(meta),
    )


def on_target(meta: Mapping[str, Any]) -> bool:
    """Whether the run's HTTPS and WebSocket cells went to servers it did not start (``run.json["servers"]``,
    kind ``target``): the model behind them is theirs, whatever profile the scenario names."""
    servers = [s for s in (meta.get("servers") or {}).values() if isinstance(s, Mapping)]
    kinds = {str(s.get("kind")) for s in servers if s.get("server") in ("https", "ws")}
    return kinds == {"target"}


def verdicts(headline: Sequence[Mapping[str, Any]], meta: Mapping[str, Any]) -> list[Verdict]:
    """One :class:`Verdict` per scenario and profile whose headline has ``ws/connection`` vs ``https/full``
    (``headline``: its rows as records; ``meta``: ``run.json``), the claim's own regime first: rollouts of
    20+ tool calls, profiles in :data:`PROFILE_ORDER`, then the best-measured (most rollouts)."""
    rows = [r for r in headline if (r.get("cell"), r.get("vs")) == CLAIM_CELLS]

    def order(r: Mapping[str, Any]) -> tuple[Any, ...]:
        prof = str(r["profile"])
        rank = PROFILE_ORDER.index(prof) if prof in PROFILE_ORDER else len(PROFILE_ORDER)
        return (int(r["tool_calls"]) < 20, rank, -min(int(r["n"]), int(r["n_base"])), str(r["scenario"]), prof)

    return [_row_verdict(r, meta) for r in sorted(rows, key=order)]
