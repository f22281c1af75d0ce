"""The run model and the runner's clocks and schedules: scripted time, so every figure is known exactly.

A scripted client plays one fixed event timeline per turn on a fake clock; the agent loop and the recorder
turn it into samples, and the tests check the identities of docs/concepts/measurements.md (``turn_ms == ttft_ms +
sum(itl_ms)
+ tail``, ``latency_ms == queue_ms + turn_ms``) and that an open loop whose generator runs late counts the
wait instead of hiding it. Planning: which cells a run makes, with which server settings, on which server.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import pytest

from clients.agent import Toolbox, corpus_files, run_rollout
from clients.base import ClientConfig, ResponsesClient, TurnRecorder
from loadtests.execution.loops import chunk_plan, closed_loop, open_loop, poisson_offsets, split_rounds
from loadtests.execution.plan import Cell, RunConfig, plan_cells
from loadtests.workload.scenarios import load_scenario
from turnbench.tokenizer import DEFAULT_CORPUS

MS = 1_000_000  # ns


class FakeClock:
    """A monotonic clock in ns that moves only when told to."""

    def __init__(self, t_ns: int = 1_000 * MS) -> None:
        self.t = t_ns

    def __call__(self) -> int:
        return self.t

    def advance_ms(self, ms: float) -> None:
        self.t += round(ms * MS)

    async def sleep(self, seconds: float) -> None:
        """A generator that always oversleeps by 5 ms: it is late for every arrival after the first."""
        self.advance_ms(seconds * 1000 + 5)
        await asyncio.sleep(0)


# per turn: send, +3 ms first event, +2 ms first delta, gaps of 1, 2, 4 ms, +3 ms tail to the terminal event
TTFB_MS, TTFT_MS, GAPS_MS, TAIL_MS = 3.0, 5.0, (1.0, 2.0, 4.0), 3.0


class ScriptedClient(ResponsesClient):
    """Plays a fixed timeline on a fake clock: function calls until ``tool_calls``, then an answer."""

    transport: ClassVar[str] = "scripted"

    def __init__(self, clock: FakeClock, tool_calls: int = 3) -> None:
        super().__init__(ClientConfig(url=""))
        self.clock, self.tool_calls, self.calls = clock, tool_calls, 0
        self.path = corpus_files()[0]

    async def connect(self) -> float | None:
        self.clock.advance_ms(1.5)
        return 1.5

    async def close(self) -> None:
        return None

    async def create(self, body: dict[str, Any], *, recorder: TurnRecorder) -> dict[str, Any]:
        recorder.sent(100)
        self.clock.advance_ms(TTFB_MS)
        recorder.on_event("response.created", 50)
        self.clock.advance_ms(TTFT_MS - TTFB_MS)
        kind = (
            "response.function_call_arguments.delta" if self.calls < self.tool_calls else "response.output_text.delta"
        )
        recorder.on_event(kind, 20)
        for gap in GAPS_MS:
            self.clock.advance_ms(gap)
            recorder.on_event(kind, 20)
        self.clock.advance_ms(TAIL_MS)
        recorder.on_event("response.completed", 300)
        if self.calls < self.tool_calls:
            out: dict[str, Any] = {
                "type": "function_call",
                "call_id": f"c{self.calls}",
                "name": "word_count",
                "arguments": f'{{"path": "{self.path}"}}',
            }
        else:
            out = {"type": "message", "content": [{"type": "output_text", "text": "done"}]}
        self.calls += 1
        response = {
            "id": f"resp_{self.calls}",
            "status": "completed",
            "output": [out],
            "usage": {"input_tokens": 10, "output_tokens": 4},
        }
        recorder.on_response(response)
        return response


def test_toolbox_offers_stored_sources_under_their_python_names() -> None:
    """The corpus stores its sources as ``NAME.py.txt``; the tools offer and read them as ``NAME.py``, so the
    definitions and outputs an agent sees (and a benchmark's bytes) do not depend on the storage suffix."""
    files = corpus_files()
    assert "src/abc.py" in files and "docs/idle_news.txt" in files
    assert not [f for f in files if f.endswith(".py.txt")]
    assert list(files) == sorted(files)
    tb = Toolbox(output_bytes=0)
    assert tb.definitions()[0]["parameters"]["properties"]["path"]["enum"] == list(files)
    assert tb.execute("read_file", '{"path": "src/abc.py"}') == (DEFAULT_CORPUS / "src" / "abc.py.txt").read_text()
    assert tb.execute("read_file", '{"path": "src/abc.py.txt"}') == "error: FileNotFoundError: src/abc.py.txt"


async def test_turn_identity_with_a_scripted_clock() -> None:
    clock = FakeClock()
    result = await run_rollout(
        ScriptedClient(clock, tool_calls=3), state="full", toolbox=Toolbox(output_bytes=256), clock=clock
    )
    assert result.success and len(result.turns) == 4 and result.final_output == "done"
    for t in result.turns:
        assert t.ttfb_ms == TTFB_MS and t.ttft_ms == TTFT_MS and t.itl_ms == list(GAPS_MS)
        assert t.turn_ms == t.ttft_ms + sum(t.itl_ms) + TAIL_MS
        assert t.queue_ms == 0.0 and t.latency_ms == t.turn_ms  # closed loop: clock starts at send
        assert t.chunks == 4 and t.bytes_down == 50 + 4 * 20 + 300
    per_turn = TTFT_MS + sum(GAPS_MS) + TAIL_MS
    assert result.rollout_ms == pytest.approx(4 * per_turn)  # tools took no scripted time


async def test_late_first_send_counts_as_queueing() -> None:
    clock = FakeClock()
    scheduled = clock() - 7 * MS  # the rollout was due 7 ms ago
    result = await run_rollout(
        ScriptedClient(clock, tool_calls=1),
        state="store",
        toolbox=Toolbox(output_bytes=64),
        clock=clock,
        scheduled_ns=scheduled,
        connect_ms=1.25,
    )
    first, second = result.turns
    assert first.turn_ms is not None and first.queue_ms == 7.0
    assert first.latency_ms == first.queue_ms + first.turn_ms
    assert second.queue_ms == 0.0 and second.latency_ms == second.turn_ms
    assert first.connect_ms == 1.25 and second.connect_ms is None and result.connect_ms == 1.25
    assert result.rollout_ms == pytest.approx(7.0 + 2 * (TTFT_MS + sum(GAPS_MS) + TAIL_MS))


async def test_open_loop_with_a_late_generator_keeps_scheduled_times() -> None:
    clock = FakeClock()
    offsets = [0.0, 0.010, 0.020, 0.030]
    seen: list[tuple[int, int, int]] = []
    t0 = clock()

    async def job(i: int, due: int) -> Any:
        seen.append((i, due, clock()))
        return await run_rollout(
            ScriptedClient(clock, tool_calls=1),
            state="full",
            toolbox=Toolbox(output_bytes=64),
            clock=clock,
            scheduled_ns=due,
        )

    results = await open_loop(offsets, job, clock=clock, sleep=clock.sleep)
    assert [i for i, _, _ in seen] == [0, 1, 2, 3]  # nothing skipped or coalesced
    assert [due for _, due, _ in seen] == [t0 + round(o * 1e9) for o in offsets]
    late = [(start - due) / MS for _, due, start in seen]
    assert all(x >= 0.0 for x in late) and max(late) >= 5.0
    for r, lateness in zip(results, late, strict=True):
        first = r.turns[0]
        assert first.queue_ms == pytest.approx(lateness) and first.turn_ms is not None
        assert first.latency_ms == pytest.approx(first.queue_ms + first.turn_ms)
    assert any(r.turns[0].queue_ms > 0 for r in results)


def test_poisson_schedule_is_seeded_and_has_the_asked_rate() -> None:
    a, b = poisson_offsets(4.0, 2000, seed=1), poisson_offsets(4.0, 2000, seed=1)
    assert a == b and a[0] == 0.0 and a == sorted(a)
    assert poisson_offsets(4.0, 50, seed=2) != a[:50]
    mean_gap = a[-1] / (len(a) - 1)
    assert mean_gap == pytest.approx(0.25, rel=0.1)
    with pytest.raises(ValueError):
        poisson_offsets(0.0, 3, seed=1)


def test_split_rounds() -> None:
    assert split_rounds(7, 3) == [3, 2, 2]
    assert split_rounds(4, 2) == [2, 2]
    assert sum(split_rounds(11, 4)) == 11


async def test_closed_loop_caps_concurrency_and_keeps_order() -> None:
    in_flight = peak = 0

    def make(i: int) -> Any:
        async def job() -> int:
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            for _ in range(3):
                await asyncio.sleep(0)
            in_flight -= 1
            return i

        return job

    assert await closed_loop([make(i) for i in range(7)], 3) == list(range(7))
    assert peak == 3


def test_plan_cells_default_states_and_calibration_adds_inproc() -> None:
    cfg = RunConfig(scenarios=[load_scenario("agent-5"), load_scenario("calibration")], transports=["https", "ws"])
    cells = plan_cells(cfg)
    ids = [c.cell for c in cells]
    assert len(ids) == len(set(ids))
    agent = [(c.transport, c.state) for c in cells if c.scenario.name == "agent-5"]
    assert agent == [("https", "full"), ("https", "store"), ("ws", "connection"), ("ws", "store"), ("ws", "full")]
    calib = {c.transport for c in cells if c.scenario.name == "calibration"}
    assert calib == {"https", "ws", "inproc"}
    assert all(not c.tls for c in cells if c.transport == "inproc")
    assert {c.endpoint_key for c in cells if c.transport == "ws"} == {"ws/fast/tls", "ws/calibration/tls"}
    assert [c.number for c in cells] == list(range(len(cells)))


def test_plan_cells_overrides_multiply() -> None:
    cfg = RunConfig(
        scenarios=[load_scenario("agent-5")],
        transports=["https", "ws"],
        states=("connection",),
        profiles=("instant", "frontier"),
        rates_rps=(2.0,),
        variant="tpc4",
    )
    cells = plan_cells(cfg)
    assert [(c.transport, c.state, c.profile) for c in cells] == [
        ("ws", "connection", "instant"),
        ("ws", "connection", "frontier"),
    ]
    assert all(c.mode == "open" and c.arrival_rate_rps == 2.0 and c.concurrency is None for c in cells)
    assert cells[0].cell == "agent-5:ws:connection:instant:r2:tpc4"
    with pytest.raises(ValueError, match="unknown transport"):
        plan_cells(RunConfig(scenarios=[load_scenario("agent-5")], transports=["smoke"]))


def test_a_cell_knows_its_server_from_the_table() -> None:
    cells = plan_cells(
        RunConfig(
            scenarios=[load_scenario("agent-5")],
            states=("full",),
            transports=["sdk-https", "grpc-create", "https-h2", "inproc"],
        )
    )
    assert {c.transport: c.server for c in cells} == {
        "sdk-https": "https",
        "grpc-create": "grpc",
        "https-h2": "https",
        "inproc": "inproc",
    }


def test_cells_carry_their_server_settings_and_get_servers_by_them() -> None:
    cfg = RunConfig(
        scenarios=[load_scenario("agent-5")],
        transports=["https", "https-h2", "sdk-https", "inproc"],
        states=("full",),
        server_settings={"tokens_per_chunk": 4},
    )
    cells = {c.transport: c for c in plan_cells(cfg)}
    assert cells["https"].server_settings == {"tokens_per_chunk": 4}
    assert cells["https-h2"].server_settings == {"tokens_per_chunk": 4, "http2": True}  # the row's setting added
    assert cells["inproc"].server_settings == {"tokens_per_chunk": 4} and not cells["inproc"].tls
    # the same server protocol, different settings: a server each; the same settings: one server
    assert cells["https"].endpoint_key == cells["sdk-https"].endpoint_key == "https/fast/tls/tokens_per_chunk=4"
    assert cells["https-h2"].endpoint_key == "https/fast/tls/http2=true,tokens_per_chunk=4"
    assert cells["https-h2"].record()["settings"] == {"tokens_per_chunk": 4, "http2": True}


def test_chunk_plan_interleaves_cells_round_by_round() -> None:
    sc = load_scenario("agent-5").replace(rollouts=4, rounds=2, warmup=1)
    a = Cell(
        cell="A",
        scenario=sc,
        transport="https",
        state="full",
        profile="fast",
        concurrency=1,
        arrival_rate_rps=None,
        variant="default",
        tls=True,
    )
    b = Cell(
        cell="B",
        scenario=sc,
        transport="ws",
        state="store",
        profile="fast",
        concurrency=1,
        arrival_rate_rps=None,
        variant="default",
        tls=True,
    )
    plan = [(r, c.cell, idx, w) for r, c, idx, w in chunk_plan([a, b])]
    assert plan == [
        (0, "A", [0], True),
        (0, "B", [0], True),
        (1, "A", [1, 2], False),
        (1, "B", [1, 2], False),
        (2, "A", [3, 4], False),
        (2, "B", [3, 4], False),
    ]
