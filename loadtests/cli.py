"""The ``turnbench`` command line.

It lives in ``loadtests``, the top of the dependency chain (turnbench ← servers, clients ← loadtests). The
``serve`` subcommand is :mod:`servers.cli`, mounted here: a server process never imports the harness.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from loadtests import run_cli  # light: argparse and the scenario loader only
from servers import cli as serve_cli
from turnbench.engine import calibrate  # light: argparse until the command runs
from turnbench.settings import parse_stage_map

EPILOG = """\
examples:
  turnbench serve https --port 8443                 # HTTPS+SSE on 8443, TLS with a generated CA
  turnbench serve ws --no-tls --profile frontier    # WebSocket mode, ~65 tok/s model
  turnbench run --scenario agent-20 --transports https,ws,grpc
  make bench                                        # the full reproducible report
"""


def _lazy(module: str, name: str) -> Callable[[argparse.Namespace], int]:
    """A command imported only when it runs (pandas and matplotlib stay out of ``turnbench serve``)."""

    def cmd(args: argparse.Namespace) -> int:
        import importlib

        return int(getattr(importlib.import_module(module), name)(args))

    return cmd


def add_report_commands(sub: Any) -> None:
    """``bench``, ``report``, ``compare``, ``gate`` and ``migration`` (issue #7)."""
    b = sub.add_parser(
        "bench",
        help="the fixed benchmark matrix -> reports/latest/",
        description="Run the fixed, seeded matrix (https full/store, ws connection/store, grpc "
        "connection x instant/fast/frontier on agent-20 at concurrency 1 (and 4 below frontier), "
        "coding-agent-50 at instant/fast, option A (ws-long) beside B, the ablations and the calibration), "
        "then the migration cost and the measurements beyond the matrix (cross-host state when "
        "redis-server is installed, steering, fan-out, warm-up), then write report.md (the verdict first), "
        "report.html (plots embedded), summary.json and the raw samples to OUT/runs/<UTC stamp>/ and copy "
        "them to OUT/latest/ (replaced). Within 10 min on a busy 2-core machine; --quick about 2 min on a "
        "quiet one.",
    )
    b.add_argument("--quick", action="store_true", help="the ~1 minute matrix (agent-20, instant+fast, c=1)")
    b.add_argument(
        "--out",
        type=Path,
        default=Path("reports"),
        metavar="DIR",
        help="reports root: writes DIR/latest/ and DIR/runs/<stamp>/ (default: reports)",
    )
    b.add_argument(
        "--no-migration-runtime",
        dest="migration_runtime",
        action="store_false",
        help="skip measuring reconnect+rehydrate vs full resend after a dropped connection",
    )
    b.add_argument(
        "--budget-s",
        type=float,
        default=600.0,
        metavar="S",
        help="end within S seconds however busy the machine: measured rounds that would overrun are dropped "
        "whole and the report says so (default 600; 0: no budget)",
    )
    b.add_argument(
        "--no-extras",
        dest="extras",
        action="store_false",
        help="skip the measurements beyond the matrix (cross-host state over Redis and SQLite, steering, "
        "fan-out, warm-up); their report sections then say how to measure them",
    )
    b.add_argument("--quiet", action="store_true", help="no progress output")
    b.set_defaults(func=_lazy("loadtests.bench", "cmd_bench"))
    r = sub.add_parser(
        "report",
        help="rebuild a report from saved samples",
        description="Rebuild report.md, report.html, plots/ and summary.json from a run directory "
        "(turns/rollouts Parquet or JSONL, run.json and, if there, migration.json, as `turnbench "
        "run`/`bench` write them).",
    )
    r.add_argument("run_dir", type=Path, metavar="DIR", help="the run directory")
    r.add_argument("--out", type=Path, metavar="OUT", help="where to write the report (default: DIR itself)")
    r.set_defaults(func=_lazy("loadtests.report", "cmd_report"))
    c = sub.add_parser(
        "compare",
        help="put two runs side by side",
        description="Per cell present in both runs: median rollout_ms and ttft_ms in A and B, and "
        "B vs A in % with the bootstrap 95% CI of the ratio of medians.",
    )
    c.add_argument("a", type=Path, metavar="A", help="first run directory (the reference)")
    c.add_argument("b", type=Path, metavar="B", help="second run directory")
    c.add_argument("--md", type=Path, metavar="OUT", help="also write the table as Markdown to OUT")
    c.set_defaults(func=_lazy("loadtests.gate", "cmd_compare"))
    g = sub.add_parser(
        "gate",
        help="compare a quick run with reports/baseline.json; non-zero on regression",
        description="Run a short matrix (under a minute on a busy 2-core machine: agent-20's workload, "
        "instant profile) and judge it against the baseline: each pipeline stage's CPU per turn and "
        "the server's and client's other CPU, divided by the cell's speed factor (the median of its "
        "stages' current/baseline CPU, so a slower or busier machine does not fail it), ratios of "
        "median rollout time between cells, and total CPU per turn scaled by a reference workload, "
        "with bootstrap 95% CIs. Exit 0: pass; 1: a metric regressed beyond its tolerance; 2: usage "
        "error or missing baseline.",
    )
    g.add_argument(
        "--baseline",
        type=Path,
        default=Path("reports/baseline.json"),
        metavar="PATH",
        help="the committed baseline (default: reports/baseline.json)",
    )
    g.add_argument(
        "--write-baseline",
        action="store_true",
        help="measure and (over)write the baseline instead of judging (`make baseline`)",
    )
    g.add_argument(
        "--burn",
        type=parse_stage_map,
        action="append",
        default=[],
        metavar="STAGE=US[,...]",
        help="burn this much CPU (us per request) in a pipeline stage on every server: the "
        "deliberately slowed path that must fail the gate, e.g. --burn render=2000",
    )
    g.add_argument(
        "--out", type=Path, metavar="DIR", help="run directory for the gate run (default: reports/runs/<stamp>-gate)"
    )
    g.add_argument("--run", type=Path, metavar="DIR", help="judge an existing gate run directory, run nothing")
    g.add_argument(
        "--ratio-tolerance",
        type=float,
        default=0.25,
        metavar="F",
        help="a ratio fails when its CI is above baseline x (1+F) (default 0.25)",
    )
    g.add_argument(
        "--cpu-tolerance",
        type=float,
        default=1.0,
        metavar="F",
        help="a total-CPU-per-turn metric (scaled by a reference workload) fails when its CI is above "
        "baseline x (1+F) (default 1.0: a guard against everything getting slower at once)",
    )
    g.add_argument(
        "--tolerance",
        action="append",
        default=[],
        metavar="KIND=F",
        help="the tolerance of a metric kind: stage (a pipeline stage's CPU, default 0.3), process (the "
        "server's CPU outside the stages, the client's, default 0.3), ratio, cpu; repeatable",
    )
    g.set_defaults(func=_lazy("loadtests.gate", "cmd_gate"))
    m = sub.add_parser(
        "migration",
        help="migration cost per transport, computed from the code",
        description="Lines a client writes to move from the HTTPS client (normalized source, "
        "difflib), schema artefacts, new dependencies, byte-identical request bodies, the official "
        "SDK diff; with --runtime also the measured cost of a dropped connection mid-rollout.",
    )
    m.add_argument(
        "--runtime",
        action="store_true",
        help="also measure reconnect + store hydration vs full resend (starts an in-process server)",
    )
    m.add_argument("--transport", default="ws", help="transport for --runtime (default ws; inproc works too)")
    m.add_argument("--rollouts", type=int, default=3, metavar="N", help="rollouts per strategy for --runtime")
    m.add_argument("--json", type=Path, metavar="OUT", help="also write the numbers as JSON to OUT")
    m.set_defaults(func=_lazy("loadtests.migration", "cmd_migration"))


ADVISE_DESCRIPTION = """\
Predicted rollout time per transport and state for your agent's shape (turns, tool output size, model speed,
network), from a cost model fitted to what this machine measured (per-turn API overhead against request and
history size, connect time; the first call measures it, ~1 min, into reports/advise/model.json). Prints each
transport's time, its gain over https/full and https/store, and the crossover (the fewest turns at which
ws/connection wins); --plot draws the gain against turns; --validate compares predictions with measured runs.

  turnbench advise --turns 21 --tool-output-kb 4 --tok-s 1000 --rtt-ms 20 --plot /tmp/advise.png
  turnbench advise --trace loadtests/traces/messages-sample.jsonl
"""

RECORD_DESCRIPTION = """\
A Responses-API proxy for a real agent app: point its base_url at http://HOST:PORT/v1; everything is forwarded
unchanged to --upstream (HTTPS+SSE and WebSocket mode) while one trace line per request is written: input
items' kinds, sizes, token counts and hashes (content only with --keep-content), the new tool outputs, the
client's gap since the previous response, the answer's kind and output tokens, TTFT and duration upstream.
Stop it with Ctrl-C; replay the trace over every transport with `turnbench run --trace FILE`.

  turnbench record --upstream https://127.0.0.1:8443/v1 --ca /tmp/turnbench-ca.pem --listen 127.0.0.1:8800
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="turnbench",
        description="Measure what the API transport costs an LLM agent loop: the same Responses-API "
        "workload over HTTPS+SSE, WebSocket and gRPC, sharing one state cache and one model core.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    s = sub.add_parser(
        "serve",
        help="run one transport's server",
        description="Run one transport's "
        "server on the shared core. SIGTERM or Ctrl-C drains in-flight responses and stops.",
    )
    serve_cli.add_serve_arguments(s)
    s.set_defaults(func=serve_cli.cmd_serve)
    r = sub.add_parser(
        "run",
        help="run a scenario over transports and print a summary",
        description=run_cli.DESCRIPTION,
        epilog=run_cli.EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run_cli.add_run_arguments(r)
    r.set_defaults(func=run_cli.cmd_run)
    add_report_commands(sub)
    rec = sub.add_parser(
        "record",
        help="a Responses proxy that writes your agent's shape as a trace (replay it with run --trace)",
        description=RECORD_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rec.add_argument(
        "--upstream",
        required=True,
        metavar="URL",
        help="the Responses server's base URL, e.g. https://127.0.0.1:8443/v1",
    )
    rec.add_argument(
        "--listen",
        default="127.0.0.1:8800",
        metavar="HOST:PORT",
        help="where the agent connects, plain HTTP (default 127.0.0.1:8800; port 0 picks one and prints PORT=N)",
    )
    rec.add_argument("--ca", metavar="PATH", help="CA certificate (PEM) of an upstream with a private certificate")
    rec.add_argument(
        "--trace", type=Path, metavar="FILE", help="trace to write (default reports/traces/<UTC stamp>.jsonl)"
    )
    rec.add_argument(
        "--keep-content", action="store_true", help="keep each input item's content (default: sizes and hashes)"
    )
    rec.set_defaults(func=_lazy("loadtests.record", "cmd_record"))
    adv = sub.add_parser(
        "advise",
        help="predicted rollout time per transport for your agent, from a cost model fitted on this machine",
        description=ADVISE_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    adv.add_argument("--turns", type=int, default=21, help="requests per rollout: tool calls + 1 (default 21)")
    adv.add_argument("--tool-output-kb", type=float, default=4.0, help="KB per tool output (default 4)")
    adv.add_argument("--gap-ms", type=float, default=0.0, help="client time per tool call, ms (default 0)")
    adv.add_argument("--tok-s", type=float, default=1000.0, help="the model's decode rate (default 1000)")
    adv.add_argument("--answer-tokens", type=int, default=64, help="tokens in the final answer (default 64)")
    adv.add_argument("--rtt-ms", type=float, default=0.0, help="network round trip, ms (default 0: loopback)")
    adv.add_argument("--bandwidth-mbps", type=float, default=None, help="link rate each way (default unlimited)")
    adv.add_argument("--trace", type=Path, metavar="FILE", help="the workload of a trace's longest conversation")
    adv.add_argument("--model", type=Path, default=Path("reports/advise/model.json"), help="the fitted model")
    adv.add_argument("--fit", action="store_true", help="measure and fit the model again (~1 min)")
    adv.add_argument("--plot", type=Path, metavar="PNG", help="plot the gain over https/full against turns")
    adv.add_argument(
        "--validate", type=Path, nargs="+", metavar="RUN_DIR", help="prediction error against measured runs"
    )
    adv.set_defaults(func=_lazy("loadtests.advise", "cmd_advise"))
    k = sub.add_parser(
        "calibrate",
        help="measure an engine's prefill and decode, write a sim profile",
        description=calibrate.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    calibrate.add_calibrate_arguments(k)
    k.set_defaults(func=_lazy("turnbench.engine.calibrate", "cmd_calibrate"))
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
