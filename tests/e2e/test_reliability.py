"""The reliability findings under load, one test each, on real servers: huge knobs, a big request beside a probe, a
flood of queued frames, poison frames beside a second lane, slow headers.

Nothing here asserts a wall-clock limit. A speed claim is a ratio measured in the same test (a refusal against a
normal request, a probe under load against the same probe unloaded); a memory claim is the server process's RSS
against its RSS before. Servers whose memory or CPU a test measures run as processes of their own
(``loadtests.procs.start_server_process``), so the test's client never mixes with them; the others in-process.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import multiprocessing
import statistics
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import orjson
import psutil
import pytest

from clients.base import TurnRecorder, make_client
from loadtests.execution.procs import Endpoint, start_server_process, target_endpoint
from tests.conftest import TIMEOUT_FACTOR
from tests.fuzz.strategies import KEEP_LANE, nested
from tests.fuzz.wire import (
    TERMINAL,
    Frame,
    GrpcLink,
    KeepLane,
    Link,
    WsLink,
    connection_case,
)
from turnbench.tls import load_ca
from turnbench.v1 import responses_pb2 as pb
from turnbench.v1.convert_request import bytes_field

pytestmark = pytest.mark.timeout(240 * TIMEOUT_FACTOR)
WAIT_S = 30 * TIMEOUT_FACTOR  # the longest any single read may take before the test calls it a hang


# ---------------------------------------------------------------------------------------------- helpers

StartProcess = Callable[..., Endpoint]


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[StartProcess]:
    """``processes("ws", profile="fast", **settings)`` → a server process on port 0 (TLS), stopped at teardown;
    it must exit 0 (a server that crashed or failed to drain fails the test)."""
    started: list[Endpoint] = []

    def _start(server: str, *, profile: str = "fast", **settings: Any) -> Endpoint:
        if "sim_profile" in settings:  # a profile file: named apart, its path makes a poor file-name tag
            settings["profile"] = settings.pop("sim_profile")
        endpoint = start_server_process(
            server, workdir=tmp_path / f"{len(started)}-{server}", profile=profile, tls=True, settings=settings
        )
        started.append(endpoint)
        return endpoint

    yield _start
    codes = {ep.url: ep.process.stop() for ep in started if ep.process is not None}
    assert all(code == 0 for code in codes.values()), codes


class RssSampler:
    """The resident memory of process ``pid``: its value when sampling starts (``before``) and its ``peak``,
    sampled every ``interval_s`` on a thread of its own (the event loop may be busy)."""

    def __init__(self, pid: int, interval_s: float = 0.02) -> None:
        self.process = psutil.Process(pid)
        self.interval_s = interval_s
        self.before = self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.peak = max(self.peak, self.process.memory_info().rss)
            except psutil.Error:
                return

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def mib(self) -> str:
        return f"RSS {self.before / 2**20:.0f} MiB before, {self.peak / 2**20:.0f} MiB at peak"


async def open_link(transport: str, endpoint: Endpoint) -> Link:
    assert endpoint.ca_path is not None
    if transport == "ws":
        return await WsLink.open_url(endpoint.url, load_ca(endpoint.ca_path))
    return await GrpcLink.open_target(endpoint.url, endpoint.client_config().ca_pem)


def as_event(transport: str, body: dict[str, Any]) -> bytes:
    """``body`` as a ``response.create`` event: a WebSocket text frame, or gRPC's json codec message."""
    data = orjson.dumps({"type": "response.create", **body})
    return data if transport == "ws" else bytes_field(2, data)


def slow_profile(tmp_path: Path) -> str:
    """A sim profile with no prefill time and 1 ms per decoded token: a 5,000-token answer lasts ~5 s while
    the requests queued behind it cost next to nothing once they run."""
    path = tmp_path / "slow-decode.json"
    path.write_text(json.dumps({"decode_ms_per_token": 1.0}))
    return f"file:{path}"


# ---------------------------------------------------------------------------------------------- huge knobs

HUGE_KNOBS = [
    pytest.param({"metadata": {"answer_tokens": "9" * 400}}, "metadata.answer_tokens", id="answer_tokens-400-digits"),
    pytest.param({"metadata": {"answer_tokens": "1.5"}}, "metadata.answer_tokens", id="answer_tokens-1.5"),
    pytest.param({"metadata": {"tool_calls": str(10**30)}}, "metadata.tool_calls", id="tool_calls-1e30"),
    pytest.param({"metadata": {"arg_words": "1e9"}}, "metadata.arg_words", id="arg_words-1e9"),
    pytest.param({"metadata": {"seed": str(2**64)}}, "metadata.seed", id="seed-2**64"),
    pytest.param({"metadata": {"seed": "-1"}}, "metadata.seed", id="seed-negative"),
    pytest.param({"max_output_tokens": -1}, "max_output_tokens", id="max_output_tokens-negative"),
    pytest.param({"max_output_tokens": 10**400}, "max_output_tokens", id="max_output_tokens-400-digits"),
]


async def timed_reply(link: Link | httpx.AsyncClient, url: str, body: dict[str, Any]) -> Any:
    """One request: (ms from send to its terminal answer, HTTP-like status, the error object or None)."""
    data = json.dumps({"model": "m", "input": "hi", "store": False, **body}).encode()  # json: any int size
    t0 = time.perf_counter()
    if isinstance(link, httpx.AsyncClient):
        reply = await link.post(url + "/responses", content=data)
        ms = (time.perf_counter() - t0) * 1000
        return ms, reply.status_code, reply.json().get("error") if reply.status_code >= 400 else None
    frame = b'{"type":"response.create",' + data[1:]
    await link.send(frame if isinstance(link, WsLink) else bytes_field(2, frame))
    while True:
        got = await link.recv()
        assert got is not None, link.ended
        event = got[0]
        if event.get("type") in TERMINAL:
            ms = (time.perf_counter() - t0) * 1000
            if event["type"] == "error":
                return ms, event.get("status"), event.get("error")
            return ms, 200, (event.get("response") or {}).get("error")


@pytest.mark.parametrize(("knob", "param"), HUGE_KNOBS)
@pytest.mark.parametrize("transport", ["https", "ws", "grpc"])
async def test_a_huge_or_odd_knob_is_a_400_naming_it_and_as_quick_as_a_normal_request(
    serve: Any, transport: str, knob: dict[str, Any], param: str
) -> None:
    server = await serve(transport)
    assert server.tls is not None
    link: Link | httpx.AsyncClient
    if transport == "ws":
        link = await WsLink.open(server)
    elif transport == "grpc":
        link = await GrpcLink.open(server)
    else:
        link = httpx.AsyncClient(verify=server.tls.client_ssl_context(), timeout=WAIT_S)
    try:
        normal: list[float] = []
        refused: list[float] = []
        for _ in range(5):  # interleaved, so drift hits both alike
            ms, status, error = await timed_reply(link, server.url, {"metadata": {"answer_tokens": "8"}})
            assert (status, error) == (200, None)
            normal.append(ms)
            ms, status, error = await timed_reply(link, server.url, knob)
            assert status == 400 and error is not None, (status, error)
            assert error["param"] == param, error
            refused.append(ms)
    finally:
        await (link.aclose() if isinstance(link, httpx.AsyncClient) else link.close())
    ratio = statistics.median(refused) / statistics.median(normal)
    assert ratio < 3.0, f"refusing takes {ratio:.1f}x a normal request: {refused} vs {normal} ms"


# ---------------------------------------------------------------------------------------------- big requests

BIG = 32 * 1024 * 1024  # body and message limit of these servers: the 10 MB request is served, not refused
HEAVY: dict[str, dict[str, Any]] = {
    "10MB-text": {"input": "lorem ipsum dolor sit amet " * (10 * 2**20 // 27)},
    "100k-items": {"input": [{"role": "user", "content": "x"}] * 100_000},
    "answer_tokens-100000": {"input": "hi", "metadata": {"answer_tokens": "100000", "tool_calls": "0"}},
}
PROBE = {"model": "m", "input": "probe", "store": False, "metadata": {"answer_tokens": "20", "tool_calls": "0"}}


async def turn_ms(client: Any, body: dict[str, Any]) -> tuple[float, Any]:
    rec = TurnRecorder(client.transport, "full")
    await client.safe_create(body, recorder=rec)
    result = rec.result()
    return result.turn_ms or 0.0, result


@pytest.fixture(scope="module")
def heavy_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Endpoint]]:
    """One server process per transport for the big-request tests (limits raised to 32 MiB)."""
    started: dict[str, Endpoint] = {}
    try:
        for name in ("https", "ws", "grpc"):
            started[name] = start_server_process(
                name,
                workdir=tmp_path_factory.mktemp(f"heavy-{name}"),
                profile="fast",
                tls=True,
                settings={"max_body_bytes": BIG, "max_message_bytes": BIG},
            )
        yield started
    finally:
        codes = {name: ep.process.stop() for name, ep in started.items() if ep.process is not None}
    assert all(code == 0 for code in codes.values()), codes


def send_heavy(transport: str, url: str, ca_path: str | None, body: dict[str, Any]) -> tuple[bool, Any, Any]:
    """One request on a fresh client, in a child process. Returns: (success, error code, error text)."""

    async def go() -> tuple[bool, Any, Any]:
        client = make_client(transport, target_endpoint(transport, url, ca_path=ca_path, api_key=None).client_config())
        try:
            await client.connect()
            _, result = await turn_ms(client, body)
            return result.success, result.error_code, result.error
        finally:
            await client.close()

    return asyncio.run(go())


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(HEAVY))
@pytest.mark.parametrize("transport", ["https", "ws", "grpc"])
async def test_a_big_request_leaves_a_concurrent_probe_at_its_normal_latency(
    heavy_servers: dict[str, Endpoint], transport: str, kind: str
) -> None:
    endpoint = heavy_servers[transport]
    probe = make_client(transport, endpoint.client_config())
    body = {"model": "m", "store": False, "metadata": {"answer_tokens": "1", "tool_calls": "0"}, **HEAVY[kind]}

    stack = contextlib.ExitStack()
    try:
        await probe.connect()
        for _ in range(2):  # warm: first requests of a connection pay for imports and caches
            await turn_ms(probe, PROBE)
        # the probe's own process is pytest's, with every earlier test's objects in its heap: a full collection
        # there pauses the probe's loop for hundreds of ms (seen once per CI run, blamed on the server). As the
        # runner does between chunks, collect now and not while measuring: the server is what is under test
        gc.collect()
        gc.disable()
        stack.callback(gc.enable)
        unloaded = statistics.median([(await turn_ms(probe, PROBE))[0] for _ in range(7)])
        # the big request from a process of its own: building it (100k protobuf items take the gRPC client
        # ~0.3 s, and as long to free) must not stall the probe's client; the server is what is under test
        pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        stack.callback(pool.shutdown)
        big = asyncio.wrap_future(pool.submit(send_heavy, transport, endpoint.url, endpoint.ca_path, body))
        loaded: list[float] = []
        while not big.done() or not loaded:
            ms, result = await turn_ms(probe, PROBE)
            assert result.success, (result.error_code, result.error)
            loaded.append(ms)
        outcome = await big
    finally:
        await probe.close()
        stack.close()
    # the big request itself: served, or refused as a client error; never a server error
    success, code, error = outcome
    assert success or code not in ("server_error", "engine_error", None), error
    # no probe stalls for long (the bug this guards against held one probe for 260x its time), and at most one
    # passes 10x: a single 10-15x probe as the 10 MB request ends was seen in full-suite runs only (not found)
    slow = sorted(x for x in loaded if x > 10 * unloaded)
    assert max(loaded) <= 30 * unloaded and len(slow) <= 1, (
        f"probes took {[round(x) for x in slow]} ms beside the {kind} request, up to {max(loaded) / unloaded:.0f}x "
        f"their unloaded {unloaded:.0f} ms ({len(loaded)} probes: {[round(x) for x in loaded]})"
    )


# ---------------------------------------------------------------------------------------------- queued frames

FLOODS = [pytest.param(40, 5 * 2**20, id="40x5MB"), pytest.param(20_000, 0, id="20k-small")]


@pytest.mark.slow
@pytest.mark.parametrize(("frames", "pad_bytes"), FLOODS)
@pytest.mark.parametrize("transport", ["ws", "grpc"])
async def test_a_flood_of_queued_frames_is_refused_beyond_a_bound_and_memory_stays_bounded(
    processes: StartProcess, tmp_path: Path, transport: str, frames: int, pad_bytes: int
) -> None:
    """``frames`` requests sent on one lane behind a slow response (each padded with ``pad_bytes`` in an ignored
    parameter, so it is big on the wire and in the queue but cheap to run): past a bound the server refuses them
    with a typed error (429 or 400, any code) instead of holding them all, and its RSS stays under 3x what it was
    before the flood. Every request gets exactly one answer; the slow response completes."""
    endpoint = processes(transport, max_output_tokens=8192, sim_profile=slow_profile(tmp_path))
    assert endpoint.process is not None
    link = await open_link(transport, endpoint)
    slow: dict[str, Any] = {"model": "m", "input": "slow", "store": False, "stream_id": "q"}
    slow["metadata"] = {"answer_tokens": "5000", "tool_calls": "0"}
    pad = "x" * pad_bytes
    answers: dict[str, int] = {}
    refusals: list[dict[str, Any]] = []
    try:
        with RssSampler(endpoint.process.pid) as rss:
            await link.send(as_event(transport, slow))
            first = await link.recv()
            assert first is not None and first[0]["type"] == "response.created", (first, link.ended)

            async def flood() -> None:
                for i in range(frames):
                    body: dict[str, Any] = {"model": "m", "input": f"f{i}", "store": False, "stream_id": "q"}
                    body["metadata"] = {"answer_tokens": "1", "tool_calls": "0"}
                    if pad:
                        body["user"] = pad  # accepted and ignored by the server: bytes, not work
                    await link.send(as_event(transport, body))

            sender = asyncio.create_task(flood())
            while sum(answers.values()) < frames + 1:
                got = await link.recv()
                assert got is not None, f"the connection ended ({link.ended}) after {answers}"
                event = got[0]
                if event.get("type") in TERMINAL:
                    answers[event["type"]] = answers.get(event["type"], 0) + 1
                    if event["type"] == "error":
                        refusals.append(event)
            await sender
    finally:
        await link.close()
    assert refusals, f"all {frames} queued requests were held and run; none was refused ({answers}; {rss.mib()})"
    for event in refusals:
        assert event.get("status") in (429, 400) and event["error"].get("code"), event
        assert event.get("stream_id") == "q", event
    assert answers.get("response.failed", 0) == 0, answers
    assert rss.peak < 3 * rss.before, f"{rss.mib()} after {frames} frames of {pad_bytes} bytes"


# ---------------------------------------------------------------------------------------------- poison frames

POISON: dict[str, bytes] = {
    "deep-nesting-in-an-ignored-parameter": b'{"type":"response.create","model":"m","input":"hi","reasoning":'
    + nested(3000).text.encode()
    + b"}",
    "deep-nesting-in-input": b'{"type":"response.create","model":"m","input":' + nested(3000).text.encode() + b"}",
    "deep-nesting-in-a-tool-schema": b'{"type":"response.create","model":"m","input":"hi","tool_choice":"required",'
    b'"tools":[{"type":"function","name":"f","parameters":' + nested(900, "{").text.encode() + b"}]}",
    "lone-surrogate-in-input": b'{"type":"response.create","model":"m","input":"\\ud800"}',
    "lone-surrogate-in-a-metadata-key": b'{"type":"response.create","model":"m","input":"x",'
    b'"metadata":{"\\udc00":"1"}}',
    "max_output_tokens-1e400": b'{"type":"response.create","model":"m","input":"x","max_output_tokens":1e400}',
    "max_output_tokens-400-digits": b'{"type":"response.create","model":"m","input":"x","max_output_tokens":'
    + b"9" * 400
    + b"}",
    "self-referential-anyOf-schema": b'{"type":"response.create","model":"m","input":"x","tool_choice":"required",'
    b'"tools":[{"type":"function","name":"f","parameters":{"$ref":"#/$defs/A","$defs":{"A":{"anyOf":'
    b'[{"$ref":"#/$defs/A"}]}}}}]}',
    "properties-5": b'{"type":"response.create","model":"m","input":"x","tool_choice":"required",'
    b'"tools":[{"type":"function","name":"f","parameters":{"type":"object","properties":5}}]}',
    "minimum-a-and-min-over-max": b'{"type":"response.create","model":"m","input":"x","tool_choice":"required",'
    b'"tools":[{"type":"function","name":"f","parameters":{"type":"object","properties":{"a":{"type":"integer",'
    b'"minimum":"a"},"b":{"type":"integer","minimum":10,"maximum":1}}}}]}',
    "invalid-utf8-in-a-string": b'{"type":"response.create","model":"m","input":"\xff\xfe"}',
}
POISON = {
    name: data.replace(b'"type":"response.create",', b'"type":"response.create","stream_id":"p",', 1)
    for name, data in POISON.items()
}
"""Frames that used to end a connection, or would: each on lane ``p``. A frame that is not UTF-8 goes in a binary
WebSocket frame (in a text frame it is a protocol error the library closes on)."""


def _typed(**fields: Any) -> bytes:
    return pb.ClientEvent(create=pb.CreateRequest(model="m", stream_id="p", **fields)).SerializeToString()


POISON_TYPED: dict[str, bytes] = {
    "bad-json-in-tool-parameters": _typed(text="x", tools=[pb.FunctionTool(name="f", parameters="{")]),
    "deep-json-in-tool-parameters": _typed(text="x", tools=[pb.FunctionTool(name="f", parameters=nested(3000).text)]),
    "bad-json-in-tool_choice": _typed(text="x", tool_choice=pb.ToolChoice(json="{nope")),
    "bad-json-in-parts_json": _typed(
        items=pb.InputItems(
            items=[pb.InputItem(function_call_output=pb.FunctionCallOutput(call_id="c", parts_json="[1,"))]
        )
    ),
    "bad-json-in-annotations": _typed(
        items=pb.InputItems(
            items=[
                pb.InputItem(
                    message=pb.InputMessage(
                        role="assistant",
                        parts=pb.ContentParts(
                            parts=[pb.ContentPart(output_text=pb.OutputText(text="t", annotations=["{x"]))]
                        ),
                    )
                )
            ]
        )
    ),
    "max_output_tokens-int64-min": _typed(text="x", max_output_tokens=-(2**63)),
    "max_output_tokens-int64-max": _typed(text="x", max_output_tokens=2**63 - 1),
    "invalid-utf8-in-model": bytes_field(1, bytes_field(1, b"m\xff") + bytes_field(12, b"p")),
    "garbage": b"\xff\xff\xff\xff",
}


def poison_cases() -> list[Any]:
    cases = [pytest.param("ws", data, id=f"ws-{name}") for name, data in POISON.items()]
    cases += [pytest.param("grpc-json", data, id=f"grpc-json-{name}") for name, data in POISON.items()]
    cases += [pytest.param("grpc-typed", data, id=f"grpc-typed-{name}") for name, data in POISON_TYPED.items()]
    return cases


KEEP_BODY: dict[str, Any] = {"model": "m", "input": "keep", "store": False, "stream_id": KEEP_LANE}
KEEP_BODY["metadata"] = {"answer_tokens": "300", "tool_calls": "0"}
GOOD_BODY: dict[str, Any] = {"model": "m", "input": "hi", "store": False, "metadata": {"answer_tokens": "1"}}


@pytest.mark.parametrize(("transport", "data"), poison_cases())
async def test_a_poison_frame_is_refused_on_its_lane_while_another_lane_runs(
    serve: Any, transport: str, data: bytes
) -> None:
    """A long response runs on lane ``keep`` (``fast``: 300 tokens); the poison frame gets a 4xx ``error`` event
    (or a normal response) on its own lane, the connection stays open and serves a good request, and the
    ``keep`` response completes."""
    server = await serve("ws" if transport == "ws" else "grpc", profile="fast")
    opener: Callable[[], Awaitable[Link]] = (
        (lambda: WsLink.open(server)) if transport == "ws" else (lambda: GrpcLink.open(server))
    )
    codec = "ws" if transport == "ws" else "grpc"
    conn = KeepLane(opener, as_event(codec, KEEP_BODY))
    if transport == "ws":
        try:
            data.decode()
            frame = Frame(data, frozenset({None, "p"}))
        except UnicodeDecodeError:
            frame = Frame(data, frozenset({None, "p"}), binary=True)
    elif transport == "grpc-json":
        frame = Frame(bytes_field(2, data), frozenset({None, "p"}))
    else:
        frame = Frame(data, frozenset({None, "p"}))
    try:
        await connection_case(conn, [lambda prev, call: frame], as_event(codec, GOOD_BODY))
        await conn.finish()
        assert conn.keeps_completed == conn.keeps_started == 1
    finally:
        await conn.reset()


# ---------------------------------------------------------------------------------------------- slow headers

SLOW_HEADERS = b"POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nX-Pad: " + (
    b"a" * 60
)


async def test_slow_header_clients_are_closed_after_the_header_timeout_and_others_are_served(serve: Any) -> None:
    """20 TLS connections send their request headers at one byte a second (they would need ~2 minutes); the server
    closes each once its header timeout (2 s here) has passed, before their headers are complete, and a new
    client is served while they hang on."""
    server = await serve("https", header_timeout_s=2.0)
    assert server.tls is not None
    ctx = server.tls.client_ssl_context()
    closed_at: list[float] = []
    sent_bytes: list[int] = []

    async def slow_client() -> None:
        """Drip the head a byte a second until the server lets go (EOF, a reply, a reset)."""
        reader, writer = await asyncio.open_connection(server.host, server.port, ssl=ctx, server_hostname=server.host)
        sent = 0
        try:
            async with asyncio.timeout(WAIT_S):
                for byte in SLOW_HEADERS:
                    writer.write(bytes([byte]))
                    sent += 1
                    try:
                        async with asyncio.timeout(1.0):
                            await reader.read(1024)  # b"" (closed) or a reply (a 408): the server let go
                        break
                    except TimeoutError:
                        continue  # still open: the next byte
                else:
                    raise AssertionError("the whole request head went through without the server closing")
                while await reader.read(1024):  # drain an error reply up to the close
                    pass
        except ConnectionError:
            pass  # a reset is a close too
        except TimeoutError:
            raise AssertionError(f"still open after {WAIT_S:g} s and {sent} bytes") from None
        finally:
            writer.close()
        closed_at.append(time.monotonic())
        sent_bytes.append(sent)

    tasks = [asyncio.create_task(slow_client()) for _ in range(20)]
    await asyncio.sleep(0.3)  # every slow client has connected and started dripping
    async with httpx.AsyncClient(verify=ctx, timeout=WAIT_S) as client:
        reply = await client.post(
            server.url + "/responses",
            json={"model": "m", "input": "hi", "metadata": {"answer_tokens": "1"}, "store": False},
        )
    served_at = time.monotonic()
    assert reply.status_code == 200 and reply.json()["status"] == "completed"
    assert not closed_at or served_at < min(closed_at), "the new client was served only after the slow ones left"
    await asyncio.gather(*tasks)
    assert len(closed_at) == 20 and max(sent_bytes) < len(SLOW_HEADERS)
