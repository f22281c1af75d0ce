"""The prefix cache both engines share: 64-token blocks, each hash chained to its prefix (like vLLM's
automatic prefix caching), LRU-bounded. ``sim`` keeps the hashes only (the cost model charges what is not
cached); ``torch`` keys real KV blocks by the same chain and verifies the tokens on a hit.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

__all__ = ["BLOCK_TOKENS", "PrefixCache"]

BLOCK_TOKENS = 64


class PrefixCache:
    """Hashes of 64-token blocks, each chained to its prefix (like vLLM's automatic prefix caching)."""

    def __init__(self, max_blocks: int = 200_000) -> None:
        self.max_blocks = max_blocks
        self._blocks: OrderedDict[int, None] = OrderedDict()

    @staticmethod
    def chain(context: Sequence[int], known: Sequence[int] = ()) -> list[int]:
        """Block hashes of ``context``; ``known`` are already-computed hashes of its leading blocks."""
        hashes = list(known)
        h = hashes[-1] if hashes else 0
        for start in range(len(hashes) * BLOCK_TOKENS, len(context) - BLOCK_TOKENS + 1, BLOCK_TOKENS):
            h = hash((h, tuple(context[start : start + BLOCK_TOKENS])))
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
        return n * BLOCK_TOKENS

    def insert(self, hashes: Sequence[int]) -> None:
        for h in hashes:
            self._blocks[h] = None
            self._blocks.move_to_end(h)
        while len(self._blocks) > self.max_blocks:
            self._blocks.popitem(last=False)
