"""The ``turnbench`` command line: the parser, built from :data:`SUBCOMMANDS`, and ``main``.

It lives in ``loadtests``, the top of the dependency chain (turnbench ← servers, clients ← loadtests). The
``serve`` subcommand is :mod:`servers.cli` and ``calibrate`` is :mod:`turnbench.engine.calibrate`, mounted here:
a server process never imports the harness.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from loadtests.cli import advise, bench, conform, gate, migration, probe, record, report, run
from loadtests.cli.common import lazy
from servers import cli as serve_cli
from turnbench.engine import calibrate  # light: argparse until the command runs

EPILOG = """\
examples:
  turnbench serve https --port 8443                 # HTTPS+SSE on 8443, TLS with a generated CA
  turnbench serve ws --no-tls --profile frontier    # WebSocket mode, ~65 tok/s model
  turnbench run --scenario agent-20 --transports https,ws,grpc
  make bench                                        # the full reproducible report
"""


def _serve(sub: Any) -> None:
    s = sub.add_parser(
        "serve",
        help="run one transport's server",
        description="Run one transport's "
        "server on the shared core. SIGTERM or Ctrl-C drains in-flight responses and stops.",
    )
    serve_cli.add_serve_arguments(s)
    s.set_defaults(func=serve_cli.cmd_serve)


def _calibrate(sub: Any) -> None:
    k = sub.add_parser(
        "calibrate",
        help="measure an engine's prefill and decode, write a sim profile",
        description=calibrate.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    calibrate.add_calibrate_arguments(k)
    k.set_defaults(func=lazy("turnbench.engine.calibrate", "cmd_calibrate"))


SUBCOMMANDS: tuple[Callable[[Any], None], ...] = (
    _serve,
    run.register,
    bench.register,
    report.register,
    gate.register,
    migration.register,
    record.register,
    advise.register,
    conform.register,
    probe.register,
    _calibrate,
)
"""Each command's module adds its own parser and flags (``register(subparsers)``); ``--help`` lists them in
this order. A command's work is imported only when it runs."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="turnbench",
        description="Measure what the API transport costs an LLM agent loop: the same Responses-API "
        "workload over HTTPS+SSE, WebSocket and gRPC, sharing one state cache and one model core.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in SUBCOMMANDS:
        register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, OSError) as exc:
        print(f"turnbench: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
