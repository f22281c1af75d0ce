"""Cross-host state: what a conversation pays when its turns reach different server hosts (issue #16).

Two server processes stand for two hosts (each the HTTPS server, which also serves WebSocket mode on its
port), sharing one store: Redis (a real ``redis-server`` this script starts on a free port) or one SQLite file
(two processes of one host). The same agent-20 rollouts (instant profile: API overhead only, 4 KB tool
outputs) run as:

- ``https/store, one host`` and ``https/store, alternating``: every turn hydrates the history from the store
  (HTTPS keeps nothing between requests), on one host or on the other host each turn;
- ``ws/store, reconnect each turn``: each turn on a new WebSocket connection to the other host: nothing in a
  connection cache, so the history comes from the store (the spec's recovery after a reconnect);
- ``ws/connection, one host``: WebSocket mode's connection cache, the reference.

Printed per store and configuration: the median of the server's ``resolve`` stage (the hydration) per turn,
the median turn time (request sent → response completed; a reconnect is not inside it), and the median rollout
time, over ``--rollouts`` rollouts.

  python scripts/cross_host.py                    # needs redis-server (apt-get install redis-server)
  python scripts/cross_host.py --stores sqlite --rollouts 3
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from clients.agent import Toolbox, run_rollout  # noqa: E402
from clients.base import ResponsesClient, RolloutResult, TurnRecorder, make_client  # noqa: E402
from loadtests.procs import Endpoint, start_server_process, stop_endpoints  # noqa: E402


class Hosts(ResponsesClient):
    """One agent's client over two hosts: turn k goes to host ``k % 2`` (``alternate``), on a fresh connection
    each turn when ``reconnect`` (a WebSocket client that lost its host)."""

    transport: ClassVar[str] = "hosts"

    def __init__(self, clients: list[ResponsesClient], *, alternate: bool, reconnect: bool) -> None:
        super().__init__(clients[0].config)
        self.clients, self.alternate, self.reconnect_each = clients, alternate, reconnect
        self.k = 0

    async def connect(self) -> float | None:
        return await self.clients[0].connect()

    async def create(self, body: dict[str, Any], *, recorder: TurnRecorder) -> dict[str, Any]:
        c = self.clients[self.k % len(self.clients)] if self.alternate else self.clients[0]
        if self.k and self.reconnect_each:
            await c.reconnect()
        self.k += 1
        return await c.create(body, recorder=recorder)

    async def close(self) -> None:
        for c in self.clients:
            await c.close()


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server), or pass --stores sqlite")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
    )
    import redis

    r = redis.Redis(port=port)
    for _ in range(500):
        try:
            r.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.01)
    return proc, f"redis://127.0.0.1:{port}/0"


CONFIGS = (
    ("https/store, one host", "https", "store", False, False),
    ("https/store, alternating", "https", "store", True, False),
    ("ws/store, reconnect each turn", "ws", "store", True, True),
    ("ws/connection, one host", "ws", "connection", False, False),
)


async def measure(hosts: list[Endpoint], rollouts: int, tool_calls: int) -> list[dict[str, Any]]:
    out = []
    results: dict[str, list[RolloutResult]] = {name: [] for name, *_ in CONFIGS}
    for i in range(rollouts):  # interleaved: each configuration once per round
        for name, transport, state, alternate, reconnect in CONFIGS:
            clients = [make_client(transport, ep.client_config()) for ep in hosts]
            client = Hosts(clients, alternate=alternate, reconnect=reconnect)
            await client.connect()
            toolbox = Toolbox(output_bytes=4096, seed=7 + i)
            meta = {"tool_calls": str(tool_calls), "seed": str(i), "answer_tokens": "32"}
            task = f"[cross {name} {i}] Investigate the repository and summarize what you find."
            results[name].append(await run_rollout(client, state=state, toolbox=toolbox, metadata=meta, task=task))
            await client.close()
    for name, *_ in CONFIGS:
        rs = [r for r in results[name] if r.success]
        turns = [t for r in rs for t in r.turns[1:]]  # the first turn has no history to hydrate
        resolve = [t.server_stages["resolve"].wall_ns / 1e6 for t in turns if "resolve" in t.server_stages]
        out.append(
            {
                "config": name,
                "ok": len(rs),
                "failed": len(results[name]) - len(rs),
                "resolve_p50_ms": statistics.median(resolve) if resolve else float("nan"),
                "turn_p50_ms": statistics.median(t.turn_ms or 0.0 for t in turns) if turns else float("nan"),
                "rollout_p50_ms": statistics.median(r.rollout_ms for r in rs) if rs else float("nan"),
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stores", default="redis,sqlite", help="default redis,sqlite")
    p.add_argument("--rollouts", type=int, default=5)
    p.add_argument("--tool-calls", type=int, default=20)
    args = p.parse_args(argv)
    ok = True
    with tempfile.TemporaryDirectory(prefix="turnbench-cross-") as tmp:
        work = Path(tmp)
        head = f"{'store':<7} {'configuration':<32} {'ok':>3} {'resolve p50 ms':>15} {'turn p50 ms':>12}"
        print(f"{head} {'rollout p50 ms':>15}")
        for store in args.stores.split(","):
            redis_proc = None
            if store == "redis":
                redis_proc, url = start_redis(work)
            else:
                url = f"sqlite:{work / 'shared.db'}"
            hosts = [
                start_server_process(
                    "https", workdir=work / f"{store}-host{k}", profile="instant", tls=True, settings={"store": url}
                )
                for k in range(2)
            ]
            try:
                rows = asyncio.run(measure(hosts, args.rollouts, args.tool_calls))
            finally:
                stop_endpoints({f"h{k}": ep for k, ep in enumerate(hosts)})
                if redis_proc is not None:
                    redis_proc.terminate()
                    redis_proc.wait()
            for r in rows:
                ok = ok and r["failed"] == 0
                print(
                    f"{store:<7} {r['config']:<32} {r['ok']:>3} {r['resolve_p50_ms']:>15.3f} {r['turn_p50_ms']:>12.2f} "
                    f"{r['rollout_p50_ms']:>15.1f}",
                    flush=True,
                )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
