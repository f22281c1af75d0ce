"""``turnbench serve https`` as a user runs it: its own process, a client from elsewhere, SIGTERM drains."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import pytest

from clients.base import ClientConfig, make_client
from tests.conftest import TIMEOUT_FACTOR
from tests.e2e.test_https_server import rollout
from tests.helpers import StreamingRecorder
from turnbench.tls import load_ca

pytestmark = pytest.mark.timeout(90 * TIMEOUT_FACTOR)
BIN = Path(sys.executable).parent / "turnbench"


async def _serve(cmd: list[str]) -> tuple[asyncio.subprocess.Process, int, list[str]]:
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    assert proc.stdout is not None
    lines: list[str] = []
    async with asyncio.timeout(30 * TIMEOUT_FACTOR):
        while not lines or not lines[-1].startswith("PORT="):
            line = (await proc.stdout.readline()).decode()
            assert line, f"server exited early: {lines}"
            lines.append(line.strip())
    return proc, int(lines[-1].removeprefix("PORT=")), lines


@pytest.mark.parametrize("tls", [True, False], ids=["tls", "no-tls"])
async def test_serve_then_client_then_sigterm(tmp_path, tls):
    if tls:  # the console script with a generated CA written for the client
        ca = tmp_path / "ca.pem"
        exe = [str(BIN)] if BIN.exists() else [sys.executable, "-m", "loadtests.cli"]
        cmd = [*exe, "serve", "https", "--port", "0", "--ca-out", str(ca)]
    else:
        cmd = [sys.executable, "-m", "servers", "https", "--no-tls", "--port", "0"]
    cmd += ["--profile", "frontier", "--usage-db", str(tmp_path / "usage.db")]
    proc, port, lines = await _serve(cmd)
    try:
        url = f"{'https' if tls else 'http'}://127.0.0.1:{port}/v1"
        assert any(url in line for line in lines), lines
        config = ClientConfig(url=url, ssl_context=load_ca(ca) if tls else None)
        client = make_client("https" if tls else "https-raw", config)
        try:
            await client.connect()
            answer, calls, _ = await rollout(client, "store", turns=3, answer_words=4)
            assert len(calls) == 2 and answer
            rec = StreamingRecorder(client.transport, "full", min_chunks=1)
            body = {"model": "m", "input": "long", "metadata": {"tool_calls": "0", "answer_tokens": "40"}}
            inflight = asyncio.create_task(client.create(body, recorder=rec))
            await asyncio.wait_for(rec.streaming.wait(), 30 * TIMEOUT_FACTOR)
            proc.send_signal(signal.SIGTERM)  # drains: the response in flight still completes
            response = await inflight
            assert rec.result().success and response["status"] == "completed"
        finally:
            await client.close()
        rc = await asyncio.wait_for(proc.wait(), 30 * TIMEOUT_FACTOR)
        assert proc.stdout is not None
        tail = (await proc.stdout.read()).decode()
        assert rc == 0, tail
        assert "stopped" in tail
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
