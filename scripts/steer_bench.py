"""Steering against its alternative: a user corrects an agent mid-answer.

Against a ws server process (TLS on, ``--profile``, default ``fast``: ~1,000 tok/s), per round: an answer of
``--answer-tokens`` is streaming; after ``--after`` tokens the user's correction arrives, and it is applied

- ``steer``: as ``response.steer`` on the same connection: the answer stops at the next token and the server
  starts the successor by itself, continuing from the partial answer with the correction;
- ``cancel and re-create``: by closing the connection (Responses WebSocket mode has no cancel event) and
  sending a new request on a new connection with the whole conversation and the correction (the partial
  answer was never stored).

Printed per way, medians over ``--rounds`` rounds: the time from the correction to the corrected answer's
first token and to its end, and the tokens of the first answer the client received (what the correction
wasted; a server that does not notice the close at once generates a little more). The measurement is
:func:`loadtests.extras.steering.measure`; ``turnbench bench`` runs it (the defaults here) as a section of its
report, and ``--json PATH`` writes the same data as bench's ``steering.json``.

  python scripts/steer_bench.py
  python scripts/steer_bench.py --profile frontier --after 50 --rounds 3
"""

from __future__ import annotations

import argparse
from pathlib import Path

from loadtests.extras.steering import SIZES, measure
from loadtests.runs.rundir import write_json

FULL = SIZES["full"]
FIGURES = (("first_ms", "18.1f"), ("done_ms", "23.1f"), ("wasted_tokens", "14.0f"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=FULL["rounds"])
    p.add_argument("--answer-tokens", type=int, default=FULL["answer_tokens"])
    p.add_argument("--after", type=int, default=FULL["after"], help="deltas of the first answer before the correction")
    p.add_argument("--profile", default="fast")
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the data (as bench's steering.json)")
    args = p.parse_args(argv)
    data = measure(rounds=args.rounds, answer_tokens=args.answer_tokens, after=args.after, profile=args.profile)
    if args.json is not None:
        write_json(args.json, data)
    print(f"a correction after {args.after} of {args.answer_tokens} tokens, profile {args.profile}, "
          f"median of {args.rounds} rounds")  # fmt: skip
    print(f"{'way':<22} {'to first token ms':>18} {'to corrected answer ms':>23} {'tokens wasted':>14}")
    for way, med in data["medians"].items():
        first, done, wasted = (_f(med[k], spec) for k, spec in FIGURES)
        print(f"{way:<22} {first} {done} {wasted}")
    return 0


def _f(v: float | None, spec: str) -> str:
    return format(float("nan") if v is None else v, spec)


if __name__ == "__main__":
    raise SystemExit(main())
