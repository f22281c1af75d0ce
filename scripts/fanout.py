"""Fan-out: one orchestrator response, then N sub-agents forked from it at once.

Three ways to do the same work, against server processes started as ``turnbench run`` starts them (TLS on,
``--profile``, default ``fast``):

- ``ws lanes``: one WebSocket connection; the N forks are ``response.create`` on N lanes (``stream_id``) with
  the orchestrator's id as ``previous_response_id``: they run side by side, each from the connection cache;
- ``ws connections``: N more WebSocket connections, one fork each (the parent is stored, ``store=true``, so
  every connection hydrates it from the store);
- ``https store``: N concurrent ``POST /v1/responses`` with ``previous_response_id`` (``store=true``).

Each sub-agent writes ``--answer-tokens`` tokens after a parent of ``--parent-kb`` KB of context. Printed per
way, over ``--rounds`` interleaved rounds: the fan-out's wall time (the first fork sent → the last one
completed; median) and the server process's CPU (means: the kernel counts CPU time in 10 ms ticks) over the
whole round (the parent request and the way's connection set-up included) and over the fan-out alone. The
measurement is :func:`loadtests.extras.fanout.measure`; ``turnbench bench`` runs it (the defaults here) as a
section of its report, and ``--json PATH`` writes the same data as bench's ``fanout.json``. Exit status 1 when
a sub-agent did not complete.

  python scripts/fanout.py                       # N = 8, 10 rounds
  python scripts/fanout.py --subagents 16 --profile instant
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from loadtests.extras.fanout import SIZES, measure
from loadtests.runs.rundir import write_json

FULL = SIZES["full"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--subagents", type=int, default=FULL["subagents"])
    p.add_argument("--rounds", type=int, default=FULL["rounds"])
    p.add_argument("--answer-tokens", type=int, default=FULL["answer_tokens"])
    p.add_argument("--parent-kb", type=float, default=FULL["parent_kb"])
    p.add_argument("--profile", default="fast")
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the data (as bench's fanout.json)")
    args = p.parse_args(argv)
    data = measure(
        subagents=args.subagents,
        rounds=args.rounds,
        answer_tokens=args.answer_tokens,
        parent_kb=args.parent_kb,
        profile=args.profile,
    )
    if args.json is not None:
        write_json(args.json, data)
    print(f"fan-out of {args.subagents} sub-agents ({args.answer_tokens} tokens each, {args.parent_kb:g} KB parent, "
          f"profile {args.profile}), {args.rounds} rounds: wall median, CPU mean")  # fmt: skip
    print(f"{'way':<16} {'wall ms':>9} {'server CPU ms':>14} {'fan-out CPU ms':>15}  (CPU: the whole round, parent "
          "included; fan-out: its wall time only)")  # fmt: skip
    for way, med in data["medians"].items():
        mean = data["means"][way]
        print(
            f"{way:<16} {_f(med['wall_ms'], '9.1f')} {_f(mean['cpu_ms'], '14.1f')} {_f(mean['fanout_cpu_ms'], '15.1f')}"
        )
    n = args.subagents
    short = {r["way"] for r in data["rounds"] if r["completed"] < n}
    for way in sorted(short):
        print(f"fanout: {way}: a sub-agent did not complete", file=sys.stderr)
    return 1 if short else 0


def _f(v: float | None, spec: str) -> str:
    return format(float("nan") if v is None else v, spec)


if __name__ == "__main__":
    raise SystemExit(main())
