"""Hypothesis strategies for bad and odd Responses requests, and for the odd bytes around them.

Layers, each feeding the next:

* :data:`json_values`: any JSON value, the awkward ones weighted in: lone surrogates and control characters,
  huge and out-of-range numbers, deep nesting (raw JSON text, so the depth is exact and cheap to build).
* :func:`request_objects`: a ``response.create`` body, mostly a valid request with one to three fields made odd
  (a wrong type, an out-of-range knob, an odd tool schema, a bad ``tool_choice`` or ``text.format``, an unknown
  ``previous_response_id``, an odd ``stream_id``, an unknown parameter), sometimes a valid one.
* :func:`bodies`: the bytes on the wire: the object encoded (surrogates escaped, or as raw invalid UTF-8), or
  mutated (truncated, a byte flipped, garbage appended, a BOM), or not an object, or random bytes.
* :func:`typed_messages`: gRPC ``ClientEvent`` bytes with a typed ``CreateRequest``: odd contents set through the
  protobuf API (bad JSON in ``tool.parameters``, ``tool_choice.json``, ``parts_json``, ``annotations``), hand-framed
  fields the API refuses to write (invalid UTF-8 in a string field), and mutated or random bytes.

Placeholders ``$PREV`` and ``$CALL`` in a request stand for the id of the response the previous frame of the same
example created and for its last function call's ``call_id`` (:func:`substitute`), so continuations are reached.
Valid values of the scripted model's knobs stay small: a fuzz case must not ask for a 100,000-word answer.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import msgspec
from google.protobuf import text_format
from google.protobuf.message import Message
from hypothesis import strategies as st

from turnbench.v1 import responses_pb2 as pb
from turnbench.v1.convert_request import bytes_field, varint

KEEP_LANE = "keep"
"""The lane the fuzz harness keeps a long response on; no generated frame names it."""

VALID_LANES = ("a", "b", "lane-1", "x.y_z", "L" * 256)
ODD_LANES = ("", " ", "bad lane!", "x" * 257, "é", "a/b", "\x00", "keep\n", "\ud800")
PLACEHOLDERS = (b"$PREV", b"$CALL")

# ---------------------------------------------------------------------------------------------- raw JSON


@dataclass(frozen=True)
class Raw:
    """A JSON fragment written as is: deep nesting, numbers no encoder writes (``1e400``, 400 digits)."""

    text: str
    label: str = ""

    def __repr__(self) -> str:
        return f"Raw({self.label})" if self.label else f"Raw({self.text!r})"


def nested(depth: int, kind: str = "[") -> Raw:
    """``depth`` arrays (``[``) or objects (``{``) inside each other."""
    if kind == "[":
        return Raw("[" * depth + "]" * depth, f"'[' * {depth} + ']' * {depth}")
    return Raw('{"a":' * depth + "1" + "}" * depth, f"'{{\"a\":' * {depth} + '1' + '}}' * {depth}")


def dumps(value: Any, *, ascii: bool = True) -> str:
    """``value`` as JSON text; :class:`Raw` fragments verbatim, NaN/Infinity as Python writes them (not JSON),
    lone surrogates escaped (``ascii``) or left in the text (encode it with ``surrogatepass``: invalid UTF-8)."""
    if isinstance(value, Raw):
        return value.text
    if value is None or isinstance(value, bool | int | float):
        return json.dumps(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=ascii)
    if isinstance(value, list | tuple):
        return "[" + ",".join(dumps(v, ascii=ascii) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{dumps(str(k), ascii=ascii)}:{dumps(v, ascii=ascii)}" for k, v in value.items()) + "}"
    raise TypeError(f"not a JSON value: {value!r}")


def to_bytes(value: Any, *, ascii: bool = True) -> bytes:
    return dumps(value, ascii=ascii).encode("utf-8", "surrogatepass")


# ---------------------------------------------------------------------------------------------- values

ODD_STRINGS = ("", " ", "\x00", "\ud800", "\udfff", "a\udc80b", "\u2028", "\ufeff", "💥", "éé", "\\", '"', "null")
strings = st.one_of(st.text(max_size=12), st.sampled_from(ODD_STRINGS))
BIG_NUMBERS = (0, -1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**30)
RAW_NUMBERS = tuple(
    Raw(t) for t in ("1e400", "-1e400", "1E+99999", "-0", "0.0000000000000000000001", "9" * 400, "-" + "9" * 400)
)
numbers = st.one_of(
    st.integers(-(2**70), 2**70),
    st.sampled_from(BIG_NUMBERS),
    st.sampled_from(RAW_NUMBERS),
    st.floats(allow_nan=True, allow_infinity=True),
)
DEPTHS = (8, 100, 500, 1000, 3000, 20_000, 100_000)  # ascending: a failing depth shrinks to the smallest
deep = st.builds(nested, st.sampled_from(DEPTHS), st.sampled_from("[{"))
scalars = st.one_of(st.none(), st.booleans(), numbers, strings)
json_values = st.one_of(
    st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(strings, c, max_size=4), max_leaves=10),
    deep,
)
"""Any JSON value (a few that are not quite JSON: NaN, Infinity, lone surrogates)."""

# ---------------------------------------------------------------------------------------------- schemas

ODD_SCHEMAS: tuple[Any, ...] = (
    {"type": "object", "properties": 5},
    {"type": "object", "properties": {"a": {"type": "integer", "minimum": "a"}}},
    {"type": "object", "properties": {"a": {"type": "integer", "minimum": 10, "maximum": 1}}},
    {"type": "object", "properties": {"a": {"type": "number", "minimum": 1e308, "maximum": -1e308}}},
    {"type": "object", "properties": {"a": {"type": "integer", "minimum": Raw("1e400")}}},
    {"type": "object", "properties": {"a": {"type": "integer", "minimum": 2**53 + 1, "maximum": 2**200}}},
    {"type": "object", "properties": {"a": {"type": "integer", "minimum": True, "maximum": None}}},
    {"type": "object", "properties": {"a": {"type": "integer", "minimum": Raw("NaN")}}},
    {"type": "object", "properties": {"a": {"type": "array", "minItems": 10**9}}},
    {"type": "object", "properties": {"a": {"type": "array", "minItems": -5, "maxItems": -1, "items": [1, 2]}}},
    {"type": "object", "properties": {"a": {"type": "string", "enum": []}}},
    {"type": "object", "properties": {"a": {"type": "string", "format": 5}}},
    {"type": "object", "properties": {"a": {"$ref": "#/$defs/A"}}, "$defs": {"A": {"$ref": "#/$defs/A"}}},
    {"$ref": "#/$defs/A", "$defs": {"A": {"anyOf": [{"$ref": "#/$defs/A"}]}}},
    {"$ref": "#/$defs/A", "$defs": {"A": {"oneOf": [{"type": "null"}, {"$ref": "#/$defs/A"}]}}},
    {"$ref": "#/$defs/A", "$defs": {"A": {"allOf": [{"$ref": "#/$defs/A"}]}}},
    {
        "type": "object",
        "properties": {"a": {"$ref": "#/$defs/A"}},
        "$defs": {"A": {"properties": {"b": {"$ref": "#"}}}},
    },
    {"$ref": "#/nope/x"},
    {"$ref": 5},
    {"$ref": "#/"},
    {"type": ["null"]},
    {"type": []},
    {"type": 5},
    {"type": "weird"},
    {"anyOf": []},
    {"anyOf": [5]},
    {"allOf": [5, {"type": "integer"}]},
    {"type": "object", "required": 5, "properties": {"a": 5}},
    {"type": "object", "properties": {str(i): {"type": "string"} for i in range(300)}},
    {"type": "object", "properties": {"a": {"const": nested(500)}}},
    {"type": "object", "properties": {"a": {"enum": [nested(900, "{")]}}},
    {"type": "array", "items": {"type": "array", "items": {"type": "array", "items": {"type": "string"}}}},
    [],
    5,
    "object",
)


def _nest_schema(depth: int, key: str) -> Raw:
    """A schema ``depth`` levels deep (raw text: a Python value that deep would not even encode)."""
    if key in ("anyOf", "oneOf", "allOf"):
        head, tail = f'{{"{key}":[', "]}"
    else:
        head, tail = '{"type":"object","properties":{"a":', "}}"
    return Raw(head * depth + '{"type":"string"}' + tail * depth, f"{key} schema nested {depth} deep")


schemas = st.one_of(
    st.sampled_from(ODD_SCHEMAS),
    st.builds(_nest_schema, st.sampled_from((10, 200, 900, 3000)), st.sampled_from(("anyOf", "oneOf", "allOf", "p"))),
    st.dictionaries(st.sampled_from(("type", "properties", "items", "enum", "const", "minimum", "$ref")), json_values),
    json_values,
)
"""JSON schemas a client might send for a tool or a structured answer: mostly odd ones."""

VALID_TOOL = {
    "type": "function",
    "name": "lookup",
    "description": "Look a topic up.",
    "parameters": {
        "type": "object",
        "properties": {"topic": {"type": "string", "enum": ["a", "b"]}, "depth": {"type": "integer", "minimum": 1}},
        "required": ["topic"],
    },
}
tool_names = st.one_of(st.sampled_from(("lookup", "f", "", "a b", "\ud800", "x" * 300)), strings)
tools_one = st.one_of(
    st.just(VALID_TOOL),
    st.fixed_dictionaries(
        {"type": st.just("function"), "name": tool_names},
        optional={"parameters": schemas, "description": json_values, "strict": json_values, "extra": json_values},
    ),
    st.sampled_from(({"type": "web_search"}, {"type": "function"}, {"name": 5}, {"type": 5, "name": "f"}, 5, None)),
)
tools = st.one_of(st.lists(tools_one, max_size=3), json_values)

tool_choices = st.one_of(
    st.sampled_from(("auto", "none", "required", "any", "", "AUTO")),
    st.sampled_from(
        (
            {"type": "function", "name": "lookup"},
            {"type": "function", "name": "nope"},
            {"type": "function"},
            {"type": "function", "name": 5},
            {"type": "allowed_tools", "mode": "auto", "tools": [{"type": "function", "name": "lookup"}]},
            {"type": "allowed_tools", "mode": "x", "tools": 5},
            {"type": "allowed_tools", "mode": "required", "tools": [5, {"name": 7}, None]},
            {"type": "allowed_tools", "mode": "required", "tools": []},
            {"type": "web_search"},
            {},
        )
    ),
    json_values,
)

text_params = st.one_of(
    st.sampled_from(
        (
            {"format": {"type": "text"}},
            {"format": {"type": "json_object"}},
            {"format": {"type": "json_schema"}},
            {"format": {"type": "weird"}},
            {"format": {"type": 5}},
            {"format": 5},
            {"verbosity": "low"},
            {},
        )
    ),
    st.builds(lambda s: {"format": {"type": "json_schema", "name": "x", "schema": s}}, schemas),
    json_values,
)

# ---------------------------------------------------------------------------------------------- knobs

KNOB_VALUES = (
    "1",
    "2",
    " 3",
    "0",
    "-1",
    "1.5",
    "1e3",
    "+3",
    "٣",
    "0x10",
    "",
    "abc",
    "\ud800",
    "9" * 21,
    "9" * 400,
    "18446744073709551616",
    "100001",
    "1001",
)
knob_values = st.one_of(st.sampled_from(KNOB_VALUES), st.integers(-3, 3), json_values)
metadata = st.one_of(
    st.fixed_dictionaries(
        {}, optional={k: knob_values for k in ("answer_tokens", "tool_calls", "arg_words", "seed")}
    ).map(lambda d: {**d, "tool_calls": d.get("tool_calls", "1")}),
    st.dictionaries(strings, st.one_of(strings, json_values), max_size=20),
    json_values,
)
max_output_tokens = st.one_of(
    st.sampled_from((-1, 0, 15, 16, 17, 2**31, 2**63 - 1, 2**63, -(2**63), 1.5, "16", True, None)),
    st.sampled_from((Raw("9" * 400), Raw("-" + "9" * 400), Raw("1e400"), Raw("16.0"))),
    json_values,
)

# ---------------------------------------------------------------------------------------------- input

roles = st.one_of(st.sampled_from(("user", "assistant", "system", "developer", "robot", "", "User")), json_values)
parts = st.one_of(
    st.builds(lambda t: {"type": "input_text", "text": t}, strings),
    st.fixed_dictionaries(
        {"type": st.just("output_text"), "text": strings},
        optional={"annotations": st.lists(json_values, max_size=2), "logprobs": json_values},
    ),
    st.sampled_from(({"type": "input_image", "image_url": "https://x/y.png"}, {"type": 5}, {}, "x", None)),
    json_values,
)
contents = st.one_of(strings, st.lists(parts, max_size=3), json_values)
call_ids = st.one_of(st.sampled_from(("$CALL", "call_unknown", "")), strings, json_values)
items_one = st.one_of(
    st.fixed_dictionaries({"role": roles, "content": contents}, optional={"type": st.just("message"), "id": strings}),
    st.fixed_dictionaries(
        {"type": st.just("function_call"), "call_id": call_ids, "name": tool_names, "arguments": json_values | strings}
    ),
    st.fixed_dictionaries(
        {"type": st.just("function_call_output"), "call_id": call_ids},
        optional={
            "output": st.one_of(strings, st.lists(st.dictionaries(strings, json_values), max_size=2), json_values)
        },
    ),
    st.sampled_from(({"type": "reasoning"}, {"type": 5}, {"type": "message"}, {}, 5, None, [], "x")),
)
inputs = st.one_of(
    strings,
    st.lists(items_one, max_size=5),
    st.integers(20, 120).map(lambda n: [{"role": "user", "content": f"m{i}"} for i in range(n)]),
    json_values,
)

# ---------------------------------------------------------------------------------------------- requests

IGNORED_PARAMS = ("temperature", "top_p", "reasoning", "include", "user", "truncation", "prompt", "service_tier")
UNKNOWN_PARAMS = ("bogus", "Model", "input ", "__proto__", "n", "")
ODD_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "model": st.one_of(st.sampled_from(("", "x" * 1000, "\ud800")), json_values),
    "input": inputs,
    "instructions": st.one_of(strings, json_values),
    "tools": tools,
    "tool_choice": tool_choices,
    "text": text_params,
    "metadata": metadata,
    "max_output_tokens": max_output_tokens,
    "previous_response_id": st.one_of(
        st.sampled_from(("$PREV", "$PREV", "resp_unknown", "", "resp_" + "a" * 300, "\ud800")), json_values
    ),
    "store": json_values,
    "stream": json_values,
    "parallel_tool_calls": json_values,
    "generate": json_values,
    "background": st.one_of(st.booleans(), json_values),
    "stream_id": st.one_of(st.sampled_from(VALID_LANES + ODD_LANES), json_values),
    "type": st.one_of(st.sampled_from(("response.create", "response.cancel", "", "RESPONSE.CREATE")), json_values),
    **{name: json_values for name in IGNORED_PARAMS},
}


def _no_keep(value: Any) -> bool:
    return not (isinstance(value, str) and value == KEEP_LANE)


@st.composite
def request_objects(draw: st.DrawFn) -> dict[str, Any]:
    """A ``response.create`` body: a valid base, then zero to three fields made odd, sometimes an unknown one."""
    body: dict[str, Any] = {
        "model": "m",
        "input": draw(st.sampled_from(("hi", [{"role": "user", "content": "hi"}]))),
        "store": draw(st.booleans()),
        "metadata": {"answer_tokens": str(draw(st.integers(1, 4))), "tool_calls": "1"},
    }
    if draw(st.booleans()):
        body["tools"] = [VALID_TOOL]
    if draw(st.booleans()):
        body["stream_id"] = draw(st.sampled_from(VALID_LANES))
    if draw(st.integers(0, 3)) == 0:  # a tool the model must call, with an odd schema: its arguments get made
        body["tools"] = [{"type": "function", "name": "lookup", "parameters": draw(schemas)}]
        body["tool_choice"] = "required"
    for name in draw(st.lists(st.sampled_from(sorted(ODD_FIELDS)), max_size=3, unique=True)):
        body[name] = draw(ODD_FIELDS[name])
    if draw(st.integers(0, 9)) == 0:
        body[draw(st.one_of(st.sampled_from(UNKNOWN_PARAMS), strings))] = draw(json_values)
    if draw(st.integers(0, 9)) == 0:
        del body["model"]
    if not _no_keep(body.get("stream_id")):
        body["stream_id"] = "a"
    return body


# ---------------------------------------------------------------------------------------------- bytes


_RUN = re.compile(rb"(.{1,16}?)\1{7,}", re.S)


def compact(data: bytes) -> str:
    """``data`` as a Python expression with long runs folded (``b'{' + b'[' * 3000 + …``): a readable repro."""
    pieces: list[str] = []
    at = 0
    for m in _RUN.finditer(data):
        if m.start() > at:
            pieces.append(repr(data[at : m.start()]))
        unit = m.group(1)
        pieces.append(f"{unit!r} * {(m.end() - m.start()) // len(unit)}")
        at = m.end()
    if at < len(data) or not pieces:
        pieces.append(repr(data[at:]))
    return " + ".join(pieces)


class Body:
    """Bytes of one request (an HTTP body, a WebSocket frame, a gRPC message) and how they were made. Its repr is
    the repro a failure prints: the bytes as a Python expression, long runs folded."""

    __slots__ = ("data", "how", "obj")

    def __init__(self, data: bytes, how: str, obj: Any = None) -> None:
        self.data, self.how, self.obj = data, how, obj

    def __repr__(self) -> str:
        if self.how == "typed" and isinstance(self.obj, Message):
            return f"Body(typed {{{text_format.MessageToString(self.obj, as_one_line=True)}}}: {compact(self.data)})"
        return f"Body({self.how}: {compact(self.data)})"

    def valid_utf8(self) -> bool:
        try:
            self.data.decode("utf-8")
        except UnicodeDecodeError:
            return False
        return True


def _mutate(data: bytes, how: str, at: int, junk: bytes) -> tuple[bytes, str]:
    at = at % (len(data) + 1)
    if how == "truncate":
        return data[:at], f"truncated at {at}"
    if how == "flip" and data:
        i = at % len(data)
        return data[:i] + bytes([data[i] ^ 0x80]) + data[i + 1 :], f"byte {i} flipped"
    if how == "insert":
        return data[:at] + junk + data[at:], f"{junk!r} inserted at {at}"
    if how == "bom":
        return b"\xef\xbb\xbf" + data, "BOM first"
    if how == "trailing":
        return data + junk, f"{junk!r} appended"
    return data + b"}", "one brace too many"


@st.composite
def bodies(draw: st.DrawFn, *, event: bool = False) -> Body:
    """Bytes of one ``response.create`` (``event``: a connection's event, ``"type": "response.create"`` first)."""
    kind = draw(st.sampled_from(("object",) * 6 + ("mutated", "mutated", "not_object", "random")))
    if kind == "random":
        return Body(draw(st.binary(max_size=64)), "random bytes")
    if kind == "not_object":
        value = draw(json_values)
        return Body(to_bytes(value), "not an object", value)
    obj = draw(request_objects())
    if event and "type" not in obj:
        obj = {"type": "response.create", **obj}
    ascii = draw(st.booleans())
    data = to_bytes(obj, ascii=ascii)
    how = "object" if ascii else "object, non-ASCII raw"
    if kind == "mutated":
        data, how = _mutate(
            data,
            draw(st.sampled_from(("truncate", "flip", "insert", "bom", "trailing", "brace"))),
            draw(st.integers(0, 1 << 16)),
            draw(st.sampled_from((b"\xff", b"\xed\xa0\x80", b"\x00", b",", b'"', b"\\u", b"}{", b"\xc3"))),
        )
    return Body(data, how, obj)


def substitute(data: bytes, prev: str | None, call: str | None) -> bytes:
    """``$PREV`` and ``$CALL`` replaced by the id and the call id a frame before created (left as is if none)."""
    if prev is not None:
        data = data.replace(b"$PREV", prev.encode())
    if call is not None:
        data = data.replace(b"$CALL", call.encode())
    return data


# ---------------------------------------------------------------------------------------------- gRPC typed

proto_strings = st.one_of(st.text(max_size=12), st.sampled_from(("", "\x00", "é", "💥", "x" * 300)))
json_texts = st.one_of(
    json_values.map(lambda v: dumps(v)),
    st.sampled_from(("", "{", "nul", "[1,]", "{'a': 1}", "1e400", "9" * 400, "5", "[]", "null", '"x"', "\\ud800")),
    st.sampled_from(DEPTHS).map(lambda d: nested(d).text),
    st.sampled_from(ODD_SCHEMAS).map(lambda v: dumps(v)),
)
"""JSON text for the proto's JSON-text fields: valid, invalid, deep, out of range."""


def _fill_item(draw: st.DrawFn, item: pb.InputItem) -> None:
    kind = draw(st.sampled_from(("message", "parts", "function_call", "function_call_output", "empty")))
    if kind == "message":
        item.message.role = draw(st.sampled_from(("user", "assistant", "robot", "")))
        item.message.text = draw(proto_strings)
    elif kind == "parts":
        item.message.role = draw(st.sampled_from(("user", "assistant")))
        item.message.parts.SetInParent()
        for _ in range(draw(st.integers(0, 2))):
            part = item.message.parts.parts.add()
            if draw(st.booleans()):
                part.input_text.text = draw(proto_strings)
            else:
                part.output_text.text = draw(proto_strings)
                part.output_text.annotations.extend(draw(st.lists(json_texts, max_size=2)))
                part.output_text.logprobs.extend(draw(st.lists(json_texts, max_size=2)))
    elif kind == "function_call":
        item.function_call.call_id = draw(st.sampled_from(("call_1", "$CALL", "")))
        item.function_call.name = draw(st.sampled_from(("lookup", "")))
        item.function_call.arguments = draw(json_texts)
    elif kind == "function_call_output":
        out = item.function_call_output
        out.call_id = draw(st.sampled_from(("$CALL", "call_unknown", "")))
        if draw(st.booleans()):
            out.parts_json = draw(json_texts)
        else:
            out.text = draw(proto_strings)


@st.composite
def create_requests(draw: st.DrawFn) -> pb.CreateRequest:
    """A typed ``CreateRequest``, mostly valid, with odd contents in the fields that carry JSON text."""
    req = pb.CreateRequest(model=draw(st.sampled_from(("m", "m", "", "x" * 300))))
    req.metadata.update({"answer_tokens": str(draw(st.integers(1, 4))), "tool_calls": "1"})
    if draw(st.booleans()):
        req.text = draw(proto_strings)
    else:
        req.items.SetInParent()
        for _ in range(draw(st.integers(0, 3))):
            _fill_item(draw, req.items.items.add())
    for _ in range(draw(st.integers(0, 2))):
        tool = req.tools.add(name=draw(st.sampled_from(("lookup", "f", ""))))
        if draw(st.integers(0, 3)):
            tool.parameters = draw(json_texts)
    if draw(st.booleans()):
        if draw(st.booleans()):
            req.tool_choice.mode = draw(st.sampled_from(("auto", "none", "required", "any", "")))
        else:
            req.tool_choice.json = draw(json_texts)
    if draw(st.booleans()):
        req.metadata[draw(st.sampled_from(("answer_tokens", "tool_calls", "arg_words", "seed", "x")))] = draw(
            st.sampled_from(tuple(v for v in KNOB_VALUES if "\ud800" not in v))
        )
    if draw(st.booleans()):
        req.max_output_tokens = draw(st.sampled_from((-1, 0, 16, 2**31, 2**63 - 1, -(2**63))))
    if draw(st.booleans()):
        req.stream_id = draw(st.sampled_from(tuple(x for x in VALID_LANES + ODD_LANES if "\ud800" not in x)))
    if draw(st.booleans()):
        req.previous_response_id = draw(st.sampled_from(("$PREV", "resp_unknown", "")))
    for name in ("store", "stream", "parallel_tool_calls", "generate"):
        if draw(st.integers(0, 3)) == 0:
            setattr(req, name, draw(st.booleans()))
    if draw(st.integers(0, 5)) == 0:
        req.instructions = draw(proto_strings)
    return req


STRING_PATHS = ((1,), (2,), (4,), (7,), (12,), (5, 1), (5, 3), (6, 2), (6, 1), (3, 1, 1, 1), (3, 1, 3, 3))
"""Field-number paths in ``CreateRequest`` to a string field (model, text, instructions, previous_response_id,
stream_id, tool name, tool parameters, tool_choice json/mode, a message's role, a function output's parts_json)."""


def framed(path: tuple[int, ...], payload: bytes, *, envelope: bool = True) -> bytes:
    """``payload`` as the string field at ``path`` of a ``CreateRequest`` (inside ``ClientEvent.create`` with
    ``envelope``), framed by hand."""
    for number in reversed(path):
        payload = bytes_field(number, payload)
    return bytes_field(1, payload) if envelope else payload


@st.composite
def typed_messages(draw: st.DrawFn, *, envelope: bool = True) -> Body:
    """Bytes of one ``ClientEvent`` carrying a typed request (``envelope``; else the bare ``CreateRequest`` of
    a ``Create`` call): odd, hand-framed, mutated or random."""
    kind = draw(st.sampled_from(("proto",) * 5 + ("invalid_utf8", "mutated", "random", "empty", "wire")))
    if kind == "random":
        return Body(draw(st.binary(max_size=64)), "random bytes")
    if kind == "empty":
        return Body(b"", "an empty ClientEvent")
    req = draw(create_requests())
    data = serialize(req, envelope=envelope)
    if kind == "invalid_utf8":
        path = draw(st.sampled_from(STRING_PATHS))
        junk = draw(st.sampled_from((b"\xff", b"m\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80")))
        return Body(data + framed(path, junk, envelope=envelope), f"invalid UTF-8 {junk!r} in field {path}", req)
    if kind == "wire":  # a field of the wrong wire type, or a length beyond the message
        number = draw(st.sampled_from((1, 2, 3, 5, 8, 10, 12, 99)))
        wire = draw(st.sampled_from((0, 1, 2, 5)))
        tail = draw(st.sampled_from((b"\x01", b"\xff" * 10 + b"\x01", varint(1 << 30), b"")))
        odd = varint(number << 3 | wire) + tail
        return Body(data + (bytes_field(1, odd) if envelope else odd), f"field {number} wire type {wire}", req)
    if kind == "mutated":
        mutated, how = _mutate(
            data,
            draw(st.sampled_from(("truncate", "flip", "insert", "trailing"))),
            draw(st.integers(0, 1 << 16)),
            draw(st.sampled_from((b"\xff", b"\x0a\xff", b"\x00", b"\x80"))),
        )
        return Body(mutated, how, req)
    return Body(data, "typed", req)


def serialize(req: pb.CreateRequest, *, envelope: bool) -> bytes:
    return pb.ClientEvent(create=req).SerializeToString() if envelope else req.SerializeToString()


def substitute_typed(body: Body, prev: str | None, call: str | None, *, envelope: bool = True) -> bytes:
    """:func:`substitute` for a typed message made through the protobuf API (a length-prefixed field cannot be
    edited in place); hand-framed and mutated bytes are sent as they are."""
    if body.how != "typed" or not isinstance(body.obj, pb.CreateRequest):
        return body.data
    req = pb.CreateRequest()
    req.CopyFrom(body.obj)
    if prev is not None and req.HasField("previous_response_id") and req.previous_response_id == "$PREV":
        req.previous_response_id = prev
    if call is not None:
        for item in req.items.items:
            for m in (item.function_call, item.function_call_output):
                if m.call_id == "$CALL":
                    m.call_id = call
    return serialize(req, envelope=envelope)


def expected_lane_typed(data: bytes) -> str | None:
    """The lane a typed message names, as a protobuf decoder reads it (None: undecodable, unnamed, invalid)."""
    from turnbench.state import valid_lane

    try:
        event = pb.ClientEvent.FromString(data)
    except Exception:
        return None
    if event.WhichOneof("event") != "create" or not event.create.HasField("stream_id"):
        return None
    return valid_lane(event.create.stream_id)


class _Envelope(msgspec.Struct):
    stream_id: Any = None


def lanes_json(data: bytes) -> set[str | None]:
    """The lanes the answer to a JSON event may come on: the lane it names when a strict JSON decoder reads the
    whole event; when it cannot (the event is malformed), the default lane, or the lane a skip-scan reads."""
    from turnbench.state import valid_lane

    try:
        obj = msgspec.json.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError, UnicodeDecodeError):
        try:
            lane = valid_lane(msgspec.json.decode(data, type=_Envelope).stream_id)
        except Exception:
            lane = None
        return {None, lane}
    return {valid_lane(obj.get("stream_id")) if isinstance(obj, dict) else None}
