"""Fuzz ``POST /v1/responses`` with bad and odd bodies, ``stream`` true and false.

Every answer is a 2xx (a Response, or an SSE stream that ends in ``response.completed``/``incomplete``) or a
4xx with the Responses error body; never a 5xx, a failed response or an in-stream error, never a Python class
name or traceback; and the server answers a good request afterwards. An example is one to three bodies sent
in turn: ``$PREV``/``$CALL`` in a later one name the response (and function call) an earlier one created.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from hypothesis import given, note
from hypothesis import strategies as st

from servers.base import RunningServer
from tests.fuzz.conftest import QUIET, TEST_TIMEOUT_S, StartFn, fuzz
from tests.fuzz.strategies import Body, bodies, compact, substitute
from tests.fuzz.wire import TERMINAL, UNREADABLE, WAIT_S, decode_event, error_body_problems, ids_of, leaks

pytestmark = [pytest.mark.timeout(TEST_TIMEOUT_S), QUIET]

GOOD = b'{"model":"m","input":"hi","store":false,"metadata":{"answer_tokens":"1","tool_calls":"0"}}'


def sse_events(body: bytes) -> list[dict[str, Any]]:
    """The ``data:`` payloads of an SSE body, decoded (:func:`decode_event`)."""
    out: list[dict[str, Any]] = []
    for block in body.replace(b"\r\n", b"\n").split(b"\n\n"):
        data = [line[5:].lstrip(b" ") for line in block.split(b"\n") if line.startswith(b"data:")]
        if data:
            payload = b"\n".join(data)
            out.append(decode_event(payload))
    return out


def answer_problems(status: int, ctype: str, body: bytes, sent: bytes) -> tuple[list[str], dict[str, Any] | None]:
    """What is wrong with one answer to a fuzzed body, and the Response it gave (if any)."""
    text = body.decode("utf-8", "replace")
    problems = [f"internal names on the wire: {names}" for names in [leaks(text, sent)] if names]
    if status >= 500 or not (200 <= status < 300 or 400 <= status < 500):
        problems.append(f"status {status}: bad input must be a 2xx or a 4xx")
    if status >= 300:
        error = decode_event(body)
        problems += [f"the error body: {error.pop(UNREADABLE)}"] if UNREADABLE in error else []
        problems += error_body_problems(error)
        return problems, None
    if ctype.startswith("text/event-stream"):
        events = sse_events(body)
        problems += [f"{e.get('type')} event: {e[UNREADABLE]}" for e in events if UNREADABLE in e]
        kinds = [e.get("type") for e in events]
        if not kinds or kinds[-1] not in TERMINAL:
            problems.append(f"the stream ended without a terminal event: {kinds[-3:]}")
        if "error" in kinds or "response.failed" in kinds:
            problems.append(f"the stream failed: {text[-600:]}")
        response = events[-1].get("response") if events else None
        return problems, response if isinstance(response, dict) else None
    response = decode_event(body)
    if UNREADABLE in response:
        problems.append(f"the 2xx body: {response[UNREADABLE]}")
    if response.get("status") not in ("completed", "incomplete", "queued"):
        problems.append(f"a 2xx that is not a finished (or queued) Response: {text[:300]}")
    return problems, response


async def post(client: httpx.AsyncClient, server: RunningServer, data: bytes) -> httpx.Response:
    async with asyncio.timeout(WAIT_S):
        return await client.post(server.url + "/responses", content=data, headers={"content-type": "application/json"})


@pytest.fixture(scope="module")
def https(start: StartFn) -> RunningServer:
    return start("https", profile="instant")


def test_https_bodies_get_a_2xx_or_a_4xx_error_body(https: RunningServer, runner: asyncio.Runner) -> None:
    assert https.tls is not None
    client = httpx.AsyncClient(verify=https.tls.client_ssl_context(), timeout=WAIT_S)

    async def case(sequence: list[Body]) -> None:
        prev = call = None
        for body in sequence:
            data = substitute(body.data, prev, call)
            reply = await post(client, https, data)
            note(f"{compact(data)} -> {reply.status_code} {reply.content[:800]!r}")
            problems, response = answer_problems(
                reply.status_code, reply.headers.get("content-type", ""), reply.content, data
            )
            assert not problems, problems
            prev, call = ids_of(response) if response else (prev, call)
        good = await post(client, https, GOOD)
        assert good.status_code == 200 and good.json()["status"] == "completed", good.text[:300]

    @fuzz("https")
    @given(st.lists(bodies(), min_size=1, max_size=3))
    def one(sequence: list[Body]) -> None:
        runner.run(case(sequence))

    try:
        one()
    finally:
        runner.run(client.aclose())
