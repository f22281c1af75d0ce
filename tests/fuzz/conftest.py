"""The fuzz suite's profiles and fixtures.

``TURNBENCH_FUZZ`` picks the profile: ``small`` (the default, what ``make test`` runs: a few hundred cases per
surface) or ``full`` (``make soak``: thousands per surface). Both are derandomized (the same cases on every run,
so a failure reproduces) and keep no example database; a failure prints the minimal input hypothesis shrank it
to, and what came back (hypothesis ``note``).

Each module starts its server once, on an event loop of its own (:func:`runner`): hypothesis calls a plain
function per case, which runs that case's coroutine on the loop the server lives on.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from servers.base import RunningServer, start_server
from tests.conftest import TIMEOUT_FACTOR
from turnbench.service import ResponsesService
from turnbench.settings import Settings
from turnbench.tls import TLSMaterial

PROFILE = os.environ.get("TURNBENCH_FUZZ", "small")
if PROFILE not in ("small", "full"):
    raise ValueError(f"TURNBENCH_FUZZ={PROFILE!r}: expected 'small' or 'full'")

CASES: dict[str, tuple[int, int]] = {
    "https": (150, 3000),
    "ws": (150, 3000),
    "grpc-typed": (150, 3000),
    "grpc-json": (120, 3000),
    "grpc-unary": (120, 3000),
    "sse": (400, 6000),
    "recorder": (400, 6000),
}
"""Cases per test, (small, full). A test named after a surface runs that many."""

TEST_TIMEOUT_S = (150 if PROFILE == "small" else 3600) * TIMEOUT_FACTOR

QUIET = pytest.mark.filterwarnings("ignore:Generating overly large repr:hypothesis.errors.HypothesisWarning")
"""A large failing input is still worth printing (the suite turns warnings into errors)."""

FUZZ_SERVER: dict[str, Any] = {
    "profile": "fast",  # ~1000 tok/s: the keep lane's 3,000 tokens take ~3 s, a fuzzed answer a few ms
    "tls": True,
    "usage_db": ":memory:",
    "answer_tokens": 3,
    "tool_calls": 1,
    "arg_words": 2,
    "grace_s": 1.0,
}


def fuzz(surface: str) -> settings:
    """The hypothesis settings of a fuzz test of ``surface`` in the selected profile."""
    small, full = CASES[surface]
    return settings(
        max_examples=small if PROFILE == "small" else full,
        derandomize=True,
        database=None,
        deadline=None,
        print_blob=False,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
            HealthCheck.large_base_example,
            HealthCheck.function_scoped_fixture,
        ],
    )


@pytest.fixture(scope="module")
def runner() -> Iterator[asyncio.Runner]:
    """The event loop of one module: its server and its clients live on it."""
    with asyncio.Runner() as loop_runner:
        yield loop_runner


StartFn = Callable[..., RunningServer]


@pytest.fixture(scope="module")
def start(runner: asyncio.Runner, tls: TLSMaterial) -> Iterator[StartFn]:
    """``start("ws", **settings)`` → a server on 127.0.0.1 port 0 (TLS), stopped when the module ends."""
    started: list[RunningServer] = []

    async def _start_async(transport: str, overrides: dict[str, Any]) -> RunningServer:
        service = ResponsesService(Settings(**{**FUZZ_SERVER, **overrides}))
        try:
            return await start_server(transport, service.settings, service=service, tls=tls)
        except BaseException:
            service.close()
            raise

    def _start(transport: str, **overrides: Any) -> RunningServer:
        server = runner.run(_start_async(transport, overrides))
        started.append(server)
        return server

    yield _start
    for server in started:
        runner.run(server.stop())
        server.service.close()
