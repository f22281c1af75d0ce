"""A compacting agent rollout against real servers on 127.0.0.1, over every transport and state strategy: the loop
compacts its history every K tool-calling turns (``POST /v1/responses/compact``, over HTTPS for the WebSocket and
gRPC clients too, on the HTTPS server of the same deployment) and goes on from the compacted output. Checked: the
conversation continued (every tool call made, the answer given, new response ids), the model saw the compacted
context (the turn after a compaction counts more input tokens than the turn before it), the bytes a resending
turn sends dropped, and a chaining turn after a compaction started a new chain (the server rendered its whole
context, where a chained turn renders only its new items). Then the same through the runner and the report
section, at its smallest."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from clients.agent import Toolbox, run_rollout
from clients.record import TurnResult
from loadtests.execution.plan import RunConfig, plan_cells
from loadtests.extras import compaction
from loadtests.present.doc import Doc
from loadtests.runs import runner
from loadtests.runs.rundir import write_json
from loadtests.workload.scenarios import load_scenario
from tests.conftest import TIMEOUT_FACTOR

pytestmark = pytest.mark.timeout(180 * TIMEOUT_FACTOR)

CALLS, EVERY = 8, 4
KEY = "sk-compact"


def around(turns: list[TurnResult]) -> list[tuple[TurnResult, TurnResult, TurnResult]]:
    """(the model turn right before, the compaction call, the turn right after) for each compaction."""
    out = []
    for k, t in enumerate(turns):
        if t.phase == "compact":
            out.append((turns[k - 1], t, turns[k + 1]))
    return out


def rendered(t: TurnResult) -> int:
    return t.server_stages["render"].tokens


@pytest.mark.parametrize(
    ("transport", "state"),
    [
        ("https", "full"),
        ("https", "store"),
        ("ws", "full"),
        ("ws", "store"),
        ("ws", "connection"),
        ("grpc", "store"),
        ("grpc", "connection"),
    ],
)
async def test_a_compacting_rollout_continues_on_every_transport(
    serve: Any, connect: Any, transport: str, state: str
) -> None:
    https = await serve("https", api_key=KEY)
    server = https if transport == "https" else await serve(transport, api_key=KEY)
    client = await connect(transport, server)
    compactor = None if transport == "https" else await connect("https", https)  # the deployment's HTTPS server
    result = await run_rollout(
        client,
        state=state,
        toolbox=Toolbox(output_bytes=2048, seed=7),
        metadata={"tool_calls": str(CALLS), "seed": "7", "answer_tokens": "12"},
        compact_every=EVERY,
        compactor=compactor,
        compact_by_id=transport == "https" and state == "store",
    )
    assert result.success, result.error
    assert result.final_output and len(result.tool_calls) == CALLS and result.compactions == CALLS // EVERY
    phases = [t.phase for t in result.turns]
    assert phases.count("compact") == phases.count("after_compact") == CALLS // EVERY
    ids = [t.response_id for t in result.turns]
    assert all(i and i.startswith("resp_") for i in ids) and len(set(ids)) == len(ids)
    for before, compact, after in around(result.turns):
        assert compact.output_kind == "compaction" and compact.input_tokens > 0
        # the model saw the compacted context: all of the turn before's input, and the new tool output
        assert after.input_tokens > before.input_tokens
        if state == "full":
            assert after.input_bytes < before.input_bytes and after.bytes_up < before.bytes_up  # the history shrank
        else:
            assert after.bytes_up > before.bytes_up  # the new chain sends the compacted history once
            assert rendered(after) == after.input_tokens  # and the server renders all of it again
        if state != "full" and transport != "https":  # chained on the connection cache or hydrated with its tokens
            assert rendered(before) < before.input_tokens // 4
    if transport == "https" and state == "store":
        compacts = [t for t in result.turns if t.phase == "compact"]
        assert all(t.input_bytes == 2 and t.bytes_up < 1024 for t in compacts)  # by id: no history uploaded
    elif transport != "https":
        assert compactor is not None and client.transport == transport


def test_the_section_runs_through_the_runner_and_renders(tmp_path: Path) -> None:
    data = compaction.measure(tool_calls=10, compact_every=4, rollouts=1, profile="instant", transports=("https", "ws"))
    cells = {(c["transport"], c["state"]): c for c in data["cells"]}
    assert set(cells) == {("https", "full"), ("https", "store"), ("ws", "connection"), ("ws", "store"), ("ws", "full")}
    for key, c in cells.items():
        assert c["failed"] == 0 and c["compactions"] == 2, key
        assert c["after_input_tokens"] > c["before_input_tokens"]
    assert cells[("ws", "full")]["after_bytes_up"] < cells[("ws", "full")]["before_bytes_up"]
    assert cells[("ws", "connection")]["after_render_tokens"] > 4 * cells[("ws", "connection")]["before_render_tokens"]
    assert {r["phase"] for r in data["rows"]} == {"turn", "compact", "after_compact"}
    stored = json.loads(write_json(tmp_path / "compaction.json", data).read_text(encoding="utf-8"))
    doc = Doc("t")
    compaction.render(doc, stored)
    md = doc.markdown(tmp_path)
    assert "| ws/connection | 2 |" in md and "The turn after a compaction sent " in md
    assert compaction.plot(stored, tmp_path / "plots" / "compaction.png") is not None


def test_the_other_clients_of_the_table_compact_through_the_runner() -> None:
    """The SDK's clients, the raw HTTP/1.1 client, gRPC's json codec, HTTP/2 and the in-process reference: each
    compacts (on its own connection where it can, else through an HTTPS client of the deployment) and goes on."""
    sc = load_scenario("coding-agent-compact").replace(
        tool_calls=6, compact_every=3, rollouts=1, warmup=0, rounds=1, profile="instant"
    )
    transports = ["https-raw", "https-h2", "sdk-https", "sdk-ws", "grpc-json", "inproc"]
    config = RunConfig(scenarios=[sc], transports=transports, quiet=True)
    collected = runner.measure(config, plan_cells(config))
    assert {s.cell.transport for s in collected.samples} == set(transports)
    for s in collected.samples:
        r = s.rollout
        assert r.success and r.compactions == 2 and len(r.tool_calls) == 6, (s.cell.cell, r.error)
        assert [t.phase for t in r.turns].count("after_compact") == 2
