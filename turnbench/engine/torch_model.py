"""The transformer of the ``torch`` engine: a Llama-style decoder with an explicit KV tensor — the model only.

Random-init weights (nothing is downloaded); RMSNorm, rotary positions, grouped-query attention over an
explicit KV tensor, SwiGLU MLP. Configs: ``cpu-tiny`` (float32, 4 layers, d=256) and, in bf16, the shapes of
the anchors' models (``turnbench/data/anchors/gpu_decode_cudagraph_h200.json``): ``cuda-0.2b``, ``cuda-1b`` (llama-1.1b)
and ``cuda-8b`` (llama-8b), their vocabularies padded to the reference models' so that the weight bytes, and
with them the memory-bandwidth limit of batch-1 decode, are the anchors'.

Two forward paths over the same weights:

* :meth:`Model.forward` (prefill, and the ``dynamic`` decode): ``n`` tokens of one conversation at positions
  ``start..`` against that conversation's KV tensor ``[layers, 2, kv_heads, capacity, head_dim]``.
* :meth:`Model.decode_step` (the ``static`` decode): one token for each of ``B`` conversations held in the
  rows ``0..B-1`` of static slot buffers (per layer a K and a V tensor ``[slots, kv_heads, capacity,
  head_dim]``), at
  per-row positions given as a device tensor, attending over a fixed key length ``length`` (masked past each
  row's position). No host value changes between steps, so the whole step can be captured in one CUDA
  graph; :func:`layer_decode` is a pure function of tensors, so ``torch.compile`` traces it once and every
  layer reuses it. :mod:`turnbench.engine.torch_decode` drives it.

Serving — KV handles per conversation, the prefix cache, memory bounds, the scheduler — is
:mod:`turnbench.engine.torch_engine`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.bias import causal_lower_right

__all__ = ["CONFIGS", "MiB", "Model", "TorchConfig", "layer_decode"]

MiB = 1 << 20


@dataclass(frozen=True, slots=True)
class TorchConfig:
    """A model shape and its memory budgets (bytes)."""

    name: str
    layers: int
    d_model: int
    heads: int
    kv_heads: int
    mlp: int
    max_ctx: int  # tokens
    dtype: torch.dtype
    prefix_cache_bytes: int
    max_live_bytes: int
    vocab: int = 0  # rows of the embedding and the head; 0: the tokenizer's (larger: a reference model's)

    def model_vocab(self, tokenizer_vocab: int) -> int:
        return max(self.vocab, tokenizer_vocab)

    def params(self, tokenizer_vocab: int) -> int:
        """Parameters of the model built from this config (norm weights included)."""
        hd, v = self.head_dim, self.model_vocab(tokenizer_vocab)
        per_layer = self.d_model * (self.heads + 2 * self.kv_heads) * hd + self.heads * hd * self.d_model
        per_layer += 3 * self.d_model * self.mlp + 2 * self.d_model
        return self.layers * per_layer + 2 * v * self.d_model + self.d_model

    @property
    def head_dim(self) -> int:
        return self.d_model // self.heads

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * torch.finfo(self.dtype).bits // 8


CONFIGS: dict[str, TorchConfig] = {
    c.name: c
    for c in (
        TorchConfig("cpu-tiny", 4, 256, 4, 4, 512, 8192, torch.float32, 256 * MiB, 1024 * MiB),
        # the anchors' llama-0.2b / llama-1.1b / llama-8b (0.20 / 1.10 / 8.03 B parameters)
        TorchConfig("cuda-0.2b", 12, 1024, 16, 4, 2816, 65536, torch.bfloat16, 4096 * MiB, 16384 * MiB, 32000),
        TorchConfig("cuda-1b", 22, 2048, 32, 4, 5632, 65536, torch.bfloat16, 8192 * MiB, 24576 * MiB, 32000),
        TorchConfig("cuda-8b", 32, 4096, 32, 8, 14336, 65536, torch.bfloat16, 16384 * MiB, 49152 * MiB, 128256),
    )
}


EPS = 1e-6


def _rms(x: Tensor, weight: Tensor) -> Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * weight


class _RMSNorm(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: Tensor) -> Tensor:
        return _rms(x, self.weight)


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    a, b = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-b, a), dim=-1) * sin


class _Block(nn.Module):
    def __init__(self, c: TorchConfig, expand_kv: bool) -> None:
        super().__init__()
        self.c, self.expand_kv = c, expand_kv  # CUDA only: on the CPU causal_lower_right warns, materializes
        hd = c.head_dim
        self.attn_norm, self.mlp_norm = _RMSNorm(c.d_model), _RMSNorm(c.d_model)
        self.wqkv = nn.Linear(c.d_model, (c.heads + 2 * c.kv_heads) * hd, bias=False)
        self.wo = nn.Linear(c.heads * hd, c.d_model, bias=False)
        self.w13 = nn.Linear(c.d_model, 2 * c.mlp, bias=False)
        self.w2 = nn.Linear(c.mlp, c.d_model, bias=False)

    def forward(self, x: Tensor, cache: Tensor, start: int, cos: Tensor, sin: Tensor) -> Tensor:
        """``x``: [1, n, d] at positions start..start+n; writes its K/V into ``cache`` [2, kvh, cap, hd]."""
        c, n = self.c, x.shape[1]
        qkv = self.wqkv(self.attn_norm(x)).view(1, n, c.heads + 2 * c.kv_heads, c.head_dim).transpose(1, 2)
        q, k, v = qkv.split((c.heads, c.kv_heads, c.kv_heads), dim=1)
        end = start + n
        cache[0, :, start:end] = _rotate(k, cos, sin)[0]
        cache[1, :, start:end] = v[0]
        keys, values = cache[0, :, :end].unsqueeze(0), cache[1, :, :end].unsqueeze(0)
        q = _rotate(q, cos, sin)
        gqa, rep, sdpa = c.kv_heads != c.heads, c.heads // c.kv_heads, F.scaled_dot_product_attention
        if n == 1:  # decode: the query heads sharing a KV head attend as one group of `rep` queries, no mask
            o = sdpa(q.reshape(1, c.kv_heads, rep, c.head_dim), keys, values).reshape(1, c.heads, 1, -1)
        elif self.expand_kv:  # CUDA: whole KV heads, then flash / memory-efficient kernels (no GQA flag)
            keys, values = keys.repeat_interleave(rep, dim=1), values.repeat_interleave(rep, dim=1)
            causal = {"is_causal": True} if start == 0 else {"attn_mask": causal_lower_right(n, end)}
            o = sdpa(q, keys, values, **causal)
        elif start == 0:
            o = sdpa(q, keys, values, is_causal=True, enable_gqa=gqa)
        else:  # queries at start..end-1 see keys 0..their own position (bottom-right causal)
            pos = torch.arange(end, device=x.device)
            o = sdpa(q, keys, values, attn_mask=pos[None, :] <= pos[start:, None], enable_gqa=gqa)
        x = x + self.wo(o.transpose(1, 2).reshape(1, n, -1))
        gate, up = self.w13(self.mlp_norm(x)).chunk(2, dim=-1)
        out: Tensor = x + self.w2(F.silu(gate) * up)
        return out


class Model(nn.Module):
    """The decoder: ``forward(ids, kv, start)`` writes K/V of ``ids`` into ``kv`` and returns the last logits."""

    def __init__(self, c: TorchConfig, vocab: int, *, expand_kv: bool) -> None:
        super().__init__()
        self.embed = nn.Embedding(c.model_vocab(vocab), c.d_model)
        self.blocks = nn.ModuleList(_Block(c, expand_kv) for _ in range(c.layers))
        self.norm = _RMSNorm(c.d_model)
        self.head = nn.Linear(c.d_model, c.model_vocab(vocab), bias=False)
        # a plain attribute, not a buffer: ``.to(bf16)`` must not round the rotary frequencies
        self.inv_freq = 10000.0 ** -(torch.arange(0, c.head_dim, 2).float() / c.head_dim)
        # no cuDNN attention: it plans a graph per new KV length, i.e. per decode step (ms each)
        self.backends = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
        self.c = c
        # the static step looks rotary angles up by position (a device tensor); the same float32 products
        # as forward() computes, so both paths rotate identically
        ang = torch.outer(torch.arange(c.max_ctx).float(), self.inv_freq)
        ang = torch.cat((ang, ang), dim=-1)
        self.rope_cos, self.rope_sin = ang.cos().to(c.dtype), ang.sin().to(c.dtype)

    def forward(self, ids: Tensor, kv: Tensor, start: int) -> Tensor:
        """Logits [vocab] (float32) of the last of ``ids`` [n] at positions start..; K/V go into ``kv``."""
        x = self.embed(ids)[None]
        freqs = torch.outer(torch.arange(start, start + ids.shape[0], device=ids.device).float(), self.inv_freq)
        ang = torch.cat((freqs, freqs), dim=-1)
        cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
        with sdpa_kernel(self.backends):
            for i, block in enumerate(self.blocks):
                x = block(x, kv[i], start, cos, sin)
        out: Tensor = self.head(self.norm(x[0, -1])).float()
        return out

    def decode_step(
        self,
        tok: Tensor,
        pos: Tensor,
        keys: Sequence[Tensor],
        values: Sequence[Tensor],
        length: int,
        layer_fn: Callable[..., Tensor] | None = None,
    ) -> Tensor:
        """One token for each of ``B`` conversations: ``tok`` [B] at positions ``pos`` [B] (device tensors),
        their K/V written into rows ``0..B-1`` of ``keys``/``values`` (per layer one tensor each, [slots,
        kv_heads, capacity, head_dim], each its own allocation: a compiled layer then sees the same input
        layout every time, and writes into it in place — through a view of a stacked cache, Inductor copies
        the whole cache per step),
        attention over keys ``0..length-1`` masked past each row's position. Returns logits [B, vocab]
        (float32). ``layer_fn`` (default :func:`layer_decode`) may be its compiled twin."""
        fn = layer_fn or layer_decode
        b, c = tok.shape[0], self.c
        x = F.embedding(tok, self.embed.weight)
        cos, sin = self.rope_cos[pos][:, None], self.rope_sin[pos][:, None]
        at = torch.arange(length, device=tok.device)
        mask = torch.where(at[None, :] <= pos[:, None], 0.0, float("-inf"))[:, None, None, :]
        if fn is not layer_decode:  # compiled: one graph for every key length (the batch size stays static)
            torch._dynamo.mark_dynamic(mask, 3)
        rows = torch.arange(b, device=tok.device)
        blocks: list[_Block] = list(self.blocks)  # type: ignore[arg-type]
        for i, blk in enumerate(blocks):
            x = fn(
                x,
                blk.attn_norm.weight,
                blk.wqkv.weight,
                blk.wo.weight,
                blk.mlp_norm.weight,
                blk.w13.weight,
                blk.w2.weight,
                keys[i],
                values[i],
                rows,
                pos,
                mask,
                cos,
                sin,
                c.kv_heads,
            )
        out: Tensor = F.linear(_rms(x, self.norm.weight), self.head.weight).float()
        return out


def layer_decode(
    x: Tensor,
    attn_norm: Tensor,
    wqkv: Tensor,
    wo: Tensor,
    mlp_norm: Tensor,
    w13: Tensor,
    w2: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    rows: Tensor,
    pos: Tensor,
    mask: Tensor,
    cos: Tensor,
    sin: Tensor,
    kv_heads: int,
) -> Tensor:
    """One layer of the static decode step, a pure function of tensors (``torch.compile`` traces it once for
    every layer). ``x`` [B, d]; ``k_cache``/``v_cache`` [slots, kv_heads, capacity, head_dim], this layer's;
    ``rows`` = arange(B); ``pos`` [B]; ``mask`` [B, 1, 1, L] additive float32 (0 or -inf); ``cos``/``sin``
    [B, 1, head_dim]. Writes row b's K/V at ``pos[b]`` and attends over keys ``0..L-1`` as matrix products
    (parallel over the keys, however long), softmax in float32, like the reference eager Llama attention."""
    b, hd, length = x.shape[0], k_cache.shape[-1], mask.shape[-1]
    heads = wo.shape[1] // hd
    qkv = F.linear(_rms(x, attn_norm), wqkv).view(b, heads + 2 * kv_heads, hd)
    q, k, v = qkv[:, :heads], qkv[:, heads : heads + kv_heads], qkv[:, heads + kv_heads :]
    k_cache[rows, :, pos] = _rotate(k, cos, sin)  # in place: index_put_ on the input itself
    v_cache[rows, :, pos] = v
    keys, values = k_cache[:b, :, :length], v_cache[:b, :, :length]  # [B, kv_heads, L, hd]: views
    q = (_rotate(q, cos, sin) * hd**-0.5).view(b, kv_heads, heads // kv_heads, hd)
    scores = torch.matmul(q, keys.transpose(-1, -2)).float() + mask  # [B, kv_heads, rep, L]
    o = torch.matmul(scores.softmax(-1).to(x.dtype), values).reshape(b, heads * hd)
    x = x + F.linear(o, wo)
    gate, up = F.linear(_rms(x, mlp_norm), w13).chunk(2, dim=-1)
    out: Tensor = x + F.linear(F.silu(gate) * up, w2)
    return out
