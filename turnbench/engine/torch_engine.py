"""``torch``: a real decoder-only transformer served with a KV cache — the optional ``torch`` extra.

The model (configs, layers; random-init weights from ``torch.manual_seed(settings.seed)``, nothing is
downloaded; the vocabulary is the project tokenizer's) is :mod:`turnbench.engine.torch_model`. This module
serves it: one KV tensor per conversation, the shared prefix cache, memory bounds, one worker thread.

KV reuse, both exact (what is reused is checked token by token, never assumed):

* a continuation's :class:`KVHandle` holds a :class:`_KVState` (the KV tensor and the ids it covers,
  context and decoded tokens). The next prefill keeps the longest common prefix of those ids and the new
  context and computes the rest; the continuation takes the state over (the parent handle is emptied).
* a bounded LRU prefix cache of 64-token blocks (sim's block-hash chain, tokens verified on a hit) that any
  request may use; capped in bytes.

Bounds (bytes): ``max_kv_bytes`` per handle (past it, or past ``max_ctx`` tokens: :class:`ContextLengthError`),
``max_live_bytes`` over all handles (past it the least recently used idle one is evicted; its continuation
falls back to the prefix cache), ``prefix_cache_bytes``. Forward passes run on one worker thread in
``torch.inference_mode``, synchronized on CUDA: ``modeled_ms`` is measured time."""

from __future__ import annotations

import asyncio
import itertools
import time
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
from torch import Tensor

from turnbench.engine.base import DecodeChunk, EngineStats, KVHandle, PrefillResult
from turnbench.engine.prefix_cache import BLOCK_TOKENS, PrefixCache
from turnbench.engine.torch_model import CONFIGS, Model, TorchConfig
from turnbench.errors import EngineError, InvalidRequestError
from turnbench.settings import Settings

__all__ = ["CONFIGS", "ContextLengthError", "TorchConfig", "TorchEngine"]


class ContextLengthError(InvalidRequestError):
    """The context (plus output) does not fit the model's ``max_ctx`` or the per-handle KV byte cap."""

    code = "context_length_exceeded"


_serial = itertools.count(1)


@dataclass(eq=False)
class _KVState:
    """One conversation's KV: ``kv[..., :len(ids), :]`` holds exactly the tokens ``ids``."""

    kv: Tensor | None
    ids: list[int] = field(default_factory=list)
    hashes: list[int] = field(default_factory=list)  # block-hash chain of the context part of ``ids``
    logits: Tensor | None = None  # of the last id: predicts the next token
    used: int = 0  # LRU clock
    pins: int = 0  # decodes in flight: never evicted while > 0

    @property
    def nbytes(self) -> int:
        return 0 if self.kv is None else self.kv.numel() * self.kv.element_size()

    def free(self) -> None:
        self.kv, self.logits, self.ids, self.hashes = None, None, [], []


_Block64 = tuple[tuple[int, ...], Tensor]  # a prefix-cache block: its tokens, its KV [layers, 2, kvh, 64, hd]


class TorchEngine:
    """The ``torch`` engine (see the module docstring). Budgets default to the config's (bytes);
    ``expand_kv`` (default: on CUDA) picks the attention path for prefills that the CUDA kernels run fast.
    On the CPU torch gets ``cpu_threads`` intra-op threads (process-wide; 0 keeps torch's default): with one,
    no OpenMP worker spins on the core the server's event loop needs (2-core machines; see gpu_check)."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        config: TorchConfig | str | None = None,
        max_kv_bytes: int | None = None,
        prefix_cache_bytes: int | None = None,
        max_live_bytes: int | None = None,
        expand_kv: bool | None = None,
        cpu_threads: int = 1,
    ) -> None:
        from turnbench.tokenizer import load_tokenizer

        s = settings or Settings(engine="torch")
        want = "cuda" if s.device == "auto" and torch.cuda.is_available() else s.device
        self.device = torch.device("cpu" if want == "auto" else want)
        if self.device.type == "cpu" and cpu_threads > 0:
            torch.set_num_threads(cpu_threads)
        if config is None:
            config = s.profile if s.profile in CONFIGS else ("cuda-1b" if self.device.type == "cuda" else "cpu-tiny")
        self.config = c = CONFIGS[config] if isinstance(config, str) else config
        self.vocab = load_tokenizer().vocab_size
        torch.manual_seed(s.seed)
        expand = self.device.type == "cuda" if expand_kv is None else expand_kv
        with torch.device(self.device):  # initialise on the device (a 1B fp32 init on the CPU takes long)
            self.model = Model(c, self.vocab, expand_kv=expand).to(c.dtype).eval()
        self.params = sum(p.numel() for p in self.model.parameters())
        self.max_kv_bytes = max_kv_bytes if max_kv_bytes is not None else c.max_ctx * c.kv_bytes_per_token
        self.prefix_cache_bytes = c.prefix_cache_bytes if prefix_cache_bytes is None else prefix_cache_bytes
        self.max_live_bytes = c.max_live_bytes if max_live_bytes is None else max_live_bytes
        self.name = f"torch:{c.name}"
        self.stats = EngineStats()
        self._blocks: OrderedDict[int, _Block64] = OrderedDict()
        self._block_bytes = self._live_bytes = 0
        self._live: weakref.WeakSet[_KVState] = weakref.WeakSet()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="torch-engine")

    async def prefill(self, context: Sequence[int], kv: KVHandle | None, *, use_cache: bool) -> PrefillResult:
        loop = asyncio.get_running_loop()
        res = await loop.run_in_executor(self._pool, self._prefill_sync, list(context), kv, use_cache)
        self.stats.prefills += 1
        self.stats.prefill_tokens += res.computed_tokens
        self.stats.cached_tokens += res.cached_tokens
        self._gauges(prefill_ms=res.modeled_ms)
        return res

    @torch.inference_mode()
    def _prefill_sync(self, context: list[int], kv: KVHandle | None, use_cache: bool) -> PrefillResult:
        t0 = time.perf_counter()
        n = len(context)
        self._check_fits(n)
        state: _KVState | None = None
        cached = 0
        if use_cache and kv is not None and isinstance(kv.payload, _KVState) and kv.payload.kv is not None:
            held = kv.payload
            cached = _common_prefix(held.ids, context)
            if cached:  # take the parent's KV over: verified token by token, cut back to what matches
                state, kv.payload = held, None
                del state.ids[cached:], state.hashes[cached // BLOCK_TOKENS :]
        hashes = PrefixCache.chain(context, state.hashes if state is not None else ())
        if state is None:
            state = _KVState(kv=None)
            self._live.add(state)
        self._reserve(state, n)
        assert state.kv is not None
        if use_cache:
            blocks = self._match(hashes, context)
            if len(blocks) * BLOCK_TOKENS > cached:
                first = cached // BLOCK_TOKENS
                got = torch.cat([b[1] for b in blocks[first:]], dim=3)
                state.kv[:, :, :, first * BLOCK_TOKENS : len(blocks) * BLOCK_TOKENS] = got
                cached = len(blocks) * BLOCK_TOKENS
        cached = min(cached, n - 1) if n else 0  # a full hit still recomputes the last token for its logits
        if n:
            ids = self._ids(context[cached:])
            state.logits = self.model(ids, state.kv, cached)
        state.ids, state.hashes = context, hashes
        if use_cache:
            self._insert(state, hashes, context)
        self._sync()
        self._live_bytes = sum(st.nbytes for st in list(self._live))
        ms = (time.perf_counter() - t0) * 1e3
        handle = KVHandle(tokens=n, key=hashes[-1] if hashes else 0, payload=state, nbytes=state.nbytes)
        return PrefillResult(handle, cached, n - cached, ms)

    async def decode(
        self, kv: KVHandle, pieces: Sequence[tuple[int, str]], *, tokens_per_chunk: int
    ) -> AsyncIterator[DecodeChunk]:
        """One real forward step per planned token (teacher-forced: the planned id is fed back), in chunks."""
        state = kv.payload
        if not isinstance(state, _KVState) or state.kv is None:
            raise EngineError("this KV handle holds no cache (taken over by a continuation, or evicted)")
        loop = asyncio.get_running_loop()
        per = max(1, tokens_per_chunk)
        state.pins += 1
        try:
            for i in range(0, len(pieces), per):
                group = pieces[i : i + per]
                ids = [t for t, _ in group]
                ms = await loop.run_in_executor(self._pool, self._decode_sync, kv, state, ids)
                self.stats.decoded_tokens += len(ids)
                self._gauges(decode_ms=ms)
                yield DecodeChunk(ids, "".join(text for _, text in group))
        finally:
            state.pins -= 1

    @torch.inference_mode()
    def _decode_sync(self, kv: KVHandle, state: _KVState, ids: list[int]) -> float:
        t0 = time.perf_counter()
        if state.kv is None:
            raise EngineError("the KV cache was freed during decode (engine closed)")
        self._check_fits(len(state.ids) + len(ids))
        self._reserve(state, len(state.ids) + len(ids))
        assert state.kv is not None
        for t in ids:
            state.logits = self.model(self._ids([t]), state.kv, len(state.ids))
            state.ids.append(t)
        self._sync()
        self._live_bytes = sum(st.nbytes for st in list(self._live))
        kv.tokens, kv.nbytes, kv.key = len(state.ids), state.nbytes, hash((kv.key, tuple(ids)))
        return (time.perf_counter() - t0) * 1e3

    def _ids(self, ids: list[int]) -> Tensor:
        if min(ids) < 0 or max(ids) >= self.vocab:  # an embedding lookup out of range kills a CUDA context
            raise EngineError(f"token id outside the vocabulary 0..{self.vocab - 1}")
        return torch.tensor(ids, dtype=torch.long, device=self.device)

    def _check_fits(self, tokens: int) -> None:
        c = self.config
        if tokens > c.max_ctx or tokens * c.kv_bytes_per_token > self.max_kv_bytes:
            raise ContextLengthError(
                f"{tokens} tokens do not fit {self.name}: max_ctx {c.max_ctx} tokens, per-conversation KV "
                f"cap {self.max_kv_bytes} bytes = {self.max_kv_bytes // c.kv_bytes_per_token} tokens",
                "input",
            )

    def _reserve(self, state: _KVState, tokens: int) -> None:
        """Grow ``state.kv`` to hold ``tokens`` (capacity doubles, 256-token steps, within the caps)."""
        c = self.config
        have = 0 if state.kv is None else state.kv.shape[3]
        state.used = next(_serial)
        if tokens <= have:
            return
        cap_max = min(c.max_ctx, self.max_kv_bytes // c.kv_bytes_per_token)
        cap = min(cap_max, (max(tokens, 2 * have, 256) + 255) & ~255)
        new = torch.empty(c.layers, 2, c.kv_heads, cap, c.head_dim, dtype=c.dtype, device=self.device)
        if state.kv is not None and state.ids:
            new[:, :, :, : len(state.ids)] = state.kv[:, :, :, : len(state.ids)]
        state.kv = new
        self._evict_live(keep=state)

    def _evict_live(self, keep: _KVState) -> None:
        """Free least recently used idle handles while all handles hold more than ``max_live_bytes``."""
        states = sorted(self._live, key=lambda st: st.used)
        total = sum(st.nbytes for st in states)
        for st in states:
            if total <= self.max_live_bytes:
                break
            if st is keep or st.pins or st.kv is None:
                continue
            total -= st.nbytes
            st.free()
            self.stats.extra["kv_evictions"] = self.stats.extra.get("kv_evictions", 0.0) + 1

    def _match(self, hashes: Sequence[int], context: Sequence[int]) -> list[_Block64]:
        out: list[_Block64] = []
        for i, h in enumerate(hashes):
            blk = self._blocks.get(h)
            if blk is None or blk[0] != tuple(context[i * BLOCK_TOKENS : (i + 1) * BLOCK_TOKENS]):
                break
            self._blocks.move_to_end(h)
            out.append(blk)
        return out

    def _insert(self, state: _KVState, hashes: Sequence[int], context: Sequence[int]) -> None:
        assert state.kv is not None
        per_block = BLOCK_TOKENS * self.config.kv_bytes_per_token
        for i, h in enumerate(hashes):
            if h in self._blocks:
                self._blocks.move_to_end(h)
                continue
            if per_block > self.prefix_cache_bytes:
                return
            kv = state.kv[:, :, :, i * BLOCK_TOKENS : (i + 1) * BLOCK_TOKENS].clone()
            self._blocks[h] = (tuple(context[i * BLOCK_TOKENS : (i + 1) * BLOCK_TOKENS]), kv)
            self._block_bytes += per_block
            while self._block_bytes > self.prefix_cache_bytes:
                self._blocks.popitem(last=False)
                self._block_bytes -= per_block

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _gauges(self, *, prefill_ms: float = 0.0, decode_ms: float = 0.0) -> None:
        x = self.stats.extra
        x["prefill_ms"] = x.get("prefill_ms", 0.0) + prefill_ms
        x["decode_ms"] = x.get("decode_ms", 0.0) + decode_ms
        x["prefix_cache_bytes"] = float(self._block_bytes)
        x["live_kv_bytes"] = float(self._live_bytes)  # as of the last forward pass

    def close(self) -> None:
        """Wait for the worker, then free every handle's KV and the prefix cache."""
        self._pool.shutdown(wait=True)
        for st in list(self._live):
            st.free()
        self._blocks.clear()
        self._block_bytes = 0
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def _common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix of ``a`` and ``b``."""
    n = min(len(a), len(b))
    return n if a[:n] == b[:n] else next(i for i in range(n) if a[i] != b[i])
