"""``turnbench report``: rebuild a run directory's report from its saved samples."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loadtests.cli.common import lazy


def register(sub: Any) -> None:
    r = sub.add_parser(
        "report",
        help="rebuild a report from saved samples",
        description="Rebuild report.md, report.html, plots/ and summary.json from a run directory "
        "(turns/rollouts Parquet or JSONL, run.json and, if there, migration.json, as `turnbench "
        "run`/`bench` write them).",
    )
    r.add_argument("run_dir", type=Path, metavar="DIR", help="the run directory")
    r.add_argument("--out", type=Path, metavar="OUT", help="where to write the report (default: DIR itself)")
    r.set_defaults(func=lazy("loadtests.report.render", "cmd_report"))
