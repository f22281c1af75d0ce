"""Small test utilities shared by several test modules."""

from __future__ import annotations

import asyncio
from typing import Any

from clients.base import TurnRecorder, TurnResult
from turnbench.schema import StageStat


class StreamingRecorder(TurnRecorder):
    """A recorder whose ``streaming`` event is set once ``min_chunks`` content deltas have arrived, so a
    test can act (cancel, drop, stop) while a response is surely in flight."""

    def __init__(self, *args: Any, min_chunks: int = 3, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.min_chunks = min_chunks
        self.streaming = asyncio.Event()

    def on_event(self, event_type: str, nbytes: int = 0, *, t_ns: int | None = None) -> None:
        super().on_event(event_type, nbytes, t_ns=t_ns)
        if self.chunks >= self.min_chunks:
            self.streaming.set()


async def usage_rows(server: Any) -> list[dict[str, Any]]:
    """The server's durable usage records (one per finished response, oldest first), once every overlapped
    ``post`` has been written: what the server says each response cost and how it resolved its state."""
    await server.service.drain()
    rows: list[dict[str, Any]] = server.service.usage.rows()
    return rows


def synthetic_turn(i: int, transport: str = "ws", ttft: float | None = 10.0, ok: bool = True) -> TurnResult:
    """A made-up turn ``i`` (rollout i // 3): stage figures on even turns, ITL gaps on even turns."""
    return TurnResult(
        transport=transport,
        state="connection",
        rollout_id=i // 3,
        turn_index=i % 3,
        success=ok,
        error=None if ok else "boom",
        ttft_ms=ttft,
        turn_ms=None if ttft is None else ttft + 5.0,
        itl_ms=[1.0, 2.0, 4.0] if i % 2 == 0 else [],
        output_tokens=20,
        bytes_down=1000 + i,
        server_stages={"parse": StageStat(wall_ns=2_000_000, cpu_ns=1_500_000, items=4, chars=10)}
        if i % 2 == 0
        else {},
    )
