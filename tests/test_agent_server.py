"""The function-calling agent end to end: lmkit's OpenAI-compatible server, a real tool, HTTP.

The model is the serve tests' tiny chat model, overfitted to ask for `get_weather(city=Paris)`
and to answer from the tool's result, so the whole loop — tools sent as JSON schemas, the
server rendering them into the prompt, generation, the server parsing `<tool_call>` into
`tool_calls`, the agent running the Python tool and sending a `role: tool` message back, the
final answer — runs for real.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lmkit.agent.function_calling import FunctionCallingAgent
from lmkit.agent.tools import Tool
from lmkit.hub import load_pretrained
from lmkit.serve.app import create_app
from lmkit.serve.chat_model import LocalChatModel, OpenAIChatModel
from lmkit.serve.engine import Engine
from lmkit.tokenizers.loading import load_tokenizer
from test_serve_util import FINAL_REPLY, TOOL_QUESTION, TOOL_RESULT, WEATHER_TOOL, LiveServer, cached_chat_dir

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

KEY = "sk-agent"


def get_weather(city: str) -> dict:
    """Current weather of a city

    Args:
        city: the city
    """
    calls.append(city)
    return json.loads(TOOL_RESULT)


calls: list[str] = []


def weather_tool() -> Tool:
    t = Tool.from_function(get_weather)
    # the exact schema the model was trained with
    t.parameters = WEATHER_TOOL["function"]["parameters"]
    return t


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return cached_chat_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def server(model_dir):
    engine = Engine(load_pretrained(model_dir), load_tokenizer(model_dir), max_batch_size=2)
    with LiveServer(create_app(engine, model_name="tiny", api_keys=[KEY])) as live:
        yield live


def test_function_calling_agent_against_lmkit_server(server, model_dir):
    calls.clear()
    llm = OpenAIChatModel(server.url + "/v1", model="tiny", api_key=KEY)
    agent = FunctionCallingAgent(llm, [weather_tool()], max_steps=4, max_tokens=48)
    result = agent.run(TOOL_QUESTION[0]["content"])
    assert calls == ["Paris"]
    assert [s.tool for s in result.steps] == ["get_weather"]
    assert json.loads(result.steps[0].observation) == json.loads(TOOL_RESULT)
    assert result.stop_reason == "answer" and result.answer == FINAL_REPLY
    # the same agent over the same weights in-process gives the same run
    calls.clear()
    local = LocalChatModel.from_dir(model_dir)
    local_result = FunctionCallingAgent(local, [weather_tool()], max_steps=4, max_tokens=48).run(
        TOOL_QUESTION[0]["content"])
    assert calls == ["Paris"] and local_result.answer == result.answer


def test_failing_tool_and_runaway_loop_against_the_server(server):
    def get_weather(city: str) -> dict:  # noqa: F811 - same name, always fails
        """Current weather of a city"""
        raise ConnectionError("weather service down")

    failing = Tool.from_function(get_weather)
    failing.parameters = WEATHER_TOOL["function"]["parameters"]
    llm = OpenAIChatModel(server.url + "/v1", model="tiny", api_key=KEY)
    # the tiny model asks for the tool again whatever it is told: a runaway loop that must stop
    result = FunctionCallingAgent(llm, [failing], max_steps=3, max_tokens=48).run(TOOL_QUESTION[0]["content"])
    assert result.steps and all("weather service down" in s.observation for s in result.steps)
    assert result.stop_reason in ("max_steps", "repeated_call", "answer")
    assert len(result.steps) <= 3


def test_agent_cli_against_the_server(server):
    r = subprocess.run([sys.executable, "-m", "lmkit", "agent", "What is 6 * 7?", "--base-url", server.url + "/v1",
                        "--model", "tiny", "--api-key", KEY, "--max-steps", "2", "--max-tokens", "16", "--json"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["stop_reason"] in ("answer", "max_steps", "repeated_call") and isinstance(out["answer"], str)
    # no --model: the one model the server lists ("tiny"); no --max-tokens: the server sizes each reply
    r = subprocess.run([sys.executable, "-m", "lmkit", "agent", "What is 6 * 7?", "--base-url", server.url + "/v1",
                        "--api-key", KEY, "--max-steps", "1", "--json"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert isinstance(json.loads(r.stdout)["answer"], str)
    r = subprocess.run([sys.executable, "-m", "lmkit", "agent", "hi", "--base-url", server.url + "/v1",
                        "--api-key", "wrong"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "401" in r.stderr and "Traceback" not in r.stderr
