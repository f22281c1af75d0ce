"""Warm-up: first-turn TTFT with and without ``generate: false``.

An agent's first request carries its instructions and tool definitions before the task. WebSocket mode lets a
client send them ahead, as ``response.create`` with ``generate: false`` (the server prepares the state, the
model prefills it, nothing is generated), and then start the first real turn from that response
(``previous_response_id``): the first turn's TTFT then pays only for the task. Against a ws server process
(TLS on, ``--profile``, default ``fast``), per round on a fresh connection each:

- ``cold``: the first turn as usual (instructions, tools and the task in one request);
- ``warmed``: the ``generate: false`` request first (its time is reported apart: it overlaps the agent's own
  start-up), then the first turn.

Printed: the median first-turn TTFT of each (and the input tokens the server reports as cached) and the
warm-up request's own time, over ``--rounds`` rounds, with ``--instructions-kb`` of instructions (the system
prompt) and the agent-20 tool set. The measurement is :func:`loadtests.extras.warmup.measure`; ``turnbench
bench`` runs it (the defaults here) as a section of its report, and ``--json PATH`` writes the same data as
bench's ``warmup.json``.

  python scripts/warmup.py
  python scripts/warmup.py --instructions-kb 32 --profile h200-8b
"""

from __future__ import annotations

import argparse
from pathlib import Path

from loadtests.extras.warmup import SIZES, measure
from loadtests.runs.rundir import write_json

FULL = SIZES["full"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=FULL["rounds"])
    p.add_argument("--instructions-kb", type=float, default=FULL["instructions_kb"])
    p.add_argument("--profile", default="fast")
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the data (as bench's warmup.json)")
    args = p.parse_args(argv)
    data = measure(rounds=args.rounds, instructions_kb=args.instructions_kb, profile=args.profile)
    if args.json is not None:
        write_json(args.json, data)
    med = {k: float("nan") if v is None else v for k, v in data["medians"].items()}
    head = f"first-turn TTFT, {args.instructions_kb:g} KB of instructions + tools, profile {args.profile}"
    print(f"{head}, median of {args.rounds} rounds")
    cached = f"{med['cold_cached_tokens']:.0f} of {med['cold_input_tokens']:.0f} input tokens cached"
    print(f"  cold (one request):             {med['cold_ttft_ms']:8.1f} ms  ({cached})")
    change = med["warm_ttft_ms"] / med["cold_ttft_ms"] - 1
    cached = f"{med['warm_cached_tokens']:.0f} of {med['warm_input_tokens']:.0f} input tokens cached"
    print(f"  warmed (generate: false first): {med['warm_ttft_ms']:8.1f} ms  ({change:+.0%}; {cached})")
    print(f"  the warm-up request itself:     {med['warmup_ms']:8.1f} ms  (before the task is known)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
