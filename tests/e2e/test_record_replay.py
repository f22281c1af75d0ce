"""Record and replay: the OpenAI Agents SDK drives an agent through ``turnbench record`` (the proxy) to a
turnbench server, over HTTPS and WebSocket mode; the trace it writes replays over https, ws and grpc; the
two shipped importer samples (Mooncake JSONL, OpenAI-style transcripts) replay too."""

from __future__ import annotations

import asyncio
import io
import json
import socket
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from loadtests.examples import agents_sdk
from loadtests.execution.plan import RunConfig
from loadtests.runs import runner
from loadtests.workload.record_proxy import Recorder, build_app
from loadtests.workload.trace import conversations, read_trace, scenario_from_trace

pytestmark = pytest.mark.timeout(240)
TRACES = Path(__file__).resolve().parents[2] / "loadtests" / "workload" / "traces"


class Proxy:
    def __init__(self, upstream: str, ctx: Any, out: io.StringIO) -> None:
        self.recorder = Recorder(out)
        self.app = build_app(upstream, self.recorder, verify=ctx)

    async def __aenter__(self) -> Proxy:
        sock = socket.create_server(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_level="warning", lifespan="on", ws="websockets-sansio")
        self.server = uvicorn.Server(config)
        self.task = asyncio.create_task(self.server.serve(sockets=[sock]))
        for _ in range(500):
            if self.server.started:
                break
            await asyncio.sleep(0.01)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.should_exit = True
        await self.task


@pytest.mark.parametrize("websocket", [False, True], ids=["https", "ws"])
async def test_agents_sdk_through_the_proxy_writes_a_trace_that_replays(
    serve: Any, websocket: bool, tmp_path: Path
) -> None:
    server = await serve("https", tool_calls=3)  # WebSocket mode lives on the same port
    out = io.StringIO()
    async with Proxy(server.url, server.tls.client_ssl_context(), out) as proxy:
        answer, forecast = await agents_sdk.main(f"http://127.0.0.1:{proxy.port}/v1", websocket=websocket)
    assert answer and forecast.city  # the app got its answers through the proxy, unchanged
    turns = [json.loads(line) for line in out.getvalue().splitlines()]
    assert {t["transport"] for t in turns} == {"ws" if websocket else "https"}
    assert all(t["status"] == "completed" and t["output_tokens"] > 0 and t["duration_ms"] > 0 for t in turns)
    # Runner.run does not stream over HTTPS (one JSON answer: no first token to time); WebSocket mode streams
    assert all((t["ttft_ms"] is not None) == websocket for t in turns)
    convs = conversations(turns)
    # the helper: three tool calls, then the answer (one conversation); the forecaster: one turn
    assert sorted(len(c.tool_output_bytes) for c in convs) == [0, 3]
    helper = next(t for t in turns if t["turn"] == 3)
    assert helper["gap_ms"] is not None and helper["tool_outputs"] and all(b > 0 for b in helper["tool_outputs"])
    assert all("content" not in i for t in turns for i in t["input"])  # sizes and hashes only, by default
    trace = tmp_path / "agent.jsonl"
    trace.write_text(out.getvalue())
    sc = scenario_from_trace(trace, base="chat-1").replace(profile="instant", warmup=0, rounds=2)
    run = await asyncio.to_thread(
        runner.run,
        RunConfig(
            scenarios=[sc], transports=["https", "ws", "grpc"], states=("full",), out_dir=tmp_path / "run", quiet=True
        ),
    )
    cells = run.summary["cells"]
    assert len(cells) == 3
    assert all(c["failed_rollouts"] == 0 and c["n_rollouts"] == sc.rollouts for c in cells.values()), cells
    per_rollout = run.rollouts.groupby(["transport", "rollout_id"])["n_turns"].first()
    assert sorted(set(per_rollout)) == [1, 4]  # each conversation replayed with its own number of turns


def test_the_importer_samples_become_replays() -> None:
    moon = scenario_from_trace(TRACES / "mooncake-sample.jsonl")
    msgs = scenario_from_trace(TRACES / "messages-sample.jsonl", gap_ms=50)
    assert len(moon.replay) == 4 and len(msgs.replay) == 3
    assert [len(c.tool_output_bytes) for c in msgs.replay] == [4, 4, 4]
    assert all(g == 50 for c in msgs.replay for g in c.gaps_ms)
    first = read_trace(TRACES / "mooncake-sample.jsonl")[0]
    assert first["gap_ms"] is None and first["tool_outputs"] == []
    assert all(b > 0 for c in moon.replay for b in c.tool_output_bytes)
    assert moon.metadata(1)["tool_calls"] == str(len(moon.replay[1].tool_output_bytes))
