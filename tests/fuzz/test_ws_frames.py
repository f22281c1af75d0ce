"""Fuzz WebSocket mode with bad and odd frames while a long response runs on lane ``keep``.

Each example sends one to three frames on one connection: text frames, binary ones, and bodies that are not
UTF-8 as binary frames (a text frame of invalid UTF-8 is a protocol error the WebSocket library must close on).
Every frame gets a normal response or an ``error`` event in the WebSocket error shape, on the lane it named (the
default lane if it named none that could be read); no 5xx, no failed response, no class names; the connection
stays open, answers a good request after each example, and the ``keep`` response completes.
"""

from __future__ import annotations

import asyncio

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from servers.base import RunningServer
from tests.fuzz.conftest import QUIET, TEST_TIMEOUT_S, StartFn, fuzz
from tests.fuzz.strategies import KEEP_LANE, Body, bodies, compact, lanes_json, substitute
from tests.fuzz.wire import Frame, KeepLane, MakeFrame, WsLink, connection_case

pytestmark = [pytest.mark.timeout(TEST_TIMEOUT_S), QUIET]

KEEP = orjson.dumps(
    {
        "type": "response.create",
        "model": "m",
        "input": "keep going",
        "store": False,
        "stream_id": KEEP_LANE,
        "metadata": {"answer_tokens": "3000", "tool_calls": "0"},
    }
)
GOOD = b'{"type":"response.create","model":"m","input":"hi","store":false,"metadata":{"answer_tokens":"1"}}'


def ws_frame(body: Body, binary: bool) -> MakeFrame:
    """The frame ``body`` makes once ``$PREV``/``$CALL`` are known."""

    def make(prev: str | None, call: str | None) -> Frame:
        data = substitute(body.data, prev, call)
        as_binary = binary or not body.valid_utf8()
        lanes = lanes_json(data) | ({None} if as_binary else set())
        return Frame(data, frozenset(lanes), as_binary, compact(data))

    return make


@pytest.fixture(scope="module")
def ws(start: StartFn) -> RunningServer:
    return start("ws")


def test_ws_frames_get_a_response_or_an_error_on_their_lane(ws: RunningServer, runner: asyncio.Runner) -> None:
    conn = KeepLane(lambda: WsLink.open(ws), KEEP)

    @fuzz("ws")
    @given(st.lists(st.tuples(bodies(event=True), st.integers(0, 9).map(lambda n: n == 0)), min_size=1, max_size=3))
    def one(sequence: list[tuple[Body, bool]]) -> None:
        runner.run(connection_case(conn, [ws_frame(body, binary) for body, binary in sequence], GOOD))

    try:
        one()
        runner.run(conn.finish())
        assert conn.keeps_started > 0 and conn.keeps_completed == conn.keeps_started
    finally:
        runner.run(conn.reset())
