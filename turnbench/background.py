"""Background responses (``background: true``): a response that runs on after the request that made it.

``POST /v1/responses`` with ``background: true`` (and ``store: true``) is refused or accepted like any request
(``service.prepare``); once accepted it answers at once with the response ``queued``, and the work runs in a
task of its own. ``GET /v1/responses/{id}`` reads its state from the store (``queued`` → ``in_progress`` →
``completed`` | ``incomplete`` | ``failed``, or ``cancelled`` by ``POST /v1/responses/{id}/cancel``). With
``stream: true`` its events are streamed as usual, and a client that goes away leaves the response running;
:meth:`BackgroundJob.follow` replays them from any sequence number while the response runs (the real API's
``starting_after``). Over WebSocket mode and gRPC ``Connect`` background is refused (docs/protocol/websocket-mode.md,
Client events).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

import msgspec

from turnbench.errors import InvalidRequestError, NotFoundError
from turnbench.prepared import Prepared
from turnbench.schema import Event, Response, ResponseInProgress
from turnbench.state import ResponseStore, StoredResponse


class Streams(Protocol):
    """What a background job needs of the service: its store, and its way of running a prepared request."""

    store: ResponseStore

    async def stream(
        self, prepared: Prepared, emit: Callable[[Event], Awaitable[None]], *, timeout_s: float | None = None
    ) -> None: ...


__all__ = ["BackgroundJob", "BackgroundJobs"]


class BackgroundJob:
    """One running background response: its events so far, and a task that produces the rest."""

    def __init__(self, prepared: Prepared) -> None:
        self.prepared = prepared
        self.response_id = prepared.response.id
        self.events: list[Event] = []
        self.done = asyncio.Event()
        self._grew = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def push(self, event: Event) -> None:
        self.events.append(event)
        self._grew.set()

    def finish(self) -> None:
        self.done.set()
        self._grew.set()

    async def follow(self, starting_after: int = -1) -> AsyncIterator[Event]:
        """The events with ``sequence_number`` > ``starting_after``, then each new one, until the response ends."""
        index = 0
        while True:
            while index < len(self.events):
                event = self.events[index]
                index += 1
                if event.sequence_number > starting_after:
                    yield event
            if self.done.is_set():
                return
            self._grew.clear()
            await self._grew.wait()


class BackgroundJobs:
    """The service's running background responses, by id."""

    def __init__(self, service: Streams) -> None:
        self.service = service
        self.running: dict[str, BackgroundJob] = {}

    def start(self, prepared: Prepared, *, timeout_s: float | None) -> BackgroundJob:
        """Store the response as ``queued`` and run it. Returns: the job (its first state is ``queued``)."""
        job = BackgroundJob(prepared)
        self._store(prepared, "queued")
        self.running[job.response_id] = job
        job.task = asyncio.create_task(self._run(job, timeout_s), name=f"turnbench-background-{job.response_id}")
        return job

    async def _run(self, job: BackgroundJob, timeout_s: float | None) -> None:
        async def emit(event: Event) -> None:
            if isinstance(event, ResponseInProgress):
                self._store(job.prepared, "in_progress")
            await job.push(event)

        try:
            await self.service.stream(job.prepared, emit, timeout_s=timeout_s)  # the final state: its post
        finally:
            self.running.pop(job.response_id, None)
            job.finish()

    def queued(self, job: BackgroundJob) -> Response:
        return msgspec.structs.replace(job.prepared.response, status="queued")

    async def cancel(self, response_id: str) -> Response:
        """Cancel a running background response (status ``cancelled``); a finished one is returned as it is.

        Raises: :class:`NotFoundError`; :class:`InvalidRequestError` for a response not made in background.
        """
        job = self.running.get(response_id)
        if job is None:
            stored = self.service.store.get(response_id)
            if stored is None:
                raise NotFoundError(f"No response found with id '{response_id}'.", "response_id")
            if not stored.response.background:
                raise InvalidRequestError(
                    "Only responses created with background=true can be cancelled.", "response_id"
                )
            return stored.response
        assert job.task is not None
        job.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await job.task
        stored = self.service.store.get(response_id)
        if stored is not None and stored.response.status not in ("queued", "in_progress"):
            return stored.response  # it finished before the cancellation took
        return self._store(job.prepared, "cancelled")

    async def close(self) -> None:
        """Cancel every running background response (server shutdown)."""
        for job in list(self.running.values()):
            if job.task is not None:
                job.task.cancel()
        await asyncio.gather(*(j.task for j in self.running.values() if j.task is not None), return_exceptions=True)

    def _store(self, prepared: Prepared, status: str) -> Response:
        response = msgspec.structs.replace(prepared.response, status=status)
        self.service.store.put(
            StoredResponse(
                response=response, items=[], tools=prepared.tools, instructions=prepared.request.instructions
            )
        )
        return response
