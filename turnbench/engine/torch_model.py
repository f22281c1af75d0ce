"""The transformer of the ``torch`` engine: a Llama-style decoder with an explicit KV tensor — the model only.

Random-init weights (nothing is downloaded); RMSNorm, rotary positions, grouped-query attention over an
explicit KV tensor per conversation (``[layers, 2, kv_heads, capacity, head_dim]``), SwiGLU MLP. Two
configs: ``cpu-tiny`` (float32, 4 layers, d=256) and ``cuda-1b`` (bf16, the shape of the anchors'
llama-1.1b). Serving it — KV handles per conversation, the prefix cache, memory bounds, the worker thread —
is :mod:`turnbench.engine.torch_engine`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.bias import causal_lower_right

__all__ = ["CONFIGS", "MiB", "Model", "TorchConfig"]

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
        TorchConfig("cuda-1b", 22, 2048, 32, 4, 5632, 65536, torch.bfloat16, 8192 * MiB, 24576 * MiB),
    )
}


class _RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


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
        self.embed = nn.Embedding(vocab, c.d_model)
        self.blocks = nn.ModuleList(_Block(c, expand_kv) for _ in range(c.layers))
        self.norm = _RMSNorm(c.d_model)
        self.head = nn.Linear(c.d_model, vocab, bias=False)
        # a plain attribute, not a buffer: ``.to(bf16)`` must not round the rotary frequencies
        self.inv_freq = 10000.0 ** -(torch.arange(0, c.head_dim, 2).float() / c.head_dim)
        # no cuDNN attention: it plans a graph per new KV length, i.e. per decode step (ms each)
        self.backends = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]

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
