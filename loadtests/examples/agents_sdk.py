"""An OpenAI Agents SDK app pointed at turnbench: one function tool, then a typed answer.

Run it against a server started with ``turnbench serve https --port 8443 --ca-out /tmp/turnbench-ca.pem``::

    SSL_CERT_FILE=/tmp/turnbench-ca.pem python -m loadtests.examples.agents_sdk https://127.0.0.1:8443/v1
    SSL_CERT_FILE=/tmp/turnbench-ca.pem python -m loadtests.examples.agents_sdk https://127.0.0.1:8443/v1 --ws

``--ws`` uses the Agents SDK's WebSocket transport (WebSocket mode on the same port). The scripted model calls
the tool once (``turnbench serve --tool-calls N`` changes that), then answers; with ``output_type`` the answer
is a JSON instance of the schema, so the SDK hands back a ``Forecast``.
"""

from __future__ import annotations

import argparse
import asyncio

from agents import Agent, RunConfig, Runner, function_tool, set_tracing_disabled
from agents.models.openai_provider import OpenAIProvider
from openai import AsyncOpenAI
from pydantic import BaseModel


class Forecast(BaseModel):
    city: str
    temperature_c: float
    conditions: list[str]


@function_tool
def get_weather(city: str) -> str:
    """Today's weather in a city."""
    return f"sunny, 21 C in {city}"


async def main(base_url: str, *, websocket: bool = False, api_key: str = "sk-test") -> tuple[str, Forecast]:
    """Run the tool-using agent, then the typed one. Returns: (the first's answer, the second's forecast)."""
    set_tracing_disabled(True)  # traces would go to api.openai.com
    ws_url = base_url.replace("https://", "wss://").replace("http://", "ws://")
    async with AsyncOpenAI(api_key=api_key, base_url=base_url, websocket_base_url=ws_url) as client:
        provider = OpenAIProvider(openai_client=client, use_responses_websocket=websocket)
        config = RunConfig(model_provider=provider)
        try:
            helper = Agent(name="helper", instructions="Use the tool, then answer.", tools=[get_weather], model="m")
            answer = await Runner.run(helper, "What is the weather in Paris?", run_config=config)
            forecaster = Agent(name="forecaster", output_type=Forecast, model="m")
            typed = await Runner.run(forecaster, "Paris?", run_config=config)
        finally:
            await provider.aclose()  # its WebSocket connection, if it opened one
    return str(answer.final_output), typed.final_output


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="An Agents SDK app against a turnbench server.")
    parser.add_argument("base_url", help="the server's base URL, e.g. https://127.0.0.1:8443/v1")
    parser.add_argument("--ws", action="store_true", help="the Agents SDK's WebSocket transport")
    args = parser.parse_args()
    text, forecast = asyncio.run(main(args.base_url, websocket=args.ws))
    print(text)
    print(forecast)
