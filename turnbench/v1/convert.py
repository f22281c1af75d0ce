"""Protobuf (``turnbench.v1``) ↔ the core's types, without a detour through JSON.

Requests (``body_to_proto``, ``request_to_proto``, ``request_from_proto``) live in
:mod:`turnbench.v1.convert_request` and are re-exported here. Events travel as the core's structs:
:func:`event_to_proto` on the server, :func:`event_from_proto` on the client (and :func:`event_type` when
only the JSON ``type`` is needed: the hot path of a client), the steering answers (``response.steer.*``)
included. Free-form JSON values (tool ``parameters``, an object ``tool_choice``, annotations, logprobs) are
JSON text in the proto. ``Response.error`` and ``incomplete_details`` are typed as the Responses API defines
them (``{code, message}``, ``{reason}``): the only shapes the core emits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeAlias

import msgspec

from turnbench.schema import (
    ContentPartAdded,
    ContentPartDone,
    ErrorEvent,
    Event,
    FunctionCallArgumentsDelta,
    FunctionCallArgumentsDone,
    FunctionTool,
    InputTokensDetails,
    OutputFunctionCall,
    OutputItem,
    OutputItemAdded,
    OutputItemDone,
    OutputMessage,
    OutputText,
    OutputTextDelta,
    OutputTextDone,
    OutputTokensDetails,
    Response,
    ResponseCompleted,
    ResponseCreated,
    ResponseDone,
    ResponseFailed,
    ResponseIncomplete,
    ResponseInProgress,
    ResponseReasoning,
    StageStat,
    SteerAccepted,
    SteerError,
    SteerFailed,
    SteerPending,
    SteerRef,
    TurnbenchExt,
    Usage,
    WsErrorDetail,
    WsErrorEvent,
)
from turnbench.v1 import responses_pb2 as pb
from turnbench.v1.convert_request import (
    Unrepresentable,
    body_to_proto,
    choice_from_proto,
    choice_to_proto,
    input_from_proto,
    input_to_proto,
    json_text,
    request_from_proto,
    request_to_proto,
    steer_from_proto,
    steer_to_proto,
)

__all__ = [
    "EVENT_TYPES",
    "ServerEventStruct",
    "Unrepresentable",
    "body_to_proto",
    "event_from_proto",
    "event_to_proto",
    "event_type",
    "request_from_proto",
    "request_to_proto",
    "response_from_proto",
    "response_to_proto",
    "steer_from_proto",
    "steer_to_proto",
]

_json_decode = msgspec.json.decode

EVENT_TYPES: dict[str, str] = {
    "created": "response.created",
    "in_progress": "response.in_progress",
    "completed": "response.completed",
    "failed": "response.failed",
    "incomplete": "response.incomplete",
    "done": "response.done",
    "output_item_added": "response.output_item.added",
    "output_item_done": "response.output_item.done",
    "content_part_added": "response.content_part.added",
    "content_part_done": "response.content_part.done",
    "output_text_delta": "response.output_text.delta",
    "output_text_done": "response.output_text.done",
    "function_call_arguments_delta": "response.function_call_arguments.delta",
    "function_call_arguments_done": "response.function_call_arguments.done",
    "error": "error",
    "ws_error": "error",
    "steer_accepted": "response.steer.accepted",
    "steer_pending": "response.steer.pending",
    "steer_failed": "response.steer.failed",
}
"""``ServerEvent`` oneof name → the event's JSON ``type``."""

ServerEventStruct: TypeAlias = Event | WsErrorEvent | SteerAccepted | SteerPending | SteerFailed
"""Every struct a typed ``ServerEvent`` carries: a response's events, the connection's error, the steer answers."""


# ---------------------------------------------------------------------------------------------- response


def _text_to_proto(t: OutputText, out: pb.OutputText) -> None:
    out.text = t.text
    if t.annotations:
        out.annotations.extend([json_text(a) for a in t.annotations])
    if t.logprobs:
        out.logprobs.extend([json_text(x) for x in t.logprobs])


def _text_from_proto(p: pb.OutputText) -> OutputText:
    return OutputText(
        text=p.text,
        annotations=[_json_decode(a) for a in p.annotations],
        logprobs=[_json_decode(x) for x in p.logprobs],
    )


def _output_to_proto(o: OutputItem, out: pb.OutputItem) -> None:
    if isinstance(o, OutputFunctionCall):
        f = out.function_call
        f.id, f.call_id, f.name, f.arguments, f.status = o.id, o.call_id, o.name, o.arguments, o.status
    else:
        m = out.message
        m.id, m.status, m.role = o.id, o.status, o.role
        for part in o.content:
            _text_to_proto(part, m.content.add())


def _output_from_proto(o: pb.OutputItem) -> OutputItem:
    if o.WhichOneof("item") == "function_call":
        f = o.function_call
        return OutputFunctionCall(id=f.id, call_id=f.call_id, name=f.name, arguments=f.arguments, status=f.status)
    m = o.message
    return OutputMessage(
        id=m.id,
        status=m.status,
        role=m.role,  # type: ignore[arg-type]
        content=[_text_from_proto(p) for p in m.content],
    )


def response_to_proto(r: Response, out: pb.Response | None = None) -> pb.Response:
    """A core :class:`Response` as a typed ``Response`` (filled into ``out`` when given)."""
    out = pb.Response() if out is None else out
    out.id, out.created_at, out.status, out.model = r.id, r.created_at, r.status, r.model
    for o in r.output:
        _output_to_proto(o, out.output.add())
    out.parallel_tool_calls, out.store = r.parallel_tool_calls, r.store
    choice_to_proto(r.tool_choice, out.tool_choice)
    for t in r.tools:
        ft = out.tools.add(name=t.name, description=t.description, strict=t.strict)
        if t.parameters is not None:
            ft.parameters = json_text(t.parameters)
    for key in _OPTIONAL_SCALARS:
        v = getattr(r, key)
        if v is not None:
            setattr(out, key, v)
    out.background, out.truncation, out.service_tier = r.background, r.truncation, r.service_tier
    out.temperature, out.top_p, out.top_logprobs = r.temperature, r.top_p, r.top_logprobs
    out.presence_penalty, out.frequency_penalty = r.presence_penalty, r.frequency_penalty
    if r.text is not None:
        out.text = json_text(r.text)
    out.reasoning.SetInParent()
    if r.reasoning.effort is not None:
        out.reasoning.effort = r.reasoning.effort
    if r.reasoning.summary is not None:
        out.reasoning.summary = r.reasoning.summary
    if r.metadata:
        out.metadata.update(r.metadata)
    if (u := r.usage) is not None:
        pu = out.usage
        pu.input_tokens, pu.output_tokens, pu.total_tokens = u.input_tokens, u.output_tokens, u.total_tokens
        pu.input_tokens_details.cached_tokens = u.input_tokens_details.cached_tokens
        pu.input_tokens_details.cache_write_tokens = u.input_tokens_details.cache_write_tokens
        pu.output_tokens_details.reasoning_tokens = u.output_tokens_details.reasoning_tokens
    if r.error is not None:  # the Responses error object: {code, message}
        out.error.code, out.error.message = r.error.get("code") or "", r.error.get("message") or ""
    if r.incomplete_details is not None:
        out.incomplete_details.reason = r.incomplete_details.get("reason") or ""
    if (x := r.turnbench) is not None:
        ext = out.turnbench
        ext.state, ext.engine, ext.prefill_tokens = x.state, x.engine, x.prefill_tokens
        for name, s in x.stages.items():
            ps = ext.stages[name]
            ps.wall_ns, ps.cpu_ns, ps.items, ps.tokens, ps.chars = s.wall_ns, s.cpu_ns, s.items, s.tokens, s.chars
    return out


_OPTIONAL_SCALARS = (
    "previous_response_id",
    "instructions",
    "max_output_tokens",
    "completed_at",
    "max_tool_calls",
    "prompt_cache_key",
    "prompt_cache_retention",
    "safety_identifier",
    "user",
)
"""The Response's nullable scalars: ``optional`` in the proto, unset for null."""


def response_from_proto(r: pb.Response) -> Response:
    """A typed ``Response`` as the core's struct."""
    u = r.usage if r.HasField("usage") else None
    x = r.turnbench if r.HasField("turnbench") else None
    rs = r.reasoning
    return Response(
        **{key: _opt(r, key) for key in _OPTIONAL_SCALARS},
        background=r.background,
        text=_json_decode(r.text) if r.HasField("text") else None,
        temperature=r.temperature,
        top_p=r.top_p,
        presence_penalty=r.presence_penalty,
        frequency_penalty=r.frequency_penalty,
        top_logprobs=r.top_logprobs,
        truncation=r.truncation,  # type: ignore[arg-type]
        reasoning=ResponseReasoning(effort=_opt(rs, "effort"), summary=_opt(rs, "summary")),
        service_tier=r.service_tier,
        id=r.id,
        created_at=r.created_at,
        status=r.status,  # type: ignore[arg-type]
        model=r.model,
        output=[_output_from_proto(o) for o in r.output],
        parallel_tool_calls=r.parallel_tool_calls,
        tool_choice=choice_from_proto(r.tool_choice) if r.HasField("tool_choice") else "auto",
        tools=[
            FunctionTool(
                name=t.name,
                description=_opt(t, "description"),
                strict=_opt(t, "strict"),
                parameters=_json_decode(t.parameters) if t.HasField("parameters") else None,
            )
            for t in r.tools
        ],
        store=r.store,
        metadata=dict(r.metadata),
        usage=None
        if u is None
        else Usage(
            input_tokens=u.input_tokens,
            output_tokens=u.output_tokens,
            total_tokens=u.total_tokens,
            input_tokens_details=InputTokensDetails(
                cached_tokens=u.input_tokens_details.cached_tokens,
                cache_write_tokens=u.input_tokens_details.cache_write_tokens,
            ),
            output_tokens_details=OutputTokensDetails(reasoning_tokens=u.output_tokens_details.reasoning_tokens),
        ),
        error={"code": r.error.code, "message": r.error.message} if r.HasField("error") else None,
        incomplete_details={"reason": r.incomplete_details.reason} if r.HasField("incomplete_details") else None,
        turnbench=None
        if x is None
        else TurnbenchExt(
            stages={
                k: StageStat(wall_ns=s.wall_ns, cpu_ns=s.cpu_ns, items=s.items, tokens=s.tokens, chars=s.chars)
                for k, s in x.stages.items()
            },
            state=x.state,
            engine=x.engine,
            prefill_tokens=x.prefill_tokens,
        ),
    )


# ---------------------------------------------------------------------------------------------- events

_ToProto = Callable[[Any, pb.ServerEvent], None]


def _head(ev: Any, out: Any) -> Any:
    out.sequence_number = ev.sequence_number
    if ev.stream_id is not None:
        out.stream_id = ev.stream_id
    return out


def _lifecycle(field: str) -> _ToProto:
    def fill(ev: Any, se: pb.ServerEvent) -> None:
        response_to_proto(ev.response, _head(ev, getattr(se, field)).response)

    return fill


def _item_event(field: str) -> _ToProto:
    def fill(ev: Any, se: pb.ServerEvent) -> None:
        m = _head(ev, getattr(se, field))
        m.output_index = ev.output_index
        _output_to_proto(ev.item, m.item)

    return fill


def _part_event(field: str) -> _ToProto:
    def fill(ev: Any, se: pb.ServerEvent) -> None:
        m = _head(ev, getattr(se, field))
        m.item_id, m.output_index, m.content_index = ev.item_id, ev.output_index, ev.content_index
        _text_to_proto(ev.part, m.part)

    return fill


def _text_delta(ev: OutputTextDelta, se: pb.ServerEvent) -> None:  # the hot path: one per chunk
    m = _head(ev, se.output_text_delta)
    m.item_id, m.output_index, m.content_index, m.delta = ev.item_id, ev.output_index, ev.content_index, ev.delta
    if ev.logprobs:
        m.logprobs.extend([json_text(x) for x in ev.logprobs])


def _text_done(ev: OutputTextDone, se: pb.ServerEvent) -> None:
    m = _head(ev, se.output_text_done)
    m.item_id, m.output_index, m.content_index, m.text = ev.item_id, ev.output_index, ev.content_index, ev.text
    if ev.logprobs:
        m.logprobs.extend([json_text(x) for x in ev.logprobs])


def _args_delta(ev: FunctionCallArgumentsDelta, se: pb.ServerEvent) -> None:
    m = _head(ev, se.function_call_arguments_delta)
    m.item_id, m.output_index, m.delta = ev.item_id, ev.output_index, ev.delta


def _args_done(ev: FunctionCallArgumentsDone, se: pb.ServerEvent) -> None:
    m = _head(ev, se.function_call_arguments_done)
    m.item_id, m.output_index, m.arguments = ev.item_id, ev.output_index, ev.arguments


def _stream_error(ev: ErrorEvent, se: pb.ServerEvent) -> None:
    m = _head(ev, se.error)
    m.message = ev.message
    if ev.code is not None:
        m.code = ev.code
    if ev.param is not None:
        m.param = ev.param


def _ws_error(ev: WsErrorEvent, se: pb.ServerEvent) -> None:
    m = se.ws_error
    if ev.sequence_number is not None:
        m.sequence_number = ev.sequence_number
    if ev.stream_id is not None:
        m.stream_id = ev.stream_id
    m.status, m.error.type, m.error.message = ev.status, ev.error.type, ev.error.message
    if ev.error.code is not None:
        m.error.code = ev.error.code
    if ev.error.param is not None:
        m.error.param = ev.error.param


def _steer_ref_to_proto(ref: SteerRef, out: pb.SteerRef) -> None:
    """The handed-back ``input`` is typed when it comes back from the proto exactly, else JSON text: it may be
    what was refused (an empty item, one missing its content)."""
    out.previous_response_id = ref.previous_response_id
    if ref.id is not None:
        out.id = ref.id
    if ref.input is None:
        return
    try:
        input_to_proto(ref.input, out)
        if input_from_proto(out) == ref.input:
            return
    except Unrepresentable:
        pass
    out.json = json_text(ref.input)  # a oneof: replaces whatever was set


def _steer_accepted(ev: SteerAccepted, se: pb.ServerEvent) -> None:
    _steer_ref_to_proto(ev.steer, _head(ev, se.steer_accepted).steer)


def _steer_pending(ev: SteerPending, se: pb.ServerEvent) -> None:
    m = _head(ev, se.steer_pending)
    _steer_ref_to_proto(ev.steer, m.steer)
    m.reason = ev.reason
    for stub in ev.required_input:  # {type: "function_call_output", call_id, name}
        m.required_input.add(call_id=stub["call_id"], name=stub["name"])


def _steer_failed(ev: SteerFailed, se: pb.ServerEvent) -> None:
    m = _head(ev, se.steer_failed)
    _steer_ref_to_proto(ev.steer, m.steer)
    m.error.code, m.error.message, m.error.type = ev.error.code, ev.error.message, ev.error.type


_TO_PROTO: dict[type, _ToProto] = {
    ResponseCreated: _lifecycle("created"),
    ResponseInProgress: _lifecycle("in_progress"),
    ResponseCompleted: _lifecycle("completed"),
    ResponseDone: _lifecycle("done"),
    ResponseFailed: _lifecycle("failed"),
    ResponseIncomplete: _lifecycle("incomplete"),
    OutputItemAdded: _item_event("output_item_added"),
    OutputItemDone: _item_event("output_item_done"),
    ContentPartAdded: _part_event("content_part_added"),
    ContentPartDone: _part_event("content_part_done"),
    OutputTextDelta: _text_delta,
    OutputTextDone: _text_done,
    FunctionCallArgumentsDelta: _args_delta,
    FunctionCallArgumentsDone: _args_done,
    ErrorEvent: _stream_error,
    WsErrorEvent: _ws_error,
    SteerAccepted: _steer_accepted,
    SteerPending: _steer_pending,
    SteerFailed: _steer_failed,
}


def event_to_proto(ev: ServerEventStruct) -> pb.ServerEvent:
    """One core event as a typed ``ServerEvent``."""
    se = pb.ServerEvent()
    _TO_PROTO[type(ev)](ev, se)
    return se


def _opt(m: Any, field: str) -> Any:
    return getattr(m, field) if m.HasField(field) else None


def _common(m: Any) -> dict[str, Any]:
    return {"sequence_number": m.sequence_number, "stream_id": _opt(m, "stream_id")}


_FromProto = Callable[[Any], ServerEventStruct]


def _lifecycle_from(
    cls: type[
        ResponseCreated | ResponseInProgress | ResponseCompleted | ResponseFailed | ResponseIncomplete | ResponseDone
    ],
) -> _FromProto:
    return lambda m: cls(**_common(m), response=response_from_proto(m.response))


def _item_from(cls: type[OutputItemAdded | OutputItemDone]) -> _FromProto:
    return lambda m: cls(**_common(m), output_index=m.output_index, item=_output_from_proto(m.item))


def _part_from(cls: type[ContentPartAdded | ContentPartDone]) -> _FromProto:
    return lambda m: cls(
        **_common(m),
        item_id=m.item_id,
        output_index=m.output_index,
        content_index=m.content_index,
        part=_text_from_proto(m.part),
    )


def _steer_ref_from_proto(m: pb.SteerRef) -> SteerRef:
    value = _json_decode(m.json) if m.WhichOneof("input") == "json" else input_from_proto(m)
    return SteerRef(id=_opt(m, "id"), previous_response_id=m.previous_response_id, input=value)


def _steer_pending_from(m: pb.SteerPending) -> SteerPending:
    return SteerPending(
        **_common(m),
        steer=_steer_ref_from_proto(m.steer),
        reason=m.reason,
        required_input=[
            {"type": "function_call_output", "call_id": r.call_id, "name": r.name} for r in m.required_input
        ],
    )


_FROM_PROTO: dict[str, _FromProto] = {
    "created": _lifecycle_from(ResponseCreated),
    "in_progress": _lifecycle_from(ResponseInProgress),
    "completed": _lifecycle_from(ResponseCompleted),
    "done": _lifecycle_from(ResponseDone),
    "failed": _lifecycle_from(ResponseFailed),
    "incomplete": _lifecycle_from(ResponseIncomplete),
    "output_item_added": _item_from(OutputItemAdded),
    "output_item_done": _item_from(OutputItemDone),
    "content_part_added": _part_from(ContentPartAdded),
    "content_part_done": _part_from(ContentPartDone),
    "output_text_delta": lambda m: OutputTextDelta(
        **_common(m),
        item_id=m.item_id,
        output_index=m.output_index,
        content_index=m.content_index,
        delta=m.delta,
        logprobs=[_json_decode(x) for x in m.logprobs],
    ),
    "output_text_done": lambda m: OutputTextDone(
        **_common(m),
        item_id=m.item_id,
        output_index=m.output_index,
        content_index=m.content_index,
        text=m.text,
        logprobs=[_json_decode(x) for x in m.logprobs],
    ),
    "function_call_arguments_delta": lambda m: FunctionCallArgumentsDelta(
        **_common(m), item_id=m.item_id, output_index=m.output_index, delta=m.delta
    ),
    "function_call_arguments_done": lambda m: FunctionCallArgumentsDone(
        **_common(m), item_id=m.item_id, output_index=m.output_index, arguments=m.arguments
    ),
    "error": lambda m: ErrorEvent(**_common(m), code=_opt(m, "code"), message=m.message, param=_opt(m, "param")),
    "ws_error": lambda m: WsErrorEvent(
        status=m.status,
        stream_id=_opt(m, "stream_id"),
        sequence_number=_opt(m, "sequence_number"),
        error=WsErrorDetail(
            type=m.error.type, code=_opt(m.error, "code"), message=m.error.message, param=_opt(m.error, "param")
        ),
    ),
    "steer_accepted": lambda m: SteerAccepted(**_common(m), steer=_steer_ref_from_proto(m.steer)),
    "steer_pending": _steer_pending_from,
    "steer_failed": lambda m: SteerFailed(
        **_common(m),
        steer=_steer_ref_from_proto(m.steer),
        error=SteerError(code=m.error.code, message=m.error.message, type=m.error.type),
    ),
}


def event_type(se: pb.ServerEvent) -> str | None:
    """The JSON ``type`` of a typed event (None for an empty message or the json variant)."""
    kind = se.WhichOneof("event")
    return None if kind is None or kind == "json" else EVENT_TYPES[kind]


def event_from_proto(se: pb.ServerEvent) -> ServerEventStruct:
    """A typed ``ServerEvent`` as the core's struct. Raises ``ValueError`` for the json variant or none."""
    kind = se.WhichOneof("event")
    if kind is None or kind == "json":
        raise ValueError(f"not a typed event: {kind!r}")
    return _FROM_PROTO[kind](getattr(se, kind))
