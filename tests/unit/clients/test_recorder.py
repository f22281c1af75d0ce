"""TurnRecorder with a scripted clock: the timing identities of docs/concepts/measurements.md, the one event
interpreter every
client hands its events to (both error shapes, terminal outcomes, malformed input, events after the end),
usage parsing, failures; and the client interface's ``reconnect`` as the agent loop uses it."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import msgspec
import orjson
import pytest

from clients.agent import Toolbox, run_rollout
from clients.base import ClientConfig, ResponsesClient, client_class
from clients.http_reply import SSEDecoder, record_json_reply, record_sse
from clients.record import MALFORMED_EVENT, MALFORMED_RESPONSE, RolloutResult, TurnRecorder, TurnResult
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


# ---------------------------------------------------------------------------------------------- interpret

RESPONSE: dict[str, Any] = {
    "id": "resp_9",
    "status": "completed",
    "output": [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hello"}]}],
    "usage": {"input_tokens": 40, "input_tokens_details": {"cached_tokens": 32}, "output_tokens": 2},
    "turnbench": {"stages": {"decode": {"wall_ns": 7_000, "cpu_ns": 6_000, "tokens": 2}}},
}


def _sent(clock: ScriptedClock, transport: str = "ws") -> TurnRecorder:
    rec = TurnRecorder(transport, "full", clock=clock)
    rec.sent(100)
    return rec


def test_interpret_a_whole_turn(clock: ScriptedClock) -> None:
    rec = _sent(clock)
    script: list[tuple[float, dict[str, Any]]] = [
        (1.0, {"type": "response.created", "response": {"id": "resp_9", "status": "in_progress", "usage": None}}),
        (1.0, {"type": "response.in_progress", "response": {"id": "resp_9", "status": "in_progress"}}),
        (1.0, {"type": "response.output_item.added", "item": {"type": "message"}}),
        (1.0, {"type": "response.content_part.added", "part": {"type": "output_text", "text": ""}}),
        (5.0, {"type": "response.output_text.delta", "delta": "Hel"}),
        (2.0, {"type": "response.output_text.delta", "delta": "lo"}),
        (1.0, {"type": "response.output_text.done", "text": "Hello"}),
        (1.0, {"type": "response.completed", "response": RESPONSE}),
    ]
    outcomes = []
    for gap_ms, event in script:
        clock.advance_ms(gap_ms)
        outcomes.append(rec.interpret(event, 10))
    assert outcomes[:-1] == [None] * 7 and outcomes[-1] is RESPONSE
    r = rec.result()
    assert r.success and r.error_code is None
    assert (r.ttfb_ms, r.ttft_ms, r.turn_ms) == pytest.approx((1.0, 9.0, 13.0))
    assert r.itl_ms == pytest.approx([2.0]) and r.chunks == 2 and r.events == 8
    assert (r.bytes_up, r.bytes_down) == (100, 80)
    assert (r.response_id, r.output_kind) == ("resp_9", "message")
    assert (r.input_tokens, r.cached_tokens, r.output_tokens) == (40, 32, 2)
    assert r.server_stages == {"decode": StageStat(wall_ns=7_000, cpu_ns=6_000, tokens=2)}


@pytest.mark.parametrize(
    "lifecycle",
    sorted(
        {
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.done",
            "response.function_call_arguments.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.some_future_event",
            "",
        }
    ),
)
def test_only_content_deltas_stamp_ttft(clock: ScriptedClock, lifecycle: str) -> None:
    rec = _sent(clock)
    clock.advance_ms(2.0)
    assert rec.interpret({"type": lifecycle}, 1) is None
    clock.advance_ms(3.0)
    assert rec.interpret({"type": "response.function_call_arguments.delta", "delta": "{"}, 1) is None
    clock.advance_ms(1.0)
    rec.interpret({"type": "response.completed", "response": RESPONSE}, 1)
    r = rec.result()
    assert r.ttfb_ms == pytest.approx(2.0) and r.ttft_ms == pytest.approx(5.0) and r.chunks == 1


@pytest.mark.parametrize(
    ("event", "code", "message"),
    [
        pytest.param(
            {
                "type": "error",
                "status": 400,
                "error": {
                    "type": "invalid_request_error",
                    "code": "previous_response_not_found",
                    "param": "previous_response_id",
                    "message": "Previous response with id 'resp_x' not found.",
                },
            },
            "previous_response_not_found",
            "Previous response with id 'resp_x' not found.",
            id="ws",
        ),
        pytest.param(
            {"type": "error", "error": {"type": "invalid_request_error", "code": None, "message": "bad"}},
            "invalid_request_error",
            "bad",
            id="ws-without-code",
        ),
        pytest.param(
            {
                "type": "error",
                "error": {
                    "type": "invalid_request_error",
                    "code": "websocket_connection_limit_reached",
                    "message": "60 min",
                },
            },
            "websocket_connection_limit_reached",
            "60 min",
            id="ws-limit",
        ),
        pytest.param(
            {"type": "error", "code": "server_error", "message": "boom", "param": None, "sequence_number": 3},
            "server_error",
            "boom",
            id="sse",
        ),
        pytest.param({"type": "error", "code": None, "message": "odd"}, "error", "odd", id="sse-without-code"),
        pytest.param({"type": "error"}, "error", "error event", id="bare"),
    ],
)
def test_error_event_in_either_shape(clock: ScriptedClock, event: dict[str, Any], code: str, message: str) -> None:
    rec = _sent(clock)
    clock.advance_ms(3.0)
    assert rec.interpret(event, 40) == {}
    r = rec.result()
    assert not r.success and (r.error_code, r.error) == (code, message)
    assert r.turn_ms == pytest.approx(3.0) and r.ttft_ms is None
    assert (r.events, r.bytes_down) == (1, 40)


@pytest.mark.parametrize(
    ("response", "code", "message"),
    [
        (
            {"id": "resp_f", "status": "failed", "error": {"code": "engine_error", "message": "engine fell over"}},
            "engine_error",
            "engine fell over",
        ),
        ({"id": "resp_f", "status": "failed", "error": None}, "response_failed", "response failed"),
        ({"id": "resp_f", "status": "in_progress"}, "response.failed", "response.failed"),  # the event type says it
    ],
)
def test_failed_response(clock: ScriptedClock, response: dict[str, Any], code: str, message: str) -> None:
    rec = _sent(clock)
    assert rec.interpret({"type": "response.failed", "response": response}, 5) is response
    r = rec.result()
    assert not r.success and (r.error_code, r.error) == (code, message) and r.response_id == "resp_f"


def test_incomplete_response_is_a_successful_turn(clock: ScriptedClock) -> None:
    rec = _sent(clock)
    response = {**RESPONSE, "status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"}}
    assert rec.interpret({"type": "response.incomplete", "response": response}, 5) is response
    r = rec.result()
    assert r.success and r.turn_ms is not None and r.output_tokens == 2


@pytest.mark.parametrize(
    "event",
    [
        {"type": "response.completed"},
        {"type": "response.completed", "response": None},
        {"type": "response.incomplete", "response": ["not", "an", "object"]},
        {"type": "response.failed", "response": "resp_1"},
    ],
)
def test_terminal_event_without_a_response_object(clock: ScriptedClock, event: dict[str, Any]) -> None:
    rec = _sent(clock)
    clock.advance_ms(4.0)
    assert rec.interpret(event, 9) == {}
    r = rec.result()
    assert not r.success and r.error_code == MALFORMED_RESPONSE and event["type"] in (r.error or "")
    assert r.turn_ms == pytest.approx(4.0) and (r.events, r.bytes_down) == (1, 9)


@pytest.mark.parametrize("event", [["response.completed"], "response.completed", 42, None])
def test_event_that_is_not_an_object(clock: ScriptedClock, event: object) -> None:
    rec = _sent(clock)
    assert rec.interpret(event, 7) == {}
    r = rec.result()
    assert not r.success and r.error_code == MALFORMED_EVENT and (r.events, r.bytes_down) == (1, 7)


def test_interpret_json(clock: ScriptedClock) -> None:
    rec = _sent(clock)
    assert rec.interpret_json(b'{"type":"response.output_text.delta","delta":"x"}', 50) is None
    assert rec.interpret_json(b'{"type":"response.compl', 23) == {}
    r = rec.result()
    assert not r.success and r.error_code == MALFORMED_EVENT and "response.compl" in (r.error or "")
    assert (r.chunks, r.events, r.bytes_down) == (1, 1, 50)  # undecodable bytes are no event

    rec = _sent(clock)
    data = orjson.dumps({"type": "response.completed", "response": RESPONSE})
    assert rec.interpret_json(data, len(data)) == RESPONSE and rec.result().success


def test_events_after_the_terminal_one_change_nothing_but_counts(clock: ScriptedClock) -> None:
    rec = _sent(clock)
    clock.advance_ms(2.0)
    assert rec.interpret({"type": "response.completed", "response": RESPONSE}, 10) is RESPONSE
    clock.advance_ms(5.0)
    later: list[object] = [
        {"type": "response.output_text.delta", "delta": "x"},
        {"type": "response.completed", "response": {"id": "resp_other", "usage": {"input_tokens": 1}}},
        {"type": "error", "code": "server_error", "message": "late"},
        {"type": "response.completed"},
        "not an object",
    ]
    assert [rec.interpret(event, 3) for event in later] == [None] * len(later)
    assert rec.interpret_json(b"{oops", 3) is None
    r = rec.result()
    assert r.success and r.error_code is None
    assert (r.response_id, r.input_tokens) == ("resp_9", 40)
    assert r.turn_ms == pytest.approx(2.0) and r.chunks == 0
    assert (r.events, r.bytes_down) == (1 + len(later), 10 + 3 * len(later))


def test_events_after_an_error_change_nothing_but_counts(clock: ScriptedClock) -> None:
    rec = _sent(clock)
    assert rec.interpret({"type": "error", "code": "request_timeout", "message": "slow"}, 10) == {}
    assert rec.interpret({"type": "response.completed", "response": RESPONSE}, 10) is None
    r = rec.result()
    assert not r.success and r.error_code == "request_timeout" and r.response_id is None and r.events == 2


def test_a_recorder_that_watches_on_event_sees_every_interpreted_event(clock: ScriptedClock) -> None:
    seen: list[str] = []

    class Watching(TurnRecorder):
        def on_event(self, event_type: str, nbytes: int = 0, *, t_ns: int | None = None) -> None:
            seen.append(event_type)
            super().on_event(event_type, nbytes, t_ns=t_ns)

    rec = Watching("ws", "full", clock=clock)
    rec.sent(1)
    rec.interpret({"type": "response.output_text.delta"}, 1)
    rec.interpret({"type": "error", "code": "x", "message": "y"}, 1)
    assert seen == ["response.output_text.delta", "error"] and rec.chunks == 1


# ---------------------------------------------------------------------------------------------- HTTP replies


def test_sse_reply_goes_through_the_interpreter_event_by_event(clock: ScriptedClock) -> None:
    completed = orjson.dumps({"type": "response.completed", "response": RESPONSE})
    done = b"data: [DONE]\n\n"
    stream = (
        b'event: response.created\ndata: {"type":"response.created","response":{"id":"resp_9"}}\n\n'
        b": a comment block has no data\n\n"
        b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","delta":"hi"}\n\n'
        b"event: response.completed\ndata: " + completed + b"\n\n" + done
    )
    rec = _sent(clock, "https")
    decoder, result = SSEDecoder(), None
    for i in range(0, len(stream), 7):  # any slicing of the stream
        clock.advance_ms(1.0)
        if result is None:  # as the HTTP clients do: nothing is interpreted after the terminal event
            result = record_sse(decoder.feed(stream[i : i + 7]), rec, clock())
    assert result == RESPONSE
    r = rec.result()
    assert r.success and (r.events, r.chunks) == (3, 1) and r.response_id == "resp_9"
    assert r.bytes_down == len(stream) - len(done)
    assert r.ttfb_ms is not None and r.ttft_ms is not None and r.turn_ms is not None
    assert r.ttfb_ms < r.ttft_ms < r.turn_ms


@pytest.mark.parametrize("status", ["completed", "incomplete", "failed"])
def test_json_reply_is_one_terminal_event(clock: ScriptedClock, status: str) -> None:
    error = {"code": "server_error", "message": "boom"} if status == "failed" else None
    body = orjson.dumps({**RESPONSE, "status": status, "error": error})
    rec = _sent(clock, "https")
    assert record_json_reply(body, rec) == orjson.loads(body)
    r = rec.result()
    assert r.success is (status != "failed") and (r.events, r.bytes_down) == (1, len(body))
    assert r.ttft_ms is None and r.response_id == "resp_9"


@pytest.mark.parametrize("body", [b"[1, 2]", b'{"id": "resp_', b""])
def test_json_reply_that_is_not_a_response(clock: ScriptedClock, body: bytes) -> None:
    rec = _sent(clock, "https")
    assert record_json_reply(body, rec) == {}
    assert rec.result().error_code == MALFORMED_RESPONSE


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
        return (
            recorder.interpret(
                {"type": "response.completed", "response": {"id": "resp_1", "status": "completed", "output": [answer]}}
            )
            or {}
        )


async def test_reconnect_is_close_then_connect() -> None:
    client = _Connection()
    assert await client.reconnect() == 2.5
    assert client.log == ["close", "connect"]


@pytest.mark.parametrize(
    ("code", "log"),
    [
        ("connection_closed", ["create", "close", "connect", "create"]),
        ("websocket_connection_limit_reached", ["create", "close", "connect", "create"]),
        ("previous_response_not_found", ["create", "create"]),  # the connection is fine: resend, no reconnect
    ],
)
async def test_the_agent_loop_reconnects_after_a_lost_connection(code: str, log: list[str]) -> None:
    client = _Connection(drops=1, code=code)
    result = await run_rollout(client, state="connection", toolbox=Toolbox())
    assert result.success and result.final_output == "done" and result.recoveries == 1
    assert client.log == log
    assert [t.error_code for t in result.turns] == [code, None]


async def test_a_failed_reconnect_does_not_escape_the_agent_loop() -> None:
    client = _Connection(drops=10, refuse=True)
    delays = (0.0, 0.001, 0.002)  # three attempts per recovery, each refused
    result = await run_rollout(
        client, state="connection", toolbox=Toolbox(), max_recoveries=2, reconnect_delays_s=delays
    )
    assert not result.success and result.recoveries == 2
    assert (result.error or "").startswith("connection_closed")
    assert client.log.count("connect") == 2 * len(delays) and client.log.count("create") == 3
