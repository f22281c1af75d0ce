"""The streaming path at the limit: tokens/s and server CPU per token on every transport, with
adaptive coalescing off and on, from one interleaved run.

One answer of ``--tokens`` tokens per request, no tool call, one connection, TLS on (the shipped ``stream``
scenario). Profiles (``--profiles``): ``instant`` (every token ready at once: the transport's own ceiling),
``burst`` (~40,000 tok/s: does the path keep up with a fast engine?) and ``fast`` (~1,000 tok/s: does
coalescing leave the inter-token latency at a normal rate alone? Its answers are cut to 1,000 tokens).
Each profile runs with ``coalesce_tokens = 0`` (one event per token) and ``coalesce_tokens = --coalesce``
(variant ``coalesce-N``). Prints the run's table, then the streaming table: tokens/s from the first content delta to
the last (p50 over requests, and the slowest), tokens per delta event, server CPU per token (the server
process's CPU over the cell ÷ its output tokens), bytes down per token, and the gaps between delta events.

  python scripts/stream_bench.py                                  # ~1 min on 2 cores
  python scripts/stream_bench.py --profiles instant --transports grpc --coalesce 16
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from loadtests.cli.run import format_table, print_warnings
from loadtests.commands.bench import Group, run_matrix

TRANSPORTS = ("https", "https-raw", "ws", "grpc")
FAST_TOKENS = 1000
"""The answer length at a paced model profile (``fast``: one second at ~1,000 tok/s)."""


def groups(profiles: list[str], transports: list[str], coalesce: int, tokens: int, rollouts: int) -> list[Group]:
    """One group per profile and coalescing setting; every transport in each, at state ``full``."""

    def sizing(profile: str) -> dict[str, int]:
        # a paced profile's answer takes tokens ÷ rate seconds: ~1 s per request at most
        n = min(tokens, FAST_TOKENS) if profile in ("fast", "frontier", "h200-8b", "calibration") else tokens
        return {"rollouts": rollouts, "rounds": min(3, rollouts), "warmup": 1, "answer_tokens": n}

    return [
        Group(
            scenario="stream",
            profile=profile,
            concurrency=1,
            states={t: ("full",) for t in transports},
            sizing=sizing(profile),
            variant=f"coalesce-{n}" if n else "default",
            server_settings={"coalesce_tokens": n},
        )
        for profile in profiles
        for n in (0, coalesce)
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profiles", default="instant,burst,fast", help="sim profiles (default instant,burst,fast)")
    p.add_argument("--transports", default=",".join(TRANSPORTS), help=f"default {','.join(TRANSPORTS)}")
    p.add_argument("--coalesce", type=int, default=64, help="coalesce_tokens of the coalescing variant (64)")
    p.add_argument("--tokens", type=int, default=4000, help="answer length in tokens (default 4000)")
    p.add_argument("--rollouts", type=int, default=6, help="requests per cell (default 6, in 3 rounds)")
    p.add_argument("--out", type=Path, default=None, help="run directory (default: a temporary one)")
    args = p.parse_args(argv)
    if args.coalesce < 2:
        p.error("--coalesce must be at least 2 (1 would be the same as off)")
    out = args.out or Path(tempfile.mkdtemp(prefix="turnbench-stream-")) / "run"
    run = run_matrix(
        groups(args.profiles.split(","), args.transports.split(","), args.coalesce, args.tokens, args.rollouts),
        out,
        argv=sys.argv,
        quiet=False,
    )
    print(format_table(run))
    print_warnings(run, sys.stdout)
    print(f"run directory: {run.path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
