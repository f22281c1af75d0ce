"""``turnbench bench``: the fixed benchmark matrix, then its report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loadtests.cli import probe
from loadtests.cli.common import lazy


def register(sub: Any) -> None:
    b = sub.add_parser(
        "bench",
        help="the fixed benchmark matrix -> reports/latest/",
        description="Run the fixed, seeded matrix (https full/store, ws connection/store, grpc "
        "connection x instant/fast/frontier on agent-20 at concurrency 1 (and 4 below frontier), "
        "coding-agent-50 at instant/fast, option A (ws-long) beside B, the ablations and the calibration), "
        "then the migration cost and the measurements beyond the matrix (cross-host state when "
        "redis-server is installed, steering, fan-out, warm-up, compaction), then write report.md (the verdict first), "
        "report.html (plots embedded), summary.json and the raw samples to OUT/runs/<UTC stamp>/ and copy "
        "them to OUT/latest/ (replaced). Within 10 min on a busy 2-core machine; --quick about 2 min on a "
        "quiet one.",
    )
    b.add_argument("--quick", action="store_true", help="the ~1 minute matrix (agent-20, instant+fast, c=1)")
    b.add_argument(
        "--out",
        type=Path,
        default=Path("reports"),
        metavar="DIR",
        help="reports root: writes DIR/latest/ and DIR/runs/<stamp>/ (default: reports)",
    )
    b.add_argument(
        "--no-migration-runtime",
        dest="migration_runtime",
        action="store_false",
        help="skip measuring reconnect+rehydrate vs full resend after a dropped connection",
    )
    b.add_argument(
        "--budget-s",
        type=float,
        default=600.0,
        metavar="S",
        help="end within S seconds however busy the machine: measured rounds that would overrun are dropped "
        "whole and the report says so (default 600; 0: no budget)",
    )
    b.add_argument(
        "--no-extras",
        dest="extras",
        action="store_false",
        help="skip the measurements beyond the matrix (cross-host state over Redis and SQLite, steering, "
        "fan-out, warm-up); their report sections then say how to measure them",
    )
    b.add_argument("--quiet", action="store_true", help="no progress output")
    t = b.add_argument_group(
        "against your own endpoint",
        "With --target, bench first probes the endpoint (turnbench probe), then runs agent-20 (--quick: agent-5) "
        "over the transports and states it offers and the sections beyond the matrix it can take; the report "
        "lists what could not run and why (no stage timings, no lanes, no steer, no store …).",
    )
    probe.add_target_arguments(t)
    b.set_defaults(func=lazy("loadtests.commands.bench", "cmd_bench"))
