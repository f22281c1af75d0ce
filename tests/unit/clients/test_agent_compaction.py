"""The agent loop's compaction (``compact_every``): which requests are compaction calls, turns right after one or
ordinary turns, what each state strategy sends after a compaction, and how a failed or impossible compaction
ends. A scripted client keeps every request it was sent; no server, no clock."""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import pytest

from clients.agent import Toolbox, corpus_files, run_rollout
from clients.base import ClientConfig, ResponsesClient, TurnRecorder
from clients.record import PHASES

COMPACTION = {"type": "compaction", "id": "cmp_1", "encrypted_content": "tbc1.x.y"}


class Scripted(ResponsesClient):
    """Function calls until the context holds ``tool_calls`` outputs, then an answer; compacts to the user messages
    and one compaction item that stands for the outputs it replaced (as the real server's does)."""

    transport: ClassVar[str] = "scripted"
    serves_compact: ClassVar[bool] = True

    def __init__(self, tool_calls: int, *, fail_compact: bool = False) -> None:
        super().__init__(ClientConfig(url=""))
        self.tool_calls, self.fail_compact = tool_calls, fail_compact
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.ids: list[str] = []  # the id of each create's response, in order
        self.outputs: set[str] = set()  # the call ids of the tool outputs the conversation holds
        self.path = corpus_files()[0]

    async def connect(self) -> float | None:
        return None

    async def close(self) -> None:
        return None

    async def create(self, body: dict[str, Any], *, recorder: TurnRecorder) -> dict[str, Any]:
        self.sent.append(("create", copy.deepcopy(body)))  # as sent: the loop's history grows after
        recorder.sent(len(str(body)))
        self.outputs |= {i["call_id"] for i in body["input"] if i.get("type") == "function_call_output"}
        n = len(self.sent)
        if len(self.outputs) < self.tool_calls:
            out: dict[str, Any] = {
                "type": "function_call",
                "call_id": f"c{n}",
                "name": "word_count",
                "arguments": f'{{"path": "{self.path}"}}',
            }
        else:
            out = {"type": "message", "content": [{"type": "output_text", "text": "done"}]}
        self.ids.append(f"resp_{n}")
        response = {"id": f"resp_{n}", "output": [out]}
        return recorder.interpret({"type": "response.completed", "response": response}) or {}

    async def compact(self, body: dict[str, Any], *, recorder: TurnRecorder) -> dict[str, Any]:
        self.sent.append(("compact", copy.deepcopy(body)))
        recorder.sent(len(str(body)))
        if self.fail_compact:
            recorder.fail("no", "server_error")
            return {}
        user = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "task"}]}
        reply = {"id": "resp_c", "object": "response.compaction", "output": [user, COMPACTION]}
        return recorder.interpret({"type": "response.completed", "response": reply}) or {}


def toolbox() -> Toolbox:
    return Toolbox(output_bytes=128)


async def test_every_kth_tool_turn_is_followed_by_a_compaction_and_a_new_turn() -> None:
    client = Scripted(tool_calls=5)
    result = await run_rollout(client, state="full", toolbox=toolbox(), compact_every=2)
    assert result.success and result.final_output == "done" and result.compactions == 2
    assert [t.phase for t in result.turns] == [
        "turn", "turn", "compact",  # two tool-calling turns, then a compaction
        "after_compact", "turn", "compact",  # the 3rd and 4th calls, a compaction
        "after_compact", "turn",  # the 5th call, then the answer
    ]  # fmt: skip
    assert {t.phase for t in result.turns} <= set(PHASES)
    assert [t.turn_index for t in result.turns] == list(range(8))  # a compaction call is a request of its own
    assert [kind for kind, _ in client.sent].count("compact") == 2
    assert len(result.tool_calls) == 5
    for t in result.turns:
        assert t.input_bytes > 0  # every request carried an input


async def test_full_sends_the_compacted_items_and_the_new_tool_output_after_a_compaction() -> None:
    client = Scripted(tool_calls=3)
    result = await run_rollout(client, state="full", toolbox=toolbox(), compact_every=2)
    assert result.success
    kinds = [kind for kind, _ in client.sent]
    assert kinds == ["create", "create", "compact", "create", "create"]
    compacted = client.sent[2][1]["input"]
    # the conversation up to the model's second call: user message, call, output, call (its output comes after)
    assert [i["type"] for i in compacted] == ["message", "function_call", "function_call_output", "function_call"]
    after = client.sent[3][1]
    assert "previous_response_id" not in after
    assert [i["type"] for i in after["input"]] == ["message", "compaction", "function_call_output"]
    assert after["input"][2]["call_id"] == compacted[-1]["call_id"]  # the output of the call inside the compaction
    before_bytes = next(t for t in result.turns if t.turn_index == 1).input_bytes
    after_bytes = next(t for t in result.turns if t.phase == "after_compact").input_bytes
    assert after_bytes < before_bytes + len(str(COMPACTION)) + 200  # the history is gone, not appended to


@pytest.mark.parametrize("state", ["store", "connection"])
async def test_chaining_states_start_a_new_chain_after_a_compaction(state: str) -> None:
    client = Scripted(tool_calls=4)
    result = await run_rollout(client, state=state, toolbox=toolbox(), compact_every=2)
    assert result.success and result.compactions == 2
    creates = [body for kind, body in client.sent if kind == "create"]
    phases = [t.phase for t in result.turns if t.phase != "compact"]
    assert len(creates) == len(phases)
    for body, phase in zip(creates, phases, strict=True):
        if phase == "after_compact":
            assert "previous_response_id" not in body  # a new chain, from the compacted items
            assert [i["type"] for i in body["input"]] == ["message", "compaction", "function_call_output"]
        elif body is not creates[0]:
            assert body["previous_response_id"].startswith("resp_")
            assert [i["type"] for i in body["input"]] == ["function_call_output"]
        assert body["store"] is (state == "store")
    # the chain goes on from the first turn of the new chain
    after = phases.index("after_compact")
    assert creates[after + 1]["previous_response_id"] == client.ids[after]


async def test_store_compacts_by_the_stored_response_id_when_asked() -> None:
    client = Scripted(tool_calls=2)
    result = await run_rollout(client, state="store", toolbox=toolbox(), compact_every=1, compact_by_id=True)
    assert result.success
    compacts = [body for kind, body in client.sent if kind == "compact"]
    assert compacts and all(set(b) == {"model", "previous_response_id"} for b in compacts)
    assert [t.input_bytes for t in result.turns if t.phase == "compact"] == [2, 2]  # "[]": no history sent


async def test_a_failed_compaction_ends_the_rollout_with_its_error() -> None:
    result = await run_rollout(
        Scripted(tool_calls=4, fail_compact=True), state="full", toolbox=toolbox(), compact_every=2
    )
    assert not result.success and result.compactions == 0
    assert result.error is not None and result.error.startswith("compaction failed: server_error")
    assert result.turns[-1].phase == "compact" and not result.turns[-1].success


class NoCompact(Scripted):
    serves_compact: ClassVar[bool] = False


async def test_a_client_that_cannot_compact_needs_a_compactor() -> None:
    with pytest.raises(ValueError, match="cannot compact"):
        await run_rollout(NoCompact(tool_calls=2), state="full", toolbox=toolbox(), compact_every=1)
    with pytest.raises(ValueError, match="compact_every"):
        await run_rollout(Scripted(tool_calls=2), state="full", toolbox=toolbox(), compact_every=-1)
    helper = Scripted(tool_calls=99)  # compacts for the other one, as an HTTPS client compacts for a WebSocket one
    client = NoCompact(tool_calls=2)
    result = await run_rollout(client, state="connection", toolbox=toolbox(), compact_every=1, compactor=helper)
    assert result.success and result.compactions == 2
    assert [kind for kind, _ in helper.sent] == ["compact", "compact"]
    assert [kind for kind, _ in client.sent] == ["create"] * 3


async def test_without_compact_every_nothing_changes() -> None:
    result = await run_rollout(Scripted(tool_calls=3), state="store", toolbox=toolbox())
    assert result.success and result.compactions == 0
    assert {t.phase for t in result.turns} == {"turn"}


class ElsewhereStore(Scripted):
    """A compactor whose server does not hold the stored response (another process): by id, not found."""

    async def compact(self, body: dict[str, Any], *, recorder: TurnRecorder) -> dict[str, Any]:
        if "previous_response_id" in body:
            self.sent.append(("compact", copy.deepcopy(body)))
            recorder.sent(10)
            recorder.fail("Previous response not found.", "previous_response_not_found")
            return {}
        return await super().compact(body, recorder=recorder)


async def test_compacting_by_id_falls_back_to_the_history_where_the_response_is_not_stored() -> None:
    client = ElsewhereStore(tool_calls=2)
    result = await run_rollout(client, state="store", toolbox=toolbox(), compact_every=1, compact_by_id=True)
    assert result.success and result.compactions == 2
    compacts = [body for kind, body in client.sent if kind == "compact"]
    assert [set(b) for b in compacts] == [{"model", "previous_response_id"}, {"model", "input"}] * 2
    recorded = [t for t in result.turns if t.phase == "compact"]
    assert len(recorded) == 2 and all(t.success and t.input_bytes > 2 for t in recorded)  # the call that counted


class Raising(Scripted):
    async def compact(self, body: dict[str, Any], *, recorder: TurnRecorder) -> dict[str, Any]:
        raise RuntimeError("boom")


async def test_a_compactor_that_raises_is_a_failed_compaction() -> None:
    result = await run_rollout(Raising(tool_calls=3), state="connection", toolbox=toolbox(), compact_every=1)
    assert not result.success and result.error == "compaction failed: client_exception: RuntimeError: boom"
