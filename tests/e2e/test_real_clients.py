"""The official ``openai`` SDK and ``openai-agents`` as their users call them, against the real servers.

Defaults first: ``Runner.run(agent, input)`` with nothing configured but the client (HTTP) or the provider
(the Agents SDK's WebSocket transport), ``client.responses.create/parse/connect`` as documented. TLS is on: the
SDK's HTTP client gets the server's CA, and the Agents SDK's WebSocket transport, which takes no SSL options,
finds it the way a user's would: ``SSL_CERT_FILE``.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest
from agents import Agent, ModelSettings, RunConfig, Runner, function_tool, set_tracing_disabled
from agents.models.openai_provider import OpenAIProvider
from openai.resources.responses import AsyncResponses
from pydantic import BaseModel

from servers.base import RunningServer
from tests.conftest import TIMEOUT_FACTOR

pytestmark = pytest.mark.timeout(120 * TIMEOUT_FACTOR)
set_tracing_disabled(True)  # no trace export to the real API from a test


class Weather(BaseModel):
    city: str
    temperature_c: float
    conditions: list[str]
    wind: Wind | None = None


class Wind(BaseModel):
    speed_kmh: int
    direction: str


Weather.model_rebuild()


@function_tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny, 21 C in {city}"


TOOLS = [
    {
        "type": "function",
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
    {
        "type": "function",
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}},
            "required": ["zone"],
        },
    },
]


def sdk(server: RunningServer) -> openai.AsyncOpenAI:
    assert server.tls is not None
    return openai.AsyncOpenAI(
        api_key="sk-test",
        base_url=server.url,
        max_retries=0,
        http_client=openai.DefaultAsyncHttpxClient(verify=server.tls.client_ssl_context()),
    )


@pytest.fixture
async def https(serve: Any) -> RunningServer:
    server: RunningServer = await serve("https")
    return server


@pytest.fixture
async def client(https: RunningServer) -> AsyncIterator[openai.AsyncOpenAI]:
    async with sdk(https) as c:
        yield c


@pytest.fixture
def ca_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Write a server's CA where ``SSL_CERT_FILE`` points, as a user with a private CA does."""

    def trust(server: RunningServer) -> None:
        assert server.tls is not None
        path = tmp_path / f"ca-{server.port}.pem"
        path.write_bytes(server.tls.ca_pem_bytes)
        monkeypatch.setenv("SSL_CERT_FILE", str(path))

    return trust


# ---------------------------------------------------------------------------------------------- parameters

CLIENT_ONLY = {"self", "extra_headers", "extra_query", "extra_body", "timeout"}
SAMPLES: dict[str, Any] = {
    "model": "m",
    "input": "hi",
    "instructions": "Be brief.",
    "metadata": {"tool_calls": "0"},
    "max_output_tokens": 1024,
    "max_tool_calls": 3,
    "parallel_tool_calls": True,
    "previous_response_id": None,
    "store": False,
    "stream": False,
    "stream_options": None,
    "temperature": 0.5,
    "top_p": 1.0,
    "top_logprobs": 0,
    "text": {"format": {"type": "text"}},
    "tool_choice": "auto",
    "tools": [],
    "truncation": "disabled",
    "user": "u-1",
    "safety_identifier": "u-1",
    "service_tier": "auto",
    "reasoning": {"effort": "low"},
    "include": [],
    "prompt": None,
    "prompt_cache_key": "k-1",
    "prompt_cache_retention": "24h",
    "prompt_cache_options": None,
    "conversation": None,
    "context_management": None,
    "background": False,
    "background_options": None,
    "image": None,
    "moderation": None,
    "access_programs": None,
}
"""A value for every parameter of ``responses.create``: a parameter a new SDK adds fails the test below."""


async def test_every_parameter_of_the_installed_sdk_is_accepted(client: openai.AsyncOpenAI) -> None:
    params = set(inspect.signature(AsyncResponses.create).parameters) - CLIENT_ONLY
    missing = sorted(params - set(SAMPLES))
    assert not missing, f"responses.create has new parameters {missing}: accept them in ResponseCreate, add here"
    response = await client.responses.create(**SAMPLES)
    assert response.status == "completed" and response.output_text


# ---------------------------------------------------------------------------------------------- agents SDK


async def test_a_default_agents_sdk_run_with_a_function_tool_completes(client: openai.AsyncOpenAI) -> None:
    from agents import set_default_openai_client

    set_default_openai_client(client, use_for_tracing=False)
    agent = Agent(name="weather", instructions="Answer with the weather.", tools=[get_weather], model="m")
    result = await Runner.run(agent, "What is the weather in Paris?")
    assert isinstance(result.final_output, str) and result.final_output
    kinds = [item.type for item in result.new_items]
    assert "tool_call_item" in kinds and "tool_call_output_item" in kinds  # the tool ran, then the answer
    assert kinds[-1] == "message_output_item"


@pytest.mark.parametrize("server_name", ["ws", "https"])
async def test_the_agents_sdk_websocket_transport_runs_an_agent(serve: Any, ca_file: Any, server_name: str) -> None:
    server = await serve(server_name)
    ca_file(server)
    url = server.url.replace("wss://", "https://", 1)
    async with openai.AsyncOpenAI(
        api_key="sk-test", base_url=url, websocket_base_url=url.replace("https://", "wss://")
    ) as client:
        provider = OpenAIProvider(openai_client=client, use_responses_websocket=True)
        try:
            agent = Agent(name="weather", tools=[get_weather], model="m")
            result = await Runner.run(agent, "Weather in Oslo?", run_config=RunConfig(model_provider=provider))
            assert result.final_output and [i.type for i in result.new_items][-1] == "message_output_item"
            typed = await Runner.run(
                Agent(name="typed", output_type=Weather, model="m"),
                "Weather in Oslo?",
                run_config=RunConfig(model_provider=provider),
            )
            assert isinstance(typed.final_output, Weather)
        finally:
            await provider.aclose()
    rows = server.service.usage.rows()
    assert rows and {r["transport"] for r in rows} == {"ws"}  # over WebSocket mode, not HTTP


async def test_agents_sdk_output_type_parses(client: openai.AsyncOpenAI) -> None:
    provider = OpenAIProvider(openai_client=client)
    result = await Runner.run(
        Agent(name="typed", output_type=Weather, model="m"),
        "Weather in Oslo?",
        run_config=RunConfig(model_provider=provider),
    )
    assert isinstance(result.final_output, Weather) and result.final_output.conditions


async def test_agents_sdk_model_settings_the_sdk_exposes_are_accepted(client: openai.AsyncOpenAI) -> None:
    settings = ModelSettings(
        temperature=0.2,
        top_p=0.9,
        max_tokens=256,
        prompt_cache_retention="24h",
        metadata={"tool_calls": "2"},
        tool_choice="auto",
        truncation="auto",
    )
    agent = Agent(name="w", tools=[get_weather], model="m", model_settings=settings)
    result = await Runner.run(
        agent, "Weather?", run_config=RunConfig(model_provider=OpenAIProvider(openai_client=client))
    )
    assert sum(i.type == "tool_call_item" for i in result.new_items) == 2  # metadata.tool_calls is honoured


# ---------------------------------------------------------------------------------------------- official SDK


async def test_responses_parse_with_a_pydantic_text_format(client: openai.AsyncOpenAI) -> None:
    parsed = await client.responses.parse(model="m", input="Weather in Oslo?", text_format=Weather)
    assert isinstance(parsed.output_parsed, Weather) and parsed.output_parsed.conditions
    plain = await client.responses.create(model="m", input="x", text={"format": {"type": "json_object"}})
    assert isinstance(json.loads(plain.output_text), dict)


@pytest.mark.parametrize(
    ("tool_choice", "metadata", "expect"),
    [
        ("none", {"tool_calls": "5"}, "message"),
        ("auto", {"tool_calls": "1"}, "function_call"),
        ("auto", {"tool_calls": "0"}, "message"),
        ("required", {"tool_calls": "0"}, "function_call"),
        ({"type": "function", "name": "get_time"}, {"tool_calls": "0"}, "get_time"),
        (
            {"type": "allowed_tools", "mode": "required", "tools": [{"type": "function", "name": "get_weather"}]},
            {"tool_calls": "0"},
            "get_weather",
        ),
    ],
)
async def test_tool_choice_variants_behave_as_documented(
    client: openai.AsyncOpenAI, tool_choice: Any, metadata: dict[str, str], expect: str
) -> None:
    for seed in range(4):  # whatever the scripted model would pick
        r = await client.responses.create(
            model="m", input="go", tools=TOOLS, tool_choice=tool_choice, metadata={**metadata, "seed": str(seed)}
        )
        out = r.output[0]
        if expect == "message":
            assert out.type == "message"
        else:
            assert out.type == "function_call"
            assert expect == "function_call" or out.name == expect


@pytest.mark.parametrize(
    ("kwargs", "param", "code"),
    [
        ({"tool_choice": {"type": "function", "name": "nope"}, "tools": TOOLS}, "tool_choice", "invalid_value"),
        ({"tool_choice": "required"}, "tool_choice", "invalid_value"),
        ({"tool_choice": "sometimes", "tools": TOOLS}, "tool_choice", "invalid_value"),
        ({"metadata": {"tool_calls": "abc"}}, "metadata.tool_calls", "invalid_value"),
        ({"metadata": {"tool_calls": "1e9"}}, "metadata.tool_calls", "invalid_value"),
        ({"metadata": {"answer_tokens": "99999999999999999999999"}}, "metadata.answer_tokens", "invalid_value"),
        ({"metadata": {"seed": "-1"}}, "metadata.seed", "invalid_value"),
        ({"max_output_tokens": 5}, "max_output_tokens", "integer_below_min_value"),
        (
            {"input": [{"type": "function_call_output", "call_id": "call_nobody", "output": "42"}]},
            "input[0].call_id",
            "invalid_request_error",
        ),
        ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema", "invalid_value"),
        ({"background": True, "store": False}, "store", "invalid_value"),
    ],
)
async def test_bad_values_are_a_400_with_code_and_param(
    client: openai.AsyncOpenAI, kwargs: dict[str, Any], param: str, code: str
) -> None:
    body = {"model": "m", "input": "hi", **kwargs}
    with pytest.raises(openai.BadRequestError) as info:
        await client.responses.create(**body)
    err = info.value.body
    assert isinstance(err, dict) and (err["code"], err["param"]) == (code, param), err
    assert (await client.responses.create(model="m", input="hi")).status == "completed"  # it keeps serving


async def test_retrieve_input_items_and_delete(client: openai.AsyncOpenAI) -> None:
    first = await client.responses.create(model="m", input="start", tools=TOOLS, metadata={"tool_calls": "1"})
    call = first.output[0]
    assert call.type == "function_call"
    second = await client.responses.create(
        model="m",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
    )
    assert (await client.responses.retrieve(second.id)).id == second.id
    page = await client.responses.input_items.list(second.id, order="asc")
    assert [i.type for i in page.data] == ["message", "function_call", "function_call_output"]
    assert all(i.id for i in page.data)
    newest = await client.responses.input_items.list(second.id, limit=1)  # desc by default, as the real API
    assert [i.type for i in newest.data] == ["function_call_output"] and newest.has_more
    await client.responses.delete(second.id)
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(second.id)
    with pytest.raises(openai.NotFoundError):
        await client.responses.delete(second.id)


async def test_models_list_and_retrieve(client: openai.AsyncOpenAI) -> None:
    names = [m.id async for m in await client.models.list()]
    assert "turnbench" in names
    assert (await client.models.retrieve("gpt-anything")).id == "gpt-anything"  # any model name is served


async def test_background_response_runs_on_and_is_retrieved(serve: Any) -> None:
    server = await serve("https", profile="frontier")  # ~65 tok/s
    async with sdk(server) as c:
        queued = await c.responses.create(
            model="m", input="x", background=True, metadata={"tool_calls": "0", "answer_tokens": "20"}
        )
        assert queued.status == "queued" and queued.background
        for _ in range(int(600 * TIMEOUT_FACTOR)):
            done = await c.responses.retrieve(queued.id)
            if done.status not in ("queued", "in_progress"):
                break
            await asyncio.sleep(0.05)
        assert done.status == "completed" and done.output_text
        assert (await c.responses.cancel(queued.id)).status == "completed"  # finished: returned as it is


async def test_background_response_is_cancelled(serve: Any) -> None:
    server = await serve("https", profile="frontier")
    async with sdk(server) as c:
        queued = await c.responses.create(
            model="m", input="x", background=True, metadata={"tool_calls": "0", "answer_tokens": "2000"}
        )  # ~30 s at 65 tok/s
        cancelled = await c.responses.cancel(queued.id)
        assert cancelled.status == "cancelled"
        assert (await c.responses.retrieve(queued.id)).status == "cancelled"
        with pytest.raises(openai.BadRequestError):  # a response not made in background cannot be
            plain = await c.responses.create(model="m", input="x")
            await c.responses.cancel(plain.id)


async def test_background_stream_survives_the_client_leaving(serve: Any) -> None:
    server = await serve("https", profile="frontier")
    async with sdk(server) as c:
        stream = await c.responses.create(
            model="m", input="x", background=True, stream=True, metadata={"tool_calls": "0", "answer_tokens": "30"}
        )
        response_id = None
        async for event in stream:
            if event.type == "response.created":
                response_id = event.response.id
            if event.type == "response.output_text.delta":
                break  # the client leaves mid-answer
        await stream.close()
        assert response_id is not None
        for _ in range(int(600 * TIMEOUT_FACTOR)):
            done = await c.responses.retrieve(response_id)
            if done.status not in ("queued", "in_progress"):
                break
            await asyncio.sleep(0.05)
        assert done.status == "completed"  # it ran to the end without anyone listening


async def test_background_is_refused_over_websocket_mode(serve: Any) -> None:
    server = await serve("ws")
    assert server.tls is not None
    async with openai.AsyncOpenAI(
        api_key="sk-test", base_url=server.url.replace("wss://", "https://"), websocket_base_url=server.url
    ) as c:
        async with c.responses.connect(websocket_connection_options={"ssl": server.tls.client_ssl_context()}) as conn:
            await conn.response.create(model="m", input="x", background=True)
            event = await conn.recv()
            assert event.type == "error" and event.error.param == "background"
            await conn.response.create(model="m", input="x", metadata={"tool_calls": "0"})
            async for event in conn:
                if event.type == "response.completed":
                    break


async def test_sdk_websocket_connection_with_tools_and_a_text_format(serve: Any) -> None:
    server = await serve("ws")
    assert server.tls is not None
    async with openai.AsyncOpenAI(
        api_key="sk-test", base_url=server.url.replace("wss://", "https://"), websocket_base_url=server.url
    ) as c:
        async with c.responses.connect(websocket_connection_options={"ssl": server.tls.client_ssl_context()}) as conn:
            await conn.response.create(model="m", input="go", tools=TOOLS, tool_choice="required", store=False)
            async for event in conn:
                if event.type == "response.completed":
                    call = event.response.output[0]
                    break
            assert call.type == "function_call"
            await conn.response.create(
                model="m",
                previous_response_id=event.response.id,
                store=False,
                input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
                text={
                    "format": {
                        "type": "json_schema",
                        "name": "weather",
                        "strict": True,
                        "schema": Weather.model_json_schema(),
                    }
                },
            )
            async for event in conn:
                if event.type == "response.completed":
                    break
            assert Weather.model_validate_json(event.response.output_text).city


@pytest.mark.parametrize(("server_name", "websocket"), [("https", False), ("https", True), ("ws", True)])
async def test_the_readme_agents_example_runs(serve: Any, ca_file: Any, server_name: str, websocket: bool) -> None:
    from loadtests.examples.agents_sdk import Forecast, main

    server = await serve(server_name)
    ca_file(server)  # the README sets SSL_CERT_FILE to the CA the server wrote
    text, forecast = await main(server.url.replace("wss://", "https://", 1), websocket=websocket)
    assert text and isinstance(forecast, Forecast)
