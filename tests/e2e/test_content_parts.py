"""Images and files in input messages, through the official SDK (HTTPS, and WebSocket mode through its
``responses.connect()``) and every transport's raw path: what they cost in input tokens, and that a malformed
part is refused in the Responses error shape naming its member (docs/guides/limits.md, Images and files)."""

from __future__ import annotations

import base64
from typing import Any, cast

import openai
import pytest

from clients.base import TurnRecorder
from servers.base import RunningServer
from tests.conftest import TIMEOUT_FACTOR
from turnbench.schema import FILE_TOKENS, IMAGE_TOKENS

pytestmark = pytest.mark.timeout(120 * TIMEOUT_FACTOR)

PNG = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n pixels the sim never reads").decode()
META = {"tool_calls": "0", "answer_tokens": "4"}
TERMINAL = ("response.completed", "response.failed", "response.incomplete", "error")


def ask(*parts: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "input_text", "text": "What is in this picture?"}, *parts]}]


def sdk(server: RunningServer) -> openai.AsyncOpenAI:
    assert server.tls is not None
    http = openai.DefaultAsyncHttpxClient(verify=server.tls.client_ssl_context())
    return openai.AsyncOpenAI(api_key="sk-test", base_url=server.url, http_client=http, max_retries=0)


async def test_the_sdk_sends_images_and_files_over_https(serve: Any) -> None:
    server = await serve("https")
    async with sdk(server) as client:
        plain = await client.responses.create(model="m", input=cast(Any, ask()), metadata=META)
        assert plain.usage is not None
        base = plain.usage.input_tokens
        for detail in ("low", "high", "auto"):
            image = {"type": "input_image", "image_url": PNG, "detail": detail}
            seen = await client.responses.create(model="m", input=cast(Any, ask(image)), metadata=META)
            assert seen.status == "completed" and seen.output_text and seen.usage is not None
            assert seen.usage.input_tokens == base + IMAGE_TOKENS[detail]
            counted = await client.responses.input_tokens.count(model="m", input=cast(Any, ask(image)))
            assert counted.object == "response.input_tokens" and counted.input_tokens == seen.usage.input_tokens
        both = ask(
            {"type": "input_image", "image_url": "https://example.com/cat.png", "detail": "low"},
            {"type": "input_file", "file_id": "file-abc123"},
        )
        stored = await client.responses.create(model="m", input=cast(Any, both), metadata=META, store=True)
        assert stored.usage is not None and stored.usage.input_tokens == base + IMAGE_TOKENS["low"] + FILE_TOKENS
        listed = await client.responses.input_items.list(stored.id, order="asc")
        kinds = [p.type for p in cast(Any, listed.data[0]).content]
        assert kinds == ["input_text", "input_image", "input_file"]

        with pytest.raises(openai.BadRequestError) as err:
            await client.responses.create(model="m", input=cast(Any, ask({"type": "input_image", "detail": "low"})))
        assert err.value.code == "missing_required_parameter"
        assert cast(Any, err.value.body)["param"] == "input[0].content[1].image_url"


async def test_the_sdk_sends_an_image_over_websocket_mode(serve: Any) -> None:
    server = await serve("https")
    assert server.tls is not None
    options = cast(Any, {"ssl": server.tls.client_ssl_context()})
    async with sdk(server) as client, client.responses.connect(websocket_connection_options=options) as conn:
        totals = []
        for parts in ((), ({"type": "input_image", "image_url": PNG, "detail": "low"},)):
            await conn.response.create(model="m", input=cast(Any, ask(*parts)), store=False, metadata=META)
            event = await conn.recv()
            while event.type not in TERMINAL:
                event = await conn.recv()
            assert event.type == "response.completed", event
            totals.append(cast(Any, event).response.usage.input_tokens)
        assert totals[1] == totals[0] + IMAGE_TOKENS["low"]
        await conn.response.create(
            model="m", input=cast(Any, ask({"type": "input_image", "image_url": "ftp://x/y.png"})), store=False
        )
        event = await conn.recv()
        assert event.type == "error"
        assert cast(Any, event).error.param == "input[0].content[1].image_url"
        assert cast(Any, event).error.code == "invalid_value"


@pytest.mark.parametrize(
    ("transport", "options"),
    [
        pytest.param("https", {}, id="https"),
        pytest.param("ws", {}, id="ws"),
        pytest.param("grpc", {"codec": "typed"}, id="grpc-typed"),
        pytest.param("grpc", {"codec": "json"}, id="grpc-json"),
    ],
)
async def test_every_transport_carries_parts_and_refuses_bad_ones(
    serve: Any, connect: Any, transport: str, options: dict[str, Any]
) -> None:
    server = await serve(transport)
    client = await connect(transport, server, **options)

    async def create(body: dict[str, Any]) -> tuple[dict[str, Any], Any]:
        rec = TurnRecorder(transport, "full")
        rec.scheduled()
        response = await client.create({"model": "m", "store": False, "metadata": META, **body}, recorder=rec)
        return response, rec.result()

    plain, result = await create({"input": ask()})
    assert result.success, result.error
    image = {"type": "input_image", "file_id": "file-1", "detail": "high"}
    seen, result = await create({"input": ask(image)})
    assert result.success and seen["usage"]["input_tokens"] == plain["usage"]["input_tokens"] + IMAGE_TOKENS["high"]
    _, result = await create({"input": ask({"type": "input_file", "file_data": "not base64!"})})
    assert not result.success and result.error_code == "invalid_value"
    assert "input[0].content[1].file_data" in (result.error or "")
