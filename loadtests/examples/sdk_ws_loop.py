"""The same agent loop on the official SDK in WebSocket mode: ``client.responses.connect()``.

The connection keeps the previous response in its cache, so ``store=false`` chaining works.
The migration-cost counter diffs this file against ``sdk_http_loop.py``; keep the two parallel.
"""

from __future__ import annotations

import json
from typing import Any

from openai import OpenAI

TOOLS: list[Any] = [
    {
        "type": "function",
        "name": "word_count",
        "description": "Count the words of a text.",
        "parameters": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
    }
]


def run_tool(name: str, arguments: str) -> str:
    """The client-side tool: count words of the ``text`` argument."""
    args = json.loads(arguments or "{}")
    return str(len(str(args.get("text", "")).split()))


def agent(base_url: str, api_key: str = "sk-test", model: str = "turnbench-sim") -> str:
    """Run the loop to its final answer and return the answer text."""
    client = OpenAI(api_key=api_key, base_url=base_url)
    items: list[Any] = [{"role": "user", "content": "Count the words, then answer."}]
    previous: str | None = None
    with client.responses.connect() as conn:
        while True:
            response = None
            conn.response.create(model=model, input=items, tools=TOOLS, store=False, previous_response_id=previous)
            for event in conn:
                if event.type == "response.completed":
                    response = event.response
                    break
                if event.type in ("response.failed", "error"):
                    raise RuntimeError(f"turn failed: {event}")
            if response is None:
                raise RuntimeError("connection closed without response.completed")
            calls = [o for o in response.output if o.type == "function_call"]
            if not calls:
                return response.output_text
            previous = response.id
            items = [
                {"type": "function_call_output", "call_id": c.call_id, "output": run_tool(c.name, c.arguments)}
                for c in calls
            ]
