"""The request half of :mod:`turnbench.v1.convert`: a ``response.create`` body ↔ ``CreateRequest``, and a
``response.steer`` event ↔ ``SteerRequest``.

Requests travel as JSON-shaped builtins, because that is what the core's ``parse`` stage takes
(:meth:`ResponsesService.parse_obj`): :func:`body_to_proto` / :func:`request_to_proto` on the client,
:func:`request_from_proto` on the server. Unset proto fields are left out of the dict, so the core applies
its own defaults (``store`` true, ``tool_choice`` "auto", …). A ``SteerRequest`` becomes the members of the
JSON ``response.steer`` event (:func:`steer_from_proto`), which the connection checks as it checks that event.

:func:`body_to_proto` is strict: a body the typed schema cannot carry *exactly* (an unknown parameter, a
value of the wrong type, an item kind the proto does not know, a missing required field) raises
:class:`Unrepresentable`, and the client sends that body through the ``json`` field instead, so the server
judges it as the other transports do rather than the client silently coercing it. Unknown keys *inside* an
input item are dropped: the core ignores them too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from turnbench.errors import InvalidRequestError
from turnbench.schema import ResponseCreate
from turnbench.v1 import responses_pb2 as pb

__all__ = [
    "Unrepresentable",
    "body_to_proto",
    "input_from_proto",
    "input_to_proto",
    "json_text",
    "request_from_proto",
    "request_to_proto",
    "steer_from_proto",
    "steer_to_proto",
]


def _json_text(text: str, param: str) -> Any:
    """A field that carries JSON as text (a tool's parameters, an object tool_choice, parts, annotations):
    decoded, or an :class:`InvalidRequestError` naming the field."""
    try:
        return msgspec.json.decode(text)
    except (msgspec.DecodeError, RecursionError, UnicodeError) as exc:
        raise InvalidRequestError(f"Invalid JSON text in '{param}': {exc}", param) from exc


_INT64 = (-(2**63), 2**63 - 1)
# parameters the core accepts and ignores (typed ``Any`` there): no typed field, dropped when null
# parameters the typed schema does not carry: left null they are dropped, set they send the body as JSON
_IGNORED = frozenset(f.name for f in msgspec.structs.fields(ResponseCreate) if f.type is Any) - {"text"} | {
    "background"
}
_BOOLS = ("store", "stream", "parallel_tool_calls", "generate", "long_response")
_DOUBLES = ("temperature", "top_p", "presence_penalty", "frequency_penalty")
_INTS = ("max_output_tokens", "top_logprobs", "max_tool_calls")
_STRINGS = (
    "instructions",
    "previous_response_id",
    "stream_id",
    "truncation",
    "service_tier",
    "prompt_cache_key",
    "prompt_cache_retention",
    "safety_identifier",
    "user",
)
_REASONING = ("effort", "summary", "generate_summary", "context", "mode")
_REQUIRED = {
    "message": ("role", "content"),
    "function_call": ("call_id", "name", "arguments"),
    "function_call_output": ("call_id", "output"),
    "compaction": ("encrypted_content",),
}
_PART_FIELDS: dict[str, tuple[str, ...]] = {
    "input_image": ("image_url", "file_id"),
    "input_file": ("file_data", "file_id", "file_url", "filename", "detail"),
}
"""A media part's optional string members (``input_image``'s ``detail`` is a plain string, unset: the default)."""


class Unrepresentable(ValueError):
    """The body holds something the typed schema cannot carry exactly; send it with the json codec."""


def _str(v: object, where: str) -> str:
    if type(v) is not str:
        raise Unrepresentable(f"{where}: expected a string")
    return v


def _int(v: object, where: str) -> int:
    if type(v) is not int or not _INT64[0] <= v <= _INT64[1]:
        raise Unrepresentable(f"{where}: expected a 64-bit integer")
    return v


def _bool(v: object, where: str) -> bool:
    if type(v) is not bool:
        raise Unrepresentable(f"{where}: expected a boolean")
    return v


def _double(v: object, where: str) -> float:
    if not (type(v) is float or (type(v) is int and abs(v) <= 2**53)):
        raise Unrepresentable(f"{where}: expected a number a double holds exactly")
    return float(v)


def json_text(v: object) -> str:
    """A free-form JSON value as JSON text (raises :class:`Unrepresentable` if it is not JSON)."""
    try:
        return msgspec.json.encode(v).decode()
    except (TypeError, OverflowError, msgspec.EncodeError) as exc:
        raise Unrepresentable(f"not JSON-encodable: {exc}") from exc


# ---------------------------------------------------------------------------------------------- pieces


def tool_to_proto(t: object, out: pb.FunctionTool) -> None:
    """A function tool definition (dict) into ``out``."""
    if not isinstance(t, Mapping) or t.get("type", "function") != "function" or "name" not in t:
        raise Unrepresentable("tools: only function tools with a name are typed")
    for key, v in t.items():
        if key == "name":
            out.name = _str(v, "tool.name")
        elif key == "description" and v is not None:
            out.description = _str(v, "tool.description")
        elif key == "parameters" and v is not None:
            if not isinstance(v, dict):
                raise Unrepresentable("tool.parameters: expected an object")
            out.parameters = json_text(v)
        elif key == "strict" and v is not None:
            out.strict = _bool(v, "tool.strict")
        elif key not in ("type", "description", "parameters", "strict"):
            raise Unrepresentable(f"tool.{key}: unknown field")


def tool_from_proto(t: pb.FunctionTool) -> dict[str, Any]:
    d: dict[str, Any] = {"type": "function", "name": t.name}
    if t.HasField("description"):
        d["description"] = t.description
    if t.HasField("parameters"):
        d["parameters"] = _json_text(t.parameters, "tools.parameters")
    if t.HasField("strict"):
        d["strict"] = t.strict
    return d


def choice_to_proto(v: object, out: pb.ToolChoice) -> None:
    """``tool_choice``: a mode string, or an object as JSON text."""
    if type(v) is str:
        out.mode = v
    elif isinstance(v, dict):
        out.json = json_text(v)
    else:
        raise Unrepresentable("tool_choice: expected a string or an object")


def choice_from_proto(c: pb.ToolChoice) -> str | dict[str, Any]:
    if c.WhichOneof("choice") == "json":
        value: dict[str, Any] = _json_text(c.json, "tool_choice")
        return value
    return c.mode


def _text_part_to_proto(p: Mapping[str, Any], out: pb.OutputText) -> None:
    for key, v in p.items():
        if key == "text":
            out.text = _str(v, "part.text")
        elif key in ("annotations", "logprobs"):
            if not isinstance(v, list):
                raise Unrepresentable(f"part.{key}: expected a list")
            getattr(out, key).extend([json_text(x) for x in v])
        elif key != "type":
            raise Unrepresentable(f"part.{key}: unknown field")
    if "text" not in p:
        raise Unrepresentable("part.text: missing")


def _content_to_proto(v: object, m: pb.InputMessage) -> None:
    if type(v) is str:
        m.text = v
        return
    if not isinstance(v, list):
        raise Unrepresentable("message.content: expected a string or a list")
    m.parts.SetInParent()
    for p in v:
        part = m.parts.parts.add()
        ptype = p.get("type") if isinstance(p, Mapping) else None
        if ptype == "input_text" and isinstance(p, Mapping) and set(p) <= {"type", "text"}:
            part.input_text.text = _str(p.get("text"), "part.text")
        elif ptype == "output_text" and isinstance(p, Mapping):
            _text_part_to_proto(p, part.output_text)
        elif ptype in _PART_FIELDS and isinstance(p, Mapping):
            _media_part_to_proto(ptype, p, getattr(part, ptype))
        else:
            raise Unrepresentable(f"content part of type {ptype!r}")


def _media_part_to_proto(ptype: str, p: Mapping[str, Any], out: pb.InputImage | pb.InputFile) -> None:
    """An ``input_image`` or ``input_file`` part: only its known members, each a string (or null: unset)."""
    names = _PART_FIELDS[ptype]
    for key, v in p.items():
        if key == "type" or (v is None and key in names):
            continue
        if key == "detail" and ptype == "input_image":
            if v == "":
                raise Unrepresentable("input_image.detail: empty")  # unset means the default: not the same
            out.detail = _str(v, "input_image.detail")
        elif key in names:
            setattr(out, key, _str(v, f"{ptype}.{key}"))
        else:
            raise Unrepresentable(f"{ptype}.{key}: no typed field")


def _media_part_from_proto(ptype: str, m: pb.InputImage | pb.InputFile) -> dict[str, Any]:
    d: dict[str, Any] = {"type": ptype}
    if isinstance(m, pb.InputImage) and m.detail:
        d["detail"] = m.detail
    for key in _PART_FIELDS[ptype]:
        if m.HasField(key):  # type: ignore[arg-type]  # every name is an optional field of its part
            d[key] = getattr(m, key)
    return d


def item_to_proto(d: object, item: pb.InputItem) -> None:
    """One input item (dict) into ``item``."""
    if not isinstance(d, Mapping):
        raise Unrepresentable("input item: expected an object")
    kind = d.get("type", "message")
    required = _REQUIRED.get(kind) if isinstance(kind, str) else None
    if required is None or any(k not in d for k in required):
        raise Unrepresentable(f"input item of type {kind!r} or missing fields")  # the server names it
    m: pb.InputMessage | pb.FunctionCall | pb.FunctionCallOutput | pb.Compaction
    if kind == "compaction":
        m = item.compaction
        m.encrypted_content = _str(d["encrypted_content"], "compaction.encrypted_content")
        if d.get("created_by") is not None:
            m.created_by = _str(d["created_by"], "compaction.created_by")
    elif kind == "message":
        m = item.message
        m.role = _str(d["role"], "message.role")
        _content_to_proto(d["content"], m)
    elif kind == "function_call":
        m = item.function_call
        m.call_id = _str(d["call_id"], "function_call.call_id")
        m.name = _str(d["name"], "function_call.name")
        m.arguments = _str(d["arguments"], "function_call.arguments")
    else:
        m = item.function_call_output
        m.call_id = _str(d["call_id"], "function_call_output.call_id")
        out = d["output"]
        if type(out) is str:
            m.text = out
        elif isinstance(out, list) and all(isinstance(x, dict) for x in out):
            m.parts_json = json_text(out)
        else:
            raise Unrepresentable("function_call_output.output: expected a string or a list of objects")
    if d.get("id") is not None:
        m.id = _str(d["id"], f"{kind}.id")
    if d.get("status") is not None:
        if isinstance(m, pb.Compaction):
            raise Unrepresentable("compaction.status: no typed field")
        m.status = _str(d["status"], f"{kind}.status")


def part_from_proto(p: pb.OutputText) -> dict[str, Any]:
    return {
        "type": "output_text",
        "text": p.text,
        "annotations": [_json_text(a, "input.content.annotations") for a in p.annotations],
        "logprobs": [_json_text(x, "input.content.logprobs") for x in p.logprobs],
    }


def _part_from_proto(p: pb.ContentPart) -> dict[str, Any]:
    which = p.WhichOneof("part")
    if which == "input_text":
        return {"type": "input_text", "text": p.input_text.text}
    if which in ("input_image", "input_file"):
        return _media_part_from_proto(which, getattr(p, which))
    return part_from_proto(p.output_text)  # output_text, or an empty part: an empty output_text


def item_from_proto(item: pb.InputItem) -> dict[str, Any]:
    """One typed input item as the dict the core validates (an empty item gives ``{}``: the core rejects it)."""
    kind = item.WhichOneof("item")
    d: dict[str, Any]
    m: pb.InputMessage | pb.FunctionCall | pb.FunctionCallOutput | pb.Compaction
    if kind == "compaction":
        c = m = item.compaction
        d = {"type": "compaction", "encrypted_content": c.encrypted_content}
        if c.HasField("created_by"):
            d["created_by"] = c.created_by
    elif kind == "message":
        msg = m = item.message
        d = {"type": "message", "role": msg.role}
        which = msg.WhichOneof("content")
        if which == "text":
            d["content"] = msg.text
        elif which == "parts":
            d["content"] = [_part_from_proto(p) for p in msg.parts.parts]
    elif kind == "function_call":
        f = m = item.function_call
        d = {"type": "function_call", "call_id": f.call_id, "name": f.name, "arguments": f.arguments}
    elif kind == "function_call_output":
        o = m = item.function_call_output
        d = {"type": "function_call_output", "call_id": o.call_id}
        out = o.WhichOneof("output")
        if out is not None:
            d["output"] = o.text if out == "text" else _json_text(o.parts_json, "input.output")
    else:
        return {}
    if m.HasField("id"):
        d["id"] = m.id
    if not isinstance(m, pb.Compaction) and m.HasField("status"):
        d["status"] = m.status
    return d


def input_to_proto(v: object, out: pb.CreateRequest | pb.SteerRequest | pb.SteerRef | pb.AppendRequest) -> None:
    """An ``input`` (a string: one user message; or a list of items) into ``out``'s ``input`` oneof."""
    if type(v) is str:
        out.text = v
    elif isinstance(v, list):
        out.items.SetInParent()
        for raw in v:
            item_to_proto(raw, out.items.items.add())
    else:
        raise Unrepresentable("input: expected a string or a list")


def input_from_proto(
    m: pb.CreateRequest | pb.SteerRequest | pb.SteerRef | pb.AppendRequest,
) -> str | list[dict[str, Any]] | None:
    """``m``'s ``input`` oneof as the core takes it: the text, a list of item dicts, or None when unset."""
    which = m.WhichOneof("input")
    if which == "text":
        return m.text
    if which == "items":
        return [item_from_proto(i) for i in m.items.items]
    return None


# ---------------------------------------------------------------------------------------------- request


def body_to_proto(body: Mapping[str, Any]) -> pb.CreateRequest:
    """A ``response.create`` body (JSON-shaped builtins) as a typed ``CreateRequest``.

    Raises: :class:`Unrepresentable` when the typed schema cannot carry the body exactly.
    """
    if not isinstance(body, Mapping) or "model" not in body:
        raise Unrepresentable("body: expected an object with a model")  # the server names what is wrong
    out = pb.CreateRequest()
    for key, v in body.items():
        if key == "model":
            out.model = _str(v, "model")
        elif key == "input":
            input_to_proto(v, out)
        elif key == "tools":
            if not isinstance(v, list):
                raise Unrepresentable("tools: expected a list")
            for t in v:
                tool_to_proto(t, out.tools.add())
        elif key == "tool_choice":
            choice_to_proto(v, out.tool_choice)
        elif key == "metadata":
            if not isinstance(v, dict) or not all(type(k) is str and type(x) is str for k, x in v.items()):
                raise Unrepresentable("metadata: expected an object of strings")
            out.metadata.update(v)
        elif key in _BOOLS:
            setattr(out, key, _bool(v, key))
        elif v is None and (key in _STRINGS or key in _INTS or key in _DOUBLES or key in ("reasoning", "text")):
            continue  # null: the core's default, as unset
        elif key in _STRINGS:
            setattr(out, key, _str(v, key))
        elif key in _INTS:
            setattr(out, key, _int(v, key))
        elif key in _DOUBLES:
            setattr(out, key, _double(v, key))
        elif key == "reasoning":
            _reasoning_to_proto(v, out.reasoning)
        elif key == "text":
            out.text_config = json_text(v)
        elif (key == "type" and v in (None, "response.create")) or (key in _IGNORED and v is None):
            continue  # the WebSocket envelope tag (implied here), or an ignored parameter left null
        else:
            raise Unrepresentable(f"parameter {key!r} has no typed field")
    return out


def _reasoning_to_proto(v: object, out: pb.Reasoning) -> None:
    if not isinstance(v, Mapping):
        raise Unrepresentable("reasoning: expected an object")
    out.SetInParent()
    for key, x in v.items():
        if key not in _REASONING:
            raise Unrepresentable(f"reasoning.{key}: no typed field")
        if x is not None:
            setattr(out, key, _str(x, f"reasoning.{key}"))


def request_to_proto(req: ResponseCreate) -> pb.CreateRequest:
    """A parsed request as a typed ``CreateRequest`` (raises :class:`Unrepresentable`, see above)."""
    return body_to_proto(msgspec.to_builtins(req))


def request_from_proto(req: pb.CreateRequest) -> dict[str, Any]:
    """A typed ``CreateRequest`` as the builtins :meth:`ResponsesService.parse_obj` takes."""
    d: dict[str, Any] = {"model": req.model}
    if (value := input_from_proto(req)) is not None:
        d["input"] = value
    if req.tools:
        d["tools"] = [tool_from_proto(t) for t in req.tools]
    if req.HasField("tool_choice"):
        d["tool_choice"] = choice_from_proto(req.tool_choice)
    if req.metadata:
        d["metadata"] = dict(req.metadata)
    for key in (*_STRINGS, *_INTS, *_DOUBLES, "store", "stream", "parallel_tool_calls", "generate"):
        if req.HasField(key):  # type: ignore[arg-type]  # every name above is an optional field
            d[key] = getattr(req, key)
    if req.HasField("reasoning"):
        rs = req.reasoning
        d["reasoning"] = {k: getattr(rs, k) for k in _REASONING if rs.HasField(k)}  # type: ignore[arg-type]
    if req.HasField("text_config"):
        d["text"] = _json_text(req.text_config, "text")
    return d


# ---------------------------------------------------------------------------------------------- steer


def steer_to_proto(event: Mapping[str, Any]) -> pb.SteerRequest:
    """A ``response.steer`` event (JSON-shaped builtins, ``type`` optional) as a typed ``SteerRequest``.

    Raises: :class:`Unrepresentable` when the typed schema cannot carry it exactly (send it as JSON then).
    """
    if not isinstance(event, Mapping) or event.get("type", "response.steer") != "response.steer":
        raise Unrepresentable("event: expected a response.steer object")
    out = pb.SteerRequest()
    for key, v in event.items():
        if key == "previous_response_id":
            out.previous_response_id = _str(v, key)
        elif key == "input":
            input_to_proto(v, out)
        elif key != "type":
            raise Unrepresentable(f"response.steer.{key}: no typed field")
    if "previous_response_id" not in event:
        raise Unrepresentable("response.steer.previous_response_id: missing")  # "" would name no response
    return out


def steer_from_proto(steer: pb.SteerRequest) -> dict[str, Any]:
    """A typed ``SteerRequest`` as the members of the JSON ``response.steer`` event, which the connection
    validates (an empty or absent input, a non-user item: ``invalid_input``, as over WebSocket)."""
    d: dict[str, Any] = {"type": "response.steer", "previous_response_id": steer.previous_response_id}
    if (value := input_from_proto(steer)) is not None:
        d["input"] = value
    return d


# ---------------------------------------------------------------------------------------------- framing
# The json codec wraps a JSON object in one length-delimited protobuf field, framed by hand (no message
# object, no copy): the client's ClientEvent and the server's ServerEvent both use it.


def varint(n: int) -> bytes:
    """Protobuf base-128 varint of ``n`` (≥ 0)."""
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def bytes_field(field_number: int, payload: bytes) -> bytes:
    """``payload`` as the length-delimited field ``field_number`` of a message."""
    return varint(field_number << 3 | 2) + varint(len(payload)) + payload
