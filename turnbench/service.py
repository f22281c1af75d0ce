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
import itertools
import logging
import os
import tempfile
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec

from turnbench import pipeline
from turnbench.background import BackgroundJob, BackgroundJobs
from turnbench.engine import make_engine
from turnbench.engine.base import KVHandle, ModelEngine, PrefillResult
from turnbench.engine.policy import Knobs, OutputPlan, TextFormat, ToolChoice, plan_output
from turnbench.errors import (
    InvalidRequestError,
    NotFoundError,
    PreviousResponseNotFoundError,
    RequestTimeoutError,
    TurnbenchError,
    as_turnbench_error,
    unknown_event_type,
)
from turnbench.input_checks import ITEM_WEIGHT_BYTES, InputChecks, text_weight
from turnbench.item_events import item_events, new_id, split_pieces
from turnbench.lifecycle import Append
from turnbench.params import check_sampling, served_tier, text_config
from turnbench.pipeline import StageTimer
from turnbench.post import PostWriter
from turnbench.prepared import Options, ParsedRequest, Prepared
from turnbench.safety import SafetyClassifier, default_classifier
from turnbench.schema import (
    CompactedResponse,
    CompactionOutput,
    Event,
    FunctionCallItem,
    FunctionTool,
    InputItem,
    InputTokenCount,
    InputTokensDetails,
    MessageItem,
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
    ResponseReasoning,
    StageStat,
    TurnbenchExt,
    Usage,
    decode_append,
    decode_compact,
    decode_input_tokens,
    decode_request,
    input_item_view,
    item_text,
    output_as_input,
    peek_envelope,
    request_from_builtins,
)
from turnbench.settings import INJECTED, Settings, StateStrategy
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
from turnbench.tokenizer import Tokenizer, load_tokenizer

log = logging.getLogger("turnbench.service")
T = TypeVar("T")
OFFLOAD_ITEMS = 1000  # a history this long is revalidated on a worker thread
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
        self.checks = InputChecks(s, self.safety, self.tokenizer, self._cpu)
        self.background = BackgroundJobs(self)
        self.knob_defaults = Knobs(
            tool_calls=s.tool_calls, answer_tokens=s.answer_tokens, arg_words=s.arg_words, seed=s.seed
        )
        self.engine_role = s.role == "engine"
        self._arrivals = itertools.count(1)
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
        timer, started = self._timer(), time.perf_counter_ns()
        with timer.stage("parse") as st:
            req = decode_request(payload)
            st.chars += len(payload)
        return ParsedRequest(req, timer, len(payload), arrival=next(self._arrivals), started_ns=started)

    def parse_client_event(self, payload: bytes | str) -> ParsedRequest | Append | dict[str, Any]:
        """``parse`` for a connection's client event (a WebSocket frame, gRPC ``Connect``'s json codec):
        ``response.create`` (its body flat beside ``"type": "response.create"``) as a :class:`ParsedRequest`;
        option A's ``response.append`` as an :class:`Append` (its parse stage timed from the first attempt on);
        a ``response.steer`` event as its members, as sent (the connection that holds the response it names
        checks them and answers with ``response.steer.accepted|failed``).

        Raises: :class:`InvalidRequestError` with ``stream_id`` set to the lane the event named (if it could be
        read), so the error is answered in that lane's order, and ``previous_response_id`` to the parent it
        named (a refused same-lane continuation evicts it: (docs/protocol/websocket-mode.md, "The connection
        cache")); ``unknown_event_type`` for another ``type``; for a malformed append, the member it names
        (answered at once: ``in_lane`` False).
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
        timer, started = self._timer(), time.perf_counter_ns() - decode_ns
        with timer.stage("parse") as st:
            req = request_from_builtins(obj)
            st.chars += nbytes
        timer.add("parse", wall_ns=decode_ns, cpu_ns=decode_ns)
        return ParsedRequest(req, timer, nbytes, arrival=next(self._arrivals), started_ns=started)

    # ------------------------------------------------------------------------------------------ create

    async def prepare(self, parsed: ParsedRequest, session: Session) -> Prepared:
        """``validate`` … ``route``: everything that may refuse the request, before ``response.created``.

        Raises: a :class:`TurnbenchError` (bad input, unknown parent, flagged content, state limit …); a
        failed continuation evicts its parent on the same lane (a cross-lane fork keeps it: docs/guides/forks.md).
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
        """Every stage that may refuse ``req``, in the order their errors take precedence: the new input
        validated, the parent resolved, the options and call ids checked, (full checks) the history
        revalidated, the connection's state limit, safety, render and the context window, route."""
        timer = parsed.timer
        new_items, origins = await self.checks.validate(req.input, parsed.nbytes, timer)
        parent, state = await self._resolve(req, session, timer)
        cached = parent if state == "connection" else None  # the parent on this connection: tokens, KV, route
        tools = req.tools or (parent.tools if parent is not None else [])
        metadata = req.metadata or (parent.response.metadata if parent is not None else {})
        with timer.stage("validate"):
            chat = parsed.endpoint == "chat.completions"  # Chat Completions allows any max_tokens from 1
            options = self._options(req, session, tools, metadata, minimum=1 if chat else MIN_OUTPUT_TOKENS)
            call_ids = pipeline.check_call_ids(
                new_items, parent.call_ids if parent is not None else frozenset(), origins
            )
        await self._revalidate(parent, timer)
        new_bytes = sum(len(msgspec.json.encode(i)) for i in new_items)
        if session.cache is not None:
            session.cache.check_fits((cached.nbytes if cached is not None else 0) + new_bytes)
        items = [*(parent.items if parent is not None else []), *new_items]
        incremental = parent is not None and self.settings.incremental_checks
        checked = new_items if incremental else items
        if self.engine_role:  # an engine behind a gateway runs no safety pass: only the weight, for the offload
            weight = text_weight([item_text(i) for i in checked])
        else:
            weight = await self._screen(req, checked, timer, instructions=not incremental)
        key, blob = pipeline.tools_key(tools, req.instructions)
        tokens = await self._render((key, blob), cached, new_items, items, new_bytes, weight, timer)
        route = await self._route(req, cached, key, tools, timer)
        response = self._new_response(req, tools, metadata)
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
            lifecycle=parsed.lifecycle,
            parsed=parsed,
        )

    async def _resolve(
        self, req: ResponseCreate, session: Session, timer: StageTimer
    ) -> tuple[ConversationRecord | None, StateStrategy]:
        """``resolve``: the parent ``previous_response_id`` names, from this connection's cache (state
        ``"connection"``), else hydrated from the store (``"store"``); no parent: ``"full"``. Raises:
        :class:`PreviousResponseNotFoundError`, or ``previous_response_not_finished``."""
        await timer.inject("resolve")
        parent: ConversationRecord | None = None
        state: StateStrategy = "full"
        with timer.stage("resolve"):
            if req.previous_response_id and session.cache is not None:
                parent = session.cache.get(req.previous_response_id)
                state = "connection" if parent is not None else state
        if req.previous_response_id and parent is None:
            w0 = time.perf_counter_ns()
            parent = await self._hydrate(req.previous_response_id, timer)
            timer.add("resolve", wall_ns=time.perf_counter_ns() - w0)
            if parent is None:
                raise PreviousResponseNotFoundError(req.previous_response_id)
            state = "store"
        return parent, state

    async def _revalidate(self, parent: ConversationRecord | None, timer: StageTimer) -> None:
        """With incremental checks off, the parent's history is validated again, as a stateless server must
        (on a worker thread past ``OFFLOAD_ITEMS`` items)."""
        if parent is None or self.settings.incremental_checks:
            return
        history = parent.items

        def revalidate() -> None:
            with timer.stage("validate") as st:
                pipeline.revalidate(history, st)

        await self._cpu(self.settings.offload_bytes if len(history) > OFFLOAD_ITEMS else 0, revalidate)

    async def _screen(
        self, req: ResponseCreate, checked: list[InputItem], timer: StageTimer, *, instructions: bool
    ) -> int:
        """``safety`` over ``checked`` (a known parent with incremental checks: the new items only, else the
        whole conversation) and, with ``instructions``, the request's instructions. Returns: the texts' weight
        (bytes)."""
        texts = [item_text(i) for i in checked]
        if instructions and req.instructions:
            texts.append(req.instructions)
        return await self.checks.screen(texts, timer)

    async def _render(
        self,
        header: tuple[int, bytes],
        cached: ConversationRecord | None,
        new_items: list[InputItem],
        items: list[InputItem],
        new_bytes: int,
        weight: int,
        timer: StageTimer,
    ) -> list[int]:
        """``render``: the context as tokens — the cached parent's tokens extended by the new items where the
        header (``pipeline.tools_key``: instructions and tools) is unchanged, else the header and every item —
        then the context window checked. ``weight``: the screened texts' (bytes)."""
        key, blob = header
        tok, known = self.tokenizer, cached.tokens if (cached is not None and self.settings.token_cache) else None
        stage = "tokenize" if self.engine_role else "render"

        def extend(st: StageStat) -> list[int]:
            return [*(known or []), *pipeline.render_items(tok, new_items, st)]

        def full(st: StageStat) -> list[int]:
            return pipeline.render_header(tok, blob, st) + pipeline.render_items(tok, items, st)

        if known is not None and cached is not None and cached.tools_key == key:
            tokens = await self.checks.render(timer, new_bytes + ITEM_WEIGHT_BYTES * len(new_items), extend, stage)
        else:
            tokens = await self.checks.render(timer, weight + new_bytes, full, stage)
        self.checks.check_context(len(tokens))
        return tokens

    async def _route(
        self,
        req: ResponseCreate,
        cached: ConversationRecord | None,
        key: int,
        tools: list[FunctionTool],
        timer: StageTimer,
    ) -> Any:
        """``route``: the cached parent's routing decision when its header is unchanged, else a new one."""
        await timer.inject("route")
        with timer.stage("route") as st:
            if cached is not None and cached.route is not None and cached.tools_key == key:
                return cached.route
            return pipeline.route(req.model, self.engine.name, tools, st)

    def _new_response(self, req: ResponseCreate, tools: list[FunctionTool], metadata: dict[str, str]) -> Response:
        """The response ``req`` creates, as it starts (``in_progress``): the request's parameters echoed, the
        real API's values for a model without the feature where it set none."""
        reasoning = req.reasoning
        return Response(
            id=new_id("resp"),
            created_at=int(time.time()),
            status="in_progress",
            model=req.model,
            tools=tools,
            tool_choice=req.tool_choice,
            previous_response_id=req.previous_response_id,
            store=req.store and not self.engine_role,
            instructions=req.instructions,
            metadata=metadata,
            max_output_tokens=req.max_output_tokens,
            parallel_tool_calls=req.parallel_tool_calls,
            background=bool(req.background),
            text=text_config(req.text),
            temperature=_or(req.temperature, 1.0),
            top_p=_or(req.top_p, 1.0),
            presence_penalty=_or(req.presence_penalty, 0.0),
            frequency_penalty=_or(req.frequency_penalty, 0.0),
            top_logprobs=_or(req.top_logprobs, 0),
            max_tool_calls=req.max_tool_calls,
            truncation=req.truncation or "disabled",
            reasoning=ResponseReasoning(
                effort=reasoning.effort, summary=reasoning.summary or reasoning.generate_summary
            )
            if reasoning is not None
            else ResponseReasoning(),
            service_tier=served_tier(req.service_tier),
            prompt_cache_key=req.prompt_cache_key,
            prompt_cache_retention=req.prompt_cache_retention,
            safety_identifier=req.safety_identifier,
            user=req.user,
        )

    def _options(
        self,
        req: ResponseCreate,
        session: Session,
        tools: list[FunctionTool],
        metadata: dict[str, str],
        *,
        minimum: int = MIN_OUTPUT_TOKENS,
    ) -> Options:
        """The request's parameters the scripted model and the service act on, each checked (400 on a bad one);
        ``minimum``: the least ``max_output_tokens`` allowed."""
        if req.max_output_tokens is not None and req.max_output_tokens < minimum:
            raise InvalidRequestError(
                f"Invalid 'max_output_tokens': integer below minimum value. Expected a value >= "
                f"{minimum}, but got {req.max_output_tokens} instead.",
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
        check_sampling(req)
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
        run, sid = _Run.start(p), p.request.stream_id
        yield ResponseCreated(sequence_number=run.next_seq(), stream_id=sid, response=run.snap())
        yield ResponseInProgress(sequence_number=run.next_seq(), stream_id=sid, response=run.snap())
        try:
            while True:
                await self._prefill(run)
                kind, output_tokens = "message", 0
                if p.request.generate:
                    decoding = await self._plan(run)
                    async for ev in self._item_events(run, decoding):
                        run.seq = ev.sequence_number + 1
                        yield ev
                    kind, output_tokens = decoding.plan.kind, self._decoded(run, decoding)
                run.end_segment(output_tokens)
                if not self._pauses(run, kind):
                    break
                yield self._pause(run)
                await self._resume(run)
        except (asyncio.CancelledError, GeneratorExit):
            self._evict_parent(p.request, p.session)
            raise
        except Exception as exc:  # engine failure after response.created: the stream ends with failed
            yield self._failed(run, exc)
            return
        yield await self._conclude(run)

    async def _prefill(self, run: _Run) -> None:
        """``prefill``: the segment's context into the engine's KV (from the cached parent's, or the previous
        segment's)."""
        timer = run.timer
        await timer.inject(INJECTED)  # --inject-ms N: the synthetic per-request regression, a stage of its own
        await timer.inject("prefill")
        w0 = time.perf_counter_ns()
        run.pre = pre = await self.engine.prefill(run.tokens, run.kv_in, use_cache=self.settings.prefix_cache)
        timer.add("prefill", wall_ns=time.perf_counter_ns() - w0, tokens=pre.computed_tokens)

    async def _plan(self, run: _Run) -> _Decoding:
        """What the segment samples (the scripted model's plan, cut at the output limit: then ``incomplete``),
        as token pieces; a function call is told to the lifecycle (held steers wait for its output)."""
        s, p, timer = self.settings, run.p, run.timer
        await timer.inject("decode")
        c0 = time.thread_time_ns()
        limit = min(p.request.max_output_tokens or s.max_output_tokens, s.max_output_tokens)
        o = p.options
        plan = plan_output(run.items, p.tools, o.knobs, choice=o.choice, text_format=o.text_format, max_words=limit)
        pieces = split_pieces(self.tokenizer, plan.content)
        if len(pieces) > limit:
            pieces, run.status = pieces[:limit], "incomplete"
        timer.add("decode", cpu_ns=time.thread_time_ns() - c0)
        if p.lifecycle is not None and plan.kind == "function_call":
            p.lifecycle.call(plan.call_id, plan.name)
        return _Decoding(plan, pieces, [], time.perf_counter_ns())

    def _item_events(self, run: _Run, decoding: _Decoding) -> AsyncIterator[Event]:
        """The segment's output item as events, from ``run.seq`` on; a message stops early once the lifecycle
        is steered."""
        s, lifecycle = self.settings, run.p.lifecycle
        return item_events(
            self.engine,
            decoding.plan,
            decoding.pieces,
            run.prefilled.kv,
            seq=run.seq,
            stream_id=run.p.request.stream_id,
            outputs=run.outputs,
            tokens_per_chunk=s.tokens_per_chunk,
            coalesce=s.coalesce_tokens,
            stop=lifecycle.should_stop if lifecycle is not None else None,
            emitted=decoding.emitted,
            output_index=run.first,
        )

    def _decoded(self, run: _Run, decoding: _Decoding) -> int:
        """Close the ``decode`` stage. An answer cut short (a steer) ends the response incomplete. Returns:
        the output tokens sent."""
        output_tokens = sum(decoding.emitted)
        if run.p.lifecycle is not None and output_tokens < len(decoding.pieces):  # cut short at a steer's request
            run.p.lifecycle.cut()
            run.status = "incomplete"
        run.timer.add("decode", wall_ns=time.perf_counter_ns() - decoding.w0, tokens=output_tokens)
        return output_tokens

    @staticmethod
    def _pauses(run: _Run, kind: str) -> bool:
        """Option A: a long response pauses at each function call it completed."""
        long = bool(run.p.request.long_response) and run.p.lifecycle is not None
        return long and kind == "function_call" and run.status == "completed"

    def _pause(self, run: _Run) -> ResponseDone:
        """Option A: the segment's output joins the context the next segment continues from (as option B's
        cache record would), the lifecycle is paused, and ``response.done`` (``requires_action``, this
        segment's output, usage and stages) is the event to send."""
        assert run.p.lifecycle is not None
        pre = run.prefilled
        with run.timer.stage("post") as st:
            out_items = [output_as_input(o) for o in run.outputs[run.first :]]
            run.items = [*run.items, *out_items]
            run.tokens = [*run.tokens, *pipeline.render_items(self.tokenizer, out_items, StageStat())]
            run.call_ids = run.call_ids | {o.call_id for o in out_items if isinstance(o, FunctionCallItem)}
            st.items += len(out_items)
        paused = run.snap(
            status="requires_action",
            output=run.outputs[run.first :],
            usage=_usage(*run.segment),
            turnbench=TurnbenchExt(
                stages=run.timer.snapshot(),
                state="connection",
                engine=self.engine.name,
                prefill_tokens=pre.computed_tokens,
            ),
        )
        run.p.lifecycle.pause()  # before response.done is sent: an append sent on reading it finds it paused
        return ResponseDone(sequence_number=run.next_seq(), stream_id=run.p.request.stream_id, response=paused)

    async def _resume(self, run: _Run) -> None:
        """Option A: wait for the ``response.append`` that resumes the paused response and check it
        (:meth:`InputChecks.increment`). A refused append is answered with its error and the response waits
        for the next; an accepted one starts the next segment: its timer (from the append's parse on), and
        its items and tokens appended to the context."""
        lifecycle = run.p.lifecycle
        assert lifecycle is not None
        while True:
            append = await lifecycle.appended()
            try:
                new_items, new_tokens = await self.checks.increment(
                    append.input, append.nbytes, append.timer, run.call_ids, len(run.tokens)
                )
            except TurnbenchError as err:
                lifecycle.refuse(append, err)
                continue
            lifecycle.resume(append)
            break
        run.timer = append.timer
        run.items, run.tokens = [*run.items, *new_items], [*run.tokens, *new_tokens]
        run.call_ids = run.call_ids | pipeline.call_ids_of(new_items)
        run.kv_in, run.first = run.prefilled.kv, len(run.outputs)  # the next segment's output starts here

    def _failed(self, run: _Run, exc: Exception) -> ResponseFailed:
        """An engine failure after ``response.created`` (call while handling ``exc``: it is logged): the parent
        is evicted and the stream ends with ``response.failed``."""
        err = as_turnbench_error(exc)
        log.exception("response %s failed", run.p.response.id)
        self._evict_parent(run.p.request, run.p.session)
        return ResponseFailed(
            sequence_number=run.seq,
            stream_id=run.p.request.stream_id,
            response=run.snap(status="failed", output=run.outputs, error={"code": err.code, "message": err.message}),
        )

    async def _conclude(self, run: _Run) -> ResponseCompleted | ResponseIncomplete:
        """``post``: the conversation cached (in memory, on the critical path), then stored and its usage
        logged (:meth:`_post`). Returns: the terminal event, with the stages of the last segment."""
        p = run.p
        usage = _usage(*run.totals)
        done_at = int(time.time()) if run.status == "completed" else None
        with run.timer.stage("post") as st:
            ended = run.snap(status=run.status, output=run.outputs, usage=usage, completed_at=done_at)
            record = self._record(run, ended)
            if p.session.cache is not None:
                p.session.cache.put(record)
            st.items += 1
        p.session.responses += 1
        await self._post(run, record)
        final = run.snap(
            status=run.status,
            output=run.outputs,
            usage=usage,
            completed_at=done_at,
            turnbench=TurnbenchExt(
                stages=run.timer.snapshot(),
                state=p.state,
                engine=self.engine.name,
                prefill_tokens=run.prefilled.computed_tokens,
            ),
        )
        sid = p.request.stream_id
        if run.status == "incomplete":
            steered = p.lifecycle is not None and p.lifecycle.cut_short
            final.incomplete_details = {"reason": "steered" if steered else "max_output_tokens"}
            return ResponseIncomplete(sequence_number=run.seq, stream_id=sid, response=final)
        return ResponseCompleted(sequence_number=run.seq, stream_id=sid, response=final)

    async def _post(self, run: _Run, record: ConversationRecord) -> None:
        """The store's write (``store``) and the usage row.

        They overlap the next request only where connection state lets the next request start without them
        (WebSocket, gRPC Connect); a stateless request (HTTPS, gRPC Create) finishes every stage before its
        response ends (docs/concepts/pipeline.md). A store=true chain on this process waits for the write; one
        on a store other processes read (SQLite file, Redis: another host, a reconnect) would not, so there
        the write lands before the response completes (docs/concepts/state.md)."""
        p, req, totals = run.p, run.p.request, run.totals
        stored = (
            StoredResponse(response=record.response, items=record.items, tools=p.tools, instructions=req.instructions)
            if req.store and not self.engine_role  # an engine keeps no responses
            else None
        )
        row = UsageRow(p.response.id, req.model, p.session.transport, p.state, *totals, run.status)
        parsed = p.parsed
        if parsed is not None:
            row.arrival, row.request_id, row.endpoint = parsed.arrival, parsed.request_id, parsed.endpoint
            if parsed.started_ns:
                row.elapsed_ms = (time.perf_counter_ns() - parsed.started_ns) / 1e6
        row.role = self.settings.role
        row.stages = msgspec.json.encode(run.timer.snapshot()).decode()
        durable_first = stored is not None and self.store.shared
        if self.settings.overlap_post and p.session.cache is not None and not durable_first:
            self.post.spawn(stored, row, run.timer)
        else:
            await self.post.run(stored, row, run.timer)

    def _record(self, run: _Run, response: Response) -> ConversationRecord:
        """The conversation after ``response``, for the connection cache and the store: ``run.items`` and
        ``run.tokens`` are the context its last segment was sampled from (a plain response: the request's),
        whose output, ``response.output[run.first:]``, follows them."""
        p, req, items = run.p, run.p.request, run.items
        out_items: list[InputItem] = [output_as_input(o) for o in response.output[run.first :]]
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
            cached = [*run.tokens, *pipeline.render_items(self.tokenizer, out_items, StageStat())]
            nbytes += 8 * len(cached)
        return ConversationRecord(
            response=response,
            items=[*items, *out_items],
            tools=p.tools,
            instructions=req.instructions,
            tokens=cached,
            tools_key=p.tools_key,
            route=p.route,
            kv=run.prefilled.kv,
            lane=req.stream_id,
            nbytes=nbytes,
            call_ids=run.call_ids | {o.call_id for o in out_items if isinstance(o, FunctionCallItem)},
        )

    # ------------------------------------------------------------------------------------------ count, compact

    async def count_input_tokens(self, payload: bytes) -> InputTokenCount:
        """``POST /v1/responses/input_tokens``: the input tokens ``response.create`` would report for the same
        instructions, tools, input and ``previous_response_id`` (a stored parent). Raises: the
        :class:`TurnbenchError` that request would earn for its input or its parent."""
        req = decode_input_tokens(payload)
        _, tokens = await self._context(
            req.input, req.instructions, req.tools or [], req.previous_response_id, len(payload)
        )
        return InputTokenCount(input_tokens=len(tokens))

    async def compact(self, payload: bytes) -> CompactedResponse:
        """``POST /v1/responses/compact``: the conversation (the input after a stored ``previous_response_id``'s)
        as its user messages, verbatim, then one compaction item standing for everything else
        (:mod:`turnbench.compaction`). Its usage: the conversation's tokens as input; no output is sampled."""
        req = decode_compact(payload)
        items, tokens = await self._context(req.input, req.instructions, [], req.previous_response_id, len(payload))

        def is_user(item: InputItem) -> bool:
            return isinstance(item, MessageItem) and item.role == "user"

        replaced = [i for i in items if not is_user(i)]
        weight = sum(len(msgspec.json.encode(i)) for i in replaced)
        content = await self._cpu(weight, lambda: self.checks.compactor.encode(replaced))
        kept: list[dict[str, Any] | CompactionOutput] = [input_item_view(i, new_id("msg")) for i in items if is_user(i)]
        return CompactedResponse(
            id=new_id("resp"),
            created_at=int(time.time()),
            output=[*kept, CompactionOutput(id=new_id("cmp"), encrypted_content=content)],
            usage=_usage(len(tokens), 0, 0),
            safety_identifier=req.safety_identifier,
            service_tier=served_tier(req.service_tier),
        )

    async def _context(
        self,
        raw: str | list[dict[str, Any]] | None,
        instructions: str | None,
        tools: list[FunctionTool],
        previous_response_id: str | None,
        nbytes: int,
    ) -> tuple[list[InputItem], list[int]]:
        """A conversation as ``response.create`` would render it, statelessly: ``raw`` validated (compaction
        items expanded), after the stored parent's items, with the parent's tools when ``tools`` is empty.
        Returns: the items, and the tokens (header, then items)."""
        timer = self._timer()
        new_items, origins = await self.checks.validate(raw if raw is not None else [], nbytes, timer)
        parent: ConversationRecord | None = None
        if previous_response_id:
            parent = await self._hydrate(previous_response_id, timer)
            if parent is None:
                raise PreviousResponseNotFoundError(previous_response_id)
        pipeline.check_call_ids(new_items, parent.call_ids if parent is not None else frozenset(), origins)
        items = [*(parent.items if parent is not None else []), *new_items]
        _, blob = pipeline.tools_key(tools or (parent.tools if parent is not None else []), instructions)
        tok = self.tokenizer

        def build(st: StageStat) -> list[int]:
            return pipeline.render_header(tok, blob, st) + pipeline.render_items(tok, items, st)

        tokens = await self.checks.render(timer, text_weight([item_text(i) for i in items]) + len(blob), build)
        return items, tokens

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


def _or(value: T | None, default: T) -> T:
    return default if value is None else value


def _usage(input_tokens: int, cached_tokens: int, output_tokens: int) -> Usage:
    return Usage(
        input_tokens=input_tokens,
        input_tokens_details=InputTokensDetails(cached_tokens=cached_tokens),
        output_tokens=output_tokens,
        output_tokens_details=OutputTokensDetails(),
        total_tokens=input_tokens + output_tokens,
    )


@dataclass(slots=True)
class _Run:
    """One response while :meth:`ResponsesService.generate` runs it: where its events, output and context
    stand. A long response (option A) runs several segments; these carry over between them."""

    p: Prepared
    timer: StageTimer  # the segment's stages (a resumed segment's: from its append's parse on)
    items: list[InputItem]  # the context the segment samples from, as items and as tokens
    tokens: list[int]
    call_ids: frozenset[str]  # every function call of the conversation so far
    kv_in: KVHandle | None  # the KV the segment's prefill continues (the cached parent's, the last segment's)
    seq: int = 0  # the next event's sequence number
    status: str = "completed"
    outputs: list[OutputItem] = field(default_factory=list)
    first: int = 0  # where the segment's output starts in ``outputs``
    pre: PrefillResult | None = None  # the segment's prefill
    segment: tuple[int, int, int] = (0, 0, 0)  # the segment's input, cached and output tokens
    totals: tuple[int, int, int] = (0, 0, 0)  # the same, over every segment so far

    @classmethod
    def start(cls, p: Prepared) -> _Run:
        """The run of ``p``; its lifecycle (a connection's response) starts now."""
        if p.lifecycle is not None:
            p.lifecycle.start(p.response.id)
        kv_in = p.parent.kv if (p.state == "connection" and p.parent is not None) else None
        return cls(p, p.timer, p.items, p.tokens, p.call_ids, kv_in)

    @property
    def prefilled(self) -> PrefillResult:
        assert self.pre is not None, "the segment is not prefilled yet"
        return self.pre

    def next_seq(self) -> int:
        seq, self.seq = self.seq, self.seq + 1
        return seq

    def snap(self, **changes: Any) -> Response:
        """The response as it stands, with ``changes``."""
        return msgspec.structs.replace(self.p.response, **changes)

    def end_segment(self, output_tokens: int) -> None:
        i, c, o = self.segment = (len(self.tokens), self.prefilled.cached_tokens, output_tokens)
        ti, tc, to = self.totals
        self.totals = (ti + i, tc + c, to + o)


@dataclass(slots=True)
class _Decoding:
    """One segment's decode: the plan, its token pieces, the tokens of each delta sent, and when the deltas
    started (``perf_counter_ns``)."""

    plan: OutputPlan
    pieces: list[tuple[int, str]]
    emitted: list[int]
    w0: int
