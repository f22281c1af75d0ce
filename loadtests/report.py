"""Reports from a run directory (DESIGN §8): the headline table, ablations, per-cell figures, ``summary.json``
and the ``report.md`` / self-contained ``report.html`` pair, recomputed from the raw samples the runner saved
(so ``turnbench report DIR`` reruns nothing). Ratios are taken between cells of one run (``ratio_ci``), which
cancels most machine drift; warm-up rows are dropped, failed rollouts counted but not timed. A *cell* is one
(scenario, profile, concurrency, variant, transport, state); its label is ``transport/state``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from loadtests import plots
from loadtests.metrics import bootstrap_ci, ratio_ci, read_samples

__all__ = ["BASELINES", "CELL_KEYS", "RunData", "RunDirError", "ablations", "cell_table", "headline",
           "headline_sentences", "label", "load_run", "write_report"]

CELL_KEYS = ("scenario", "profile", "concurrency", "variant", "transport", "state")
BASELINES: tuple[tuple[str, str], ...] = (("https", "full"), ("https", "store"))
_DEFAULTS: dict[str, Any] = {"scenario": "?", "profile": "?", "concurrency": 1, "variant": "default",
                             "warmup": False, "success": True}


class RunDirError(FileNotFoundError):
    """A run directory is missing or lacks the samples the runner writes."""


@dataclass(frozen=True)
class RunData:
    """One run directory, warm-up rows dropped. ``meta`` is ``run.json`` (``{}`` if absent)."""

    path: Path
    turns: pd.DataFrame
    rollouts: pd.DataFrame
    meta: dict[str, Any]


def _prepare(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    for col, default in _DEFAULTS.items():
        if col not in df.columns:
            df[col] = default
        df[col] = df[col].fillna(default)
    df["warmup"] = df["warmup"].astype(bool)
    df["success"] = df["success"].astype(bool)
    df["concurrency"] = df["concurrency"].astype(int)
    df = df[~df["warmup"]].reset_index(drop=True)
    df["label"] = label(df)
    return df


def label(df: pd.DataFrame) -> pd.Series:
    """``transport/state`` per row, the name a cell goes by in tables and legends."""
    return df["transport"].astype(str) + "/" + df["state"].astype(str)


def _read(path: Path, stem: str) -> pd.DataFrame:
    if not (path / f"{stem}.parquet").exists() and not (path / f"{stem}.jsonl").exists():
        raise RunDirError(f"{path}: no {stem}.parquet or {stem}.jsonl (is this a run directory?)")
    return read_samples(path / stem)


def load_run(path: str | Path) -> RunData:
    """Read a run directory written by the runner. Raises :class:`RunDirError` when it is not one."""
    p = Path(path)
    if not p.is_dir():
        raise RunDirError(f"run directory {p} does not exist")
    meta_path = p / "run.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    return RunData(p, _prepare(_read(p, "turns")), _prepare(_read(p, "rollouts")), meta)


def _ok(values: pd.DataFrame, col: str) -> pd.Series:
    return values.loc[values["success"], col]


def _tool_calls(rollouts: pd.DataFrame) -> int:
    if "n_tool_calls" in rollouts.columns and rollouts["n_tool_calls"].notna().any():
        return int(rollouts["n_tool_calls"].median())
    return max(0, int(rollouts["n_turns"].median()) - 1) if "n_turns" in rollouts.columns else 0


def _ratio_row(num: pd.Series, den: pd.Series, n_boot: int, seed: int) -> dict[str, float]:
    ratio, lo, hi = ratio_ci(num, den, n_boot=n_boot, seed=seed)
    return {"ratio": ratio, "lo": lo, "hi": hi, "change_pct": (ratio - 1) * 100,
            "change_lo": (lo - 1) * 100, "change_hi": (hi - 1) * 100}


def headline(run: RunData, *, concurrency: int | None = None, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """End-to-end rollout time of every non-HTTPS cell against HTTPS ``full`` and HTTPS ``store``.

    Per scenario and profile, at ``concurrency`` (default: the lowest measured), default variant only; the
    calibration scenario and the in-process reference are left out.
    Returns one row per (cell, baseline): ``ratio`` = median rollout_ms of the cell ÷ that of the baseline,
    its bootstrap 95% CI (``lo``, ``hi``), ``reduction_pct`` = (1 − ratio)·100 with ``reduction_lo/hi``,
    the medians in ms, sample counts and failed rollouts.
    """
    r = run.rollouts
    r = r[(r["variant"] == "default") & (r["scenario"] != "calibration") & (r["transport"] != "inproc")]
    if r.empty:
        return pd.DataFrame()
    conc = concurrency if concurrency is not None else int(r["concurrency"].min())
    r = r[r["concurrency"] == conc]
    rows: list[dict[str, Any]] = []
    for (scenario, profile), grp in r.groupby(["scenario", "profile"], sort=True):
        tools = _tool_calls(grp)
        for base_t, base_s in BASELINES:
            base = grp[(grp["transport"] == base_t) & (grp["state"] == base_s)]
            if base.empty:
                continue
            for lab, cell in grp.groupby("label", sort=True):
                t, s = lab.split("/", 1)
                if t == "https" and (s == base_s or base_s == "store"):
                    continue
                row: dict[str, Any] = {"scenario": scenario, "profile": profile, "concurrency": conc,
                                       "tool_calls": tools, "cell": lab, "vs": f"{base_t}/{base_s}"}
                rr = _ratio_row(_ok(cell, "rollout_ms"), _ok(base, "rollout_ms"), n_boot, seed)
                row.update(ratio=rr["ratio"], lo=rr["lo"], hi=rr["hi"], reduction_pct=-rr["change_pct"],
                           reduction_lo=-rr["change_hi"], reduction_hi=-rr["change_lo"],
                           p50_ms=float(_ok(cell, "rollout_ms").median()),
                           base_p50_ms=float(_ok(base, "rollout_ms").median()),
                           n=int(cell["success"].sum()), n_base=int(base["success"].sum()),
                           failed=int((~cell["success"]).sum() + (~base["success"]).sum()))
                rows.append(row)
    return pd.DataFrame(rows)


def _profile_text(profile: str) -> str:
    from turnbench.engine.sim import PROFILES

    p = PROFILES.get(profile)
    if p is None:
        return f"`{profile}`"
    rate = "no model time" if not math.isfinite(p.tok_s) else f"~{p.tok_s:,.0f} tok/s"
    return f"`{profile}` ({rate})"


SENTENCE_CELLS = ("ws/connection", "grpc/connection")


def headline_sentences(h: pd.DataFrame, cells: tuple[str, ...] = SENTENCE_CELLS) -> list[str]:
    """The headline in words for ``cells`` (WebSocket and gRPC with connection state): one sentence per
    scenario, profile and cell, against both HTTPS baselines; what was measured, not what was hoped."""
    out: list[str] = []
    if h.empty:
        return out
    for (scen, prof, cell), g in h[h["cell"].isin(cells)].groupby(["scenario", "profile", "cell"], sort=True):
        parts = []
        for row in g.sort_values("vs").itertuples(index=False):
            if math.isfinite(row.ratio):
                verb = "less" if row.reduction_pct >= 0 else "more"
                parts.append(f"{row.ratio:.2f}× the time of `{row.vs}` ({abs(row.reduction_pct):.1f}% {verb}; "
                             f"95% CI of the reduction {row.reduction_lo:.1f}% to {row.reduction_hi:.1f}%)")
        first = g.iloc[0]
        if parts:
            out.append(f"On `{scen}` ({first['tool_calls']} tool calls) at {_profile_text(str(prof))}, concurrency "
                       f"{first['concurrency']}, `{cell}` rollouts ({first['p50_ms']:,.0f} ms median) took "
                       + " and ".join(parts) + ".")
    return out


def _claim_text(h: pd.DataFrame) -> str:
    """The seed's claim next to what this run measured for ``ws/connection`` against ``https/full``."""
    claim = ("OpenAI's claim under test: WebSocket mode gives *up to ~40% lower end-to-end latency* for rollouts "
             "of 20+ tool calls.")
    sel = h[(h["cell"] == "ws/connection") & (h["vs"] == "https/full")] if not h.empty else h
    if sel.empty:
        return claim + " This run has no `ws/connection` and `https/full` pair to test it."
    got = "; ".join(f"{r.reduction_pct:.0f}% at `{r.profile}` on `{r.scenario}`" for r in sel.itertuples())
    return f"{claim} Measured here (`ws/connection` vs `https/full`): {got}."


def _variant_setting(variant: str) -> str:
    """``no-token_cache`` → ``token_cache off``; ``tokens_per_chunk-8`` → ``tokens_per_chunk = 8``."""
    if variant.startswith("no-"):
        return f"{variant[3:]} off"
    name, _, value = variant.rpartition("-")
    return f"{name} = {value}" if name else variant


def ablations(run: RunData, *, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Each ablation variant against the default of the same cell (same scenario, profile, concurrency,
    transport, state): ``change_pct`` = (median rollout_ms off ÷ on − 1)·100 with its 95% CI, and
    ``share_pct``: that slowdown as a share of the cell's gap to HTTPS ``full`` in the same run (how much
    of the transport's advantage the mechanism explains; shares need not add up to 100%)."""
    r = run.rollouts
    rows: list[dict[str, Any]] = []
    keys = ["scenario", "profile", "concurrency", "transport", "state"]
    for key, grp in r[r["variant"] != "default"].groupby([*keys, "variant"], sort=True):
        *cell_key, variant = key
        mask = np.logical_and.reduce([r[k] == v for k, v in zip(keys, cell_key, strict=True)])
        same = r[mask]
        on = same[same["variant"] == "default"]
        if on.empty:
            continue
        scen, prof, conc = cell_key[:3]
        https = r[(r["scenario"] == scen) & (r["profile"] == prof) & (r["concurrency"] == conc)
                  & (r["transport"] == "https") & (r["state"] == "full") & (r["variant"] == "default")]
        row: dict[str, Any] = dict(zip(keys, cell_key, strict=True))
        row.update(variant=variant, setting=_variant_setting(str(variant)), cell=f"{cell_key[3]}/{cell_key[4]}")
        row.update(_ratio_row(_ok(grp, "rollout_ms"), _ok(on, "rollout_ms"), n_boot, seed))
        on_ms, off_ms = float(_ok(on, "rollout_ms").median()), float(_ok(grp, "rollout_ms").median())
        gap = float(_ok(https, "rollout_ms").median()) - on_ms if not https.empty else math.nan
        row.update(on_p50_ms=on_ms, off_p50_ms=off_ms,
                   share_pct=(off_ms - on_ms) / gap * 100 if gap and math.isfinite(gap) and gap > 0 else math.nan)
        rows.append(row)
    return pd.DataFrame(rows)


def cell_table(run: RunData, *, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per cell: rollouts (ok/failed), median rollout_ms with CI, p90, median TTFT and turn_ms, mean bytes
    up/down per turn, recoveries, and closed-loop throughput (concurrency ÷ mean rollout time, rollouts/s)."""
    rows: list[dict[str, Any]] = []
    tgroups = dict(list(run.turns[run.turns["success"]].groupby(list(CELL_KEYS), sort=True)))
    for key, grp in run.rollouts.groupby(list(CELL_KEYS), sort=True):
        t = tgroups.get(key, pd.DataFrame(columns=run.turns.columns))
        ms = _ok(grp, "rollout_ms")
        row = dict(zip(CELL_KEYS, key, strict=True))
        p50, lo, hi = bootstrap_ci(ms, n_boot=n_boot, seed=seed)
        row.update(rollouts=int(grp["success"].sum()), failed=int((~grp["success"]).sum()), rollout_p50_ms=p50,
                   rollout_lo_ms=lo, rollout_hi_ms=hi, rollout_p90_ms=float(ms.quantile(0.9)),
                   **{f"{c}_p50_ms": float(t[f"{c}_ms"].median()) for c in ("ttft", "turn")},
                   **{c: float(t[c].mean()) for c in ("bytes_up", "bytes_down")},
                   recoveries=int(grp["recoveries"].sum()) if "recoveries" in grp else 0,
                   rollouts_per_s=float(row["concurrency"]) * 1000.0 / float(ms.mean()) if len(ms) else math.nan)
        rows.append(row)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------ output


def _fmt_ci(v: float, lo: float, hi: float, fmt: str = "{:.3f}") -> str:
    return f"{fmt.format(v)} [{fmt.format(lo)}, {fmt.format(hi)}]" if math.isfinite(v) else "n/a"


def _headline_view(h: pd.DataFrame) -> pd.DataFrame:
    """One row per scenario, profile and cell; a column per HTTPS baseline: ratio [CI] (reduction %)."""
    if h.empty:
        return h
    rows: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in h.itertuples(index=False):
        row = rows.setdefault((r.scenario, r.profile, r.cell), {
            "scenario": r.scenario, "profile": r.profile, "tool calls": r.tool_calls, "cell": r.cell,
            "median ms": f"{r.p50_ms:,.0f}", "n": str(r.n)})
        row[f"vs {r.vs}: ratio [95% CI]"] = (f"{_fmt_ci(r.ratio, r.lo, r.hi)} ({-r.reduction_pct:+.1f}%)"
                                              if math.isfinite(r.ratio) else "n/a")
        row[f"{r.vs} ms"] = f"{r.base_p50_ms:,.0f}"
    cols = ["scenario", "profile", "tool calls", "cell", "median ms", "n"]
    for base_t, base_s in BASELINES:
        cols += [f"{base_t}/{base_s} ms", f"vs {base_t}/{base_s}: ratio [95% CI]"]
    return pd.DataFrame(list(rows.values())).reindex(columns=cols).fillna("—")


def _ablation_view(a: pd.DataFrame) -> pd.DataFrame:
    if a.empty:
        return a
    return pd.DataFrame({
        "cell": a["cell"], "profile": a["profile"], "switched off / changed": a["setting"],
        "median ms on → off": [f"{x:,.0f} → {y:,.0f}" for x, y in zip(a["on_p50_ms"], a["off_p50_ms"], strict=True)],
        "change % [95% CI]": [_fmt_ci(*v, fmt="{:+.1f}") for v in
                              zip(a["change_pct"], a["change_lo"], a["change_hi"], strict=True)],
        "share of gap to https/full": a["share_pct"].map(lambda v: f"{v:.0f}%" if math.isfinite(v) else "n/a")})


def _injected_text(meta: Mapping[str, Any]) -> str:
    inj = meta.get("injected") or {}
    if not inj:
        return "Injected latency: **none** (every `inject_ms` and `burn_us` is zero)."
    return "Injected latency (explicit knobs, DESIGN §2): **" + json.dumps(inj, sort_keys=True) + "**."


def _saturation_text(meta: Mapping[str, Any]) -> str:
    mon = meta.get("monitor")
    if not isinstance(mon, Mapping) or "saturated" not in mon:
        return "Load generator: not monitored in this run."
    state = f"**SATURATED** ({mon.get('reason')})" if mon["saturated"] else "not saturated"
    cells: Mapping[str, Any] = mon["cells"] if isinstance(mon.get("cells"), Mapping) else {}
    hot = sum(bool(isinstance(m, Mapping) and m.get("saturated")) for m in cells.values())
    return (f"Load generator: {state} over the run (CPU {float(mon.get('cpu_util', math.nan)):.0%} of a core, "
            f"event-loop lag p99 {float(mon.get('loop_lag_p99_ms', math.nan)):.1f} ms)"
            + (f"; {hot} of {len(cells)} cells saturated it at times (`run.json` monitor.cells)." if cells else "."))


def _calibration_section(d: plots.Doc, calibration: Any) -> None:
    d.h2("Calibration: the harness measuring itself")
    d.p("The `calibration` profile has known model timings (prefill 20 ms flat, 5 ms per token); measured "
        "minus known (the residual) is what the transport and the harness add, per transport.")
    by = calibration.get("by_transport") if isinstance(calibration, Mapping) else None
    if isinstance(by, Mapping) and by:
        known = {k: v for k, v in calibration.items() if not isinstance(v, Mapping | list)}
        d.p("Known: " + ", ".join(f"`{k}` = {v}" for k, v in known.items()) + ".")
        table = pd.DataFrame([{"transport": k, **v} for k, v in by.items()])
        for col in [c for c in table.columns if c.endswith("_ci")]:
            table[col] = table[col].map(lambda v: f"[{v[0]:.2f}, {v[1]:.2f}]" if isinstance(v, list) and
                                        len(v) == 2 and None not in v else "n/a")
        d.table(plots.round_frame(table))
    elif calibration:
        d.pre(json.dumps(calibration, indent=2, default=str))
    else:
        d.p("*No calibration was recorded in this run (the `calibration` scenario was not in it).*")


def _environment_section(d: plots.Doc, meta: Mapping[str, Any]) -> None:
    d.h2("Environment: enough to rerun it")
    env = {k: meta.get(k) for k in ("created_at", "git_commit", "git_dirty", "python", "platform", "cpu", "loop")}
    d.table(pd.DataFrame({"": list(env), "value": [str(v) for v in env.values()]}))
    if meta.get("argv"):
        d.p("Command line:")
        d.pre(" ".join(map(str, meta["argv"])))
    if meta.get("versions"):
        d.p("Versions:")
        d.pre(json.dumps(meta["versions"], indent=1, sort_keys=True))
    settings: list[Mapping[str, Any]] = [c["server_settings"] for c in meta.get("cells", [])
                                         if isinstance(c, Mapping) and isinstance(c.get("server_settings"), Mapping)]
    if settings:
        common = {k: v for k, v in settings[0].items() if all(s.get(k) == v for s in settings)}
        d.p("Server settings shared by every cell, beyond the defaults (each cell's are in `run.json` cells):")
        d.pre(json.dumps(common, indent=1, sort_keys=True, default=str))
    servers = meta.get("servers")
    if isinstance(servers, Mapping) and servers:
        d.p("Server processes (how each was started, its CPU time while serving):")
        d.table(pd.DataFrame([{"server": k, "pid": v.get("pid"), "cpu_s": v.get("cpu_s"), "exit": v.get("exit_code"),
                               "argv": " ".join(map(str, (v.get("argv") or [])[2:]))} for k, v in servers.items()]))


def build_summary(run: RunData, h: pd.DataFrame, a: pd.DataFrame, cells: pd.DataFrame) -> dict[str, Any]:
    """The headline numbers as JSON-able data (``summary.json`` beside the report)."""

    def records(df: pd.DataFrame) -> list[dict[str, Any]]:
        return json.loads(df.to_json(orient="records", double_precision=6)) if not df.empty else []

    return {"run_dir": str(run.path), "created_at": run.meta.get("created_at"),
            "git_commit": run.meta.get("git_commit"), "injected": run.meta.get("injected") or {},
            "monitor": run.meta.get("monitor"), "headline": records(h), "ablations": records(a),
            "cells": records(cells)}


def write_report(run_dir: str | Path, out_dir: str | Path | None = None, *,
                 migration: Mapping[str, Any] | None = None, n_boot: int = 2000) -> dict[str, Path]:
    """Rebuild ``report.md``, ``report.html``, ``summary.json`` and ``plots/*.png`` from a run directory.

    ``migration``: the migration-cost data (:func:`loadtests.migration.migration_report`); default: the
    run's ``migration.json`` if it has one, else computed from the code now (without the runtime part).
    Returns: the paths written, by name.
    """
    run = load_run(run_dir)
    out = Path(out_dir) if out_dir is not None else run.path
    out.mkdir(parents=True, exist_ok=True)
    h, a, cells = headline(run, n_boot=n_boot), ablations(run, n_boot=n_boot), cell_table(run)
    if migration is None:
        mig_path = run.path / "migration.json"
        if mig_path.exists():
            migration = json.loads(mig_path.read_text())
        else:
            from loadtests.migration import migration_report

            migration = migration_report()
    figures = plots.all_figures(run.turns, run.rollouts, a, out / "plots")
    d = plots.Doc("turnbench report")
    d.p(f"Run `{run.path}`, {run.meta.get('created_at', 'date unknown')}, commit "
        f"`{str(run.meta.get('git_commit', '?'))[:12]}`{' (dirty)' if run.meta.get('git_dirty') else ''}.")
    d.h2("Headline: end-to-end rollout time against HTTPS")
    d.p(_injected_text(run.meta) + " " + _saturation_text(run.meta))
    d.p("Ratio = median rollout time of the cell ÷ median of the HTTPS baseline in the same run (in brackets "
        "its bootstrap 95% confidence interval; in parentheses the change in %, negative = faster). Rollout "
        "time is first request → final answer, tool time included; concurrency 1.")
    d.table(_headline_view(h), empty="No cell had an HTTPS baseline to compare with.")
    d.p(_claim_text(h))
    d.bullets(headline_sentences(h))
    plots.add_sections(d, figures, [n for n in plots.FIGURES if n != "ablations"])
    d.h2("Ablations: which mechanism buys what")
    d.p("Each row turns one switch of DESIGN §2 off (or changes the framing) on one cell, all else equal.")
    d.table(_ablation_view(a), empty="This run has no ablation variants.")
    if "ablations" in figures:
        d.figure(figures["ablations"], plots.FIGURES["ablations"][1])
    d.h2("All cells")
    d.table(plots.round_frame(cells), empty="No cells.")
    _calibration_section(d, run.meta.get("calibration"))
    from loadtests.migration import add_migration_section

    add_migration_section(d, migration)
    _environment_section(d, run.meta)
    paths = d.write(out)
    paths["summary"] = out / "summary.json"
    # the runner's per-cell statistics stay; the report's headline numbers are added beside them
    previous = json.loads(paths["summary"].read_text()) if paths["summary"].exists() else {}
    summary = {**previous, **build_summary(run, h, a, cells), "migration": migration}
    if "cells" in previous:
        summary["cells"], summary["report_cells"] = previous["cells"], summary["cells"]
    paths["summary"].write_text(json.dumps(summary, indent=2, default=str))
    return paths
