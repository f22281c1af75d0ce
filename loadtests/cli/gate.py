"""``turnbench gate`` (the CI latency gate) and ``turnbench compare`` (two runs side by side)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from loadtests.cli import probe
from loadtests.cli.common import lazy
from turnbench.settings import parse_burn_map


def register(sub: Any) -> None:
    c = sub.add_parser(
        "compare",
        help="put two runs side by side",
        description="Per cell present in both runs: median rollout_ms and ttft_ms in A and B, and "
        "B vs A in % with the bootstrap 95% CI of the ratio of medians.",
    )
    c.add_argument("a", type=Path, metavar="A", help="first run directory (the reference)")
    c.add_argument("b", type=Path, metavar="B", help="second run directory")
    c.add_argument("--md", type=Path, metavar="OUT", help="also write the table as Markdown to OUT")
    c.set_defaults(func=lazy("loadtests.commands.gate", "cmd_compare"))
    g = sub.add_parser(
        "gate",
        help="judge this checkout against its base revision in one run; non-zero on regression",
        description="The latency gate. By default (paired): the base revision (--against, else the commit "
        "reports/baseline.json names, else the merge base with origin/main) is checked out in a git worktree, "
        "its servers run beside this checkout's, the gate's short matrix (agent-20's workload, instant "
        "profile) runs on both, interleaved round by round, and each pipeline stage's CPU per turn, the "
        "stages' total and the rollout time are judged as candidate ÷ base with paired bootstrap 95% CIs. "
        "With --stored (or when the base cannot be checked out or served, which the output says), the run "
        "is judged against reports/baseline.json instead: stage and process CPU divided by the cell's speed "
        "factor, ratios of rollout time between cells, and CPU per turn scaled by a reference workload. "
        "Exit 0: pass; 1: a metric regressed beyond its tolerance; 2: usage error or missing baseline.",
    )
    g.add_argument(
        "--against",
        metavar="REV",
        help="the base revision of the paired gate (any revision git names; default: the commit the "
        "baseline names, else origin/main's merge base, else HEAD)",
    )
    g.add_argument(
        "--stored",
        action="store_true",
        help="judge against the stored baseline (--baseline) instead of the base revision in the same run",
    )
    g.add_argument(
        "--baseline",
        type=Path,
        default=None,
        metavar="PATH",
        help="the baseline (default: reports/baseline.json; with --target it must be named)",
    )
    g.add_argument(
        "--write-baseline",
        type=Path,
        nargs="?",
        const=True,
        default=None,
        metavar="PATH",
        help="measure and (over)write the baseline instead of judging (`make baseline`): to PATH if given, else "
        "to --baseline",
    )
    g.add_argument(
        "--burn",
        type=parse_burn_map,
        action="append",
        default=[],
        metavar="STAGE=US[,...]",
        help="burn this much CPU (us per request) in a pipeline stage on every server: the "
        "deliberately slowed path that must fail the gate, e.g. --burn render=2000",
    )
    g.add_argument(
        "--out", type=Path, metavar="DIR", help="run directory for the gate run (default: reports/runs/<stamp>-gate)"
    )
    g.add_argument("--run", type=Path, metavar="DIR", help="judge an existing gate run directory, run nothing")
    g.add_argument(
        "--ratio-tolerance",
        type=float,
        default=0.25,
        metavar="F",
        help="a ratio fails when its CI is above baseline x (1+F) (default 0.25)",
    )
    g.add_argument(
        "--cpu-tolerance",
        type=float,
        default=1.0,
        metavar="F",
        help="a total-CPU-per-turn metric (scaled by a reference workload) fails when its CI is above "
        "baseline x (1+F) (default 1.0: a guard against everything getting slower at once)",
    )
    g.add_argument(
        "--tolerance",
        action="append",
        default=[],
        metavar="KIND=F",
        help="the tolerance of a metric kind: stage (a pipeline stage's CPU, default 0.3), process (the "
        "server's CPU outside the stages, the client's, default 0.3), ratio, cpu; with --target: ratio (0.75), "
        "turn (p10 times, 0.5), median (1.5), tail (p90, 3), bytes (0.1); repeatable",
    )
    t = g.add_argument_group(
        "your own server",
        "With --target, the gate judges an endpoint of your own (any Responses server over HTTPS+SSE and/or "
        "WebSocket mode) on what a client measures: rollout-time ratios between its transports and states, "
        "p10, median and p90 turn time and TTFT per cell (each with a floor in ms per turn), bytes per turn; no "
        "stage timings needed. Write its baseline with --write-baseline FILE, judge with --baseline FILE.",
    )
    probe.add_target_arguments(t)
    t.add_argument(
        "--rollouts",
        type=int,
        default=6,
        metavar="N",
        help="measured rollouts per cell against the target (13 turns each; default 6)",
    )
    t.add_argument(
        "--floor",
        action="append",
        default=[],
        metavar="KIND=N",
        help="with --target: the smallest rise that counts, per kind: turn (p10 times, default 4 ms), median "
        "(15 ms), tail (50 ms), bytes (64 B); repeatable",
    )
    t.add_argument(
        "--confirm",
        type=int,
        default=1,
        metavar="N",
        help="when a run fails, measure again up to N times; the gate fails only if every run fails (default 1: "
        "a regression shows every time, a busy moment of the machine rarely twice in a row; 0: judge one run)",
    )
    g.set_defaults(func=cmd_gate)


def cmd_gate(args: argparse.Namespace) -> int:
    """The gate: against a --target (:mod:`loadtests.commands.gate_target`), else paired or stored."""
    if args.target:
        return lazy("loadtests.commands.gate_target", "cmd_gate_target")(args)
    if isinstance(args.write_baseline, Path):
        args.baseline = args.write_baseline
    if args.baseline is None:
        args.baseline = Path("reports/baseline.json")
    args.write_baseline = bool(args.write_baseline)
    return lazy("loadtests.commands.gate_paired", "cmd_gate")(args)
