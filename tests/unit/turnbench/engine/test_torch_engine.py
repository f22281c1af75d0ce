"""The ``torch`` engine on the CPU config: exact KV reuse, prefix cache, teacher-forced decode, bounds, e2e."""

from __future__ import annotations

import random
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from clients.agent import Toolbox, run_rollout  # noqa: E402
from clients.base import ClientConfig, RolloutResult  # noqa: E402
from clients.inproc_client import InProcClient  # noqa: E402
from turnbench.engine.base import KVHandle  # noqa: E402
from turnbench.engine.torch_engine import ContextLengthError, TorchConfig, TorchEngine  # noqa: E402
from turnbench.service import ResponsesService  # noqa: E402
from turnbench.settings import Settings  # noqa: E402

CPU = Settings(engine="torch", device="cpu", usage_db=":memory:")


@pytest.fixture
def engine() -> Any:
    eng = TorchEngine(CPU)
    yield eng
    eng.close()


def ids(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(1, 8192) for _ in range(n)]


def logits(kv: KVHandle) -> Any:
    return kv.payload.logits


async def full_logits(engine: TorchEngine, context: list[int]) -> Any:
    res = await engine.prefill(context, None, use_cache=False)
    assert res.cached_tokens == 0 and res.computed_tokens == len(context)
    return logits(res.kv)


def test_name_and_config(engine: TorchEngine) -> None:
    assert engine.name == "torch:cpu-tiny"
    assert engine.vocab == 8192 and engine.device.type == "cpu"


async def test_continuation_computes_only_the_suffix_and_matches_full_recompute(engine: TorchEngine) -> None:
    a = ids(300, 1)
    first = await engine.prefill(a, None, use_cache=True)
    assert (first.cached_tokens, first.computed_tokens) == (0, 300)
    out = [(t, "x") for t in ids(7, 2)]
    async for _ in engine.decode(first.kv, out, tokens_per_chunk=2):
        pass
    assert first.kv.tokens == 307
    ctx = a + [t for t, _ in out] + ids(90, 3)  # the service re-rendered the output as the same ids
    nxt = await engine.prefill(ctx, first.kv, use_cache=True)
    assert (nxt.cached_tokens, nxt.computed_tokens) == (307, 90)
    assert nxt.modeled_ms > 0
    torch.testing.assert_close(logits(nxt.kv), await full_logits(engine, ctx), atol=1e-4, rtol=1e-4)
    assert first.kv.payload is None  # the continuation took the KV over: the parent no longer holds it


async def test_continuation_that_diverges_keeps_only_the_verified_prefix(engine: TorchEngine) -> None:
    a = ids(130, 4)
    first = await engine.prefill(a, None, use_cache=False)
    async for _ in engine.decode(first.kv, [(t, "y") for t in ids(5, 5)], tokens_per_chunk=5):
        pass
    ctx = a + ids(40, 6)  # the re-rendered output differs from the decoded ids: they must not be reused
    nxt = await engine.prefill(ctx, first.kv, use_cache=True)
    assert (nxt.cached_tokens, nxt.computed_tokens) == (130, 40)
    torch.testing.assert_close(logits(nxt.kv), await full_logits(engine, ctx), atol=1e-4, rtol=1e-4)


async def test_prefix_cache_serves_another_conversation(engine: TorchEngine) -> None:
    shared = ids(200, 7)
    await engine.prefill(shared + ids(50, 8), None, use_cache=True)
    ctx = shared + ids(60, 9)
    other = await engine.prefill(ctx, None, use_cache=True)
    assert other.cached_tokens >= 192  # three whole 64-token blocks
    assert other.computed_tokens == len(ctx) - other.cached_tokens
    torch.testing.assert_close(logits(other.kv), await full_logits(engine, ctx), atol=1e-4, rtol=1e-4)
    again = await engine.prefill(ctx, None, use_cache=False)
    assert (again.cached_tokens, again.computed_tokens) == (0, len(ctx))
    assert engine.stats.cached_tokens >= 192 and engine.stats.extra["prefix_cache_bytes"] > 0


async def test_decode_teacher_forces_the_planned_pieces_in_chunks(engine: TorchEngine) -> None:
    res = await engine.prefill(ids(70, 10), None, use_cache=True)
    pieces = [(t, f"<{t}>") for t in ids(10, 11)]
    chunks = [c async for c in engine.decode(res.kv, pieces, tokens_per_chunk=3)]
    assert [len(c.token_ids) for c in chunks] == [3, 3, 3, 1]
    assert [t for c in chunks for t in c.token_ids] == [t for t, _ in pieces]
    assert "".join(c.text for c in chunks) == "".join(s for _, s in pieces)
    assert res.kv.tokens == 80 and res.kv.payload.ids[-10:] == [t for t, _ in pieces]
    assert engine.stats.decoded_tokens == 10
    # the grown KV is real: it equals a fresh prefill of context + output
    torch.testing.assert_close(logits(res.kv), await full_logits(engine, res.kv.payload.ids), atol=1e-4, rtol=1e-4)


async def test_grouped_query_attention_paths_match_full_recompute() -> None:
    """The CUDA config's shape (fewer KV heads than query heads) in bf16, incl. the CUDA attention path."""
    cfg = TorchConfig("gqa", 2, 128, 8, 2, 256, 1024, torch.bfloat16, 1 << 24, 1 << 26)
    for expand_kv in (False, True):
        eng = TorchEngine(CPU, config=cfg, expand_kv=expand_kv)
        ctx = ids(150, 16)
        first = await eng.prefill(ctx[:100], None, use_cache=True)
        nxt = await eng.prefill(ctx, first.kv, use_cache=True)
        async for _ in eng.decode(nxt.kv, [(t, "") for t in ids(5, 17)], tokens_per_chunk=5):
            pass
        ref = await full_logits(eng, nxt.kv.payload.ids)
        assert nxt.computed_tokens == 50
        assert torch.cosine_similarity(logits(nxt.kv), ref, dim=0) > 0.999
        eng.close()


async def test_per_handle_cap_raises_and_live_cap_evicts() -> None:
    eng = TorchEngine(CPU, max_kv_bytes=512 * 8192, max_live_bytes=600 * 8192)  # 8192 bytes/token here
    try:
        with pytest.raises(ContextLengthError, match="512"):
            await eng.prefill(ids(513, 12), None, use_cache=True)
        res = await eng.prefill(ids(510, 13), None, use_cache=True)
        with pytest.raises(ContextLengthError):
            async for _ in eng.decode(res.kv, [(1, "a")] * 3, tokens_per_chunk=1):
                pass
        old = await eng.prefill(ids(300, 14), None, use_cache=False)
        await eng.prefill(ids(300, 15), None, use_cache=False)  # over the live cap: the LRU idle one goes
        assert old.kv.payload.kv is None and eng.stats.extra.get("kv_evictions", 0) >= 1
        cont = await eng.prefill([*old.kv.payload.ids, 5], old.kv, use_cache=True)
        assert cont.cached_tokens == 0  # an evicted handle is never trusted
    finally:
        eng.close()
    assert res.kv.payload.kv is None  # close() freed it


async def rollout(settings: Settings) -> RolloutResult:
    service = ResponsesService(settings)
    client = InProcClient(ClientConfig(url="inproc", options={"service": service}))
    try:
        return await run_rollout(
            client, state="connection", toolbox=Toolbox(output_bytes=1024), metadata={"tool_calls": "3"}
        )
    finally:
        await client.close()
        await service.drain()
        service.close()


async def test_service_end_to_end_matches_sim() -> None:
    real = await rollout(CPU)
    sim = await rollout(Settings(engine="sim", profile="instant", usage_db=":memory:"))
    assert real.success and sim.success, (real.error, sim.error)
    assert len(real.tool_calls) == 3
    assert real.tool_calls == sim.tool_calls and real.final_output == sim.final_output
    assert all(t.cached_tokens > 0 for t in real.turns[1:])  # continuations reused the connection's KV
