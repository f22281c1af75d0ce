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
from pathlib import Path
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
    "http2": "https only: serve HTTP/2 with hypercorn (a variant; HTTP/1.1 on uvicorn is the default)",
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


def _lazy(module: str, name: str) -> Callable[[argparse.Namespace], int]:
    """A command imported only when it runs (pandas and matplotlib stay out of ``turnbench serve``)."""

    def cmd(args: argparse.Namespace) -> int:
        import importlib

        return int(getattr(importlib.import_module(module), name)(args))

    return cmd


def add_report_commands(sub: Any) -> None:
    """``bench``, ``report``, ``compare``, ``gate`` and ``migration`` (issue #7)."""
    b = sub.add_parser("bench", help="the fixed benchmark matrix -> reports/latest/",
                       description="Run the fixed, seeded matrix (https full/store, ws connection/store, grpc "
                       "connection x instant/fast/frontier x concurrency 1,4 on agent-20 and coding-agent-50 "
                       "(frontier: agent-20 only), the ablations and the calibration), then write report.md, "
                       "report.html (plots embedded), summary.json and the raw samples to OUT/runs/<UTC stamp>/ "
                       "and copy them to OUT/latest/ (replaced). About 8 min on 2 cores; --quick under 1 min.")
    b.add_argument("--quick", action="store_true", help="the ~1 minute matrix (agent-20, instant+fast, c=1)")
    b.add_argument("--out", type=Path, default=Path("reports"), metavar="DIR",
                   help="reports root: writes DIR/latest/ and DIR/runs/<stamp>/ (default: reports)")
    b.add_argument("--no-migration-runtime", dest="migration_runtime", action="store_false",
                   help="skip measuring reconnect+rehydrate vs full resend after a dropped connection")
    b.add_argument("--quiet", action="store_true", help="no progress output")
    b.set_defaults(func=_lazy("loadtests.bench", "cmd_bench"))
    r = sub.add_parser("report", help="rebuild a report from saved samples",
                       description="Rebuild report.md, report.html, plots/ and summary.json from a run directory "
                       "(turns/rollouts Parquet or JSONL and run.json, as `turnbench run`/`bench` write them).")
    r.add_argument("run_dir", type=Path, metavar="DIR", help="the run directory")
    r.add_argument("--out", type=Path, metavar="OUT", help="where to write the report (default: DIR itself)")
    r.set_defaults(func=_lazy("loadtests.bench", "cmd_report"))
    c = sub.add_parser("compare", help="put two runs side by side",
                       description="Per cell present in both runs: median rollout_ms and ttft_ms in A and B, and "
                       "B vs A in % with the bootstrap 95% CI of the ratio of medians.")
    c.add_argument("a", type=Path, metavar="A", help="first run directory (the reference)")
    c.add_argument("b", type=Path, metavar="B", help="second run directory")
    c.add_argument("--md", type=Path, metavar="OUT", help="also write the table as Markdown to OUT")
    c.set_defaults(func=_lazy("loadtests.gate", "cmd_compare"))
    g = sub.add_parser("gate", help="compare a quick run with reports/baseline.json; non-zero on regression",
                       description="Run a short matrix (~20-60 s: agent-20, instant profile) and "
                       "judge it against the baseline: ratios of median rollout time between cells of the run "
                       "and server CPU per turn per stage (normalized by a reference workload), with bootstrap "
                       "95% CIs. Exit 0: pass; 1: a metric regressed beyond its tolerance; 2: usage error or "
                       "missing baseline.")
    g.add_argument("--baseline", type=Path, default=Path("reports/baseline.json"), metavar="PATH",
                   help="the committed baseline (default: reports/baseline.json)")
    g.add_argument("--write-baseline", action="store_true",
                   help="measure and (over)write the baseline instead of judging (`make baseline`)")
    g.add_argument("--burn", type=parse_stage_map, action="append", default=[], metavar="STAGE=US[,...]",
                   help="burn this much CPU (us per request) in a pipeline stage on every server: the "
                   "deliberately slowed path that must fail the gate, e.g. --burn render=2000")
    g.add_argument("--out", type=Path, metavar="DIR",
                   help="run directory for the gate run (default: reports/runs/<stamp>-gate)")
    g.add_argument("--run", type=Path, metavar="DIR", help="judge an existing gate run directory, run nothing")
    g.add_argument("--ratio-tolerance", type=float, default=0.25, metavar="F",
                   help="a ratio fails when its CI is above baseline x (1+F) (default 0.25)")
    g.add_argument("--cpu-tolerance", type=float, default=0.5, metavar="F",
                   help="a CPU-per-turn metric fails when its CI is above baseline x (1+F) (default 0.5)")
    g.set_defaults(func=_lazy("loadtests.gate", "cmd_gate"))
    m = sub.add_parser("migration", help="migration cost per transport, computed from the code",
                       description="Lines a client writes to move from the HTTPS client (normalized source, "
                       "difflib), schema artefacts, new dependencies, byte-identical request bodies, the official "
                       "SDK diff; with --runtime also the measured cost of a dropped connection mid-rollout.")
    m.add_argument("--runtime", action="store_true",
                   help="also measure reconnect + store hydration vs full resend (starts an in-process server)")
    m.add_argument("--transport", default="ws", help="transport for --runtime (default ws; inproc works too)")
    m.add_argument("--rollouts", type=int, default=3, metavar="N", help="rollouts per strategy for --runtime")
    m.add_argument("--json", type=Path, metavar="OUT", help="also write the numbers as JSON to OUT")
    m.set_defaults(func=_lazy("loadtests.migration", "cmd_migration"))


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
    from loadtests import runner_cli  # light: argparse and the scenario loader only

    r = sub.add_parser("run", help="run a scenario over transports and print a summary",
                       description=runner_cli.DESCRIPTION, epilog=runner_cli.EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    runner_cli.add_run_arguments(r)
    r.set_defaults(func=runner_cli.cmd_run)
    add_report_commands(sub)
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
