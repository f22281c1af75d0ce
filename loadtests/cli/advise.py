"""``turnbench advise``: predicted rollout time per transport for an agent's shape."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from loadtests.cli.common import lazy

DESCRIPTION = """\
Predicted rollout time per transport and state for your agent's shape (turns, tool output size, model speed,
network), from a cost model fitted to what this machine measured (per-turn API overhead against request and
history size, connect time; the first call measures it, ~1 min, into reports/advise/model.json). Prints each
transport's time, its gain over https/full and https/store, and the crossover (the fewest turns at which
ws/connection wins); --plot draws the gain against turns; --validate compares predictions with measured runs.

  turnbench advise --turns 21 --tool-output-kb 4 --tok-s 1000 --rtt-ms 20 --plot /tmp/advise.png
  turnbench advise --trace loadtests/workload/traces/messages-sample.jsonl
"""


def register(sub: Any) -> None:
    adv = sub.add_parser(
        "advise",
        help="predicted rollout time per transport for your agent, from a cost model fitted on this machine",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    adv.add_argument("--turns", type=int, default=21, help="requests per rollout: tool calls + 1 (default 21)")
    adv.add_argument("--tool-output-kb", type=float, default=4.0, help="KB per tool output (default 4)")
    adv.add_argument("--gap-ms", type=float, default=0.0, help="client time per tool call, ms (default 0)")
    adv.add_argument("--tok-s", type=float, default=1000.0, help="the model's decode rate (default 1000)")
    adv.add_argument("--answer-tokens", type=int, default=64, help="tokens in the final answer (default 64)")
    adv.add_argument("--rtt-ms", type=float, default=0.0, help="network round trip, ms (default 0: loopback)")
    adv.add_argument("--bandwidth-mbps", type=float, default=None, help="link rate each way (default unlimited)")
    adv.add_argument("--trace", type=Path, metavar="FILE", help="the workload of a trace's longest conversation")
    adv.add_argument("--model", type=Path, default=Path("reports/advise/model.json"), help="the fitted model")
    adv.add_argument("--fit", action="store_true", help="measure and fit the model again (~1 min)")
    adv.add_argument("--plot", type=Path, metavar="PNG", help="plot the gain over https/full against turns")
    adv.add_argument(
        "--validate", type=Path, nargs="+", metavar="RUN_DIR", help="prediction error against measured runs"
    )
    adv.set_defaults(func=lazy("loadtests.commands.advise", "cmd_advise"))
