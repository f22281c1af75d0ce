"""The ``turnbench`` command line.

It lives in ``loadtests`` (the top of the dependency chain: turnbench ← servers, clients ← loadtests), so the
core never imports an adapter. Every ``serve`` flag maps one-to-one onto a :class:`~turnbench.settings.Settings`
field, generated from the dataclass so the two cannot drift.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import signal
import sys
import tempfile
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from turnbench.settings import Settings, parse_stage_map

EPILOG = """\
examples:
  turnbench serve https --port 8443                 # HTTPS+SSE on 8443, TLS with a generated CA
  turnbench serve ws --no-tls --profile frontier    # WebSocket mode, ~65 tok/s model
  turnbench run --scenario agent-20 --transports https,ws,grpc
  make bench                                        # the full reproducible report
"""

HELP = {
    "host": "address to bind (default 127.0.0.1)",
    "port": "port to bind; 0 picks a free one and prints it",
    "tls": "serve TLS with a certificate generated at start-up (default on)",
    "api_key": "require 'Authorization: Bearer KEY' (default: no auth)",
    "ca_out": "write the generated CA certificate (PEM) here, for clients in other shells",
    "engine": "model-serving core: sim (calibrated cost model) or torch (real model, optional extra)",
    "profile": "sim profile: instant, frontier (~65 tok/s), fast (~1000 tok/s), h200-8b, calibration",
    "store": "ResponseStore for store=true: memory or sqlite:PATH",
    "usage_db": "SQLite file for durable usage records (auto: a temp file)",
    "tokens_per_chunk": "tokens per delta event (framing knob, the same on every transport)",
    "inject_ms": "named injected latency, e.g. safety=5,post=2 (asyncio sleep per stage, ms)",
    "burn_us": "named CPU burn per stage, e.g. render=200 (µs; the gate's slow-path knob)",
}


def add_settings_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per Settings field: ``--max-body-bytes`` ↔ ``max_body_bytes``; defaults come from Settings."""
    defaults = Settings()
    for f in dataclasses.fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        help_text = HELP.get(f.name, f"(default {default!r})")
        if isinstance(default, bool):
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                                help=help_text)
        elif f.name in ("inject_ms", "burn_us"):
            parser.add_argument(flag, dest=f.name, type=parse_stage_map, default=None, metavar="STAGE=N,...",
                                help=help_text)
        else:
            kind: Callable[[str], Any] = type(default) if isinstance(default, int | float) else str
            if f.name in ("ping_interval_s", "ping_timeout_s"):
                kind = float
            parser.add_argument(flag, dest=f.name, type=kind, default=None, help=help_text)


def settings_from_args(args: argparse.Namespace) -> Settings:
    names = {f.name for f in dataclasses.fields(Settings)}
    return Settings.from_env(**{k: v for k, v in vars(args).items() if k in names})


def _run(coro: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(coro)
    except ImportError:
        return asyncio.run(coro)


async def _serve(transport: str, settings: Settings) -> int:
    from servers.base import start_server

    if settings.tls and not settings.ca_out:
        settings = settings.replace(ca_out=os.path.join(tempfile.mkdtemp(prefix="turnbench-"), "ca.pem"))
    server = await start_server(transport, settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"turnbench {transport} server listening on {server.url}", flush=True)
    if settings.tls:
        print(f"CA certificate: {settings.ca_out}", flush=True)
    print(f"PORT={server.port}", flush=True)
    await stop.wait()
    print("draining…", flush=True)
    await server.stop()
    server.service.close()
    print("stopped", flush=True)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    return _run(_serve(args.transport, settings_from_args(args)))


def not_built(issue: int, what: str) -> Callable[[argparse.Namespace], int]:
    def cmd(args: argparse.Namespace) -> int:
        print(f"turnbench {what}: not built yet (issue #{issue})", file=sys.stderr)
        return 2

    return cmd


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="turnbench",
        description="Measure what the API transport costs an LLM agent loop: the same Responses-API "
        "workload over HTTPS+SSE, WebSocket and gRPC, sharing one state cache and one model core.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    s = sub.add_parser("serve", help="run one transport's server", description="Run one transport's "
                       "server on the shared core. SIGTERM or Ctrl-C drains in-flight responses and stops.")
    s.add_argument("transport", choices=("https", "ws", "grpc"))
    add_settings_flags(s)
    s.set_defaults(func=cmd_serve)
    for name, issue, text in (
        ("run", 6, "run a scenario over transports and print a summary"),
        ("bench", 7, "the fixed benchmark matrix → reports/latest/"),
        ("report", 7, "rebuild a report from saved samples"),
        ("compare", 7, "put two runs side by side"),
        ("gate", 7, "compare a quick run with reports/baseline.json; non-zero on regression"),
        ("migration", 7, "migration cost per transport, computed from the code"),
    ):
        sp = sub.add_parser(name, help=text, description=text)
        sp.set_defaults(func=not_built(issue, name))
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
