"""``turnbench migration``: what moving a client off HTTPS costs, per transport."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loadtests.cli.common import lazy


def register(sub: Any) -> None:
    m = sub.add_parser(
        "migration",
        help="migration cost per transport, computed from the code",
        description="Lines a client writes to move from the HTTPS client (normalized source, "
        "difflib), schema artefacts, new dependencies, byte-identical request bodies, the official "
        "SDK diff; with --runtime also the measured cost of a dropped connection mid-rollout.",
    )
    m.add_argument(
        "--runtime",
        action="store_true",
        help="also measure reconnect + store hydration vs full resend (starts an in-process server)",
    )
    m.add_argument("--transport", default="ws", help="transport for --runtime (default ws; inproc works too)")
    m.add_argument("--rollouts", type=int, default=3, metavar="N", help="rollouts per strategy for --runtime")
    m.add_argument("--json", type=Path, metavar="OUT", help="also write the numbers as JSON to OUT")
    m.set_defaults(func=lazy("loadtests.commands.migration", "cmd_migration"))
