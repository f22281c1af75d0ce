"""The Responses API objects turnbench speaks, and their JSON codec.

Validation library: **msgspec**. It decodes and validates JSON straight into typed structs in one pass in C
(about 5-10x faster than pydantic v2 on these payloads, and no intermediate dict), it encodes structs
without reflection, and its error messages carry a JSON path (``at `$.input[3].call_id```), which we
turn into the Responses error's ``param``.

Two layers, matching the pipeline's ``parse`` and ``validate`` stages (docs/concepts/pipeline.md):

* :class:`ResponseCreate` is the request envelope. ``parse`` decodes the bytes into it; the top-level fields
  are typed (a wrong type fails here) but each input item stays a plain ``dict``.
* ``validate`` converts each input item into its typed struct (:data:`InputItem`) with
  :func:`convert_item`. With the connection cache only the *new* items go through it: that is the
  incremental check the WebSocket mode is about.

Sampling and routing parameters the scripted model has no use for (``temperature``, ``top_p``, ``reasoning``,
``service_tier``, ``user`` ...) are typed, checked and echoed on the :class:`Response`, as the real API does for a
model without those features; a few the SDKs send that turnbench does not implement at all (``include``,
``prompt``, ``conversation`` ...) are accepted and ignored. Output objects (:class:`Response`, output items,
events) are what the servers emit; every event struct has ``type`` as its tag and ``sequence_number``.
"""

from __future__ import annotations

import binascii
import re
from typing import Any, Literal, TypeAlias

import msgspec

from turnbench.errors import InvalidRequestError, TurnbenchError

# ---------------------------------------------------------------------------------------------- request


MAX_SCHEMA_DEPTH = 64  # nesting of a tool's parameters or a text.format schema; echoed back, so clients parse it


def nesting_depth(value: Any, limit: int) -> int:
    """How deeply ``value``'s lists and dicts nest (a scalar is 0), counted up to ``limit + 1`` and no further;
    iterative, so a deep value costs no recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        children = v.values() if isinstance(v, dict) else v if isinstance(v, list) else None
        if children is None:
            continue
        deepest = max(deepest, d)
        if d > limit:
            return d
        stack.extend((c, d + 1) for c in children if isinstance(c, dict | list))
    return deepest


class FunctionTool(msgspec.Struct, kw_only=True):
    """A function tool definition, as in ``tools`` of ``response.create``."""

    type: Literal["function"] = "function"
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    def __post_init__(self) -> None:
        if self.parameters is not None and nesting_depth(self.parameters, MAX_SCHEMA_DEPTH) > MAX_SCHEMA_DEPTH:
            raise ValueError(f"parameters are nested more than {MAX_SCHEMA_DEPTH} levels deep")


ServiceTier: TypeAlias = Literal["auto", "default", "flex", "scale", "priority", "fast", "ultrafast"]
Truncation: TypeAlias = Literal["auto", "disabled"]
CacheRetention: TypeAlias = Literal["in_memory", "24h"]


class Reasoning(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The request's ``reasoning`` options (the SDK's ``Reasoning``): checked, then echoed on the response; the
    scripted model does not reason (``output_tokens_details.reasoning_tokens`` stays 0)."""

    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"] | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None
    generate_summary: Literal["auto", "concise", "detailed"] | None = None  # deprecated alias of summary
    context: Literal["auto", "current_turn", "all_turns"] | None = None
    mode: str | None = None


class ResponseCreate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The body of ``POST /v1/responses``; over WebSocket the same fields sit flat beside ``type``.

    The sampling and routing parameters (``temperature`` … ``user``) are typed, range-checked in ``validate``
    and echoed on the response. Parameters of the real API that turnbench does not implement are accepted and
    ignored (the block at the end); a name that is not a Responses parameter at all is an
    ``unknown_parameter`` error, as the real API answers.
    """

    model: str
    input: str | list[dict[str, Any]] = []
    instructions: str | None = None
    tools: list[FunctionTool] = []
    tool_choice: str | dict[str, Any] = "auto"
    previous_response_id: str | None = None
    store: bool = True
    stream: bool = False
    metadata: dict[str, str] = {}
    max_output_tokens: int | None = None
    parallel_tool_calls: bool = True
    # WebSocket-only (docs/protocol/websocket-mode.md, Client events); harmless elsewhere
    type: str | None = None
    stream_id: str | None = None
    generate: bool = True
    # option A (docs/guides/option-a.md; never shipped): the whole rollout is this one response, paused at each tool
    # call
    # (``response.done``) until the client's ``response.append``. Persistent connections only.
    long_response: bool = False
    # checked and echoed on the response (docs/protocol/http-sse.md, The response object)
    temperature: float | None = None
    top_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    top_logprobs: int | None = None
    max_tool_calls: int | None = None
    truncation: Truncation | None = None
    reasoning: Reasoning | None = None
    service_tier: ServiceTier | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: CacheRetention | None = None
    safety_identifier: str | None = None
    user: str | None = None
    # accepted and ignored: real Responses parameters the SDKs may send (background and text are acted on; a
    # test reads the installed SDK's responses.create signature, so a new parameter fails a test, not a user)
    access_programs: Any = None
    background: bool | None = None
    background_options: Any = None
    context_management: Any = None
    conversation: Any = None
    image: Any = None
    include: Any = None
    moderation: Any = None
    prompt: Any = None
    prompt_cache_options: Any = None
    stream_options: Any = None
    text: Any = None


class InputTokensRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The body of ``POST /v1/responses/input_tokens`` (the SDK's ``InputTokenCountParams``): what
    ``response.create`` would count as its input tokens. Only ``input``, ``instructions``, ``tools`` and
    ``previous_response_id`` change the count; the rest is accepted as the real API does."""

    model: str | None = None
    input: str | list[dict[str, Any]] | None = None
    instructions: str | None = None
    tools: list[FunctionTool] | None = None
    previous_response_id: str | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    truncation: Truncation | None = None
    reasoning: Reasoning | None = None
    text: Any = None
    conversation: Any = None
    personality: Any = None


class CompactRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The body of ``POST /v1/responses/compact`` (the SDK's ``ResponseCompactParams``)."""

    model: str | None
    input: str | list[dict[str, Any]] | None = None
    instructions: str | None = None
    previous_response_id: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: CacheRetention | None = None
    safety_identifier: str | None = None
    service_tier: ServiceTier | None = None
    image: Any = None
    prompt_cache_options: Any = None


# ---------------------------------------------------------------------------------------------- items


class InputText(msgspec.Struct, tag="input_text", kw_only=True):
    text: str


class OutputText(msgspec.Struct, tag="output_text", kw_only=True):
    text: str
    annotations: list[Any] = []
    logprobs: list[Any] = []


class InputImage(msgspec.Struct, tag="input_image", kw_only=True):
    """An image part of an input message: a URL (``https://…`` or a ``data:image/…;base64,`` URL) or a file id.
    The sim never looks at it: it costs a fixed number of tokens per ``detail`` (:data:`IMAGE_TOKENS`)."""

    detail: Literal["low", "high", "auto", "original"] = "auto"
    image_url: str | None = None
    file_id: str | None = None


class InputFile(msgspec.Struct, tag="input_file", kw_only=True):
    """A file part of an input message: its base64 ``file_data`` (bare or as a data URL), a ``file_id`` or a
    ``file_url``. Text data costs the tokenizer's count of its text, anything else :data:`FILE_TOKENS`."""

    file_data: str | None = None
    file_id: str | None = None
    file_url: str | None = None
    filename: str | None = None
    detail: Literal["auto", "low", "high"] | None = None

    def text(self) -> str | None:
        """The file's text when ``file_data`` holds UTF-8 text (no NUL byte), else None (binary, or by reference)."""
        if self.file_data is None:
            return None
        data = _base64_payload(self.file_data)
        try:
            raw = binascii.a2b_base64(data, strict_mode=True)
            text = raw.decode("utf-8")
        except (binascii.Error, ValueError):
            return None
        return None if "\x00" in text else text


IMAGE_TOKENS: dict[str, int] = {"low": 85, "high": 765, "auto": 765, "original": 765}
"""Input tokens one image costs, per ``detail``: a 512×512 thumbnail at ``low``, a 1024×1024 image in four
512-pixel tiles (85 + 4 × 170) otherwise, as the real API counts GPT-4o-class models. The sim never decodes it."""
FILE_TOKENS = 1024
"""Input tokens a file costs when its text cannot be read (binary data, a ``file_id`` or a ``file_url``)."""

ContentPart: TypeAlias = InputText | OutputText | InputImage | InputFile
_IMAGE_MIME = re.compile(r"data:image/(png|jpeg|jpg|gif|webp);base64,", re.I)
_DATA_URL = re.compile(r"data:[\w.+-]+/[\w.+-]+(;[\w.+-]+=[\w.+-]+)*;base64,", re.I)


def _base64_payload(value: str) -> str:
    """``value`` without a leading ``data:…;base64,`` header."""
    m = _DATA_URL.match(value)
    return value[m.end() :] if m else value


def _is_base64(data: str) -> bool:
    try:
        binascii.a2b_base64(data, strict_mode=True)
    except (binascii.Error, ValueError):
        return False
    return bool(data)


def _is_http_url(value: str) -> bool:
    return (value.startswith(("https://", "http://"))) and len(value.split("://", 1)[1].split("/", 1)[0]) > 0


def _source(part: Any, where: str, names: tuple[str, ...]) -> str:
    """The one of ``names`` ``part`` sets; refuse none (``missing_required_parameter``) or several."""
    given = [n for n in names if getattr(part, n) is not None]
    if not given:
        alts = " or ".join(f"'{n}'" for n in names)
        raise InvalidRequestError(
            f"Missing required parameter: '{where}.{names[0]}'. A {part.__struct_config__.tag} part needs {alts}.",
            f"{where}.{names[0]}",
            code="missing_required_parameter",
        )
    if len(given) > 1:
        raise InvalidRequestError(
            f"Invalid '{where}': give only one of {', '.join(repr(n) for n in given)}.",
            f"{where}.{given[1]}",
            code="invalid_value",
        )
    return given[0]


def check_part(part: ContentPart, where: str) -> None:
    """An image or file part's source: present, one only, and well formed (``where``: its path, e.g.
    ``input[0].content[1]``). Raises: :class:`InvalidRequestError` naming the member."""
    if isinstance(part, InputImage):
        name = _source(part, where, ("image_url", "file_id"))
        value = part.image_url if name == "image_url" else part.file_id
        assert value is not None
        if name == "file_id":
            ok = bool(value)
        elif value.startswith("data:"):
            m = _IMAGE_MIME.match(value)
            ok = m is not None and _is_base64(value[m.end() :])
        else:
            ok = _is_http_url(value)
        if not ok:
            raise InvalidRequestError(
                f"Invalid '{where}.{name}'. Expected a fully qualified http(s) URL or a base64-encoded data URL with "
                f"an image MIME type (png, jpeg, gif or webp), e.g. 'data:image/png;base64,aW1n'."
                if name == "image_url"
                else f"Invalid '{where}.file_id': expected a non-empty file id.",
                f"{where}.{name}",
                code="invalid_value",
            )
    elif isinstance(part, InputFile):
        name = _source(part, where, ("file_data", "file_id", "file_url"))
        value = getattr(part, name)
        if name == "file_data":
            ok = _is_base64(_base64_payload(value))
        elif name == "file_url":
            ok = _is_http_url(value)
        else:
            ok = bool(value)
        if not ok:
            what = {
                "file_data": "base64-encoded data, bare or as a data URL (data:application/pdf;base64,…)",
                "file_url": "a fully qualified http(s) URL",
                "file_id": "a non-empty file id",
            }[name]
            raise InvalidRequestError(
                f"Invalid '{where}.{name}': expected {what}.", f"{where}.{name}", code="invalid_value"
            )


class MessageItem(msgspec.Struct, tag="message", kw_only=True):
    """A message; as input the SDK may omit ``type`` (EasyInputMessage), :func:`convert_item` fills it."""

    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[ContentPart]
    id: str | None = None
    status: str | None = None


class FunctionCallItem(msgspec.Struct, tag="function_call", kw_only=True):
    call_id: str
    name: str
    arguments: str
    id: str | None = None
    status: str | None = None


class FunctionCallOutputItem(msgspec.Struct, tag="function_call_output", kw_only=True):
    call_id: str
    output: str | list[dict[str, Any]]
    id: str | None = None
    status: str | None = None


class CompactionItem(msgspec.Struct, tag="compaction", kw_only=True):
    """A compaction item (``POST /v1/responses/compact``) sent back as input: ``validate`` expands it into the
    conversation it stands for (:mod:`turnbench.compaction`), so it never reaches the context itself."""

    encrypted_content: str
    id: str | None = None
    created_by: str | None = None


InputItem: TypeAlias = MessageItem | FunctionCallItem | FunctionCallOutputItem
_ITEM_TYPES: dict[str, type[Any]] = {
    "message": MessageItem,
    "function_call": FunctionCallItem,
    "function_call_output": FunctionCallOutputItem,
}
_SUPPORTED = ", ".join([*_ITEM_TYPES, "compaction"])
_PATH = re.compile(r"at `\$(.*)`")


def _param(prefix: str, exc: msgspec.ValidationError) -> str:
    m = _PATH.search(str(exc))
    return prefix + (m.group(1) if m else "")


def item_kind(raw: Any) -> Any:
    """An input item's ``type`` as sent (a message may omit it), or None for what is not an object."""
    return raw.get("type", "message") if isinstance(raw, dict) else None


def convert_item(raw: dict[str, Any], index: int) -> InputItem:
    """Validate one input item (``input[index]``) into its struct; raise :class:`InvalidRequestError`."""
    if not isinstance(raw, dict):
        raise InvalidRequestError(f"Invalid type for 'input[{index}]': expected an object.", f"input[{index}]")
    kind = raw.get("type", "message")
    cls = _ITEM_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise InvalidRequestError(
            f"Invalid value for 'input[{index}].type': {str(kind)[:80]!r} is not a supported input item type "
            f"(supported: {_SUPPORTED}).",
            f"input[{index}].type",
        )
    if "type" not in raw:
        raw = {**raw, "type": kind}
    item: InputItem = _convert(raw, cls, f"input[{index}]")
    if isinstance(item, MessageItem) and not isinstance(item.content, str):
        for j, part in enumerate(item.content):
            if isinstance(part, InputImage | InputFile):
                check_part(part, f"input[{index}].content[{j}]")
    return item


def convert_compaction(raw: dict[str, Any], index: int) -> CompactionItem:
    """Validate a ``compaction`` input item's shape (its content is checked where it is expanded)."""
    item: CompactionItem = _convert(raw, CompactionItem, f"input[{index}]")
    return item


def _convert(raw: dict[str, Any], cls: type[Any], where: str) -> Any:
    try:
        return msgspec.convert(raw, cls, strict=True)
    except msgspec.ValidationError as exc:
        param = _param(where, exc)
        missing = re.search(r"missing required field `(\w+)`", str(exc))
        if missing and cls is CompactionItem:
            param = f"{param}.{missing.group(1)}"
        raise InvalidRequestError(f"Invalid '{where}': {exc}", param) from exc
    except RecursionError as exc:
        raise InvalidRequestError(f"Invalid '{where}': nested too deeply.", where) from exc


def part_text(part: ContentPart) -> str:
    """The text a content part contributes to the context (an image: none; a file: its text, if it is text)."""
    if isinstance(part, InputText | OutputText):
        return part.text
    if isinstance(part, InputFile):
        return part.text() or ""
    return ""


def item_text(item: InputItem | OutputItem) -> str:
    """The text an item contributes to the model context (what ``render`` tokenizes and ``safety`` checks)."""
    if isinstance(item, MessageItem | OutputMessage):
        if isinstance(item.content, str):
            return item.content
        return "".join(map(part_text, item.content))
    if isinstance(item, FunctionCallItem | OutputFunctionCall):
        return f"{item.name}({item.arguments})"
    out = item.output
    if isinstance(out, str):
        return out
    return "".join(str(p.get("text", "")) for p in out)


def has_media(item: InputItem) -> bool:
    """Whether ``item`` is a message with image or file parts (rendered part by part, not as one text)."""
    return (
        isinstance(item, MessageItem)
        and not isinstance(item.content, str)
        and any(isinstance(p, InputImage | InputFile) for p in item.content)
    )


# ---------------------------------------------------------------------------------------------- outputs


class OutputMessage(msgspec.Struct, tag="message", kw_only=True):
    id: str
    status: str
    role: Literal["assistant"] = "assistant"
    content: list[OutputText] = []


class OutputFunctionCall(msgspec.Struct, tag="function_call", kw_only=True):
    id: str
    call_id: str
    name: str
    arguments: str
    status: str


OutputItem: TypeAlias = OutputMessage | OutputFunctionCall


def output_as_input(item: OutputItem) -> InputItem:
    """An output item as it would appear in the next request's history (full resend)."""
    if isinstance(item, OutputFunctionCall):
        return FunctionCallItem(call_id=item.call_id, name=item.name, arguments=item.arguments, id=item.id)
    return MessageItem(role="assistant", content=list(item.content), id=item.id)


class InputTokensDetails(msgspec.Struct, kw_only=True):
    cached_tokens: int = 0
    cache_write_tokens: int = 0


class OutputTokensDetails(msgspec.Struct, kw_only=True):
    reasoning_tokens: int = 0


class Usage(msgspec.Struct, kw_only=True):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class StageStat(msgspec.Struct, kw_only=True, array_like=False):
    """One pipeline stage of one response: wall and CPU time (ns) and how much it processed."""

    wall_ns: int = 0
    cpu_ns: int = 0
    items: int = 0
    tokens: int = 0
    chars: int = 0


class TurnbenchExt(msgspec.Struct, kw_only=True):
    """Extension field ``turnbench`` on the Response object; the official SDK keeps unknown fields."""

    stages: dict[str, StageStat] = {}
    state: str = "full"  # how the conversation was resolved: one of settings.STATE_STRATEGIES
    engine: str = ""
    prefill_tokens: int = 0  # tokens the engine had to prefill (not in its KV/prefix cache)


class ResponseReasoning(msgspec.Struct, kw_only=True):
    """``reasoning`` on the response: the request's effort and summary echoed (both null when it set none, as
    the real API answers for a model that does not reason)."""

    effort: str | None = None
    summary: str | None = None


def _text_config() -> dict[str, Any]:
    return {"format": {"type": "text"}, "verbosity": "medium"}


class Response(msgspec.Struct, kw_only=True):
    """The Response object: every member the installed SDK's ``Response`` declares, plus ``store``,
    ``presence_penalty`` and ``frequency_penalty`` (the real API sends them) and turnbench's ``turnbench``
    extension (docs/protocol/http-sse.md, The response object). The defaults are what the real API answers for a
    model without the feature; a request's own values are echoed (:meth:`ResponsesService._new_response`)."""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["in_progress", "completed", "failed", "incomplete", "queued", "cancelled"]
    model: str
    output: list[OutputItem] = []
    parallel_tool_calls: bool = True
    tool_choice: str | dict[str, Any] = "auto"
    tools: list[FunctionTool] = []
    previous_response_id: str | None = None
    store: bool = False
    instructions: str | None = None
    metadata: dict[str, str] = {}
    max_output_tokens: int | None = None
    usage: Usage | None = None
    error: dict[str, Any] | None = None
    incomplete_details: dict[str, Any] | None = None
    background: bool = False
    text: dict[str, Any] | None = msgspec.field(default_factory=_text_config)
    completed_at: int | None = None  # unix seconds; set when the status becomes completed
    temperature: float = 1.0
    top_p: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    top_logprobs: int = 0
    max_tool_calls: int | None = None
    truncation: Truncation = "disabled"
    reasoning: ResponseReasoning = msgspec.field(default_factory=ResponseReasoning)
    service_tier: str = "default"
    prompt_cache_key: str | None = None
    prompt_cache_retention: CacheRetention | None = None
    safety_identifier: str | None = None
    user: str | None = None
    # features no turnbench model has: always null, as the real API sends them for such a model
    access_programs: None = None
    conversation: None = None
    image: None = None
    input_transformations: None = None
    moderation: None = None
    prompt: None = None
    prompt_cache_diagnostics: None = None
    prompt_cache_options: None = None
    tool_usage: None = None
    turnbench: TurnbenchExt | None = None


class CompactionOutput(msgspec.Struct, kw_only=True, tag_field="type", tag="compaction"):
    """The compaction item ``POST /v1/responses/compact`` answers with; sent back as input it stands for the
    conversation it replaced (:class:`CompactionItem`)."""

    id: str
    encrypted_content: str


class CompactedResponse(msgspec.Struct, kw_only=True):
    """The answer of ``POST /v1/responses/compact`` (the SDK's ``CompactedResponse``): every user message of the
    conversation, verbatim, then one compaction item standing for everything else."""

    id: str
    object: Literal["response.compaction"] = "response.compaction"
    created_at: int
    output: list[dict[str, Any] | CompactionOutput]
    usage: Usage
    image: None = None
    safety_identifier: str | None = None
    service_tier: str | None = None


class InputTokenCount(msgspec.Struct, kw_only=True):
    """The answer of ``POST /v1/responses/input_tokens`` (the SDK's ``InputTokenCountResponse``)."""

    object: Literal["response.input_tokens"] = "response.input_tokens"
    input_tokens: int


# ---------------------------------------------------------------------------------------------- events
# `stream_id` is present only on events of a named WebSocket lane (docs/protocol/websocket-mode.md, Server events):
# omit_defaults drops the None.


class _Event(msgspec.Struct, kw_only=True, tag_field="type", omit_defaults=True):
    sequence_number: int
    stream_id: str | None = None


class ResponseCreated(_Event, tag="response.created"):
    response: Response


class ResponseInProgress(_Event, tag="response.in_progress"):
    response: Response


class ResponseCompleted(_Event, tag="response.completed"):
    response: Response


class ResponseFailed(_Event, tag="response.failed"):
    response: Response


class ResponseIncomplete(_Event, tag="response.incomplete"):
    response: Response


class ResponseDone(_Event, tag="response.done"):
    """Option A: a long response paused at its tool call(s), waiting for ``response.append``. ``response``:
    status ``requires_action``, its ``output`` this segment's items only, its usage and stages the segment's."""

    response: Response


class ResponseAppend(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Option A's client event: the tool outputs (any input items) appended to the paused response
    ``response_id``, which then resumes sampling."""

    type: str
    response_id: str
    input: str | list[dict[str, Any]]


class OutputItemAdded(_Event, tag="response.output_item.added"):
    output_index: int
    item: OutputItem


class OutputItemDone(_Event, tag="response.output_item.done"):
    output_index: int
    item: OutputItem


class ContentPartAdded(_Event, tag="response.content_part.added"):
    item_id: str
    output_index: int
    content_index: int
    part: OutputText


class ContentPartDone(_Event, tag="response.content_part.done"):
    item_id: str
    output_index: int
    content_index: int
    part: OutputText


class OutputTextDelta(_Event, tag="response.output_text.delta"):
    item_id: str
    output_index: int
    content_index: int
    delta: str
    logprobs: list[Any]


class OutputTextDone(_Event, tag="response.output_text.done"):
    item_id: str
    output_index: int
    content_index: int
    text: str
    logprobs: list[Any]


class FunctionCallArgumentsDelta(_Event, tag="response.function_call_arguments.delta"):
    item_id: str
    output_index: int
    delta: str


class FunctionCallArgumentsDone(_Event, tag="response.function_call_arguments.done"):
    item_id: str
    output_index: int
    arguments: str


class ErrorEvent(_Event, tag="error"):
    """The SSE in-stream error: ``{type, code, message, param, sequence_number}``."""

    code: str | None
    message: str
    param: str | None


class WsErrorDetail(msgspec.Struct, kw_only=True):
    type: str
    code: str | None
    message: str
    param: str | None


class WsErrorEvent(msgspec.Struct, kw_only=True, tag_field="type", tag="error", omit_defaults=True):
    """The WebSocket error frame: ``{type:"error", status, error:{type, code, message, param}, stream_id?}``."""

    status: int
    error: WsErrorDetail
    stream_id: str | None = None
    sequence_number: int | None = None


class ResponseSteer(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``response.steer`` (docs/protocol/websocket-mode.md, Client events): queue user input for a continuation of an
    active response on this
    connection. Only these three members; the target response decides the lane."""

    type: str
    previous_response_id: str
    input: str | list[dict[str, Any]]


class SteerRef(msgspec.Struct, kw_only=True, omit_defaults=True):
    id: str | None = None
    previous_response_id: str
    input: str | list[dict[str, Any]] | None = None  # only on response.steer.failed: the input handed back


class SteerError(msgspec.Struct, kw_only=True):
    code: str
    message: str
    type: str = "invalid_request_error"


class SteerAccepted(msgspec.Struct, kw_only=True, tag_field="type", tag="response.steer.accepted", omit_defaults=True):
    sequence_number: int
    steer: SteerRef
    stream_id: str | None = None


class SteerFailed(msgspec.Struct, kw_only=True, tag_field="type", tag="response.steer.failed", omit_defaults=True):
    sequence_number: int
    steer: SteerRef
    error: SteerError
    stream_id: str | None = None


class SteerPending(msgspec.Struct, kw_only=True, tag_field="type", tag="response.steer.pending", omit_defaults=True):
    sequence_number: int
    steer: SteerRef
    reason: str
    required_input: list[dict[str, Any]]
    stream_id: str | None = None


_steer_decoder = msgspec.json.Decoder(ResponseSteer)
_append_decoder = msgspec.json.Decoder(ResponseAppend)


def ws_error_event(err: TurnbenchError, stream_id: str | None = None) -> WsErrorEvent:
    """The WebSocket/gRPC-Connect ``error`` frame for ``err`` (docs/protocol/websocket-mode.md, Server events), on
    ``stream_id``'s lane."""
    return WsErrorEvent(
        status=err.http_status,
        stream_id=stream_id,
        error=WsErrorDetail(type=err.type, code=err.code, message=err.message, param=err.param),
    )


Event: TypeAlias = (
    ResponseCreated
    | ResponseInProgress
    | ResponseCompleted
    | ResponseFailed
    | ResponseIncomplete
    | ResponseDone
    | OutputItemAdded
    | OutputItemDone
    | ContentPartAdded
    | ContentPartDone
    | OutputTextDelta
    | OutputTextDone
    | FunctionCallArgumentsDelta
    | FunctionCallArgumentsDone
    | ErrorEvent
)
TERMINAL_EVENTS = (ResponseCompleted, ResponseFailed, ResponseIncomplete, ErrorEvent)
CONTENT_DELTA_TYPES = frozenset({"response.output_text.delta", "response.function_call_arguments.delta"})
TERMINAL_TYPES = frozenset({"response.completed", "response.failed", "response.incomplete", "error"})
TURN_END_TYPES = TERMINAL_TYPES | {"response.done"}
"""Events that end a client's turn: the terminal ones, and option A's pause (the response goes on)."""

# ---------------------------------------------------------------------------------------------- codec

_encoder = msgspec.json.Encoder()
_request_decoder = msgspec.json.Decoder(ResponseCreate)
_input_tokens_decoder = msgspec.json.Decoder(InputTokensRequest)
_compact_decoder = msgspec.json.Decoder(CompactRequest)
_event_decoder = msgspec.json.Decoder(Event)
_response_decoder = msgspec.json.Decoder(Response)


def encode(obj: Any) -> bytes:
    """Encode any struct (event, response, item) as compact JSON bytes."""
    return _encoder.encode(obj)


def decode_request(payload: bytes | str) -> ResponseCreate:
    """Decode a ``response.create`` body; raise :class:`InvalidRequestError` naming the bad ``param``."""
    request: ResponseCreate = _decode_checked(_request_decoder, payload, "request")
    return request


def decode_input_tokens(payload: bytes | str) -> InputTokensRequest:
    """Decode a ``POST /v1/responses/input_tokens`` body; raise :class:`InvalidRequestError`."""
    request: InputTokensRequest = _decode_checked(_input_tokens_decoder, payload, "request")
    return request


def decode_compact(payload: bytes | str) -> CompactRequest:
    """Decode a ``POST /v1/responses/compact`` body; raise :class:`InvalidRequestError`."""
    request: CompactRequest = _decode_checked(_compact_decoder, payload, "request")
    return request


def decode_append(payload: bytes | str) -> ResponseAppend:
    """Decode option A's ``response.append``; raise :class:`InvalidRequestError` naming the bad member."""
    append: ResponseAppend = _decode_checked(_append_decoder, payload, "response.append")
    return append


def _decode_checked(decoder: msgspec.json.Decoder[Any], payload: bytes | str, what: str) -> Any:
    """``decoder.decode(payload)``, every failure an :class:`InvalidRequestError`: an unknown member is
    ``unknown_parameter`` naming it, a missing or mistyped one names its path, bad JSON is ``invalid_json``."""
    try:
        return decoder.decode(payload)
    except msgspec.ValidationError as exc:
        msg = str(exc)
        unknown = re.search(r"unknown field `([^`]+)`", msg)
        where = _param("", exc).lstrip(".")
        if unknown:
            name = f"{where}.{unknown.group(1)}" if where else unknown.group(1)
            raise InvalidRequestError(f"Unknown parameter: '{name}'.", name, code="unknown_parameter") from exc
        m = re.search(r"missing required field `(\w+)`", msg)
        if m:
            param: str | None = f"{where}.{m.group(1)}" if where else m.group(1)
        else:
            param = where or None
        raise InvalidRequestError(f"Invalid {what}: {msg}", param) from exc
    except msgspec.DecodeError as exc:
        raise InvalidRequestError(
            f"We could not parse the JSON body of your request. ({exc})", None, code="invalid_json"
        ) from exc
    except RecursionError as exc:
        raise InvalidRequestError(
            "We could not parse the JSON body of your request: it is nested too deeply.", None, code="invalid_json"
        ) from exc
    except UnicodeDecodeError as exc:
        raise InvalidRequestError(
            f"We could not parse the JSON body of your request: it is not valid UTF-8 (byte {exc.start}).",
            None,
            code="invalid_json",
        ) from exc


class _Envelope(msgspec.Struct):
    """The two members a refused connection event is answered by; every other member is skipped unread."""

    type: Any = None
    stream_id: Any = None
    previous_response_id: Any = None


_envelope_decoder = msgspec.json.Decoder(_Envelope)


def input_item_view(item: Any, fallback_id: str) -> dict[str, Any]:
    """An input item as ``GET /v1/responses/{id}/input_items`` lists it: with an ``id`` and a ``status``, and a
    message's text content as a list of parts (``input_text``, or ``output_text`` for the assistant)."""
    view: dict[str, Any] = to_builtins(item)
    view["id"] = view.get("id") or fallback_id
    if view.get("status") is None:  # an input item sent without one (its member is there, as None)
        view["status"] = "completed"
    if view.get("type") == "message" and isinstance(view.get("content"), str):
        kind = "output_text" if view.get("role") == "assistant" else "input_text"
        view["content"] = [{"type": kind, "text": view["content"]}]
    return view


def peek_envelope(payload: bytes | str) -> tuple[Any, Any, Any]:
    """``(type, stream_id, previous_response_id)`` of an event that failed to decode as a request, best effort
    (``None`` where unreadable). Error path only: msgspec skips the other members without building them."""
    try:
        env = _envelope_decoder.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError, UnicodeDecodeError):
        return None, None, None
    return env.type, env.stream_id, env.previous_response_id


def request_from_builtins(obj: dict[str, Any]) -> ResponseCreate:
    """Build a request from already-decoded builtins (the gRPC json/typed codecs)."""
    try:
        return msgspec.convert(obj, ResponseCreate, strict=True)
    except msgspec.ValidationError as exc:
        raise InvalidRequestError(f"Invalid request: {exc}", _param("", exc).lstrip(".") or None) from exc
    except RecursionError as exc:
        raise InvalidRequestError("Invalid request: a value is nested too deeply.", None) from exc


def decode_event(payload: bytes | str) -> Event:
    """Decode one server event (clients and tests)."""
    event: Event = _event_decoder.decode(payload)
    return event


def decode_response(payload: bytes | str) -> Response:
    return _response_decoder.decode(payload)


def to_builtins(obj: Any) -> Any:
    """Struct → JSON-shaped builtins (dicts, lists, str...), as they would appear on the wire."""
    return msgspec.to_builtins(obj)
