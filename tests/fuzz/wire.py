"""What the fuzz tests read off the wire, and the invariants every answer to bad input must keep.

* :func:`leaks`: Python class names or traceback lines in what a server sent (an internal leaking out); a
  name the request itself carried does not count (a server may quote the input it refuses).
* :func:`error_body_problems`, :func:`ws_error_problems`: the Responses error body of an HTTP refusal
  (``{"error": {"message", "type", "param", "code"}}``) and the WebSocket-shaped ``error`` event, 4xx only.
* :class:`Link`: one raw connection (WebSocket, gRPC ``Connect`` in either codec) as frames in, events out.
* :class:`KeepLane`: a connection with a long response kept in flight on lane ``keep`` while fuzzed frames go
  to the other lanes: each frame's answer is read, and the keep response must go on to complete.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from ssl import SSLContext
from typing import Any

import grpc
import msgspec
import orjson
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from servers.base import RunningServer
from tests.conftest import TIMEOUT_FACTOR
from tests.fuzz.strategies import KEEP_LANE
from turnbench.v1 import responses_pb2 as pb
from turnbench.v1.convert import EVENT_TYPES

WAIT_S = 20 * TIMEOUT_FACTOR
"""The most one read may wait: past it the server hangs (a slow machine is far below it)."""

TERMINAL = frozenset({"response.completed", "response.failed", "response.incomplete", "error", "response.steer.failed"})
CLASS_NAME = re.compile(
    r"Traceback \(most recent call last\)|File \"[^\"]*\.py\"|<class '[^']*'>"
    r"|\b[A-Z][A-Za-z0-9]*(?:Error|Exception|Exit|Interrupt)\b|\b(?:StopIteration|StopAsyncIteration|GeneratorExit)\b"
)
ERROR_KEYS = {"message", "type", "param", "code"}


UNREADABLE = "__unreadable__"
"""Key added to an event that turnbench's clients (orjson) cannot read though a more lenient decoder can."""


def decode_event(raw: bytes | str) -> dict[str, Any]:
    """A server event as a dict. JSON that orjson (what turnbench's clients use, nesting limit 1024) refuses but
    msgspec reads is returned with :data:`UNREADABLE` set; not JSON at all: ``{"type": "<not JSON>"}``."""
    try:
        event = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        try:
            event = msgspec.json.decode(raw)
        except (msgspec.DecodeError, RecursionError):
            return {"type": "<not JSON>"}
        if isinstance(event, dict):
            event[UNREADABLE] = f"orjson cannot read it: {exc}"
    return event if isinstance(event, dict) else {"type": "<not an object>"}


class Hang(AssertionError):
    """No answer within :data:`WAIT_S`."""


def leaks(wire: str, sent: bytes = b"") -> list[str]:
    """Class names or traceback lines in ``wire`` that ``sent`` (the request) did not carry itself."""
    quoted = sent.decode("utf-8", "replace")
    return sorted({m.group(0) for m in CLASS_NAME.finditer(wire) if m.group(0) not in quoted})


def _detail_problems(err: Any) -> list[str]:
    if not isinstance(err, dict) or set(err) != ERROR_KEYS:
        return [f"error is not an object of exactly {sorted(ERROR_KEYS)}: {err!r:.300}"]
    problems = []
    if not isinstance(err["message"], str) or not err["message"]:
        problems.append("error.message is not a non-empty string")
    if not isinstance(err["type"], str):
        problems.append("error.type is not a string")
    for key in ("param", "code"):
        if err[key] is not None and not isinstance(err[key], str):
            problems.append(f"error.{key} is neither a string nor null")
    return problems


def error_body_problems(body: Any) -> list[str]:
    """What is wrong with an HTTP error body (``[]``: it is the Responses error object)."""
    if not isinstance(body, dict) or set(body) != {"error"}:
        return [f"body is not {{'error': {{...}}}}: {body!r:.300}"]
    return _detail_problems(body["error"])


def ws_error_problems(event: dict[str, Any]) -> list[str]:
    """What is wrong with an ``error`` event of a connection (``[]``: the WebSocket error shape, a 4xx)."""
    problems = _detail_problems(event.get("error"))
    status = event.get("status")
    if not isinstance(status, int) or not 400 <= status < 500:
        problems.append(f"status {status!r} is not a 4xx: bad input must never be a server error")
    extra = set(event) - {"type", "status", "error", "stream_id", "sequence_number"}
    if extra:
        problems.append(f"unexpected members {sorted(extra)}")
    return problems


# ---------------------------------------------------------------------------------------------- links


class Link:
    """One raw connection: :meth:`send` one message, :meth:`recv` the next event (None once the connection
    ended; ``ended`` then says how). An event is a JSON-shaped dict; ``raw`` is its text as it came."""

    ended: str | None = None

    async def send(self, data: bytes, *, binary: bool = False) -> None:
        raise NotImplementedError

    async def recv(self) -> tuple[dict[str, Any], str] | None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class WsLink(Link):
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    @classmethod
    async def open(cls, server: RunningServer) -> WsLink:
        assert server.tls is not None
        return await cls.open_url(server.url, server.tls.client_ssl_context())

    @classmethod
    async def open_url(cls, url: str, ssl: SSLContext | None, headers: dict[str, str] | None = None) -> WsLink:
        """A connection to the WebSocket mode of the server whose base URL (``…/v1``) is ``url``."""
        url = url.replace("https://", "wss://").replace("http://", "ws://") + "/responses"
        ws = await ws_connect(
            url, ssl=ssl, compression=None, max_size=None, ping_interval=None, additional_headers=headers or {}
        )
        return cls(ws)

    async def send(self, data: bytes, *, binary: bool = False) -> None:
        try:
            await self.ws.send(data, text=not binary)
        except ConnectionClosed:
            pass  # recv() says how it ended

    async def recv(self) -> tuple[dict[str, Any], str] | None:
        try:
            async with asyncio.timeout(WAIT_S):
                raw = await self.ws.recv(decode=False)
        except ConnectionClosed as exc:
            self.ended = f"close {exc.rcvd.code} {exc.rcvd.reason!r}" if exc.rcvd is not None else "dropped"
            return None
        except TimeoutError:
            raise Hang(f"no event within {WAIT_S:g} s") from None
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        return decode_event(raw), text

    async def close(self) -> None:
        await self.ws.close()


def typed_event(ev: pb.ServerEvent) -> dict[str, Any]:
    """The members of a typed event the fuzz tests read, JSON-shaped: type, lane, the response's id, status and
    function calls, an error's every field."""
    kind = ev.WhichOneof("event")
    if kind is None or kind == "json":
        return {"type": f"<typed event {kind!r}>"}
    m = getattr(ev, kind)
    out: dict[str, Any] = {"type": EVENT_TYPES[kind]}
    if m.HasField("stream_id"):
        out["stream_id"] = m.stream_id
    if kind == "ws_error":
        e = m.error
        out["status"] = m.status
        out["error"] = {
            "message": e.message,
            "type": e.type,
            "param": e.param if e.HasField("param") else None,
            "code": e.code if e.HasField("code") else None,
        }
    elif kind == "error":
        out.update(code=m.code if m.HasField("code") else None, message=m.message)
    elif hasattr(m, "response"):
        r = m.response
        calls = [
            {"type": "function_call", "call_id": o.function_call.call_id}
            for o in r.output
            if o.HasField("function_call")
        ]
        out["response"] = {"id": r.id, "status": r.status, "output": calls, "error": {"code": r.error.code}}
    return out


class GrpcLink(Link):
    """A ``Connect`` stream; messages are sent as given (typed or json codec), events come back in either."""

    def __init__(self, channel: grpc.aio.Channel, call: Any) -> None:
        self.channel, self.call = channel, call

    @classmethod
    async def open(cls, server: RunningServer) -> GrpcLink:
        assert server.tls is not None
        return await cls.open_target(server.url, server.tls.ca_pem_bytes)

    @classmethod
    async def open_target(
        cls, target: str, ca_pem: bytes | None, metadata: tuple[tuple[str, str], ...] = ()
    ) -> GrpcLink:
        """A ``Connect`` stream to the gRPC server at ``target`` (``host:port``), TLS when ``ca_pem`` is given."""
        options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
        if ca_pem is not None:
            channel = grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(ca_pem), options=options)
        else:
            channel = grpc.aio.insecure_channel(target, options=options)
        return cls(channel, channel.stream_stream("/turnbench.v1.Responses/Connect")(metadata=metadata))

    def _ended_by(self, exc: grpc.aio.AioRpcError) -> None:
        trailer = dict(exc.trailing_metadata() or ())
        self.ended = f"status {exc.code().name} {exc.details()!r} trailer {trailer}"

    async def send(self, data: bytes, *, binary: bool = False) -> None:
        try:
            await self.call.write(data)
        except grpc.aio.AioRpcError as exc:
            self._ended_by(exc)
        except asyncio.InvalidStateError:
            pass  # the call is over; recv() says how

    async def recv(self) -> tuple[dict[str, Any], str] | None:
        try:
            async with asyncio.timeout(WAIT_S):
                message = await self.call.read()
        except grpc.aio.AioRpcError as exc:
            self._ended_by(exc)
            return None
        except TimeoutError:
            raise Hang(f"no event within {WAIT_S:g} s") from None
        if message is grpc.aio.EOF:
            self.ended = f"status {(await self.call.code()).name}"
            return None
        try:
            ev = pb.ServerEvent.FromString(message)
        except Exception:
            return {"type": "<not a ServerEvent>"}, repr(message)
        if ev.WhichOneof("event") == "json":
            return decode_event(ev.json), ev.json
        return typed_event(ev), str(ev)

    async def close(self) -> None:
        self.call.cancel()
        await self.channel.close()


# ---------------------------------------------------------------------------------------------- keep lane


@dataclass
class Answer:
    """The events a frame got, up to its terminal one, with their text as it came."""

    events: list[dict[str, Any]] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)

    @property
    def last(self) -> dict[str, Any]:
        return self.events[-1]

    def response(self) -> dict[str, Any] | None:
        r = self.last.get("response")
        return r if isinstance(r, dict) else None

    def brief(self) -> str:
        """The answer for a failure message: its event types, and the terminal event in full."""
        kinds = [e.get("type") for e in self.events]
        return f"{len(kinds)} events {kinds[:4]}{'…' if len(kinds) > 4 else ''}; last: {self.texts[-1][:600]}"


class KeepLane:
    """A connection that always has a long response in flight on lane ``keep`` when a fuzzed frame is sent.

    :meth:`ask` sends one frame and returns its answer (every event that is not the keep lane's, up to a
    terminal one); keep-lane events are read on the way and a keep response that ends in anything but
    ``response.completed`` fails. After a failure call :meth:`reset`: the next ask opens a fresh connection.
    """

    def __init__(self, open_link: Callable[[], Awaitable[Link]], keep_frame: bytes) -> None:
        self.open_link = open_link
        self.keep_frame = keep_frame
        self.link: Link | None = None
        self.keep_running = False
        self.keeps_started = self.keeps_completed = 0

    async def _ready(self) -> Link:
        if self.link is None:
            self.link = await self.open_link()
            self.keep_running = False
        if not self.keep_running:
            await self.link.send(self.keep_frame)
            self.keep_running = True
            self.keeps_started += 1
            got = await self._next(self.link)
            assert got is not None, f"the connection ended before the keep response started: {self.link.ended}"
            event, text = got
            assert event.get("stream_id") == KEEP_LANE and event.get("type") == "response.created", text[:300]
        return self.link

    async def _next(self, link: Link) -> tuple[dict[str, Any], str] | None:
        return await link.recv()

    def _keep_event(self, event: dict[str, Any], text: str) -> None:
        kind = event.get("type")
        if kind in TERMINAL:
            assert kind == "response.completed", f"the keep lane's response ended with {text[:400]}"
            self.keep_running = False
            self.keeps_completed += 1

    async def ask(self, data: bytes, *, binary: bool = False) -> Answer:
        link = await self._ready()
        await link.send(data, binary=binary)
        answer = Answer()
        while True:
            got = await self._next(link)
            assert got is not None, f"the connection ended ({link.ended}) after {answer.events[-3:]!r:.400}"
            event, text = got
            if event.get("stream_id") == KEEP_LANE:
                self._keep_event(event, text)
                continue
            answer.events.append(event)
            answer.texts.append(text)
            if event.get("type") in TERMINAL:
                return answer

    async def finish(self) -> None:
        """Read the keep response in flight to its end (it must complete)."""
        link = self.link
        while link is not None and self.keep_running:
            got = await self._next(link)
            assert got is not None, f"the connection ended ({link.ended}) with the keep response in flight"
            event, text = got
            assert event.get("stream_id") == KEEP_LANE, f"an event nobody asked for: {text[:300]}"
            self._keep_event(event, text)

    async def reset(self) -> None:
        link, self.link = self.link, None
        self.keep_running = False
        if link is not None:
            try:
                await link.close()
            except Exception:  # a dead connection has nothing left to close
                pass


# ---------------------------------------------------------------------------------------------- one case


@dataclass(frozen=True)
class Frame:
    """One fuzzed message as a connection sends it: its bytes, whether it is a binary frame, and the lanes
    its answer may come on."""

    data: bytes
    lanes: frozenset[str | None]
    binary: bool = False
    shown: str = ""  # the request as the repro shows it, when ``data`` wraps it (gRPC's json codec)


MakeFrame = Callable[[str | None, str | None], Frame]
"""A frame made once the ids an earlier frame of the example created (``$PREV``, ``$CALL``) are known."""


def connection_answer_problems(answer: Answer, frame: Frame) -> list[str]:
    """What is wrong with a connection's answer to one fuzzed frame."""
    problems = [f"internal names on the wire: {n}" for n in [leaks("\n".join(answer.texts), frame.data)] if n]
    problems += [f"{e.get('type')} event: {e[UNREADABLE]}" for e in answer.events if UNREADABLE in e]
    last = answer.last
    kind = last.get("type")
    if kind == "error":
        problems += ws_error_problems(last)
    elif kind == "response.failed":
        problems.append("the response failed: bad input must be refused, not fail the server")
    on = {e.get("stream_id") for e in answer.events}
    if len(on) != 1 or not on <= frame.lanes:
        problems.append(f"answered on lane(s) {sorted(map(str, on))}, expected one of {sorted(map(str, frame.lanes))}")
    return problems


def ids_of(response: dict[str, Any] | None) -> tuple[str | None, str | None]:
    """(the response id, its last function call's call_id), for ``$PREV``/``$CALL`` in a later request."""
    if not response or response.get("status") not in ("completed", "incomplete"):
        return None, None
    calls = [o.get("call_id") for o in response.get("output") or [] if isinstance(o, dict) and o.get("call_id")]
    return response.get("id"), calls[-1] if calls else None


async def connection_case(conn: KeepLane, frames: list[MakeFrame], good: bytes) -> None:
    """Send each frame (made from the ids the one before created), check its answer, then ``good``, which must
    complete. Any failure notes what was sent and what came back, and leaves a fresh connection behind."""
    log: list[str] = []
    try:
        prev = call = None
        for make in frames:
            frame = make(prev, call)
            answer = await conn.ask(frame.data, binary=frame.binary)
            log.append(f"{'binary ' if frame.binary else ''}{frame.shown or frame.data!r:.2000} -> {answer.brief()}")
            problems = connection_answer_problems(answer, frame)
            assert not problems, problems
            if answer.last.get("type") != "error":
                prev, call = ids_of(answer.response())
        answer = await conn.ask(good)
        assert answer.last.get("type") == "response.completed", f"a good request then: {answer.brief()}"
    except BaseException as exc:
        for line in log:
            exc.add_note(line)  # printed with the failure, in a hypothesis example or not
        await conn.reset()
        raise
