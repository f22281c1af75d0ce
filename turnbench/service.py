"""``ResponsesService``: one ``response.create`` through the pipeline, as a stream of Responses events.

Every transport calls the same two methods::

    parsed = service.parse(payload_bytes)             # parse stage (adapters with another codec: parse_obj)
    async for event in service.create(parsed, session):  # validate … decode, then post
        send(encode(event))

A :class:`Session` is one connection (WebSocket, gRPC ``Connect``) with its :class:`StateCache`, or one
stateless request (HTTPS, gRPC ``Create``) with none. Errors found before ``response.created`` are raised
(as :class:`TurnbenchError`) from the first iteration, so an adapter can answer with a status code; errors
after it end the stream with ``response.failed``. A failed continuation evicts its parent on its lane.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any

import msgspec

from turnbench import pipeline
from turnbench.engine import make_engine
from turnbench.engine.base import KVHandle, ModelEngine
from turnbench.engine.policy import plan_output
from turnbench.errors import (
    NotFoundError,
    PreviousResponseNotFoundError,
    TurnbenchError,
    as_turnbench_error,
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


@dataclass(slots=True)
class ParsedRequest:
    request: ResponseCreate
    timer: StageTimer
    nbytes: int = 0


@dataclass(slots=True)
class ResponseRecord:
    """Server-side record of one response, kept in ``ResponsesService.recent`` (tests, /stats)."""

    response_id: str
    transport: str
    state: str
    status: str
    stages: dict[str, Any]
    prefill_tokens: int
    cached_tokens: int


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
        self.recent: deque[ResponseRecord] = deque(maxlen=10_000)
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

    def parse_obj(self, obj: dict[str, Any], *, nbytes: int = 0, decode_ns: int = 0) -> ParsedRequest:
        """``parse`` for codecs that decoded already (gRPC): ``decode_ns`` is their decode time."""
        timer = self._timer()
        with timer.stage("parse") as st:
            req = request_from_builtins(obj)
            st.chars += nbytes
        timer.add("parse", wall_ns=decode_ns, cpu_ns=decode_ns)
        return ParsedRequest(req, timer, nbytes)

    # ------------------------------------------------------------------------------------------ create

    async def create(self, parsed: ParsedRequest, session: Session) -> AsyncGenerator[Event, None]:
        """Run the pipeline; yield events in spec order. Raises before ``response.created`` on bad input.

        An adapter whose peer went away must ``aclose()`` the generator: that stops the engine and evicts
        nothing but the failed request's parent (same lane).
        """
        req, timer = parsed.request, parsed.timer
        check_stream_id(req.stream_id)
        try:
            prep = await self._prepare(req, timer, session)
        except TurnbenchError:
            self._evict_parent(req, session)
            raise
        async for ev in self._generate(req, timer, session, prep):
            yield ev

    def _evict_parent(self, req: ResponseCreate, session: Session) -> None:
        """A same-lane continuation that failed evicts its parent; a cross-lane fork keeps it (spec a.5)."""
        if req.previous_response_id and session.cache is not None:
            rec = session.cache._records.get(req.previous_response_id)
            if rec is not None and rec.lane == req.stream_id:
                session.cache.evict(req.previous_response_id)

    async def _prepare(self, req: ResponseCreate, timer: StageTimer, session: Session) -> _Prepared:
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
            if state == "connection" and parent is not None and parent.route is not None \
                    and parent.tools_key == key:
                route = parent.route
            else:
                route = pipeline.route(req.model, self.engine.name, tools, st)
        return _Prepared(parent, state, new_items, items, tools, metadata, tokens, key, route, new_bytes)

    async def _hydrate(self, response_id: str, timer: StageTimer) -> ConversationRecord | None:
        await self.post.wait_for(response_id)  # its post may still be writing it: wait, never miss
        await timer.inject("resolve")
        with timer.stage("resolve") as st:
            stored = self.store.get(response_id)
            if stored is None:
                return None
            st.items += len(stored.items)
        return ConversationRecord(
            response=stored.response, items=list(stored.items), tools=stored.tools,
            instructions=stored.instructions,
        )

    async def _generate(
        self, req: ResponseCreate, timer: StageTimer, session: Session, p: _Prepared
    ) -> AsyncIterator[Event]:
        s = self.settings
        seq = 0
        resp = Response(
            id=new_id("resp"), created_at=int(time.time()), status="in_progress", model=req.model,
            tools=p.tools, tool_choice=req.tool_choice, previous_response_id=req.previous_response_id,
            store=req.store, instructions=req.instructions, metadata=p.metadata,
            max_output_tokens=req.max_output_tokens, parallel_tool_calls=req.parallel_tool_calls,
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
                plan = plan_output(p.items, p.tools, p.metadata, seed=s.seed,
                                   default_tool_calls=self._profile_int("tool_calls", 20),
                                   default_answer_tokens=self._profile_int("answer_tokens", 64))
                pieces = split_pieces(self.tokenizer, plan.content)
                limit = min(req.max_output_tokens or s.max_output_tokens, s.max_output_tokens)
                if len(pieces) > limit:
                    pieces, status = pieces[:limit], "incomplete"
                timer.add("decode", cpu_ns=time.thread_time_ns() - c0)
                w0 = time.perf_counter_ns()
                async for ev in stream_item(self.engine, plan, pieces, pre.kv, seq=seq, stream_id=sid,
                                            outputs=outputs, tokens_per_chunk=s.tokens_per_chunk):
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
            yield ResponseFailed(sequence_number=seq, stream_id=sid, response=snap(
                status="failed", output=outputs,
                error={"code": err.code, "message": err.message}))
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
        stored = StoredResponse(response=record.response, items=record.items, tools=p.tools,
                                instructions=req.instructions) if req.store else None
        row = UsageRow(resp.id, req.model, session.transport, p.state, len(p.tokens), pre.cached_tokens,
                       output_tokens, status)
        # post overlaps the next request only where connection state lets the next request start without
        # it (WebSocket, gRPC Connect); a stateless request (HTTPS, gRPC Create) finishes every stage before
        # its response ends, as the seed article describes. A store=true chain still waits for the write.
        if s.overlap_post and session.cache is not None:
            self.post.spawn(stored, row, timer)
        else:
            await self.post.run(stored, row, timer)
        final = snap(status=status, output=outputs, usage=usage, turnbench=TurnbenchExt(
            stages=timer.snapshot(), state=p.state, engine=self.engine.name,
            prefill_tokens=pre.computed_tokens))
        # recorded before the terminal event: an adapter may stop iterating right after it
        self.recent.append(ResponseRecord(resp.id, session.transport, p.state, status,
                                          msgspec.to_builtins(timer.stats), pre.computed_tokens,
                                          pre.cached_tokens))
        if status == "incomplete":
            final.incomplete_details = {"reason": "max_output_tokens"}
            yield ResponseIncomplete(sequence_number=seq, stream_id=sid, response=final)
        else:
            yield ResponseCompleted(sequence_number=seq, stream_id=sid, response=final)

    def _profile_int(self, name: str, default: int) -> int:
        prof = getattr(self.engine, "profile", None)
        return int(getattr(prof, name, default))

    def _record(self, req: ResponseCreate, p: _Prepared, response: Response, kv: KVHandle) -> ConversationRecord:
        out_items: list[InputItem] = [output_as_input(o) for o in response.output]
        items = [*p.items, *out_items]
        base = p.parent.nbytes if (p.state == "connection" and p.parent is not None) else \
            sum(len(msgspec.json.encode(i)) for i in p.items[: len(p.items) - len(p.new_items)])
        nbytes = base + p.new_bytes + sum(len(msgspec.json.encode(i)) for i in out_items)
        tokens: list[int] | None = None
        if self.settings.token_cache:
            tokens = [*p.tokens, *pipeline.render_items(self.tokenizer, out_items, StageStat())]
            nbytes += 8 * len(tokens)
        return ConversationRecord(
            response=response, items=items, tools=p.tools, instructions=req.instructions, tokens=tokens,
            tools_key=p.tools_key, route=p.route, kv=kv, lane=req.stream_id, nbytes=nbytes,
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
class _Prepared:
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
