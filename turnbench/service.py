"""``ResponsesService``: one ``response.create`` through the pipeline, as a stream of Responses events.

Every transport calls the same methods::

    parsed = service.parse(payload_bytes)               # parse stage (parse_event: a connection's frame;
                                                        #   parse_obj: codecs that decoded already)
    prepared = await service.prepare(parsed, session)   # validate … route; raises TurnbenchError
    async for event in service.generate(prepared):      # response.created … prefill, decode … terminal, post
        send(encode(event))

or, with the request timeout and the ``aclose`` on a peer that went away handled once, for every adapter::

    await service.respond(parsed, session, emit, timeout_s=settings.request_timeout_s)

A :class:`Session` is one connection (WebSocket, gRPC ``Connect``) with its :class:`StateCache`, or one
stateless request (HTTPS, gRPC ``Create``) with none. ``prepare`` raises every error a request can earn
before ``response.created`` (an adapter answers with a status code or an error event); after it, the stream
ends with ``response.failed`` (engine failure, or the request timeout). A failed continuation evicts its
parent on its lane.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from turnbench import pipeline
from turnbench.engine import make_engine
from turnbench.engine.base import KVHandle, ModelEngine
from turnbench.engine.policy import plan_output
from turnbench.errors import (
    InvalidRequestError,
    NotFoundError,
    PreviousResponseNotFoundError,
    RequestTimeoutError,
    TurnbenchError,
    as_turnbench_error,
    unknown_event_type,
)
from turnbench.pipeline import StageTimer
from turnbench.post import PostWriter
from turnbench.safety import SafetyClassifier, default_classifier
from turnbench.schema import (
    Event,
    InputItem,
    InputTokensDetails,
    OutputItem,
    OutputTokensDetails,
    Response,
    ResponseCompleted,
    ResponseCreate,
    ResponseCreated,
    ResponseFailed,
    ResponseIncomplete,
    ResponseInProgress,
    StageStat,
    TurnbenchExt,
    Usage,
    decode_request,
    item_text,
    output_as_input,
    peek_envelope,
    request_from_builtins,
)
from turnbench.settings import Settings
from turnbench.state import (
    ConversationRecord,
    ResponseStore,
    Session,
    StateCache,
    StoredResponse,
    UsageLog,
    UsageRow,
    check_stream_id,
    open_store,
)
from turnbench.stream import new_id, split_pieces, stream_item
from turnbench.tokenizer import Tokenizer, load_tokenizer

log = logging.getLogger("turnbench.service")
Emit = Callable[[Event], Awaitable[None]]


@dataclass(slots=True)
class ParsedRequest:
    request: ResponseCreate
    timer: StageTimer
    nbytes: int = 0


class ResponsesService:
    def __init__(
        self,
        settings: Settings | None = None,
        *,
        engine: ModelEngine | None = None,
        store: ResponseStore | None = None,
        usage: UsageLog | None = None,
        tokenizer: Tokenizer | None = None,
        safety: SafetyClassifier | None = None,
    ) -> None:
        self.settings = s = settings or Settings()
        self.engine = engine if engine is not None else make_engine(s)
        self.store = store if store is not None else open_store(s.store)
        if usage is None:
            path = s.usage_db
            if path == "auto":
                path = os.path.join(tempfile.gettempdir(), f"turnbench-usage-{os.getpid()}-{id(self)}.db")
            usage = UsageLog(path)
        self.usage = usage
        self.tokenizer = tokenizer or load_tokenizer()
        self.safety = safety or default_classifier()
        self.post = PostWriter(self.store, self.usage, s.burn_us)
        self._closed = False

    # ------------------------------------------------------------------------------------------ sessions

    def new_session(self, transport: str, *, connection: bool) -> Session:
        s = self.settings
        cache = StateCache(s.cache_entries, s.cache_bytes) if connection and s.connection_cache else None
        return Session(transport=transport, cache=cache)

    # ------------------------------------------------------------------------------------------ parse

    def _timer(self) -> StageTimer:
        return StageTimer(self.settings.inject_ms, self.settings.burn_us)

    def parse(self, payload: bytes | str) -> ParsedRequest:
        """``parse`` stage: JSON bytes → :class:`ResponseCreate` (raises ``InvalidRequestError``)."""
        timer = self._timer()
        with timer.stage("parse") as st:
            req = decode_request(payload)
            st.chars += len(payload)
        return ParsedRequest(req, timer, len(payload))

    def parse_event(self, payload: bytes | str) -> ParsedRequest:
        """``parse`` for a connection's client event (a WebSocket frame, gRPC ``Connect``'s json codec): the
        ``response.create`` body flat beside ``"type": "response.create"``.

        Raises: :class:`InvalidRequestError` with ``stream_id`` set to the lane the event named (if it could be
        read), so the error is answered in that lane's order; ``unknown_event_type`` for another ``type``.
        """
        try:
            parsed = self.parse(payload)
        except InvalidRequestError as exc:
            kind, stream_id = peek_envelope(payload)  # error path only: a skip-scan of two members
            err = unknown_event_type(kind) if kind != "response.create" and isinstance(kind, str) else exc
            err.stream_id = stream_id if isinstance(stream_id, str) else None
            if err is exc:
                raise
            raise err from exc
        kind = parsed.request.type
        if kind != "response.create":
            err = unknown_event_type(kind)
            err.stream_id = parsed.request.stream_id
            raise err
        return parsed

    def parse_obj(self, obj: dict[str, Any], *, nbytes: int = 0, decode_ns: int = 0) -> ParsedRequest:
        """``parse`` for codecs that decoded already (gRPC): ``decode_ns`` is their decode time."""
        timer = self._timer()
        with timer.stage("parse") as st:
            req = request_from_builtins(obj)
            st.chars += nbytes
        timer.add("parse", wall_ns=decode_ns, cpu_ns=decode_ns)
        return ParsedRequest(req, timer, nbytes)

    # ------------------------------------------------------------------------------------------ create

    async def prepare(self, parsed: ParsedRequest, session: Session) -> Prepared:
        """``validate`` … ``route``: everything that may refuse the request, before ``response.created``.

        Raises: a :class:`TurnbenchError` (bad input, unknown parent, flagged content, state limit …); a
        failed continuation evicts its parent on the same lane (a cross-lane fork keeps it, spec a.5).
        """
        req = parsed.request
        check_stream_id(req.stream_id)
        try:
            return await self._prepare(req, parsed.timer, session)
        except TurnbenchError:
            self._evict_parent(req, session)
            raise

    def _evict_parent(self, req: ResponseCreate, session: Session) -> None:
        if req.previous_response_id and session.cache is not None:
            session.cache.evict_on_lane(req.previous_response_id, req.stream_id)

    async def respond(
        self, parsed: ParsedRequest, session: Session, emit: Emit, *, timeout_s: float | None = None
    ) -> None:
        """Prepare, then stream every event through ``emit``, under ``timeout_s`` (None: no limit).

        Raises: the :class:`TurnbenchError` of a request refused before ``response.created``, including
        :class:`RequestTimeoutError` when the time ran out there. Once ``response.created`` is out, a timeout
        ends the stream with ``response.failed`` (code ``request_timeout``) instead. A cancelled caller (a
        peer gone) closes the event generator: the engine stops and the parent is evicted.
        """
        created: Response | None = None
        last: Event | None = None
        try:
            async with asyncio.timeout(timeout_s) as scope:
                prepared = await self.prepare(parsed, session)
                async with contextlib.aclosing(self.generate(prepared)) as events:
                    async for event in events:
                        if created is None and isinstance(event, ResponseCreated):
                            created = event.response
                        last = event
                        await emit(event)
        except TimeoutError as exc:
            if not scope.expired():
                raise
            err = RequestTimeoutError(
                f"The request did not finish within its time limit (request_timeout_s = "
                f"{self.settings.request_timeout_s:g} s)."
            )
            if created is None or last is None:
                raise err from exc
            await emit(
                ResponseFailed(
                    sequence_number=last.sequence_number + 1,
                    stream_id=parsed.request.stream_id,
                    response=msgspec.structs.replace(
                        created, status="failed", error={"code": err.code, "message": err.message}
                    ),
                )
            )

    async def _prepare(self, req: ResponseCreate, timer: StageTimer, session: Session) -> Prepared:
        s = self.settings
        await timer.inject("validate")
        with timer.stage("validate") as st:
            new_items = pipeline.validate_items(req.input, st)
        await timer.inject("resolve")
        parent, state = None, "full"
        with timer.stage("resolve") as st:
            if req.previous_response_id:
                if session.cache is not None:
                    parent = session.cache.get(req.previous_response_id)
                    state = "connection" if parent is not None else state
        if req.previous_response_id and parent is None:
            w0 = time.perf_counter_ns()
            parent = await self._hydrate(req.previous_response_id, timer)
            timer.add("resolve", wall_ns=time.perf_counter_ns() - w0)
            if parent is None:
                raise PreviousResponseNotFoundError(req.previous_response_id)
            state = "store"
        history = parent.items if parent is not None else []
        items = [*history, *new_items]
        tools = req.tools or (parent.tools if parent is not None else [])
        metadata = req.metadata or (parent.response.metadata if parent is not None else {})
        incremental = parent is not None and s.incremental_checks
        if parent is not None and not s.incremental_checks:
            with timer.stage("validate") as st:
                pipeline.revalidate(history, st)
        new_bytes = sum(len(msgspec.json.encode(i)) for i in new_items)
        if session.cache is not None:
            session.cache.check_fits((parent.nbytes if state == "connection" and parent else 0) + new_bytes)

        await timer.inject("safety")
        with timer.stage("safety") as st:
            checked = new_items if incremental else items
            texts = [item_text(i) for i in checked]
            if not incremental and req.instructions:
                texts.append(req.instructions)
            pipeline.safety_check(self.safety, texts, st)

        await timer.inject("render")
        with timer.stage("render") as st:
            key, blob = pipeline.tools_key(tools, req.instructions)
            cached_tokens = parent.tokens if (state == "connection" and s.token_cache and parent) else None
            if cached_tokens is not None and parent is not None and parent.tools_key == key:
                tokens = [*cached_tokens, *pipeline.render_items(self.tokenizer, new_items, st)]
            else:
                tokens = pipeline.render_header(self.tokenizer, blob, st)
                tokens += pipeline.render_items(self.tokenizer, items, st)

        await timer.inject("route")
        with timer.stage("route") as st:
            if state == "connection" and parent is not None and parent.route is not None and parent.tools_key == key:
                route = parent.route
            else:
                route = pipeline.route(req.model, self.engine.name, tools, st)
        return Prepared(
            req, timer, session, parent, state, new_items, items, tools, metadata, tokens, key, route, new_bytes
        )

    async def _hydrate(self, response_id: str, timer: StageTimer) -> ConversationRecord | None:
        await self.post.wait_for(response_id)  # its post may still be writing it: wait, never miss
        await timer.inject("resolve")
        with timer.stage("resolve") as st:
            stored = self.store.get(response_id)
            if stored is None:
                return None
            st.items += len(stored.items)
        return ConversationRecord(
            response=stored.response,
            items=list(stored.items),
            tools=stored.tools,
            instructions=stored.instructions,
        )

    async def generate(self, p: Prepared) -> AsyncGenerator[Event, None]:
        """``response.created`` … ``prefill``, ``decode`` … the terminal event, then ``post``.

        Never raises for the request's own sake: an engine failure ends the stream with ``response.failed``.
        A consumer that stops early must ``aclose()`` it (:meth:`respond` does): the engine stops and the
        parent is evicted.
        """
        s = self.settings
        req, timer, session = p.request, p.timer, p.session
        seq = 0
        resp = Response(
            id=new_id("resp"),
            created_at=int(time.time()),
            status="in_progress",
            model=req.model,
            tools=p.tools,
            tool_choice=req.tool_choice,
            previous_response_id=req.previous_response_id,
            store=req.store,
            instructions=req.instructions,
            metadata=p.metadata,
            max_output_tokens=req.max_output_tokens,
            parallel_tool_calls=req.parallel_tool_calls,
        )
        sid = req.stream_id

        def snap(**kw: Any) -> Response:
            return msgspec.structs.replace(resp, **kw)

        yield ResponseCreated(sequence_number=seq, stream_id=sid, response=snap())
        seq += 1
        yield ResponseInProgress(sequence_number=seq, stream_id=sid, response=snap())
        seq += 1
        outputs: list[OutputItem] = []
        status = "completed"
        output_tokens = 0
        try:
            await timer.inject("prefill")
            w0 = time.perf_counter_ns()
            kv_in = p.parent.kv if (p.state == "connection" and p.parent is not None) else None
            pre = await self.engine.prefill(p.tokens, kv_in, use_cache=s.prefix_cache)
            timer.add("prefill", wall_ns=time.perf_counter_ns() - w0, tokens=pre.computed_tokens)
            if req.generate:
                await timer.inject("decode")
                c0 = time.thread_time_ns()
                plan = plan_output(
                    p.items,
                    p.tools,
                    p.metadata,
                    seed=s.seed,
                    default_tool_calls=self._profile_int("tool_calls", 20),
                    default_answer_tokens=self._profile_int("answer_tokens", 64),
                )
                pieces = split_pieces(self.tokenizer, plan.content)
                limit = min(req.max_output_tokens or s.max_output_tokens, s.max_output_tokens)
                if len(pieces) > limit:
                    pieces, status = pieces[:limit], "incomplete"
                timer.add("decode", cpu_ns=time.thread_time_ns() - c0)
                w0 = time.perf_counter_ns()
                async for ev in stream_item(
                    self.engine,
                    plan,
                    pieces,
                    pre.kv,
                    seq=seq,
                    stream_id=sid,
                    outputs=outputs,
                    tokens_per_chunk=s.tokens_per_chunk,
                ):
                    seq = ev.sequence_number + 1
                    yield ev
                output_tokens = len(pieces)
                timer.add("decode", wall_ns=time.perf_counter_ns() - w0, tokens=output_tokens)
        except (asyncio.CancelledError, GeneratorExit):
            self._evict_parent(req, session)
            raise
        except Exception as exc:  # engine failure after response.created: the stream ends with failed
            err = as_turnbench_error(exc)
            log.exception("response %s failed", resp.id)
            self._evict_parent(req, session)
            yield ResponseFailed(
                sequence_number=seq,
                stream_id=sid,
                response=snap(status="failed", output=outputs, error={"code": err.code, "message": err.message}),
            )
            return

        usage = Usage(
            input_tokens=len(p.tokens),
            input_tokens_details=InputTokensDetails(cached_tokens=pre.cached_tokens),
            output_tokens=output_tokens,
            output_tokens_details=OutputTokensDetails(),
            total_tokens=len(p.tokens) + output_tokens,
        )
        with timer.stage("post") as st:  # the in-memory part of post: caching is on the critical path
            record = self._record(req, p, snap(status=status, output=outputs, usage=usage), pre.kv)
            if session.cache is not None:
                session.cache.put(record)
            st.items += 1
        session.responses += 1
        stored = (
            StoredResponse(response=record.response, items=record.items, tools=p.tools, instructions=req.instructions)
            if req.store
            else None
        )
        row = UsageRow(
            resp.id, req.model, session.transport, p.state, len(p.tokens), pre.cached_tokens, output_tokens, status
        )
        # post overlaps the next request only where connection state lets the next request start without
        # it (WebSocket, gRPC Connect); a stateless request (HTTPS, gRPC Create) finishes every stage before
        # its response ends, as the seed article describes. A store=true chain still waits for the write.
        if s.overlap_post and session.cache is not None:
            self.post.spawn(stored, row, timer)
        else:
            await self.post.run(stored, row, timer)
        final = snap(
            status=status,
            output=outputs,
            usage=usage,
            turnbench=TurnbenchExt(
                stages=timer.snapshot(), state=p.state, engine=self.engine.name, prefill_tokens=pre.computed_tokens
            ),
        )
        if status == "incomplete":
            final.incomplete_details = {"reason": "max_output_tokens"}
            yield ResponseIncomplete(sequence_number=seq, stream_id=sid, response=final)
        else:
            yield ResponseCompleted(sequence_number=seq, stream_id=sid, response=final)

    def _profile_int(self, name: str, default: int) -> int:
        prof = getattr(self.engine, "profile", None)
        return int(getattr(prof, name, default))

    def _record(self, req: ResponseCreate, p: Prepared, response: Response, kv: KVHandle) -> ConversationRecord:
        out_items: list[InputItem] = [output_as_input(o) for o in response.output]
        items = [*p.items, *out_items]
        base = (
            p.parent.nbytes
            if (p.state == "connection" and p.parent is not None)
            else sum(len(msgspec.json.encode(i)) for i in p.items[: len(p.items) - len(p.new_items)])
        )
        nbytes = base + p.new_bytes + sum(len(msgspec.json.encode(i)) for i in out_items)
        tokens: list[int] | None = None
        if self.settings.token_cache:
            tokens = [*p.tokens, *pipeline.render_items(self.tokenizer, out_items, StageStat())]
            nbytes += 8 * len(tokens)
        return ConversationRecord(
            response=response,
            items=items,
            tools=p.tools,
            instructions=req.instructions,
            tokens=tokens,
            tools_key=p.tools_key,
            route=p.route,
            kv=kv,
            lane=req.stream_id,
            nbytes=nbytes,
        )

    # ------------------------------------------------------------------------------------------ misc

    async def retrieve(self, response_id: str) -> Response:
        """A stored response (``GET /v1/responses/{id}``); waits for its ``post`` if still writing it."""
        await self.post.wait_for(response_id)
        return self.get_stored(response_id)

    def get_stored(self, response_id: str) -> Response:
        """A stored response, as the store has it now (see :meth:`retrieve` to wait for a pending write)."""
        stored = self.store.get(response_id)
        if stored is None:
            raise NotFoundError(f"No response found with id '{response_id}'.", "response_id")
        return stored.response

    async def drain(self) -> None:
        """Wait until every overlapped ``post`` has finished (graceful shutdown loses no usage record)."""
        await self.post.drain()

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Release the engine, the store and the usage log; idempotent."""
        if self._closed:
            return
        self._closed = True
        self.post.close()
        self.engine.close()
        self.store.close()
        self.usage.close()


@dataclass(slots=True)
class Prepared:
    """A request that passed every check: what ``generate`` needs to answer it."""

    request: ResponseCreate
    timer: StageTimer
    session: Session
    parent: ConversationRecord | None
    state: str
    new_items: list[InputItem]
    items: list[InputItem]
    tools: list[Any]
    metadata: dict[str, str]
    tokens: list[int]
    tools_key: int
    route: Any
    new_bytes: int
