"""Steering against its alternative (issue #17): a user corrects an agent mid-answer.

Against a ws server process (TLS on, ``--profile``, default ``fast``: ~1,000 tok/s), per round: an answer of
``--answer-tokens`` is streaming; after ``--after`` tokens the user's correction arrives, and it is applied

- ``steer``: as ``response.steer`` on the same connection: the answer stops at the next token and the server
  starts the successor by itself, continuing from the partial answer with the correction;
- ``cancel and re-create``: by closing the connection (Responses WebSocket mode has no cancel event) and
  sending a new request on a new connection with the whole conversation and the correction (the partial
  answer was never stored).

Printed per way, medians over ``--rounds`` rounds: the time from the correction to the corrected answer's
first token and to its end, and the tokens of the first answer the client received (what the correction
wasted; a server that does not notice the close at once generates a little more).

  python scripts/steer_bench.py
  python scripts/steer_bench.py --profile frontier --after 50 --rounds 3
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

from loadtests.procs import Endpoint, start_server_process, stop_endpoints  # noqa: E402
from turnbench.tls import load_ca  # noqa: E402

TASK = "Write the migration report for the parser module."
FIX = "Correction: only the tests changed, keep it to the test report."


async def _open(ep: Endpoint) -> ClientConnection:
    return await connect(f"{ep.url}/responses", ssl=load_ca(str(ep.ca_path)), compression=None, max_size=None)


def _create(answer: int, **extra: Any) -> str:
    meta = {"tool_calls": "0", "answer_tokens": str(answer)}
    return json.dumps({"type": "response.create", "model": "m", "store": False, "metadata": meta, **extra})


async def _first_part(ws: ClientConnection, answer: int, after: int, k: int) -> tuple[str, int]:
    """Start the answer; return (its id, deltas received) once ``after`` deltas have arrived."""
    await ws.send(_create(answer, input=f"[{k}] {TASK}"))
    rid, got = "", 0
    while got < after:
        ev = json.loads(await ws.recv())
        if ev["type"] == "response.created":
            rid = ev["response"]["id"]
        elif ev["type"] == "response.output_text.delta":
            got += 1
    return rid, got


async def _until_corrected(ws: ClientConnection, t0: float, skip_id: str | None) -> tuple[float, float]:
    """(ms to the corrected answer's first token, ms to its end) from ``t0``; ``skip_id``'s events ignored."""
    first, current = None, None
    while True:
        ev = json.loads(await ws.recv())
        if ev["type"] == "response.created":
            current = ev["response"]["id"]
        if current == skip_id or current is None:
            continue
        if first is None and ev["type"] == "response.output_text.delta":
            first = (time.perf_counter() - t0) * 1000.0
        if ev["type"] in ("response.completed", "response.failed", "error"):
            assert ev["type"] == "response.completed", ev
            return first or float("nan"), (time.perf_counter() - t0) * 1000.0


async def steer_way(ep: Endpoint, answer: int, after: int, k: int) -> dict[str, float]:
    async with await _open(ep) as ws:
        rid, got = await _first_part(ws, answer, after, k)
        t0 = time.perf_counter()
        await ws.send(json.dumps({"type": "response.steer", "previous_response_id": rid, "input": FIX}))
        wasted = got
        first = last = None
        current = rid
        while last is None:
            ev = json.loads(await ws.recv())
            if ev["type"] in ("response.steer.failed", "error"):
                raise RuntimeError(f"the steer was refused: {ev}")
            if ev["type"] == "response.created":
                current = ev["response"]["id"]
            elif ev["type"] == "response.output_text.delta":
                if current == rid:
                    wasted += 1
                elif first is None:
                    first = (time.perf_counter() - t0) * 1000.0
            elif ev["type"] == "response.completed" and current != rid:
                last = (time.perf_counter() - t0) * 1000.0
        return {"first_ms": first or float("nan"), "done_ms": last, "wasted_tokens": float(wasted)}


async def cancel_way(ep: Endpoint, answer: int, after: int, k: int) -> dict[str, float]:
    ws = await _open(ep)
    _, got = await _first_part(ws, answer, after, k)
    t0 = time.perf_counter()
    await ws.close()  # the only cancel WebSocket mode has
    history = [
        {"type": "message", "role": "user", "content": f"[{k}] {TASK}"},
        {"type": "message", "role": "user", "content": FIX},
    ]
    async with await _open(ep) as ws2:
        await ws2.send(_create(answer, input=history))
        first, done = await _until_corrected(ws2, t0, None)
    return {"first_ms": first, "done_ms": done, "wasted_tokens": float(got)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--answer-tokens", type=int, default=600)
    p.add_argument("--after", type=int, default=100, help="deltas of the first answer before the correction")
    p.add_argument("--profile", default="fast")
    args = p.parse_args(argv)
    rows: dict[str, list[dict[str, float]]] = {"steer": [], "cancel and re-create": []}
    with tempfile.TemporaryDirectory(prefix="turnbench-steer-") as tmp:
        ep = start_server_process("ws", workdir=Path(tmp), profile=args.profile, tls=True)
        try:
            for k in range(args.rounds):  # interleaved
                rows["steer"].append(asyncio.run(steer_way(ep, args.answer_tokens, args.after, 2 * k)))
                rows["cancel and re-create"].append(
                    asyncio.run(cancel_way(ep, args.answer_tokens, args.after, 2 * k + 1))
                )
        finally:
            stop_endpoints({"ws": ep})
    print(f"a correction after {args.after} of {args.answer_tokens} tokens, profile {args.profile}, "
          f"median of {args.rounds} rounds")  # fmt: skip
    print(f"{'way':<22} {'to first token ms':>18} {'to corrected answer ms':>23} {'tokens wasted':>14}")
    for way, rs in rows.items():
        med = {key: statistics.median(r[key] for r in rs) for key in rs[0]}
        print(f"{way:<22} {med['first_ms']:>18.1f} {med['done_ms']:>23.1f} {med['wasted_tokens']:>14.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
