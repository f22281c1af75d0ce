"""Per-turn server overhead by stage, WebSocket ``connection`` vs HTTPS ``full``/``store``, from one run.

Each server runs in its own process, started as ``turnbench run`` starts its servers
(:func:`loadtests.procs.start_server_process`, profile ``instant``: no model time, so what is left is API
overhead), TLS on. The same 20-tool-call rollout with 4 KB tool outputs (``turnbench run``'s rollout,
:func:`loadtests.runner.one_rollout`, rollout k of round k) runs once per configuration per round, in
interleaved rounds (A B C … A B C) to cancel drift, after one discarded warm-up round. The table gives, at
turns 1, 10 and 20 (1-based: turn 1 sends only the user message, turn k carries k-1 tool outputs), the
median over rounds of each server stage's wall time (ms, as the server reports it in
``response.turnbench.stages``), their sum without prefill/decode (``api``), and the client's ``turn_ms`` and
``bytes_up``.

Configurations: ``ws/connection`` (previous_response_id + new items, store=false, connection cache),
``ws/full`` (full resend), ``ws/store`` (store=true on a server started with ``--no-connection-cache``, so
every turn hydrates from the ResponseStore), ``https/full`` and ``https/store``. With ``overlap_post`` on (the
default), ``post`` in the response is only its in-memory part.

``--routes`` also compares the WebSocket upgrade route of the standalone ``websockets`` server with the one
the HTTPS server (Starlette on uvicorn) mounts on ``/v1/responses``: per-turn round trip of a tiny request
on one warm connection (median, p90, µs), connect time, and the 20-turn rollout time.

  python scripts/ws_overhead.py                  # 5 rounds
  python scripts/ws_overhead.py --rounds 9 --routes --out /tmp/ws_overhead.json
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from pathlib import Path
from typing import Any

import orjson
import psutil

from clients.base import ResponsesClient, TurnRecorder, make_client
from loadtests.execution.plan import Cell
from loadtests.execution.procs import Endpoint, start_server_process
from loadtests.runs.runner import one_rollout
from loadtests.workload.scenarios import State, load_scenario

STAGES = ("parse", "validate", "resolve", "safety", "render", "route", "post")
TURNS = (1, 10, 20)
SCENARIO = load_scenario("agent-20").replace(tool_output_bytes=4096, tool_output_sigma=0.0, seed=7, profile="instant")
"""20 tool calls, 4 KB tool outputs, no model time."""


def cell(transport: str, state: State, number: int) -> Cell:
    """One configuration as a runner cell (its number makes its prompts its own)."""
    return Cell(
        cell=f"{transport}/{state}",
        scenario=SCENARIO,
        transport=transport,
        state=state,
        profile="instant",
        concurrency=1,
        arrival_rate_rps=None,
        variant="default",
        tls=True,
        number=number,
    )


def start(server: str, workdir: Path, **settings: Any) -> Endpoint:
    """A server process (TLS, instant profile) with ``settings``; its files go to ``workdir``."""
    return start_server_process(server, workdir=workdir, profile="instant", tls=True, settings=settings)


def stop(endpoint: Endpoint) -> None:
    if endpoint.process is not None:
        endpoint.process.stop(30.0)


def cpu_ns(pid: int) -> int:
    """CPU time of every thread of process ``pid``, ns: /proc schedstat (ns resolution) where there is one,
    else psutil's clock-tick figures."""
    tasks = Path(f"/proc/{pid}/task")
    if tasks.is_dir():
        return sum(int((t / "schedstat").read_text().split()[0]) for t in tasks.iterdir())
    times = psutil.Process(pid).cpu_times()
    return int((times.user + times.system) * 1e9)


def pid(endpoint: Endpoint) -> int:
    assert endpoint.process is not None
    return endpoint.process.pid


def client_for(transport: str, endpoint: Endpoint) -> ResponsesClient:
    return make_client(transport, endpoint.client_config())


async def rollout_rows(c: Cell, endpoint: Endpoint, index: int) -> list[dict[str, Any]]:
    """Rollout ``index`` of ``c`` on a fresh connection. Returns: per turn, the stage wall times (ms) and
    client figures."""
    result = await one_rollout(c, index, endpoint)
    if not result.success or len(result.turns) != SCENARIO.tool_calls + 1:
        raise RuntimeError(f"{c.cell}: {result.error} after {len(result.turns)} turns")
    rows = []
    for t in result.turns:
        row = {s: t.server_stages[s].wall_ns / 1e6 if s in t.server_stages else 0.0 for s in STAGES}
        row.update(
            api=sum(row[s] for s in STAGES),
            turn_ms=t.turn_ms or 0.0,
            bytes_up=float(t.bytes_up),
            prefill=t.server_stages["prefill"].wall_ns / 1e6 if "prefill" in t.server_stages else 0.0,
        )
        rows.append(row)
    return rows


async def overhead(configs: list[tuple[Cell, Endpoint]], rounds: int) -> dict[str, list[dict[str, float]]]:
    samples: dict[str, list[list[dict[str, float]]]] = {c.cell: [] for c, _ in configs}
    for r in range(rounds + 1):
        for c, endpoint in configs:
            rows = await rollout_rows(c, endpoint, r)
            if r:  # round 0 warms every server and client up
                samples[c.cell].append(rows)
    table: dict[str, list[dict[str, float]]] = {}
    for key, runs in samples.items():
        table[key] = [{col: statistics.median(run[k - 1][col] for run in runs) for col in runs[0][0]} for k in TURNS]
    return table


def print_overhead(table: dict[str, list[dict[str, float]]]) -> None:
    cols = [*STAGES, "api", "prefill", "turn_ms"]
    print("| config | turn | " + " | ".join(cols) + " | bytes_up |")
    print("|---|---:|" + "---:|" * (len(cols) + 1))
    for key, rows in table.items():
        for k, row in zip(TURNS, rows, strict=True):
            cells = " | ".join(f"{row[c]:.3f}" for c in cols)
            print(f"| {key} | {k} | {cells} | {row['bytes_up']:.0f} |")


async def routes(ws: Endpoint, https: Endpoint, n: int, rounds: int, words: int) -> dict[str, dict[str, float]]:
    """Standalone websockets vs the Starlette/uvicorn route: turn round trip (an answer of ``words`` words),
    server CPU per turn, connect time, 20-turn rollout time."""
    body = {"model": "m", "input": "hi", "store": False, "metadata": {"tool_calls": "0", "answer_tokens": str(words)}}
    targets = {"websockets": ws, "starlette": https}
    rtt: dict[str, list[float]] = {k: [] for k in targets}
    connect: dict[str, list[float]] = {k: [] for k in targets}
    rollout: dict[str, list[float]] = {k: [] for k in targets}
    cpu: dict[str, list[float]] = {k: [] for k in targets}
    for r in range(rounds + 1):
        order = list(targets.items())
        for name, server in order if r % 2 else order[::-1]:  # A B, B A, …: drift cancels
            client = client_for("ws", server)
            ms = await client.connect()
            c0 = cpu_ns(pid(server))
            for _ in range(n):
                rec = TurnRecorder("ws", "full")
                await client.create(body, recorder=rec)
                res = rec.result()
                if not res.success:
                    raise RuntimeError(f"{name}: {res.error}")
                if r:
                    rtt[name].append((res.turn_ms or 0.0) * 1000.0)
            if r:
                cpu[name].append((cpu_ns(pid(server)) - c0) / n / 1e3)
            await client.close()
            result = await one_rollout(cell("ws", "connection", 10 + (name == "starlette")), r, server)
            if r:
                connect[name].append(ms or 0.0)
                rollout[name].append(result.rollout_ms)
    out = {}
    for name in targets:
        q = statistics.quantiles(rtt[name], n=10)
        out[name] = {
            "rtt_median_us": statistics.median(rtt[name]),
            "rtt_p90_us": q[-1],
            "server_cpu_us": statistics.median(cpu[name]),
            "connect_ms": statistics.median(connect[name]),
            "rollout_ms": statistics.median(rollout[name]),
            "turns": float(len(rtt[name])),
        }
    return out


def print_routes(out: dict[str, dict[str, float]]) -> None:
    print("| route | turn RTT median µs | p90 µs | server CPU µs/turn | connect ms | 20-turn rollout ms | turns |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, v in out.items():
        print(
            f"| {name} | {v['rtt_median_us']:.0f} | {v['rtt_p90_us']:.0f} | {v['server_cpu_us']:.0f} | "
            f"{v['connect_ms']:.2f} | "
            f"{v['rollout_ms']:.1f} | {v['turns']:.0f} |"
        )


async def main(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="ws-overhead-") as tmp_name:
        tmp = Path(tmp_name)
        servers: list[Endpoint] = []
        try:
            for name, server, settings in (
                ("ws", "ws", {}),
                ("ws-nocache", "ws", {"connection_cache": False}),
                ("https", "https", {}),
            ):
                servers.append(await asyncio.to_thread(start, server, tmp / name, **settings))
            ws, ws_nocache, https = servers
            configs = [
                (cell("ws", "connection", 0), ws),
                (cell("ws", "full", 1), ws),
                (cell("ws", "store", 2), ws_nocache),
                (cell("https", "full", 3), https),
                (cell("https", "store", 4), https),
            ]
            result: dict[str, Any] = {"rounds": args.rounds}
            if not args.routes_only:
                table = result["overhead"] = await overhead(configs, args.rounds)
                print(f"\n## Server overhead per turn (ms, median of {args.rounds} rounds; 4 KB tool outputs)\n")
                print_overhead(table)
            if args.routes or args.routes_only:
                out = await routes(ws, https, args.turns, args.rounds, args.answer_words)
                print(
                    f"\n## WebSocket route: standalone websockets vs Starlette/uvicorn ({args.rounds} rounds, "
                    f"{args.answer_words}-word answers)\n"
                )
                print_routes(out)
                result["routes"] = out
            if args.out:
                await asyncio.to_thread(Path(args.out).write_bytes, orjson.dumps(result, option=orjson.OPT_INDENT_2))
        finally:
            for s in servers:
                stop(s)
    return 0


def cli() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5, help="measured rounds (one extra warm-up round)")
    p.add_argument("--routes", action="store_true", help="also compare the two WebSocket upgrade routes")
    p.add_argument("--routes-only", action="store_true", help="only the upgrade-route comparison")
    p.add_argument("--turns", type=int, default=200, help="tiny turns per connection per round (--routes)")
    p.add_argument("--answer-words", type=int, default=1, help="answer length of the --routes turns (words)")
    p.add_argument("--out", help="write the figures as JSON here")
    args = p.parse_args()
    try:
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(main(args))
    except ImportError:
        return asyncio.run(main(args))


if __name__ == "__main__":
    raise SystemExit(cli())
