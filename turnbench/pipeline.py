"""The request stages (docs/concepts/pipeline.md), each timed (wall and CPU, ns) and counted.

A :class:`StageTimer` travels with one request from the adapter's ``parse`` to the service's ``post``. Each
stage records wall time (``perf_counter_ns``), the CPU time of this thread (``thread_time_ns``), and what it
processed (items, tokens, chars), so a test can assert *what* a stage touched without looking at a clock.

Synchronous stages (parse, validate, safety, render, route) measure CPU around their whole body. The
asynchronous ones (prefill, decode, post) add only their own synchronous slices to ``cpu_ns``, because
while they await, the thread serves other work.

Injected latency is explicit: ``Settings.inject_ms`` sleeps (a remote dependency), ``Settings.burn_us``
spins the CPU (a slower implementation) — both per named stage, zero by default.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import msgspec

from turnbench.errors import ContentFlaggedError, InvalidRequestError
from turnbench.safety import SafetyClassifier
from turnbench.schema import (
    FILE_TOKENS,
    IMAGE_TOKENS,
    CompactionItem,
    ContentPart,
    FunctionCallItem,
    FunctionCallOutputItem,
    FunctionTool,
    InputFile,
    InputImage,
    InputItem,
    MessageItem,
    StageStat,
    convert_compaction,
    convert_item,
    has_media,
    item_kind,
    item_text,
    part_text,
    to_builtins,
)
from turnbench.tokenizer import Tokenizer

_now = time.perf_counter_ns
_cpu = time.thread_time_ns


class StageTimer:
    """Per-request stage records. Stages may be entered more than once; figures add up."""

    __slots__ = ("burn_us", "inject_ms", "stats")

    def __init__(self, inject_ms: Mapping[str, float] | None = None, burn_us: Mapping[str, float] | None = None):
        self.stats: dict[str, StageStat] = {}
        self.inject_ms = inject_ms or {}
        self.burn_us = burn_us or {}

    def get(self, name: str) -> StageStat:
        st = self.stats.get(name)
        if st is None:
            st = self.stats[name] = StageStat()
        return st

    @contextmanager
    def stage(self, name: str) -> Iterator[StageStat]:
        """Time a synchronous stage body."""
        st = self.get(name)
        w0, c0 = _now(), _cpu()
        try:
            yield st
            burn = self.burn_us.get(name)
            if burn:
                spin_us(burn)
        finally:
            st.wall_ns += _now() - w0
            st.cpu_ns += _cpu() - c0

    async def inject(self, name: str) -> None:
        """The named sleep of ``Settings.inject_ms[name]``, counted in the stage's wall time."""
        ms = self.inject_ms.get(name)
        if ms:
            w0 = _now()
            await asyncio.sleep(ms / 1000.0)
            self.get(name).wall_ns += _now() - w0

    def add(self, name: str, *, wall_ns: int = 0, cpu_ns: int = 0, items: int = 0, tokens: int = 0) -> None:
        st = self.get(name)
        st.wall_ns += wall_ns
        st.cpu_ns += cpu_ns
        st.items += items
        st.tokens += tokens

    def snapshot(self) -> dict[str, StageStat]:
        return {
            k: StageStat(wall_ns=v.wall_ns, cpu_ns=v.cpu_ns, items=v.items, tokens=v.tokens, chars=v.chars)
            for k, v in self.stats.items()
        }


def spin_us(us: float) -> None:
    """Burn ``us`` microseconds of CPU on this thread (the deliberate slow path of the gate test)."""
    end = _cpu() + int(us * 1000)
    while _cpu() < end:
        pass


# ---------------------------------------------------------------------------------------------- stages


Expand = Callable[[CompactionItem, int], list[InputItem]]
"""Expands a compaction item (``input[index]``) into the items it stands for (``turnbench.compaction``)."""


def validate_items(
    raw: str | Sequence[Any], st: StageStat, expand: Expand | None = None
) -> tuple[list[InputItem], list[int] | None]:
    """``validate``: the request's input (a string is one user message) into typed items, each compaction item
    expanded by ``expand`` (without one, a compaction item is refused). Returns: the items, and where a
    compaction was expanded, the ``input`` index each item came from (None: item k is ``input[k]``)."""
    if isinstance(raw, str):
        raw = [{"type": "message", "role": "user", "content": raw}]
    items: list[InputItem] = []
    origins: list[int] | None = None
    for i, r in enumerate(raw):
        if item_kind(r) != "compaction":
            items.append(convert_item(r, i))
            if origins is not None:
                origins.append(i)
            continue
        compaction = convert_compaction(r, i)
        if expand is None:
            raise InvalidRequestError(
                f"Invalid value for 'input[{i}].type': compaction items are not accepted here.", f"input[{i}].type"
            )
        if origins is None:
            origins = list(range(len(items)))
        expanded = expand(compaction, i)
        items.extend(expanded)
        origins.extend([i] * len(expanded))
    st.items += len(items)
    return items, origins


def revalidate(items: Sequence[InputItem], st: StageStat) -> None:
    """Validate already-typed history again, as a stateless server must (incremental checks off)."""
    for i, item in enumerate(items):
        convert_item(to_builtins(item), i)
    st.items += len(items)


def call_ids_of(items: Sequence[InputItem]) -> frozenset[str]:
    """The ``call_id`` of every function call among ``items``."""
    return frozenset(i.call_id for i in items if isinstance(i, FunctionCallItem))


def check_call_ids(
    new_items: Sequence[InputItem], known: frozenset[str], origins: Sequence[int] | None = None
) -> frozenset[str]:
    """Every ``function_call_output`` of ``new_items`` must answer a function call of the conversation
    (``known``, or one of ``new_items``), as the Responses API requires. ``origins``: the ``input`` index of
    each item, where a compaction was expanded (:func:`validate_items`). Returns: the calls known after them.
    Raises: :class:`InvalidRequestError` naming the output's ``call_id``."""
    calls = known | call_ids_of(new_items)
    for n, item in enumerate(new_items):
        if isinstance(item, FunctionCallOutputItem) and item.call_id not in calls:
            raise InvalidRequestError(
                f"No tool call found for function call output with call_id {item.call_id}.",
                f"input[{n if origins is None else origins[n]}].call_id",
            )
    return calls


def safety_check(classifier: SafetyClassifier, texts: Sequence[str], st: StageStat) -> None:
    """``safety``: one classifier pass over ``texts``; raise :class:`ContentFlaggedError` when flagged."""
    verdict = classifier.check_many(texts)
    st.items += len(texts)
    st.chars += verdict.chars
    if verdict.flagged:
        raise ContentFlaggedError(
            f"Your request was flagged by the safety classifier (score {verdict.score:.2f}).", "input"
        )


def item_render_text(item: InputItem) -> str:
    """How an item is laid out for the model: a role marker, then its text."""
    role = getattr(item, "role", None) or item.__struct_config__.tag
    return f"<|{role}|>{item_text(item)}"


def render_items(tok: Tokenizer, items: Sequence[InputItem], st: StageStat) -> list[int]:
    """``render``: tokenize items into one token list."""
    out: list[int] = []
    for item in items:  # one at a time: encode_batch fans out to threads that thread_time_ns cannot see
        if isinstance(item, MessageItem) and has_media(item):
            out.extend(_render_parts(tok, item))
        else:
            out.extend(tok.encode(item_render_text(item)))
    st.items += len(items)
    st.tokens += len(out)
    return out


def _render_parts(tok: Tokenizer, item: MessageItem) -> list[int]:
    """A message with image or file parts, part by part: its text parts as text (an all-text message renders as
    one text, exactly as before), an image as :data:`IMAGE_TOKENS` placeholder tokens, a file as its text's
    tokens or :data:`FILE_TOKENS` placeholders (docs/guides/limits.md, Images and files)."""
    out: list[int] = []
    text = f"<|{item.role}|>"
    assert not isinstance(item.content, str), "a message with media has a list of parts"
    for part in item.content:
        if not isinstance(part, InputImage | InputFile):
            text += part_text(part)
            continue
        out.extend(tok.encode(text) if text else [])
        text = ""
        file_text = part.text() if isinstance(part, InputFile) else None
        out.extend(tok.encode(file_text) if file_text is not None else media_tokens(part, tok.vocab_size))
    out.extend(tok.encode(text) if text else [])
    return out


def media_tokens(part: ContentPart, vocab_size: int) -> list[int]:
    """The placeholder tokens of an image or an unreadable file: as many as it costs, drawn from a hash of its
    reference, so the same image is the same tokens (a prefix cache hit) and different images differ."""
    if isinstance(part, InputImage):
        n, ref = IMAGE_TOKENS[part.detail], f"image\0{part.detail}\0{part.image_url or ''}\0{part.file_id or ''}"
    else:
        assert isinstance(part, InputFile)
        n, ref = FILE_TOKENS, f"file\0{part.file_data or ''}\0{part.file_id or ''}\0{part.file_url or ''}"
    stream = hashlib.shake_128(ref.encode("utf-8", "surrogatepass")).digest(2 * n)
    return [int.from_bytes(stream[k : k + 2], "little") % vocab_size for k in range(0, 2 * n, 2)]


def tools_key(tools: Sequence[FunctionTool], instructions: str | None) -> tuple[int, bytes]:
    """A key for the header (instructions + tool definitions) and its encoded text."""
    blob = msgspec.json.encode([instructions or "", tools])
    return hash(blob), blob


def render_header(tok: Tokenizer, blob: bytes, st: StageStat) -> list[int]:
    ids = tok.encode(blob.decode())
    st.tokens += len(ids)
    return ids


@dataclass(frozen=True, slots=True)
class Route:
    """The routing decision: engine and a compiled view of the tool schemas (constrained decoding)."""

    model: str
    engine: str
    tool_params: tuple[tuple[str, tuple[str, ...]], ...]


def _parameter_names(tool: FunctionTool) -> tuple[str, ...]:
    props = (tool.parameters or {}).get("properties")
    return tuple(sorted(str(k) for k in props)) if isinstance(props, dict) else ()


def route(model: str, engine: str, tools: Sequence[FunctionTool], st: StageStat) -> Route:
    """``route``: pick the engine and compile each tool's parameter names for constrained decoding."""
    compiled = tuple((t.name, _parameter_names(t)) for t in tools)
    st.items += len(tools)
    return Route(model=model, engine=engine, tool_params=compiled)
