"""The scripted agent policy, shared by every engine: deterministic, transport-blind.

The model calls a tool until the conversation holds N ``function_call_output`` items, then answers. N comes
from ``metadata["tool_calls"]`` or the profile. Arguments are filled from each tool's JSON schema (``enum``
values first, so a client's tools get arguments they can execute). Everything is a pure function of
(seed, number of tool outputs so far, tools, metadata): the same seed gives the same calls and answer on
every transport and every state strategy.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from turnbench.schema import FunctionCallOutputItem, FunctionTool, InputItem

WORDS = (
    "the result shows module parser returns value from cache so we update index and then check tests for "
    "function call output token stream latency state buffer connection request handler error path file line "
    "config build patch diff commit branch merge review agent tool search read write compute answer"
).split()


@dataclass(frozen=True, slots=True)
class OutputPlan:
    kind: str  # "function_call" | "message"
    content: str  # the arguments JSON (function call) or the answer text (message)
    name: str = ""
    call_id: str = ""


def _value(schema: Mapping[str, Any], rng: random.Random, words: int) -> Any:
    if schema.get("enum"):
        return rng.choice(list(schema["enum"]))
    kind = schema.get("type", "string")
    if kind == "integer":
        lo, hi = int(schema.get("minimum", 1)), int(schema.get("maximum", 100))
        return rng.randint(lo, hi)
    if kind == "number":
        return round(rng.uniform(0, 100), 2)
    if kind == "boolean":
        return rng.random() < 0.5
    return " ".join(rng.choice(WORDS) for _ in range(max(1, words)))


def plan_output(
    items: Sequence[InputItem],
    tools: Sequence[FunctionTool],
    metadata: Mapping[str, str],
    *,
    seed: int,
    default_tool_calls: int,
    default_answer_tokens: int,
) -> OutputPlan:
    """Decide the next output of the scripted model."""
    done = sum(1 for i in items if isinstance(i, FunctionCallOutputItem))
    want = int(metadata.get("tool_calls", default_tool_calls))
    seed = int(metadata.get("seed", seed))
    rng = random.Random(seed * 1_000_003 + done)
    if done < want and tools:
        tool = tools[rng.randrange(len(tools))]
        props: Mapping[str, Any] = (tool.parameters or {}).get("properties", {})
        arg_words = int(metadata.get("arg_words", 3))
        args = {k: _value(v, rng, arg_words) for k, v in props.items()}
        return OutputPlan(
            kind="function_call",
            content=json.dumps(args, separators=(",", ":")),
            name=tool.name,
            call_id=f"call_{seed}_{done}_{rng.getrandbits(32):08x}",
        )
    n = int(metadata.get("answer_tokens", default_answer_tokens))
    text = " ".join(rng.choice(WORDS) for _ in range(max(1, n)))
    return OutputPlan(kind="message", content=text[0].upper() + text[1:] + ".")
