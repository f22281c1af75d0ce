"""Chat Completions over the Responses core: ``POST /v1/chat/completions`` for gateways that bridge the
Responses API onto Chat Completions (docs/guides/gateway-engine.md).

A chat request becomes one stateless ``response.create`` (``store`` false, every message an input item), so it
runs through the same stages and the same model as ``/v1/responses`` and its timings compare::

    system / developer message   a message item of that role
    user message                 a user message: text parts as input_text, image_url as input_image, file as
                                 input_file
    assistant message            its text as an assistant message, each of its tool_calls as a function_call
    tool message                 a function_call_output answering its tool_call_id
    tools                        function tools ({"type": "function", "function": {...}} → flat)
    tool_choice                  the same modes; {"type": "function", "function": {"name"}} → that tool
    max_completion_tokens        max_output_tokens (the older max_tokens too)
    response_format              text.format (json_schema, json_object)
    seed                         metadata.seed of the scripted model, unless the metadata says

The answer goes back as ``chat.completion`` (or ``chat.completion.chunk`` events ending with ``data: [DONE]``,
the last chunk holding the usage when ``stream_options.include_usage``) by :class:`ChatAnswer`. Parameters a
chat request may carry that the scripted model has no use for (``stop``, ``logprobs``, ``logit_bias`` …) are
accepted and ignored, and so are unknown ones, as vLLM does; a malformed one is a 400 in the OpenAI error shape.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

from turnbench.errors import InvalidRequestError
from turnbench.schema import (
    Event,
    FunctionCallArgumentsDelta,
    OutputFunctionCall,
    OutputItemAdded,
    OutputTextDelta,
    Response,
    ResponseCompleted,
    ResponseCreated,
    ResponseIncomplete,
)

__all__ = ["ChatAnswer", "ChatRequest", "decode_chat", "to_responses"]

CHAT_ROLES = ("system", "developer", "user", "assistant", "tool")


class ChatFunction(msgspec.Struct, kw_only=True):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ChatTool(msgspec.Struct, kw_only=True):
    type: str
    function: ChatFunction


class StreamOptions(msgspec.Struct, kw_only=True):
    include_usage: bool = False


class ChatRequest(msgspec.Struct, kw_only=True):
    """The body of ``POST /v1/chat/completions``: the members acted on, typed; any other member is ignored."""

    model: str
    messages: list[dict[str, Any]]
    tools: list[ChatTool] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    n: int | None = None
    user: str | None = None
    metadata: dict[str, str] | None = None
    response_format: dict[str, Any] | None = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None


_decoder = msgspec.json.Decoder(ChatRequest)


def decode_chat(payload: bytes) -> ChatRequest:
    """The chat request in ``payload``. Raises: :class:`InvalidRequestError` naming the member."""
    try:
        req = _decoder.decode(payload)
    except msgspec.ValidationError as exc:
        where = str(exc).rpartition(" - at `$.")
        param = where[2].rstrip("`") if where[1] else None
        raise InvalidRequestError(f"Invalid request: {exc}", param) from exc
    except msgspec.DecodeError as exc:
        raise InvalidRequestError(f"We could not parse the JSON body of your request: {exc}", None) from exc
    if not req.messages:
        raise InvalidRequestError(
            "Invalid 'messages': empty array. Expected an array with minimum length 1.", "messages", code="empty_array"
        )
    if req.n not in (None, 1):
        raise InvalidRequestError(
            f"Invalid 'n': only 1 choice per request is served, got {req.n}.", "n", code="unsupported_value"
        )
    return req


def _text(content: Any, where: str) -> str:
    """A message's content as one text: a string, or its text parts joined."""
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if isinstance(content, list):
        out = []
        for k, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") not in ("text", "refusal"):
                raise InvalidRequestError(
                    f"Invalid '{where}[{k}]': expected a text part here.", f"{where}[{k}]", code="invalid_value"
                )
            value = part.get("text", part.get("refusal"))
            if not isinstance(value, str):
                raise InvalidRequestError(f"Invalid '{where}[{k}].text': expected a string.", f"{where}[{k}].text")
            out.append(value)
        return "".join(out)
    raise InvalidRequestError(f"Invalid '{where}': expected a string or an array of parts.", where)


def _user_parts(content: Any, where: str) -> str | list[dict[str, Any]]:
    """A user message's content as Responses content: a string as it is, parts converted."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequestError(f"Invalid '{where}': expected a string or an array of parts.", where)
    parts: list[dict[str, Any]] = []
    for k, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            parts.append({"type": "input_text", "text": part["text"]})
        elif kind == "image_url" and isinstance(part.get("image_url"), dict):
            image = part["image_url"]
            parts.append({"type": "input_image", "image_url": image.get("url"), "detail": image.get("detail", "auto")})
        elif kind == "file" and isinstance(part.get("file"), dict):
            parts.append({"type": "input_file", **{k2: v for k2, v in part["file"].items() if v is not None}})
        else:
            raise InvalidRequestError(
                f"Invalid '{where}[{k}]': expected a text, image_url or file part.", f"{where}[{k}]"
            )
    return parts


def _message_items(k: int, msg: Any) -> list[dict[str, Any]]:
    """The Responses input items of ``messages[k]``."""
    where = f"messages[{k}]"
    if not isinstance(msg, dict):
        raise InvalidRequestError(f"Invalid '{where}': expected an object.", where)
    role = msg.get("role")
    if role not in CHAT_ROLES:
        raise InvalidRequestError(
            f"Invalid '{where}.role': {str(role)[:40]!r}. Expected one of {', '.join(CHAT_ROLES)}.",
            f"{where}.role",
            code="invalid_value",
        )
    content = msg.get("content")
    if role in ("system", "developer"):
        return [{"type": "message", "role": role, "content": _text(content, f"{where}.content")}]
    if role == "user":
        if content is None:
            raise InvalidRequestError(
                f"Missing required parameter: '{where}.content'.", f"{where}.content", code="missing_required_parameter"
            )
        return [{"type": "message", "role": "user", "content": _user_parts(content, f"{where}.content")}]
    if role == "tool":
        call_id = msg.get("tool_call_id")
        if not isinstance(call_id, str) or not call_id:
            raise InvalidRequestError(
                f"Missing required parameter: '{where}.tool_call_id'.",
                f"{where}.tool_call_id",
                code="missing_required_parameter",
            )
        return [{"type": "function_call_output", "call_id": call_id, "output": _text(content, f"{where}.content")}]
    items: list[dict[str, Any]] = []  # assistant: its text, then its tool calls
    text = _text(content, f"{where}.content")
    if text:
        items.append({"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]})
    calls = msg.get("tool_calls") or []
    if not isinstance(calls, list):
        raise InvalidRequestError(f"Invalid '{where}.tool_calls': expected an array.", f"{where}.tool_calls")
    for j, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(call.get("id"), str) or not isinstance(fn.get("name"), str):
            raise InvalidRequestError(
                f"Invalid '{where}.tool_calls[{j}]': expected {{id, type: 'function', function: {{name, arguments}}}}.",
                f"{where}.tool_calls[{j}]",
            )
        arguments = fn.get("arguments", "")
        if not isinstance(arguments, str):
            raise InvalidRequestError(
                f"Invalid '{where}.tool_calls[{j}].function.arguments': expected a JSON string.",
                f"{where}.tool_calls[{j}].function.arguments",
            )
        items.append({"type": "function_call", "call_id": call["id"], "name": fn["name"], "arguments": arguments})
    if not items:
        raise InvalidRequestError(
            f"Invalid '{where}': an assistant message needs content or tool_calls.", f"{where}.content"
        )
    return items


def _tool_choice(raw: str | dict[str, Any] | None) -> str | dict[str, Any]:
    if raw is None:
        return "auto"
    if isinstance(raw, dict) and raw.get("type") == "function" and isinstance(raw.get("function"), dict):
        return {"type": "function", "name": raw["function"].get("name")}
    return raw


def _text_format(raw: dict[str, Any] | None) -> dict[str, Any] | None:
    kind = None if raw is None else raw.get("type")
    if raw is None or kind == "text":
        return None
    if kind == "json_object":
        return {"format": {"type": "json_object"}}
    if kind == "json_schema" and isinstance(raw.get("json_schema"), dict):
        return {"format": {"type": "json_schema", **raw["json_schema"]}}
    raise InvalidRequestError(
        "Invalid 'response_format': expected {type: text}, {type: json_object} or {type: json_schema, json_schema}.",
        "response_format",
        code="invalid_value",
    )


def to_responses(req: ChatRequest) -> dict[str, Any]:
    """The stateless ``response.create`` body that answers ``req``. Raises: :class:`InvalidRequestError`."""
    items = [item for k, msg in enumerate(req.messages) for item in _message_items(k, msg)]
    tools = []
    for k, tool in enumerate(req.tools or []):
        if tool.type != "function":
            raise InvalidRequestError(
                f"Invalid 'tools[{k}].type': {tool.type[:40]!r}. Only function tools are served.",
                f"tools[{k}].type",
                code="invalid_value",
            )
        fn = tool.function
        tools.append(
            {"type": "function", "name": fn.name, "description": fn.description, "parameters": fn.parameters}
            | ({"strict": fn.strict} if fn.strict is not None else {})
        )
    metadata = dict(req.metadata or {})
    if req.seed is not None and "seed" not in metadata:
        metadata["seed"] = str(req.seed)
    body: dict[str, Any] = {
        "model": req.model,
        "input": items,
        "tools": tools,
        "tool_choice": _tool_choice(req.tool_choice),
        "store": False,
        "stream": bool(req.stream),
        "metadata": metadata,
    }
    limit = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    optional = {
        "max_output_tokens": limit,
        "parallel_tool_calls": req.parallel_tool_calls,
        "temperature": req.temperature,
        "top_p": req.top_p,
        "presence_penalty": req.presence_penalty,
        "frequency_penalty": req.frequency_penalty,
        "user": req.user,
        "service_tier": req.service_tier,
        "prompt_cache_key": req.prompt_cache_key,
        "safety_identifier": req.safety_identifier,
        "text": _text_format(req.response_format),
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    return body


class ChatAnswer:
    """The Responses events of one chat request, as Chat Completions: :meth:`chunks` per event (streamed),
    :meth:`completion` from the terminal response (not streamed)."""

    def __init__(self, model: str, *, include_usage: bool) -> None:
        self.model, self.include_usage = model, include_usage
        self.id = "chatcmpl-unknown"
        self.created = int(time.time())
        self.calls: dict[str, int] = {}  # a function call's item id → its tool_calls index

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if self.include_usage:
            chunk["usage"] = None
        return chunk

    def chunks(self, event: Event) -> list[dict[str, Any]]:
        """The chunks ``event`` becomes (none for most events)."""
        if isinstance(event, ResponseCreated):
            self.id, self.created = f"chatcmpl-{event.response.id}", event.response.created_at
            return [self._chunk({"role": "assistant", "content": ""})]
        if isinstance(event, OutputTextDelta):
            return [self._chunk({"content": event.delta})]
        if isinstance(event, OutputItemAdded) and isinstance(event.item, OutputFunctionCall):
            index = self.calls[event.item.id] = len(self.calls)
            call = {"index": index, "id": event.item.call_id, "type": "function"}
            return [self._chunk({"tool_calls": [call | {"function": {"name": event.item.name, "arguments": ""}}]})]
        if isinstance(event, FunctionCallArgumentsDelta):
            call = {"index": self.calls.get(event.item_id, 0), "function": {"arguments": event.delta}}
            return [self._chunk({"tool_calls": [call]})]
        if isinstance(event, ResponseCompleted | ResponseIncomplete):
            last = self._chunk({}, self.finish_reason(event.response))
            if event.response.turnbench is not None:
                last["turnbench"] = msgspec.to_builtins(event.response.turnbench)
            out = [last]
            if self.include_usage:
                usage = self._chunk({})
                usage["choices"], usage["usage"] = [], self.usage(event.response)
                out.append(usage)
            return out
        return []

    def finish_reason(self, response: Response) -> str:
        if any(isinstance(o, OutputFunctionCall) for o in response.output):
            return "tool_calls"
        return "length" if response.status == "incomplete" else "stop"

    @staticmethod
    def usage(response: Response) -> dict[str, Any]:
        u = response.usage
        if u is None:
            return {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        return {
            "prompt_tokens": u.input_tokens,
            "completion_tokens": u.output_tokens,
            "total_tokens": u.total_tokens,
            "prompt_tokens_details": {"cached_tokens": u.input_tokens_details.cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": 0},
        }

    def completion(self, response: Response) -> dict[str, Any]:
        """The ``chat.completion`` of a finished (completed or incomplete) response."""
        text = "".join(p.text for o in response.output if not isinstance(o, OutputFunctionCall) for p in o.content)
        calls = [
            {"id": o.call_id, "type": "function", "function": {"name": o.name, "arguments": o.arguments}}
            for o in response.output
            if isinstance(o, OutputFunctionCall)
        ]
        message: dict[str, Any] = {"role": "assistant", "content": text or None, "refusal": None}
        if calls:
            message["tool_calls"] = calls
        out: dict[str, Any] = {
            "id": f"chatcmpl-{response.id}",
            "object": "chat.completion",
            "created": response.created_at,
            "model": self.model,
            "system_fingerprint": None,
            "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": self.finish_reason(response)}
            ],
            "usage": self.usage(response),
        }
        if response.turnbench is not None:
            out["turnbench"] = msgspec.to_builtins(response.turnbench)
        return out
