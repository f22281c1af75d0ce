"""The scheduler of the ``torch`` engine: one worker thread owns the device, every connection queues on it.

Policy — continuous batching at token granularity (like vLLM's, without chunked prefill):

* Work arrives in one FIFO queue of commands: a **job** (a prefill: one conversation's uncached tokens, run
  whole) or a **stream** (a response's decode: the ids it will stream, known ahead — teacher forcing).
* Each turn of the worker's loop takes the commands that arrived, in order (a job runs there and then; a
  stream joins the waiting line), admits waiting streams first come first served while the backend has a free
  row (``rows``: the batch it can run), then runs **one decode step for every admitted stream**: one forward
  pass for the whole batch with the ``static`` decode; with the ``dynamic`` one a token for each stream in
  turn (fair interleaving, no batching).
* A step's tokens are delivered when the device has finished them (the backend's ``wait``). On CUDA the next
  step is launched before waiting for the previous one, so the device does not idle while the host delivers.
* A stream leaves when its last token is launched, or when its consumer stops (cancel); its KV goes back to
  its conversation in device order, before any later command can touch that conversation.

So a prefill waits for at most one decode step, and a decode step waits for the prefills queued before it:
TTFT under load includes the other connections' prefills (there is no prefill/decode disaggregation).
Timings the worker records (``stats``, the engine's ``EngineStats.extra``): ``decode_steps``, ``decode_ms``
(device time of all steps), ``decode_rows`` (tokens stepped; ``decode_rows / decode_steps`` is the mean batch)
and ``max_batch``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from turnbench.errors import EngineError

__all__ = ["DecodeBackend", "DecodeStream", "Scheduler"]

log = logging.getLogger(__name__)

Wait = Callable[[], float]
"""Blocks until a launched step is done on the device; returns its device time in ms."""


class DecodeStream:
    """One response's decode: the ids to feed, its progress (worker-side) and its chunk queue (loop-side)."""

    __slots__ = (
        "cancelled",
        "delivered",
        "held",
        "ids",
        "launched",
        "loop",
        "ms",
        "payload",
        "per",
        "queue",
        "row",
        "sent",
    )

    def __init__(self, payload: Any, ids: list[int], per: int) -> None:
        self.payload = payload  # the backend's (the engine's conversation state and handle)
        self.ids, self.per = ids, max(1, per)
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[tuple[list[int], float] | BaseException] = asyncio.Queue()
        self.held: tuple[list[int], float] | BaseException | None = None  # taken from the queue, not yet given
        self.launched = self.delivered = self.sent = 0
        self.row = -1  # index in the active batch; -1 while waiting or after leaving
        self.ms = 0.0  # device time of the steps since the last chunk
        self.cancelled = False

    async def get(self, coalesce: int = 0) -> tuple[list[int], float]:
        """The next chunk: (ids, device ms of the steps that made them); raises what the worker raised. With
        ``coalesce``, the chunks already queued behind it join it while the total stays within ``coalesce``."""
        if self.held is not None:
            item, self.held = self.held, None
        else:
            item = await self.queue.get()
        if isinstance(item, BaseException):
            raise item
        ids, ms = item
        while len(ids) < coalesce and not self.queue.empty():
            more = self.queue.get_nowait()
            if isinstance(more, BaseException) or len(ids) + len(more[0]) > coalesce:
                self.held = more  # an error, or a chunk that would overflow: the next get starts with it
                break
            ids, ms = ids + more[0], ms + more[1]
        return ids, ms


class DecodeBackend(Protocol):
    """What the scheduler drives: rows of a batch, and their device work (all called on the worker)."""

    rows: int  # streams stepped together at most

    def admit(self, stream: DecodeStream, row: int) -> None:
        """Give ``stream`` row ``row`` (may raise: the stream fails, the others go on)."""
        ...

    def launch(self, batch: list[DecodeStream]) -> Wait:
        """Launch one token for each stream of ``batch`` (rows 0..len-1), ``stream.launched`` not yet
        counted; return how to wait for it."""
        ...

    def leave(self, stream: DecodeStream) -> None:
        """``stream`` leaves its row after ``stream.launched`` tokens (a step may still be in flight)."""
        ...

    def move(self, stream: DecodeStream, row: int) -> None:
        """Move ``stream`` to row ``row`` (the row of one that left)."""
        ...

    def abandon(self, stream: DecodeStream) -> None:
        """``stream`` failed: release its conversation without copying anything back from its row."""
        ...

    def reset(self) -> None:
        """Forget what every row holds (after a failure its contents are not trusted)."""
        ...


@dataclass(eq=False, slots=True)
class _Job:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]


def _post(loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], *args: Any) -> None:
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:  # that event loop is closed: nobody is waiting any more
        pass


def _resolve(fut: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)


class Scheduler:
    """The worker thread and its policy (module docstring). ``stats`` is written by the worker only."""

    def __init__(self, backend: DecodeBackend, stats: dict[str, float], *, name: str = "torch-engine") -> None:
        self.backend, self.stats, self.name = backend, stats, name
        self._cv = threading.Condition()
        self._cmds: list[_Job | tuple[str, DecodeStream]] = []
        self._waiting: deque[DecodeStream] = deque()
        self._active: list[DecodeStream] = []
        self._streams: set[DecodeStream] = set()  # opened, not yet finished, failed or cancelled (worker's)
        self._thread: threading.Thread | None = None
        self._stop = False

    # ------------------------------------------------------------------------------------- event loop side

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` on the worker between decode steps (FIFO with the other commands)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._put(_Job(fn, args, loop, fut))
        return await fut

    def open(self, stream: DecodeStream) -> None:
        """Queue ``stream`` for decoding; its chunks arrive on ``stream.get()``."""
        self._put(("open", stream))

    def cancel(self, stream: DecodeStream) -> None:
        """The consumer stopped: ``stream`` leaves at the worker's next turn. Never raises."""
        stream.cancelled = True
        try:
            self._put(("cancel", stream))
        except EngineError:  # closed: the worker has let every stream go already
            pass

    def _put(self, cmd: _Job | tuple[str, DecodeStream]) -> None:
        with self._cv:
            if self._stop:
                raise EngineError("the torch engine is closed")
            self._cmds.append(cmd)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
                self._thread.start()
            self._cv.notify()

    def close(self) -> None:
        """Stop the worker after the command it is running; what is still queued fails with EngineError."""
        with self._cv:
            self._stop = True
            self._cv.notify()
            thread = self._thread
        if thread is not None:
            thread.join()
        self._fail_all(EngineError("the torch engine was closed"))

    # ----------------------------------------------------------------------------------------- worker side

    def _loop(self) -> None:
        inflight: tuple[Wait, list[DecodeStream]] | None = None
        while True:
            with self._cv:
                while not (self._cmds or self._stop or self._active or self._waiting or inflight):
                    self._cv.wait()
                cmds, self._cmds = self._cmds, []
                stop = self._stop
            if stop:  # close() fails what is left (the engine frees every KV next)
                self._deliver(inflight)
                return
            try:
                inflight = self._turn(cmds, inflight)
            except Exception as exc:  # a bug or a broken device: fail every open stream, keep serving
                log.exception("torch engine scheduler: a turn failed")
                self._abandon_all(exc)
                inflight = None

    def _turn(
        self, cmds: list[_Job | tuple[str, DecodeStream]], inflight: tuple[Wait, list[DecodeStream]] | None
    ) -> tuple[Wait, list[DecodeStream]] | None:
        """One turn of the policy (module docstring); returns the step left in flight."""
        for cmd in cmds:
            if isinstance(cmd, _Job):
                self._deliver(inflight)  # a job's timing starts on an idle device
                inflight = None
                self._run_job(cmd)
            elif cmd[0] == "open":
                self._waiting.append(cmd[1])
                self._streams.add(cmd[1])
            else:
                self._drop(cmd[1])
        self._admit()
        if not self._active:
            self._deliver(inflight)
            return None
        batch = list(self._active)
        try:
            wait = self.backend.launch(batch)
        except Exception as exc:
            self._deliver(inflight)
            for st in batch:
                self._fail(st, exc)
            return None
        for st in batch:
            st.launched += 1
        for st in batch:
            if st.launched == len(st.ids):
                self._leave(st)
        x = self.stats
        x["decode_rows"] = x.get("decode_rows", 0.0) + len(batch)
        x["max_batch"] = max(x.get("max_batch", 0.0), float(len(batch)))
        self._deliver(inflight)
        return (wait, batch)

    def _run_job(self, job: _Job) -> None:
        try:
            result, exc = job.fn(*job.args), None
        except Exception as e:
            result, exc = None, e
        _post(job.loop, _resolve, job.future, result, exc)

    def _admit(self) -> None:
        while self._waiting and len(self._active) < self.backend.rows:
            st = self._waiting.popleft()
            if st.cancelled:
                continue
            try:
                self.backend.admit(st, len(self._active))
            except Exception as exc:
                self._streams.discard(st)
                _post(st.loop, st.queue.put_nowait, exc)
                continue
            st.row = len(self._active)
            self._active.append(st)

    def _deliver(self, inflight: tuple[Wait, list[DecodeStream]] | None) -> None:
        """Wait for a launched step and hand each stream the chunk it completes."""
        if inflight is None:
            return
        wait, batch = inflight
        try:
            ms = wait()
        except Exception as exc:
            for st in batch:
                self._fail(st, exc)
            return
        x = self.stats
        x["decode_steps"] = x.get("decode_steps", 0.0) + 1
        x["decode_ms"] = x.get("decode_ms", 0.0) + ms
        for st in batch:
            st.delivered += 1
            st.ms += ms
            if st.cancelled:
                continue
            if st.delivered - st.sent >= st.per or st.delivered == len(st.ids):
                chunk = (st.ids[st.sent : st.delivered], st.ms)
                st.sent, st.ms = st.delivered, 0.0
                _post(st.loop, st.queue.put_nowait, chunk)
            if st.delivered == len(st.ids):
                self._streams.discard(st)

    def _leave(self, st: DecodeStream) -> None:
        """``st`` leaves its row: its KV goes back first, then the last row moves into the hole."""
        if st.row < 0:
            return
        row = st.row
        try:
            self.backend.leave(st)
        except Exception:
            self.backend.abandon(st)  # at least release its conversation
            raise
        finally:
            st.row = -1
            last = self._active.pop()
            if last is not st:
                self._active[row] = last
                self.backend.move(last, row)  # from last.row
                last.row = row

    def _drop(self, st: DecodeStream) -> None:
        self._streams.discard(st)
        if st.row >= 0:
            self._leave(st)
        elif st in self._waiting:
            self._waiting.remove(st)

    def _fail(self, st: DecodeStream, exc: BaseException) -> None:
        self._streams.discard(st)
        try:
            self._leave(st)
        except Exception:  # the device failed already: the stream fails with the first error
            pass
        _post(st.loop, st.queue.put_nowait, exc)

    def _abandon_all(self, exc: BaseException) -> None:
        """After a turn failed halfway: the rows may not match the host's books any more, so nothing is
        copied back; every open stream fails, its conversation keeps only what it held before."""
        for st in self._active:
            try:
                self.backend.abandon(st)
            except Exception:
                log.exception("torch engine scheduler: releasing a stream failed")
            st.row = -1
        self.backend.reset()
        for st in self._streams:
            _post(st.loop, st.queue.put_nowait, exc)
        self._streams.clear()
        self._waiting.clear()
        self._active.clear()

    def _fail_all(self, exc: BaseException) -> None:
        with self._cv:
            cmds, self._cmds = self._cmds, []
        for cmd in cmds:
            if isinstance(cmd, _Job):
                _post(cmd.loop, _resolve, cmd.future, None, exc)
            else:
                _post(cmd[1].loop, cmd[1].queue.put_nowait, exc)
        for st in {*self._streams, *self._waiting, *self._active}:
            _post(st.loop, st.queue.put_nowait, exc)
        self._streams.clear()
        self._waiting.clear()
        self._active.clear()
