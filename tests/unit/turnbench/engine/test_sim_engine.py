"""The sim cost model: charges follow the work, the fit matches the anchor, pacing follows the profile."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from turnbench.engine.fit import fit
from turnbench.engine.prefix_cache import BLOCK_TOKENS
from turnbench.engine.sim import PROFILES, SimEngine, get_profile

ANCHOR = Path(__file__).resolve().parents[4] / "turnbench" / "data" / "anchors" / "gpu_prefill_decode_h200.json"


def test_profiles_cover_the_seed_regimes() -> None:
    assert PROFILES["frontier"].tok_s == pytest.approx(65, rel=0.01)
    assert PROFILES["fast"].tok_s == pytest.approx(1000, rel=0.01)
    assert PROFILES["instant"].prefill_ms(10_000, 10_000) == 0
    with pytest.raises(ValueError):
        get_profile("nope")


def test_prefill_cost_grows_with_uncached_tokens_and_context() -> None:
    p = PROFILES["h200-8b"]
    assert p.prefill_ms(256, 32768) < p.prefill_ms(32768, 32768) / 10
    assert p.prefill_ms(256, 1024) < p.prefill_ms(256, 32768)
    assert p.prefill_ms(0, 32768) == 0


def test_h200_profile_matches_the_anchor_fit() -> None:
    rows = [r for r in json.loads(ANCHOR.read_text()) if r["model"] == "llama-8b"]
    coef = fit(rows)
    p = PROFILES["h200-8b"]
    assert p.prefill_base_ms == pytest.approx(coef["prefill_base_ms"], rel=0.01)
    assert p.prefill_ms_per_token == pytest.approx(coef["prefill_ms_per_token"], rel=0.01)
    for r in rows:
        assert p.prefill_ms(r["context"], r["context"]) == pytest.approx(r["full_prefill_ms"], rel=0.15)
        assert p.prefill_ms(r["new"], r["context"]) == pytest.approx(r["incremental_prefill_ms"], rel=0.15)


async def test_kv_handle_and_prefix_cache_reduce_computed_tokens() -> None:
    eng = SimEngine("instant")
    ctx = list(range(1000))
    first = await eng.prefill(ctx, None, use_cache=True)
    assert (first.cached_tokens, first.computed_tokens) == (0, 1000)
    longer = [*ctx, *range(5000, 5300)]
    cont = await eng.prefill(longer, first.kv, use_cache=True)
    assert cont.cached_tokens == 1000 and cont.computed_tokens == 300
    other = SimEngine("instant")
    await other.prefill(ctx, None, use_cache=True)
    shared = await other.prefill(longer, None, use_cache=True)  # no handle: block-aligned prefix only
    assert shared.cached_tokens == (1000 // BLOCK_TOKENS) * BLOCK_TOKENS
    nocache = await other.prefill(longer, None, use_cache=False)
    assert nocache.cached_tokens == 0 and nocache.computed_tokens == len(longer)


async def test_decode_paces_chunks_and_keeps_text() -> None:
    eng = SimEngine("calibration")
    pieces = [(i, f"t{i} ") for i in range(10)]
    chunks = [
        c async for c in eng.decode((await eng.prefill([1, 2], None, use_cache=True)).kv, pieces, tokens_per_chunk=4)
    ]
    assert [len(c.token_ids) for c in chunks] == [4, 4, 2]
    assert "".join(c.text for c in chunks) == "".join(t for _, t in pieces)
    assert eng.stats.decoded_tokens == 10


async def test_coalescing_joins_only_tokens_already_generated() -> None:
    """A prompt consumer gets one token per chunk with coalescing on; one that comes back late (here: after
    half the stream's time) gets every token generated meanwhile in one chunk, and the text stays whole."""
    eng = SimEngine("calibration")  # 5 ms per token
    pieces = [(i, f"t{i} ") for i in range(40)]
    kv = (await eng.prefill([1, 2], None, use_cache=True)).kv
    prompt = [c async for c in eng.decode(kv, pieces, tokens_per_chunk=1, coalesce=64)]
    singles = sum(len(c.token_ids) == 1 for c in prompt)  # a late timer on a busy machine may join a few
    assert singles >= len(prompt) / 2 and len(prompt) >= 20
    late: list[int] = []
    text = ""
    async for c in eng.decode(kv, pieces, tokens_per_chunk=1, coalesce=64):
        late.append(len(c.token_ids))
        text += c.text
        if len(late) == 1:
            await asyncio.sleep(0.1)  # ~20 tokens' time
    assert late[1] >= 15 and sum(late) == 40 and text == "".join(t for _, t in pieces)
    capped = [len(c.token_ids) async for c in SimEngine("instant").decode(kv, pieces, tokens_per_chunk=1, coalesce=16)]
    assert capped == [16, 16, 8]  # no model time: every token is ready, so chunks fill up to the bound
    off = [len(c.token_ids) async for c in SimEngine("instant").decode(kv, pieces, tokens_per_chunk=2)]
    assert off == [2] * 20
