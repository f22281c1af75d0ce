"""``turnbench gate`` (the CI latency gate) and ``turnbench compare`` (two runs side by side)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
        default=Path("reports/baseline.json"),
        metavar="PATH",
        help="the committed baseline (default: reports/baseline.json)",
    )
    g.add_argument(
        "--write-baseline",
        action="store_true",
        help="measure and (over)write the baseline instead of judging (`make baseline`)",
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
        "server's CPU outside the stages, the client's, default 0.3), ratio, cpu; repeatable",
    )
    g.set_defaults(func=lazy("loadtests.commands.gate_paired", "cmd_gate"))
