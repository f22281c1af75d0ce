"""The ``post`` stage: durable store write, usage accounting and the log line, on a writer thread.

:class:`PostWriter` runs it inline (on the critical path) or as a background task that overlaps the next
request (connection transports, unless a store=true response goes to a store other processes read: then the
service runs it inline, so the write is durable before the response completes). Overlapped posts are never
lost: :meth:`PostWriter.drain` waits for them (graceful shutdown), and a reader of a response still being
written (:meth:`PostWriter.wait_for`) waits for its write instead of missing it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

from turnbench.pipeline import StageTimer, spin_us
from turnbench.state import ResponseStore, StoredResponse, UsageLog, UsageRow

log = logging.getLogger("turnbench.post")


class PostWriter:
    def __init__(self, store: ResponseStore, usage: UsageLog, burn_us: Mapping[str, float] | None = None) -> None:
        self.store = store
        self.usage = usage
        self.burn_us = burn_us or {}
        self.failures = 0
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="turnbench-post")
        self._pending: dict[str, asyncio.Future[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, stored: StoredResponse | None, row: UsageRow, timer: StageTimer) -> None:
        """Run :meth:`run` in the background; readers of ``stored`` wait for it meanwhile."""
        if stored is not None:
            self._pending[stored.response.id] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(self.run(stored, row, timer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def run(self, stored: StoredResponse | None, row: UsageRow, timer: StageTimer) -> None:
        """``post``, timed into ``timer``: the injected sleep (if any), then the writes on the writer thread."""
        await timer.inject("post")
        w0, c0 = time.perf_counter_ns(), time.thread_time_ns()
        try:
            await asyncio.get_running_loop().run_in_executor(self._writer, self._write, stored, row)
        except Exception:
            self.failures += 1
            log.exception("post failed for %s", row.response_id)
            raise
        finally:
            fut = self._pending.pop(row.response_id, None)
            if fut is not None and not fut.done():
                fut.set_result(None)
            timer.add("post", wall_ns=time.perf_counter_ns() - w0, cpu_ns=time.thread_time_ns() - c0)

    def _write(self, stored: StoredResponse | None, row: UsageRow) -> None:
        if stored is not None:
            self.store.put(stored)
        self.usage.write(row)
        burn = self.burn_us.get("post")
        if burn:
            spin_us(burn)
        log.debug(
            "response %s %s %s in=%d cached=%d out=%d",
            row.response_id,
            row.transport,
            row.state,
            row.input_tokens,
            row.cached_tokens,
            row.output_tokens,
        )

    async def wait_for(self, response_id: str) -> None:
        """Return once ``response_id``'s store write (if one is in flight) has finished."""
        pending = self._pending.get(response_id)
        if pending is not None:
            await asyncio.shield(pending)

    async def drain(self) -> None:
        """Wait until every background ``post`` has finished."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def close(self) -> None:
        self._writer.shutdown(wait=True)
