"""The report's figures (matplotlib, Agg, PNG), drawn from a run's measured rows.

Figures are built on :class:`matplotlib.figure.Figure` directly: no pyplot state, no GUI; ``savefig`` renders
PNG through the Agg canvas. Every axis says its unit; a cell's colour is the same in every figure
(``transport/state`` sorted, tab10).
"""

from __future__ import annotations

import math
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from loadtests.present.doc import Doc, SectionError
from turnbench.settings import STAGES

__all__ = ["FIGURES", "add_sections", "all_figures", "bytes_over_rollout"]

_DPI = 110


def _colors(labels: Iterable[str]) -> dict[str, Any]:
    cmap = matplotlib.colormaps["tab10"]
    return {lab: cmap(i % 10) for i, lab in enumerate(sorted(set(labels)))}


def _main(df: pd.DataFrame) -> pd.DataFrame:
    """Default variant at the lowest concurrency, agent workloads only (not the calibration scenario, not
    the in-process reference): the cells the headline compares."""
    if df.empty:
        return df
    d = df[
        (df["variant"] == "default")
        & (df["scenario"] != "calibration")
        & (df["transport"] != "inproc")
        & (df["mode"] == "closed")
    ]
    return d[d["concurrency"] == d["concurrency"].min()] if not d.empty else d


def _panels(d: pd.DataFrame, ncols: int = 3) -> tuple[Figure, list[tuple[Axes, str, str]]]:
    """One panel per (scenario, profile) present, ``ncols`` to a row; unused axes are hidden."""
    pairs = sorted({(str(s), str(p)) for s, p in zip(d["scenario"], d["profile"], strict=True)})
    cols = min(ncols, len(pairs))
    rows = -(-len(pairs) // cols)
    fig = Figure(figsize=(5.2 * cols + 0.4, 3.7 * rows + 0.9), dpi=_DPI, layout="constrained")
    axes = np.ravel(fig.subplots(rows, cols, squeeze=False))
    for ax in axes[len(pairs) :]:
        ax.set_visible(False)
    return fig, [(axes[i], s, p) for i, (s, p) in enumerate(pairs)]


def _log_y(ax: Axes, values: Iterable[float]) -> None:
    """Log scale with plain-number labels when the data spans more than a decade; linear otherwise."""
    v = [x for x in values if x > 0 and math.isfinite(x)]
    if v and max(v) / min(v) > 10:
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())


def _scenario(df: pd.DataFrame) -> str | None:
    names = sorted(df["scenario"].unique()) if not df.empty else []
    return "agent-20" if "agent-20" in names else (names[0] if names else None)


def _grid(rows: Sequence[Any], cols: Sequence[Any], w: float = 5.0, h: float = 3.6) -> tuple[Figure, Any]:
    fig = Figure(figsize=(max(6.0, w * len(cols)), h * len(rows) + 0.6), dpi=_DPI, layout="constrained")
    axes = fig.subplots(len(rows), len(cols), squeeze=False)
    return fig, axes


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def _legend(fig: Figure, axes: Any) -> None:
    handles, labels = {}, []
    for ax in np.ravel(axes):
        for hnd, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in handles:
                handles[lab] = hnd
                labels.append(lab)
    if handles:
        fig.legend(
            [handles[k] for k in labels],
            labels,
            loc="outside lower center",
            ncols=min(6, len(labels)),
            title="transport/state",
        )


def ttft_by_turn(turns: pd.DataFrame, path: Path) -> Path | None:
    """Median TTFT (ms) against turn index, one line per transport/state; a panel per scenario and profile."""
    d = _main(turns[turns["success"]])
    if d.empty or "ttft_ms" not in d or d["ttft_ms"].isna().all():
        return None
    fig, panels = _panels(d)
    colors = _colors(d["label"])
    for ax, s, p in panels:
        sel = d[(d["scenario"] == s) & (d["profile"] == p)]
        for lab, g in sel.groupby("label"):
            med = g.groupby("turn_index")["ttft_ms"].median()
            ax.plot(med.index + 1, med.to_numpy(), marker=".", label=lab, color=colors[lab])
        ax.set(title=f"{s} · {p}", xlabel="turn (1 = first request of a rollout)", ylabel="median TTFT (ms)")
        _log_y(ax, sel["ttft_ms"])
        ax.grid(True, alpha=0.3)
    fig.suptitle("Time to first token by turn (lower is better)")
    _legend(fig, np.array([a for a, _, _ in panels]))
    return _save(fig, path)


def rollout_ecdf(rollouts: pd.DataFrame, path: Path) -> Path | None:
    """ECDF of end-to-end rollout time (s) per transport/state; a panel per scenario and profile."""
    d = _main(rollouts[rollouts["success"]])
    if d.empty:
        return None
    fig, panels = _panels(d)
    colors = _colors(d["label"])
    for ax, s, p in panels:
        for lab, g in d[(d["scenario"] == s) & (d["profile"] == p)].groupby("label"):
            x = np.sort(g["rollout_ms"].to_numpy() / 1000.0)
            y = np.arange(1, len(x) + 1) / len(x)
            ax.step(np.r_[x[0], x], np.r_[0.0, y], where="post", label=lab, color=colors[lab])
        ax.set(title=f"{s} · {p}", xlabel="rollout time (s)", ylabel="fraction of rollouts ≤ x", ylim=(0, 1.05))
        ax.grid(True, alpha=0.3)
    fig.suptitle("End-to-end rollout time, empirical CDF (further left is faster)")
    _legend(fig, np.array([a for a, _, _ in panels]))
    return _save(fig, path)


def stage_stack(turns: pd.DataFrame, path: Path) -> Path | None:
    """Mean server wall time per turn (ms) in each pipeline stage, stacked, per transport/state and profile."""
    d = _main(turns[turns["success"]])
    s = _scenario(d)
    cols = [f"stage_{st}_wall_ms" for st in STAGES if f"stage_{st}_wall_ms" in d.columns]
    if s is None or not cols:
        return None
    d = d[d["scenario"] == s]
    profs = sorted(d["profile"].unique())
    fig, axes = _grid([0], profs, w=5.5, h=max(3.0, 0.45 * d["label"].nunique() + 1.5))
    cmap = matplotlib.colormaps["tab10"]
    for j, p in enumerate(profs):
        ax: Axes = axes[0][j]
        means = d[d["profile"] == p].groupby("label")[cols].mean().fillna(0.0).sort_index(ascending=False)
        left = np.zeros(len(means))
        for k, col in enumerate(cols):
            ax.barh(means.index, means[col], left=left, color=cmap(k % 10), label=col[6:-8])
            left += means[col].to_numpy()
        ax.set(title=f"{s} · {p}", xlabel="mean server time per turn (ms, wall)")
        ax.grid(True, axis="x", alpha=0.3)
    fig.suptitle("Where the server spends a turn, by pipeline stage")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=len(labels), title="stage")
    return _save(fig, path)


def bytes_per_turn(turns: pd.DataFrame, path: Path) -> Path | None:
    """Mean bytes sent and received per turn (payload and framing), per transport/state and scenario."""
    d = _main(turns)
    if d.empty or "bytes_up" not in d:
        return None
    scen = sorted(d["scenario"].unique())
    fig, axes = _grid([0], scen, w=6.0, h=4.2)
    for j, s in enumerate(scen):
        ax: Axes = axes[0][j]
        means = d[d["scenario"] == s].groupby("label")[["bytes_up", "bytes_down"]].mean() / 1024.0
        x = np.arange(len(means))
        up = ax.bar(x - 0.2, means["bytes_up"], 0.4, label="up (client → server)", color="tab:blue")
        down = ax.bar(x + 0.2, means["bytes_down"], 0.4, label="down (server → client)", color="tab:orange")
        ax.bar_label(up, fmt="%.1f", fontsize=8)
        ax.bar_label(down, fmt="%.1f", fontsize=8)
        ax.set_xticks(x, means.index, rotation=30, ha="right")
        ax.set(title=s, ylabel="mean KiB per turn")
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Bytes on the wire per turn (payload and framing; all profiles pooled)")
    return _save(fig, path)


_STATE_STYLE = {"full": "-", "store": "--", "connection": ":"}
"""Line style per state strategy where lines may lie on each other (``store`` and ``connection`` often send the
same bytes)."""


def bytes_over_rollout(turns: pd.DataFrame, path: Path) -> Path | None:
    """Bytes sent per request over a rollout (median over rollouts, KiB), one panel per transport and one line
    per state (solid ``full``, dashed ``store``, dotted ``connection``); compaction calls (``phase`` ``compact``)
    are marked with a cross and a dotted line. Columns read: ``transport``, ``state``, ``turn`` (the request's
    index in its rollout), ``phase``, ``bytes_up``."""
    need = {"transport", "state", "turn", "phase", "bytes_up"}
    if turns.empty or not need <= set(turns.columns):
        return None
    d = turns.assign(bytes_up=pd.to_numeric(turns["bytes_up"], errors="coerce"))
    d = d[np.isfinite(d["bytes_up"]) & (d["bytes_up"] >= 0)]
    if d.empty:
        return None
    d = d.assign(label=d["transport"].astype(str) + "/" + d["state"].astype(str))
    colors = _colors(d["label"])
    transports = list(dict.fromkeys(d["transport"].astype(str)))
    fig, axes = _grid([0], transports, w=5.2, h=3.8)
    for j, t in enumerate(transports):
        ax: Axes = axes[0][j]
        sub = d[d["transport"].astype(str) == t]
        for label, g in sub.groupby("label", sort=True):
            med = g.groupby("turn")["bytes_up"].median() / 1024.0
            style = _STATE_STYLE.get(str(g["state"].iloc[0]), "-")
            ax.plot(med.index, med.to_numpy(), style, label=str(label), color=colors[str(label)], lw=1.4)
            marks = sorted(set(g.loc[g["phase"] == "compact", "turn"]))
            if marks:
                ax.plot(marks, med.reindex(marks).to_numpy(), "x", color=colors[str(label)], ms=7, mew=2)
        for x in sorted(set(sub.loc[sub["phase"] == "compact", "turn"])):
            ax.axvline(x, color="0.6", ls=":", lw=0.8)
        _log_y(ax, (sub.groupby(["label", "turn"])["bytes_up"].median() / 1024.0).tolist())
        ax.set(title=t, xlabel="request of the rollout (× = a compaction call)", ylabel="KiB sent (median)")
        ax.grid(True, alpha=0.3)
    _legend(fig, axes)
    fig.suptitle("Bytes sent per request over a compacting rollout")
    return _save(fig, path)


def throughput(rollouts: pd.DataFrame, path: Path) -> Path | None:
    """Rollouts per second against concurrency (closed loop: concurrency ÷ mean rollout time)."""
    d = rollouts[
        (rollouts["variant"] == "default")
        & rollouts["success"]
        & (rollouts["scenario"] != "calibration")
        & (rollouts["transport"] != "inproc")
        & (rollouts["mode"] == "closed")
    ]
    s = _scenario(d)
    if s is None or d["concurrency"].nunique() < 2:
        return None
    d = d[d["scenario"] == s]
    profs = sorted(d["profile"].unique())
    fig, axes = _grid([0], profs)
    colors = _colors(d["label"])
    for j, p in enumerate(profs):
        ax: Axes = axes[0][j]
        for lab, g in d[d["profile"] == p].groupby("label"):
            mean_s = g.groupby("concurrency")["rollout_ms"].mean() / 1000.0
            ax.plot(mean_s.index, mean_s.index / mean_s.to_numpy(), marker="o", label=lab, color=colors[lab])
        ax.set(title=f"{s} · {p}", xlabel="concurrent rollouts", ylabel="rollouts per second")
        ax.set_xticks(sorted(d["concurrency"].unique()))
        ax.grid(True, alpha=0.3)
    fig.suptitle("Throughput against concurrency (higher is better)")
    _legend(fig, axes)
    return _save(fig, path)


def ablation_bars(abl: pd.DataFrame, path: Path) -> Path | None:
    """Change of median rollout time (%) with one switch off, with its 95% CI, per ablation."""
    if abl.empty:
        return None
    a = abl.sort_values("change_pct")
    names = [f"{r.cell} · {r.profile} · {r.scenario}: {r.setting}" for r in a.itertuples()]
    fig = Figure(figsize=(10.0, 0.5 * len(a) + 1.6), dpi=_DPI, layout="constrained")
    ax = fig.subplots()
    err = np.vstack([a["change_pct"] - a["change_lo"], a["change_hi"] - a["change_pct"]]).clip(min=0)
    colors = ["tab:red" if v > 0 else "tab:green" for v in a["change_pct"]]
    bars = ax.barh(names, a["change_pct"], xerr=err, color=colors, capsize=3, height=0.6)
    ax.bar_label(bars, fmt="%+.0f%%", padding=4, fontsize=8)
    ax.axvline(0.0, color="black", lw=0.8)
    ax.set(
        xlabel="change in median rollout time vs all switches on (%)",
        title="Ablations: rollout time with one mechanism off (bars: 95% CI)",
    )
    ax.grid(True, axis="x", alpha=0.3)
    return _save(fig, path)


def headline_ratios(head: pd.DataFrame, path: Path) -> Path | None:
    """The headline at a glance: per cell, its median rollout time ÷ the HTTPS baseline's in the same run, with
    the 95% CI, one panel per baseline (``vs`` column); left of 1 is faster. None without finite ratios."""
    if head.empty or "ratio" not in head:
        return None
    h = head[np.isfinite(pd.to_numeric(head["ratio"], errors="coerce"))]
    if h.empty:
        return None
    bases = list(dict.fromkeys(h["vs"]))
    height = sum(0.34 * n + 1.1 for n in h.groupby("vs").size())
    fig = Figure(figsize=(10.0, height), dpi=_DPI, layout="constrained")
    axes = np.atleast_1d(fig.subplots(len(bases), 1, sharex=True))
    for ax, base in zip(axes, bases, strict=True):
        g = h[h["vs"] == base].iloc[::-1]
        names = [f"{r.cell} · {r.profile} · {r.scenario}" for r in g.itertuples()]
        ratio = g["ratio"].to_numpy(dtype=float)
        err = np.vstack([ratio - g["lo"].to_numpy(dtype=float), g["hi"].to_numpy(dtype=float) - ratio])
        bounds = zip(g["lo"], g["hi"], strict=True)
        colors = ["tab:green" if hi < 1 else "tab:red" if lo > 1 else "tab:gray" for lo, hi in bounds]
        xerr = np.nan_to_num(err.clip(min=0))
        for i, (x, y, color) in enumerate(zip(ratio, names, colors, strict=True)):
            ax.errorbar([x], [y], xerr=xerr[:, i : i + 1], fmt="o", color=color, ecolor=color, capsize=3)
        for x, y in zip(ratio, names, strict=True):
            ax.annotate(f"{(x - 1) * 100:+.0f}%", (x, y), textcoords="offset points", xytext=(0, 6), fontsize=8)
        ax.axvline(1.0, color="black", lw=0.8)
        ax.set(xlabel=f"rollout time ÷ {base} (95% CI)", title=f"vs {base}")
        ax.grid(True, axis="x", alpha=0.3)
    return _save(fig, path)


FIGURES: dict[str, tuple[str, str]] = {
    "headline": (
        "Headline at a glance",
        "Median rollout time of each cell ÷ the HTTPS baseline's in the same run; bars are 95% CIs, left of 1 "
        "is faster (green: the whole interval below 1, red: above).",
    ),
    "ttft_by_turn": ("TTFT by turn", "Median time to first content token at each turn index."),
    "rollout_ecdf": ("Rollout latency distribution", "Empirical CDF of end-to-end rollout time."),
    "stage_stack": ("Server time per turn by stage", "Mean wall time per turn in each pipeline stage."),
    "bytes_per_turn": ("Bytes per turn", "Mean request (up) and response (down) bytes per turn."),
    "throughput": ("Throughput vs concurrency", "Closed loop: concurrency ÷ mean rollout time."),
    "ablations": ("Ablation bars", "Change of median rollout time with one switch off; bars are 95% CIs."),
}


def all_figures(
    turns: pd.DataFrame, rollouts: pd.DataFrame, abl: pd.DataFrame, out: Path, head: pd.DataFrame | None = None
) -> tuple[dict[str, Path], dict[str, str]]:
    """Draw every figure the data allows into ``out`` (PNG). Returns: (name → path, missing ones omitted;
    name → the traceback of a figure that failed to draw: the others are still drawn)."""
    makers: dict[str, Callable[[], Path | None]] = {
        "headline": lambda: headline_ratios(head if head is not None else pd.DataFrame(), out / "headline.png"),
        "ttft_by_turn": lambda: ttft_by_turn(turns, out / "ttft_by_turn.png"),
        "rollout_ecdf": lambda: rollout_ecdf(rollouts, out / "rollout_ecdf.png"),
        "stage_stack": lambda: stage_stack(turns, out / "stage_stack.png"),
        "bytes_per_turn": lambda: bytes_per_turn(turns, out / "bytes_per_turn.png"),
        "throughput": lambda: throughput(rollouts, out / "throughput.png"),
        "ablations": lambda: ablation_bars(abl, out / "ablations.png"),
    }
    made: dict[str, Path] = {}
    failed: dict[str, str] = {}
    for name, make in makers.items():
        try:
            path = make()
        except Exception:  # one figure's failure must not cost the report
            failed[name] = traceback.format_exc()
            continue
        if path is not None:
            made[name] = path
    return made, failed


def add_sections(
    doc: Doc, figures: Mapping[str, Path], names: Sequence[str] | None = None, failed: Mapping[str, str] | None = None
) -> None:
    """One section per figure (heading, caption, image); a figure the data did not allow says so, and one that
    failed to draw (``failed``: name → traceback) says so and is counted among the document's errors."""
    for name in names or list(FIGURES):
        title, caption = FIGURES[name]
        doc.h2(title)
        if name in figures:
            doc.figure(figures[name], caption)
        elif failed and name in failed:
            error = failed[name].strip().splitlines()[-1]
            doc.p(f"**This figure failed to draw:** `{error}` (traceback in report.log).")
            doc.errors.append(SectionError(title, error, failed[name]))
        else:
            doc.p(f"*Not drawn: this run has no data for it ({caption.lower()})*")
