"""The ``static`` decode of the ``torch`` engine: KV slots at fixed addresses, one step for a whole batch.

A decode step for ``B`` conversations runs :meth:`~turnbench.engine.torch_model.Model.decode_step` over rows
``0..B-1`` of the slot buffers (per layer a K and a V tensor ``[slots, kv_heads, capacity, head_dim]``).
Everything a step reads or advances lives on the device at a fixed address: the planned ids (``plan``, teacher
forcing: the service knows the tokens it will stream), each row's position and its index into the plan. A step
therefore needs no host value, and on CUDA it is captured once per (batch size, key-length bucket) in one CUDA
graph and then only replayed — one launch per token instead of hundreds. ``compile`` runs the per-layer
function through ``torch.compile`` first (Inductor fuses norms, rotary, softmax, SiLU·up and the residual adds;
``max-autotune`` also tunes the matrix-vector products); the captured graph then holds the fused kernels.

A slot remembers the ids whose KV it holds (``held``): a conversation that decodes again in the same slot
(the next turn of an agent loop) copies in only the tokens its slot does not already hold. The scheduler
(:mod:`turnbench.engine.torch_sched`) keeps the decoding conversations in rows ``0..B-1``; when one leaves, the
last one moves into its row (:meth:`StaticDecoder.move`), so a step's keys are always plain views.

The key length of a step is a bucket (256·2^k and 384·2^k tokens, at least the longest row's position + 1),
so that a few graphs serve every context length, at most 1.5x the attention reads of an exact length.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from turnbench.engine.torch_model import Model, TorchConfig, layer_decode

__all__ = ["COMPILE_MODES", "StaticDecoder", "buckets", "common_prefix"]

log = logging.getLogger(__name__)

COMPILE_MODES = ("none", "default", "max-autotune")
"""``torch.compile`` of the per-layer step: none, Inductor's default (plus coordinate-descent tuning of its
Triton kernels, as gpt-fast does), or max-autotune (also benchmarks Triton matmul templates against cuBLAS).
Inductor's own CUDA graphs stay off: the engine captures the whole step itself."""


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of ``a`` and ``b``."""
    n = min(len(a), len(b))
    if list(a[:n]) == list(b[:n]):
        return n
    return next(i for i in range(n) if a[i] != b[i])


def buckets(capacity: int) -> list[int]:
    """Key lengths a step may use: 256·2^k and 384·2^k below ``capacity``, then ``capacity``."""
    out: list[int] = []
    base = 256
    while base < capacity:
        out += [x for x in (base, base * 3 // 2) if x < capacity]
        base *= 2
    return [*out, capacity]


def compile_layer(mode: str) -> Callable[..., Tensor]:
    """:func:`layer_decode`, compiled by ``torch.compile`` in ``mode`` (one of :data:`COMPILE_MODES`)."""
    if mode == "none":
        return layer_decode
    if mode not in COMPILE_MODES:
        raise ValueError(f"unknown compile mode {mode!r}; choose from {', '.join(COMPILE_MODES)}")
    import torch._dynamo
    import torch._inductor.config as inductor

    inductor.coordinate_descent_tuning = True
    # a graph per batch size and the key length dynamic: a handful of compiles, never the default limit of 8
    for name in ("recompile_limit", "cache_size_limit"):  # the newer name, and the older one
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 64)
    inner = "max-autotune-no-cudagraphs" if mode == "max-autotune" else "default"
    fn: Callable[..., Tensor] = torch.compile(layer_decode, mode=inner, fullgraph=True)
    return fn


class StaticDecoder:
    """Static KV slots and the batched, graph-captured decode step over them (see the module docstring).

    ``graphs``: capture each (batch, bucket) step in a CUDA graph (CUDA only). ``compile``: one of
    :data:`COMPILE_MODES`; a compile that fails falls back to the eager layer (``stats["compile_failed"]``).
    ``capacity``: tokens per slot to start with (default: the config's ``max_ctx`` on CUDA, where growing
    would drop the captured graphs; 512 on the CPU); it grows to ``max_ctx`` as needed.
    """

    def __init__(
        self,
        model: Model,
        config: TorchConfig,
        device: torch.device,
        *,
        slots: int,
        graphs: bool,
        compile: str = "none",
        capacity: int | None = None,
        plan_window: int = 1024,
    ) -> None:
        if graphs and device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA device")
        self.model, self.c, self.device = model, config, device
        self.slots, self.use_graphs, self.window = slots, graphs, plan_window
        self.compile_mode = compile
        self.layer_fn = compile_layer(compile)
        start = capacity if capacity is not None else (config.max_ctx if device.type == "cuda" else 512)
        self.capacity = min(config.max_ctx, max(1, start))
        self.keys: list[Tensor] = []  # per layer [slots, kv_heads, capacity, head_dim]; at the first load
        self.values: list[Tensor] = []
        vocab = model.head.weight.shape[0]
        self.plan = torch.zeros(slots, plan_window, dtype=torch.long, device=device)
        self.index = torch.zeros(slots, dtype=torch.long, device=device)  # each row's next entry of ``plan``
        self.pos = torch.zeros(slots, dtype=torch.long, device=device)  # each row's next position
        self.logits = torch.zeros(slots, vocab, dtype=torch.float32, device=device)
        self.held: list[list[int]] = [[] for _ in range(slots)]  # ids whose KV each slot holds, from position 0
        self.graphs: dict[tuple[int, int], Any] = {}
        self.pool: Any = torch.cuda.graph_pool_handle() if graphs else None
        self.stats: dict[str, float] = {"graph_captures": 0.0, "slot_copy_tokens": 0.0}

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))

    # ------------------------------------------------------------------------------------------- slots

    def _ensure(self, tokens: int) -> None:
        """Slots of at least ``tokens`` capacity (zeroed: a masked key's value still meets a zero weight)."""
        if tokens > self.c.max_ctx:
            raise ValueError(f"{tokens} tokens exceed max_ctx {self.c.max_ctx}")
        if self.keys and tokens <= self.capacity:
            return
        cap = self.capacity
        while cap < tokens:
            cap = min(self.c.max_ctx, cap * 2)
        c = self.c

        def grown(old: list[Tensor]) -> list[Tensor]:
            out = []
            for i in range(c.layers):
                t = torch.zeros(self.slots, c.kv_heads, cap, c.head_dim, dtype=c.dtype, device=self.device)
                if old:
                    t[:, :, : old[i].shape[2]] = old[i]
                out.append(t)
            return out

        self.keys, self.values, self.capacity = grown(self.keys), grown(self.values), cap
        self.graphs.clear()  # they point at the old buffers

    def load(self, slot: int, kv: Tensor, ids: list[int], plan: list[int]) -> None:
        """Make ``slot`` hold ``ids`` (their KV is ``kv[:, :, :, :len(ids)]``, a conversation's tensor) and
        decode ``plan`` next; copies only what the slot does not already hold."""
        n = len(ids)
        self._ensure(min(self.c.max_ctx, n + len(plan) + 1))  # +1: a capture's warm-up writes one ahead
        keep = common_prefix(self.held[slot], ids)
        if keep < n:
            for layer in range(self.c.layers):
                self.keys[layer][slot, :, keep:n] = kv[layer, 0, :, keep:n]
                self.values[layer][slot, :, keep:n] = kv[layer, 1, :, keep:n]
            self.stats["slot_copy_tokens"] += n - keep
        self.held[slot] = list(ids)
        self.pos[slot] = n
        self.set_plan(slot, plan)

    def set_plan(self, slot: int, plan: list[int]) -> None:
        """The next ids ``slot`` decodes (at most one window)."""
        part = plan[: self.window]
        if part:
            self.plan[slot, : len(part)] = torch.tensor(part, dtype=torch.long, device=self.device)
        self.index[slot] = 0

    def move(self, src: int, dst: int) -> None:
        """Move the conversation in row ``src`` to row ``dst`` (rows stay 0..B-1 when one leaves)."""
        n = len(self.held[src])
        keep = common_prefix(self.held[dst], self.held[src])
        for t in (*self.keys, *self.values):
            t[dst, :, keep:n] = t[src, :, keep:n]
        self.stats["slot_copy_tokens"] += n - keep
        for buf in (self.plan, self.index, self.pos, self.logits):
            buf[dst] = buf[src]
        self.held[dst] = list(self.held[src])  # the source keeps its copy: still valid

    def store(self, slot: int, kv: Tensor, start: int, end: int) -> None:
        """Copy positions ``start..end-1`` of ``slot`` back into a conversation's tensor ``kv``."""
        if end > start:
            for layer in range(self.c.layers):
                kv[layer, 0, :, start:end] = self.keys[layer][slot, :, start:end]
                kv[layer, 1, :, start:end] = self.values[layer][slot, :, start:end]

    # -------------------------------------------------------------------------------------------- steps

    def bucket(self, tokens: int) -> int:
        """The smallest key length a step may use that covers ``tokens`` keys."""
        return next(x for x in buckets(self.capacity) if x >= tokens)

    def step(self, tokens: Sequence[int]) -> None:
        """Launch one decode step for rows ``0..len(tokens)-1``; ``tokens`` are the ids they feed (the host's
        copy of what the device reads from ``plan``). Asynchronous on CUDA: the caller times and waits."""
        b = len(tokens)
        longest = max(len(self.held[r]) for r in range(b)) + 1
        length = self.bucket(longest)
        graph = self.graphs.get((b, length)) if self.use_graphs else None
        if graph is None and self.use_graphs and longest + 1 <= self.capacity:  # warm-up writes one ahead
            try:
                graph = self.graphs[(b, length)] = self._capture(b, length)
            except Exception:  # the step runs eagerly from now on: slower, still right
                log.exception("CUDA graph capture of the decode step failed; decoding without graphs")
                self.use_graphs, self.stats["graph_failed"] = False, 1.0
                torch.cuda.synchronize(self.device)
        if graph is not None:
            graph.replay()
        else:
            self._run(b, length)
        for r, t in enumerate(tokens):
            self.held[r].append(t)

    def _run(self, b: int, length: int) -> None:
        tok = self.plan[:b].gather(1, self.index[:b, None])[:, 0]
        step = self.model.decode_step
        try:
            self.logits[:b] = step(tok, self.pos[:b], self.keys, self.values, length, self.layer_fn)
        except Exception:
            if self.layer_fn is layer_decode:
                raise
            # a compile that fails (no compiler, an Inductor bug) costs speed, not the response
            log.exception("torch.compile of the decode step failed; decoding with the eager layer")
            self.layer_fn, self.compile_mode = layer_decode, "none"
            self.stats["compile_failed"] = 1.0
            self.logits[:b] = step(tok, self.pos[:b], self.keys, self.values, length, self.layer_fn)
        self.pos[:b] += 1
        self.index[:b] += 1

    def _capture(self, b: int, length: int) -> Any:
        """A CUDA graph of one step for rows 0..b-1 at key length ``length``. The warm-up runs (kernel
        choice, compilation, allocator) execute the step for real: they rewrite the KV the real step writes
        (the same ids at the same positions) and one position ahead (masked, rewritten before it is read);
        the rows' positions and plan indices are restored before the capture."""
        saved = self.pos.clone(), self.index.clone()
        cuda: Any = torch.cuda  # its Stream is untyped
        side = cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        try:
            with torch.cuda.stream(side):
                for _ in range(2):
                    self._run(b, length)
                self.pos.copy_(saved[0])
                self.index.copy_(saved[1])
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                self._run(b, length)
        except BaseException:  # the rows go on from where they were
            self.pos.copy_(saved[0])
            self.index.copy_(saved[1])
            raise
        self.stats["graph_captures"] += 1
        return graph

    def close(self) -> None:
        self.graphs.clear()
        self.keys, self.values = [], []
        self.held = [[] for _ in range(self.slots)]
