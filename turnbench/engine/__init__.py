"""Model-serving engines: ``sim`` (calibrated cost model, default) and ``torch`` (real model, optional)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from turnbench.engine.base import ModelEngine
    from turnbench.settings import Settings


def make_engine(settings: Settings) -> ModelEngine:
    """The engine ``settings.engine`` names (``sim`` or ``torch``)."""
    if settings.engine == "sim":
        from turnbench.engine.sim import SimEngine

        return SimEngine(settings.profile, prefix_blocks=settings.prefix_cache_blocks)
    if settings.engine == "torch":
        from turnbench.engine.torch_engine import TorchEngine  # optional extra

        engine: ModelEngine = TorchEngine(settings)
        return engine
    raise ValueError(f"unknown engine {settings.engine!r}: expected 'sim' or 'torch'")
