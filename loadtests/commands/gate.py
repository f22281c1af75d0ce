"""``turnbench gate``: a short run judged against ``reports/baseline.json``, made to give the same answer on a
busy CI runner as on a quiet machine; and ``turnbench compare``: two run directories side by side.

A shared machine moves wall times by ±30% and more, and it moves CPU times too: the same code costs 1.5–2×
the thread CPU when the hypervisor's other tenants share the core (measured on the 2-core development VM:
a fixed loop took 3 ms or 6 ms of CPU within one second, with or without local load). What stays put is how
CPU divides between the parts of the same work measured over the same moments. So the gate measures, per
cell:

- **stage CPU** (kind ``stage``): each pipeline stage's thread CPU per turn, mean with a bootstrap 95% CI;
- **process CPU** (kind ``process``): the server process's CPU outside the stages (framing, TLS, the event
  loop) and the load generator's CPU, per turn, over the cell's chunks (point estimates: the processes' CPU
  counters have no per-turn samples);
- **ratios** (kind ``ratio``) of median rollout time between cells of the run (``ws/connection ÷
  https/full`` …), with bootstrap CIs: what a user waits for; under contention they carry waiting for a CPU
  and their CIs are wide, so they fail only on large moves;
- **CPU per turn** (kind ``cpu``): each cell's total stage CPU per turn, scaled by a fixed pure-Python
  reference workload (:func:`reference_cpu_ms`) timed before and after the run and before every chunk, the
  fastest of those ~20 timings taken: the guard against everything getting slower at once. Its tolerance is
  wide because the machine's speed moves it. The timings are two-valued on the 2-core VM (about 11 ms, or
  about 20 ms when the other vCPU is busy — the host's cores are shared), so a median lands on either mode:
  a baseline whose two timings both fell high (21.5, 18.2 ms) made a later quiet run read +134%, and medians
  of 20 timings read 13.9, 16.9 and 18.1 ms in three quiet runs a minute apart while their minima read
  10.3, 10.1 and 10.8 ms. Noise only ever adds CPU, so the fastest timing is the machine's speed.

and :func:`judge` divides a cell's stage and process CPU by that cell's **speed factor**: the median, over the
cell's stages that cost at least :data:`SPEED_MIN_MS` per turn, of current ÷ baseline CPU. The stages of one
request run on one thread microseconds apart, so a busier or slower machine scales them alike and the median
cancels it, while a change in one stage (slower *or* faster) moves one value of six or seven and not the
median. Measured on the 2-core VM with two CPU-burning processes beside the run: after this division, stages
above 1 ms moved by at most ±20% (tiny ones up to +40%, under the floor), while 2 ms of extra CPU per turn
in ``render`` (3 ms) shows as +55–90%.

A metric fails only when its whole CI lies above the baseline moved by the tolerance (``lo > base·(1+tol)``)
and, for the CPU kinds, by more than :data:`CPU_FLOOR_MS` per turn (a 0.1 ms stage doubling is noise, not a
regression worth a red build). Tolerances: :data:`TOLERANCES`. The gate prints the machine's background
load during the run beside its verdict. The committed baseline changes only by ``make baseline``.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, NotRequired, TypedDict

import numpy as np
import pandas as pd

from loadtests.analysis.estimators import bootstrap_ci, ratio_ci
from loadtests.commands.bench import Group, matrix_cells, matrix_config, matrix_record
from loadtests.execution.machine import combine, contention
from loadtests.runs import runner
from loadtests.runs.rundir import RunDir
from loadtests.workload.scenarios import State
from turnbench.settings import STAGES

__all__ = [
    "TOLERANCES",
    "Baseline",
    "GateError",
    "MachineSummary",
    "Metric",
    "baseline_record",
    "compare_runs",
    "dump_baseline",
    "gate_groups",
    "gate_metrics",
    "judge",
    "kind_values",
    "read_baseline",
    "reference_cpu_ms",
    "run_gate",
    "speed_factors",
    "write_baseline",
]

BASELINE_VERSION = 2
MetricKind = Literal["stage", "process", "ratio", "cpu", "turn", "median", "tail", "bytes"]
"""The stored gate's kinds (stage, process, ratio, cpu) and the target gate's (ratio, turn, median, tail, bytes:
:mod:`loadtests.commands.gate_target`)."""
TOLERANCES: dict[str, float] = {"stage": 0.30, "process": 0.30, "ratio": 0.25, "cpu": 1.0}
CPU_FLOOR_MS = 0.5
"""A CPU metric fails only if it rose by more than this much CPU per turn."""
SPEED_MIN_MS = 0.05
"""Stages cheaper than this (per turn, in the baseline) do not vote on a cell's speed factor."""
SPEED_KINDS = ("stage", "process")
"""The kinds :func:`judge` divides by the cell's speed factor."""
NORMAL_REF_MS = 10.0
"""CPU metrics are in ms per turn *on a machine where the reference workload takes this long*."""
GATE_STATES: dict[str, tuple[State, ...]] = {
    "https": ("full", "store"),
    "ws": ("connection", "store"),
    "grpc": ("connection",),
}
RATIOS: tuple[tuple[str, str], ...] = (
    ("ws/connection", "https/full"),
    ("ws/store", "https/store"),
    ("grpc/connection", "ws/connection"),
    ("https/store", "https/full"),
)
"""(numerator, denominator) cells; each ratio rises when the numerator's path regresses."""
COMPARE_KEYS = ("scenario", "profile", "mode", "concurrency", "arrival_rate_rps", "variant", "transport", "state")


class Metric(TypedDict):
    """One metric of the gate (see the module docstring), as ``baseline.json["metrics"]`` holds it: ``value``
    with its 95% CI (``lo``, ``hi``; a point estimate has lo = hi = value) and ``floor``, the smallest rise
    that counts, in the metric's unit; the CPU kinds name their ``cell`` and ``cpu`` its unscaled ``raw_ms``."""

    kind: MetricKind
    cell: NotRequired[str]
    value: float
    lo: float
    hi: float
    raw_ms: NotRequired[float]
    floor: float


class MachineSummary(TypedDict):
    """The machine while the gate's cells ran (:func:`machine_summary`)."""

    background: dict[str, Any] | None
    contended: str | None
    isolation: dict[str, Any] | None


class Baseline(TypedDict):
    """``reports/baseline.json`` (:func:`write_baseline`)."""

    version: int
    created_at: str
    git_commit: str | None
    cpu: Any
    python: str | None
    cpu_reference_ms: float
    tolerances: dict[str, float]
    cpu_floor_ms: float
    run_dir: str
    machine: MachineSummary
    matrix: str
    metrics: dict[str, Metric]


class GateError(FileNotFoundError):
    """The baseline is missing or unreadable, or a run lacks what the gate measures."""


def reference_cpu_ms(repeats: int = 5) -> float:
    """CPU time (ms, the fastest of ``repeats``) of a fixed pure-Python + stdlib workload: the machine's speed,
    independent of turnbench's own code (a regression in the tokenizer must not hide in the reference)."""
    import hashlib
    import json as stdjson

    blob = {"items": [{"k": i, "v": "x" * (i % 50)} for i in range(2000)]}
    times = []
    for _ in range(repeats):
        t0 = time.thread_time_ns()
        acc = 0
        for i in range(60_000):
            acc = (acc * 31 + i) % 1_000_003
        for _ in range(5):
            hashlib.sha256(stdjson.dumps(blob).encode()).hexdigest()
        times.append((time.thread_time_ns() - t0) / 1e6)
    return min(times)


def gate_groups(
    burn_us: Mapping[str, float] | None = None, variant: str = "default", source: str | None = None
) -> list[Group]:
    """The gate's short run: agent-20's workload at the ``instant`` profile (API overhead only, the part a
    transport or pipeline change moves), concurrency 1, cut to fit a minute on a busy 2-core runner:
    :data:`GATE_STATES`, 12 tool calls per rollout; the cheap connection cells run 6 measured rollouts, the
    full-resend and store cells (whose CPU grows with the history) 3, and only one cell per server warms
    it up. ``source``: the source tree the servers run from (the paired gate's base revision)."""
    settings = {"burn_us": dict(burn_us)} if burn_us else {}
    common = {"tool_calls": 12}

    def group(states: Mapping[str, tuple[State, ...]], rollouts: int, warmup: int) -> Group:
        return Group(
            scenario="agent-20",
            profile="instant",
            concurrency=1,
            states=states,
            variant=variant,
            sizing={"rollouts": rollouts, "rounds": 3, "warmup": warmup, **common},
            server_settings=settings,
            source=source,
        )

    return [
        group({"ws": ("connection",), "grpc": ("connection",), "https": ("store",)}, 6, 1),
        group({"ws": ("store",)}, 6, 0),
        group({"https": ("full",)}, 3, 0),
    ]


def _ok_rows(df: pd.DataFrame, variant: str, keep: Callable[[pd.DataFrame], pd.Series] | None) -> pd.DataFrame:
    df = df[(df["variant"] == variant) & (df["scenario"] != "calibration") & df["success"]]
    return df[keep(df)] if keep is not None else df


def _stage_metrics(t: pd.DataFrame, n_boot: int, seed: int) -> dict[str, Metric]:
    """Per cell and stage: mean thread CPU per turn (ms) with a bootstrap CI over turns."""
    cols = [c for c in (f"stage_{s}_cpu_ms" for s in STAGES) if c in t.columns]
    out: dict[str, Metric] = {}
    for lab, g in t.groupby("label", sort=True):
        for col in cols:
            v, lo, hi = bootstrap_ci(g[col].fillna(0.0), np.mean, n_boot=n_boot, seed=seed)
            out[f"cpu ms/turn {col[6:-7]} {lab}"] = {
                "kind": "stage",
                "cell": str(lab),
                "value": v,
                "lo": lo,
                "hi": hi,
                "floor": CPU_FLOOR_MS,
            }
    return out


OUTSIDE_FLOOR_SHARE = 0.1
"""The smallest rise of a cell's CPU outside the stages that counts, as a share of its stage CPU per turn."""


def _process_metrics(run: RunDir, t: pd.DataFrame, variant: str) -> dict[str, Metric]:
    """Per server-process cell: the server's CPU outside the stages and the load generator's CPU, in ms per
    turn over the cell's measured chunks (point estimates)."""
    cols = [c for c in (f"stage_{s}_cpu_ms" for s in STAGES) if c in t.columns]
    out: dict[str, Metric] = {}
    for c in run.cells:
        if c["variant"] != variant or c.get("server") == "inproc" or c["transport"] == "inproc":
            continue
        chunks = [ch for ch in run.chunks if ch["cell"] == c["cell"] and not ch["warmup"]]
        turns = sum(int(ch["turns"]) for ch in chunks)
        server = [float(v) for ch in chunks if (v := ch.get("server_cpu_s")) is not None]
        if not turns or not server or len(server) < len(chunks):
            continue
        rows = t[t["cell"] == c["cell"]]
        stage_ms = float(rows[cols].fillna(0.0).to_numpy().sum()) / max(1, len(rows))
        lab = f"{c['transport']}/{c['state']}"
        values = {
            "outside-stages": 1000.0 * sum(server) / turns - stage_ms,
            "client": 1000.0 * sum(float(ch["client_cpu_s"]) for ch in chunks) / turns,
        }
        # outside-stages is a difference (process CPU − stage CPU): its noise grows with the stage CPU it
        # subtracts (https/full: ~30 ms of stages per turn, ±1.5 ms outside them from run to run under load)
        floors = {"outside-stages": max(CPU_FLOOR_MS, OUTSIDE_FLOOR_SHARE * stage_ms), "client": CPU_FLOOR_MS}
        for name, v in values.items():
            out[f"cpu ms/turn {name} {lab}"] = {
                "kind": "process",
                "cell": lab,
                "value": v,
                "lo": v,
                "hi": v,
                "floor": floors[name],
            }
    return out


def gate_metrics(
    run: RunDir,
    *,
    cpu_ref_ms: float,
    variant: str = "default",
    keep: Callable[[pd.DataFrame], pd.Series] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, Metric]:
    """The gate's metrics from one run (see the module docstring): ``stage``, ``process``, ``ratio`` and
    ``cpu`` metrics, each with kind, value, lo, hi (95% CI; a point estimate has lo = hi = value), floor (the
    smallest rise that counts, in the metric's unit) and, for the CPU kinds, ``cell``. ``keep`` selects rows
    (e.g. half the rollouts) from both frames; process metrics come from whole chunks, so ``keep`` does not
    narrow them."""
    r, t = _ok_rows(run.rollouts, variant, keep), _ok_rows(run.turns, variant, keep)
    combos = r[["scenario", "profile", "concurrency"]].drop_duplicates()
    if len(combos) > 1:
        raise GateError(f"{run.path}: the gate judges one scenario/profile/concurrency, this run has {len(combos)}")
    out: dict[str, Metric] = {}
    for num, den in RATIOS:
        a, b = r.loc[r["label"] == num, "rollout_ms"], r.loc[r["label"] == den, "rollout_ms"]
        if len(a) and len(b):
            v, lo, hi = ratio_ci(a, b, n_boot=n_boot, seed=seed)
            out[f"ratio rollout {num} ÷ {den}"] = {"kind": "ratio", "value": v, "lo": lo, "hi": hi, "floor": 0.0}
    out.update(_stage_metrics(t, n_boot, seed))
    # Process CPU is per chunk, so its stage share comes from every row of the chunks, not the kept ones.
    out.update(_process_metrics(run, _ok_rows(run.turns, variant, None), variant))
    cols = [c for c in (f"stage_{s}_cpu_ms" for s in STAGES) if c in t.columns]
    scale = NORMAL_REF_MS / cpu_ref_ms
    for lab, g in t.groupby("label", sort=True):
        total = g[cols].fillna(0.0).sum(axis=1)
        v, lo, hi = bootstrap_ci(total * scale, np.mean, n_boot=n_boot, seed=seed)
        out[f"cpu ms/turn total {lab} (reference-scaled)"] = {
            "kind": "cpu",
            "cell": str(lab),
            "value": v,
            "lo": lo,
            "hi": hi,
            "raw_ms": float(total.mean()),
            "floor": CPU_FLOOR_MS * scale,
        }
    return out


def speed_factors(current: Mapping[str, Metric], baseline: Mapping[str, Metric]) -> dict[str, float]:
    """Per cell: the median, over its stage metrics that cost at least :data:`SPEED_MIN_MS` in the baseline,
    of current ÷ baseline CPU; 1.0 for a cell with fewer than three such stages."""
    ratios: dict[str, list[float]] = {}
    for name, base in baseline.items():
        cur = current.get(name)
        if base.get("kind") != "stage" or cur is None or float(base["value"]) < SPEED_MIN_MS:
            continue
        ratios.setdefault(str(base.get("cell")), []).append(float(cur["value"]) / float(base["value"]))
    return {cell: float(np.median(r)) if len(r) >= 3 else 1.0 for cell, r in ratios.items()}


def judge(
    current: Mapping[str, Metric], baseline: Mapping[str, Metric], tolerances: Mapping[str, float] = TOLERANCES
) -> tuple[pd.DataFrame, bool]:
    """One row per metric: baseline, current with CI (stage and process CPU divided by the cell's speed
    factor, :func:`speed_factors`, shown as ``speed``), change %, the limit (the higher of base·(1+tol) and
    base + floor), and a status — ``REGRESSED`` (the CI is above base·(1+tol) and above base + floor),
    ``MISSING`` (measured in the baseline, not now), ``improved`` (the CI is below base/(1+tol) and below
    base − floor), ``new`` or ``ok``.
    Returns: (table, passed)."""
    speeds = speed_factors(current, baseline)
    rows = []
    for name in sorted(set(baseline) | set(current)):
        base, cur = baseline.get(name), current.get(name)
        either = base or cur
        kind = either.get("kind", "ratio") if either else "ratio"
        tol = float(tolerances.get(kind, TOLERANCES.get(kind, 0.25)))
        row: dict[str, Any] = {"metric": name, "kind": kind, "tolerance": tol}
        if base is None or cur is None:
            row.update(status="new" if base is None else "MISSING")
            rows.append(row)
            continue
        speed = speeds.get(str(base.get("cell")), 1.0) if kind in SPEED_KINDS else 1.0
        b, floor = float(base["value"]), float(base.get("floor", 0.0))
        lo, hi, v = float(cur["lo"]) / speed, float(cur["hi"]) / speed, float(cur["value"]) / speed
        status = "ok"
        if lo > b * (1 + tol) and lo - b > floor:
            status = "REGRESSED"
        elif hi < b / (1 + tol) and b - hi > floor:
            status = "improved"
        row.update(
            baseline=b,
            current=v,
            lo=lo,
            hi=hi,
            speed=speed,
            limit=max(b * (1 + tol), b + floor),  # both must be passed to fail
            change_pct=(v / b - 1) * 100 if b else math.nan,
            status=status,
        )
        rows.append(row)
    table = pd.DataFrame(rows)
    passed = not table["status"].isin(["REGRESSED", "MISSING"]).any() if len(table) else False
    return table, bool(passed)


def format_judgement(table: pd.DataFrame, *, show: int = 12) -> str:
    """What moved and by how much: every failure, then the largest other moves (``show`` rows)."""
    if table.empty:
        return "no metrics"
    t = table.copy()
    t["order"] = t["status"].map({"REGRESSED": 0, "MISSING": 1, "improved": 2}).fillna(3)
    t["move"] = t.get("change_pct", pd.Series(np.nan, index=t.index)).abs().fillna(-1)
    t = t.sort_values(["order", "move"], ascending=[True, False])
    bad = t[t["order"] < 2]
    t = pd.concat([bad, t[t["order"] >= 2].head(max(0, show - len(bad)))])
    lines = [f"{'status':<10} {'metric':<52} {'baseline':>9} {'now [95% CI]':>26} {'change':>8} {'limit':>9}"]
    for r in t.itertuples():
        if r.status in ("MISSING", "new"):
            lines.append(f"{r.status:<10} {r.metric:<52}")
            continue
        ci = f"{r.current:.4g} [{r.lo:.4g}, {r.hi:.4g}]"
        lines.append(
            f"{r.status:<10} {r.metric:<52} {r.baseline:>9.4g} {ci:>26} {r.change_pct:>+7.1f}% {r.limit:>9.4g}"
        )
    n_bad = int(table["status"].isin(["REGRESSED", "MISSING"]).sum())
    if "speed" in table.columns:
        cpu = table[table["kind"].isin(SPEED_KINDS) & table["speed"].notna()]
        per_cell = dict(zip(cpu["metric"].str.rsplit(" ", n=1).str[-1], cpu["speed"], strict=True))
        if per_cell:
            lines.append(
                "speed factor per cell (CPU now ÷ baseline, median over the cell's stages; stage and process "
                "CPU above are divided by it): " + ", ".join(f"{c} ×{k:.2f}" for c, k in sorted(per_cell.items()))
            )
    if (table["status"] == "MISSING").any():
        lines.append(
            "MISSING = in the baseline but not measured now: a cell failed, or the gate itself changed "
            "(then refresh it deliberately: make baseline)"
        )
    lines.append(
        f"{len(table)} metrics; {n_bad} failed; tolerances: "
        + ", ".join(f"{k} +{v:.0%}" for k, v in sorted(set(zip(table["kind"], table["tolerance"], strict=True))))
    )
    return "\n".join(lines)


def read_baseline(path: Path) -> Baseline:
    """Load ``baseline.json``. Raises :class:`GateError` with what to do when it is missing or broken."""
    if not path.is_file():
        raise GateError(f"no baseline at {path}: run `make baseline` (turnbench gate --write-baseline) first")
    try:
        data: Baseline = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise GateError(f"baseline {path} is not valid JSON: {exc}") from exc
    if not isinstance(data.get("metrics"), dict) or not data["metrics"]:
        raise GateError(f"baseline {path} has no metrics: rewrite it with `make baseline`")
    if data.get("version") != BASELINE_VERSION:
        raise GateError(
            f"baseline {path} was written by another version of the gate (version {data.get('version')}, this "
            f"gate reads {BASELINE_VERSION}): rewrite it with `make baseline` on a quiet machine"
        )
    return data


def kind_values(items: Sequence[str], defaults: Mapping[str, float], *, flag: str, value: str) -> dict[str, float]:
    """``defaults`` with ``KIND=N`` items (``--tolerance ratio=0.3``) applied; a kind outside them is an error."""
    out = dict(defaults)
    for item in items:
        kind, sep, raw = item.partition("=")
        if not sep or kind not in defaults:
            raise ValueError(f"{flag} {item!r}: expected KIND={value} with KIND one of {', '.join(defaults)}")
        out[kind] = float(raw)
    return out


def baseline_record(
    metrics: Mapping[str, Metric],
    run: RunDir,
    cpu_ref_ms: float,
    *,
    tolerances: Mapping[str, float] = TOLERANCES,
    cpu_floor_ms: float = CPU_FLOOR_MS,
    matrix: str = "loadtests.gate.gate_groups()",
) -> Baseline:
    """A baseline: the metrics, the tolerances in force, and where they came from."""
    return {
        "version": BASELINE_VERSION,
        "created_at": datetime.now(UTC).isoformat(),
        "git_commit": run.meta.get("git_commit"),
        "cpu": run.meta.get("cpu"),
        "python": run.meta.get("python"),
        "cpu_reference_ms": cpu_ref_ms,
        "tolerances": dict(tolerances),
        "cpu_floor_ms": cpu_floor_ms,
        "run_dir": str(run.path),
        "machine": machine_summary(run),
        "matrix": matrix,
        "metrics": dict(sorted(metrics.items())),
    }


def dump_baseline(path: Path, data: Mapping[str, Any]) -> None:
    """Write a baseline file (indent 1, no NaN: a metric that is not a number is a bug, not a value)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, allow_nan=False) + "\n")


def write_baseline(path: Path, metrics: Mapping[str, Metric], run: RunDir, cpu_ref_ms: float) -> None:
    """Write the baseline: the metrics, the tolerances in force, and where they came from."""
    dump_baseline(path, baseline_record(metrics, run, cpu_ref_ms))


def run_gate(
    out: Path,
    *,
    burn_us: Mapping[str, float] | None = None,
    extra_groups: Sequence[Group] = (),
    argv: Sequence[str] = (),
    quiet: bool = True,
) -> tuple[RunDir, float]:
    """Run the gate matrix (plus ``extra_groups``) into ``out``, the reference workload timed just before
    it, before every chunk and just after it (all recorded in run.json ``gate.cpu_reference_ms``).

    Returns: (the run, reference CPU in ms: the fastest of those measurements).
    """
    groups = [*gate_groups(burn_us), *extra_groups]
    config = matrix_config(out, argv=argv, quiet=quiet)
    config.reference_cpu = lambda: reference_cpu_ms(repeats=3)
    cells = matrix_cells(groups, config)
    t0 = time.perf_counter()
    ref = [reference_cpu_ms()]
    collected = runner.measure(config, cells)
    ref += [ch.reference_cpu_ms for ch in collected.chunks if ch.reference_cpu_ms is not None]
    ref.append(reference_cpu_ms())
    run = RunDir.write(
        out,
        config,
        cells,
        collected,
        {"bench": matrix_record(groups, time.perf_counter() - t0), "gate": {"cpu_reference_ms": ref}},
    )
    return run, min(ref)


def machine_summary(run: RunDir) -> MachineSummary:
    """The machine while the gate's cells ran: their background load combined, and why it was contended
    (None: it was not)."""
    mon = run.meta.get("monitor") or {}
    cells = mon.get("cells") if isinstance(mon.get("cells"), Mapping) else {}
    window = combine((m or {}).get("background") for m in (cells or {}).values())
    return {"background": window, "contended": contention(window), "isolation": run.meta.get("isolation")}


def machine_text(summary: MachineSummary, *, paired: bool = False, consequence: str | None = None) -> str:
    """One line on the machine: other processes' CPU, idle cores, CPU pressure, and what that means here
    (``consequence``: in the caller's words, else the stored or the paired gate's)."""
    bg = summary.get("background")
    if not bg:
        return "machine: background load not recorded"
    text = (
        f"machine: other processes used {bg['other_cores']:.2f} of {bg['cores']} cores, "
        f"{bg['idle_cores']:.2f} stayed idle"
    )
    if bg.get("pressure") is not None:
        text += f", some task waited for a CPU {bg['pressure']:.0%} of the time"
    if summary.get("contended"):
        text += f" → CONTENDED ({summary['contended']}): rollout times include waiting for a CPU; " + (
            consequence
            or (
                "both arms ran in the same rounds, so it weighed on each alike"
                if paired
                else "CPU figures are judged after each cell's speed factor, as usual"
            )
        )
    return text


def run_reference_ms(run: RunDir) -> float:
    """The reference CPU recorded with a gate run (``run.json`` gate.cpu_reference_ms)."""
    ref = (run.meta.get("gate") or {}).get("cpu_reference_ms")
    if not ref:
        raise GateError(f"{run.path} was not made by `turnbench gate` (no cpu_reference_ms in run.json)")
    return float(min(ref))


# ------------------------------------------------------------------------------------------------ compare


def compare_runs(a: RunDir, b: RunDir, *, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Cells present in both runs (same cell id): median rollout_ms and TTFT in A and B and the change B vs
    A in %, with the bootstrap 95% CI of the ratio of medians (B ÷ A − 1). Warm-up and failed rows excluded."""

    def ok(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
        return dict(list(df[df["success"]].groupby("cell", sort=True)))

    ra, rb, ta, tb = ok(a.rollouts), ok(b.rollouts), ok(a.turns), ok(b.turns)
    none = pd.DataFrame({"ttft_ms": []})
    rows = []
    for cell in sorted(set(ra) & set(rb)):
        first = ra[cell].iloc[0]
        row: dict[str, Any] = {"cell": cell, **{k: first[k] for k in COMPARE_KEYS}}
        for metric, xa, xb in (
            ("rollout_ms", ra[cell]["rollout_ms"], rb[cell]["rollout_ms"]),
            ("ttft_ms", ta.get(cell, none)["ttft_ms"], tb.get(cell, none)["ttft_ms"]),
        ):
            ratio, lo, hi = ratio_ci(xb, xa, n_boot=n_boot, seed=seed)
            row.update(
                {
                    f"{metric} A": float(xa.median()),
                    f"{metric} B": float(xb.median()),
                    f"{metric} change %": (ratio - 1) * 100,
                    f"{metric} CI": ((lo - 1) * 100, (hi - 1) * 100),
                }
            )
        rows.append(row)
    return pd.DataFrame(rows)


def format_compare(df: pd.DataFrame, *, markdown: bool = False) -> str:
    """The comparison as aligned text (or a Markdown table): one row per cell present in both runs."""
    if df.empty:
        return "no cell is present in both runs"
    load = [
        f"r{r:g}" if m == "open" else f"c{c}"
        for m, c, r in zip(df["mode"], df["concurrency"], df["arrival_rate_rps"], strict=True)
    ]
    view = pd.DataFrame(
        {
            "cell": [
                f"{r.scenario} {r.profile} {ld} {r.transport}/{r.state}"
                + ("" if r.variant == "default" else f" [{r.variant}]")
                for r, ld in zip(df.itertuples(), load, strict=True)
            ]
        }
    )
    for m in ("rollout_ms", "ttft_ms"):
        view[f"{m} A"] = df[f"{m} A"].map("{:,.1f}".format)
        view[f"{m} B"] = df[f"{m} B"].map("{:,.1f}".format)
        view[f"{m} B vs A [95% CI]"] = [
            f"{c:+.1f}% [{lo:+.1f}, {hi:+.1f}]" if math.isfinite(c) else "n/a"
            for c, (lo, hi) in zip(df[f"{m} change %"], df[f"{m} CI"], strict=True)
        ]
    if markdown:
        head = "| " + " | ".join(view.columns) + " |\n|" + "---|" * len(view.columns) + "\n"
        return head + "\n".join("| " + " | ".join(map(str, r)) + " |" for r in view.itertuples(index=False))
    return str(view.to_string(index=False))


def cmd_compare(args: Any) -> int:
    """``turnbench compare A B [--md OUT]``."""
    df = compare_runs(RunDir(args.a), RunDir(args.b))
    print(f"A = {args.a}\nB = {args.b}\n" + format_compare(df))
    if args.md is not None:
        args.md.write_text(f"A = `{args.a}`, B = `{args.b}`\n\n" + format_compare(df, markdown=True) + "\n")
    return 0


def cmd_gate(args: Any) -> int:
    """``turnbench gate --stored`` (and ``--run``, ``--write-baseline``): a run judged against the stored
    baseline. 0 pass, 1 regression, 2 (raised as GateError/OSError) no baseline or bad run."""
    burn: dict[str, float] = {}
    for part in args.burn:
        burn.update(part)
    defaults = {**TOLERANCES, "ratio": args.ratio_tolerance, "cpu": args.cpu_tolerance}
    tolerances = kind_values(getattr(args, "tolerance", None) or [], defaults, flag="--tolerance", value="F")
    if not args.write_baseline:
        baseline = read_baseline(args.baseline)  # fail before a minute of running
    if args.run is not None:
        run = RunDir(args.run)
        ref = run_reference_ms(run)
    else:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        out = args.out or Path("reports") / "runs" / f"{stamp}-gate"
        print(
            f"gate: running agent-20 at the instant profile → {out}" + (f" (burn_us {burn})" if burn else ""),
            file=sys.stderr,
        )
        run, ref = run_gate(out, burn_us=burn, argv=sys.argv)
    metrics = gate_metrics(run, cpu_ref_ms=ref)
    if not metrics:
        raise GateError(f"{run.path}: none of the gate's cells succeeded")
    machine = machine_summary(run)
    if args.write_baseline:
        if machine.get("contended"):
            print(f"WARNING: writing a baseline on a contended machine — {machine_text(machine)}", file=sys.stderr)
        write_baseline(args.baseline, metrics, run, ref)
        print(f"baseline written: {args.baseline} ({len(metrics)} metrics, reference CPU {ref:.1f} ms)")
        return 0
    table, passed = judge(metrics, baseline["metrics"], tolerances)
    print(format_judgement(table))
    print(machine_text(machine))
    refs = [float(v) for v in (run.meta.get("gate") or {}).get("cpu_reference_ms") or []]
    print(
        f"reference workload: {ref:.1f} ms (fastest of {len(refs)} timings; slowest {max(refs):.1f}); "
        f"baseline {float(baseline.get('cpu_reference_ms', math.nan)):.1f} ms"
    )
    print(f"gate: {'PASS' if passed else 'FAIL'} (run {run.path}, baseline {args.baseline})")
    return 0 if passed else 1
