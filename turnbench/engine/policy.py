"""The scripted agent policy, shared by every engine: deterministic, transport-blind.

The model calls a tool until the conversation holds N ``function_call_output`` items, then answers. What it
does is a pure function of (seed, number of tool outputs so far, tools, knobs, tool choice, text format): the
same seed gives the same calls and answer on every transport and every state strategy.

* **Knobs** (:class:`Knobs`): request ``metadata`` keys, each an integer in a bounded range, else the server's
  defaults (``turnbench serve --tool-calls N --answer-tokens N --arg-words N --seed N``):

  =================  ==============================================================  ============
  ``tool_calls``     tool calls before the answer (when the request has tools)       0 … 1000
  ``answer_tokens``  words of the final answer (cut at ``max_output_tokens``)        1 … 100000
  ``arg_words``      words per free-text value (tool arguments, structured answers)  1 … 1000
  ``seed``           what the calls, arguments and answer are drawn from             0 … 2**63-1
  =================  ==============================================================  ============

* **tool_choice** (:class:`ToolChoice`): ``auto`` follows the knobs; ``none`` answers; ``required`` calls a
  tool whatever the knobs say; ``{"type": "function", "name": N}`` calls N; ``{"type": "allowed_tools",
  "mode": "auto"|"required", "tools": [...]}`` restricts the tools it picks from.
* **text.format** (:class:`TextFormat`): ``json_schema`` answers with a JSON instance of the schema (as tool
  arguments are: :func:`json_instance`), ``json_object`` with a JSON object, ``text`` with words.

Every bad value is an :class:`InvalidRequestError` naming its ``param``, raised before ``response.created``.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from turnbench.errors import InvalidRequestError
from turnbench.schema import MAX_SCHEMA_DEPTH, FunctionCallOutputItem, FunctionTool, InputItem, nesting_depth

__all__ = ["KNOB_RANGES", "Knobs", "OutputPlan", "TextFormat", "ToolChoice", "json_instance", "plan_output"]

WORDS = (
    "the result shows module parser returns value from cache so we update index and then check tests for "
    "function call output token stream latency state buffer connection request handler error path file line "
    "config build patch diff commit branch merge review agent tool search read write compute answer"
).split()

KNOB_RANGES: Mapping[str, tuple[int, int]] = {
    "tool_calls": (0, 1000),
    "answer_tokens": (1, 100_000),
    "arg_words": (1, 1000),
    "seed": (0, 2**63 - 1),
}
"""metadata key → inclusive range of the integer it must hold."""

_MAX_DEPTH = 8  # nesting of a generated JSON instance; deeper schemas get null (or their type's simplest value)


@dataclass(frozen=True, slots=True)
class Knobs:
    """The scripted model's parameters for one request (see the module docstring)."""

    tool_calls: int
    answer_tokens: int
    arg_words: int
    seed: int

    @classmethod
    def parse(cls, metadata: Mapping[str, str], defaults: Knobs) -> Knobs:
        """Knobs from request ``metadata``, each checked against :data:`KNOB_RANGES`; missing ones default."""
        values: dict[str, int] = {}
        for name, (lo, hi) in KNOB_RANGES.items():
            raw = metadata.get(name)
            if raw is None:
                values[name] = getattr(defaults, name)
                continue
            text = raw.strip()
            if not (text.isascii() and text.isdigit() and len(text) <= 20) or not lo <= int(text) <= hi:
                raise InvalidRequestError(
                    f"Invalid 'metadata.{name}': expected an integer from {lo} to {hi}, got {raw[:40]!r}.",
                    f"metadata.{name}",
                    code="invalid_value",
                )
            values[name] = int(text)
        return cls(**values)


@dataclass(frozen=True, slots=True)
class ToolChoice:
    """``mode``: auto | none | required; ``names``: the tools it may call (None: all of them)."""

    mode: str = "auto"
    names: tuple[str, ...] | None = None

    @classmethod
    def parse(cls, raw: object, tools: Sequence[FunctionTool]) -> ToolChoice:
        known = {t.name for t in tools}
        if raw in ("auto", "none", "required"):
            choice = cls(str(raw))
        elif isinstance(raw, Mapping) and raw.get("type") == "function" and isinstance(raw.get("name"), str):
            choice = cls("required", (raw["name"],))
        elif isinstance(raw, Mapping) and raw.get("type") == "allowed_tools":
            mode, listed = raw.get("mode", "auto"), raw.get("tools")
            if mode not in ("auto", "required") or not isinstance(listed, list):
                raise InvalidRequestError(
                    "Invalid 'tool_choice': allowed_tools needs 'mode' (auto or required) and a list of 'tools'.",
                    "tool_choice",
                    code="invalid_value",
                )
            names = tuple(str(t.get("name")) for t in listed if isinstance(t, Mapping))
            choice = cls(str(mode), names)
        else:
            raise InvalidRequestError(
                f"Invalid 'tool_choice': {raw!r}. Expected 'auto', 'none', 'required', "
                "{'type': 'function', 'name': ...} or {'type': 'allowed_tools', ...}.",
                "tool_choice",
                code="invalid_value",
            )
        unknown = [n for n in choice.names or () if n not in known]
        if unknown:
            raise InvalidRequestError(
                f"Invalid 'tool_choice': no tool named {unknown[0]!r} in 'tools'.", "tool_choice", code="invalid_value"
            )
        if choice.mode == "required" and not (choice.names or known):
            raise InvalidRequestError(
                "Invalid 'tool_choice': 'required' needs at least one tool in 'tools'.",
                "tool_choice",
                code="invalid_value",
            )
        return choice


@dataclass(frozen=True, slots=True)
class TextFormat:
    """``kind``: text | json_schema | json_object; ``schema`` for json_schema."""

    kind: str = "text"
    schema: Mapping[str, Any] | None = None

    @classmethod
    def parse(cls, text: object) -> TextFormat:
        """From the request's ``text`` parameter (``{"format": {...}, "verbosity": ...}``)."""
        if text is None:
            return cls()
        fmt = text.get("format") if isinstance(text, Mapping) else None
        if fmt is None:
            if not isinstance(text, Mapping):
                raise InvalidRequestError("Invalid 'text': expected an object.", "text", code="invalid_type")
            return cls()
        kind = fmt.get("type") if isinstance(fmt, Mapping) else None
        if kind in ("text", "json_object"):
            return cls(str(kind))
        if kind == "json_schema":
            schema = fmt.get("schema") if isinstance(fmt, Mapping) else None
            if not isinstance(schema, Mapping):
                raise InvalidRequestError(
                    "Invalid 'text.format.schema': expected a JSON schema object.",
                    "text.format.schema",
                    code="invalid_value",
                )
            if nesting_depth(schema, MAX_SCHEMA_DEPTH) > MAX_SCHEMA_DEPTH:
                raise InvalidRequestError(
                    f"Invalid 'text.format.schema': nested more than {MAX_SCHEMA_DEPTH} levels deep.",
                    "text.format.schema",
                )
            return cls("json_schema", schema)
        raise InvalidRequestError(
            f"Invalid 'text.format.type': {kind!r}. Expected 'text', 'json_schema' or 'json_object'.",
            "text.format.type",
            code="invalid_value",
        )


@dataclass(frozen=True, slots=True)
class OutputPlan:
    kind: str  # "function_call" | "message"
    content: str  # the arguments JSON (function call) or the answer text (message)
    name: str = ""
    call_id: str = ""


def _words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(max(1, n)))


def _resolve(schema: Mapping[str, Any], root: Mapping[str, Any]) -> Mapping[str, Any]:
    """Follow a local ``$ref`` (``#/$defs/Name``, as pydantic writes them); anything else stays as is."""
    seen = 0
    while isinstance(ref := schema.get("$ref"), str) and ref.startswith("#/") and seen < _MAX_DEPTH:
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part) if isinstance(target, Mapping) else None
        if not isinstance(target, Mapping):
            return {}
        schema, seen = target, seen + 1
    return schema


_FORMATS = {
    "date-time": "2026-01-01T00:00:00Z",
    "date": "2026-01-01",
    "time": "00:00:00",
    "email": "agent@example.com",
    "uri": "https://example.com/",
    "uuid": "00000000-0000-4000-8000-000000000000",
}


def _int(schema: Mapping[str, Any], key: str, default: int) -> int:
    """An integer bound of ``schema`` (a float bound is rounded up); anything else is ``default``."""
    value = schema.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value or abs(value) > 2**53:
        return default
    return int(value) if value == int(value) else int(value) + 1


def json_instance(
    schema: Mapping[str, Any],
    rng: random.Random,
    words: int,
    root: Mapping[str, Any] | None = None,
    depth: int = 0,
    budget: list[int] | None = None,
) -> Any:
    """A value that validates against ``schema`` (the JSON Schema subset tools and structured outputs use:
    objects with properties, arrays, enums and consts, ``anyOf``/``oneOf``/``allOf``, local ``$ref``, string
    formats, numeric bounds). Deterministic for a given ``rng``; bounded depth. A malformed schema (a client's
    odd tool) never raises: what cannot be read is left out or takes its type's simplest value. ``budget``
    (a one-item list, shared down the recursion): words left for all strings together; past it they are
    empty, so a schema of a thousand properties cannot make the answer huge."""
    if not isinstance(schema, Mapping) or depth > 4 * _MAX_DEPTH:  # a $ref or anyOf cycle ends here
        return None
    root = schema if root is None else root
    schema = _resolve(schema, root)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return rng.choice(schema["enum"])
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            concrete = [o for o in options if isinstance(o, Mapping) and _resolve(o, root).get("type") != "null"]
            return json_instance(concrete[0] if concrete else options[0], rng, words, root, depth + 1, budget)
    if isinstance(schema.get("allOf"), list) and schema["allOf"] and depth < _MAX_DEPTH:
        merged: dict[str, Any] = {}
        for part in schema["allOf"]:
            if isinstance(part, Mapping):
                merged.update(_resolve(part, root))
        return json_instance(merged, rng, words, root, depth + 1, budget)
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        if depth >= _MAX_DEPTH:
            return {}
        props = schema.get("properties")
        if not isinstance(props, Mapping):
            return {}
        return {
            k: json_instance(v, rng, words, root, depth + 1, budget) for k, v in props.items() if isinstance(v, Mapping)
        }
    if kind == "array":
        if depth >= _MAX_DEPTH:
            return []
        count = min(8, max(_int(schema, "minItems", 1), min(2, _int(schema, "maxItems", 2))))
        items = schema.get("items")
        each: Mapping[str, Any] = items if isinstance(items, Mapping) else {}
        return [json_instance(each, rng, words, root, depth + 1, budget) for _ in range(count)]
    if kind == "integer":
        lo, hi = _int(schema, "minimum", 1), _int(schema, "maximum", 100)
        return rng.randint(lo, max(lo, hi))
    if kind == "number":
        lo_f, hi_f = float(_int(schema, "minimum", 0)), float(_int(schema, "maximum", 100))
        return round(rng.uniform(lo_f, max(lo_f, hi_f)), 2)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "null":
        return None
    fmt = schema.get("format")
    if isinstance(fmt, str) and fmt in _FORMATS:
        return _FORMATS[fmt]
    if budget is None:
        return _words(rng, words)
    n = min(words, budget[0])
    budget[0] -= n
    return _words(rng, n) if n > 0 else ""


def _word_budget(max_words: int | None) -> int:
    return 100_000 if max_words is None else max_words + 1


def plan_output(
    items: Sequence[InputItem],
    tools: Sequence[FunctionTool],
    knobs: Knobs,
    *,
    choice: ToolChoice = ToolChoice(),
    text_format: TextFormat = TextFormat(),
    max_words: int | None = None,
) -> OutputPlan:
    """Decide the next output of the scripted model. ``max_words``: an answer longer than this is cut
    (one word more than the limit is still planned, so the response ends ``incomplete``)."""
    done = sum(1 for i in items if isinstance(i, FunctionCallOutputItem))
    seed = knobs.seed
    rng = random.Random(seed * 1_000_003 + done)
    callable_tools = [t for t in tools if choice.names is None or t.name in choice.names]
    if choice.mode == "required":
        call = bool(callable_tools)
    elif choice.mode == "none":
        call = False
    else:
        call = done < knobs.tool_calls and bool(callable_tools)
    if call:
        tool = callable_tools[rng.randrange(len(callable_tools))]
        schema = tool.parameters or {"type": "object", "properties": {}}
        args = json_instance(schema, rng, knobs.arg_words, budget=[_word_budget(max_words)])
        return OutputPlan(
            kind="function_call",
            content=json.dumps(args, separators=(",", ":")),
            name=tool.name,
            call_id=f"call_{seed}_{done}_{rng.getrandbits(32):08x}",
        )
    n = knobs.answer_tokens if max_words is None else min(knobs.answer_tokens, max_words + 1)
    if text_format.kind == "json_schema" and text_format.schema is not None:  # strings as long as arguments
        value = json_instance(text_format.schema, rng, knobs.arg_words, budget=[_word_budget(max_words)])
        return OutputPlan(kind="message", content=json.dumps(value))
    text = _words(rng, n)
    if text_format.kind == "json_object":
        return OutputPlan(kind="message", content=json.dumps({"answer": text}))
    return OutputPlan(kind="message", content=text[0].upper() + text[1:] + ".")
