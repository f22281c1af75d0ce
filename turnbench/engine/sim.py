"""``sim``: a calibrated cost model of a model server — deterministic, runs anywhere.

Not a sleep table: the time an engine call takes is a function of the work it is given.

    prefill_ms = base + a·n + b·n·ctx/1000 + c·ctx      n = uncached tokens, ctx = context tokens after prefill
    decode_ms/token = d0 + d1·ctx/1000

The model's GPU time is spent as an ``asyncio.sleep`` until an absolute deadline (the GPU works while the
host waits; deadlines do not drift). The token-level work around it is real: a block-hashed prefix cache
(64-token blocks, LRU), KV handles per conversation, token accounting. ``h200-8b`` is fitted to
``turnbench/data/anchors/gpu_prefill_decode_h200.json`` by :mod:`turnbench.engine.fit` (weighted least squares on the
six
full/incremental points of the 8B model; every point within ±13%). ``turnbench calibrate`` measures an engine
the same way and writes a profile that ``--profile file:PATH.json`` serves (:func:`load_profile`).
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from turnbench.engine.base import DecodeChunk, EngineStats, KVHandle, PrefillResult
from turnbench.engine.prefix_cache import BLOCK_TOKENS, PrefixCache


@dataclass(frozen=True, slots=True)
class SimProfile:
    name: str
    description: str
    prefill_base_ms: float = 0.0
    prefill_ms_per_token: float = 0.0
    prefill_ms_per_token_kctx: float = 0.0  # attention: grows with n × context
    prefill_ms_per_ctx_token: float = 0.0  # reading the existing KV once per call
    decode_ms_per_token: float = 0.0
    decode_ms_per_token_kctx: float = 0.0
    tool_calls: int = 20  # default N of the scripted policy
    answer_tokens: int = 64

    def prefill_ms(self, uncached: int, context: int) -> float:
        if uncached <= 0:
            return 0.0
        return (
            self.prefill_base_ms
            + self.prefill_ms_per_token * uncached
            + self.prefill_ms_per_token_kctx * uncached * context / 1000.0
            + self.prefill_ms_per_ctx_token * context
        )

    def token_ms(self, context: int) -> float:
        return self.decode_ms_per_token + self.decode_ms_per_token_kctx * context / 1000.0

    @property
    def tok_s(self) -> float:
        return 1000.0 / self.decode_ms_per_token if self.decode_ms_per_token else float("inf")

    @property
    def rate_text(self) -> str:
        """Its decode speed for a sentence: ``~1,000 tok/s``, or ``no model time``."""
        return "no model time" if not math.isfinite(self.tok_s) else f"~{self.tok_s:,.0f} tok/s"


# 8B model on one H200 (bf16, eager), fitted by turnbench.engine.fit
_H200_8B: dict[str, float] = {
    "prefill_base_ms": 15.23,
    "prefill_ms_per_token": 0.02253,
    "prefill_ms_per_token_kctx": 0.0005643,
    "prefill_ms_per_ctx_token": 0.001205,
}

PROFILES: dict[str, SimProfile] = {
    p.name: p
    for p in (
        SimProfile("instant", "no model time at all: isolates API and transport overhead"),
        SimProfile(
            "frontier",
            "~65 tok/s decode (a GPT-5-class model, the seed's slow regime); prefill as h200-8b",
            decode_ms_per_token=1000.0 / 65.0,
            **_H200_8B,  # type: ignore[arg-type]
        ),
        SimProfile(
            "fast",
            "~1000 tok/s decode (a fast coding model, the seed's fast regime); prefill 4x faster than h200-8b",
            decode_ms_per_token=1.0,
            **{k: v / 4.0 for k, v in _H200_8B.items()},  # type: ignore[arg-type]
        ),
        SimProfile(
            "burst",
            "~40,000 tok/s decode and no prefill time: the streaming path's target, 10x the seed's bursts",
            decode_ms_per_token=0.025,
        ),
        SimProfile(
            "h200-8b",
            "fitted to turnbench/data/anchors/gpu_prefill_decode_h200.json: 8B model, H200, batch 1, eager decode",
            decode_ms_per_token=18.26,
            decode_ms_per_token_kctx=0.0781,
            **_H200_8B,  # type: ignore[arg-type]
        ),
        SimProfile(
            "calibration",
            "known timings for harness self-validation: prefill 20 ms flat, 5 ms per token",
            prefill_base_ms=20.0,
            decode_ms_per_token=5.0,
            tool_calls=5,
            answer_tokens=16,
        ),
    )
}


def get_profile(name: str) -> SimProfile:
    """A named profile, or ``file:PATH``: one written by ``turnbench calibrate`` (see :func:`load_profile`)."""
    if name.startswith("file:"):
        return load_profile(name[len("file:") :])
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(
            f"unknown sim profile {name!r}; choose from {', '.join(PROFILES)} or file:PATH (turnbench calibrate)"
        ) from None


def profile_dict(profile: SimProfile) -> dict[str, Any]:
    """The profile's fields, JSON-able (what ``turnbench calibrate`` writes under ``"profile"``)."""
    return {f.name: getattr(profile, f.name) for f in fields(SimProfile)}


def load_profile(path: str | Path) -> SimProfile:
    """A profile from a JSON file: ``turnbench calibrate``'s output (the fields under ``"profile"``) or a bare
    object of :class:`SimProfile` fields. Unknown fields and negative costs are refused."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read sim profile {path}: {exc}") from exc
    if isinstance(data, dict) and isinstance(data.get("profile"), dict):
        data = data["profile"]
    if not isinstance(data, dict):
        raise ValueError(f"sim profile {path}: expected a JSON object of SimProfile fields")
    known = {f.name: f for f in fields(SimProfile)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"sim profile {path}: unknown fields {', '.join(unknown)}")
    values: dict[str, Any] = {"name": Path(path).stem, "description": f"loaded from {path}"}
    for key, raw in data.items():
        if key in ("name", "description"):
            values[key] = str(raw)
        elif key in ("tool_calls", "answer_tokens"):
            values[key] = int(raw)
        else:
            values[key] = float(raw)
            if values[key] < 0:
                raise ValueError(f"sim profile {path}: {key} is negative ({raw})")
    return SimProfile(**values)


class SimEngine:
    """The default engine. ``speed`` scales every modeled time (0.5 = twice as fast)."""

    def __init__(
        self,
        profile: SimProfile | str = "fast",
        *,
        speed: float = 1.0,
        prefix_blocks: int = 200_000,
        block_tokens: int = BLOCK_TOKENS,
    ) -> None:
        self.profile = get_profile(profile) if isinstance(profile, str) else profile
        if speed != 1.0:
            p = self.profile
            self.profile = replace(
                p,
                prefill_base_ms=p.prefill_base_ms * speed,
                prefill_ms_per_token=p.prefill_ms_per_token * speed,
                prefill_ms_per_token_kctx=p.prefill_ms_per_token_kctx * speed,
                prefill_ms_per_ctx_token=p.prefill_ms_per_ctx_token * speed,
                decode_ms_per_token=p.decode_ms_per_token * speed,
                decode_ms_per_token_kctx=p.decode_ms_per_token_kctx * speed,
            )
        self.name = f"sim:{self.profile.name}"
        self.stats = EngineStats()
        self.prefix_blocks, self.block_tokens = prefix_blocks, block_tokens
        self.prefix_cache = PrefixCache(prefix_blocks, block_tokens)

    async def prefill(self, context: Sequence[int], kv: KVHandle | None, *, use_cache: bool) -> PrefillResult:
        # a continuation's KV handle carries its block hashes: only the new blocks are hashed
        known = kv.payload if (kv is not None and isinstance(kv.payload, list) and kv.tokens <= len(context)) else ()
        hashes = self.prefix_cache.chain(context, known, self.block_tokens)
        cached = 0
        if use_cache:
            if kv is not None and kv.tokens <= len(context):
                cached = kv.tokens
            cached = max(cached, self.prefix_cache.match(hashes))
        computed = len(context) - cached
        ms = self.profile.prefill_ms(computed, len(context))
        if ms > 0:
            await asyncio.sleep(ms / 1000.0)
        self.prefix_cache.insert(hashes)
        self.stats.prefills += 1
        self.stats.prefill_tokens += computed
        self.stats.cached_tokens += cached
        key = hashes[-1] if hashes else 0
        return PrefillResult(KVHandle(tokens=len(context), key=key, payload=hashes), cached, computed, ms)

    async def decode(
        self, kv: KVHandle, pieces: Sequence[tuple[int, str]], *, tokens_per_chunk: int, coalesce: int = 0
    ) -> AsyncIterator[DecodeChunk]:
        loop = asyncio.get_running_loop()
        step_s = self.profile.token_ms(kv.tokens) / 1000.0
        start = loop.time()
        per = max(1, tokens_per_chunk)
        most = max(per, coalesce)
        i, n = 0, len(pieces)
        while i < n:
            take = min(per, n - i)
            if step_s > 0:
                # token k is ready at start + (k+1)·step; sleep to the deadline, never accumulate drift
                delay = start + (i + take) * step_s - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                elif most > per:  # taken late: every token generated by now leaves together
                    ready = int((loop.time() - start) / step_s) - i
                    take = max(take, min(ready, most, n - i))
            else:  # no model time: every token is ready at once, so a consumer is always behind
                take = min(most, n - i)
            group = pieces[i : i + take]
            i += take
            self.stats.decoded_tokens += len(group)
            yield DecodeChunk([t for t, _ in group], "".join(s for _, s in group))

    def close(self) -> None:
        self.prefix_cache = PrefixCache(self.prefix_blocks, self.block_tokens)
