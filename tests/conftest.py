"""Shared fixtures: TLS material, servers on port 0 (stopped by the test), clients for them.

Timeouts scale with ``TURNBENCH_TEST_TIMEOUT_FACTOR`` (websockets' ``MS`` habit) for slow machines.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from clients.base import ClientConfig, ResponsesClient, make_client
from servers.base import RunningServer, start_server
from turnbench.service import ResponsesService
from turnbench.settings import Settings
from turnbench.tls import TLSMaterial, generate_tls

TIMEOUT_FACTOR = float(os.environ.get("TURNBENCH_TEST_TIMEOUT_FACTOR", "1"))


@pytest.fixture(scope="session")
def tls() -> TLSMaterial:
    return generate_tls()


def client_config(server: RunningServer, **options: Any) -> ClientConfig:
    """A client config for ``server``: its URL, its CA, no API key unless given."""
    api_key = options.pop("api_key", server.service.settings.api_key)
    ssl_ctx = server.tls.client_ssl_context() if server.tls else None
    ca = server.tls.ca_pem_bytes if server.tls else None
    return ClientConfig(url=server.url, api_key=api_key, ssl_context=ssl_ctx, ca_pem=ca, options=options)


ServeFn = Callable[..., Awaitable[RunningServer]]


@pytest.fixture
async def serve(tls: TLSMaterial) -> AsyncIterator[ServeFn]:
    """``await serve("ws", profile="instant", ...)`` → a running server, stopped at teardown. A transport name
    of the table (``https-h2``) starts its server with the settings that transport needs. The fixture owns the
    service and closes it at teardown, so a test may still read its usage log after ``server.stop()``."""
    started: list[RunningServer] = []

    async def _serve(transport: str, **overrides: Any) -> RunningServer:
        settings = Settings(**{"profile": "instant", "tls": True, "usage_db": ":memory:", **overrides})
        service = ResponsesService(settings)
        try:
            server = await start_server(transport, settings, service=service, tls=tls if settings.tls else None)
        except BaseException:
            service.close()
            raise
        started.append(server)
        return server

    yield _serve
    for server in started:
        await server.stop()
        server.service.close()


ClientFn = Callable[..., Awaitable[ResponsesClient]]


@pytest.fixture
async def connect() -> AsyncIterator[ClientFn]:
    """``await connect("ws", server, **options)`` → a connected client, closed at teardown."""
    opened: list[ResponsesClient] = []

    async def _connect(transport: str, server: RunningServer, **options: Any) -> ResponsesClient:
        client = make_client(transport, client_config(server, **options))
        opened.append(client)
        await client.connect()
        return client

    yield _connect
    for client in opened:
        await client.close()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A real ``redis-server`` on a free loopback port for the session, stopped after it; ``redis://…/0``.
    Skipped where redis-server is not installed, except in CI (``CI=true``), where it must be."""
    import shutil

    from loadtests.execution.procs import ServerError, start_redis_server

    exe = shutil.which("redis-server")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed: .ci/run installs Debian's package")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    try:
        proc, url = start_redis_server(exe, tmp_path_factory.mktemp("redis"))
    except ServerError as exc:
        pytest.fail(str(exc))
    yield url
    proc.terminate()
    proc.wait(timeout=10)
