"""Warm-up: first-turn TTFT with and without ``generate: false`` (issue #17).

An agent's first request carries its instructions and tool definitions before the task. WebSocket mode lets a
client send them ahead, as ``response.create`` with ``generate: false`` (the server prepares the state, the
model prefills it, nothing is generated), and then start the first real turn from that response
(``previous_response_id``): the first turn's TTFT then pays only for the task. Against a ws server process
(TLS on, ``--profile``, default ``fast``), per round on a fresh connection each:

- ``cold``: the first turn as usual (instructions, tools and the task in one request);
- ``warmed``: the ``generate: false`` request first (its time is reported apart: it overlaps the agent's own
  start-up), then the first turn.

Printed: the median first-turn TTFT of each and the warm-up request's own time, over ``--rounds`` rounds,
with ``--instructions-kb`` of instructions (the system prompt) and the agent-20 tool set.

  python scripts/warmup.py
  python scripts/warmup.py --instructions-kb 32 --profile h200-8b
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from websockets.asyncio.client import ClientConnection, connect  # noqa: E402

from clients.agent import Toolbox  # noqa: E402
from loadtests.procs import Endpoint, start_server_process, stop_endpoints  # noqa: E402
from turnbench.schema import TERMINAL_TYPES  # noqa: E402
from turnbench.tls import load_ca  # noqa: E402

DELTAS = ("response.output_text.delta", "response.function_call_arguments.delta")


async def turn(ws: ClientConnection, event: dict[str, Any]) -> tuple[float | None, float, dict[str, Any]]:
    """Send ``event``; returns (TTFT ms or None, time to the terminal event ms, the terminal event)."""
    t0 = time.perf_counter()
    await ws.send(json.dumps(event))
    first = None
    while True:
        ev = json.loads(await ws.recv())
        if first is None and ev.get("type") in DELTAS:
            first = (time.perf_counter() - t0) * 1000.0
        if ev.get("type") in TERMINAL_TYPES or ev.get("type") == "error":
            return first, (time.perf_counter() - t0) * 1000.0, ev


async def one_round(ep: Endpoint, instructions: str, k: int) -> dict[str, float]:
    tools = Toolbox().definitions()
    task = {"model": "m", "store": False, "metadata": {"tool_calls": "0", "answer_tokens": "16", "seed": str(k)}}
    out: dict[str, float] = {}
    ctx = load_ca(str(ep.ca_path))
    # each round's instructions are its own, so the engine's prefix cache cannot serve one round from another
    own = f"[round {k}] {instructions}"
    async with connect(f"{ep.url}/responses", ssl=ctx, compression=None, max_size=None) as ws:
        ttft, _, ev = await turn(
            ws, {"type": "response.create", **task, "instructions": own + " cold", "tools": tools, "input": "go"}
        )
        assert ev["type"] == "response.completed", ev
        out["cold_ttft_ms"] = ttft or float("nan")
    async with connect(f"{ep.url}/responses", ssl=ctx, compression=None, max_size=None) as ws:
        warm = {"type": "response.create", **task, "instructions": own + " warm", "tools": tools, "input": []}
        _, out["warmup_ms"], ev = await turn(ws, {**warm, "generate": False})
        assert ev["type"] == "response.completed", ev
        # instructions are not inherited through previous_response_id: the first turn sends them again, as a
        # Responses client does every turn, and the server finds them already prefilled
        first = {**warm, "input": "go", "previous_response_id": ev["response"]["id"]}
        ttft, _, ev = await turn(ws, first)
        assert ev["type"] == "response.completed", ev
        out["warm_ttft_ms"] = ttft or float("nan")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--instructions-kb", type=float, default=16.0)
    p.add_argument("--profile", default="fast")
    args = p.parse_args(argv)
    instructions = "You are a careful coding agent; read before you write. " * int(args.instructions_kb * 1024 / 56)
    with tempfile.TemporaryDirectory(prefix="turnbench-warmup-") as tmp:
        ep = start_server_process("ws", workdir=Path(tmp), profile=args.profile, tls=True)
        try:
            rows = [asyncio.run(one_round(ep, instructions, k)) for k in range(args.rounds)]
        finally:
            stop_endpoints({"ws": ep})
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    head = f"first-turn TTFT, {args.instructions_kb:g} KB of instructions + tools, profile {args.profile}"
    print(f"{head}, median of {args.rounds} rounds")
    print(f"  cold (one request):             {med['cold_ttft_ms']:8.1f} ms")
    change = med["warm_ttft_ms"] / med["cold_ttft_ms"] - 1
    print(f"  warmed (generate: false first): {med['warm_ttft_ms']:8.1f} ms  ({change:+.0%})")
    print(f"  the warm-up request itself:     {med['warmup_ms']:8.1f} ms  (before the task is known)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
