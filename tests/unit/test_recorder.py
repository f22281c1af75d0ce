"""TurnRecorder with a scripted clock: the timing identities of DESIGN §6, usage parsing, failures."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest

from clients.agent import Toolbox, run_rollout
from clients.base import ClientConfig, ResponsesClient, client_class
from clients.record import RolloutResult, TurnRecorder, TurnResult
from turnbench.schema import CONTENT_DELTA_TYPES, TERMINAL_TYPES, StageStat
from turnbench.transports import TRANSPORTS

MS = 1_000_000  # ns


class ScriptedClock:
    """A clock that returns whatever the test set, in ns."""

    def __init__(self, start_ns: int = 1_000 * MS) -> None:
        self.now_ns = start_ns

    def __call__(self) -> int:
        return self.now_ns

    def advance_ms(self, ms: float) -> None:
        self.now_ns += int(ms * MS)


def _stream(clock: ScriptedClock, rec: TurnRecorder, script: list[tuple[float, str]]) -> None:
    for gap_ms, event in script:
        clock.advance_ms(gap_ms)
        rec.on_event(event, 100)


SCRIPT: list[tuple[float, str]] = [
    (2.0, "response.created"),
    (1.0, "response.in_progress"),
    (0.5, "response.output_item.added"),
    (10.0, "response.output_text.delta"),
    (3.0, "response.output_text.delta"),
    (4.0, "response.output_text.delta"),
    (1.0, "response.output_text.done"),
    (0.5, "response.output_item.done"),
    (2.5, "response.completed"),
]


@pytest.fixture
def clock() -> Iterator[ScriptedClock]:
    yield ScriptedClock()


def test_turn_is_ttft_plus_itl_plus_tail(clock: ScriptedClock) -> None:
    rec = TurnRecorder("ws", "connection", clock=clock)
    rec.sent(500)
    _stream(clock, rec, SCRIPT)
    r = rec.result()
    assert r.success and r.error is None
    assert r.ttfb_ms == pytest.approx(2.0)  # lifecycle events count for TTFB ...
    assert r.ttft_ms == pytest.approx(13.5)  # ... but not for TTFT
    assert r.itl_ms == pytest.approx([3.0, 4.0])
    tail_ms = 1.0 + 0.5 + 2.5
    assert r.ttft_ms is not None and r.turn_ms is not None
    assert r.turn_ms == pytest.approx(r.ttft_ms + sum(r.itl_ms) + tail_ms)
    assert r.chunks == 3 and r.events == len(SCRIPT)
    assert r.bytes_up == 500 and r.bytes_down == 100 * len(SCRIPT)
    # closed loop: scheduled == send
    assert r.queue_ms == 0.0 and r.latency_ms == r.turn_ms and r.t_scheduled_ns == r.t_send_ns


def test_function_call_deltas_are_content(clock: ScriptedClock) -> None:
    rec = TurnRecorder("https", "full", clock=clock)
    rec.sent(10)
    _stream(
        clock,
        rec,
        [
            (1.0, "response.created"),
            (4.0, "response.function_call_arguments.delta"),
            (2.0, "response.function_call_arguments.delta"),
            (1.0, "response.completed"),
        ],
    )
    r = rec.result()
    assert r.ttft_ms == pytest.approx(5.0) and r.itl_ms == pytest.approx([2.0]) and r.chunks == 2


def test_open_loop_latency_is_queue_plus_turn(clock: ScriptedClock) -> None:
    rec = TurnRecorder("grpc", "store", rollout_id=3, turn_index=2, clock=clock)
    rec.scheduled()
    clock.advance_ms(7.25)  # the generator was late sending
    rec.sent(100)
    _stream(clock, rec, SCRIPT)
    r = rec.result()
    assert r.queue_ms == pytest.approx(7.25) and r.queue_ms > 0
    assert r.turn_ms is not None and r.latency_ms is not None
    assert r.latency_ms == pytest.approx(r.queue_ms + r.turn_ms)
    assert r.t_send_ns - r.t_scheduled_ns == int(7.25 * MS)
    assert (r.rollout_id, r.turn_index) == (3, 2)


def test_explicit_timestamps_override_clock(clock: ScriptedClock) -> None:
    rec = TurnRecorder("ws", "full", clock=clock)
    rec.scheduled(t_ns=0)
    rec.sent(1, t_ns=2 * MS)
    rec.on_event("response.output_text.delta", 1, t_ns=5 * MS)
    rec.on_event("response.completed", 1, t_ns=9 * MS)
    r = rec.result()
    assert (r.queue_ms, r.ttft_ms, r.turn_ms, r.latency_ms) == pytest.approx((2.0, 3.0, 7.0, 9.0))


def test_events_after_terminal_move_no_clock(clock: ScriptedClock) -> None:
    rec = TurnRecorder("ws", "full", clock=clock)
    rec.sent(1)
    _stream(clock, rec, [(1.0, "response.output_text.delta"), (1.0, "response.completed")])
    _stream(clock, rec, [(5.0, "response.output_text.delta"), (5.0, "response.completed")])
    r = rec.result()
    assert r.turn_ms == pytest.approx(2.0) and r.chunks == 1 and r.events == 4


def test_usage_stages_and_kind_from_response(clock: ScriptedClock) -> None:
    rec = TurnRecorder("https", "store", clock=clock)
    rec.sent(1)
    _stream(clock, rec, [(1.0, "response.function_call_arguments.delta"), (1.0, "response.completed")])
    rec.on_response(
        {
            "id": "resp_123",
            "status": "completed",
            "output": [{"type": "reasoning"}, {"type": "function_call", "name": "grep"}],
            "usage": {
                "input_tokens": 1200,
                "input_tokens_details": {"cached_tokens": 1024},
                "output_tokens": 17,
                "total_tokens": 1217,
            },
            "turnbench": {
                "stages": {
                    "parse": {"wall_ns": 12_000, "cpu_ns": 11_000, "items": 4, "chars": 900},
                    "render": {"wall_ns": 3 * MS, "cpu_ns": 2 * MS, "tokens": 1200},
                    "bogus": "not a stage",
                }
            },
        }
    )
    r = rec.result()
    assert r.success and r.response_id == "resp_123" and r.output_kind == "function_call"
    assert (r.input_tokens, r.cached_tokens, r.output_tokens) == (1200, 1024, 17)
    assert r.server_stages == {
        "parse": StageStat(wall_ns=12_000, cpu_ns=11_000, items=4, tokens=0, chars=900),
        "render": StageStat(wall_ns=3 * MS, cpu_ns=2 * MS, tokens=1200),
    }


@pytest.mark.parametrize(
    "response",
    [
        {},
        {"usage": None, "output": None, "turnbench": None},
        {"usage": {"input_tokens": "many"}, "output": [], "turnbench": {"stages": []}},
        {"usage": {"input_tokens_details": None}, "output": ["not-a-dict"], "id": 5},
    ],
)
def test_response_without_optional_fields(clock: ScriptedClock, response: dict[str, Any]) -> None:
    rec = TurnRecorder("ws", "full", clock=clock)
    rec.sent(1)
    rec.on_event("response.completed", 1)
    rec.on_response(response)
    r = rec.result()
    assert r.success and r.server_stages == {} and r.input_tokens == 0 and r.output_kind is None


def test_failure_never_raises_and_keeps_first_explicit_error(clock: ScriptedClock) -> None:
    rec = TurnRecorder("ws", "connection", clock=clock)
    rec.sent(1)
    clock.advance_ms(3.0)
    rec.on_event("error", 50)  # inferred failure ...
    rec.fail("Previous response not found", "previous_response_not_found")  # ... replaced by details
    rec.fail("later noise", "other")
    r = rec.result()
    assert not r.success
    assert (r.error, r.error_code) == ("Previous response not found", "previous_response_not_found")
    assert r.turn_ms == pytest.approx(3.0)


def test_failure_before_send_and_missing_terminal(clock: ScriptedClock) -> None:
    rec = TurnRecorder("grpc", "full", clock=clock)
    rec.fail("connection refused", "connect_error")
    r = rec.result()
    assert not r.success and r.error_code == "connect_error" and r.turn_ms is None and r.t_send_ns == 0

    rec = TurnRecorder("https", "full", clock=clock)
    rec.sent(1)
    rec.on_event("response.output_text.delta", 1)
    r = rec.result()
    assert not r.success and r.error_code == "no_terminal_event"

    assert TurnRecorder("https", "full", clock=clock).result().error_code == "not_sent"


def test_failed_response_status_marks_failure(clock: ScriptedClock) -> None:
    rec = TurnRecorder("https", "full", clock=clock)
    rec.sent(1)
    rec.on_event("response.failed", 1)
    rec.on_response({"status": "failed", "error": {"code": "server_error", "message": "boom"}})
    r = rec.result()
    assert not r.success and (r.error, r.error_code) == ("boom", "server_error")


def test_records_round_trip_through_msgspec(clock: ScriptedClock) -> None:
    rec = TurnRecorder("ws", "connection", tool_ms=1.5, connect_ms=4.0, clock=clock)
    rec.sent(1)
    _stream(clock, rec, SCRIPT)
    rec.on_response({"turnbench": {"stages": {"decode": {"wall_ns": 5, "cpu_ns": 4}}}})
    turn = rec.result()
    rollout = RolloutResult(
        transport="ws",
        state="connection",
        rollout_id=0,
        success=True,
        turns=[turn],
        rollout_ms=30.0,
        tool_calls=[("grep", '{"q": "x"}')],
    )
    for codec in (msgspec.json, msgspec.msgpack):
        back = codec.decode(codec.encode(rollout), type=RolloutResult)
        assert back == rollout
    assert turn.tool_ms == 1.5 and turn.connect_ms == 4.0
    assert TurnResult(transport="x", state="full").itl_ms == []


def test_constants() -> None:
    assert "response.output_text.delta" in CONTENT_DELTA_TYPES
    assert "response.created" not in CONTENT_DELTA_TYPES
    assert {"response.completed", "response.failed", "response.incomplete", "error"} == TERMINAL_TYPES


class _FakeClient(ResponsesClient):
    transport = "fake-test"

    def __init__(self, explode: bool = False) -> None:
        self.explode = explode
        self.closed = False

    async def connect(self) -> float | None:
        return None

    async def create(self, body: dict[str, Any], *, recorder: TurnRecorder) -> dict[str, Any]:
        recorder.sent(len(str(body)))
        if self.explode:
            raise OSError("connection reset")
        recorder.on_event("response.completed", 10)
        return {"id": "resp_1"}

    async def close(self) -> None:
        self.closed = True


async def test_safe_create_records_an_escaped_exception() -> None:
    async with _FakeClient(explode=True) as client:
        rec = TurnRecorder("fake-test", "full")
        assert await client.safe_create({"input": "hi"}, recorder=rec) == {}
    assert isinstance(client, _FakeClient) and client.closed
    r = rec.result()
    assert not r.success and r.error_code == "client_exception" and "connection reset" in (r.error or "")
    assert r.turn_ms is not None and not math.isnan(r.turn_ms)


def test_every_row_of_the_transport_table_names_its_client() -> None:
    for name, row in TRANSPORTS.items():
        cls = client_class(name)
        assert cls.transport == name, (name, cls)
        assert cls.__module__ == row.client_module
    with pytest.raises(ValueError, match="unknown transport"):
        client_class("carrier-pigeon")


# ---------------------------------------------------------------------------------------------- reconnect


class _Connection(ResponsesClient):
    """Answers at once; its first ``drops`` turns fail with ``code``; ``refuse`` makes ``connect`` raise."""

    transport = "fake-connection"

    def __init__(self, *, drops: int = 0, code: str = "connection_closed", refuse: bool = False) -> None:
        super().__init__(ClientConfig(url="fake://"))
        self.drops, self.code, self.refuse = drops, code, refuse
        self.log: list[str] = []

    async def connect(self) -> float | None:
        self.log.append("connect")
        if self.refuse:
            raise ConnectionRefusedError("nobody home")
        return 2.5

    async def close(self) -> None:
        self.log.append("close")

    async def create(self, body: dict[str, Any], *, recorder: TurnRecorder) -> dict[str, Any]:
        self.log.append("create")
        recorder.sent(10)
        if self.drops:
            self.drops -= 1
            recorder.fail("dropped", self.code)
            return {}
        answer = {"type": "message", "content": [{"type": "output_text", "text": "done"}]}
        response = {"id": "resp_1", "status": "completed", "output": [answer]}
        recorder.on_event("response.completed")
        recorder.on_response(response)
        return response


async def test_reconnect_is_close_then_connect() -> None:
    client = _Connection()
    assert await client.reconnect() == 2.5
    assert client.log == ["close", "connect"]


@pytest.mark.parametrize(("code", "log"), [
    ("connection_closed", ["create", "close", "connect", "create"]),
    ("websocket_connection_limit_reached", ["create", "close", "connect", "create"]),
    ("previous_response_not_found", ["create", "create"]),  # the connection is fine: resend, no reconnect
])
async def test_the_agent_loop_reconnects_after_a_lost_connection(code: str, log: list[str]) -> None:
    client = _Connection(drops=1, code=code)
    result = await run_rollout(client, state="connection", toolbox=Toolbox())
    assert result.success and result.final_output == "done" and result.recoveries == 1
    assert client.log == log
    assert [t.error_code for t in result.turns] == [code, None]


async def test_a_failed_reconnect_does_not_escape_the_agent_loop() -> None:
    client = _Connection(drops=10, refuse=True)
    result = await run_rollout(client, state="connection", toolbox=Toolbox(), max_recoveries=2)
    assert not result.success and result.recoveries == 2
    assert (result.error or "").startswith("connection_closed")
    assert client.log.count("connect") == 2 and client.log.count("create") == 3
