"""The checks a request's new input goes through, written once for both ways new input arrives: a
``response.create`` (its ``input``, before ``response.created``) and option A's ``response.append`` (a long
response paused at a tool call, docs/guides/option-a.md). The same input earns the same error code and param on
either path.

Each check is a timed stage (docs/concepts/pipeline.md)::

    validate   the input's length (array_above_max_length), then its items typed (invalid_request_error), each
               compaction item expanded into the items it stands for (invalid_encrypted_content), and every
               function_call_output answering a known call (param input[n].call_id)
    safety     one classifier pass over the checked texts (content_flagged)
    render     the items as tokens
    context    the rendered context within max_context_tokens (context_length_exceeded)

``response.create`` runs them one by one, with the parent resolved and the request's options checked between
validate and the call ids; an append is only new input, so :meth:`InputChecks.increment` runs them all.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

from turnbench import pipeline
from turnbench.compaction import Compactor, compaction_key
from turnbench.errors import InvalidRequestError
from turnbench.pipeline import StageTimer
from turnbench.safety import SafetyClassifier
from turnbench.schema import InputItem, StageStat, item_text
from turnbench.settings import Settings
from turnbench.tokenizer import Tokenizer

__all__ = ["ITEM_WEIGHT_BYTES", "InputChecks", "RunCpu", "text_weight"]

T = TypeVar("T")
ITEM_WEIGHT_BYTES = 1024  # an item costs the check and the render about as much as 1 KB of text, whatever its length


class RunCpu(Protocol):
    """Run a synchronous stage body inline, or on a worker thread when it handles ``nbytes`` or more."""

    def __call__(self, nbytes: int, work: Callable[[], T], /) -> Awaitable[T]: ...


def text_weight(texts: Sequence[str]) -> int:
    """What checking and rendering ``texts`` costs, as bytes of text: each item also has a fixed cost (~120 µs
    of safety, as much as ~1 KB of text), so 100k one-character items go to a worker thread like 10 MB of
    text."""
    return sum(map(len, texts)) + ITEM_WEIGHT_BYTES * len(texts)


class InputChecks:
    """The stages new input goes through (see the module): each one method, timed into the caller's timer."""

    def __init__(self, settings: Settings, safety: SafetyClassifier, tokenizer: Tokenizer, cpu: RunCpu) -> None:
        self.settings, self.safety, self.tokenizer, self._cpu = settings, safety, tokenizer, cpu
        # a compaction payload inflates to at most this: a context larger than any request body would be
        self.compactor = Compactor(compaction_key(settings.api_key), max(16 * settings.max_body_bytes, 1 << 20))

    async def validate(
        self, raw: str | list[dict[str, Any]], nbytes: int, timer: StageTimer
    ) -> tuple[list[InputItem], list[int] | None]:
        """``validate``: the input's length, then its items typed and its compaction items expanded (on a worker
        thread from ``nbytes`` of payload on). Returns: the items, and the ``input`` index each came from where a
        compaction was expanded (:func:`pipeline.validate_items`). Raises: :class:`InvalidRequestError` naming
        the offending member."""
        self.check_length(raw)
        await timer.inject("validate")

        def work() -> tuple[list[InputItem], list[int] | None]:
            with timer.stage("validate") as st:
                return pipeline.validate_items(raw, st, self.compactor.expand)

        return await self._cpu(nbytes, work)

    def check_length(self, value: str | list[dict[str, Any]]) -> None:
        """An ``input`` array of at most ``max_input_items`` items, else ``array_above_max_length``."""
        limit = self.settings.max_input_items
        if isinstance(value, list) and len(value) > limit:
            raise InvalidRequestError(
                f"Invalid 'input': array too long. Expected an array with maximum length {limit}, "
                f"but got an array with length {len(value)} instead.",
                "input",
                code="array_above_max_length",
            )

    async def screen(self, texts: list[str], timer: StageTimer) -> int:
        """``safety``: one classifier pass over ``texts``. Returns: their :func:`text_weight` (bytes), what
        rendering them costs too. Raises: ``ContentFlaggedError`` (param ``input``)."""
        weight = text_weight(texts)
        await timer.inject("safety")

        def work() -> None:
            with timer.stage("safety") as st:
                pipeline.safety_check(self.safety, texts, st)

        await self._cpu(weight, work)
        return weight

    async def render(
        self, timer: StageTimer, weight: int, build: Callable[[StageStat], list[int]], stage: str = "render"
    ) -> list[int]:
        """``render``: ``build`` the context's tokens in the stage (on a worker thread from ``weight`` bytes);
        ``stage``: its name (the engine role's is ``tokenize``)."""
        await timer.inject(stage)

        def work() -> list[int]:
            with timer.stage(stage) as st:
                return build(st)

        return await self._cpu(weight, work)

    def check_context(self, total_tokens: int) -> None:
        """The rendered context, ``total_tokens`` long, within ``max_context_tokens``, else
        ``context_length_exceeded`` (param ``input``)."""
        limit = self.settings.max_context_tokens
        if total_tokens > limit:
            raise InvalidRequestError(
                f"Your input exceeds the context window of this model ({total_tokens:,} tokens; at most "
                f"{limit:,}). Please adjust your input and try again.",
                "input",
                code="context_length_exceeded",
            )

    async def increment(
        self,
        raw: str | list[dict[str, Any]],
        nbytes: int,
        timer: StageTimer,
        call_ids: frozenset[str],
        context_tokens: int,
    ) -> tuple[list[InputItem], list[int]]:
        """Every check on new input that follows a known context (option A's append): validate, the call ids
        (``call_ids``: the conversation's calls so far), safety and render of the new items only, then the
        context window (``context_tokens`` already rendered). Returns: the new items and their tokens.
        Raises: the :class:`InvalidRequestError` that refuses the input."""
        new_items, origins = await self.validate(raw, nbytes, timer)
        with timer.stage("validate"):
            pipeline.check_call_ids(new_items, call_ids, origins)
        weight = await self.screen([item_text(i) for i in new_items], timer)
        new_tokens = await self.render(timer, weight, lambda st: pipeline.render_items(self.tokenizer, new_items, st))
        self.check_context(context_tokens + len(new_tokens))
        return new_items, new_tokens
