"""``turnbench gate``: a short run judged against ``reports/baseline.json``, noise-aware; and
``turnbench compare``: two run directories side by side.

The gate never compares absolute wall times between runs (a shared CI machine moves them by ±30%). It
compares quantities that are steady *inside* one run:

- **ratios** of median rollout time between cells of the same run (``ws/connection ÷ https/full`` …),
  with bootstrap 95% CIs (:func:`loadtests.stats.ratio_ci`); a regression raises a ratio;
- **server CPU per turn** in each pipeline stage (``thread_time``, steadier than wall time), per cell,
  scaled by a fixed pure-Python reference workload timed in the gate process (:func:`reference_cpu_ms`),
  so a slower machine does not look like slower code; bootstrap CI of the mean over turns.

A metric fails only when its whole CI lies above the baseline moved by the tolerance (``lo > base·(1+tol)``)
and, for CPU, by more than :data:`CPU_FLOOR_MS` per turn in absolute terms (tiny stages are noise).
Tolerances (:data:`TOLERANCES`): 25% for ratios (DESIGN §9 measured ±10% run-to-run noise on medians; a
ratio of two such medians carries both), 50% for CPU (per-stage CPU of a few hundred µs moves with caches
and frequency on a shared 2-core machine). The committed baseline changes only by ``make baseline``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from loadtests import runner
from loadtests.bench import Group, matrix_cells, matrix_config, matrix_record
from loadtests.rundir import RunDir
from loadtests.stats import bootstrap_ci, ratio_ci
from turnbench.settings import STAGES

__all__ = [
    "TOLERANCES",
    "GateError",
    "compare_runs",
    "gate_groups",
    "gate_metrics",
    "judge",
    "read_baseline",
    "reference_cpu_ms",
    "run_gate",
    "write_baseline",
]

TOLERANCES: dict[str, float] = {"ratio": 0.25, "cpu": 0.50}
CPU_FLOOR_MS = 0.05
NORMAL_REF_MS = 10.0
"""CPU metrics are in ms per turn *on a machine where the reference workload takes this long*."""
GATE_STATES: dict[str, tuple[str, ...]] = {
    "inproc": ("full",),
    "https": ("full", "store"),
    "ws": ("connection", "store"),
    "grpc": ("connection",),
}
RATIOS: tuple[tuple[str, str], ...] = (
    ("ws/connection", "https/full"),
    ("ws/store", "https/store"),
    ("grpc/connection", "ws/connection"),
    ("https/store", "https/full"),
    ("https/full", "inproc/full"),
)
"""(numerator, denominator) cells; each ratio rises when the numerator's path regresses."""
Metric = dict[str, Any]
COMPARE_KEYS = ("scenario", "profile", "mode", "concurrency", "arrival_rate_rps", "variant", "transport", "state")


class GateError(FileNotFoundError):
    """The baseline is missing or unreadable, or a run lacks what the gate measures."""


def reference_cpu_ms(repeats: int = 5) -> float:
    """CPU time (ms, median of ``repeats``) of a fixed pure-Python + stdlib workload: the machine's speed,
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
    return float(np.median(times))


def gate_groups(burn_us: Mapping[str, float] | None = None, variant: str = "default") -> list[Group]:
    """The gate's short run: agent-20 (20 tool calls) at the ``instant`` profile (API overhead only, the
    part a transport or pipeline change moves), concurrency 1, 6 measured rollouts per cell in 3 rounds."""
    return [
        Group(
            scenario="agent-20",
            profile="instant",
            concurrency=1,
            states=GATE_STATES,
            variant=variant,
            sizing={"rollouts": 6, "rounds": 3, "warmup": 1},
            server_settings={"burn_us": dict(burn_us)} if burn_us else {},
        )
    ]


def gate_metrics(
    run: RunDir,
    *,
    cpu_ref_ms: float,
    variant: str = "default",
    keep: Callable[[pd.DataFrame], pd.Series] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, Metric]:
    """The gate's metrics from one run: ratios of median rollout_ms (dimensionless) and mean server CPU per
    turn per stage and in total, in normalized ms (× :data:`NORMAL_REF_MS` / ``cpu_ref_ms``; ``raw_ms``: as
    measured). ``keep`` selects rows (e.g. half the rollouts) from both frames. Each metric: kind, value, lo,
    hi (bootstrap 95% CI), floor (the smallest move that counts, in the metric's unit)."""

    def pick(df: pd.DataFrame) -> pd.DataFrame:
        df = df[(df["variant"] == variant) & (df["scenario"] != "calibration") & df["success"]]
        return df[keep(df)] if keep is not None else df

    r, t = pick(run.rollouts), pick(run.turns)
    combos = r[["scenario", "profile", "concurrency"]].drop_duplicates()
    if len(combos) > 1:
        raise GateError(f"{run.path}: the gate judges one scenario/profile/concurrency, this run has {len(combos)}")
    out: dict[str, Metric] = {}
    for num, den in RATIOS:
        a, b = r.loc[r["label"] == num, "rollout_ms"], r.loc[r["label"] == den, "rollout_ms"]
        if len(a) and len(b):
            v, lo, hi = ratio_ci(a, b, n_boot=n_boot, seed=seed)
            out[f"ratio rollout {num} ÷ {den}"] = {"kind": "ratio", "value": v, "lo": lo, "hi": hi, "floor": 0.0}
    cols = [c for c in (f"stage_{s}_cpu_ms" for s in STAGES) if c in t.columns]
    scale = NORMAL_REF_MS / cpu_ref_ms
    for lab, g in t.groupby("label", sort=True):
        per_turn = g[cols].fillna(0.0)
        for name, values in [*((c[6:-7], per_turn[c]) for c in cols), ("total", per_turn.sum(axis=1))]:
            v, lo, hi = bootstrap_ci(values * scale, np.mean, n_boot=n_boot, seed=seed)
            out[f"cpu ms/turn {name} {lab}"] = {
                "kind": "cpu",
                "value": v,
                "lo": lo,
                "hi": hi,
                "raw_ms": float(values.mean()),
                "floor": CPU_FLOOR_MS * scale,
            }
    return out


def judge(
    current: Mapping[str, Metric], baseline: Mapping[str, Metric], tolerances: Mapping[str, float] = TOLERANCES
) -> tuple[pd.DataFrame, bool]:
    """One row per metric: baseline, current with CI, change %, the limit, and a status — ``REGRESSED``
    (the CI is above base·(1+tol) and above base + floor), ``MISSING`` (measured in the baseline, not now),
    ``improved`` (the CI is below base/(1+tol)), ``new`` or ``ok``. Returns: (table, passed)."""
    rows = []
    for name in sorted(set(baseline) | set(current)):
        base, cur = baseline.get(name), current.get(name)
        kind = (base or cur or {}).get("kind", "ratio")
        tol = float(tolerances.get(kind, TOLERANCES.get(kind, 0.25)))
        row: dict[str, Any] = {"metric": name, "kind": kind, "tolerance": tol}
        if base is None or cur is None:
            row.update(status="new" if base is None else "MISSING")
            rows.append(row)
            continue
        b, floor = float(base["value"]), float(base.get("floor", 0.0))
        lo, hi, v = float(cur["lo"]), float(cur["hi"]), float(cur["value"])
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
            limit=b * (1 + tol),
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


def read_baseline(path: Path) -> dict[str, Any]:
    """Load ``baseline.json``. Raises :class:`GateError` with what to do when it is missing or broken."""
    if not path.is_file():
        raise GateError(f"no baseline at {path}: run `make baseline` (turnbench gate --write-baseline) first")
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise GateError(f"baseline {path} is not valid JSON: {exc}") from exc
    if not isinstance(data.get("metrics"), dict) or not data["metrics"]:
        raise GateError(f"baseline {path} has no metrics: rewrite it with `make baseline`")
    return data


def write_baseline(path: Path, metrics: Mapping[str, Metric], run: RunDir, cpu_ref_ms: float) -> None:
    """Write the baseline: the metrics, the tolerances in force, and where they came from."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "version": 1,
        "created_at": datetime.now(UTC).isoformat(),
        "git_commit": run.meta.get("git_commit"),
        "cpu": run.meta.get("cpu"),
        "python": run.meta.get("python"),
        "cpu_reference_ms": cpu_ref_ms,
        "tolerances": TOLERANCES,
        "cpu_floor_ms": CPU_FLOOR_MS,
        "run_dir": str(run.path),
        "matrix": "loadtests.gate.gate_groups()",
        "metrics": dict(sorted(metrics.items())),
    }
    path.write_text(json.dumps(data, indent=1, allow_nan=False) + "\n")


def run_gate(
    out: Path,
    *,
    burn_us: Mapping[str, float] | None = None,
    extra_groups: Sequence[Group] = (),
    argv: Sequence[str] = (),
    quiet: bool = True,
) -> tuple[RunDir, float]:
    """Run the gate matrix (plus ``extra_groups``) into ``out``, the reference workload timed just before
    and just after it (both recorded in run.json ``gate.cpu_reference_ms``).

    Returns: (the run, reference CPU in ms: the median of those measurements).
    """
    groups = [*gate_groups(burn_us), *extra_groups]
    config = matrix_config(out, argv=argv, quiet=quiet)
    cells = matrix_cells(groups, config)
    t0 = time.perf_counter()
    ref = [reference_cpu_ms()]
    collected = runner.measure(config, cells)
    ref.append(reference_cpu_ms())
    run = RunDir.write(
        out,
        config,
        cells,
        collected,
        {"bench": matrix_record(groups, time.perf_counter() - t0), "gate": {"cpu_reference_ms": ref}},
    )
    return run, float(np.median(ref))


def run_reference_ms(run: RunDir) -> float:
    """The reference CPU recorded with a gate run (``run.json`` gate.cpu_reference_ms)."""
    ref = (run.meta.get("gate") or {}).get("cpu_reference_ms")
    if not ref:
        raise GateError(f"{run.path} was not made by `turnbench gate` (no cpu_reference_ms in run.json)")
    return float(np.median(ref))


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
    """``turnbench gate``: 0 pass, 1 regression, 2 (raised as GateError/OSError) no baseline or bad run."""
    import sys

    burn: dict[str, float] = {}
    for part in args.burn:
        burn.update(part)
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
    if args.write_baseline:
        write_baseline(args.baseline, metrics, run, ref)
        print(f"baseline written: {args.baseline} ({len(metrics)} metrics, reference CPU {ref:.1f} ms)")
        return 0
    table, passed = judge(metrics, baseline["metrics"], {"ratio": args.ratio_tolerance, "cpu": args.cpu_tolerance})
    print(format_judgement(table))
    print(f"gate: {'PASS' if passed else 'FAIL'} (run {run.path}, baseline {args.baseline})")
    return 0 if passed else 1
