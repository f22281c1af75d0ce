"""The report of a run directory (docs/guides/bench.md): ``report.md``, a self-contained ``report.html``,
``plots/*.png``
and ``summary.json``, rendered from the run's raw samples and records (so ``turnbench report DIR`` reruns
nothing). The numbers come from :mod:`loadtests.stats`, the same functions the runner's table and
``summary.json`` use; migration cost is rendered from the run's ``migration.json`` (what
:mod:`loadtests.commands.migration` measured), never measured here. A cell is named by its ``transport/state``.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from loadtests.analysis.cells import cell_table
from loadtests.analysis.headline import BASELINES
from loadtests.analysis.records import Calibration, CellDecomposition
from loadtests.analysis.summary import RunSummary
from loadtests.analysis.verdict import CLAIM, Verdict
from loadtests.execution import probe
from loadtests.extras import registry as extras
from loadtests.present import plots
from loadtests.present.doc import Doc, format_number, round_frame
from loadtests.report import option_a
from loadtests.runs.rundir import RunDir, write_json
from turnbench.settings import Settings

__all__ = ["add_migration_section", "cmd_report", "headline_sentences", "write_report"]

SENTENCE_CELLS = ("ws/connection", "grpc/connection")


def _profile_text(profile: str) -> str:
    from turnbench.engine.sim import PROFILES

    p = PROFILES.get(profile)
    return f"`{profile}`" if p is None else f"`{profile}` ({p.rate_text})"


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
                parts.append(
                    f"{row.ratio:.2f}× the time of `{row.vs}` ({abs(row.reduction_pct):.1f}% {verb}; "
                    f"95% CI of the reduction {row.reduction_lo:.1f}% to {row.reduction_hi:.1f}%)"
                )
        first = g.iloc[0]
        if parts:
            out.append(
                f"On `{scen}` ({first['tool_calls']} tool calls) at {_profile_text(str(prof))}, concurrency "
                f"{first['concurrency']}, `{cell}` rollouts ({first['p50_ms']:,.0f} ms median) took "
                + " and ".join(parts)
                + "."
            )
    return out


def _fmt_ci(v: float, lo: float, hi: float, fmt: str = "{:.3f}") -> str:
    return f"{fmt.format(v)} [{fmt.format(lo)}, {fmt.format(hi)}]" if math.isfinite(v) else "n/a"


def _headline_view(h: pd.DataFrame) -> pd.DataFrame:
    """One row per scenario, profile and cell; a column per HTTPS baseline: ratio [CI] (reduction %)."""
    if h.empty:
        return h
    rows: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in h.itertuples(index=False):
        row = rows.setdefault(
            (r.scenario, r.profile, r.cell),
            {
                "scenario": r.scenario,
                "profile": r.profile,
                "tool calls": r.tool_calls,
                "cell": r.cell,
                "median ms": f"{r.p50_ms:,.0f}",
                "n": str(r.n),
            },
        )
        row[f"vs {r.vs}: ratio [95% CI]"] = (
            f"{_fmt_ci(r.ratio, r.lo, r.hi)} ({-r.reduction_pct:+.1f}%)" if math.isfinite(r.ratio) else "n/a"
        )
        pred = getattr(r, "pred_ratio", math.nan)
        row[f"vs {r.vs}: predicted"] = (
            f"{_fmt_ci(pred, r.pred_lo, r.pred_hi)} ({-r.pred_reduction_pct:+.1f}%)"
            if isinstance(pred, float) and math.isfinite(pred)
            else "n/a"
        )
        row[f"{r.vs} ms"] = f"{r.base_p50_ms:,.0f}"
    cols = ["scenario", "profile", "tool calls", "cell", "median ms", "n"]
    for base_t, base_s in BASELINES:
        cols += [f"{base_t}/{base_s} ms", f"vs {base_t}/{base_s}: ratio [95% CI]", f"vs {base_t}/{base_s}: predicted"]
    return pd.DataFrame(list(rows.values())).reindex(columns=cols).astype(object).fillna("—")


def _ablation_view(a: pd.DataFrame) -> pd.DataFrame:
    if a.empty:
        return a
    return pd.DataFrame(
        {
            "cell": a["cell"],
            "profile": a["profile"],
            "switched off / changed": a["setting"],
            "median ms on → off": [
                f"{x:,.0f} → {y:,.0f}" for x, y in zip(a["on_p50_ms"], a["off_p50_ms"], strict=True)
            ],
            "change % [95% CI]": [
                _fmt_ci(*v, fmt="{:+.1f}") for v in zip(a["change_pct"], a["change_lo"], a["change_hi"], strict=True)
            ],
            "share of gap to https/full": a["share_pct"].map(lambda v: f"{v:.0f}%" if math.isfinite(v) else "n/a"),
        }
    )


def _injected_text(meta: Mapping[str, Any]) -> str:
    inj = meta.get("injected") or {}
    if not inj:
        return "Injected latency: **none** (every `inject_ms` and `burn_us` is zero)."
    return "Injected latency (explicit knobs: docs/concepts/pipeline.md): **" + json.dumps(inj, sort_keys=True) + "**."


def _saturation_text(meta: Mapping[str, Any]) -> str:
    mon = meta.get("monitor")
    if not isinstance(mon, Mapping) or "saturated" not in mon:
        return "Load generator: not monitored in this run."
    state = f"**SATURATED** ({mon.get('reason')})" if mon["saturated"] else "not saturated"
    cells: Mapping[str, Any] = mon["cells"] if isinstance(mon.get("cells"), Mapping) else {}
    hot = sum(bool(isinstance(m, Mapping) and m.get("saturated")) for m in cells.values())
    return (
        f"Load generator: {state} over the run (CPU {float(mon.get('cpu_util', math.nan)):.0%} of a core, "
        f"event-loop lag p99 {float(mon.get('loop_lag_p99_ms', math.nan)):.1f} ms)"
        + (f"; {hot} of {len(cells)} cells saturated it at times (`run.json` monitor.cells)." if cells else ".")
    )


def _run_caveats(meta: Mapping[str, Any]) -> list[str]:
    """What limits every figure of the run: a time budget that cut it short, CPU isolation and the machine's
    background load."""
    out: list[str] = []
    cut = meta.get("trimmed")
    if isinstance(cut, Mapping) and cut:
        out.append(
            f"Cut short to fit the time budget: {cut.get('rounds_run')} of {cut.get('rounds_planned')} measured "
            f"rounds ran and {cut.get('rollouts_dropped')} rollouts were dropped ({cut.get('reason')}); every "
            "cell kept the same rounds, but with fewer rollouts each. The machine was too busy for the whole "
            "matrix: rerun it on a quieter one."
        )
    iso = meta.get("isolation")
    if isinstance(iso, Mapping) and iso:
        if iso.get("pinned"):
            out.append(f"CPU isolation: {iso.get('reason')}.")
        else:
            out.append(f"No CPU isolation: {iso.get('reason')}.")
    mon = meta.get("monitor")
    mon = mon if isinstance(mon, Mapping) else {}
    bg = mon.get("background")
    if isinstance(bg, Mapping) and bg:
        cells = mon.get("cells") if isinstance(mon.get("cells"), Mapping) else {}
        hot = [c for c, m in (cells or {}).items() if isinstance(m, Mapping) and m.get("contended")]
        text = (
            f"Background load while cells ran: other processes used {float(bg['other_cores']):.2f} of "
            f"{bg['cores']} cores on average, {float(bg['idle_cores']):.2f} stayed idle"
        )
        if bg.get("pressure") is not None:
            text += f", some task waited for a CPU {float(bg['pressure']):.0%} of the time"
        if float(bg.get("steal") or 0.0) >= 0.005:
            text += f", the hypervisor took {float(bg['steal']):.1%} (steal)"
        text += (
            f"; {len(hot)} of {len(cells or {})} cells ran on a contended machine (`run.json` monitor.cells)."
            if hot
            else "; no cell ran on a contended machine."
        )
        out.append(text)
    return out


def _verdict_section(d: Doc, verdicts: list[Verdict], meta: Mapping[str, Any]) -> None:
    """The report's first lines: the claim, the answer with its interval, whether it holds; then the caveats."""
    d.p(f"**Claim under test:** {CLAIM} (tested by `ws/connection` against `https/full`).")
    if verdicts:
        d.p(verdicts[0].line())
        d.bullets(v.line() for v in verdicts[1:])
    else:
        d.p(
            "**No verdict:** this run has no `ws/connection` and `https/full` pair at concurrency 1, so it does "
            "not test the claim."
        )
    kinds: dict[str, str] = {}  # each kind once, worded for the first verdict that has it
    for v in verdicts:
        for kind, text in zip(v.caveat_kinds, v.caveats, strict=True):
            kinds.setdefault(kind, text)
    caveats = [*kinds.values(), *_run_caveats(meta)]
    if caveats:
        d.p("**Caveats:**")
        d.bullets(caveats)


_DECOMP_STAGES = ("parse", "validate", "resolve", "safety", "render", "post")


def _decomposition_view(decomp: Mapping[str, CellDecomposition], meta: Mapping[str, Any]) -> pd.DataFrame:
    cells = {c["cell"]: c for c in meta.get("cells", []) if isinstance(c, Mapping)}
    mon = meta.get("monitor")
    mon_cells = mon.get("cells") if isinstance(mon, Mapping) and isinstance(mon.get("cells"), Mapping) else {}
    rows = []
    for cid, x in decomp.items():
        c = cells.get(cid, {})
        m = (mon_cells or {}).get(cid) or {}
        bg = m.get("background") or {}
        stages = x.get("stages_cpu_ms") or {}
        srv, stage_sum = x.get("server_cpu_ms"), x.get("server_stage_cpu_ms")
        rows.append(
            {
                "cell": f"{c.get('transport')}/{c.get('state')}",
                "profile": c.get("profile"),
                "c": c.get("concurrency"),
                "variant": c.get("variant"),
                "n": x["n"],
                "rollout ms": x["rollout_ms"],
                "model": x["model_ms"],
                "tool": x["tool_ms"],
                "server CPU": srv,
                **{s: stages.get(s, math.nan) for s in _DECOMP_STAGES},
                "outside stages": (srv - stage_sum) if srv is not None and stage_sum is not None else math.nan,
                "client CPU": x["client_cpu_ms"],
                "rest": x["rest_ms"],
                "predicted p50": x["predicted_p50_ms"],
                "measured p50": x["rollout_p50_ms"],
                "other procs (cores)": bg.get("other_cores", math.nan),
                "contended": "yes" if m.get("contended") else "no",
            }
        )
    df = pd.DataFrame(rows)
    if len(df) and (df["variant"] == "default").all():
        df = df.drop(columns=["variant"])
    return df


def _decomposition_section(d: Doc, decomp: Mapping[str, CellDecomposition], meta: Mapping[str, Any]) -> None:
    d.h2("Where the time went: model, CPU and the rest")
    d.p(
        "Per cell, the mean over rollouts in ms per rollout (means add up: rollout = model + tool + server CPU + "
        "client CPU + rest). *model*: the engine's prefill and decode time (their wall time less the server CPU "
        "inside them); *server CPU*: the server process, split into the pipeline stages (thread CPU) and what "
        "runs outside them (framing, TLS, the event loop); *client CPU*: the load generator; *rest*: network, "
        "framing, waiting for a CPU, negative where CPU work overlapped model time. *predicted*: model + tool + "
        "CPU, the rollout as if nothing ever waited for a CPU; the headline's predicted ratios are ratios of its "
        "medians. *other procs*: CPU other processes used meanwhile, in cores; *contended*: they held the CPUs "
        "(no core left idle) or the hypervisor stole time."
    )
    d.table(_decomposition_view(decomp, meta), empty="No successful rollouts to decompose.")


def _calibration_section(d: Doc, calibration: Calibration | None) -> None:
    d.h2("Calibration: the harness measuring itself")
    d.p(
        "The `calibration` profile has known model timings (prefill 20 ms flat, 5 ms per token); measured "
        "minus known (the residual) is what the transport and the harness add, per transport."
    )
    if calibration and calibration.get("by_transport"):
        by = calibration["by_transport"]
        known = {k: v for k, v in calibration.items() if not isinstance(v, Mapping | list)}
        d.p("Known: " + ", ".join(f"`{k}` = {v}" for k, v in known.items()) + ".")
        table = pd.DataFrame([{"transport": k, **v} for k, v in by.items()])
        for col in [c for c in table.columns if c.endswith("_ci")]:
            table[col] = table[col].map(
                lambda v: (
                    f"[{v[0]:.2f}, {v[1]:.2f}]" if isinstance(v, list) and len(v) == 2 and None not in v else "n/a"
                )
            )
        d.table(round_frame(table))
    elif calibration:
        d.pre(json.dumps(calibration, indent=2, default=str))
    else:
        d.p("*This run has no calibration cells (the `calibration` scenario was not in it).*")


def _environment_section(d: Doc, meta: Mapping[str, Any]) -> None:
    d.h2("Environment: enough to rerun it")
    env = {k: meta.get(k) for k in ("created_at", "git_commit", "git_dirty", "python", "platform", "cpu", "loop")}
    d.table(pd.DataFrame({"": list(env), "value": [str(v) for v in env.values()]}))
    if meta.get("argv"):
        d.p("Command line:")
        d.pre(" ".join(map(str, meta["argv"])))
    if meta.get("versions"):
        d.p("Versions:")
        d.pre(json.dumps(meta["versions"], indent=1, sort_keys=True))
    settings: list[Mapping[str, Any]] = [
        c["server_settings"] for c in meta.get("cells", []) if isinstance(c, Mapping) and c.get("server_settings")
    ]
    if settings:
        defaults = Settings().as_dict()
        common = {k: v for k, v in settings[0].items() if all(s.get(k) == v for s in settings) and defaults.get(k) != v}
        d.p("Server settings shared by every cell, beyond the defaults (each cell's own are in `run.json` cells):")
        d.pre(json.dumps(common, indent=1, sort_keys=True, default=str))
    servers = meta.get("servers")
    if isinstance(servers, Mapping) and servers:
        d.p("Servers (how each was started, the transports it served, its CPU time while serving):")
        d.table(
            pd.DataFrame(
                [
                    {
                        "server": k,
                        "transports": ", ".join(v.get("transports") or []),
                        "pid": v.get("pid"),
                        "cpu_s": v.get("cpu_s"),
                        "exit": v.get("exit_code"),
                        "argv": " ".join(map(str, (v.get("argv") or [])[2:])),
                    }
                    for k, v in servers.items()
                ]
            )
        )


def _yn(v: Any) -> str:
    return "n/a" if v is None else ("yes" if v else "no")


def add_migration_section(d: Doc, data: Mapping[str, Any] | None) -> None:
    """The migration-cost section, from the data :func:`loadtests.migration.migration_report` measured
    (``migration.json`` in a run directory); ``None``: this run has none, and the section says so."""
    d.h2("Migration cost (computed from the code)")
    if data is None:
        d.p(
            "*This run directory has no `migration.json` (`turnbench bench` measures it; "
            "`turnbench migration --runtime --json DIR/migration.json` adds it to a run).*"
        )
        return
    d.p(
        "Lines are normalized source lines (no comments, docstrings, blank lines). *written* = lines of the "
        "new client not found in `clients/https_client.py` (added or changed); the agent loop "
        f"(`{data['agent_loop']['file']}`) is shared by every transport and changes by 0 lines."
    )
    rows = []
    for c in data["clients"]:
        body = c.get("body", {})
        rows.append(
            {
                "transport": c["transport"],
                "client lines written": c["written"],
                "deleted": c["deleted"],
                "kept": c["kept"],
                "+ support modules": c.get("support_lines", 0),
                "codegen step": _yn(c["codegen"]),
                "proto lines": c["proto_lines"],
                "generated lines": c["generated_lines"],
                "new dependencies": ", ".join(c["new_dependencies"]) or "none",
                "body byte-identical": f"{_yn(body.get('identical'))} ({body.get('note', '')})",
            }
        )
    d.table(pd.DataFrame(rows).astype(object).fillna(""))
    support: dict[str, list[str]] = {}  # one paragraph per distinct module list (grpc and grpc-json share)
    for c in data["clients"]:
        if c.get("support_modules"):
            mods = ", ".join(f"`{k}` ({v})" for k, v in c["support_modules"].items())
            support.setdefault(mods, []).append(f"`{c['transport']}`")
    for mods, names in support.items():
        d.p(
            f"{' and '.join(names)} also import hand-written modules the HTTPS client does not: {mods} "
            "normalized lines."
        )
    sdk = data["sdk"]
    d.p(
        f"Official SDK user (`{sdk['files'][0]}` → `{sdk['files'][1]}`): **{sdk['written']} lines written, "
        f"{sdk['deleted']} deleted**, {sdk['kept']} kept of {sdk['old']}."
    )
    _runtime_section(d, data.get("runtime"))


def _runtime_section(d: Doc, runtime: Mapping[str, Any] | None) -> None:
    d.p("**Runtime cost of migrating mid-rollout** (the connection drops, the loop reconnects and continues):")
    if not runtime:
        d.p("*Not measured in this run (`turnbench migration --runtime` measures it).*")
        return
    d.p(
        f"`{runtime['transport']}` at `{runtime['profile']}`, {runtime['tool_calls']}-tool-call rollouts, connection "
        f"dropped before turn {runtime['drop_at']}, {runtime['rollouts']} rollouts per strategy, each interleaved "
        "with an undisturbed one. *recovery* = reconnect + the failed turn; the resumed turn pays the rest."
    )
    table = pd.DataFrame(runtime["strategies"])

    def num(v: Any) -> float:
        return math.nan if v is None else float(v)

    n = int(runtime.get("rollouts") or 0)
    ratios = zip(table.pop("ratio"), table.pop("ratio_lo"), table.pop("ratio_hi"), strict=True)
    if n > 1:
        table["ratio [95% CI]"] = [_fmt_ci(num(r), num(lo), num(hi)) for r, lo, hi in ratios]
    else:  # one rollout per strategy: a single pair, no interval to show
        table[f"ratio (n={n})"] = [format_number(num(r)) for r, _, _ in ratios]
    d.table(round_frame(table))


def _headline_section(d: Doc, run: RunDir, summary: RunSummary) -> None:
    h = summary.headline
    d.h2("Headline: end-to-end rollout time against HTTPS")
    d.p(_injected_text(run.meta) + " " + _saturation_text(run.meta))
    conc = f"concurrency {int(h['concurrency'].iloc[0])}" if not h.empty else "the lowest concurrency"
    d.p(
        "Ratio = median rollout time of the cell ÷ median of the HTTPS baseline in the same run (in brackets "
        "its bootstrap 95% confidence interval; in parentheses the change in %, negative = faster). Rollout "
        f"time is first request → final answer, tool time included; {conc}. *Predicted*: the same ratio of "
        "the rollout times the CPU split predicts (see *Where the time went*), which leaves out waiting for a "
        "CPU: on a quiet machine the two agree."
    )
    d.table(_headline_view(h), empty="No cell had an HTTPS baseline to compare with.")
    d.bullets(headline_sentences(h))


def _ablation_section(d: Doc, summary: RunSummary, figures: Mapping[str, Path]) -> None:
    d.h2("Ablations: which mechanism buys what")
    d.p("Each row changes one server setting of the pipeline (a switch off, or the framing) on one cell.")
    d.table(_ablation_view(summary.ablations), empty="This run has no ablation variants.")
    if "ablations" in figures:
        d.figure(figures["ablations"], plots.FIGURES["ablations"][1])


def _option_a_section(d: Doc, run: RunDir, summary: RunSummary, migration: Mapping[str, Any] | None) -> None:
    cells = run.meta.get("cells", [])
    a_vs_b = option_a.comparison(run.rollouts, run.turns, cells, summary.cells)
    has_a = any(c.get("transport") == option_a.A[0] for c in cells)
    option_a.add_section(d, a_vs_b, migration, run_has_a=has_a)


def _all_cells_section(d: Doc, summary: RunSummary) -> None:
    d.h2("All cells")
    d.table(round_frame(cell_table(summary.cells)), empty="No cells.")


def _target_section(d: Doc, path: Path) -> None:
    """A run against an endpoint of someone else's (``turnbench bench --target``): what could not run and why,
    then what the probe found."""
    data = json.loads(path.read_text(encoding="utf-8"))
    found = probe.ProbeResult.from_json(data["probe"])
    d.h2("The endpoint: what it offers, what could not run")
    d.p("Run against " + ", ".join(f"`{k}` = `{v}`" for k, v in found.targets.items()) + ".")
    skipped = data.get("not_run") or []
    if skipped:
        d.p("**Could not run against this endpoint:**")
        d.bullets([f"{s['what']}: {s['why']}" for s in skipped])
    d.p("What `turnbench probe` found (each capability tried, judged from what came back):")
    d.table(
        pd.DataFrame(
            [
                {"capability": probe.CAPABILITIES.get(f.capability, f.capability), "offered": f.offered,
                 "evidence": f.evidence}
                for f in found.findings.values()
            ]
        )
    )  # fmt: skip


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _raise(exc: BaseException) -> Callable[[], None]:
    def build() -> None:
        raise exc

    return build


def write_report(run_dir: str | Path, out_dir: str | Path | None = None) -> dict[str, Path]:
    """Render ``report.md``, ``report.html``, ``plots/*.png`` and ``summary.json`` of a run directory into
    ``out_dir`` (default: the run directory itself). Returns: the paths written, by name.

    Each section is built and rendered on its own (:meth:`Doc.section`): one that raises becomes a note in the
    report saying so, the rest is written, and ``report.log`` (key ``log``) holds the tracebacks; its presence
    is how a caller knows the report is incomplete. The statistics feed most sections: when they cannot be
    computed, those sections say so and ``summary.json`` is not written.

    Raises: :class:`loadtests.runs.rundir.RunDirError` when ``run_dir`` is not a run directory.
    """
    run = RunDir(run_dir)
    out = Path(out_dir) if out_dir is not None else run.path
    out.mkdir(parents=True, exist_ok=True)
    d = Doc("turnbench report")
    summary: RunSummary | None = None
    try:
        summary = run.statistics()
    except Exception as exc:  # the report still says what it can: the run, the environment
        d.section("Statistics of the run", _raise(exc))
    migration = None
    try:
        migration = _read_json(run.path / "migration.json")
    except Exception as exc:
        d.section("Migration cost (computed from the code)", _raise(exc))
    figures: dict[str, Path] = {}
    failed: dict[str, str] = {}
    if summary is not None:
        figures, failed = plots.all_figures(
            run.turns, run.rollouts, summary.ablations, out / "plots", head=summary.headline
        )
        s = summary
        d.section("Verdict", lambda: _verdict_section(d, s.verdicts, run.meta))
        plots.add_sections(d, figures, ["headline"], failed)
    d.p(
        f"Run `{run.path}`, {run.meta.get('created_at', 'date unknown')}, commit "
        f"`{str(run.meta.get('git_commit', '?'))[:12]}`{' (dirty)' if run.meta.get('git_dirty') else ''}."
    )
    target = run.path / "target.json"
    if target.is_file():
        d.section("The endpoint: what it offers, what could not run", lambda: _target_section(d, target))
    if summary is not None:
        s = summary
        d.section("Headline: end-to-end rollout time against HTTPS", lambda: _headline_section(d, run, s))
        d.section(
            "Where the time went: model, CPU and the rest",
            lambda: _decomposition_section(d, s.decomposition, run.meta),
        )
        names = [n for n in plots.FIGURES if n not in ("ablations", "headline")]
        d.section("Figures", lambda: plots.add_sections(d, figures, names, failed))
        d.section("Ablations: which mechanism buys what", lambda: _ablation_section(d, s, figures))
        d.section("Option A vs B", lambda: _option_a_section(d, run, s, migration))
    extras.add_sections(d, run.path, out)
    if summary is not None:
        s = summary
        d.section("All cells", lambda: _all_cells_section(d, s))
        d.section("Calibration: the harness measuring itself", lambda: _calibration_section(d, s.calibration))
    d.section("Migration cost (computed from the code)", lambda: add_migration_section(d, migration))
    d.section("Environment: enough to rerun it", lambda: _environment_section(d, run.meta))
    paths = d.write(out)
    if summary is not None:
        paths["summary"] = write_json(out / "summary.json", {"run": str(run.path), **summary.as_json()})
    return paths


def cmd_report(args: Any) -> int:
    """``turnbench report DIR [--out OUT]``: render the report of a run directory. Exit 1 when a section
    failed (the report is written all the same, with a note where the section would be; tracebacks in
    ``report.log``)."""
    paths = write_report(args.run_dir, args.out)
    for path in paths.values():
        print(path)
    if "log" in paths:
        print(f"turnbench: error: some report sections failed; see {paths['log']}", file=sys.stderr)
        return 1
    return 0
