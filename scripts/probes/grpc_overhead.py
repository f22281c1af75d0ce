"""Per-turn latency of a 20-turn rollout: gRPC typed codec vs gRPC json codec vs WebSocket, from one run.

Each server runs in its own process, started as ``turnbench run`` starts its servers
(:func:`loadtests.procs.start_server_process`, profile ``instant`` by default: no model time, so what is left
is API + transport overhead), TLS on. The same agent rollout (``turnbench run``'s,
:func:`loadtests.runner.cell_rollout`: 20 tool calls with 4 KB tool outputs, state ``connection``:
previous_response_id + new items on one stream; rollout k in round k) runs once per configuration per round,
in interleaved rounds (A B C … A B C) to cancel drift, after one discarded warm-up round; every rollout opens
a fresh connection (its time and CPU are in no turn).

The table gives, over all turns of all rounds: median and p99 ``turn_ms`` (send → terminal event),
median and p99 ``ttft_ms``, median bytes up/down per turn (payload + framing, as each client counts it),
and server / client CPU per turn (ms; the client's includes its tool calls, identical across configs).
The typed-vs-json difference is serialization; json-vs-ws is the transport (same JSON objects).

  python scripts/grpc_overhead.py                 # 10 rounds (210 turns per configuration)
  python scripts/grpc_overhead.py --rounds 20 --create --out /tmp/grpc_overhead.json
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson
import psutil

from clients.base import make_client
from loadtests.execution.plan import Cell
from loadtests.execution.procs import Endpoint, start_server_process
from loadtests.runs.runner import cell_rollout
from loadtests.workload.scenarios import Scenario, State, load_scenario


@dataclass
class Samples:
    turn_ms: list[float] = field(default_factory=list)
    ttft_ms: list[float] = field(default_factory=list)
    bytes_up: list[int] = field(default_factory=list)
    bytes_down: list[int] = field(default_factory=list)
    server_cpu_s: float = 0.0
    client_cpu_s: float = 0.0


def scenario(profile: str) -> Scenario:
    """20 tool calls, 4 KB tool outputs, at ``profile``."""
    return load_scenario("agent-20").replace(tool_output_bytes=4096, tool_output_sigma=0.0, seed=7, profile=profile)


async def one_rollout(c: Cell, index: int, endpoint: Endpoint, into: Samples | None) -> None:
    """Rollout ``index`` of ``c`` on a fresh connection; client and server CPU counted from after the
    connection is open until the answer."""
    assert endpoint.process is not None
    client = make_client(c.transport, endpoint.client_config())
    await client.connect()
    c0, s0 = time.process_time(), endpoint.process.cpu_s()
    try:
        result = await cell_rollout(client, c, index)
    finally:
        c1, s1 = time.process_time(), endpoint.process.cpu_s()
        await client.close()
    if not result.success or len(result.turns) != c.scenario.tool_calls + 1:
        raise RuntimeError(f"{c.cell}: {result.error} after {len(result.turns)} turns")
    if into is None:
        return
    into.client_cpu_s += c1 - c0
    into.server_cpu_s += s1 - s0
    for t in result.turns:
        into.turn_ms.append(t.turn_ms or 0.0)
        into.ttft_ms.append(t.ttft_ms or 0.0)
        into.bytes_up.append(t.bytes_up)
        into.bytes_down.append(t.bytes_down)


def summarize(s: Samples) -> dict[str, float]:
    n = len(s.turn_ms)
    return {
        "turns": n,
        "turn_ms_p50": float(np.median(s.turn_ms)),
        "turn_ms_p99": float(np.percentile(s.turn_ms, 99)),
        "ttft_ms_p50": float(np.median(s.ttft_ms)),
        "ttft_ms_p99": float(np.percentile(s.ttft_ms, 99)),
        "bytes_up_p50": float(np.median(s.bytes_up)),
        "bytes_down_p50": float(np.median(s.bytes_down)),
        "server_cpu_ms_per_turn": 1000 * s.server_cpu_s / n,
        "client_cpu_ms_per_turn": 1000 * s.client_cpu_s / n,
    }


def print_table(table: dict[str, dict[str, float]]) -> None:
    cols = list(next(iter(table.values())))
    print("| config | " + " | ".join(cols) + " |")
    print("|---|" + "---:|" * len(cols))
    for name, row in table.items():
        print(f"| {name} | " + " | ".join(f"{row[c]:.3f}" if c != "turns" else f"{row[c]:.0f}" for c in cols) + " |")


async def run(args: argparse.Namespace, servers: dict[str, Endpoint]) -> dict[str, dict[str, float]]:
    sc = scenario(args.profile)
    configs: list[tuple[str, State]] = [("grpc", "connection"), ("grpc-json", "connection"), ("ws", "connection")]
    if args.create:
        configs.append(("grpc-create", "full"))
    cells = [
        Cell(
            cell=f"{t}/{st}",
            scenario=sc,
            transport=t,
            state=st,
            profile=args.profile,
            concurrency=1,
            arrival_rate_rps=None,
            variant="default",
            tls=True,
            number=i,
        )
        for i, (t, st) in enumerate(configs)
    ]
    samples = {c.cell: Samples() for c in cells}
    for r in range(args.rounds + 1):
        for c in cells:
            await one_rollout(c, r, servers[c.server], samples[c.cell] if r else None)
    return {name: summarize(s) for name, s in samples.items()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=10, help="measured rounds (one warm-up round is added)")
    p.add_argument("--profile", default="instant", help="sim profile of both servers (default instant)")
    p.add_argument("--create", action="store_true", help="also grpc-create with full resend (like HTTPS)")
    p.add_argument("--out", type=Path, help="write the table as JSON here")
    args = p.parse_args()
    servers: dict[str, Endpoint] = {}
    with tempfile.TemporaryDirectory(prefix="grpc-overhead-") as tmp:
        try:
            for server in ("grpc", "ws"):
                servers[server] = start_server_process(
                    server, workdir=Path(tmp) / server, profile=args.profile, tls=True
                )
            try:
                import uvloop

                with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                    table = runner.run(run(args, servers))
            except ImportError:
                table = asyncio.run(run(args, servers))
        finally:
            for endpoint in servers.values():
                if endpoint.process is not None:
                    endpoint.process.stop(30.0)
    print(
        f"profile={args.profile} rounds={args.rounds} (+1 warm-up), 20 tool calls + answer per rollout, "
        f"TLS, python {sys.version.split()[0]}, {psutil.cpu_count()} CPUs"
    )
    print_table(table)
    if args.out:
        args.out.write_bytes(
            orjson.dumps(
                {"args": {k: str(v) for k, v in vars(args).items()}, "table": table}, option=orjson.OPT_INDENT_2
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
