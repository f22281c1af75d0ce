"""``torch``: a real decoder-only transformer served with a KV cache — the optional ``torch`` extra.

The model (configs, layers; random-init weights from ``torch.manual_seed(settings.seed)``, nothing is
downloaded; ids are the project tokenizer's) is :mod:`turnbench.engine.torch_model`. This module serves it:
one KV tensor per conversation, the shared prefix cache, memory bounds; the device belongs to one worker
thread whose scheduler (:mod:`turnbench.engine.torch_sched`) runs every connection's prefills and batches
their decode steps.

KV reuse, both exact (what is reused is checked token by token, never assumed):

* a continuation's :class:`KVHandle` holds a :class:`_KVState` (the KV tensor and the ids it covers,
  context and decoded tokens). The next prefill keeps the longest common prefix of those ids and the new
  context and computes the rest; the continuation takes the state over (the parent handle is emptied).
* a bounded LRU prefix cache of 64-token blocks (sim's block-hash chain, tokens verified on a hit) that any
  request may use; capped in bytes.

Decode, three ways (``decode=``): ``graph`` (CUDA default) and ``static`` (CPU default) copy a conversation
into a row of static KV slots and step every decoding conversation in one forward pass
(:mod:`turnbench.engine.torch_decode`; ``graph`` replays a CUDA graph per step, ``compile`` fuses it with
``torch.compile``); ``dynamic`` runs one forward per token on the conversation's own tensor, the conversations
in turn (no batching: the reference the static path is checked against).

Bounds (bytes): ``max_kv_bytes`` per handle (past it, or past ``max_ctx`` tokens: :class:`ContextLengthError`),
``max_live_bytes`` over all handles (past it the least recently used idle one is evicted; its continuation
falls back to the prefix cache), ``prefix_cache_bytes``.

Timing: every figure the engine reports is taken with the device idle or synchronized. A prefill runs on an
idle device (the scheduler waits for the step in flight) and ends with a synchronize: ``modeled_ms`` is its
measured time, queueing excluded. A decode step is timed with CUDA events (a clock on the CPU) and its tokens
are delivered only once the device has finished them; :attr:`DecodeChunk.device_ms` is the device time of the
steps that made a chunk. Totals go to ``stats.extra``: ``prefill_ms``, ``decode_ms``, ``decode_steps``,
``decode_rows``, ``max_batch``, memory gauges.
"""

from __future__ import annotations

import itertools
import time
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from turnbench.engine.base import DecodeChunk, EngineStats, KVHandle, PrefillResult
from turnbench.engine.prefix_cache import BLOCK_TOKENS, PrefixCache
from turnbench.engine.torch_decode import COMPILE_MODES, StaticDecoder, common_prefix
from turnbench.engine.torch_model import CONFIGS, Model, TorchConfig
from turnbench.engine.torch_sched import DecodeStream, Scheduler
from turnbench.errors import EngineError, InvalidRequestError
from turnbench.settings import Settings

__all__ = ["CONFIGS", "DECODE_MODES", "ContextLengthError", "TorchConfig", "TorchEngine"]

DECODE_MODES = ("graph", "static", "dynamic")


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


@dataclass(eq=False, slots=True)
class _Decoding:
    """What a :class:`DecodeStream` carries for the backends: the conversation and where its output starts."""

    state: _KVState
    handle: KVHandle
    start: int = 0  # len(state.ids) when the stream got its row


_Block64 = tuple[tuple[int, ...], Tensor]  # a prefix-cache block: its tokens, its KV [layers, 2, kvh, 64, hd]


class TorchEngine:
    """The ``torch`` engine (see the module docstring). Budgets default to the config's (bytes);
    ``expand_kv`` (default: on CUDA) picks the attention path for prefills that the CUDA kernels run fast.
    ``decode``: one of :data:`DECODE_MODES` (default ``graph`` on CUDA, ``static`` on the CPU); ``compile``:
    one of :data:`~turnbench.engine.torch_decode.COMPILE_MODES` or ``auto`` (default: ``settings.torch_compile``;
    auto = ``default`` on CUDA, ``none`` on the CPU); ``batch``: rows of the static decode (conversations
    stepped together); ``slot_tokens``: initial slot capacity (default: the config's on CUDA, 512 on the CPU).
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
        decode: str | None = None,
        compile: str | None = None,
        batch: int = 4,
        slot_tokens: int | None = None,
    ) -> None:
        from turnbench.tokenizer import load_tokenizer

        s = settings or Settings(engine="torch")
        want = "cuda" if s.device == "auto" and torch.cuda.is_available() else s.device
        self.device = torch.device("cpu" if want == "auto" else want)
        cuda = self.device.type == "cuda"
        if self.device.type == "cpu" and cpu_threads > 0:
            torch.set_num_threads(cpu_threads)
        if config is None:
            config = s.torch_config
            if config == "auto":  # the profile may name a config too (the older way)
                config = s.profile if s.profile in CONFIGS else ("cuda-1b" if cuda else "cpu-tiny")
        if isinstance(config, str) and config not in CONFIGS:
            raise ValueError(f"unknown torch config {config!r}; choose from {', '.join(CONFIGS)}")
        self.config = c = CONFIGS[config] if isinstance(config, str) else config
        self.vocab = load_tokenizer().vocab_size
        self.decode_mode = decode or ("graph" if cuda else "static")
        if self.decode_mode not in DECODE_MODES or (self.decode_mode == "graph" and not cuda):
            raise ValueError(f"decode {self.decode_mode!r}: expected graph (CUDA only), static or dynamic")
        mode = compile or s.torch_compile
        self.compile_mode = ("default" if cuda else "none") if mode == "auto" else mode
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"unknown compile mode {mode!r}; choose from auto, {', '.join(COMPILE_MODES)}")
        torch.manual_seed(s.seed)
        expand = cuda if expand_kv is None else expand_kv
        with torch.device(self.device):  # initialise on the device (a 1B fp32 init on the CPU takes long)
            self.model = Model(c, self.vocab, expand_kv=expand).to(c.dtype).eval()
        self.params = sum(p.numel() for p in self.model.parameters())
        self.weight_bytes = sum(p.numel() * p.element_size() for p in self.model.parameters())
        self.max_kv_bytes = max_kv_bytes if max_kv_bytes is not None else c.max_ctx * c.kv_bytes_per_token
        self.prefix_cache_bytes = c.prefix_cache_bytes if prefix_cache_bytes is None else prefix_cache_bytes
        self.max_live_bytes = c.max_live_bytes if max_live_bytes is None else max_live_bytes
        self.name = f"torch:{c.name}"
        self.stats = EngineStats()
        self._blocks: OrderedDict[int, _Block64] = OrderedDict()
        self._block_bytes = self._live_bytes = 0
        self._live: weakref.WeakSet[_KVState] = weakref.WeakSet()
        self.decoder: StaticDecoder | None = None
        backend: _Static | _Dynamic
        if self.decode_mode == "dynamic":
            backend = _Dynamic(self)
        else:
            self.decoder = StaticDecoder(
                self.model,
                c,
                self.device,
                slots=max(1, batch),
                graphs=self.decode_mode == "graph",
                compile=self.compile_mode,
                capacity=slot_tokens,
            )
            backend = _Static(self, self.decoder)
        self._sched = Scheduler(backend, self.stats.extra)

    # ------------------------------------------------------------------------------------------ prefill

    async def prefill(self, context: Sequence[int], kv: KVHandle | None, *, use_cache: bool) -> PrefillResult:
        res: PrefillResult = await self._sched.run(self._prefill_sync, list(context), kv, use_cache)
        self.stats.prefills += 1
        self.stats.prefill_tokens += res.computed_tokens
        self.stats.cached_tokens += res.cached_tokens
        return res

    @torch.inference_mode()
    def _prefill_sync(self, context: list[int], kv: KVHandle | None, use_cache: bool) -> PrefillResult:
        self._sync()  # copies queued behind the last decode step are not this prefill's time
        t0 = time.perf_counter()
        n = len(context)
        self._check_fits(n)
        state: _KVState | None = None
        cached = 0
        if use_cache and kv is not None and isinstance(kv.payload, _KVState) and kv.payload.kv is not None:
            held = kv.payload
            cached = common_prefix(held.ids, context)
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
        ms = (time.perf_counter() - t0) * 1e3
        self._live_bytes = sum(st.nbytes for st in list(self._live))
        self._gauges(prefill_ms=ms)
        handle = KVHandle(tokens=n, key=hashes[-1] if hashes else 0, payload=state, nbytes=state.nbytes)
        return PrefillResult(handle, cached, n - cached, ms)

    async def on_worker(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` on the engine's worker thread, between decode steps (a benchmark timing the
        device without the scheduler uses it; nothing else touches the device meanwhile)."""
        return await self._sched.run(fn, *args)

    # ------------------------------------------------------------------------------------------- decode

    async def decode(
        self, kv: KVHandle, pieces: Sequence[tuple[int, str]], *, tokens_per_chunk: int, coalesce: int = 0
    ) -> AsyncIterator[DecodeChunk]:
        """One real forward step per planned token (teacher-forced: the planned id is fed back), scheduled
        with the other connections' decodes; chunks of ``tokens_per_chunk`` as the device finishes them (with
        ``coalesce``, the chunks already finished when the consumer comes back, up to ``coalesce`` tokens)."""
        state = kv.payload
        if not isinstance(state, _KVState) or state.kv is None:
            raise EngineError("this KV handle holds no cache (taken over by a continuation, or evicted)")
        if not pieces:
            return
        stream = DecodeStream(_Decoding(state, kv), [t for t, _ in pieces], tokens_per_chunk)
        self._sched.open(stream)
        got = 0
        try:
            while got < len(pieces):
                ids, ms = await stream.get(coalesce)
                group = pieces[got : got + len(ids)]
                got += len(ids)
                self.stats.decoded_tokens += len(ids)
                yield DecodeChunk(ids, "".join(text for _, text in group), device_ms=ms)
        finally:
            if got < len(pieces):  # the consumer stopped, or the decode failed: free the row
                self._sched.cancel(stream)

    def _claim(self, d: _Decoding, ids: list[int]) -> None:
        """Before a stream's first step (worker): the ids are valid, the output fits, the KV has room."""
        state = d.state
        if state.kv is None:
            raise EngineError("the KV cache was freed before decode started (evicted or engine closed)")
        self._check_ids(ids)
        self._check_fits(len(state.ids) + len(ids))
        state.pins += 1
        try:
            self._reserve(state, len(state.ids) + len(ids))
        except BaseException:
            state.pins -= 1
            raise
        d.start = len(state.ids)

    def _release(self, d: _Decoding, ids: list[int]) -> None:
        """After a stream's last step (worker): ``ids`` were decoded into the conversation's KV."""
        state, kv = d.state, d.handle
        state.pins -= 1
        kv.tokens, kv.nbytes, kv.key = len(state.ids), state.nbytes, hash((kv.key, tuple(ids)))
        self._live_bytes = sum(st.nbytes for st in list(self._live))
        self._gauges()

    # ------------------------------------------------------------------------------------------- memory

    def _ids(self, ids: list[int]) -> Tensor:
        self._check_ids(ids)
        return torch.tensor(ids, dtype=torch.long, device=self.device)

    def _check_ids(self, ids: list[int]) -> None:
        if ids and (min(ids) < 0 or max(ids) >= self.vocab):  # out of range kills a CUDA context
            raise EngineError(f"token id outside the vocabulary 0..{self.vocab - 1}")

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

    def _gauges(self, *, prefill_ms: float = 0.0) -> None:
        """Worker-side counters (the worker is their only writer)."""
        x = self.stats.extra
        x["prefill_ms"] = x.get("prefill_ms", 0.0) + prefill_ms
        x["prefix_cache_bytes"] = float(self._block_bytes)
        x["live_kv_bytes"] = float(self._live_bytes)  # as of the last prefill or decode
        if self.decoder is not None:
            x["decode_slot_bytes"] = float(self.decoder.nbytes)
            x.update({f"decode_{k}": v for k, v in self.decoder.stats.items()})

    def close(self) -> None:
        """Stop the worker (after what it is running), then free every handle's KV and the prefix cache."""
        self._sched.close()
        for st in list(self._live):
            st.free()
        self._blocks.clear()
        self._block_bytes = 0
        if self.decoder is not None:
            self.decoder.close()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


class _Static:
    """Decode backend: batched steps over the static slots (:class:`StaticDecoder`), timed on the device."""

    def __init__(self, engine: TorchEngine, decoder: StaticDecoder) -> None:
        self.engine, self.decoder, self.rows = engine, decoder, decoder.slots

    @torch.inference_mode()
    def admit(self, stream: DecodeStream, row: int) -> None:
        d: _Decoding = stream.payload
        self.engine._claim(d, stream.ids)
        assert d.state.kv is not None
        self.decoder.load(row, d.state.kv, d.state.ids, stream.ids)

    @torch.inference_mode()
    def launch(self, batch: list[DecodeStream]) -> Callable[[], float]:
        dec = self.decoder
        for st in batch:
            if st.launched and st.launched % dec.window == 0:  # the next window of a long output
                dec.set_plan(st.row, st.ids[st.launched :])
        tokens = [st.ids[st.launched] for st in batch]
        if self.engine.device.type != "cuda":
            t0 = time.perf_counter()
            dec.step(tokens)
            ms = (time.perf_counter() - t0) * 1e3
            return lambda: ms
        cuda: Any = torch.cuda  # its Event is untyped
        start, end = cuda.Event(enable_timing=True), cuda.Event(enable_timing=True)
        start.record()
        dec.step(tokens)
        end.record()

        def wait() -> float:
            end.synchronize()
            return float(start.elapsed_time(end))

        return wait

    @torch.inference_mode()
    def leave(self, stream: DecodeStream) -> None:
        d: _Decoding = stream.payload
        done = stream.ids[: stream.launched]
        if done and d.state.kv is not None:
            self.decoder.store(stream.row, d.state.kv, d.start, d.start + len(done))
            d.state.ids.extend(done)
            d.state.logits = self.decoder.logits[stream.row].clone()
        self.engine._release(d, done)

    @torch.inference_mode()
    def move(self, stream: DecodeStream, row: int) -> None:
        self.decoder.move(stream.row, row)

    def abandon(self, stream: DecodeStream) -> None:
        self.engine._release(stream.payload, [])  # its conversation keeps the ids it had before the decode

    def reset(self) -> None:
        self.decoder.held = [[] for _ in range(self.decoder.slots)]


class _Dynamic:
    """Decode backend: a forward per token on each conversation's own KV tensor, the streams in turn."""

    rows = 1 << 20  # every stream is admitted; a step gives each one token

    def __init__(self, engine: TorchEngine) -> None:
        self.engine = engine

    def admit(self, stream: DecodeStream, row: int) -> None:
        self.engine._claim(stream.payload, stream.ids)

    @torch.inference_mode()
    def launch(self, batch: list[DecodeStream]) -> Callable[[], float]:
        e = self.engine
        t0 = time.perf_counter()
        for st in batch:
            state: _KVState = st.payload.state
            assert state.kv is not None
            t = st.ids[st.launched]
            state.logits = e.model(e._ids([t]), state.kv, len(state.ids))
            state.ids.append(t)
        e._sync()
        ms = (time.perf_counter() - t0) * 1e3
        return lambda: ms

    def leave(self, stream: DecodeStream) -> None:
        self.engine._release(stream.payload, stream.ids[: stream.launched])

    def move(self, stream: DecodeStream, row: int) -> None:
        pass

    def abandon(self, stream: DecodeStream) -> None:
        self.leave(stream)  # the tokens stepped are in the conversation's own tensor already

    def reset(self) -> None:
        pass
