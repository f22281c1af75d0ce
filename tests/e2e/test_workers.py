"""``turnbench serve T --workers 2``: two worker processes on one port (SO_REUSEPORT), started as a user
starts them, over real loopback TLS: connections spread over both, a store=true response made on one worker
continues on the other, and SIGTERM stops every worker."""

from __future__ import annotations

import asyncio
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from clients.base import ClientConfig, TurnRecorder, make_client
from turnbench.tls import load_ca

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parents[2]


class Workers:
    """A ``python -m servers T --workers 2`` process and the lines it printed."""

    def __init__(self, transport: str, tmp: Path) -> None:
        self.ca = tmp / "ca.pem"
        argv = [sys.executable, "-m", "servers", transport, "--port", "0", "--workers", "2", "--profile", "instant"]
        argv += ["--ca-out", str(self.ca), "--usage-db", str(tmp / "usage.db")]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.port = 0
        while not self.port:
            line = self.lines.get(timeout=60)
            if line.startswith("PORT="):
                self.port = int(line[5:])

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.put(raw.decode(errors="replace").rstrip())

    def workers(self) -> list[int]:
        return [p.pid for p in psutil.Process(self.proc.pid).children(recursive=True)]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        assert self.proc.stdout is not None
        self.proc.stdout.close()  # the reader thread ends at EOF


@pytest.fixture
def workers(request: Any, tmp_path: Path) -> Any:
    started: list[Workers] = []

    def start(transport: str) -> Workers:
        w = Workers(transport, tmp_path)
        started.append(w)
        return w

    yield start
    for w in started:
        w.close()


@pytest.mark.parametrize("transport", ["https", "ws"])
async def test_connections_spread_over_both_workers_and_store_crosses_them(workers: Any, transport: str) -> None:
    w = workers(transport)
    pids = w.workers()
    assert len(pids) == 2 and w.proc.pid not in pids
    ctx = load_ca(str(w.ca))
    seen: set[int] = set()
    for _ in range(40):  # a fresh TCP connection each: the kernel hashes each to one of the two listeners
        async with httpx.AsyncClient(verify=ctx) as http:
            seen.add((await http.get(f"https://127.0.0.1:{w.port}/healthz")).json()["pid"])
        if seen == set(pids):
            break
    assert seen == set(pids)
    # store=true on one connection, continued on fresh ones: some of them reach the other worker
    scheme = "wss" if transport == "ws" else "https"
    config = ClientConfig(url=f"{scheme}://127.0.0.1:{w.port}/v1", ssl_context=ctx)

    async def create(body: dict[str, Any]) -> dict[str, Any]:
        client = make_client(transport, config)
        await client.connect()
        try:
            rec = TurnRecorder(transport, "store")
            rec.scheduled()
            response: dict[str, Any] = await client.safe_create(body, recorder=rec)
            assert rec.result().success, rec.result().error
            return response
        finally:
            await client.close()

    first = await create({"model": "m", "input": "hi", "store": True, "metadata": {"answer_tokens": "4"}})
    follow = {"model": "m", "input": "more", "store": True, "previous_response_id": first["id"]}
    replies = await asyncio.gather(*(create(follow) for _ in range(8)))
    assert all(r["status"] == "completed" and r["previous_response_id"] == first["id"] for r in replies)
    assert w.stop() == 0
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids)


async def test_grpc_workers_share_the_port_and_stop_together(workers: Any) -> None:
    w = workers("grpc")
    pids = w.workers()
    assert len(pids) == 2
    client = make_client("grpc", ClientConfig(url=f"127.0.0.1:{w.port}", ca_pem=w.ca.read_bytes()))
    await client.connect()
    rec = TurnRecorder("grpc", "connection")
    rec.scheduled()
    await client.safe_create({"model": "m", "input": "hi", "store": False}, recorder=rec)
    await client.close()
    assert rec.result().success, rec.result().error
    os.kill(pids[0], signal.SIGKILL)  # a worker dies: the supervisor stops the other and fails
    assert w.stop() != 0
    assert not psutil.pid_exists(pids[1]) or psutil.Process(pids[1]).status() == psutil.STATUS_ZOMBIE
