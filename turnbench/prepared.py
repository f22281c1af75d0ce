"""A request on its way through the pipeline: parsed (:class:`ParsedRequest`), then prepared — every check
passed, its context rendered — with the options the scripted model acts on (:class:`Prepared`, :class:`Options`).

Its own module so that what runs a prepared request (``service``, ``background``) shares the types without
importing each other. A response on a connection carries its :class:`ResponseLifecycle` (steering, option A's
pauses); :class:`Append` lives beside it and is named here too, for the adapters that parse one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from turnbench.engine.policy import Knobs, TextFormat, ToolChoice
from turnbench.lifecycle import Append, ResponseLifecycle
from turnbench.pipeline import StageTimer
from turnbench.schema import InputItem, Response, ResponseCreate
from turnbench.settings import StateStrategy
from turnbench.state import ConversationRecord, Session

__all__ = ["Append", "Options", "ParsedRequest", "Prepared"]


@dataclass(slots=True)
class ParsedRequest:
    request: ResponseCreate
    timer: StageTimer
    nbytes: int = 0
    lifecycle: ResponseLifecycle | None = None  # set by a connection (steering, option A's pauses)
    arrival: int = 0  # the service's count of requests parsed, this one's: the usage log's order of arrival
    started_ns: int = 0  # perf_counter_ns when its parse began: the usage log's elapsed_ms counts from here
    request_id: str | None = None  # the caller's id for it (HTTPS: the x-request-id header), kept in the usage log
    endpoint: str = "responses"  # the API it came through: responses, or chat.completions


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
    lifecycle: ResponseLifecycle | None = None  # a connection's response: steered, paused, resumed through it
    parsed: ParsedRequest | None = None  # what it was prepared from: its arrival, request id and endpoint


@dataclass(frozen=True, slots=True)
class Options:
    """What the scripted model does for one request: its knobs, the tool choice, the text format."""

    knobs: Knobs
    choice: ToolChoice
    text_format: TextFormat
