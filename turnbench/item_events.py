"""The events of one output item (``response.output_item.added`` … ``response.output_item.done``), in the
order of (docs/protocol/http-sse.md, "Order rules"), with deltas paced by the engine; and the ids and token
pieces they are made of."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable

from turnbench.engine.base import KVHandle, ModelEngine
from turnbench.engine.policy import OutputPlan
from turnbench.schema import (
    ContentPartAdded,
    ContentPartDone,
    Event,
    FunctionCallArgumentsDelta,
    FunctionCallArgumentsDone,
    OutputFunctionCall,
    OutputItem,
    OutputItemAdded,
    OutputItemDone,
    OutputMessage,
    OutputText,
    OutputTextDelta,
    OutputTextDone,
)
from turnbench.tokenizer import Tokenizer


def new_id(prefix: str) -> str:
    """``resp_…``, ``msg_…``, ``fc_…``: 96 random bits, like the real API's ids."""
    return f"{prefix}_{os.urandom(12).hex()}"


def split_pieces(tokenizer: Tokenizer, content: str) -> list[tuple[int, str]]:
    """Planned output as (token id, exact text), so the deltas concatenate to ``content``."""
    ids = tokenizer.encode(content)
    pieces = list(zip(ids, tokenizer.token_texts(ids), strict=True))
    if "".join(p for _, p in pieces) != content:  # a multi-byte character split across tokens
        return [(0, ch) for ch in content]
    return pieces


async def item_events(
    engine: ModelEngine,
    plan: OutputPlan,
    pieces: list[tuple[int, str]],
    kv: KVHandle,
    *,
    seq: int,
    stream_id: str | None,
    outputs: list[OutputItem],
    tokens_per_chunk: int,
    coalesce: int = 0,
    stop: Callable[[], bool] | None = None,
    emitted: list[int] | None = None,
    output_index: int = 0,
) -> AsyncIterator[Event]:
    """Yield one output item's events from ``seq`` on; append the finished item to ``outputs``. ``stop``: a
    message ends early (after the delta in flight) once it returns true, its text what was sent (a steered
    response; a function call always finishes); ``emitted`` collects the tokens of each delta sent;
    ``output_index``: the item's place in the response's output (a long response's later segments)."""
    sid, tpc = stream_id, tokens_per_chunk
    if plan.kind == "function_call":
        fid = new_id("fc")
        item: OutputItem = OutputFunctionCall(
            id=fid, call_id=plan.call_id, name=plan.name, arguments="", status="in_progress"
        )
        yield OutputItemAdded(sequence_number=seq, stream_id=sid, output_index=output_index, item=item)
        seq += 1
        async for chunk in engine.decode(kv, pieces, tokens_per_chunk=tpc, coalesce=coalesce):
            yield FunctionCallArgumentsDelta(
                sequence_number=seq, stream_id=sid, item_id=fid, output_index=output_index, delta=chunk.text
            )
            seq += 1
            if emitted is not None:
                emitted.append(len(chunk.token_ids))
        args = "".join(t for _, t in pieces)
        yield FunctionCallArgumentsDone(
            sequence_number=seq, stream_id=sid, item_id=fid, output_index=output_index, arguments=args
        )
        seq += 1
        done: OutputItem = OutputFunctionCall(
            id=fid, call_id=plan.call_id, name=plan.name, arguments=args, status="completed"
        )
    else:
        mid = new_id("msg")
        yield OutputItemAdded(
            sequence_number=seq,
            stream_id=sid,
            output_index=output_index,
            item=OutputMessage(id=mid, status="in_progress", content=[]),
        )
        seq += 1
        yield ContentPartAdded(
            sequence_number=seq,
            stream_id=sid,
            item_id=mid,
            output_index=output_index,
            content_index=0,
            part=OutputText(text=""),
        )
        seq += 1
        sent: list[str] = []
        async for chunk in engine.decode(kv, pieces, tokens_per_chunk=tpc, coalesce=coalesce):
            yield OutputTextDelta(
                sequence_number=seq,
                stream_id=sid,
                item_id=mid,
                output_index=output_index,
                content_index=0,
                delta=chunk.text,
                logprobs=[],
            )
            seq += 1
            sent.append(chunk.text)
            if emitted is not None:
                emitted.append(len(chunk.token_ids))
            if stop is not None and stop():
                break  # the engine's generator is closed here: no token is made past the steer
        text = "".join(sent)
        yield OutputTextDone(
            sequence_number=seq,
            stream_id=sid,
            item_id=mid,
            output_index=output_index,
            content_index=0,
            text=text,
            logprobs=[],
        )
        seq += 1
        yield ContentPartDone(
            sequence_number=seq,
            stream_id=sid,
            item_id=mid,
            output_index=output_index,
            content_index=0,
            part=OutputText(text=text),
        )
        seq += 1
        done = OutputMessage(id=mid, status="completed", content=[OutputText(text=text)])
    outputs.append(done)
    yield OutputItemDone(sequence_number=seq, stream_id=sid, output_index=output_index, item=done)
