"""Cross-host state: what a conversation pays when its turns reach different server hosts.

Two server processes stand for two hosts, sharing one store (Redis, or one SQLite file); the same agent
rollouts run as ``https/store, one host``, ``https/store, alternating``, ``ws/store, reconnect each turn`` and
``ws/connection, one host`` (the connection cache, the reference). The measurement is
:func:`loadtests.extras.crosshost.measure` (its docstring says what each configuration means);
``turnbench bench`` runs the same one as a section of its report.

Printed per store and configuration: the median of the server's ``resolve`` stage (the hydration) per turn,
the median turn time (request sent → response completed; a reconnect is not inside it), and the median rollout
time, over ``--rollouts`` rollouts. Then, on stderr (stdout stays the table), per store, the cost of cross-host
hydration against the connection cache, in ms per turn. Both hosts run on this machine: the network round trip
between hosts is not included.

Exit status 1 when a rollout failed; 2 when no requested store can run here. A store that cannot run (no
``redis-server``) is reported on stderr while the others are measured.

  python scripts/cross_host.py                    # needs redis-server (apt-get install redis-server)
  python scripts/cross_host.py --stores sqlite --rollouts 3 --json cross.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from loadtests.extras.crosshost import COMPARED, FULL_ROLLOUTS, REFERENCE, STORES, measure
from loadtests.extras.registry import Unavailable
from loadtests.runs.rundir import write_json


def _f(v: float | None, spec: str) -> str:
    return "nan" if v is None else format(v, spec)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stores", default=",".join(STORES), help=f"comma-separated; default {','.join(STORES)}")
    p.add_argument("--rollouts", type=int, default=FULL_ROLLOUTS, help="per store and configuration")
    p.add_argument("--tool-calls", type=int, default=20, help="tool calls per rollout")
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the data (as bench's crosshost.json)")
    args = p.parse_args(argv)
    stores = [s for s in args.stores.split(",") if s]
    try:
        data = measure(stores, rollouts=args.rollouts, tool_calls=args.tool_calls)
    except Unavailable as exc:
        print(f"cross_host: nothing to measure: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        p.error(str(exc))
    for store, why in data["stores_unavailable"].items():
        print(f"cross_host: {store} not measured: {why}", file=sys.stderr)
    head = f"{'store':<7} {'configuration':<32} {'ok':>3} {'resolve p50 ms':>15} {'turn p50 ms':>12}"
    print(f"{head} {'rollout p50 ms':>15}")
    for r in data["rows"]:
        print(
            f"{r['store']:<7} {r['config']:<32} {r['ok']:>3} {_f(r['resolve_p50_ms'], '>15.3f')} "
            f"{_f(r['turn_p50_ms'], '>12.2f')} {_f(r['rollout_p50_ms'], '>15.1f')}"
        )
    for store, costs in data["hydration_cost"].items():  # on stderr: stdout stays the table, for parsers
        for name in COMPARED:
            c = costs[name]
            print(
                f"cross_host: {store}: {name} against {REFERENCE}: resolve {_f(c['resolve_ms'], '+.2f')} ms, "
                f"server {_f(c['server_ms'], '+.2f')} ms, turn {_f(c['turn_ms'], '+.2f')} ms per turn",
                file=sys.stderr,
            )
    if args.json is not None:
        write_json(args.json, data)
    return 1 if any(r["failed"] for r in data["rows"]) else 0


if __name__ == "__main__":
    raise SystemExit(main())
