"""One stateful connection — WebSocket mode or a gRPC ``Connect`` stream — written once.

As websockets' I/O flavours sit on one sans-I/O ``Protocol``, the WebSocket server and gRPC ``Connect`` sit
on :class:`Connection`: an adapter reads messages and decodes each into a :class:`Submission`, writes the bytes
the connection hands it, and maps how the connection ended (:class:`Ending`) onto its wire (a close code, a
gRPC status). Everything else is here::

    message ─adapter: decode─▶ Submission ─lane (FIFO)─▶ in-flight slot ─▶ service.respond ─encode─▶ send

* **Lanes.** Requests of one ``stream_id`` (none: the default lane) run one at a time, in arrival order;
  lanes run concurrently, at most ``max_inflight_per_connection`` responses at once; more are queued. The
  queue is bounded (``max_queued_per_connection`` requests, ``max_queued_bytes_per_connection`` of payload):
  past it a request is refused with ``too_many_queued_requests`` (429), so one peer cannot grow the server's
  memory without limit. At most ``max_lanes`` named lanes.
* **Errors.** A refused request gets an ``error`` event on its lane, after the requests queued before it
  there (clients read a lane in order). A request-scoped error (bad input, unknown parent, the request
  timeout, a server error) leaves the connection serving.
* **Request timeout** (``request_timeout_s``), from the moment a request runs: request-scoped. Before
  ``response.created`` it is an ``error`` event (``request_timeout``), after it ``response.failed``.
* **Lifetime** (``connection_lifetime_s``), timed from the open whether the connection is busy or idle: new
  requests are refused with ``websocket_connection_limit_reached`` on their lane, responses in flight get
  ``grace_s`` to finish, then the connection-level limit error is sent and the connection ends.
* **Drain** (server shutdown, :meth:`Connection.drain`): new requests are refused with
  ``server_shutting_down``, responses in flight get ``grace_s``, then the connection ends.
* **The peer closing.** A WebSocket close (the peer can read no more) cancels what runs; gRPC's half-close
  (``half_close=True``: the peer still reads) finishes what was asked first. When :meth:`Connection.serve`
  returns, nothing of the connection runs any more and its state is freed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from turnbench.errors import (
    ConnectionLimitError,
    InvalidRequestError,
    NotFoundError,
    QueueFullError,
    ServiceUnavailableError,
    TurnbenchError,
    as_turnbench_error,
)
from turnbench.item_events import new_id
from turnbench.lifecycle import Append, ResponseLifecycle
from turnbench.prepared import ParsedRequest
from turnbench.schema import (
    Event,
    ResponseCreated,
    SteerAccepted,
    SteerError,
    SteerFailed,
    SteerPending,
    SteerRef,
    WsErrorEvent,
    ws_error_event,
)
from turnbench.schema import encode as encode_json
from turnbench.service import ResponsesService
from turnbench.state import valid_lane

__all__ = ["Connection", "ConnectionGone", "ConnectionSet", "Encode", "Ending", "Send", "Submission"]

log = logging.getLogger("turnbench.connection")

Send = Callable[[bytes], Awaitable[None]]
"""Write one message to the peer; raises :class:`ConnectionGone` when the peer is gone."""
Encode = Callable[[Any], bytes]
"""One server event as the bytes of one message, in the codec its request came in."""


class ConnectionGone(Exception):
    """The peer is gone (closed or dropped): whatever was being sent is lost."""


@dataclass(slots=True)
class Submission:
    """One decoded client message: a request, or the error it earned, and how to answer it.

    ``stream_id``: the lane the message named, as sent (an invalid one answers on the default lane).
    """

    request: ParsedRequest | None
    encode: Encode
    error: TurnbenchError | None = None
    stream_id: str | None = None
    steer: dict[str, Any] | None = None  # a ``response.steer`` event's members (validated by the connection)
    append: Append | None = None  # option A's ``response.append``

    @classmethod
    def steering(cls, members: dict[str, Any], encode: Encode) -> Submission:
        return cls(None, encode, None, None, members)

    @classmethod
    def appending(cls, append: Append, encode: Encode) -> Submission:
        return cls(None, encode, None, None, None, append)

    @classmethod
    def of(cls, parsed: ParsedRequest, encode: Encode) -> Submission:
        return cls(parsed, encode, None, parsed.request.stream_id)

    @classmethod
    def refused(cls, error: TurnbenchError, encode: Encode) -> Submission:
        """A message refused while decoding; ``error.stream_id`` names its lane when it could be read."""
        return cls(None, encode, error, error.stream_id)


@dataclass(frozen=True, slots=True)
class Ending:
    """Why a connection ended. ``error``: what the adapter reports on its wire (close code, gRPC status)."""

    reason: Literal["peer_closed", "lifetime", "shutdown", "error"]
    error: TurnbenchError | None = None


class Connection:
    """The protocol of one connection: its session and cache, its queued and running requests, its limits."""

    def __init__(
        self,
        service: ResponsesService,
        transport: str,
        send: Send,
        encode: Encode = encode_json,
        *,
        send_survives_cancel: bool = False,
    ) -> None:
        """``encode``: the codec of connection-level events until a message names its own (the last one's
        codec is used after that). ``send_survives_cancel``: a ``send`` cancelled while it waits has written
        its message whole or not at all (``websockets``: the frame is written at once, only the drain is
        awaited), so request tasks may call it themselves (see :class:`_Writer`)."""
        self.service, self.settings = service, service.settings
        self.session = service.new_session(transport, connection=True)
        self.tasks: set[asyncio.Task[None]] = set()
        self.idle = asyncio.Event()  # set while no message of this connection is queued or running
        self.idle.set()
        self.closed = asyncio.Event()  # set once serve() has returned and the state is freed
        self.draining = False
        self._writer = _Writer(send, direct=send_survives_cancel)
        self._encode = encode
        self._slots = asyncio.Semaphore(max(1, self.settings.max_inflight_per_connection))
        self._refuse: Callable[[], TurnbenchError] | None = None  # set at the lifetime limit or a drain
        self._queued = 0  # requests submitted and not yet running (waiting for their lane or a slot)
        self._queued_bytes = 0
        # steering (docs/guides/steering.md): the running responses a steer or an append may target (with their
        # lanes), those that finished here, and the steers left queued for a client's continuation
        # (response.steer.pending)
        self._active: dict[str, tuple[ResponseLifecycle, str | None]] = {}
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._held_steers: dict[str, list[tuple[str, list[dict[str, Any]]]]] = {}
        self._stop: asyncio.Future[Ending] = asyncio.get_running_loop().create_future()

    # ------------------------------------------------------------------------------------------ lifecycle

    async def serve(self, incoming: AsyncIterator[Submission], *, half_close: bool = False) -> Ending:
        """Take ``incoming`` messages until the peer closes, the lifetime limit, a drain or a fatal error.

        ``half_close``: the end of ``incoming`` leaves the peer reading (gRPC), so what was asked is finished
        first; otherwise (WebSocket) it is cancelled. Returns: why the connection ended.
        """
        loop = asyncio.get_running_loop()
        lifetime: asyncio.Future[None] = loop.create_future()
        timer = loop.call_later(self.settings.connection_lifetime_s, _resolve, lifetime)
        reader = asyncio.create_task(self._read(incoming), name="turnbench-connection-reader")
        try:
            await _first(reader, lifetime, self._stop)
            if reader.done() and not lifetime.done() and not self._stop.done():
                _log_failure(reader)
                if not half_close:
                    return Ending("peer_closed")
                async with _task(self.idle.wait()) as idle:
                    await _first(idle, lifetime, self._stop)
                if self.idle.is_set() and not self._stop.done():
                    return Ending("peer_closed")
            if self._stop.done():
                return self._stop.result()
            return await self._lifetime_reached(reader)
        finally:
            timer.cancel()
            reader.cancel()
            await self._cancel_tasks()
            self._writer.close()
            self.session.close()
            self.closed.set()

    async def drain(self) -> None:
        """Graceful stop: refuse new requests (``server_shutting_down``), give those in flight ``grace_s``,
        then end the connection (``Ending("shutdown")``). Returns once :meth:`serve` has returned."""
        self.draining = True
        self._refuse = _shutting_down
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.idle.wait(), self.settings.grace_s)
        self._end(Ending("shutdown", _shutting_down()))
        await self.closed.wait()

    async def _lifetime_reached(self, reader: asyncio.Task[None]) -> Ending:
        minutes = self.settings.connection_lifetime_s / 60.0
        self._refuse = lambda: ConnectionLimitError(minutes)
        async with _task(self.idle.wait()) as idle:
            await _first(idle, self._stop, timeout_s=self.settings.grace_s)
        if self._stop.done():
            return self._stop.result()
        reader.cancel()
        await self._cancel_tasks()
        err = ConnectionLimitError(minutes)
        with contextlib.suppress(ConnectionGone):
            await self.send(ws_error_event(err), self._encode)
        return Ending("lifetime", err)

    def _end(self, ending: Ending) -> None:
        if not self._stop.done():
            self._stop.set_result(ending)

    # ------------------------------------------------------------------------------------------ messages

    async def _read(self, incoming: AsyncIterator[Submission]) -> None:
        async for sub in incoming:
            self.submit(sub)

    def submit(self, sub: Submission) -> None:
        """Take one message: it runs in its own task, in its lane's order (a steer at once: it joins a running
        response, it does not wait behind it)."""
        self._encode = sub.encode
        if sub.steer is not None:
            self._spawn(self._steer(sub))
            return
        if sub.append is not None:
            self._spawn(self._append(sub.append, sub))
            return
        if sub.error is not None and not sub.error.in_lane:
            self._spawn(self._send_now(sub.error, sub))
            return
        if self._refuse is not None and sub.error is None:
            sub = Submission(None, sub.encode, self._refuse(), sub.stream_id)
        elif sub.request is not None:
            s, nbytes = self.settings, sub.request.nbytes
            if (
                self._queued >= s.max_queued_per_connection
                or self._queued_bytes + nbytes > s.max_queued_bytes_per_connection
            ):
                sub = Submission(
                    None,
                    sub.encode,
                    QueueFullError(
                        f"This connection already has {self._queued} requests ({self._queued_bytes} bytes) waiting; "
                        "wait for answers before sending more, or open another connection."
                    ),
                    sub.stream_id,
                )
            else:
                self._queued += 1
                self._queued_bytes += nbytes
        self._spawn(self._handle(sub))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        self.idle.clear()
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not self.tasks:
            self.idle.set()

    async def _handle(self, sub: Submission) -> None:
        lane = valid_lane(sub.stream_id)  # an invalid id queues on the default lane; prepare() refuses it
        try:
            lock = self.session.lane(lane, self.settings.max_lanes)
            async with lock:
                if sub.request is None:
                    err = sub.error or _shutting_down()
                    if err.previous_response_id and self.session.cache is not None:  # refused while decoding
                        self.session.cache.evict_on_lane(err.previous_response_id, lane)
                    await self._send_error(err, lane, sub)
                    return
                async with self._slots:
                    parsed, sub.request = sub.request, None  # running now: out of the queue's count
                    self._dequeue(parsed.nbytes)
                    await self._respond(parsed, lane, sub)
        except TurnbenchError as err:  # one named lane too many: it has no queue to wait in
            with contextlib.suppress(ConnectionGone):
                await self._send_error(err, lane, sub)
        except ConnectionGone:
            pass  # the reader sees the close too, and the connection ends
        except Exception:  # a bug (an encoder, this module): it must not take the connection down
            log.exception("connection request task failed")
        finally:
            if sub.request is not None:  # it never ran (refused for its lane, or cancelled while waiting)
                self._dequeue(sub.request.nbytes)

    def _dequeue(self, nbytes: int) -> None:
        self._queued -= 1
        self._queued_bytes -= nbytes

    async def _respond(self, parsed: ParsedRequest | None, lane: str | None, sub: Submission) -> None:
        """Answer ``parsed``, then each successor its steers call for (on the same lane, in order)."""
        while parsed is not None:
            parsed = await self._respond_one(parsed, lane, sub)

    async def _respond_one(self, parsed: ParsedRequest, lane: str | None, sub: Submission) -> ParsedRequest | None:
        lifecycle = parsed.lifecycle = ResponseLifecycle(long=bool(parsed.request.long_response))
        held = self._held_steers.pop(parsed.request.previous_response_id or "", None)
        if held:  # steering input left pending on the parent: prepended, in submission order
            parsed.request.input = [i for _, items in held for i in items] + _as_items(parsed.request.input)

        rid: str | None = None
        last = ""

        async def emit(event: Event) -> None:
            nonlocal rid, last
            if isinstance(event, ResponseCreated):
                rid = event.response.id
                self._active[rid] = (lifecycle, lane)
            last = type(event).__struct_config__.tag or ""  # type: ignore[assignment]
            await self.send(event, sub.encode)

        try:
            await self.service.respond(parsed, self.session, emit, timeout_s=self.settings.request_timeout_s)
        except ConnectionGone:
            raise
        except Exception as exc:  # refused before response.created (or a bug: a server_error, logged)
            err = as_turnbench_error(exc)
            if err is not exc:
                log.error("response.create failed before response.created (%s)", err.error_id, exc_info=exc)
            await self._send_error(err, lane, sub)
            if not err.request_scoped:
                self._end(Ending("error", err))
        finally:
            lifecycle.finish()
            if rid is not None:
                self._active.pop(rid, None)
                self._finished[rid] = None
                while len(self._finished) > FINISHED_KEPT:
                    self._finished.popitem(last=False)
        if rid is None or not lifecycle.steers:
            return None
        return await self._after_steers(parsed, lifecycle, rid, last == "response.completed", lane, sub)

    async def _after_steers(
        self,
        parsed: ParsedRequest,
        lifecycle: ResponseLifecycle,
        rid: str,
        completed: bool,
        lane: str | None,
        sub: Submission,
    ) -> ParsedRequest | None:
        """What becomes of the steers a finished response ``rid`` holds: refused if it neither completed nor
        was cut for them; held (``response.steer.pending``) if it stopped for the client's tool; else the
        successor to run next on ``lane``, continued from it with the steering input."""
        steers, encode = lifecycle.steers, lifecycle.steer_encode or sub.encode
        if not completed and not lifecycle.cut_short:  # failed, or cut by its timeout: nothing to continue
            for steer_id, items in steers:
                ref = SteerRef(id=steer_id, previous_response_id=rid, input=items)
                msg = f"Response '{rid}' did not complete."
                await self._steer_failed(ref, "successor_creation_failed", msg, lane, encode)
            return None
        if lifecycle.calls and not lifecycle.cut_short:  # it stopped for the client's tool: wait for its output
            self._held_steers[rid] = steers
            for steer_id, _ in steers:
                pending = SteerPending(
                    sequence_number=0,
                    steer=SteerRef(id=steer_id, previous_response_id=rid),
                    reason="waiting_for_required_input",
                    required_input=lifecycle.calls,
                    stream_id=lane,
                )
                await self.send(pending, encode)
            return None
        # the successor: the steered response's settings, continued from it with the queued input
        successor = msgspec.structs.replace(
            parsed.request, input=[i for _, items in steers for i in items], previous_response_id=rid, generate=True
        )
        return self.service.parse_obj(msgspec.to_builtins(successor))

    async def _steer(self, sub: Submission) -> None:
        """``response.steer``: queue the input on the running response it names, and answer at once."""
        members = sub.steer or {}
        pid = members.get("previous_response_id")
        target = self._active.get(pid) if isinstance(pid, str) else None
        lane = target[1] if target is not None else None
        ref = SteerRef(previous_response_id=pid if isinstance(pid, str) else "", input=members.get("input"))
        problem = _steer_problem(members)
        try:
            if problem is not None:
                await self._steer_failed(ref, "invalid_input", problem, lane, sub.encode)
            elif target is None:
                if isinstance(pid, str) and pid in self._finished:
                    msg = f"Response '{pid}' has completed and no longer accepts steering input."
                    await self._steer_failed(ref, "response_already_completed", msg, lane, sub.encode)
                else:
                    msg = f"No response '{pid}' is running on this connection."
                    await self._steer_failed(ref, "response_not_found", msg, lane, sub.encode)
            elif target[0].long:
                msg = f"Response '{pid}' is a long response (option A): continue it with response.append."
                await self._steer_failed(ref, "invalid_input", msg, lane, sub.encode)
            elif len(target[0].steers) >= MAX_PENDING_STEERS:
                msg = f"Response '{pid}' already has {MAX_PENDING_STEERS} steering inputs pending."
                await self._steer_failed(ref, "too_many_pending_steers", msg, lane, sub.encode)
            else:
                steer_id = new_id("steer")
                # a message stops at the next token; a function call finishes (then: pending)
                target[0].steer(steer_id, _as_items(members["input"]), sub.encode)
                accepted = SteerAccepted(
                    sequence_number=0, steer=SteerRef(id=steer_id, previous_response_id=str(pid)), stream_id=lane
                )
                await self.send(accepted, sub.encode)
        except ConnectionGone:
            pass

    async def _append(self, append: Append, sub: Submission) -> None:
        """Option A's ``response.append``: hand the input to the paused long response it names and wait until
        that response took it (sampling resumes: nothing to answer) or refused it: then an ``error`` event on
        the response's lane, and the response stays paused for a valid append."""
        rid = append.response_id
        target = self._active.get(rid)
        lane = target[1] if target is not None else None
        err: Exception | None
        if target is None or not target[0].long:
            msg = f"No long response '{rid}' is running on this connection."
            err = NotFoundError(msg, "response_id", code="response_not_found")
        elif not target[0].accepts_append:
            err = InvalidRequestError(
                f"Response '{rid}' is not paused at a tool call: send response.append after its response.done.",
                "response_id",
                code="response_not_paused",
            )
        else:
            err = await target[0].hand(append)
        if err is not None:
            with contextlib.suppress(ConnectionGone):
                await self._send_error(as_turnbench_error(err), lane, sub)

    async def _send_now(self, err: TurnbenchError, sub: Submission) -> None:
        with contextlib.suppress(ConnectionGone):
            await self._send_error(err, None, sub)

    async def _steer_failed(self, ref: SteerRef, code: str, message: str, lane: str | None, encode: Encode) -> None:
        failed = SteerFailed(sequence_number=0, steer=ref, error=SteerError(code=code, message=message), stream_id=lane)
        await self.send(failed, encode)

    async def _send_error(self, err: TurnbenchError, lane: str | None, sub: Submission) -> None:
        await self.send(ws_error_event(err, lane), sub.encode)

    async def send(
        self, event: Event | WsErrorEvent | SteerAccepted | SteerFailed | SteerPending, encode: Encode
    ) -> None:
        """Encode ``event``, queue it for the writer and wait until it is written. Raises
        :class:`ConnectionGone`. Cancelling the wait never cancels the write itself."""
        await self._writer.write(encode(event))

    async def _cancel_tasks(self) -> None:
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


MAX_PENDING_STEERS = 8
"""Steering inputs a response may hold at once (``too_many_pending_steers`` past it)."""
FINISHED_KEPT = 4096
"""Finished response ids a connection remembers, to tell ``response_already_completed`` from ``not_found``."""
_STEER_MEMBERS = frozenset({"type", "previous_response_id", "input"})
_STEER_PARTS = frozenset({"input_text", "input_image", "input_file"})


def _as_items(value: Any) -> list[dict[str, Any]]:
    """A request's or a steer's ``input`` as a list of items (a string is one user message)."""
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    return list(value or [])


def _steer_problem(members: dict[str, Any]) -> str | None:
    """Why a ``response.steer`` event is ``invalid_input`` (None: it is valid), per docs/guides/steering.md."""
    extra = sorted(set(members) - _STEER_MEMBERS)
    if extra:
        return f"response.steer takes only type, previous_response_id and input; got {', '.join(extra)}"
    if not isinstance(members.get("previous_response_id"), str) or not members["previous_response_id"]:
        return "response.steer needs previous_response_id: the id of a response running on this connection"
    value = members.get("input")
    if isinstance(value, str):
        return None if value else "response.steer input must not be empty"
    if not isinstance(value, list) or not value:
        return "response.steer input must be a string or a non-empty array of user messages"
    for k, item in enumerate(value):
        if not isinstance(item, dict) or set(item) - {"type", "role", "content"}:
            return f"input[{k}]: a steering item may hold only type, role and content"
        if item.get("role") != "user" or item.get("type", "message") != "message":
            return f"input[{k}]: steering accepts only messages with the user role"
        content = item.get("content")
        parts_ok = isinstance(content, list) and all(
            isinstance(p, dict) and p.get("type") in _STEER_PARTS for p in content
        )
        if not (isinstance(content, str) or parts_ok):
            return f"input[{k}].content must be a string or input_text, input_image and input_file parts"
    return None


class _Writer:
    """The one task that writes to the peer. Request tasks queue their messages and wait for them to be
    written, so a request cancelled while it waits (its timeout, the connection ending) never cancels a write
    halfway: grpc.aio's call does not survive that, and the messages of a lane stay in order either way.

    ``direct``: the send survives a cancel (see :class:`Connection`), so a request task calls it itself: no
    hand-off to the writer task and back, two event-loop passes per message (on the WebSocket server at one
    event per token, the hand-off was ~10 µs of the ~65 µs of server CPU per token). A lane's messages stay
    in order: its task waits for each send before making the next message."""

    def __init__(self, send: Send, *, direct: bool = False) -> None:
        self._send = send
        self._direct = direct
        self._queue: deque[tuple[bytes, asyncio.Future[None]]] = deque()
        self._ready = asyncio.Event()
        self._gone: ConnectionGone | None = None
        self._task = None if direct else asyncio.create_task(self._run(), name="turnbench-connection-writer")

    async def write(self, data: bytes) -> None:
        if self._gone is not None:
            raise ConnectionGone(str(self._gone))
        if self._direct:
            try:
                await self._send(data)
            except ConnectionGone as exc:
                self._gone = exc
                raise
            except Exception as exc:  # the library's own kind of "closed"
                self._gone = ConnectionGone(repr(exc))
                raise self._gone from exc
            return
        done = asyncio.get_running_loop().create_future()
        self._queue.append((data, done))
        self._ready.set()
        await done

    async def _run(self) -> None:
        while True:
            await self._ready.wait()
            self._ready.clear()
            while self._queue:
                data, done = self._queue.popleft()
                try:
                    await self._send(data)
                except Exception as exc:  # ConnectionGone, or the library's own kind of "closed"
                    self._gone = exc if isinstance(exc, ConnectionGone) else ConnectionGone(repr(exc))
                    self._fail(done)
                    while self._queue:
                        self._fail(self._queue.popleft()[1])
                    return
                if not done.done():
                    done.set_result(None)

    def _fail(self, done: asyncio.Future[None]) -> None:
        if not done.done():
            done.set_exception(ConnectionGone(str(self._gone)))

    def close(self) -> None:
        """Stop writing; whatever is still queued is lost (the connection is over)."""
        if self._task is not None:
            self._task.cancel()
        self._gone = self._gone or ConnectionGone("connection closed")
        while self._queue:
            self._fail(self._queue.popleft()[1])


class ConnectionSet:
    """The open connections of one server, so that stopping it drains them all."""

    def __init__(self) -> None:
        self._open: set[Connection] = set()
        self.closing = False  # set by drain(): a connection opened after it is drained at once

    def __len__(self) -> int:
        return len(self._open)

    def __iter__(self) -> Iterator[Connection]:
        return iter(list(self._open))

    async def serve(self, conn: Connection, incoming: AsyncIterator[Submission], *, half_close: bool = False) -> Ending:
        """:meth:`Connection.serve`, with ``conn`` counted as open meanwhile."""
        self._open.add(conn)
        if self.closing:
            _background(conn.drain())
        try:
            return await conn.serve(incoming, half_close=half_close)
        finally:
            self._open.discard(conn)

    async def drain(self) -> None:
        """Drain every open connection at once (each gets ``grace_s``); later ones are drained as they open."""
        self.closing = True
        await asyncio.gather(*(conn.drain() for conn in self))


# ---------------------------------------------------------------------------------------------- helpers


_BACKGROUND: set[asyncio.Task[None]] = set()


def _background(coro: Coroutine[Any, Any, None]) -> None:
    """Run ``coro`` in a task that is kept referenced until it is done."""
    task = asyncio.create_task(coro)
    _BACKGROUND.add(task)
    task.add_done_callback(_BACKGROUND.discard)


def _shutting_down() -> TurnbenchError:
    return ServiceUnavailableError("The server is shutting down; open a new connection.")


async def _first(*futures: asyncio.Future[Any], timeout_s: float | None = None) -> None:
    """Wait until one of ``futures`` is done (or ``timeout_s`` passed)."""
    await asyncio.wait(futures, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _log_failure(task: asyncio.Task[None]) -> None:
    """The reader ended by an exception (an adapter's decoder bug): the peer is treated as gone."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("connection reader failed", exc_info=exc)


@contextlib.asynccontextmanager
async def _task(coro: Awaitable[object]) -> AsyncIterator[asyncio.Future[object]]:
    """A task to wait on beside others, cancelled on the way out."""
    task = asyncio.ensure_future(coro)
    try:
        yield task
    finally:
        task.cancel()
