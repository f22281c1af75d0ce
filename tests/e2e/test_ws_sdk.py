"""The official ``openai`` SDK's ``responses.connect()`` against turnbench, unchanged but for its URLs.

A multi-turn function-calling loop with ``previous_response_id`` and ``store=False`` over one SDK
connection, against the standalone WebSocket server, the HTTPS server's own ``/v1/responses`` upgrade route,
and the CLI (``python -m servers ws``) driven from a subprocess with the synchronous client.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import pytest
from openai import AsyncOpenAI, OpenAI

from servers.base import RunningServer
from tests.e2e.test_ws_server import TOOLS, answer, rollout, tool_output, turn

pytestmark = pytest.mark.timeout(90)

META = {"tool_calls": "4", "seed": "5"}
TERMINAL = ("response.completed", "response.failed", "response.incomplete", "error")
ROOT = Path(__file__).resolve().parents[2]


def _next(prev: str | None, calls: list[Any]) -> dict[str, Any]:
    """The next ``response.create`` of the loop: only the new items after the first turn."""
    if prev is None:
        return {"model": "m", "input": "Find out.", "tools": TOOLS, "store": False, "metadata": META}
    outputs = [
        {
            "type": "function_call_output",
            "call_id": c.call_id,
            "output": tool_output({"name": c.name, "arguments": c.arguments}),
        }
        for c in calls
    ]
    return {
        "model": "m",
        "previous_response_id": prev,
        "input": outputs,
        "tools": TOOLS,
        "store": False,
        "metadata": META,
    }


async def sdk_loop(client: AsyncOpenAI, server: RunningServer) -> tuple[str, list[str], list[str]]:
    """Returns: the final answer, the tool names called, the server-side state of each turn."""
    assert server.tls is not None
    options = cast(Any, {"ssl": server.tls.client_ssl_context()})  # passed through to websockets.connect
    names: list[str] = []
    states: list[str] = []
    async with client.responses.connect(websocket_connection_options=options) as conn:
        prev: str | None = None
        calls: list[Any] = []
        for _ in range(10):
            await conn.response.create(**_next(prev, calls))
            event = await conn.recv()
            while event.type not in TERMINAL:
                event = await conn.recv()
            assert event.type == "response.completed", event
            response = cast(Any, event).response
            states.append(response.model_extra["turnbench"]["state"])
            calls = [o for o in response.output if o.type == "function_call"]
            if not calls:
                return response.output_text, names, states
            names += [c.name for c in calls]
            prev = response.id
    raise AssertionError("no final answer")


async def _reference(serve: Any, connect: Any) -> dict[str, Any]:
    server = await serve("ws")
    turns = await rollout(await connect("ws", server), "full", META)
    return turns[-1][1]


async def test_sdk_connect_runs_a_tool_loop_on_the_ws_server(serve, connect):
    server = await serve("ws", api_key="sk-test")
    client = AsyncOpenAI(api_key="sk-test", base_url="https://unused.invalid/v1", websocket_base_url=server.url)
    try:
        text, names, states = await sdk_loop(client, server)
    finally:
        await client.close()
    assert len(names) == 4 and set(names) <= {"lookup", "count"}
    assert states == ["full"] + ["connection"] * 4
    assert text and text == answer(await _reference(serve, connect))


async def test_sdk_connect_on_the_https_server_upgrade_route(serve, connect):
    server = await serve("https", api_key="sk-test")
    # only the call changes: the SDK derives wss://…/v1/responses from the HTTPS base URL
    assert server.tls is not None
    client = AsyncOpenAI(api_key="sk-test", base_url=server.url)
    try:
        text, _, states = await sdk_loop(client, server)
    finally:
        await client.close()
    assert states == ["full"] + ["connection"] * 4
    assert text == answer(await _reference(serve, connect))


def test_sync_sdk_against_the_cli_server():
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "servers",
            "ws",
            "--no-tls",
            "--port",
            "0",
            "--profile",
            "instant",
            "--usage-db",
            ":memory:",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        port = None
        for line in proc.stdout:
            if line.startswith("PORT="):
                port = int(line.strip().split("=", 1)[1])
                break
        assert port, "the server printed no PORT= line"
        client = OpenAI(api_key="sk-none", base_url=f"http://127.0.0.1:{port}/v1")  # → ws://…/v1/responses
        try:
            with client.responses.connect() as conn:
                conn.response.create(
                    model="m",
                    input="go",
                    tools=cast(Any, TOOLS),
                    store=False,
                    metadata={"tool_calls": "1", "seed": "2"},
                )
                events = [conn.recv()]
                while events[-1].type not in TERMINAL:
                    events.append(conn.recv())
                first = cast(Any, events[-1]).response
                (call,) = [o for o in first.output if o.type == "function_call"]
                conn.response.create(
                    model="m",
                    previous_response_id=first.id,
                    store=False,
                    input=[{"type": "function_call_output", "call_id": call.call_id, "output": "done"}],
                )
                event = conn.recv()
                while event.type not in TERMINAL:
                    event = conn.recv()
                assert event.type == "response.completed"
                assert cast(Any, event).response.output_text
        finally:
            client.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0  # graceful: drains and exits cleanly
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


async def test_sdk_ws_client_rollout_matches_the_ws_client(serve, connect):
    server = await serve("ws")
    sdk = await connect("sdk-ws", server)
    turns = await rollout(sdk, "connection", META, size=4096)
    assert [r["turnbench"]["state"] for _, r in turns] == ["full"] + ["connection"] * 4
    assert all(t.bytes_up > 0 and t.bytes_down > 0 and t.ttft_ms is not None for t, _ in turns)
    assert answer(turns[-1][1]) == answer(await _reference(serve, connect))
    rec, _ = await turn(sdk, {"model": "m", "input": "x", "previous_response_id": "resp_gone", "store": False})
    assert rec.error_code == "previous_response_not_found"
    rec, _ = await turn(sdk, {"model": "m", "input": "hi", "store": False, "metadata": {"tool_calls": "0"}})
    assert rec.success, rec.error


async def test_sdk_steering_call_redirects_a_running_answer(serve):
    """``conn.response.steer(...)`` as the SDK's users call it: the SDK parses the accepted event, the running
    answer ends steered, and the successor the server starts by itself completes."""
    server = await serve("ws", profile="frontier")
    assert server.tls is not None
    client = AsyncOpenAI(api_key="sk-none", base_url="https://unused.invalid/v1", websocket_base_url=server.url)
    options = cast(Any, {"ssl": server.tls.client_ssl_context()})
    async with client.responses.connect(websocket_connection_options=options) as conn:
        await conn.response.create(
            model="m", input="Write the long report.", store=False, metadata={"tool_calls": "0", "answer_tokens": "300"}
        )
        event = await conn.recv()
        rid = cast(Any, event).response.id
        while event.type != "response.output_text.delta":
            event = await conn.recv()
        await conn.response.steer(input="Make it one sentence.", previous_response_id=rid)
        kinds: list[str] = []
        successor: Any = None
        while kinds.count("response.completed") + kinds.count("response.incomplete") < 2:
            event = await conn.recv()
            kinds.append(event.type)
            if event.type == "response.steer.accepted":
                assert cast(Any, event).steer.previous_response_id == rid
            if event.type == "response.incomplete":
                assert cast(Any, event).response.incomplete_details.reason == "steered"
            if event.type == "response.created":
                successor = cast(Any, event).response
    assert "response.steer.accepted" in kinds and kinds[-1] == "response.completed"
    assert successor is not None and successor.previous_response_id == rid
    await client.close()
