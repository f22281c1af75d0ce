"""The engine protocol every model-serving backend implements (sim, torch).

The service owns conversation state; an engine only turns context tokens into a KV state (``prefill``) and
produces output tokens at its own pace (``decode``). ``KVHandle`` is opaque to the service: the connection
cache keeps it so a continuation prefills only the tokens the engine has not seen.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(slots=True)
class KVHandle:
    """What the engine keeps for one conversation: how many context tokens are already in its KV."""

    tokens: int
    key: int = 0  # hash of the token prefix the KV holds
    payload: Any = None  # engine-specific (torch: past_key_values)
    nbytes: int = 0


@dataclass(slots=True)
class PrefillResult:
    kv: KVHandle
    cached_tokens: int  # reused from a KV handle or the prefix cache
    computed_tokens: int  # actually prefilled
    modeled_ms: float = 0.0  # the cost model's charge (sim); measured time for real engines


@dataclass(slots=True)
class DecodeChunk:
    """Some output tokens, ready to stream: the tokens and the exact text they add."""

    token_ids: list[int]
    text: str
    device_ms: float = 0.0  # measured device time of the steps that made these tokens (0: a modeled engine)


@dataclass(slots=True)
class EngineStats:
    prefills: int = 0
    prefill_tokens: int = 0
    cached_tokens: int = 0
    decoded_tokens: int = 0
    extra: dict[str, float] = field(default_factory=dict)


class ModelEngine(Protocol):
    name: str
    stats: EngineStats

    async def prefill(self, context: Sequence[int], kv: KVHandle | None, *, use_cache: bool) -> PrefillResult:
        """Make ``context`` resident. ``kv`` (a continuation's handle) and the engine's prefix cache are
        used only when ``use_cache``; then only the uncovered suffix is computed."""
        ...

    def decode(
        self, kv: KVHandle, pieces: Sequence[tuple[int, str]], *, tokens_per_chunk: int
    ) -> AsyncIterator[DecodeChunk]:
        """Produce the planned output ``pieces`` (token id, text) at the engine's pace, in chunks."""
        ...

    def close(self) -> None: ...
