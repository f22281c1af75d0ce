"""How rollouts are offered to a server, and in what order cells take turns.

A closed loop (C in flight) or an open loop (Poisson arrivals), and the round-by-round plan
(:func:`chunk_plan`) that interleaves cells so drift hits them all alike.

Closed loop: ``concurrency`` workers, each running one rollout after another; a request's clock starts when
it is issued. Open loop: rollouts *arrive* on a seeded Poisson schedule whatever the server is doing; each
rollout's first request is stamped with its *scheduled* time, so when the generator (or the server) falls
behind, the wait shows up as ``queue_ms`` instead of disappearing (coordinated omission). Late arrivals are
started at once, never skipped and never coalesced.

Clocks and sleeps are injectable, so a test can script a generator that is late.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from loadtests.execution.plan import Cell

__all__ = ["chunk_plan", "closed_loop", "open_loop", "poisson_offsets", "split_rounds"]

R = TypeVar("R")
Clock = Callable[[], int]
Sleep = Callable[[float], Awaitable[None]]


def poisson_offsets(rate_rps: float, n: int, seed: int) -> list[float]:
    """Arrival times, in s from the start, of ``n`` arrivals of a Poisson process at ``rate_rps``.

    The first arrival is at 0; gaps are exponential with mean ``1 / rate_rps``. Same seed, same schedule.
    """
    if rate_rps <= 0:
        raise ValueError("rate_rps must be > 0")
    rng = random.Random(seed)
    out: list[float] = []
    t = 0.0
    for i in range(n):
        if i:
            t += rng.expovariate(rate_rps)
        out.append(t)
    return out


def split_rounds(total: int, rounds: int) -> list[int]:
    """How many of ``total`` rollouts each of ``rounds`` rounds runs (the remainder goes to early rounds)."""
    if rounds < 1:
        raise ValueError("rounds must be >= 1")
    base, extra = divmod(total, rounds)
    return [base + (1 if i < extra else 0) for i in range(rounds)]


async def closed_loop(jobs: Sequence[Callable[[], Awaitable[R]]], concurrency: int) -> list[R]:
    """Run ``jobs`` with at most ``concurrency`` in flight, each worker starting its next job as soon as
    its previous one ends. Returns: the results in job order."""
    if concurrency < 1:
        raise ValueError("concurrency must be >= 1")
    results: dict[int, R] = {}
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < len(jobs):
            i = next_index
            next_index += 1  # single-threaded loop: no lock needed between the check and the claim
            results[i] = await jobs[i]()

    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(jobs)))))
    return [results[i] for i in range(len(jobs))]


async def open_loop(
    offsets_s: Sequence[float],
    job: Callable[[int, int], Awaitable[R]],
    *,
    clock: Clock = time.perf_counter_ns,
    sleep: Sleep = asyncio.sleep,
) -> list[R]:
    """Start ``job(i, scheduled_ns)`` at ``start + offsets_s[i]`` for every i, without waiting for earlier
    jobs. A job the generator starts late still gets its *scheduled* time, so the delay is counted.

    Returns: the results in arrival order, once every job has finished.
    """
    t0 = clock()
    tasks: list[asyncio.Task[R]] = []
    for i, offset in enumerate(offsets_s):
        due = t0 + round(offset * 1e9)
        late = clock() >= due
        while (remaining_ns := due - clock()) > 0:  # uvloop's timers (1 ms ticks) may wake a little early
            await sleep(remaining_ns / 1e9)
        tasks.append(asyncio.ensure_future(job(i, due)))
        if late:
            await asyncio.sleep(0)  # behind schedule: still let the new arrival start before the next one
    return list(await asyncio.gather(*tasks))


def chunk_plan(cells: Sequence[Cell], *, counterbalance: bool = False) -> list[tuple[int, Cell, list[int], bool]]:
    """The run order: round 0 holds every cell's warm-up, then rounds 1..R each run a slice of every
    cell's measured rollouts, cells in the same order each round, or with ``counterbalance`` in reverse order
    every second round (ABBA: over an even number of rounds each cell runs as often before a neighbour as
    after it, so what the machine does as a round goes on does not favour the cells listed first).
    Items: (round, cell, indices, warmup)."""
    per_cell: list[list[tuple[int, Cell, list[int], bool]]] = []
    for c in cells:
        sc, chunks = c.scenario, []
        if sc.warmup:
            chunks.append((0, c, list(range(sc.warmup)), True))
        start = sc.warmup
        for r, n in enumerate(split_rounds(sc.rollouts, sc.rounds), 1):
            chunks.append((r, c, list(range(start, start + n)), False))
            start += n
        per_cell.append(chunks)
    position = {id(c): i for i, c in enumerate(cells)}

    def order(ch: tuple[int, Cell, list[int], bool]) -> tuple[int, int]:
        pos = position[id(ch[1])]
        return ch[0], (-pos if counterbalance and ch[0] % 2 == 0 else pos)

    return sorted((ch for chunks in per_cell for ch in chunks), key=order)
