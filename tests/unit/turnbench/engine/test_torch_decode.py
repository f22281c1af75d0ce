"""The torch engine's decode: the static (batched, graph-ready) step against the dynamic one, the scheduler's
batching, rows that leave and move, cancellation, long outputs, the GPU configs' shapes."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from turnbench.engine.torch_decode import buckets, common_prefix  # noqa: E402
from turnbench.engine.torch_engine import CONFIGS, TorchConfig, TorchEngine  # noqa: E402
from turnbench.engine.torch_model import Model, layer_decode  # noqa: E402
from turnbench.settings import Settings  # noqa: E402

CPU = Settings(engine="torch", device="cpu", usage_db=":memory:")
GQA = TorchConfig("gqa", 2, 128, 8, 2, 256, 2048, torch.bfloat16, 1 << 24, 1 << 26)


def ids(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(1, 8192) for _ in range(n)]


async def decode_all(engine: TorchEngine, kv: Any, out: list[int], per: int = 1) -> list[int]:
    return [t async for c in engine.decode(kv, [(t, "") for t in out], tokens_per_chunk=per) for t in c.token_ids]


async def recompute(engine: TorchEngine, context: list[int]) -> Any:
    return (await engine.prefill(context, None, use_cache=False)).kv.payload.logits


@pytest.fixture(params=["static", "dynamic"])
def engine(request: Any) -> Any:
    eng = TorchEngine(CPU, decode=request.param)
    yield eng
    eng.close()


def test_configs_have_the_anchor_models_shapes() -> None:
    """Parameters as the anchors' llama-0.2b / 1.1b / 8b (so the bandwidth limit is theirs)."""
    billions = {name: CONFIGS[name].params(8192) / 1e9 for name in ("cuda-0.2b", "cuda-1b", "cuda-8b")}
    assert billions == pytest.approx({"cuda-0.2b": 0.20, "cuda-1b": 1.10, "cuda-8b": 8.03}, abs=0.01)
    assert all(CONFIGS[n].dtype == torch.bfloat16 for n in billions)
    assert CONFIGS["cuda-8b"].kv_bytes_per_token == 2 * 32 * 8 * 128 * 2
    tiny = TorchEngine(CPU)
    try:
        assert tiny.params == CONFIGS["cpu-tiny"].params(tiny.vocab)  # the formula counts the real model
    finally:
        tiny.close()


def test_engine_picks_config_and_modes_from_settings() -> None:
    eng = TorchEngine(CPU.replace(torch_config="cpu-tiny", torch_compile="auto"))
    assert (eng.name, eng.decode_mode, eng.compile_mode) == ("torch:cpu-tiny", "static", "none")
    eng.close()
    with pytest.raises(ValueError, match="graph"):
        TorchEngine(CPU, decode="graph")  # CUDA graphs need CUDA
    with pytest.raises(ValueError, match="unknown torch config"):
        TorchEngine(CPU.replace(torch_config="nope"))


async def test_decode_grows_the_kv_exactly_like_a_full_recompute(engine: TorchEngine) -> None:
    ctx = ids(300, 1)
    res = await engine.prefill(ctx, None, use_cache=True)
    out = ids(9, 2)
    assert await decode_all(engine, res.kv, out, per=4) == out
    assert res.kv.tokens == 309 and res.kv.payload.ids == ctx + out
    torch.testing.assert_close(res.kv.payload.logits, await recompute(engine, ctx + out), atol=1e-4, rtol=1e-4)
    # the next turn continues from the grown KV (copied back from the slot) and stays exact
    nxt = await engine.prefill(ctx + out + ids(40, 3), res.kv, use_cache=True)
    assert (nxt.cached_tokens, nxt.computed_tokens) == (309, 40)
    torch.testing.assert_close(nxt.kv.payload.logits, await recompute(engine, nxt.kv.payload.ids), atol=1e-4, rtol=1e-4)
    x = engine.stats.extra
    assert x["decode_steps"] == 9 and x["decode_ms"] > 0 and engine.stats.decoded_tokens == 9


async def test_static_and_dynamic_decode_agree_in_bf16_with_grouped_queries() -> None:
    """The CUDA configs' shape (8 query heads on 2 KV heads, bf16): both paths, against a recompute."""
    out_logits = []
    for mode in ("static", "dynamic"):
        eng = TorchEngine(CPU, config=GQA, decode=mode)
        try:
            res = await eng.prefill(ids(150, 4), None, use_cache=True)
            await decode_all(eng, res.kv, ids(6, 5))
            ref = await recompute(eng, res.kv.payload.ids)
            assert torch.cosine_similarity(res.kv.payload.logits, ref, dim=0) > 0.999
            out_logits.append(res.kv.payload.logits)
        finally:
            eng.close()
    assert torch.cosine_similarity(out_logits[0], out_logits[1], dim=0) > 0.999


async def test_concurrent_decodes_share_one_step_and_each_stays_exact() -> None:
    eng = TorchEngine(CPU, batch=4)
    try:
        lengths = (70, 130, 600, 260)  # 600: past the slots' first capacity (512), they grow
        contexts = [ids(n, 10 + i) for i, n in enumerate(lengths)]
        kvs = [(await eng.prefill(c, None, use_cache=False)).kv for c in contexts]
        outs = [ids(k, 20 + k) for k in (5, 12, 8, 3)]  # different lengths: rows leave and the last moves in
        got = await asyncio.gather(*(decode_all(eng, kv, o) for kv, o in zip(kvs, outs, strict=True)))
        assert got == outs
        x = eng.stats.extra
        # batched: all four in one step at some point, far fewer steps than tokens (12 if all joined at once)
        assert x["max_batch"] == 4 and x["decode_steps"] < 16 and x["decode_rows"] == sum(len(o) for o in outs)
        for c, kv, o in zip(contexts, kvs, outs, strict=True):
            assert kv.payload.ids == c + o and kv.tokens == len(c) + len(o)
            torch.testing.assert_close(kv.payload.logits, await recompute(eng, c + o), atol=1e-4, rtol=1e-4)
    finally:
        eng.close()


async def test_more_streams_than_rows_wait_for_a_free_row() -> None:
    eng = TorchEngine(CPU, batch=2)
    try:
        kvs = [(await eng.prefill(ids(50, 30 + i), None, use_cache=False)).kv for i in range(3)]
        outs = [ids(4, 40 + i) for i in range(3)]
        assert await asyncio.gather(*(decode_all(eng, kv, o) for kv, o in zip(kvs, outs, strict=True))) == outs
        assert eng.stats.extra["max_batch"] == 2
        for kv in kvs:
            torch.testing.assert_close(kv.payload.logits, await recompute(eng, kv.payload.ids), atol=1e-4, rtol=1e-4)
    finally:
        eng.close()


async def test_a_stopped_decode_keeps_exactly_what_was_decoded(engine: TorchEngine) -> None:
    ctx = ids(90, 50)
    res = await engine.prefill(ctx, None, use_cache=True)
    gen = engine.decode(res.kv, [(t, "") for t in ids(40, 51)], tokens_per_chunk=1)
    async for _ in gen:
        break
    await gen.aclose()  # the consumer went away: the row is freed at the worker's next turn
    for _ in range(100):
        if res.kv.payload.pins == 0:
            break
        await asyncio.sleep(0.01)
    assert res.kv.payload.pins == 0
    held = list(res.kv.payload.ids)
    assert held[:90] == ctx and 91 <= len(held) <= 130 and res.kv.tokens == len(held)
    torch.testing.assert_close(res.kv.payload.logits, await recompute(engine, held), atol=1e-4, rtol=1e-4)
    out = ids(3, 52)  # and the conversation goes on
    assert await decode_all(engine, res.kv, out) == out
    torch.testing.assert_close(res.kv.payload.logits, await recompute(engine, held + out), atol=1e-4, rtol=1e-4)


async def test_long_output_crosses_plan_windows_and_a_new_turn_copies_only_new_tokens() -> None:
    eng = TorchEngine(CPU)
    try:
        assert eng.decoder is not None
        eng.decoder.window = 8  # the device-side plan holds 8 ids at a time: 20 tokens need 3 windows
        ctx = ids(100, 60)
        res = await eng.prefill(ctx, None, use_cache=True)
        out = ids(20, 61)
        assert await decode_all(eng, res.kv, out, per=3) == out
        torch.testing.assert_close(res.kv.payload.logits, await recompute(eng, ctx + out), atol=1e-4, rtol=1e-4)
        copied = eng.stats.extra["decode_slot_copy_tokens"]
        assert copied == 100  # the context went into the slot once
        nxt = await eng.prefill(ctx + out + ids(30, 62), res.kv, use_cache=True)
        await decode_all(eng, nxt.kv, ids(2, 63))
        assert eng.stats.extra["decode_slot_copy_tokens"] - copied == 30  # only the new tokens
    finally:
        eng.close()


async def test_context_too_long_for_the_output_fails_the_stream_not_the_engine() -> None:
    eng = TorchEngine(CPU, max_kv_bytes=200 * CONFIGS["cpu-tiny"].kv_bytes_per_token)
    try:
        from turnbench.engine.torch_engine import ContextLengthError

        res = await eng.prefill(ids(198, 70), None, use_cache=True)
        with pytest.raises(ContextLengthError):
            await decode_all(eng, res.kv, ids(5, 71))
        assert res.kv.payload.pins == 0
        assert await decode_all(eng, res.kv, [7, 8]) == [7, 8]
    finally:
        eng.close()


async def test_a_failure_on_the_worker_fails_its_streams_and_the_engine_keeps_serving(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    eng = TorchEngine(CPU)
    try:
        assert eng.decoder is not None
        kv = (await eng.prefill(ids(80, 100), None, use_cache=False)).kv

        def broken(*args: Any) -> None:
            raise RuntimeError("device lost")

        monkeypatch.setattr(eng.decoder, "store", broken)  # when the stream leaves its row
        with pytest.raises(RuntimeError, match="device lost"):
            await decode_all(eng, kv, ids(3, 101))
        assert kv.payload.pins == 0 and kv.tokens == 80  # released, and nothing half-copied was kept
        monkeypatch.undo()
        other = (await eng.prefill(ids(50, 102), None, use_cache=False)).kv
        out = ids(4, 103)
        assert await decode_all(eng, other, out) == out
        torch.testing.assert_close(other.payload.logits, await recompute(eng, other.payload.ids), atol=1e-4, rtol=1e-4)
    finally:
        eng.close()


def test_step_is_one_traced_graph_for_every_layer() -> None:
    """``torch.compile`` sees the per-layer step once for all layers: a tensor-only function, no graph
    break (fullgraph), and the key length dynamic — what keeps compiling the 32-layer 8B model cheap."""
    c = CONFIGS["cpu-tiny"]
    model = Model(c, 8192, expand_kv=False).eval()
    graphs = []

    def backend(gm: Any, example_inputs: Any) -> Any:
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    fn = torch.compile(layer_decode, backend=backend, fullgraph=True)
    keys, values = ([torch.zeros(2, c.kv_heads, 1024, c.head_dim) for _ in range(c.layers)] for _ in "kv")
    tok, pos = torch.tensor([3, 4]), torch.tensor([20, 200])
    with torch.inference_mode():
        for length in (256, 384, 768):
            out = model.decode_step(tok, pos, keys, values, length, fn)
            ref = model.decode_step(tok, pos, keys, values, length)
            torch.testing.assert_close(out, ref)
    assert len(graphs) == 1  # 4 layers x 3 key lengths, one trace
    torch._dynamo.reset()


async def test_graph_bookkeeping_with_a_stand_in_for_cuda_graphs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The capture path on the CPU: a stand-in CUDA graph records the step instead of running it and replays
    it later. The two warm-up steps before a capture run for real (they rewrite the row's KV at its position
    and write one position ahead); the rows' positions are restored, and every output stays exact."""
    from contextlib import contextmanager, nullcontext

    eng = TorchEngine(CPU, batch=2)
    dec = eng.decoder
    assert dec is not None
    captured: list[tuple[int, int]] = []
    replays = []

    class Graph:
        def replay(self) -> None:
            replays.append(self.key)
            real_run(*self.key)

    @contextmanager
    def graph(g: Graph, pool: Any = None) -> Any:
        calls: list[tuple[int, int]] = []
        monkeypatch.setattr(dec, "_run", lambda b, n: calls.append((b, n)))  # recorded, not run
        yield
        monkeypatch.setattr(dec, "_run", real_run)
        (g.key,) = calls
        captured.append(g.key)

    real_run = dec._run
    stream = type("Stream", (), {"wait_stream": lambda self, other: None})
    monkeypatch.setattr(torch.cuda, "Stream", lambda device: stream())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: stream())
    monkeypatch.setattr(torch.cuda, "stream", lambda s: nullcontext())
    monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
    monkeypatch.setattr(torch.cuda, "graph", graph)
    dec.use_graphs = True
    try:
        contexts = [ids(240, 90), ids(100, 91)]
        kvs = [(await eng.prefill(c, None, use_cache=False)).kv for c in contexts]
        outs = [ids(30, 92), ids(6, 93)]  # the first crosses from the 256-key bucket into the 384 one
        got = await asyncio.gather(*(decode_all(eng, kv, o) for kv, o in zip(kvs, outs, strict=True)))
        assert got == outs
        for c, kv, o in zip(contexts, kvs, outs, strict=True):
            torch.testing.assert_close(kv.payload.logits, await recompute(eng, c + o), atol=1e-4, rtol=1e-4)
        assert len(captured) == len(set(captured)) >= 2 and {n for _, n in captured} >= {256, 384}
        assert len(replays) == eng.stats.extra["decode_steps"]  # every step after its capture is a replay
        assert eng.stats.extra["decode_graph_captures"] == len(captured)
    finally:
        eng.close()


def test_buckets_and_common_prefix() -> None:
    assert buckets(4096) == [256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096]
    assert buckets(600) == [256, 384, 512, 600]
    assert common_prefix([1, 2, 3], [1, 2, 4, 5]) == 2 and common_prefix([1, 2], [1, 2, 3]) == 2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
async def test_graph_decode_matches_dynamic_on_cuda() -> None:
    s = Settings(engine="torch", device="cuda", usage_db=":memory:")
    logits = []
    for mode in ("graph", "dynamic"):
        eng = TorchEngine(s, config=GQA, decode=mode, compile="none")
        try:
            res = await eng.prefill(ids(300, 80), None, use_cache=True)
            await decode_all(eng, res.kv, ids(20, 81))
            logits.append(res.kv.payload.logits.float().cpu())
            if mode == "graph":
                assert eng.stats.extra["decode_graph_captures"] >= 1
        finally:
            eng.close()
    assert torch.cosine_similarity(logits[0], logits[1], dim=0) > 0.999


async def test_a_late_consumer_gets_the_finished_steps_in_one_chunk(engine: TorchEngine) -> None:
    """Coalescing on the real engine: the worker runs ahead while the consumer sleeps, and the next chunk holds
    every step finished meanwhile (up to the bound); the ids and the KV are what one-by-one decoding gives."""
    ctx = ids(50, 7)
    res = await engine.prefill(ctx, None, use_cache=True)
    out = ids(30, 8)
    sizes: list[int] = []
    got: list[int] = []
    async for c in engine.decode(res.kv, [(t, "") for t in out], tokens_per_chunk=1, coalesce=8):
        sizes.append(len(c.token_ids))
        got += c.token_ids
        if len(sizes) == 1:
            for _ in range(2000):  # the worker finishes steps while nobody reads (polled: it has no event)
                if engine.stats.extra["decode_steps"] >= 12:
                    break
                await asyncio.sleep(0.005)
    assert got == out and res.kv.payload.ids == ctx + out
    assert sizes[1] == 8 and max(sizes) <= 8  # the steps that were done leave together, never past the bound


async def test_decode_stream_get_holds_back_an_error_and_an_overflowing_chunk() -> None:
    from turnbench.engine.torch_sched import DecodeStream

    s = DecodeStream(None, [1, 2, 3, 4, 5], 2)
    for item in ([1, 2], 1.0), ([3, 4], 1.0), ([5], 0.5):
        s.queue.put_nowait(item)
    assert await s.get(3) == ([1, 2], 1.0)  # [3, 4] would overflow 3: it waits
    assert await s.get(3) == ([3, 4, 5], 1.5)
    s.queue.put_nowait(([6], 0.1))
    s.queue.put_nowait(RuntimeError("boom"))
    assert await s.get(8) == ([6], 0.1)
    with pytest.raises(RuntimeError, match="boom"):
        await s.get(8)
