"""Compaction: a long coding-agent rollout that compacts its history every K tool-calling turns, over every
transport and state strategy.

The scenario ``coding-agent-compact`` cut to ``--tool-calls`` calls compacted every ``--compact-every``, run as
``turnbench run`` runs it (a server process per protocol, TLS on, loopback, ``--profile``, default ``fast``):
after every K-th tool-calling turn the client calls ``POST /v1/responses/compact`` (WebSocket-mode and gRPC
clients over HTTPS, on the HTTPS server of the same deployment) and goes on from the compacted output; a
chaining state (``store``, ``connection``) starts a new chain there. Printed per transport and state: the
compact call's time, the model turn right after a compaction against the one right before it (medians, the
ratio with its 95% interval), the KiB each sends, and the tokens the server rendered for each (the chain
restarting). The measurement is :func:`loadtests.extras.compaction.measure`; ``turnbench bench`` runs it as a
section of its report, and ``--json PATH`` writes the same data as bench's ``compaction.json``. Exit status 1
when a request failed.

  python scripts/compaction.py                          # 24 calls, compact every 8, 2 rollouts per cell
  python scripts/compaction.py --tool-calls 40 --compact-every 10 --rollouts 3 --transports ws
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from loadtests.extras.compaction import SIZES, TRANSPORTS, conclusion, measure
from loadtests.runs.rundir import write_json

FULL = SIZES["full"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tool-calls", type=int, default=FULL["tool_calls"], help="tool calls per rollout")
    p.add_argument(
        "--compact-every", type=int, default=FULL["compact_every"], help="tool-calling turns between compactions"
    )
    p.add_argument("--rollouts", type=int, default=FULL["rollouts"], help="measured rollouts per cell")
    p.add_argument("--warmup", type=int, default=FULL["warmup"], help="warm-up rollouts per cell, not shown")
    p.add_argument("--profile", default="fast", help="the sim profile (default fast, ~1,000 tok/s)")
    p.add_argument("--transports", default=",".join(TRANSPORTS), help="comma-separated (default https,ws,grpc)")
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the data (as bench's compaction.json)")
    args = p.parse_args(argv)
    data = measure(
        tool_calls=args.tool_calls,
        compact_every=args.compact_every,
        rollouts=args.rollouts,
        warmup=args.warmup,
        profile=args.profile,
        transports=[t for t in args.transports.split(",") if t],
    )
    if args.json is not None:
        write_json(args.json, data)
    print(
        f"compaction: {args.tool_calls} tool calls, compacted every {args.compact_every}, {args.rollouts} rollout(s) "
        f"per cell, profile {args.profile}; ms are medians, the ratio's interval is 95%"
    )
    print(
        f"{'transport/state':<16} {'n':>2} {'compact ms':>10} {'before ms':>9} {'after ms':>9} {'after/before':>20} "
        f"{'KiB before':>10} {'KiB after':>9} {'rendered before':>15} {'rendered after':>14}"
    )
    for c in data["cells"]:
        r, lo, hi = c["after_vs_before"]
        print(
            f"{c['transport'] + '/' + c['state']:<16} {c['compactions']:>2} {_f(c['compact_ms'][0], '10.1f')} "
            f"{_f(c['before_ms'][0], '9.1f')} {_f(c['after_ms'][0], '9.1f')} "
            f"{_f(r, '6.2f')} [{_f(lo, '5.2f')}, {_f(hi, '5.2f')}] "
            f"{_f(c['before_bytes_up'] / 1024, '10.1f')} {_f(c['after_bytes_up'] / 1024, '9.1f')} "
            f"{_f(c['before_render_tokens'], '15.0f')} {_f(c['after_render_tokens'], '14.0f')}"
        )
    print(conclusion(data["cells"]))
    failed = sum(c["failed"] for c in data["cells"])
    if failed:
        print(f"compaction: {failed} request(s) failed (compaction.json rows have their errors)")
    return 1 if failed else 0


def _f(v: float | None, spec: str) -> str:
    return format(math.nan if v is None else v, spec)


if __name__ == "__main__":
    raise SystemExit(main())
