"""An agent loop on the official SDK over HTTPS+SSE: ``client.responses.create(stream=True)``.

Chained with ``previous_response_id``, which over HTTP needs the server to persist responses (store=true).
The migration-cost counter diffs this file against ``sdk_ws_loop.py``; keep the two parallel.
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
    while True:
        response = None
        stream = client.responses.create(
            model=model, input=items, tools=TOOLS, store=True, previous_response_id=previous, stream=True
        )
        for event in stream:
            if event.type == "response.completed":
                response = event.response
            elif event.type in ("response.failed", "error"):
                raise RuntimeError(f"turn failed: {event}")
        if response is None:
            raise RuntimeError("stream ended without response.completed")
        calls = [o for o in response.output if o.type == "function_call"]
        if not calls:
            return response.output_text
        previous = response.id
        items = [
            {"type": "function_call_output", "call_id": c.call_id, "output": run_tool(c.name, c.arguments)}
            for c in calls
        ]
