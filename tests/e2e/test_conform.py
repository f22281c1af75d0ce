"""``turnbench conform`` end to end: the real command against turnbench's own servers (every case passes), every
server of the transport table in-process (the same), a server turnbench did not write (``tests/foreign.py``: its
real gaps are what fails), and a strict validation of every event type turnbench's servers send."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from loadtests.conform.cases import CASES, WEATHER_TOOL, Context
from loadtests.conform.run import PASS, run_cases
from loadtests.conform.spec import FLAT_SSE_ERROR_NOTE, load_spec
from loadtests.conform.wire import Target, WsSession, http_call, http_client
from servers.base import RunningServer
from servers.https_server import sse_frame
from tests.conftest import TIMEOUT_FACTOR, ServeFn
from tests.foreign import Foreign
from turnbench.schema import ErrorEvent

pytestmark = pytest.mark.timeout(180 * TIMEOUT_FACTOR)
ROOT = Path(__file__).resolve().parents[2]
SPEC = load_spec()


async def conform_cli(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "loadtests.cli", "conform", *args,
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 150 * TIMEOUT_FACTOR)
    return int(proc.returncode or 0), out.decode()


def by_id(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["id"]: c for c in record["cases"]}


async def test_conform_passes_every_case_against_turnbenchs_own_servers(tmp_path: Path) -> None:
    rc, out = await conform_cli("--json", str(tmp_path / "conform.json"))
    assert rc == 0, out
    record = json.loads((tmp_path / "conform.json").read_text())
    assert record["spec"]["version"] == "2026-04-24"
    assert record["targets"]["https"].startswith("https://") and record["targets"]["ws"].startswith("wss://")
    cases = by_id(record)
    assert set(cases) == {c.id for c in CASES}
    assert {k: c["status"] for k, c in cases.items() if c["status"] != PASS} == {}
    assert all(c["validated"] > 0 for k, c in cases.items() if k != "previous-response-not-found")
    assert record["summary"]["pass"] == len(CASES)
    assert "spec" in record and any("gRPC" in n for n in record["notes"])
    for c in CASES:  # a line per case as it ran, then the table
        assert f"pass         {c.id} " in out and f"| {c.id} |" in out


def target(server: RunningServer, transport: str, url: str | None = None) -> Target:
    ctx = server.tls.client_ssl_context() if server.tls else None
    return Target(transport, url or server.url, ssl_context=ctx, model="m", timeout_s=30 * TIMEOUT_FACTOR)


@pytest.mark.parametrize(
    ("https_server", "ws_server"), [("https", "ws"), ("https-h2", "https")], ids=["https+ws", "https-h2+ws-route"]
)
async def test_every_server_of_the_table_passes_every_case(serve: ServeFn, https_server: str, ws_server: str) -> None:
    """The HTTPS server (HTTP/1.1 and the HTTP/2 variant), the WebSocket server and the HTTPS server's own
    WebSocket route."""
    http = await serve(https_server)
    ws = await serve(ws_server) if ws_server != "https" else http
    ws_url = ws.url.replace("https://", "wss://")
    outcomes = await run_cases(CASES, SPEC, {"https": target(http, "https"), "ws": target(ws, "ws", ws_url)})
    failed = {o.case.id: (o.detail, o.violations[:2]) for o in outcomes if o.status != PASS}
    assert failed == {}


async def test_conform_against_a_server_turnbench_did_not_write_reports_its_real_gaps(tmp_path: Path) -> None:
    """tests/foreign.py streams every answer (even unasked), sends a bare response object (no usage, no
    created_at, …), remembers nothing, checks nothing, has no compaction, retrieval or lanes."""
    async with Foreign() as foreign:
        rc, out = await conform_cli(
            "--target", f"https=http://127.0.0.1:{foreign.https_port}/v1",
            "--target", f"ws=ws://127.0.0.1:{foreign.ws_port}/v1",
            "--json", str(tmp_path / "foreign.json"), "--timeout", str(10 * TIMEOUT_FACTOR),
        )  # fmt: skip
    assert rc == 1, out  # required cases fail
    cases = by_id(json.loads((tmp_path / "foreign.json").read_text()))
    status = {k: c["status"] for k, c in cases.items()}
    # what it lacks is not offered, not failed
    assert status["compaction"] == status["ws-lane-order"] == status["ws-in-flight-limit"] == "not offered"
    # a non-streamed request gets a stream
    assert "text/event-stream" in cases["basic-response"]["detail"] and status["basic-response"] == "fail"
    # its response object lacks what the specification requires, usage among them
    streamed = cases["streaming-response"]
    assert status["streaming-response"] == "fail"
    assert any("'usage' is a required property" in v for v in streamed["violations"])
    assert any("'created_at' is a required property" in v for v in streamed["violations"])
    # it remembers nothing and checks nothing: no previous_response_not_found, no typed error, no eviction
    for case in ("ws-previous-response-not-found", "ws-bad-input-error", "ws-eviction"):
        assert cases[case]["detail"].startswith("expected an error event, got 'response.completed'"), case
    assert "expected HTTP 400" in cases["previous-response-not-found"]["detail"]
    assert "turnbench" not in json.dumps(cases["basic-response"])  # the report is about the endpoint only
    assert "| streaming-response | https | spec | required | fail |" in out


EXPECTED_SSE = {
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.function_call_arguments.delta",
    "response.function_call_arguments.done",
    "response.completed",
}


async def _events_over(server: RunningServer, transport: str, body: dict[str, Any]) -> list[Any]:
    if transport == "https":
        t = target(server, "https")
        async with http_client(t) as client:
            reply = await http_call(client, "POST", "responses", {**body, "stream": True})
        assert reply.status == 200, reply.describe()
        return reply.events
    async with WsSession(target(server, "ws")) as ws:
        await ws.send({"type": "response.create", **body})
        return await ws.until_done()


@pytest.mark.parametrize("transport", ["https", "ws"])
async def test_every_event_type_turnbench_sends_conforms_strictly(serve: ServeFn, transport: str) -> None:
    """A text turn and a tool-calling turn, every event validated against the schema of its type: none may
    break it, and between them the two turns send every event type a response without reasoning has."""
    server = await serve(transport)
    seen: set[str] = set()
    for body in (
        {"model": "m", "input": "Count from 1 to 5.", "metadata": {"tool_calls": "0", "answer_tokens": "8"}},
        {"model": "m", "input": "Weather in Lisbon?", "tools": [WEATHER_TOOL], "metadata": {"tool_calls": "1"}},
    ):
        events = await _events_over(server, transport, body)
        for k, event in enumerate(events):
            violations, notes = SPEC.check_event(event, transport=transport, prefix=f"events[{k}]")
            assert (violations, notes) == ([], []), event
            seen.add(event["type"])
    assert seen == EXPECTED_SSE


async def test_a_failed_stream_and_the_sse_error_event_conform(serve: ServeFn) -> None:
    """A stream the request timeout cuts ends in ``response.failed``, which conforms as it is. The SSE ``error``
    event (sent when a stream breaks after its headers) is the one place turnbench follows the real API against
    the specification: it is flat, and conforms with a note."""
    server = await serve("https", profile="frontier", request_timeout_s=0.3)
    body = {"model": "m", "input": "Write a long story.", "metadata": {"tool_calls": "0", "answer_tokens": "400"}}
    events = await _events_over(server, "https", body)
    assert events[-1]["type"] == "response.failed", events[-1]
    ctx = Context(spec=SPEC, target=target(server, "https"))
    for k, event in enumerate(events):
        ctx.event_conforms(event, f"events[{k}]")
    assert ctx.violations == [] and ctx.notes == []
    frame = sse_frame(ErrorEvent(sequence_number=7, code="server_error", message="the stream broke", param=None))
    (data,) = [line[6:] for line in frame.decode().splitlines() if line.startswith("data: ")]
    ctx.event_conforms(json.loads(data), "error")
    assert ctx.violations == [] and ctx.notes == [FLAT_SSE_ERROR_NOTE]
