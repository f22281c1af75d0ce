"""The transport-agnostic agent loop: model → tool call → tool result → model, until the final answer.

The same loop drives every client (``https``, ``ws``, ``grpc``, ``sdk-*``, ``inproc``); switching transport
changes the client object, never the loop. The state strategy decides what each turn sends:

* ``full``: no ``previous_response_id``; the whole history (user message, every ``function_call`` and
  ``function_call_output``) is re-sent each turn, ``store=false``.
* ``store``: ``previous_response_id`` + only the new items, ``store=true`` (the server may hydrate from its
  ResponseStore — or, on a connection transport, answer from its connection cache first).
* ``connection``: ``previous_response_id`` + only the new items, ``store=false``: works only on the same
  connection (WebSocket, gRPC ``Connect``).

Tools run *on the client*, for real, over the fixture corpus shipped in ``turnbench/data/corpus`` (read a file,
search text, count words), with an optional explicit extra latency and a deterministic output size.
Recovery: after a lost connection (``connection_closed``, ``connection_error``, the connection limit) the
loop asks the client for a fresh connection (``reconnect()``, every transport); then, and after
``previous_response_not_found``, it continues by store hydration (``store``) or by re-sending the full
context with ``previous_response_id`` null; what that cost is recorded.
Compaction (``compact_every``): every K tool-calling turns the history is compacted by ``POST
/v1/responses/compact`` and the conversation goes on from the compacted output, on a new chain
(:func:`run_rollout`).
"""

from __future__ import annotations

import asyncio
import math
import random
import re
import time
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import orjson

from clients.base import ResponsesClient
from clients.record import RolloutResult, TurnRecorder, TurnResult
from turnbench.tokenizer import DEFAULT_CORPUS, corpus_name

CORPUS_DIR = DEFAULT_CORPUS
SEARCH_TERMS = ("def ", "return", "import", "class ", "self", "raise", "yield", "lambda", "async", "None")
RECOVERABLE = frozenset(
    {"previous_response_not_found", "connection_closed", "connection_error", "websocket_connection_limit_reached"}
)


@cache
def _corpus(root: str) -> tuple[tuple[str, Path], ...]:
    """(presented name, stored path) of each file under `root`, by name, MANIFEST.txt and the licence left out."""
    base = Path(root)
    return tuple(
        sorted(
            (corpus_name(p.relative_to(base).as_posix()), p)
            for p in base.rglob("*")
            if p.is_file() and p.name not in ("MANIFEST.txt", "LICENSE-PSF.txt")
        )
    )


def corpus_files(root: str = str(CORPUS_DIR)) -> tuple[str, ...]:
    """Returns: the corpus-relative names the tools offer, sorted; a source stored as ``src/abc.py.txt`` is
    offered as ``src/abc.py`` (:func:`turnbench.tokenizer.corpus_name`), so the tool definitions and outputs an
    agent sees do not depend on how the corpus is stored."""
    return tuple(name for name, _ in _corpus(root))


class Toolbox:
    """Real, deterministic tools over a corpus.

    ``output_bytes``: median size a tool output is cut or padded to (0 = natural size); ``output_sigma``:
    lognormal spread around it (a coding agent's long tail); ``latency_ms``: explicit extra tool time.
    """

    def __init__(
        self,
        corpus_dir: Path | str = CORPUS_DIR,
        *,
        output_bytes: int = 4096,
        output_sigma: float = 0.0,
        latency_ms: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.root = Path(corpus_dir)
        self._paths = dict(_corpus(str(self.root)))
        self.files = corpus_files(str(self.root))
        if not self.files:
            raise ValueError(f"no corpus files under {self.root}")
        self.output_bytes = output_bytes
        self.output_sigma = output_sigma
        self.latency_ms = latency_ms
        self.seed = seed
        self._text: dict[str, str] = {}

    def definitions(self) -> list[dict[str, Any]]:
        """Function tool definitions; enums let the scripted model pick arguments that exist."""
        path = {"type": "string", "enum": list(self.files), "description": "corpus-relative file path"}
        return [
            {
                "type": "function",
                "name": "read_file",
                "description": "Read a file of the repository.",
                "parameters": {"type": "object", "properties": {"path": path}, "required": ["path"]},
            },
            {
                "type": "function",
                "name": "search_text",
                "description": "Lines containing a string.",
                "parameters": {
                    "type": "object",
                    "properties": {"query": {"type": "string", "enum": list(SEARCH_TERMS)}, "path": path},
                    "required": ["query", "path"],
                },
            },
            {
                "type": "function",
                "name": "word_count",
                "description": "Count lines, words, bytes of a file.",
                "parameters": {"type": "object", "properties": {"path": path}, "required": ["path"]},
            },
        ]

    def _read(self, rel: str) -> str:
        if rel not in self._text:
            path = self._paths.get(rel)
            if path is None:
                raise FileNotFoundError(rel)
            self._text[rel] = path.read_text(encoding="utf-8", errors="replace")
        return self._text[rel]

    def target_bytes(self, call_index: int) -> int:
        if self.output_bytes <= 0:
            return 0
        if self.output_sigma <= 0:
            return self.output_bytes
        rng = random.Random(self.seed * 7919 + call_index)
        return max(64, int(self.output_bytes * math.exp(rng.gauss(0.0, self.output_sigma))))

    def execute(self, name: str, arguments: str, call_index: int = 0) -> str:
        """Run a tool synchronously; errors become the tool's output, as an agent would report them."""
        try:
            args = orjson.loads(arguments or "{}")
            if name == "read_file":
                out = self._read(args["path"])
            elif name == "search_text":
                q, text = args["query"], self._read(args["path"])
                out = "\n".join(f"{n}: {line}" for n, line in enumerate(text.splitlines(), 1) if q in line)
                out = out or f"no match for {q!r}"
            elif name == "word_count":
                text = self._read(args["path"])
                words = len(re.findall(r"\S+", text))
                out = f"{len(text.splitlines())} lines, {words} words, {len(text.encode())} bytes"
            else:
                out = f"error: unknown tool {name!r}"
        except (KeyError, TypeError, ValueError, FileNotFoundError) as exc:
            out = f"error: {type(exc).__name__}: {exc}"
        return self._sized(out, call_index)

    def _sized(self, out: str, call_index: int) -> str:
        target = self.target_bytes(call_index)
        if target <= 0:
            return out
        if len(out) >= target:
            return out[:target]
        filler = self._read(self.files[call_index % len(self.files)])
        while len(out) < target:
            out += "\n" + filler[: target - len(out)]
        return out[:target]

    async def run(self, name: str, arguments: str, call_index: int = 0) -> str:
        if self.latency_ms > 0:
            await asyncio.sleep(self.latency_ms / 1000.0)
        return self.execute(name, arguments, call_index)


class ReplayToolbox(Toolbox):
    """The tools of a recorded conversation (``turnbench run --trace``): call k's output is cut or padded to
    ``sizes[k]`` bytes and returns ``gaps_ms[k]`` after the call (the client's tool and think time as
    recorded); past the recording, the last size and no wait."""

    def __init__(self, sizes: Sequence[int], gaps_ms: Sequence[float], *, seed: int = 0) -> None:
        super().__init__(output_bytes=max(sizes, default=0), seed=seed)
        self.sizes, self.gaps_ms = list(sizes), list(gaps_ms)

    def target_bytes(self, call_index: int) -> int:
        if not self.sizes:
            return 0
        return max(1, self.sizes[min(call_index, len(self.sizes) - 1)])

    async def run(self, name: str, arguments: str, call_index: int = 0) -> str:
        gap = self.gaps_ms[call_index] if call_index < len(self.gaps_ms) else 0.0
        if gap > 0:
            await asyncio.sleep(gap / 1000.0)
        return self.execute(name, arguments, call_index)


RECONNECT_DELAYS_S = (0.0, 0.1, 0.2, 0.4, 0.8, 1.6)
"""Waits before each reconnect attempt: a server restarting on the same port is back within ~3 s; no jitter,
so a benchmark's recovery is the same from run to run (the official SDK's auto-reconnect backs off likewise)."""


async def reconnect_with_backoff(client: ResponsesClient, delays_s: Sequence[float] = RECONNECT_DELAYS_S) -> bool:
    """``client.reconnect()``, retried after each delay of ``delays_s`` while it fails. Never raises (but
    cancellation). Returns: whether a connection was made."""
    for delay in delays_s:
        if delay:
            await asyncio.sleep(delay)
        try:
            await client.reconnect()
        except Exception:  # refused while the server is away: try again after the next delay
            continue
        return True
    return False


def _function_calls(response: dict[str, Any]) -> list[dict[str, Any]]:
    return [o for o in response.get("output", []) if o.get("type") == "function_call"]


def _answer_text(response: dict[str, Any]) -> str | None:
    for o in response.get("output", []):
        if o.get("type") == "message":
            return "".join(p.get("text", "") for p in o.get("content", []))
    return None


def _compacted_items(compacted: dict[str, Any]) -> list[dict[str, Any]]:
    """The output of ``POST /v1/responses/compact`` as the history that replaces the conversation: every item
    as it came (the user messages, then the compaction item), the way a client sends it back."""
    output = compacted.get("output")
    return [o for o in output if isinstance(o, dict)] if isinstance(output, list) else []


async def run_rollout(
    client: ResponsesClient,
    *,
    state: str,
    toolbox: Toolbox,
    task: str = "Investigate the repository and summarize what you find.",
    model: str = "turnbench-sim",
    metadata: dict[str, str] | None = None,
    rollout_id: int = 0,
    scheduled_ns: int | None = None,
    max_turns: int = 200,
    max_recoveries: int = 3,
    reconnect_delays_s: Sequence[float] = RECONNECT_DELAYS_S,
    clock: Callable[[], int] = time.perf_counter_ns,
    transport: str | None = None,
    connect_ms: float | None = None,
    stream: bool = True,
    compact_every: int = 0,
    compactor: ResponsesClient | None = None,
    compact_by_id: bool = False,
) -> RolloutResult:
    """Run one rollout to its final answer. Never raises for transport errors: they end up in the record.

    ``scheduled_ns``: open-loop due time of the first request (queueing before it is counted in turn 0).
    ``connect_ms``: the caller's connection setup time, in ms, recorded on turn 0 and on the rollout
    (reported apart: it is in no per-turn duration).
    ``reconnect_delays_s``: the waits before each reconnect attempt of one recovery (:func:`reconnect_with_backoff`).
    ``stream``: send ``"stream": true`` (as the Agents SDK always does; WebSocket servers ignore it, the
    HTTPS server then answers with SSE so TTFT and ITL exist).

    Compaction (``compact_every`` K > 0), as a coding agent compacts a long history: after every K-th model
    turn that called tools, once the tools have run, the conversation up to the model's calls is compacted by
    ``POST /v1/responses/compact`` on ``compactor`` (default ``client``, which must then serve it), and the
    compacted output (the user messages, one compaction item) replaces the history. The tool outputs are the
    new input of the next turn, which starts a new chain: ``full`` sends the compacted items and the outputs,
    ``store`` and ``connection`` send the same without ``previous_response_id`` (the connection cache restarts
    from it). ``compact_by_id``: compact by ``previous_response_id`` (the stored response; state ``store`` on
    a compactor of the same server) instead of sending the history; where that response is not found there,
    the history is sent after all. A compaction call is a record of its own (phase ``compact``), the next
    model turn is phase ``after_compact``; a failed compaction ends the rollout with its error.
    ``max_turns`` counts requests, compaction calls included.
    """
    if state not in ("full", "store", "connection"):
        raise ValueError(f"unknown state strategy {state!r}")
    if compact_every < 0:
        raise ValueError(f"compact_every must be >= 0; got {compact_every}")
    compactor = compactor if compactor is not None else client
    if compact_every and not compactor.serves_compact:
        raise ValueError(f"{compactor.transport} cannot compact (POST /v1/responses/compact is an HTTPS route)")
    name = transport or client.transport
    tools = toolbox.definitions()
    meta = dict(metadata or {})
    history: list[dict[str, Any]] = [{"type": "message", "role": "user", "content": task}]
    new_items: list[dict[str, Any]] = list(history)
    prev_id: str | None = None
    turns: list[TurnResult] = []
    tool_calls: list[tuple[str, str]] = []
    tool_ms_total = recovery_ms = 0.0
    recoveries = compactions = model_turns = 0
    pending_tool_ms = 0.0
    phase = "turn"
    t_start = scheduled_ns if scheduled_ns is not None else clock()
    final: str | None = None
    error: str | None = None

    def body() -> dict[str, Any]:
        if state == "full" or prev_id is None:
            return {
                "model": model,
                "input": history,
                "tools": tools,
                "store": state == "store",
                "stream": stream,
                "metadata": meta,
            }
        return {
            "model": model,
            "previous_response_id": prev_id,
            "input": new_items,
            "tools": tools,
            "store": state == "store",
            "stream": stream,
            "metadata": meta,
        }

    def recorder(index: int, kind: str, tool_ms: float) -> TurnRecorder:
        return TurnRecorder(
            name,
            state,
            rollout_id=rollout_id,
            turn_index=index,
            tool_ms=tool_ms,
            connect_ms=connect_ms if index == 0 else None,
            clock=clock,
            phase=kind,
        )

    async def compact(index: int, conversation: list[dict[str, Any]]) -> tuple[TurnResult, dict[str, Any]]:
        """One compaction call: by the stored response's id where it can be, else with the conversation."""
        by_id = compact_by_id and prev_id is not None
        request = {"model": model, **({"previous_response_id": prev_id} if by_id else {"input": conversation})}

        async def call(body: dict[str, Any]) -> tuple[TurnRecorder, dict[str, Any]]:
            rec = recorder(index, "compact", 0.0)
            rec.scheduled()
            try:
                compacted = await compactor.compact(body, recorder=rec)
            except Exception as exc:  # a client that let one escape: a failed compaction, as safe_create records
                rec.fail(f"{type(exc).__name__}: {exc}", "client_exception")
                compacted = {}
            rec.input_bytes = len(orjson.dumps(body.get("input", [])))
            return rec, compacted

        rec, compacted = await call(request)
        if by_id and rec.error_code == "previous_response_not_found":  # another process: send the history
            rec, compacted = await call({"model": model, "input": conversation})
        return rec.result(), compacted

    index = 0
    while True:
        if index >= max_turns:
            error = f"no final answer after {max_turns} turns"
            break
        rec = recorder(index, phase, pending_tool_ms)
        rec.scheduled(t_start if index == 0 else None)
        request = body()
        response = await client.safe_create(request, recorder=rec)
        rec.input_bytes = len(orjson.dumps(request["input"]))
        result = rec.result()
        turns.append(result)
        index += 1
        if not result.success:
            if result.error_code in RECOVERABLE and recoveries < max_recoveries:
                r0 = clock()
                recoveries += 1
                if result.error_code != "previous_response_not_found":
                    await reconnect_with_backoff(client, reconnect_delays_s)  # if it cannot, the next turn says why
                if state != "store" or result.error_code == "previous_response_not_found":
                    prev_id = None  # start a fresh chain with the full context
                recovery_ms += (clock() - r0) / 1e6 + (result.turn_ms or 0.0)
                continue
            error = f"{result.error_code}: {result.error}"
            break
        pending_tool_ms = 0.0
        phase = "turn"
        calls = _function_calls(response)
        if not calls:
            final = _answer_text(response)
            break
        model_turns += 1
        prev_id = response.get("id")
        mark = len(history)  # the conversation before this turn's calls
        new_items, asked = [], []
        for call in calls:
            t0 = clock()
            output = await toolbox.run(call["name"], call["arguments"], len(tool_calls))
            pending_tool_ms += (clock() - t0) / 1e6
            tool_calls.append((call["name"], call["arguments"]))
            fc = {
                "type": "function_call",
                "call_id": call["call_id"],
                "name": call["name"],
                "arguments": call["arguments"],
            }
            fco = {"type": "function_call_output", "call_id": call["call_id"], "output": output}
            history += [fc, fco]
            asked.append(fc)
            new_items.append(fco)
        tool_ms_total += pending_tool_ms
        if compact_every and model_turns % compact_every == 0:
            done, compacted = await compact(index, [*history[:mark], *asked])
            turns.append(done)
            index += 1
            items = _compacted_items(compacted)
            if not done.success or not items:
                error = f"compaction failed: {done.error_code or 'no_output'}: {done.error or 'no compacted output'}"
                break
            compactions += 1
            history = [*items, *new_items]  # the compacted conversation, then the tool outputs as new input
            prev_id = None  # a new chain: store and connection send it all once, without previous_response_id
            phase = "after_compact"
    return RolloutResult(
        transport=name,
        state=state,
        rollout_id=rollout_id,
        success=error is None and final is not None,
        error=error,
        turns=turns,
        rollout_ms=(clock() - t_start) / 1e6,
        tool_ms=tool_ms_total,
        recoveries=recoveries,
        recovery_ms=recovery_ms,
        connect_ms=connect_ms if connect_ms is not None else (turns[0].connect_ms if turns else None),
        final_output=final,
        tool_calls=tool_calls,
        compactions=compactions,
    )
