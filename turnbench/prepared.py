"""A request on its way through the pipeline: parsed (:class:`ParsedRequest`), then prepared — every check
passed, its context rendered — with the options the scripted model acts on (:class:`Prepared`, :class:`Options`).

Its own module so that what runs a prepared request (``service``, ``background``) shares the types without
importing each other.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from turnbench.engine.policy import Knobs, TextFormat, ToolChoice
from turnbench.pipeline import StageTimer
from turnbench.schema import InputItem, Response, ResponseCreate
from turnbench.settings import StateStrategy
from turnbench.state import ConversationRecord, Session

__all__ = ["Append", "Options", "ParsedRequest", "Prepared", "SteerControl"]


@dataclass(slots=True)
class Append:
    """Option A's ``response.append``, parsed: the paused response it names, the raw input, its parse timings
    (the next segment's stages start with them) and size. The connection sets ``reply`` before handing it to
    that response, which resolves it with None (accepted: sampling resumes) or the error that refused it (the
    response stays paused)."""

    response_id: str
    input: str | list[dict[str, Any]]
    timer: StageTimer
    nbytes: int
    reply: asyncio.Future[Exception | None] | None = None


@dataclass(slots=True)
class SteerControl:
    """A connection's hold on one of its running responses (``response.steer``): the steering input queued for
    it (id, items) and whether its decoding stops at the next token; ``generate`` fills in how it ended.

    Option A: ``long`` marks a long response; while it is paused at a tool call, ``waiting`` is the future
    the connection resolves with the :class:`Append` that resumes it (None while it samples)."""

    steers: list[tuple[str, list[dict[str, Any]]]] = field(default_factory=list)
    stop: bool = False
    stopped: bool = False  # the answer was cut short for the steer (it ends incomplete, reason "steered")
    response_id: str | None = None
    calls: list[dict[str, Any]] = field(default_factory=list)  # its function calls: the required_input stubs
    encode: Any = None  # the codec the steers came in (the steer events' own; a typed gRPC create has none)
    long: bool = False
    waiting: asyncio.Future[Append] | None = None


@dataclass(slots=True)
class ParsedRequest:
    request: ResponseCreate
    timer: StageTimer
    nbytes: int = 0
    control: SteerControl | None = None  # set by a connection that lets its responses be steered


@dataclass(slots=True)
class Prepared:
    """A request that passed every check: what ``generate`` needs to answer it."""

    request: ResponseCreate
    timer: StageTimer
    session: Session
    parent: ConversationRecord | None
    state: StateStrategy
    new_items: list[InputItem]
    items: list[InputItem]
    tools: list[Any]
    metadata: dict[str, str]
    tokens: list[int]
    tools_key: int
    route: Any
    new_bytes: int
    options: Options
    call_ids: frozenset[str]  # every function call of the conversation so far (outputs must answer one)
    response: Response  # the response this request creates, as it starts (in_progress)
    control: SteerControl | None = None


@dataclass(frozen=True, slots=True)
class Options:
    """What the scripted model does for one request: its knobs, the tool choice, the text format."""

    knobs: Knobs
    choice: ToolChoice
    text_format: TextFormat
