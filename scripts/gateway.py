"""Does turnbench's answer transfer to a production gateway? The agent workload over vLLM's Agentic API
(``agentic-api`` from PyPI: ``pip install -e '.[gateways]'``) with turnbench's engine role as its upstream,
and over turnbench's own HTTPS and WebSocket servers, interleaved round by round at the same simulated
profile; plus fan-out over the gateway's lanes against over connections.

Printed per profile: each implementation × way (https/full, https/store, ws/store, ws/connection), its median
rollout time with a 95% interval, the ratio to https/full on the same implementation, the gateway's own cost
per turn (the client's turn time minus the upstream's time for the forwarded request) and the answer to "does
it transfer". The measurement is :func:`loadtests.extras.gateway.measure`; ``turnbench bench`` runs it as a
section of its report, and ``--json PATH`` writes the same data as bench's ``gateway.json``. Exit status 1
when a rollout failed, 2 when the gateway is not installed.

  python scripts/gateway.py                              # fast and instant, agent-20, 6 rounds (~15 min)
  python scripts/gateway.py --profiles fast --scenario agent-5 --rounds 3
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from loadtests.extras.gateway import SIZES, measure, render
from loadtests.extras.registry import Unavailable
from loadtests.present.doc import Doc
from loadtests.runs.rundir import write_json

FULL = SIZES["study"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profiles", default=",".join(FULL["profiles"]), help="comma list (default: %(default)s)")
    p.add_argument("--scenario", default=FULL["scenario"], help="the agent workload (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=FULL["rounds"], help="rollouts per cell (default: %(default)s)")
    p.add_argument("--subagents", type=int, default=FULL["subagents"], help="forks per fan-out (default: %(default)s)")
    p.add_argument("--fan-rounds", type=int, default=FULL["fan_rounds"], help="fan-outs per way (default: %(default)s)")
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the data (as bench's gateway.json)")
    args = p.parse_args(argv)
    try:
        data = measure(
            profiles=[s.strip() for s in args.profiles.split(",") if s.strip()],
            scenario=args.scenario,
            rounds=args.rounds,
            subagents=args.subagents,
            fan_rounds=args.fan_rounds,
            quiet=False,
        )
    except Unavailable as exc:
        print(f"gateway: cannot run here: {exc}", file=sys.stderr)
        return 2
    if args.json is not None:
        write_json(args.json, data)
    doc = Doc("On a production gateway")
    render(doc, data)
    print(doc.markdown(Path.cwd()))
    failed = [r for r in data["rounds"] if not r["success"]]
    for r in failed:
        print(f"FAILED: {r['profile']} {r['impl']} {r['way']} round {r['round']}: {r['error']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
