"""``ResponsesService``: one ``response.create`` through the pipeline, as a stream of Responses events.

Every transport calls the same methods::

    parsed = service.parse(payload_bytes)               # parse stage (parse_client_event: a connection's frame;
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
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import msgspec

from turnbench import pipeline
from turnbench.background import BackgroundJob, BackgroundJobs
from turnbench.engine import make_engine
from turnbench.engine.base import KVHandle, ModelEngine
from turnbench.engine.policy import Knobs, TextFormat, ToolChoice, plan_output
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
from turnbench.prepared import Append, Options, ParsedRequest, Prepared, SteerControl
from turnbench.safety import SafetyClassifier, default_classifier
from turnbench.schema import (
    Event,
    FunctionCallItem,
    FunctionTool,
    InputItem,
    InputTokensDetails,
    OutputItem,
    OutputTokensDetails,
    Response,
    ResponseCompleted,
    ResponseCreate,
    ResponseCreated,
    ResponseDone,
    ResponseFailed,
    ResponseIncomplete,
    ResponseInProgress,
    StageStat,
    TurnbenchExt,
    Usage,
    decode_append,
    decode_request,
    input_item_view,
    item_text,
    output_as_input,
    peek_envelope,
    request_from_builtins,
)
from turnbench.settings import Settings, StateStrategy
from turnbench.state import (
    ConversationRecord,
    ResponseStore,
    Session,
    StateCache,
    StoredResponse,
    StoreLimits,
    UsageLog,
    UsageRow,
    check_stream_id,
    open_store,
    tenant_of,
)
from turnbench.stream import new_id, split_pieces, stream_item
from turnbench.tokenizer import Tokenizer, load_tokenizer

log = logging.getLogger("turnbench.service")
T = TypeVar("T")
OFFLOAD_ITEMS = 1000  # a history this long is revalidated on a worker thread
ITEM_WEIGHT_BYTES = 1024  # an item costs the check and the render about as much as 1 KB of text, whatever its length
MIN_OUTPUT_TOKENS = 16  # the Responses API's minimum for max_output_tokens
MAX_OUTPUT_TOKENS = 1 << 20  # no model here has more; a larger value (400 digits) would not survive a JSON client
Emit = Callable[[Event], Awaitable[None]]


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
        limits = StoreLimits(max_entries=s.store_max_entries, max_bytes=s.store_max_bytes, ttl_s=s.store_ttl_s)
        self.store = store if store is not None else open_store(s.store, limits=limits, tenant=tenant_of(s.api_key))
        if usage is None:
            path = s.usage_db
            if path == "auto":
                path = os.path.join(tempfile.gettempdir(), f"turnbench-usage-{os.getpid()}-{id(self)}.db")
            usage = UsageLog(path)
        self.usage = usage
        self.tokenizer = tokenizer or load_tokenizer()
        self.safety = safety or default_classifier()
        self.post = PostWriter(self.store, self.usage, s.burn_us)
        self._workers = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="turnbench-cpu")
        self.background = BackgroundJobs(self)
        self.knob_defaults = Knobs(
            tool_calls=s.tool_calls, answer_tokens=s.answer_tokens, arg_words=s.arg_words, seed=s.seed
        )
        self._closed = False

    # ------------------------------------------------------------------------------------------ sessions

    def new_session(self, transport: str, *, connection: bool) -> Session:
        s = self.settings
        cache = StateCache(s.cache_entries, s.cache_bytes) if connection and s.connection_cache else None
        return Session(transport=transport, cache=cache, connection=connection)

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

    def parse_client_event(self, payload: bytes | str) -> ParsedRequest | Append | dict[str, Any]:
        """``parse`` for a connection's client event (a WebSocket frame, gRPC ``Connect``'s json codec):
        ``response.create`` (its body flat beside ``"type": "response.create"``) as a :class:`ParsedRequest`;
        option A's ``response.append`` as an :class:`Append` (its parse stage timed from the first attempt on);
        a ``response.steer`` event as its members, as sent (the connection that holds the response it names
        checks them and answers with ``response.steer.accepted|failed``).

        Raises: :class:`InvalidRequestError` with ``stream_id`` set to the lane the event named (if it could be
        read), so the error is answered in that lane's order, and ``previous_response_id`` to the parent it
        named (a refused same-lane continuation evicts it, spec a.5); ``unknown_event_type`` for another
        ``type``; for a malformed append, the member it names (answered at once: ``in_lane`` False).
        """
        t0, c0 = time.perf_counter_ns(), time.thread_time_ns()
        try:
            parsed = self.parse(payload)
        except InvalidRequestError as exc:
            kind, stream_id, parent = peek_envelope(payload)  # error path only: a skip-scan of three members
            if kind == "response.append":
                try:
                    append = decode_append(payload)
                except InvalidRequestError as bad:
                    bad.in_lane = False  # an append joins a paused response: it waits behind no lane
                    raise
                wall, cpu = time.perf_counter_ns() - t0, time.thread_time_ns() - c0
                return self.append_from(append.response_id, append.input, nbytes=len(payload), parse_ns=(wall, cpu))
            if kind == "response.steer":
                members: dict[str, Any] = msgspec.json.decode(payload)  # valid JSON: the envelope was read
                return members
            lane = stream_id if isinstance(stream_id, str) else None
            if kind != "response.create" and isinstance(kind, str):
                err = unknown_event_type(kind)
                err.stream_id = lane
                raise err from exc
            exc.stream_id = lane
            if isinstance(parent, str):
                exc.previous_response_id = parent
            raise
        kind = parsed.request.type
        if kind != "response.create":
            err = unknown_event_type(kind)
            err.stream_id = parsed.request.stream_id
            raise err
        return parsed

    def append_from(
        self, response_id: str, value: str | list[dict[str, Any]], *, nbytes: int, parse_ns: tuple[int, int]
    ) -> Append:
        """Option A's ``response.append``, decoded (``parse_ns``: the decode's wall and CPU time, the next
        segment's ``parse`` stage)."""
        timer = self._timer()
        timer.add("parse", wall_ns=parse_ns[0], cpu_ns=parse_ns[1], items=1)
        return Append(response_id, value, timer, nbytes)

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
            return await self._prepare(req, parsed, session)
        except TurnbenchError:
            self._evict_parent(req, session)
            raise

    def _evict_parent(self, req: ResponseCreate, session: Session) -> None:
        if req.previous_response_id and session.cache is not None:
            session.cache.evict_on_lane(req.previous_response_id, req.stream_id)

    async def respond(
        self, parsed: ParsedRequest, session: Session, emit: Emit, *, timeout_s: float | None = None
    ) -> None:
        """Prepare, then :meth:`stream` every event through ``emit``, all under ``timeout_s`` (None: no limit).

        Raises: the :class:`TurnbenchError` of a request refused before ``response.created``, including
        :class:`RequestTimeoutError` when the time ran out there.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        try:
            async with asyncio.timeout_at(deadline):
                prepared = await self.prepare(parsed, session)
        except TimeoutError as exc:
            raise self._timeout_error() from exc
        await self.stream(prepared, emit, timeout_s=None if deadline is None else deadline - loop.time())

    async def stream(self, prepared: Prepared, emit: Emit, *, timeout_s: float | None = None) -> None:
        """:meth:`generate` every event through ``emit``; past ``timeout_s`` the stream ends with
        ``response.failed`` (code ``request_timeout``). A cancelled caller (a peer gone) closes the event
        generator: the engine stops and the parent is evicted."""
        last: Event | None = None
        try:
            async with asyncio.timeout(timeout_s) as scope:
                async with contextlib.aclosing(self.generate(prepared)) as events:
                    async for event in events:
                        last = event
                        await emit(event)
        except TimeoutError:
            if not scope.expired():
                raise
            err = self._timeout_error()
            await emit(
                ResponseFailed(
                    sequence_number=0 if last is None else last.sequence_number + 1,
                    stream_id=prepared.request.stream_id,
                    response=msgspec.structs.replace(
                        prepared.response, status="failed", error={"code": err.code, "message": err.message}
                    ),
                )
            )

    async def start_background(self, parsed: ParsedRequest, session: Session) -> BackgroundJob:
        """A ``background: true`` request: prepared now (a refusal raises here), run in a task of its own.
        Returns: the job; :meth:`BackgroundJobs.queued` is the answer to send."""
        try:
            async with asyncio.timeout(self.settings.request_timeout_s):
                prepared = await self.prepare(parsed, session)
        except TimeoutError as exc:
            raise self._timeout_error() from exc
        return self.background.start(prepared, timeout_s=self.settings.request_timeout_s)

    def _timeout_error(self) -> RequestTimeoutError:
        return RequestTimeoutError(
            f"The request did not finish within its time limit (request_timeout_s = "
            f"{self.settings.request_timeout_s:g} s)."
        )

    async def run_cpu(self, nbytes: int, work: Callable[[], T]) -> T:
        """``work()`` inline when it handles fewer than ``offload_bytes``, else on the service's worker threads
        (a server's decoding of a large message)."""
        return await self._cpu(nbytes, work)

    async def _cpu(self, nbytes: int, work: Callable[[], T]) -> T:
        """Run a synchronous stage body: inline when it handles fewer than ``offload_bytes``, else on a worker
        thread, so one large request does not stall every other client on the event loop. Its stage timings
        are taken in the thread that runs it (``thread_time_ns`` is per thread)."""
        if nbytes < self.settings.offload_bytes:
            return work()
        return await asyncio.get_running_loop().run_in_executor(self._workers, work)

    async def _prepare(self, req: ResponseCreate, parsed: ParsedRequest, session: Session) -> Prepared:
        s, timer = self.settings, parsed.timer
        self._check_length(req.input)
        await timer.inject("validate")

        def validate() -> list[InputItem]:
            with timer.stage("validate") as st:
                return pipeline.validate_items(req.input, st)

        new_items = await self._cpu(parsed.nbytes, validate)
        await timer.inject("resolve")
        parent: ConversationRecord | None = None
        state: StateStrategy = "full"
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
        with timer.stage("validate"):
            options = self._options(req, session, tools, metadata)
            call_ids = pipeline.check_call_ids(new_items, parent.call_ids if parent is not None else frozenset())
        incremental = parent is not None and s.incremental_checks
        if parent is not None and not s.incremental_checks:

            def revalidate() -> None:
                with timer.stage("validate") as st:
                    pipeline.revalidate(history, st)

            await self._cpu(s.offload_bytes if len(history) > OFFLOAD_ITEMS else 0, revalidate)
        new_bytes = sum(len(msgspec.json.encode(i)) for i in new_items)
        if session.cache is not None:
            session.cache.check_fits((parent.nbytes if state == "connection" and parent else 0) + new_bytes)

        await timer.inject("safety")
        checked = new_items if incremental else items
        texts = [item_text(i) for i in checked]
        if not incremental and req.instructions:
            texts.append(req.instructions)
        checked_chars = sum(map(len, texts))
        # what the check and the render cost, as bytes: each item also has a fixed cost (~120 µs of safety,
        # as much as ~1 KB of text), so 100k one-character items go to a worker thread like 10 MB of text
        weight = checked_chars + ITEM_WEIGHT_BYTES * len(texts)

        def safety() -> None:
            with timer.stage("safety") as st:
                pipeline.safety_check(self.safety, texts, st)

        await self._cpu(weight, safety)

        await timer.inject("render")
        key, blob = pipeline.tools_key(tools, req.instructions)
        cached_tokens = parent.tokens if (state == "connection" and s.token_cache and parent) else None
        reuse = cached_tokens is not None and parent is not None and parent.tools_key == key

        def render() -> list[int]:
            with timer.stage("render") as st:
                if reuse and cached_tokens is not None:
                    return [*cached_tokens, *pipeline.render_items(self.tokenizer, new_items, st)]
                return pipeline.render_header(self.tokenizer, blob, st) + pipeline.render_items(
                    self.tokenizer, items, st
                )

        tokens = await self._cpu(
            new_bytes + ITEM_WEIGHT_BYTES * len(new_items) if reuse else weight + new_bytes, render
        )
        if len(tokens) > s.max_context_tokens:
            raise InvalidRequestError(
                f"Your input exceeds the context window of this model ({len(tokens):,} tokens; at most "
                f"{s.max_context_tokens:,}). Please adjust your input and try again.",
                "input",
                code="context_length_exceeded",
            )

        await timer.inject("route")
        with timer.stage("route") as st:
            if state == "connection" and parent is not None and parent.route is not None and parent.tools_key == key:
                route = parent.route
            else:
                route = pipeline.route(req.model, self.engine.name, tools, st)
        response = Response(
            id=new_id("resp"),
            created_at=int(time.time()),
            status="in_progress",
            model=req.model,
            tools=tools,
            tool_choice=req.tool_choice,
            previous_response_id=req.previous_response_id,
            store=req.store,
            instructions=req.instructions,
            metadata=metadata,
            max_output_tokens=req.max_output_tokens,
            parallel_tool_calls=req.parallel_tool_calls,
            background=bool(req.background),
            text=req.text if isinstance(req.text, dict) else None,
        )
        return Prepared(
            req,
            timer,
            session,
            parent,
            state,
            new_items,
            items,
            tools,
            metadata,
            tokens,
            key,
            route,
            new_bytes,
            options,
            call_ids,
            response,
            control=parsed.control,
        )

    def _check_length(self, value: str | list[dict[str, Any]]) -> None:
        """An ``input`` array of at most ``max_input_items`` items, else ``array_above_max_length``."""
        limit = self.settings.max_input_items
        if isinstance(value, list) and len(value) > limit:
            raise InvalidRequestError(
                f"Invalid 'input': array too long. Expected an array with maximum length {limit}, "
                f"but got an array with length {len(value)} instead.",
                "input",
                code="array_above_max_length",
            )

    def _options(
        self, req: ResponseCreate, session: Session, tools: list[FunctionTool], metadata: dict[str, str]
    ) -> Options:
        """The request's parameters the scripted model and the service act on, each checked (400 on a bad one)."""
        if req.max_output_tokens is not None and req.max_output_tokens < MIN_OUTPUT_TOKENS:
            raise InvalidRequestError(
                f"Invalid 'max_output_tokens': integer below minimum value. Expected a value >= "
                f"{MIN_OUTPUT_TOKENS}, but got {req.max_output_tokens} instead.",
                "max_output_tokens",
                code="integer_below_min_value",
            )
        if req.max_output_tokens is not None and req.max_output_tokens > MAX_OUTPUT_TOKENS:
            raise InvalidRequestError(
                f"Invalid 'max_output_tokens': integer above maximum value. Expected a value <= "
                f"{MAX_OUTPUT_TOKENS}, but got {str(req.max_output_tokens)[:30]} instead.",
                "max_output_tokens",
                code="integer_above_max_value",
            )
        if req.background:
            if session.connection:
                raise InvalidRequestError(
                    "Background responses are not supported over a persistent connection (WebSocket mode, gRPC "
                    "Connect): send them with POST /v1/responses.",
                    "background",
                    code="unsupported_parameter",
                )
            if not req.store:
                raise InvalidRequestError(
                    "Background responses need store=true: they are retrieved by id.", "store", code="invalid_value"
                )
        if req.long_response and not session.connection:
            raise InvalidRequestError(
                "long_response (option A: one response for the whole rollout) needs a persistent connection: "
                "WebSocket mode or gRPC Connect.",
                "long_response",
                code="unsupported_parameter",
            )
        return Options(
            knobs=Knobs.parse(metadata, self.knob_defaults),
            choice=ToolChoice.parse(req.tool_choice, tools),
            text_format=TextFormat.parse(req.text),
        )

    async def _hydrate(self, response_id: str, timer: StageTimer) -> ConversationRecord | None:
        await self.post.wait_for(response_id)  # its post may still be writing it: wait, never miss
        await timer.inject("resolve")
        with timer.stage("resolve") as st:
            stored = self.store.get(response_id)
            if stored is None:
                return None
            st.items += len(stored.items)
        if stored.response.status in ("queued", "in_progress"):
            raise InvalidRequestError(
                f"Previous response with id '{response_id}' is still {stored.response.status}: wait until it finishes.",
                "previous_response_id",
                code="previous_response_not_finished",
            )
        items = list(stored.items)
        return ConversationRecord(
            response=stored.response,
            items=items,
            tools=stored.tools,
            instructions=stored.instructions,
            call_ids=pipeline.call_ids_of(items),
        )

    async def generate(self, p: Prepared) -> AsyncGenerator[Event, None]:
        """``response.created`` … ``prefill``, ``decode`` … the terminal event, then ``post``.

        A long response (option A, ``long_response``) is several segments: at each function call it yields
        ``response.done`` and waits for the connection's ``response.append`` (:meth:`_resume`), then prefills
        what was appended and samples on, until an answer ends it; ``post`` runs once, at the end.

        Never raises for the request's own sake: an engine failure ends the stream with ``response.failed``.
        A consumer that stops early must ``aclose()`` it (:meth:`respond` does): the engine stops and the
        parent is evicted.
        """
        s = self.settings
        req, timer, session = p.request, p.timer, p.session
        seq = 0
        resp = p.response
        sid = req.stream_id
        ctl = p.control

        def snap(**kw: Any) -> Response:
            return msgspec.structs.replace(resp, **kw)

        yield ResponseCreated(sequence_number=seq, stream_id=sid, response=snap())
        seq += 1
        yield ResponseInProgress(sequence_number=seq, stream_id=sid, response=snap())
        seq += 1
        outputs: list[OutputItem] = []
        status = "completed"
        items, tokens, call_ids = p.items, p.tokens, p.call_ids
        totals = [0, 0, 0]  # a long response's input, cached and output tokens over its segments
        try:
            kv_in = p.parent.kv if (p.state == "connection" and p.parent is not None) else None
            while True:
                first = len(outputs)
                await timer.inject("prefill")
                w0 = time.perf_counter_ns()
                pre = await self.engine.prefill(tokens, kv_in, use_cache=s.prefix_cache)
                timer.add("prefill", wall_ns=time.perf_counter_ns() - w0, tokens=pre.computed_tokens)
                output_tokens, kind = 0, "message"
                if req.generate:
                    await timer.inject("decode")
                    c0 = time.thread_time_ns()
                    limit = min(req.max_output_tokens or s.max_output_tokens, s.max_output_tokens)
                    o = p.options
                    plan = plan_output(
                        items, p.tools, o.knobs, choice=o.choice, text_format=o.text_format, max_words=limit
                    )
                    kind = plan.kind
                    pieces = split_pieces(self.tokenizer, plan.content)
                    if len(pieces) > limit:
                        pieces, status = pieces[:limit], "incomplete"
                    timer.add("decode", cpu_ns=time.thread_time_ns() - c0)
                    emitted: list[int] = []
                    if ctl is not None:
                        ctl.response_id = resp.id
                        if plan.kind == "function_call":
                            ctl.calls = [{"type": "function_call_output", "call_id": plan.call_id, "name": plan.name}]
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
                        coalesce=s.coalesce_tokens,
                        stop=(lambda: ctl.stop) if ctl is not None else None,
                        emitted=emitted,
                        output_index=first,
                    ):
                        seq = ev.sequence_number + 1
                        yield ev
                    output_tokens = sum(emitted)
                    if ctl is not None and output_tokens < len(pieces):  # cut short at a steer's request
                        ctl.stopped, status = True, "incomplete"
                    timer.add("decode", wall_ns=time.perf_counter_ns() - w0, tokens=output_tokens)
                segment = (len(tokens), pre.cached_tokens, output_tokens)
                totals = [t + x for t, x in zip(totals, segment, strict=True)]
                if not (req.long_response and ctl is not None and kind == "function_call" and status == "completed"):
                    break
                # option A: pause at the tool call; the appended input resumes this same response
                with timer.stage("post") as st:  # what the next segment continues from (B: the cache record)
                    out_items = [output_as_input(o) for o in outputs[first:]]
                    items = [*items, *out_items]
                    tokens = [*tokens, *pipeline.render_items(self.tokenizer, out_items, StageStat())]
                    call_ids = call_ids | {o.call_id for o in out_items if isinstance(o, FunctionCallItem)}
                    st.items += len(out_items)
                paused = snap(
                    status="requires_action",
                    output=outputs[first:],
                    usage=_usage(*segment),
                    turnbench=TurnbenchExt(
                        stages=timer.snapshot(),
                        state="connection",
                        engine=self.engine.name,
                        prefill_tokens=pre.computed_tokens,
                    ),
                )
                loop = asyncio.get_running_loop()
                ctl.waiting = loop.create_future()
                yield ResponseDone(sequence_number=seq, stream_id=sid, response=paused)
                seq += 1
                timer, new_items, new_tokens = await self._resume(p, ctl, call_ids, len(tokens))
                items, tokens = [*items, *new_items], [*tokens, *new_tokens]
                call_ids = call_ids | pipeline.call_ids_of(new_items)
                kv_in = pre.kv
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

        usage = _usage(*totals)
        with timer.stage("post") as st:  # the in-memory part of post: caching is on the critical path
            response = snap(status=status, output=outputs, usage=usage)
            record = self._record(req, p, response, pre.kv, items, tokens, first, call_ids)
            if session.cache is not None:
                session.cache.put(record)
            st.items += 1
        session.responses += 1
        stored = (
            StoredResponse(response=record.response, items=record.items, tools=p.tools, instructions=req.instructions)
            if req.store
            else None
        )
        row = UsageRow(resp.id, req.model, session.transport, p.state, totals[0], totals[1], totals[2], status)
        # post overlaps the next request only where connection state lets the next request start without
        # it (WebSocket, gRPC Connect); a stateless request (HTTPS, gRPC Create) finishes every stage before
        # its response ends, as the seed article describes. A store=true chain on this process waits for the
        # write; one on a store other processes read (SQLite file, Redis: another host, a reconnect) would
        # not, so there the write lands before the response completes.
        durable_first = stored is not None and self.store.shared
        if s.overlap_post and session.cache is not None and not durable_first:
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
            steered = ctl is not None and ctl.stopped
            final.incomplete_details = {"reason": "steered" if steered else "max_output_tokens"}
            yield ResponseIncomplete(sequence_number=seq, stream_id=sid, response=final)
        else:
            yield ResponseCompleted(sequence_number=seq, stream_id=sid, response=final)

    async def _resume(
        self, p: Prepared, ctl: SteerControl, call_ids: frozenset[str], context_tokens: int
    ) -> tuple[StageTimer, list[InputItem], list[int]]:
        """Option A: wait (``ctl.waiting``) for the ``response.append`` that resumes a paused long response and
        check it (:meth:`_check_append`). A refused append is answered with its error (``reply``) and the
        response waits for the next. Returns: the next segment's timer (from the append's parse on), the
        appended items and their tokens."""
        while True:
            assert ctl.waiting is not None
            append = await ctl.waiting
            try:
                new_items, new_tokens = await self._check_append(append, call_ids, context_tokens)
            except TurnbenchError as err:
                ctl.waiting = asyncio.get_running_loop().create_future()
                _answer(append, err)
                continue
            ctl.waiting = None
            _answer(append, None)
            return append.timer, new_items, new_tokens

    async def _check_append(
        self, append: Append, call_ids: frozenset[str], context_tokens: int
    ) -> tuple[list[InputItem], list[int]]:
        """What a continuation's new input goes through, on an append: validate, call ids, safety and render of
        the increment only, timed into the append's own stages. Raises: the :class:`TurnbenchError` that
        refuses it."""
        s, timer, raw = self.settings, append.timer, append.input
        self._check_length(raw)
        await timer.inject("validate")

        def validate() -> list[InputItem]:
            with timer.stage("validate") as st:
                return pipeline.validate_items(raw, st)

        new_items = await self._cpu(append.nbytes, validate)
        with timer.stage("validate"):
            pipeline.check_call_ids(new_items, call_ids)
        texts = [item_text(i) for i in new_items]
        weight = sum(map(len, texts)) + ITEM_WEIGHT_BYTES * len(texts)
        await timer.inject("safety")

        def safety() -> None:
            with timer.stage("safety") as st:
                pipeline.safety_check(self.safety, texts, st)

        await self._cpu(weight, safety)
        await timer.inject("render")

        def render() -> list[int]:
            with timer.stage("render") as st:
                return pipeline.render_items(self.tokenizer, new_items, st)

        new_tokens = await self._cpu(weight, render)
        total = context_tokens + len(new_tokens)
        if total > s.max_context_tokens:
            raise InvalidRequestError(
                f"Your input exceeds the context window of this model ({total:,} tokens; at most "
                f"{s.max_context_tokens:,}). Please adjust your input and try again.",
                "input",
                code="context_length_exceeded",
            )
        return new_items, new_tokens

    def _record(
        self,
        req: ResponseCreate,
        p: Prepared,
        response: Response,
        kv: KVHandle,
        items: list[InputItem],
        tokens: list[int],
        first: int,
        call_ids: frozenset[str],
    ) -> ConversationRecord:
        """The conversation after ``response``, for the connection cache and the store: ``items`` and
        ``tokens`` are the context its last segment was sampled from (a plain response: the request's), whose
        output, ``response.output[first:]``, follows them."""
        out_items: list[InputItem] = [output_as_input(o) for o in response.output[first:]]
        known = p.items[: len(p.items) - len(p.new_items)]
        base = (
            p.parent.nbytes
            if (p.state == "connection" and p.parent is not None)
            else sum(len(msgspec.json.encode(i)) for i in known)
        )
        later = items[len(p.items) :]  # a long response's earlier segments: outputs and appended input
        nbytes = base + p.new_bytes + sum(len(msgspec.json.encode(i)) for i in [*later, *out_items])
        cached: list[int] | None = None
        if self.settings.token_cache:
            cached = [*tokens, *pipeline.render_items(self.tokenizer, out_items, StageStat())]
            nbytes += 8 * len(cached)
        return ConversationRecord(
            response=response,
            items=[*items, *out_items],
            tools=p.tools,
            instructions=req.instructions,
            tokens=cached,
            tools_key=p.tools_key,
            route=p.route,
            kv=kv,
            lane=req.stream_id,
            nbytes=nbytes,
            call_ids=call_ids | {o.call_id for o in out_items if isinstance(o, FunctionCallItem)},
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

    async def delete(self, response_id: str) -> None:
        """``DELETE /v1/responses/{id}``: a running background response is cancelled first. Raises:
        :class:`NotFoundError`."""
        if response_id in self.background.running:
            await self.background.cancel(response_id)
        await self.post.wait_for(response_id)
        if not self.store.delete(response_id):
            raise NotFoundError(f"No response found with id '{response_id}'.", "response_id")

    async def input_items(self, response_id: str) -> list[dict[str, Any]]:
        """``GET /v1/responses/{id}/input_items``: the conversation that went into a stored response, oldest
        first, each item with an ``id`` (its own, else one made from the response id and its position)."""
        await self.post.wait_for(response_id)
        stored = self.store.get(response_id)
        if stored is None:
            raise NotFoundError(f"No response found with id '{response_id}'.", "response_id")
        inputs = stored.items[: max(0, len(stored.items) - len(stored.response.output))]
        return [input_item_view(item, f"{response_id}_in{n:04d}") for n, item in enumerate(inputs)]

    async def drain(self) -> None:
        """Wait until every overlapped ``post`` has finished (graceful shutdown loses no usage record), and
        every background response (up to ``grace_s``; those still running then are cancelled)."""
        tasks = [j.task for j in self.background.running.values() if j.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=self.settings.grace_s)
            await self.background.close()
        await self.post.drain()

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Release the engine, the store and the usage log; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._workers.shutdown(wait=True, cancel_futures=True)
        self.post.close()
        self.engine.close()
        self.store.close()
        self.usage.close()


def _usage(input_tokens: int, cached_tokens: int, output_tokens: int) -> Usage:
    return Usage(
        input_tokens=input_tokens,
        input_tokens_details=InputTokensDetails(cached_tokens=cached_tokens),
        output_tokens=output_tokens,
        output_tokens_details=OutputTokensDetails(),
        total_tokens=input_tokens + output_tokens,
    )


def _answer(append: Append, error: Exception | None) -> None:
    """Resolve an append's ``reply``: None (it resumed the response) or the error that refused it."""
    if append.reply is not None and not append.reply.done():
        append.reply.set_result(error)
