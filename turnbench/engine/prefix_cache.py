"""The prefix cache both engines share: 64-token blocks, each hash chained to its prefix (like vLLM's
automatic prefix caching), LRU-bounded. ``sim`` keeps the hashes only (the cost model charges what is not
cached); ``torch`` keys real KV blocks by the same chain and verifies the tokens on a hit. The engine role
(``Settings.role``) uses vLLM's default block of 16 tokens (:data:`ENGINE_BLOCK_TOKENS`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

__all__ = ["BLOCK_TOKENS", "ENGINE_BLOCK_TOKENS", "PrefixCache"]

BLOCK_TOKENS = 64
ENGINE_BLOCK_TOKENS = 16  # vLLM's default KV block: the granularity of its automatic prefix caching


class PrefixCache:
    """Hashes of 64-token blocks, each chained to its prefix (like vLLM's automatic prefix caching)."""

    def __init__(self, max_blocks: int = 200_000, block_tokens: int = BLOCK_TOKENS) -> None:
        self.max_blocks = max_blocks
        self.block_tokens = block_tokens
        self._blocks: OrderedDict[int, None] = OrderedDict()

    @staticmethod
    def chain(context: Sequence[int], known: Sequence[int] = (), block: int = BLOCK_TOKENS) -> list[int]:
        """Hashes of ``context``'s full ``block``-token blocks; ``known`` are already-computed hashes of its
        leading blocks."""
        hashes = list(known)
        h = hashes[-1] if hashes else 0
        for start in range(len(hashes) * block, len(context) - block + 1, block):
            h = hash((h, tuple(context[start : start + block])))
            hashes.append(h)
        return hashes

    def match(self, hashes: Sequence[int]) -> int:
        """Tokens of ``hashes``' prefix already cached."""
        n = 0
        for h in hashes:
            if h not in self._blocks:
                break
            self._blocks.move_to_end(h)
            n += 1
        return n * self.block_tokens

    def insert(self, hashes: Sequence[int]) -> None:
        for h in hashes:
            self._blocks[h] = None
            self._blocks.move_to_end(h)
        while len(self._blocks) > self.max_blocks:
            self._blocks.popitem(last=False)
