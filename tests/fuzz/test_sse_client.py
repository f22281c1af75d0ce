"""Fuzz the client side: the SSE decoder (``clients/http_reply.py``) and the recorder's event interpreter
(``clients/record.py``) fed arbitrary bytes and events. Nothing a server sends may make them raise: a stream
that makes no sense is a recorded failure (``success=False`` with an error code), never an exception. And the
decoder reads the same events whichever way the stream was cut into chunks (TCP decides that, not the server).
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from clients.http_reply import SSEDecoder, record_error_reply, record_json_reply, record_sse
from clients.record import TurnRecorder
from tests.fuzz.conftest import QUIET, TEST_TIMEOUT_S, fuzz
from tests.fuzz.strategies import DEPTHS, json_values, nested, numbers, strings, to_bytes

pytestmark = [pytest.mark.timeout(TEST_TIMEOUT_S), QUIET]

TYPES = (
    "response.created",
    "response.in_progress",
    "response.output_text.delta",
    "response.function_call_arguments.delta",
    "response.completed",
    "response.incomplete",
    "response.failed",
    "error",
    "",
    "response.unknown",
)
odd_ints = st.one_of(numbers, strings, st.none(), json_values)
usages = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "input_tokens": odd_ints,
            "output_tokens": odd_ints,
            "input_tokens_details": st.one_of(st.fixed_dictionaries({"cached_tokens": odd_ints}), json_values),
        },
    ),
    json_values,
)
stages = st.one_of(
    st.dictionaries(
        strings,
        st.one_of(st.dictionaries(st.sampled_from(("wall_ns", "cpu_ns", "items")), odd_ints), json_values),
        max_size=3,
    ),
    json_values,
)
responses = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "id": st.one_of(strings, json_values),
            "status": st.one_of(st.sampled_from(("completed", "failed", "incomplete", "queued")), json_values),
            "usage": usages,
            "output": st.one_of(st.lists(st.dictionaries(st.just("type"), json_values), max_size=2), json_values),
            "error": st.one_of(
                st.fixed_dictionaries({}, optional={"code": json_values, "message": json_values}), json_values
            ),
            "turnbench": st.one_of(st.fixed_dictionaries({"stages": stages}), json_values),
        },
    ),
    json_values,
)
errors = st.one_of(
    st.fixed_dictionaries({}, optional={"code": json_values, "message": json_values, "type": json_values}), json_values
)
events = st.one_of(
    st.fixed_dictionaries(
        {"type": st.one_of(st.sampled_from(TYPES), json_values)},
        optional={
            "response": responses,
            "error": errors,
            "code": json_values,
            "message": json_values,
            "delta": strings,
        },
    ),
    json_values,
)
"""Event objects a server might send: plausible shapes with odd members, and any JSON at all."""


@st.composite
def sse_streams(draw: st.DrawFn) -> bytes:
    """An SSE byte stream: well-formed blocks and odd ones (comments, ``id:``/``retry:``, several ``data:`` lines,
    CRLF or CR line ends, event names that are not UTF-8, missing blank lines, ``[DONE]``), or random bytes."""
    if draw(st.integers(0, 7)) == 0:
        return draw(st.binary(max_size=200))
    blocks: list[bytes] = []
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(("event", "event", "event", "data_only", "comment", "done", "multi", "raw")))
        if kind == "raw":
            blocks.append(draw(st.binary(max_size=40)))
            continue
        if kind == "comment":
            blocks.append(b": " + draw(st.binary(max_size=10)).replace(b"\n", b""))
            continue
        if kind == "done":
            blocks.append(b"data: [DONE]")
            continue
        payload = to_bytes(draw(events), ascii=draw(st.booleans()))
        if draw(st.integers(0, 9)) == 0:
            payload = nested(draw(st.sampled_from(DEPTHS[:5]))).text.encode()
        name = draw(st.one_of(st.sampled_from((b"response.completed", b"error", b"")), st.binary(max_size=8)))
        name = name.replace(b"\n", b"").replace(b"\r", b"")
        if kind == "multi":
            lines = [b"data: " + part for part in payload.split(b",")]
            blocks.append(b"event: " + name + b"\n" + b"\n".join(lines))
        elif kind == "data_only":
            blocks.append(b"data: " + payload.replace(b"\n", b" "))
        else:
            extra = draw(st.sampled_from((b"", b"id: 7\n", b"retry: 10\n", b"event:x\n")))
            blocks.append(extra + b"event: " + name + b"\ndata: " + payload.replace(b"\n", b" "))
    end = draw(st.sampled_from((b"\n\n", b"\r\n\r\n", b"\r\r", b"\n")))
    stream = end.join(blocks) + (end if draw(st.booleans()) else b"")
    return stream if end != b"\r\n\r\n" else stream.replace(b"\n", b"\r\n").replace(b"\r\r\n", b"\r\n")


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def recorder() -> TurnRecorder:
    rec = TurnRecorder("https", "full")
    rec.sent(100)
    return rec


@fuzz("sse")
@given(sse_streams(), st.lists(st.integers(0, 1 << 12), max_size=8))
def test_sse_decoder_never_raises_and_reads_the_same_events_however_the_stream_is_cut(
    stream: bytes, cuts: list[int]
) -> None:
    whole = SSEDecoder().feed(stream)
    decoder = SSEDecoder()
    pieces: list[Any] = []
    for chunk in chunked(stream, cuts):
        pieces += decoder.feed(chunk)
    assert [e[:2] for e in pieces] == [e[:2] for e in whole]
    rec = recorder()
    record_sse(whole, rec, 0)
    result = rec.result()
    assert result.success == (result.error_code is None)


@fuzz("recorder")
@given(st.lists(events, max_size=5))
def test_the_recorder_never_raises_on_any_event(sequence: list[Any]) -> None:
    rec = recorder()
    outcome = None
    for event in sequence:
        got = rec.interpret(event, 10)
        if outcome is None:
            outcome = got
    result = rec.result()
    if outcome is None:  # no event ended the turn: it cannot have succeeded
        assert not result.success and result.error_code
    if not result.success:
        assert result.error_code and isinstance(result.error, str)


@fuzz("recorder")
@given(
    st.one_of(
        st.binary(max_size=200), events.map(to_bytes), st.sampled_from(DEPTHS).map(lambda d: nested(d).text.encode())
    )
)
def test_the_recorder_and_the_reply_readers_never_raise_on_any_bytes(data: bytes) -> None:
    rec = recorder()
    rec.interpret_json(data, len(data))
    rec.result()
    rec = recorder()
    record_json_reply(data, rec)
    rec.result()
    for status in (400, 404, 500, 503):
        rec = recorder()
        record_error_reply(status, data, rec)
        result = rec.result()
        assert not result.success and result.error_code


def test_one_known_answer() -> None:  # the property tests above are not vacuous: a good stream succeeds
    body = orjson.dumps({"type": "response.completed", "response": {"id": "r", "status": "completed"}})
    rec = recorder()
    record_sse(SSEDecoder().feed(b"event: response.completed\ndata: " + body + b"\n\n"), rec, 0)
    assert rec.result().success
