"""``turnbench run``: its flags, the :class:`~loadtests.model.RunConfig` they make, and what the command
prints (the per-cell table from ``summary.json``, the warnings, the exit status). Light on purpose: the
``turnbench`` parser is built for every command, so nothing heavy is imported until a run actually starts."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from loadtests.analysis.records import CellSummary, MetricStats, TurnStats, stat
from loadtests.workload.scenarios import PROFILES, Scenario, available_scenarios, load_scenario
from turnbench.transports import DEFAULT_TRANSPORTS, STATES

if TYPE_CHECKING:
    from loadtests.execution.plan import RunConfig
    from loadtests.runs.rundir import RunDir

__all__ = [
    "DESCRIPTION",
    "EPILOG",
    "add_run_arguments",
    "cmd_run",
    "config_from_args",
    "format_table",
    "print_warnings",
]

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
  turnbench run --scenario agent-20 --rtt-ms 0,20,80                  # each transport at three network RTTs
  turnbench run --target ws=wss://127.0.0.1:8443/v1 --ca /tmp/ca.pem   # only the server(s) targeted

The run directory holds turns.parquet/.jsonl, rollouts.parquet/.jsonl, run.json and summary.json.
"""

TABLE_TURNS = (1, 10, 20)  # 1-based: turn k is the k-th request of a rollout
# Settings the runner owns for the servers it starts; --set may not change them.
RUNNER_OWNED = ("host", "port", "tls", "ca_out", "usage_db", "profile", "api_key")


def _csv(kind: type) -> Any:
    def parse(raw: str) -> tuple[Any, ...]:
        try:
            return tuple(kind(x.strip()) for x in raw.split(",") if x.strip())
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {kind.__name__}: {raw!r}") from exc

    parse.__name__ = f"list of {kind.__name__}"
    return parse


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """Every ``turnbench run`` flag, each with its meaning and default."""
    w = p.add_argument_group("workload")
    w.add_argument(
        "--scenario",
        action="append",
        metavar="NAME[,NAME…]",
        help="scenario name(s) or .toml path(s); repeatable (default: agent-20). Shipped: "
        + ", ".join(available_scenarios()),
    )
    w.add_argument("--list-scenarios", action="store_true", help="print the shipped scenarios and exit")
    w.add_argument(
        "--trace",
        action="append",
        metavar="FILE",
        help="replay a recorded or imported agent trace (turnbench record, Mooncake JSONL, OpenAI-style "
        "transcripts; see --trace-format): one rollout per conversation, its tool calls, tool output sizes, "
        "gaps and answer lengths, on the --scenario's profile and sizing (default agent-20's); repeatable",
    )
    w.add_argument(
        "--trace-format",
        choices=("auto", "turnbench", "mooncake", "messages"),
        default="auto",
        help="the trace's format (default auto: told apart by its keys)",
    )
    w.add_argument(
        "--trace-gap-ms",
        type=float,
        default=0.0,
        metavar="MS",
        help="client time between turns for transcripts, which record none (default 0)",
    )
    w.add_argument(
        "--transports",
        type=_csv(str),
        metavar="LIST",
        help="client transports, comma-separated, from the transport table: https, https-h2, ws, "
        f"grpc, inproc, sdk-…, grpc-json … (default: {','.join(DEFAULT_TRANSPORTS)}; 'calibration' "
        "adds inproc). Each gets a server started with the settings its row needs (https-h2: http2)",
    )
    w.add_argument(
        "--states",
        type=_csv(str),
        metavar="LIST",
        help=f"state strategies to keep, from {', '.join(STATES)} (default: per transport — "
        "https: full,store; ws/grpc: connection,store,full)",
    )
    w.add_argument(
        "--profile",
        type=_csv(str),
        metavar="LIST",
        help="sim profile(s) overriding the scenario's: instant, frontier (~65 tok/s), fast (~1000 tok/s), "
        "burst (~40,000 tok/s), h200-8b, calibration, or file:PATH (written by `turnbench calibrate`); "
        "several multiply the cells",
    )
    w.add_argument(
        "--concurrency",
        type=_csv(int),
        metavar="LIST",
        help="closed loop: rollouts in flight, overriding the scenario; several multiply the cells",
    )
    w.add_argument(
        "--rate",
        type=_csv(float),
        metavar="LIST",
        help="open loop: Poisson arrivals in rollouts/s (wins over --concurrency); the clock of a "
        "rollout starts at its scheduled arrival, so queueing is counted",
    )
    w.add_argument(
        "--rtt-ms",
        type=_csv(float),
        metavar="LIST",
        help="emulated network between the clients and every server: round-trip time(s) in ms, e.g. 0,20,80 "
        "(a delaying TCP proxy per server, python -m loadtests.execution.netem; TLS stays end to end); several "
        "multiply the cells (default 0: loopback)",
    )
    w.add_argument(
        "--bandwidth-mbps",
        type=float,
        metavar="F",
        help="the emulated link's rate each way, Mbit/s (with or without --rtt-ms; default unlimited)",
    )
    w.add_argument("--rollouts", type=int, metavar="N", help="measured rollouts per cell (default: scenario's)")
    w.add_argument("--warmup", type=int, metavar="N", help="warm-up rollouts per cell, excluded from summaries")
    w.add_argument("--rounds", type=int, metavar="N", help="interleaving rounds (A B C A B C …)")
    w.add_argument("--seed", type=int, metavar="N", help="seed of the scripted model, tools and arrivals")
    w.add_argument(
        "--compact-every",
        type=int,
        metavar="K",
        help="compact the history after every K-th tool-calling turn (POST /v1/responses/compact, then a new "
        "chain from its output; WebSocket and gRPC cells compact on an HTTPS server of the same deployment); "
        "0: never (default: the scenario's, coding-agent-compact's 10)",
    )
    w.add_argument(
        "--tls",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="TLS on the servers the runner starts (default: the scenario's, normally on)",
    )
    s = p.add_argument_group("servers")
    s.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="settings",
        help="a server Settings field for every server started (and inproc), e.g. "
        "tokens_per_chunk=4, overlap_post=false, inject_ms=safety=5 (listed in run.json)",
    )
    s.add_argument(
        "--variant",
        default="default",
        metavar="LABEL",
        help="label for this configuration (ablation), stored in every sample row",
    )
    s.add_argument(
        "--target",
        action="append",
        default=[],
        metavar="TRANSPORT=URL",
        help="use an already-running server instead of starting one, e.g. "
        "https=https://127.0.0.1:8443/v1, ws=wss://…/v1, grpc=127.0.0.1:50051 (a server protocol "
        "serves every transport of it; a transport name, e.g. https-h2=…, only that one); repeatable",
    )
    s.add_argument("--ca", metavar="PATH", help="CA certificate (PEM) of --target servers that use TLS")
    s.add_argument("--api-key", metavar="KEY", help="bearer key for --target servers (and servers started)")
    s.add_argument(
        "--server-timeout-s",
        type=float,
        default=30.0,
        metavar="S",
        help="how long a started server may take to listen and pass its health check (default 30)",
    )
    o = p.add_argument_group("output and load generator")
    o.add_argument(
        "--out", type=Path, metavar="DIR", help="run directory (default: reports/runs/<UTC timestamp>-<scenario>)"
    )
    o.add_argument("--quiet", action="store_true", help="no progress bar or server lines (table still printed)")
    o.add_argument(
        "--loop",
        choices=("uvloop", "asyncio"),
        default="uvloop",
        help="client event loop (default uvloop; recorded in run.json)",
    )
    o.add_argument(
        "--gc",
        choices=("between-chunks", "auto"),
        default="between-chunks",
        help="Python's garbage collector in the client: 'between-chunks' (default) collects between "
        "cells and pauses it while one runs (a full collection stalls the loop 20-50 ms); 'auto' "
        "leaves it on",
    )
    o.add_argument(
        "--cpu-pinning",
        choices=("auto", "off"),
        default="auto",
        help="'auto' (default) pins the load generator and each server to a CPU of its own when there are "
        "enough CPUs (one each plus one to spare), and says why not otherwise; 'off' never pins (run.json "
        "isolation)",
    )
    o.add_argument(
        "--cpu-threshold",
        type=float,
        default=0.9,
        metavar="F",
        help="warn when the load generator uses more than F of a core (default 0.9)",
    )
    o.add_argument(
        "--lag-threshold-ms",
        type=float,
        default=5.0,
        metavar="MS",
        help="warn when its event-loop lag p99 exceeds MS (default 5)",
    )


def _scenarios(args: argparse.Namespace) -> list[Scenario]:
    names = [n.strip() for raw in (args.scenario or ["agent-20"]) for n in raw.split(",") if n.strip()]
    if getattr(args, "trace", None):
        from loadtests.workload.trace import scenario_from_trace

        base = names[0] if args.scenario else "agent-20"
        names = []  # the traces replace the scenarios; --scenario names their base
        traces = [
            scenario_from_trace(t, fmt=args.trace_format, base=base, gap_ms=args.trace_gap_ms) for t in args.trace
        ]
    else:
        traces = []
    overrides = {
        k: v
        for k, v in (
            ("rollouts", args.rollouts),
            ("warmup", args.warmup),
            ("rounds", args.rounds),
            ("seed", args.seed),
            ("tls", args.tls),
            ("compact_every", args.compact_every),
        )
        if v is not None
    }
    out: list[Scenario] = []
    for name in dict.fromkeys(names):
        sc = load_scenario(name)
        if "rollouts" in overrides and "rounds" not in overrides:
            overrides_sc = {**overrides, "rounds": min(sc.rounds, overrides["rollouts"])}
        else:
            overrides_sc = overrides
        out.append(sc.replace(**overrides_sc) if overrides_sc else sc)
    for sc in traces:  # their rollouts are their conversations: only the rounds, warm-up, seed and TLS move
        keep = {k: v for k, v in overrides.items() if k != "rollouts"}
        out.append(sc.replace(**keep) if keep else sc)
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


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """A :class:`loadtests.model.RunConfig` from parsed flags (heavy imports happen here)."""
    from loadtests.execution.plan import RunConfig
    from loadtests.execution.procs import parse_targets

    targets = parse_targets(args.target)
    transports = list(args.transports) if args.transports else None
    if transports is None and targets:  # only the servers the user pointed at
        transports = list(targets)
    if transports is None:
        transports = list(DEFAULT_TRANSPORTS)
    for prof in args.profile or ():
        if prof.startswith("file:"):
            if not Path(prof[5:]).is_file():
                raise ValueError(f"--profile {prof}: no such file (write one with `turnbench calibrate`)")
        elif prof not in PROFILES:
            raise ValueError(
                f"--profile: unknown profile {prof!r}; choose from {', '.join(PROFILES)} or file:PATH "
                "(a profile `turnbench calibrate` wrote)"
            )
    for s in args.states or ():
        if s not in STATES:
            raise ValueError(f"--states: unknown state strategy {s!r}")
    rtts = tuple(args.rtt_ms) if args.rtt_ms else (0.0,)
    if any(r < 0 for r in rtts) or (args.bandwidth_mbps is not None and args.bandwidth_mbps <= 0):
        raise ValueError("--rtt-ms must be >= 0 and --bandwidth-mbps > 0")
    return RunConfig(
        rtt_ms=rtts,
        bandwidth_mbps=args.bandwidth_mbps,
        scenarios=_scenarios(args),
        transports=transports,
        states=args.states,
        profiles=args.profile,
        concurrency=args.concurrency,
        rates_rps=args.rate,
        variant=args.variant,
        server_settings=_settings(args.settings),
        targets=targets,
        ca_path=args.ca,
        api_key=args.api_key,
        out_dir=args.out,
        quiet=args.quiet,
        loop=args.loop,
        gc=args.gc,
        cpu_pinning=args.cpu_pinning,
        cpu_threshold=args.cpu_threshold,
        lag_p99_threshold_ms=args.lag_threshold_ms,
        server_timeout_s=args.server_timeout_s,
        argv=["turnbench", *sys.argv[1:]],
    )


def cmd_run(args: argparse.Namespace) -> int:
    """``turnbench run``: print the table and warnings; returns 0, or 1 if a server exited badly or no
    rollout succeeded."""
    if args.list_scenarios:
        for name in available_scenarios():
            sc = load_scenario(name)
            load = f"rate {sc.arrival_rate_rps:g}/s" if sc.arrival_rate_rps else f"concurrency {sc.concurrency}"
            print(f"{name:<18} {sc.tool_calls:>3} tool calls · {sc.profile:<11} · {load:<15} {sc.description}")
        return 0
    from loadtests.runs.runner import run

    result = run(config_from_args(args))
    print(format_table(result))
    status = print_warnings(result, file=sys.stderr)
    print(f"run directory: {result.path}")
    return status


# ---------------------------------------------------------------------------------------------- output


def _f(v: Any, digits: int = 1) -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{digits}f}"


def _pair(stats: MetricStats | TurnStats | None, digits: int = 1) -> str:
    if not stats:
        return "-"
    return f"{_f(stats.get('p50'), digits)}/{_f(stats.get('p99'), digits)}"


def _plain(markdown: str) -> str:
    """Markdown emphasis and code marks off, for the terminal."""
    return markdown.replace("**", "").replace("`", "")


def verdict_line(v: dict[str, Any]) -> str:
    """A verdict of ``summary.json`` as :meth:`loadtests.verdict.Verdict.line` words it."""
    from loadtests.analysis.verdict import Verdict

    fields: dict[str, Any] = {
        k: (tuple(x) if isinstance(x, list) and k in ("measured", "predicted") else x) for k, x in v.items()
    }
    return Verdict(**fields).line()


STREAM_MIN_TOKENS = 256
"""Cells whose answers average at least this many tokens get the streaming table."""


def _stream_block(cells: Mapping[str, CellSummary]) -> list[str]:
    """The streaming path of long-answer cells (the ``stream`` scenario): tokens/s after the first delta,
    tokens per delta event, server CPU and bytes down per token, ITL between delta events."""
    rows = [
        (c, s)
        for c in cells.values()
        if (s := c.get("stream")) is not None and s.get("tokens_per_turn", 0) >= STREAM_MIN_TOKENS
    ]
    if not rows:
        return []
    header = ["profile", "transport", "state", "variant", "tok/s p50 (min)", "tok/delta", "srv µs/tok", "down B/tok"]
    header.append("itl p50/p99")
    table = [header]
    for c, s in rows:
        table.append(
            [
                c["profile"],
                c["transport"],
                c["state"],
                c["variant"],
                f"{s['tok_s']:,.0f} ({s['tok_s_min']:,.0f})",
                _f(s["tokens_per_delta"], 1),
                _f(s["server_cpu_us_per_token"], 1),
                _f(s["bytes_down_per_token"], 0),
                _pair(c["metrics"].get("itl_ms"), 3),
            ]
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    out = ["", "streaming (long answers): tokens/s from the first content delta to the last; server CPU per token"]
    out += [
        "  ".join(v.rjust(w) if i > 3 else v.ljust(w) for i, (v, w) in enumerate(zip(r, widths, strict=True)))
        for r in table
    ]
    return out


def format_table(run: RunDir) -> str:
    """Plain aligned text: one block per scenario/profile/load, one row per transport and state."""
    cells = run.summary.get("cells", {})
    blocks: dict[str, list[CellSummary]] = {}
    for c in cells.values():
        load = f"rate {c['arrival_rate_rps']:g}/s" if c["mode"] == "open" else f"concurrency {c['concurrency']}"
        head = f"{c['scenario']} · profile {c['profile']} · {load}" + (
            f" · variant {c['variant']}" if c["variant"] != "default" else ""
        )
        if c.get("rtt_ms") or c.get("bandwidth_mbps"):
            head += f" · network rtt {c.get('rtt_ms') or 0:g} ms" + (
                f", {c['bandwidth_mbps']:g} Mbit/s" if c.get("bandwidth_mbps") else ""
            )
        blocks.setdefault(head, []).append(c)
    header = [
        "transport",
        "state",
        "rollouts",
        "rollout_ms p50/p99",
        *(f"ttft t{k} p50/p99" for k in TABLE_TURNS),
        "up B/turn",
        "down B/turn",
        "srv cpu ms/turn",
        "connect_ms",
    ]
    lines = ["(ms; p50/p99 from raw samples; turn k = k-th request of a rollout; warm-up excluded)"]
    for head, rows in blocks.items():
        table = [header]
        for c in rows:
            by_turn = c.get("ttft_by_turn", {})
            table.append(
                [
                    c["transport"],
                    c["state"],
                    f"{c['n_rollouts']}" + (f" ({c['failed_rollouts']} failed)" if c["failed_rollouts"] else ""),
                    _pair(c["metrics"].get("rollout_ms")),
                    *(_pair(by_turn.get(str(k))) for k in TABLE_TURNS),
                    _f(stat(c, "bytes_up", "mean"), 0),
                    _f(stat(c, "bytes_down", "mean"), 0),
                    _f(c.get("server_cpu_ms_per_turn"), 2),
                    _f(stat(c, "connect_ms", "p50"), 2),
                ]
            )
        widths = [max(len(r[i]) for r in table) for i in range(len(header))]
        lines += ["", head]
        lines += [
            "  ".join(v.rjust(w) if i > 1 else v.ljust(w) for i, (v, w) in enumerate(zip(r, widths, strict=True)))
            for r in table
        ]
    lines += _stream_block(cells)
    for v in run.summary.get("verdicts") or []:
        lines += ["", _plain(verdict_line(v))]
        lines += [f"  - {_plain(c)}" for c in v.get("caveats") or []]
    calib = run.summary.get("calibration")
    if calib:
        lines += [
            "",
            f"calibration: known TTFT {calib['known_ttft_ms']:g} ms, ITL {calib['known_itl_ms']:g} ms; "
            "residual = measured - known (median)",
        ]
        for t, r in calib["by_transport"].items():
            lines.append(
                f"  {t:<12} ttft residual {_f(r['ttft_residual_ms'], 2):>7} ms  "
                f"itl residual {_f(r['itl_residual_ms'], 3):>7} ms  "
                f"minus inproc {_f(r.get('ttft_minus_inproc_ms'), 2):>7} ms  "
                f"(server pre-prefill stages {_f(r['server_pre_ms'], 2)} ms)"
            )
    return "\n".join(lines)


def print_warnings(run: RunDir, file: IO[str]) -> int:
    """Print saturation, failure and server-exit warnings. Returns: the exit status the run should have."""
    status = 0
    mon = run.meta["monitor"]
    if mon.get("saturated"):
        print(
            f"WARNING: the load generator saturated ({mon.get('reason')}): its own delays are in the "
            "latencies, which then blame the transport for the client. Lower the load or use more cores.",
            file=file,
        )
        system = mon.get("system") or {}
        busy, util = system.get("cpu_busy"), mon.get("cpu_util")
        if busy is not None and util is not None and util < 0.5:
            print(
                f"  the client itself used only {util:.0%} of a core; the machine was {busy:.0%} busy on "
                f"{system.get('cores')} cores (load average {system.get('loadavg_1m_end'):.1f}): the stalls "
                "come from CPU contention (the servers, other processes), which delays the client all "
                "the same",
                file=file,
            )
    for cid, m in mon.get("cells", {}).items():
        if m.get("saturated"):
            note = " (inproc runs the service in this process)" if ":inproc:" in cid else ""
            print(f"WARNING: cell {cid} saturated the load generator: {m.get('reason')}{note}", file=file)
    contended = {cid: m["contended"] for cid, m in mon.get("cells", {}).items() if m.get("contended")}
    if contended:
        first = next(iter(contended.values()))
        print(
            f"WARNING: {len(contended)} of {len(mon.get('cells', {}))} cells ran on a contended machine ({first}): "
            "their rollout times include waiting for a CPU; compare CPU figures, or rerun on a quieter machine",
            file=file,
        )
    cells = run.summary.get("cells", {})
    for cid, c in cells.items():
        if c["failed_rollouts"]:
            print(
                f"WARNING: {c['failed_rollouts']} of {c['n_rollouts'] + c['failed_rollouts']} rollouts "
                f"failed in {cid}: {c.get('first_error')}",
                file=file,
            )
    gaps = {
        what: [cid for cid, c in cells.items() if c["n_rollouts"] and not (c.get("provided") or {}).get(key, True)]
        for key, what in (
            (
                "stages",
                "no server stage timings (no `turnbench` extension in the response): the per-stage "
                "breakdown and the server-side decomposition are empty for",
            ),
            ("usage", "no usage in the final response: token counts (and tokens/s) are unknown for"),
        )
    }
    for what, cids in gaps.items():
        if cids:
            print(f"NOTE: the endpoint reported {what} {', '.join(cids)}", file=file)
    if cells and all(c["n_rollouts"] == 0 for c in cells.values()):
        status = 1
    for key, s in run.meta["servers"].items():
        if s["kind"] == "process" and s["exit_code"] != 0:
            print(f"ERROR: server {key} (pid {s['pid']}) exited with status {s['exit_code']}", file=file)
            status = 1
    return status


def register(sub: Any) -> None:
    """``turnbench run``: its parser and flags."""
    r = sub.add_parser(
        "run",
        help="run a scenario over transports and print a summary",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_run_arguments(r)
    r.set_defaults(func=cmd_run)
