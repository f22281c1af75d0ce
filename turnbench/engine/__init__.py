"""Model-serving engines: ``sim`` (calibrated cost model, default) and ``torch`` (real model, optional)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from turnbench.engine.base import ModelEngine
    from turnbench.settings import Settings


def make_engine(settings: Settings) -> ModelEngine:
    """The engine ``settings.engine`` names (``sim`` or ``torch``)."""
    if settings.engine == "sim":
        from turnbench.engine.prefix_cache import BLOCK_TOKENS, ENGINE_BLOCK_TOKENS
        from turnbench.engine.sim import SimEngine

        block = ENGINE_BLOCK_TOKENS if settings.role == "engine" else BLOCK_TOKENS  # vLLM's block in its role
        return SimEngine(settings.profile, prefix_blocks=settings.prefix_cache_blocks, block_tokens=block)
    if settings.engine == "torch":
        from turnbench.engine.torch_engine import TorchEngine  # optional extra

        engine: ModelEngine = TorchEngine(settings)
        return engine
    raise ValueError(f"unknown engine {settings.engine!r}: expected 'sim' or 'torch'")
