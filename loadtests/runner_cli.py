"""``turnbench run`` flags and command. Light on purpose: ``turnbench serve`` (the server processes) builds
the same parser, so nothing heavy is imported until the command actually runs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from loadtests.scenarios import Scenario, available_scenarios, load_scenario

__all__ = ["DESCRIPTION", "EPILOG", "add_run_arguments", "cmd_run", "config_from_args"]

DESCRIPTION = """\
Run agent rollouts (model → tool call → tool result → …) over transports and state strategies and print a
summary. Each server runs in its own process on loopback (unless --target); cells (scenario × transport ×
state × overrides) are interleaved round by round; warm-up rollouts are excluded; raw samples, the run
record and the summary go to the run directory."""

EPILOG = """\
examples:
  turnbench run --scenario agent-20 --transports https,ws,grpc
  turnbench run --scenario agent-20,calibration              # + harness self-validation (adds inproc)
  turnbench run --scenario agent-5 --rate 2,4 --no-tls        # open loop at 2 and 4 rollouts/s
  turnbench run --scenario chat-1 --set tokens_per_chunk=4 --variant tpc4
  turnbench run --target ws=wss://127.0.0.1:8443/v1 --ca /tmp/ca.pem   # only the server(s) targeted

The run directory holds turns.parquet/.jsonl, rollouts.parquet/.jsonl, run.json and summary.json.
"""

# Settings the runner owns for the servers it starts; --set may not change them.
RUNNER_OWNED = ("host", "port", "tls", "ca_out", "usage_db", "profile", "api_key")


def _csv(kind: type) -> Any:
    def parse(raw: str) -> tuple[Any, ...]:
        try:
            return tuple(kind(x.strip()) for x in raw.split(",") if x.strip())
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {kind.__name__}: {raw!r}") \
                from exc

    parse.__name__ = f"list of {kind.__name__}"
    return parse


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """Every ``turnbench run`` flag, each with its meaning and default."""
    w = p.add_argument_group("workload")
    w.add_argument("--scenario", action="append", metavar="NAME[,NAME…]",
                   help="scenario name(s) or .toml path(s); repeatable (default: agent-20). Shipped: "
                   + ", ".join(available_scenarios()))
    w.add_argument("--list-scenarios", action="store_true", help="print the shipped scenarios and exit")
    w.add_argument("--transports", type=_csv(str), metavar="LIST",
                   help="client transports, comma-separated: https, ws, grpc, inproc, sdk-…, grpc-json … "
                   "(default: every transport whose server is built; 'calibration' adds inproc)")
    w.add_argument("--states", type=_csv(str), metavar="LIST",
                   help="state strategies to keep, from full, store, connection (default: per transport — "
                   "https: full,store; ws/grpc: connection,store,full)")
    w.add_argument("--profile", type=_csv(str), metavar="LIST",
                   help="sim profile(s) overriding the scenario's: instant, frontier (~65 tok/s), fast "
                   "(~1000 tok/s), h200-8b, calibration; several multiply the cells")
    w.add_argument("--concurrency", type=_csv(int), metavar="LIST",
                   help="closed loop: rollouts in flight, overriding the scenario; several multiply the cells")
    w.add_argument("--rate", type=_csv(float), metavar="LIST",
                   help="open loop: Poisson arrivals in rollouts/s (wins over --concurrency); the clock of a "
                   "rollout starts at its scheduled arrival, so queueing is counted")
    w.add_argument("--rollouts", type=int, metavar="N", help="measured rollouts per cell (default: scenario's)")
    w.add_argument("--warmup", type=int, metavar="N", help="warm-up rollouts per cell, excluded from summaries")
    w.add_argument("--rounds", type=int, metavar="N", help="interleaving rounds (A B C A B C …)")
    w.add_argument("--seed", type=int, metavar="N", help="seed of the scripted model, tools and arrivals")
    w.add_argument("--tls", action=argparse.BooleanOptionalAction, default=None,
                   help="TLS on the servers the runner starts (default: the scenario's, normally on)")
    s = p.add_argument_group("servers")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="settings",
                   help="a server Settings field for every server started (and inproc), e.g. "
                   "tokens_per_chunk=4, overlap_post=false, inject_ms=safety=5 (listed in run.json)")
    s.add_argument("--variant", default="default", metavar="LABEL",
                   help="label for this configuration (ablation), stored in every sample row")
    s.add_argument("--target", action="append", default=[], metavar="TRANSPORT=URL",
                   help="use an already-running server instead of starting one, e.g. "
                   "https=https://127.0.0.1:8443/v1, ws=wss://…/v1, grpc=127.0.0.1:50051; repeatable")
    s.add_argument("--ca", metavar="PATH", help="CA certificate (PEM) of --target servers that use TLS")
    s.add_argument("--api-key", metavar="KEY", help="bearer key for --target servers (and servers started)")
    s.add_argument("--server-timeout-s", type=float, default=30.0, metavar="S",
                   help="how long a started server may take to listen and pass its health check (default 30)")
    o = p.add_argument_group("output and load generator")
    o.add_argument("--out", type=Path, metavar="DIR",
                   help="run directory (default: reports/runs/<UTC timestamp>-<scenario>)")
    o.add_argument("--quiet", action="store_true", help="no progress bar or server lines (table still printed)")
    o.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop",
                   help="client event loop (default uvloop; recorded in run.json)")
    o.add_argument("--gc", choices=("between-chunks", "auto"), default="between-chunks",
                   help="Python's garbage collector in the client: 'between-chunks' (default) collects between "
                   "cells and pauses it while one runs (a full collection stalls the loop 20-50 ms); 'auto' "
                   "leaves it on")
    o.add_argument("--cpu-threshold", type=float, default=0.9, metavar="F",
                   help="warn when the load generator uses more than F of a core (default 0.9)")
    o.add_argument("--lag-threshold-ms", type=float, default=5.0, metavar="MS",
                   help="warn when its event-loop lag p99 exceeds MS (default 5)")


def _scenarios(args: argparse.Namespace) -> list[Scenario]:
    names = [n.strip() for raw in (args.scenario or ["agent-20"]) for n in raw.split(",") if n.strip()]
    overrides = {k: v for k, v in (("rollouts", args.rollouts), ("warmup", args.warmup),
                                   ("rounds", args.rounds), ("seed", args.seed), ("tls", args.tls))
                 if v is not None}
    out: list[Scenario] = []
    for name in dict.fromkeys(names):
        sc = load_scenario(name)
        if "rollouts" in overrides and "rounds" not in overrides:
            overrides_sc = {**overrides, "rounds": min(sc.rounds, overrides["rollouts"])}
        else:
            overrides_sc = overrides
        out.append(sc.replace(**overrides_sc) if overrides_sc else sc)
    return out


def _settings(items: list[str]) -> dict[str, Any]:
    from turnbench.settings import parse_field

    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        if key in RUNNER_OWNED:
            raise ValueError(f"--set {key}: the runner sets this itself (use --profile, --tls, --api-key)")
        try:
            out[key] = parse_field(key, raw)
        except KeyError as exc:
            raise ValueError(f"--set {key}: not a server setting") from exc
    return out


def config_from_args(args: argparse.Namespace) -> Any:
    """A :class:`loadtests.runner.RunConfig` from parsed flags (heavy imports happen here)."""
    from loadtests.runner import RunConfig
    from loadtests.scenarios import PROFILES
    from turnbench.transports import DEFAULT_TRANSPORTS

    targets: dict[str, str] = {}
    for item in args.target:
        t, sep, url = item.partition("=")
        if not sep or not url:
            raise ValueError(f"--target {item!r}: expected TRANSPORT=URL")
        targets[t.strip()] = url.strip()
    transports = list(args.transports) if args.transports else None
    if transports is None and targets:  # only the servers the user pointed at
        transports = list(targets)
    if transports is None:
        transports = list(DEFAULT_TRANSPORTS)
    for prof in args.profile or ():
        if prof not in PROFILES:
            raise ValueError(f"--profile: unknown profile {prof!r}; choose from {', '.join(PROFILES)}")
    for s in args.states or ():
        if s not in ("full", "store", "connection"):
            raise ValueError(f"--states: unknown state strategy {s!r}")
    return RunConfig(
        scenarios=_scenarios(args), transports=transports, states=args.states, profiles=args.profile,
        concurrency=args.concurrency, rates_rps=args.rate, variant=args.variant,
        server_settings=_settings(args.settings), targets=targets, ca_path=args.ca, api_key=args.api_key,
        out_dir=args.out, quiet=args.quiet, loop=args.loop, gc=args.gc, cpu_threshold=args.cpu_threshold,
        lag_p99_threshold_ms=args.lag_threshold_ms, server_timeout_s=args.server_timeout_s,
        argv=["turnbench", *sys.argv[1:]])


def cmd_run(args: argparse.Namespace) -> int:
    """``turnbench run``: returns 0, or non-zero if a server exited badly or nothing succeeded."""
    if args.list_scenarios:
        for name in available_scenarios():
            sc = load_scenario(name)
            load = f"rate {sc.arrival_rate_rps:g}/s" if sc.arrival_rate_rps else f"concurrency {sc.concurrency}"
            print(f"{name:<18} {sc.tool_calls:>3} tool calls · {sc.profile:<11} · {load:<15} {sc.description}")
        return 0
    from loadtests.runner import run

    _, status = run(config_from_args(args))
    return status
