"""turnbench as the engine behind a real gateway: ``turnbench serve https --no-tls --role engine`` in its own
process, the Agentic API gateway from PyPI (``agentic-api``, the ``[gateways]`` extra) in front of it, and one
agent rollout per transport and state over the gateway's HTTP and WebSocket mode. The upstream's usage log must
hold one row per request the gateway made. Beside it, what a gateway asks of its upstream, over real sockets:
``GET /health``, ``/v1/models``, ``/v1/chat/completions`` with the official SDK, the engine role's prefix
cache, and ``--inject-ms``.

The gateway tests are skipped where ``agentic_api`` is not installed, except in CI (``CI`` set), where they
fail: ``.ci/run`` installs the extra.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import secrets
import sqlite3
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from loadtests.execution.gateways import start_gateway
from loadtests.execution.plan import RunConfig
from loadtests.execution.procs import target_endpoint
from loadtests.runs import runner
from loadtests.workload.scenarios import load_scenario
from tests.conftest import TIMEOUT_FACTOR

pytestmark = pytest.mark.timeout(240 * TIMEOUT_FACTOR)
START_S = 30 * TIMEOUT_FACTOR
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "read_file",
            "description": "read a file of the repository",
            "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
        },
    }
]


def need_gateway() -> None:
    if importlib.util.find_spec("agentic_api") is None:
        if os.environ.get("CI"):
            pytest.fail("agentic-api is not installed: .ci/run installs the [gateways] extra")
        pytest.skip("agentic-api is not installed (pip install -e '.[gateways]')")


@contextlib.asynccontextmanager
async def upstream(tmp_path: Path, *flags: str) -> AsyncIterator[tuple[str, Path]]:
    """``turnbench serve https --no-tls`` with ``flags`` in its own process: (its base URL, its usage log)."""
    usage = tmp_path / f"usage-{secrets.token_hex(4)}.db"
    cmd = [sys.executable, "-m", "servers", "https", "--no-tls", "--port", "0", "--usage-db", str(usage), *flags]
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(START_S):
            while not lines or not lines[-1].startswith("PORT="):
                line = (await proc.stdout.readline()).decode()
                assert line, f"turnbench serve exited early: {lines}"
                lines.append(line.strip())
        yield f"http://127.0.0.1:{lines[-1].removeprefix('PORT=')}/v1", usage
    finally:
        if proc.returncode is None:
            proc.terminate()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(15):
                    await proc.wait()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


@contextlib.asynccontextmanager
async def gateway(upstream_url: str, tmp_path: Path) -> AsyncIterator[int]:
    """The Agentic API gateway in front of ``upstream_url``, on a free loopback port, ready (``/health`` 200),
    started as the gateway study starts it (:func:`loadtests.execution.gateways.start_gateway`)."""
    up = target_endpoint("https", upstream_url, ca_path=None, api_key=None)
    https, _ws = await asyncio.to_thread(start_gateway, up, workdir=tmp_path / "gateway", timeout_s=START_S)
    assert https.process is not None
    try:
        yield https.process.port
    finally:
        await asyncio.to_thread(https.process.stop, 15.0)


def usage_rows(path: Path) -> list[dict[str, Any]]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM usage ORDER BY arrival")]


async def usage_rows_after(path: Path, n: int) -> list[dict[str, Any]]:
    """The usage log once it holds ``n`` rows: the post stage writes a row after the answer is sent, later
    still on a busy machine (gives up after a bounded wait and returns what is there)."""
    for _ in range(int(START_S / 0.05)):
        if len(rows := usage_rows(path)) >= n:
            return rows
        await asyncio.sleep(0.05)
    return usage_rows(path)


def agent_run(targets: dict[str, str], transports: list[str], states: tuple[str, ...], out: Path) -> Any:
    config = RunConfig(
        scenarios=[load_scenario("agent-5").replace(rollouts=1, rounds=1, warmup=0, tls=False)],
        transports=transports,
        states=states,  # type: ignore[arg-type]
        targets=targets,
        out_dir=out,
        quiet=True,
        cpu_pinning="off",
    )
    return runner.run(config)


async def test_one_rollout_per_transport_and_state_over_the_gateway(tmp_path: Path) -> None:
    need_gateway()
    async with upstream(tmp_path, "--role", "engine", "--profile", "instant") as (url, usage):
        async with gateway(url, tmp_path) as port:
            targets = {"https": f"http://127.0.0.1:{port}/v1", "ws": f"ws://127.0.0.1:{port}/v1"}
            run = await asyncio.to_thread(
                agent_run, targets, ["https", "ws"], ("full", "store", "connection"), tmp_path / "gw"
            )
            rows = usage_rows(usage)
        # the same rollout straight from the upstream: the model's answer, to compare with
        direct = await asyncio.to_thread(agent_run, {"https": url}, ["https"], ("full",), tmp_path / "direct")
    cells = {(c["transport"], c["state"]): c for c in run.summary["cells"].values()}
    assert {("https", "full"), ("https", "store"), ("ws", "store"), ("ws", "connection")} <= set(cells)
    for cell in cells.values():
        assert cell["n_rollouts"] == 1 and cell["failed_rollouts"] == 0, cell["first_error"]
    answers = set(run.rollouts["final_output"])
    assert answers == set(direct.rollouts["final_output"]) and all(answers)
    turns = run.turns
    assert turns["success"].all()
    # one upstream request per turn, in order of arrival, each a stateless request with the whole history
    assert len(rows) == len(turns) and [r["arrival"] for r in rows] == list(range(1, len(rows) + 1))
    assert {(r["role"], r["transport"], r["state"], r["status"]) for r in rows} == {
        ("engine", "https", "full", "completed")
    }
    assert sorted(r["input_tokens"] for r in rows) == sorted(int(n) for n in turns["input_tokens"])
    for row in rows:
        stages = json.loads(row["stages"])
        assert "safety" not in stages and stages["tokenize"]["tokens"] == row["input_tokens"]
        assert row["elapsed_ms"] > 0


async def test_what_a_gateway_asks_of_its_upstream(tmp_path: Path) -> None:
    async with upstream(tmp_path, "--role", "engine", "--profile", "instant") as (url, usage):
        async with httpx.AsyncClient(timeout=10.0) as http:
            health = await http.get(url.removesuffix("/v1") + "/health")
            models = (await http.get(f"{url}/models")).json()
            bad = await http.post(f"{url}/chat/completions", json={"model": "m", "messages": [{"role": "nobody"}]})
            still = await http.get(url.removesuffix("/v1") + "/health")
        assert health.status_code == 200 and health.content == b""
        assert models["object"] == "list" and all(
            {"id", "object", "created", "owned_by"} <= set(m) for m in models["data"]
        )
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "messages[0].role"
        assert still.status_code == 200

        client = openai.AsyncOpenAI(base_url=url, api_key="unused", max_retries=0, timeout=30.0)
        messages: list[Any] = [{"role": "system", "content": "You are a coding agent. " * 30}]
        messages.append({"role": "user", "content": "Fix the failing test."})
        stream = await client.chat.completions.create(
            model="m",
            messages=messages,
            tools=TOOLS,  # type: ignore[arg-type]
            stream=True,
            stream_options={"include_usage": True},
            metadata={"tool_calls": "1"},
            extra_headers={"x-request-id": "gw-turn-1"},
        )
        call: dict[str, str] = {"arguments": ""}
        finish, first_usage = None, None
        async for chunk in stream:
            if chunk.usage is not None:
                first_usage = chunk.usage
            for choice in chunk.choices:
                finish = choice.finish_reason or finish
                for tc in choice.delta.tool_calls or []:
                    call["id"] = tc.id or call.get("id", "")
                    if tc.function is not None:
                        call["name"] = tc.function.name or call.get("name", "")
                        call["arguments"] += tc.function.arguments or ""
        assert finish == "tool_calls" and call["name"] == "read_file" and "path" in json.loads(call["arguments"])
        assert first_usage is not None and first_usage.prompt_tokens > 0
        messages.append(
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": call["id"],
                        "type": "function",
                        "function": {"name": "read_file", "arguments": call["arguments"]},
                    }
                ],
            }
        )
        messages.append({"role": "tool", "tool_call_id": call["id"], "content": "def test(): assert 1 == 2\n" * 20})
        answer = await client.chat.completions.create(
            model="m", messages=messages, tools=TOOLS, metadata={"tool_calls": "1"}
        )  # type: ignore[arg-type]
        await client.close()
        assert answer.choices[0].finish_reason == "stop" and answer.choices[0].message.content
        assert answer.usage is not None and answer.usage.prompt_tokens_details is not None
        # the engine's prefix cache: the second request prefilled only what the first had not
        cached = answer.usage.prompt_tokens_details.cached_tokens or 0
        assert cached >= first_usage.prompt_tokens - 16 and cached < answer.usage.prompt_tokens
        rows = await usage_rows_after(usage, 2)
    chat_rows = [r for r in rows if r["endpoint"] == "chat.completions"]
    assert len(chat_rows) == 2 and chat_rows[0]["request_id"] == "gw-turn-1" and chat_rows[1]["request_id"] is None
    assert chat_rows[1]["cached_tokens"] == cached
    second = json.loads(chat_rows[1]["stages"])
    assert second["prefill"]["tokens"] == chat_rows[1]["input_tokens"] - cached


async def test_inject_ms_is_a_stage_of_every_model_request(tmp_path: Path) -> None:
    async with upstream(tmp_path, "--role", "engine", "--profile", "instant", "--inject-ms", "5") as (url, usage):
        async with httpx.AsyncClient(timeout=10.0) as http:
            body = {"model": "m", "input": "hi", "metadata": {"tool_calls": "0", "answer_tokens": "3"}}
            response = (await http.post(f"{url}/responses", json=body)).json()
            chat = (
                await http.post(
                    f"{url}/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "hi"}]}
                )
            ).json()
        rows = await usage_rows_after(usage, 2)
    for stages in (
        response["turnbench"]["stages"],
        chat["turnbench"]["stages"],
        *(json.loads(r["stages"]) for r in rows),
    ):
        assert stages["injected"]["wall_ns"] >= 5_000_000  # a sleep of 5 ms never ends sooner
    assert len(rows) == 2
