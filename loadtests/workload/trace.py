"""Traces: an agent's recorded shape, replayed over every transport (``turnbench run --trace FILE``).

A trace is JSON Lines, one object per request (a *turn*), written by ``turnbench record`` (the proxy in
:mod:`loadtests.workload.record_proxy`) or by an importer below. The fields a replay reads:

- ``conversation`` (str): which agent conversation the turn belongs to; ``turn`` (int): its position;
- ``tool_outputs`` (list of int): bytes of each ``function_call_output`` item the request carried new;
- ``gap_ms`` (float or null): the client's time between the previous response's end and this request (its
  tool and think time); null on a conversation's first turn;
- ``output_kind`` (``function_call`` or ``message``) and ``output_tokens`` (int): what the model answered.

``record`` also writes, for the reader: ``transport`` (``https`` or ``ws``), ``t_ms`` (start, from the
trace's start), ``input`` (per item: ``type``, ``role``, ``bytes``, ``tokens``, ``sha256``; the text itself
only with ``--keep-content``), ``input_bytes`` (all of the request's input), ``previous_response_id``,
``response_id``, ``status``, ``ttft_ms`` and ``duration_ms`` as seen upstream.

A replay makes one rollout per conversation (rollout k replays conversation k mod n): the scripted model
calls a tool as many times as the conversation did, each tool output is cut or padded to the recorded size
and returned after the recorded gap, and the final answer has the recorded length. Two calls the client made
in parallel (two outputs in one request) replay as one output of their summed size.

Importers (``--trace-format``; ``auto`` tells them apart by their keys):

- ``mooncake``: Mooncake-style JSONL, one request per line: ``timestamp`` (ms), ``input_length`` and
  ``output_length`` (tokens), ``hash_ids`` (the prompt's 512-token block hashes). A request whose
  ``hash_ids`` begin with an earlier request's continues that session (the longest such prefix wins); the
  tokens it adds beyond the earlier prompt and answer are its new input (a tool output, at
  :data:`BYTES_PER_TOKEN`), and the gap is the time since the earlier request's arrival (the trace has no
  response times, so the model's time is inside it).
- ``messages``: OpenAI-style transcripts, one conversation per line as ``{"messages": [...]}`` (or a bare
  list) with assistant ``tool_calls`` and ``role: "tool"`` results, as SWE-agent and OpenHands trajectories
  are published: every assistant message is a turn; the tool messages after it are the next turn's tool
  outputs; the last assistant message's content is the answer (tokens at :data:`BYTES_PER_TOKEN`). No
  timing: gaps are 0 unless ``--gap-ms`` says.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from loadtests.workload.scenarios import Conversation, Scenario, load_scenario

__all__ = [
    "BYTES_PER_TOKEN",
    "FORMATS",
    "TraceError",
    "conversations",
    "detect_format",
    "from_messages",
    "from_mooncake",
    "read_trace",
    "scenario_from_trace",
]

BYTES_PER_TOKEN = 4
"""Bytes per token where a format gives only one of the two (English text and code average about 4)."""
FORMATS = ("auto", "turnbench", "mooncake", "messages")


class TraceError(ValueError):
    """A trace that cannot be read; the message names the file and the line."""


def _lines(path: Path) -> Iterable[tuple[int, Any]]:
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("["):  # one JSON array instead of lines
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TraceError(f"{path}: not JSON: {exc}") from exc
        yield from enumerate(data, 1)
        return
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                yield n, json.loads(line)
            except json.JSONDecodeError as exc:
                raise TraceError(f"{path}:{n}: not JSON: {exc}") from exc


def detect_format(first: Any) -> str:
    """The format of a trace from its first record."""
    if isinstance(first, Mapping):
        if "conversation" in first and "tool_outputs" in first:
            return "turnbench"
        if "hash_ids" in first or "input_length" in first:
            return "mooncake"
        if "messages" in first:
            return "messages"
    if isinstance(first, list):
        return "messages"
    raise TraceError("unknown trace format: expected turnbench, Mooncake (hash_ids) or messages records")


def read_trace(path: str | Path, fmt: str = "auto", *, gap_ms: float = 0.0) -> list[dict[str, Any]]:
    """The turns of a trace in ``fmt`` (see the module docstring), as turnbench trace records."""
    p = Path(path)
    if not p.is_file():
        raise TraceError(f"{p}: no such trace file")
    records = list(_lines(p))
    if not records:
        raise TraceError(f"{p}: empty trace")
    if fmt == "auto":
        fmt = detect_format(records[0][1])
    if fmt == "turnbench":
        for n, r in records:
            if not isinstance(r, dict) or "conversation" not in r:
                raise TraceError(f"{p}:{n}: a turnbench trace record needs 'conversation'")
        return [r for _, r in records]
    if fmt == "mooncake":
        return from_mooncake(records, source=str(p))
    if fmt == "messages":
        return from_messages(records, source=str(p), gap_ms=gap_ms)
    raise TraceError(f"unknown trace format {fmt!r}; choose from {', '.join(FORMATS)}")


def from_mooncake(records: Sequence[tuple[int, Any]], *, source: str = "trace") -> list[dict[str, Any]]:
    """Mooncake-style requests → turn records, sessions rebuilt from shared block-hash prefixes."""
    sessions: list[dict[str, Any]] = []  # per session: its last request's hashes, lengths and time
    out: list[dict[str, Any]] = []
    for n, r in sorted(records, key=lambda nr: float(nr[1].get("timestamp", 0)) if isinstance(nr[1], dict) else 0):
        if not isinstance(r, dict):
            raise TraceError(f"{source}:{n}: expected an object")
        try:
            t = float(r.get("timestamp", 0.0))
            inp, outp = int(r["input_length"]), int(r["output_length"])
            hashes = [int(h) for h in r.get("hash_ids") or []]
        except (KeyError, TypeError, ValueError) as exc:
            raise TraceError(f"{source}:{n}: needs input_length, output_length (and hash_ids): {exc}") from exc
        best = None
        for s in sessions:
            h = s["hashes"]
            if h and len(h) <= len(hashes) and hashes[: len(h)] == h and (best is None or len(h) > len(best["hashes"])):
                best = s
        if best is None:
            best = {"id": f"s{len(sessions)}", "turn": -1}
            sessions.append(best)
            new_tokens, gap = 0, None
        else:
            new_tokens = max(0, inp - best["input"] - best["output"])
            gap = max(0.0, t - best["t"])
        best.update(hashes=hashes, input=inp, output=outp, t=t, turn=best["turn"] + 1)
        out.append(
            {
                "conversation": best["id"],
                "turn": best["turn"],
                "t_ms": t,
                "tool_outputs": [new_tokens * BYTES_PER_TOKEN] if best["turn"] > 0 else [],
                "gap_ms": gap,
                "input_tokens": inp,
                "output_tokens": outp,
                "output_kind": None,  # decided per conversation: every turn but the last called a tool
            }
        )
    return out


def _content_bytes(content: Any) -> int:
    if isinstance(content, str):
        return len(content.encode())
    if isinstance(content, list):  # content parts
        return sum(_content_bytes(p.get("text", "")) if isinstance(p, dict) else _content_bytes(p) for p in content)
    return len(json.dumps(content).encode()) if content is not None else 0


def from_messages(
    records: Sequence[tuple[int, Any]], *, source: str = "trace", gap_ms: float = 0.0
) -> list[dict[str, Any]]:
    """OpenAI-style transcripts (one conversation per record) → turn records."""
    out: list[dict[str, Any]] = []
    for k, (n, r) in enumerate(records):
        messages = r.get("messages") if isinstance(r, dict) else r
        if not isinstance(messages, list):
            raise TraceError(f"{source}:{n}: expected {{'messages': [...]}} or a list of messages")
        turn, pending = 0, []
        for m in messages:
            if not isinstance(m, dict):
                raise TraceError(f"{source}:{n}: a message must be an object")
            role = m.get("role")
            if role == "tool":
                pending.append(_content_bytes(m.get("content")))
            elif role == "assistant":
                calls = m.get("tool_calls") or []
                size = _content_bytes(m.get("content")) + sum(_content_bytes(c.get("function", c)) for c in calls)
                out.append(
                    {
                        "conversation": str(r.get("id", f"c{k}")) if isinstance(r, dict) else f"c{k}",
                        "turn": turn,
                        "tool_outputs": pending,
                        "gap_ms": gap_ms if turn else None,
                        "output_kind": "function_call" if calls else "message",
                        "output_tokens": max(1, size // BYTES_PER_TOKEN),
                    }
                )
                turn, pending = turn + 1, []
    if not out:
        raise TraceError(f"{source}: no assistant message in any transcript")
    return out


def conversations(turns: Sequence[Mapping[str, Any]]) -> list[Conversation]:
    """Turn records → one :class:`Conversation` per ``conversation`` id, in order of first appearance."""
    grouped: dict[str, list[Mapping[str, Any]]] = {}
    for t in turns:
        grouped.setdefault(str(t["conversation"]), []).append(t)
    out = []
    for ts in grouped.values():
        ts = sorted(ts, key=lambda t: int(t.get("turn", 0)))
        sizes = [int(sum(t.get("tool_outputs") or [])) for t in ts[1:]]
        gaps = [float(t.get("gap_ms") or 0.0) for t in ts[1:]]
        last = ts[-1]
        answer = int(last.get("output_tokens") or 64) if last.get("output_kind") in (None, "message") else 64
        out.append(Conversation(tuple(sizes), tuple(gaps), max(1, answer)))
    return out


def scenario_from_trace(
    path: str | Path, *, fmt: str = "auto", base: str = "agent-20", gap_ms: float = 0.0, rounds: int = 3
) -> Scenario:
    """A scenario that replays the trace at ``path``: ``base``'s profile, TLS and sizing, one rollout per
    conversation (at least ``rounds``), its tool calls, output sizes, gaps and answer lengths."""
    convs = conversations(read_trace(path, fmt, gap_ms=gap_ms))
    sizes = [s for c in convs for s in c.tool_output_bytes]
    stem = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in Path(path).stem)
    return load_scenario(base).replace(
        name=f"trace-{stem}"[:60],
        description=f"replay of {Path(path).name}: {len(convs)} conversations, {len(sizes)} tool calls",
        tool_calls=max((len(c.tool_output_bytes) for c in convs), default=0),
        tool_output_bytes=int(statistics.median(sizes)) if sizes else 0,
        tool_output_sigma=0.0,
        tool_latency_ms=0.0,
        rollouts=max(len(convs), rounds),
        rounds=min(rounds, max(len(convs), rounds)),
        replay=tuple(convs),
    )
