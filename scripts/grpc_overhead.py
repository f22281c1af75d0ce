"""Per-turn latency of a 20-turn rollout: gRPC typed codec vs gRPC json codec vs WebSocket, from one run.

Each server runs in its own process (``python -m servers {grpc,ws} --profile instant``: no model time, so
what is left is API + transport overhead), TLS on. The same agent rollout (20 tool calls with ~4 KB tool
outputs, ``clients/agent.py`` and its corpus tools, state ``connection``: previous_response_id + new items
on one stream) runs once per configuration per round, in interleaved rounds (A B C … A B C) to cancel drift,
after one discarded warm-up round; every rollout opens a fresh connection (its time is not in a turn).

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
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import orjson  # noqa: E402
import psutil  # noqa: E402

from clients.agent import Toolbox, run_rollout  # noqa: E402
from clients.base import ClientConfig, ResponsesClient, make_client  # noqa: E402
from turnbench.tls import load_ca  # noqa: E402

META = {"tool_calls": "20", "seed": "7"}


@dataclass
class Server:
    transport: str
    proc: subprocess.Popen[str]
    port: int
    ca: Path

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}" if self.transport == "grpc" else f"wss://127.0.0.1:{self.port}/v1"

    def cpu_s(self) -> float:
        t = psutil.Process(self.proc.pid).cpu_times()
        return float(t.user + t.system)


@dataclass
class Samples:
    turn_ms: list[float] = field(default_factory=list)
    ttft_ms: list[float] = field(default_factory=list)
    bytes_up: list[int] = field(default_factory=list)
    bytes_down: list[int] = field(default_factory=list)
    server_cpu_s: float = 0.0
    client_cpu_s: float = 0.0


def start_server(transport: str, tmp: Path, profile: str) -> Server:
    """``python -m servers TRANSPORT`` in a child process (TLS); waits for ``PORT=``."""
    ca = tmp / f"ca-{transport}.pem"
    cmd = [sys.executable, "-m", "servers", transport, "--port", "0", "--profile", profile, "--tls",
           "--ca-out", str(ca), "--usage-db", str(tmp / f"usage-{transport}.db")]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("PORT="):
            return Server(transport, proc, int(line.strip().split("=", 1)[1]), ca)
    raise RuntimeError(f"{transport} server exited with {proc.wait()} before printing PORT=")


def stop_server(server: Server) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()
    if server.proc.stdout is not None:
        server.proc.stdout.close()


def make(transport: str, server: Server) -> ResponsesClient:
    config = ClientConfig(url=server.url, ssl_context=load_ca(server.ca), ca_pem=server.ca.read_bytes())
    return make_client(transport, config)


async def one_rollout(transport: str, server: Server, state: str, into: Samples | None) -> None:
    client = make(transport, server)
    await client.connect()
    c0, s0 = time.process_time(), server.cpu_s()
    try:
        result = await run_rollout(client, state=state, toolbox=Toolbox(output_bytes=4096), metadata=META)
    finally:
        c1, s1 = time.process_time(), server.cpu_s()
        await client.close()
    if not result.success or len(result.turns) != 21:
        raise RuntimeError(f"{transport}/{state}: {result.error} after {len(result.turns)} turns")
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
        "turn_ms_p50": float(np.median(s.turn_ms)), "turn_ms_p99": float(np.percentile(s.turn_ms, 99)),
        "ttft_ms_p50": float(np.median(s.ttft_ms)), "ttft_ms_p99": float(np.percentile(s.ttft_ms, 99)),
        "bytes_up_p50": float(np.median(s.bytes_up)), "bytes_down_p50": float(np.median(s.bytes_down)),
        "server_cpu_ms_per_turn": 1000 * s.server_cpu_s / n, "client_cpu_ms_per_turn": 1000 * s.client_cpu_s / n,
    }


def print_table(table: dict[str, dict[str, float]]) -> None:
    cols = list(next(iter(table.values())))
    print("| config | " + " | ".join(cols) + " |")
    print("|---|" + "---:|" * len(cols))
    for name, row in table.items():
        print(f"| {name} | " + " | ".join(f"{row[c]:.3f}" if c != "turns" else f"{row[c]:.0f}" for c in cols) + " |")


async def run(args: argparse.Namespace, servers: dict[str, Server]) -> dict[str, dict[str, float]]:
    configs = [("grpc", "connection", "grpc"), ("grpc-json", "connection", "grpc")]
    if "ws" in servers:
        configs.append(("ws", "connection", "ws"))
    if args.create:
        configs.append(("grpc-create", "full", "grpc"))
    samples = {f"{c}/{st}": Samples() for c, st, _ in configs}
    for r in range(args.rounds + 1):
        for client_t, state, server_t in configs:
            await one_rollout(client_t, servers[server_t], state, samples[f"{client_t}/{state}"] if r else None)
    return {name: summarize(s) for name, s in samples.items()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=10, help="measured rounds (one warm-up round is added)")
    p.add_argument("--profile", default="instant", help="sim profile of both servers (default instant)")
    p.add_argument("--create", action="store_true", help="also grpc-create with full resend (like HTTPS)")
    p.add_argument("--out", type=Path, help="write the table as JSON here")
    args = p.parse_args()
    with_ws = True
    servers: dict[str, Server] = {}
    with tempfile.TemporaryDirectory(prefix="grpc-overhead-") as tmp:
        try:
            for transport in ("grpc", "ws") if with_ws else ("grpc",):
                servers[transport] = start_server(transport, Path(tmp), args.profile)
            try:
                import uvloop

                with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                    table = runner.run(run(args, servers))
            except ImportError:
                table = asyncio.run(run(args, servers))
        finally:
            for server in servers.values():
                stop_server(server)
    print(f"profile={args.profile} rounds={args.rounds} (+1 warm-up), 20 tool calls + answer per rollout, "
          f"TLS, python {sys.version.split()[0]}, {psutil.cpu_count()} CPUs")
    print_table(table)
    if args.out:
        args.out.write_bytes(orjson.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "table": table},
                                          option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
