"""Agent tools, loops and memory with a scripted chat model (no weights needed)."""

from __future__ import annotations

import enum
import json
import time
from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

from lmkit.agent.calculator import calculate, calculator_tool
from lmkit.agent.function_calling import FunctionCallingAgent
from lmkit.agent.memory import BufferMemory, SummaryMemory, WindowMemory
from lmkit.agent.react import ReActAgent, parse_react
from lmkit.agent.tools import Tool, ToolError, Toolbox, tool
from lmkit.errors import ConfigError


@dataclass
class Reply:
    content: str | None = ""
    tool_calls: list = field(default_factory=list)
    finish_reason: str = "stop"


class ScriptedChat:
    """Returns the scripted replies in order and records what it was asked."""

    def __init__(self, replies):
        self.replies = list(replies)
        self.calls = []

    def chat(self, messages, **kwargs):
        self.calls.append({"messages": [dict(m) for m in messages], **kwargs})
        reply = self.replies.pop(0) if self.replies else Reply("(script exhausted)")
        return reply(messages) if callable(reply) else reply


def call(name, args, id_="c1"):
    return {"id": id_, "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}


class Unit(enum.Enum):
    C = "celsius"
    F = "fahrenheit"


def weather(city: str, unit: Unit = Unit.C, days: Optional[int] = None) -> dict:
    """Get the weather forecast for a city.

    Args:
        city: the city name, e.g. Paris
        unit: temperature unit
        days: how many days
            (at most 7)
    """
    return {"city": city, "unit": unit.value, "days": days}


def test_schema_from_signature_and_docstring():
    t = Tool.from_function(weather)
    assert t.description == "Get the weather forecast for a city."
    props = t.parameters["properties"]
    assert props["city"] == {"type": "string", "description": "the city name, e.g. Paris"}
    assert props["unit"]["enum"] == ["celsius", "fahrenheit"]
    assert props["days"]["type"] == "integer" and props["days"]["description"] == "how many days (at most 7)"
    assert t.parameters["required"] == ["city"]
    schema = t.openai_schema()
    assert schema["type"] == "function" and schema["function"]["name"] == "weather"
    assert json.loads(t({"city": "Paris", "unit": "fahrenheit"})) == {"city": "Paris", "unit": "fahrenheit",
                                                                      "days": None}

    def f(xs: list[float], mode: Literal["a", "b"], flags: dict, ok: bool = True) -> str:
        """F."""
        return "ok"

    p = Tool.from_function(f).parameters
    assert p["properties"]["xs"] == {"type": "array", "items": {"type": "number"}}
    assert p["properties"]["mode"] == {"enum": ["a", "b"], "type": "string"}
    assert p["properties"]["flags"] == {"type": "object"}
    assert p["properties"]["ok"] == {"type": "boolean", "default": True}


def test_bad_arguments_come_back_as_errors_not_exceptions():
    t = Tool.from_function(weather)
    assert t("not json").startswith("Error: arguments for weather are not valid JSON")
    assert "missing required argument(s) ['city']" in t({})
    assert "no argument(s) ['town']" in t({"city": "x", "town": "y"})
    assert "must be string" in t({"city": 3})
    assert "must be one of" in t({"city": "x", "unit": "kelvin"})
    assert "must be integer, got a boolean" in t({"city": "x", "days": True})

    def boom(x: int) -> int:
        """Fails."""
        raise RuntimeError("disk on fire")

    assert Tool.from_function(boom)({"x": 1}) == "Error: tool boom failed: RuntimeError: disk on fire"

    def slow(x: int) -> int:
        """Sleeps."""
        time.sleep(2)
        return x

    t0 = time.perf_counter()
    assert "timed out after 0.2 s" in Tool.from_function(slow, timeout=0.2)({"x": 1})
    assert time.perf_counter() - t0 < 1.5
    with pytest.raises(ConfigError, match="tool name"):
        Tool.from_function(slow, name="has space")
    with pytest.raises(ConfigError, match="no JSON schema"):
        Tool.from_function(_typed_with(object))
    untyped = Tool.from_function(_untyped)
    assert untyped.parameters["properties"] == {"x": {}} and untyped({"x": [1]}) == "[1]"
    with pytest.raises(ConfigError, match="two tools"):
        Toolbox([weather, weather])
    assert "no tool named 'nope'" in Toolbox([weather]).call("nope", {})


def _untyped(x):
    """Echo."""
    return str(x)


def _typed_with(kind):
    def g(x) -> str:
        """G."""
        return ""
    g.__annotations__ = {"x": kind, "return": str}
    return g


def test_calculator_is_safe_and_correct():
    assert calculate("(3 + 4) * 2") == "14"
    assert calculate("2 ** 10 - 1") == "1023"
    assert abs(float(calculate("sqrt(2) ** 2")) - 2) < 1e-12
    for bad in ["__import__('os').system('true')", "open('x')", "[1,2]", "2 ** 100000", "1 +"]:
        with pytest.raises(ToolError):
            calculate(bad)
    assert calculator_tool()({"expression": "1/0"}).startswith("Error: tool calculator failed: ZeroDivisionError")


def test_function_calling_loop_runs_tools_and_feeds_results_back():
    add_calls = []

    @tool
    def add(a: int, b: int) -> int:
        """Add two integers."""
        add_calls.append((a, b))
        return a + b

    chat = ScriptedChat([
        Reply(None, [call("add", {"a": 2, "b": 3}, "c1"), call("add", {"a": 10, "b": 1}, "c2")], "tool_calls"),
        Reply(None, [call("add", {"a": "x", "b": 1}, "c3")], "tool_calls"),  # bad argument type
        Reply("2+3=5 and 10+1=11"),
    ])
    agent = FunctionCallingAgent(chat, [add], system_prompt="be brief")
    result = agent.run("add things")
    assert result.answer == "2+3=5 and 10+1=11" and result.stop_reason == "answer"
    assert add_calls == [(2, 3), (10, 1)]
    assert [s.observation for s in result.steps][:2] == ["5", "11"]
    assert "must be integer" in result.steps[2].observation
    # the second request carried the tool results, linked by id
    second = chat.calls[1]["messages"]
    assert second[0] == {"role": "system", "content": "be brief"}
    tool_msgs = [m for m in second if m["role"] == "tool"]
    assert [(m["tool_call_id"], m["content"]) for m in tool_msgs] == [("c1", "5"), ("c2", "11")]
    assert chat.calls[0]["tools"][0]["function"]["name"] == "add"
    # memory keeps the exchange for the next run
    assert agent.memory.messages() == [{"role": "user", "content": "add things"},
                                       {"role": "assistant", "content": "2+3=5 and 10+1=11"}]


def test_runaway_loops_are_stopped():
    looping = ScriptedChat([Reply(None, [call("calculator", {"expression": f"{i}+1"})]) for i in range(50)])
    result = FunctionCallingAgent(looping, [calculator_tool()], max_steps=4).run("go")
    assert result.stop_reason == "max_steps" and len(result.steps) == 4 and len(looping.calls) == 4

    same = ScriptedChat([Reply(None, [call("calculator", {"expression": "1+1"})]) for _ in range(50)])
    result = FunctionCallingAgent(same, [calculator_tool()], max_steps=20, max_repeats=3).run("go")
    assert result.stop_reason == "repeated_call" and len(same.calls) == 3


def test_react_parsing_and_loop():
    assert parse_react(" I should add.\nAction: calculator\nAction Input: {\"expression\": \"2+2\"}") == \
        ("calculator", {"expression": "2+2"})
    assert parse_react("Action: search\nAction Input: capital of France") == ("search", "capital of France")
    assert parse_react(" I know it.\nFinal Answer: Paris") == "Paris"
    assert parse_react("I am confused") is None
    assert parse_react("Action: a\nAction Input: {}\nFinal Answer: x") is None

    chat = ScriptedChat([
        Reply(" I need to compute.\nAction: calculator\nAction Input: 6 * 7"),
        Reply(" hmm, no format here"),
        Reply(" I now know the final answer\nFinal Answer: 42"),
    ])
    result = ReActAgent(chat, [calculator_tool()]).run("What is 6 times 7?")
    assert result.answer == "42" and result.stop_reason == "answer"
    assert result.steps[0].tool == "calculator" and result.steps[0].observation == "42"
    assert result.steps[1].tool == "_invalid_format"
    last_prompt = chat.calls[-1]["messages"][-1]["content"]
    assert "Question: What is 6 times 7?" in last_prompt
    assert "Observation: 42\nThought:" in last_prompt and "Invalid format" in last_prompt
    assert chat.calls[0]["stop"][0] == "\nObservation:"
    with pytest.raises(ConfigError, match="placeholder"):
        ReActAgent(chat, [calculator_tool()], prompt="no slots")


def test_memories():
    ex = [{"role": "user", "content": f"q{i}"} if j == 0 else {"role": "assistant", "content": f"a{i}"}
          for i in range(4) for j in range(2)]
    buf, win = BufferMemory(), WindowMemory(k=2)
    for m in ex:
        buf.add(m)
        win.add(m)
    assert buf.messages() == ex
    assert [m["content"] for m in win.messages()] == ["q2", "a2", "q3", "a3"]
    with pytest.raises(ConfigError):
        WindowMemory(k=0)
    with pytest.raises(ConfigError):
        buf.add({"role": "wizard", "content": "x"})

    summarizer = ScriptedChat([lambda msgs: Reply("S1: " + msgs[-1]["content"].split("conversation:\n")[1]
                                                  .split("\n\nNew summary")[0].replace("\n", " | ")),
                               Reply("S2")])
    mem = SummaryMemory(summarizer, keep_last=1)
    for m in ex:
        mem.add(m)
    # q0/a0 and q1/a1 were folded into the summary in two calls; q2 onwards stay verbatim
    assert len(summarizer.calls) == 2
    assert "user: q0\nassistant: a0" in summarizer.calls[0]["messages"][0]["content"]
    assert "Current summary:\nS1: user: q0 | assistant: a0" in summarizer.calls[1]["messages"][0]["content"]
    msgs = mem.messages()
    assert msgs[0] == {"role": "system", "content": "Summary of the earlier conversation: S2"}
    assert [m["content"] for m in msgs[1:]] == ["q2", "a2", "q3", "a3"]


def test_retrieval_tool_formats_numbered_hits_with_sources():
    from lmkit.agent.retrieval_tool import retrieval_tool

    class Retriever:
        def retrieve(self, query, k):
            docs = [{"text": "Paris is the capital of France.", "metadata": {"source": "fr.md"}},
                    {"text": "Berlin is the capital of Germany.", "metadata": {"source": "de.md"}}]
            return [d for d in docs if any(w in d["text"].lower() for w in query.lower().split())][:k]

    t = retrieval_tool(Retriever(), k=1)
    assert t.parameters["required"] == ["query"]
    assert t({"query": "capital"}) == "[1] (fr.md) Paris is the capital of France."
    assert t({"query": "tokyo"}) == "No matching passages."
    chat = ScriptedChat([Reply(None, [call("search_documents", {"query": "germany"})]),
                         Reply("Berlin [1]")])
    result = FunctionCallingAgent(chat, [retrieval_tool(Retriever())]).run("Capital of Germany?")
    assert result.answer == "Berlin [1]" and "(de.md) Berlin" in result.steps[0].observation
    with pytest.raises(ConfigError):
        retrieval_tool(object())


def test_agent_cli_with_a_user_tool_against_a_missing_server(tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "lmkit", "agent", "hi", "--base-url", "http://127.0.0.1:9/v1"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "Traceback" not in r.stderr and "Error" in r.stderr
    r = subprocess.run([sys.executable, "-m", "lmkit", "agent", "hi", "--base-url", "http://x/v1", "--tool", "nope"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "module:function" in r.stderr


def test_retrieval_tool_over_a_real_rag_index(tmp_path):
    from lmkit.agent.retrieval_tool import retrieval_tool
    from lmkit.rag.document import Document
    from lmkit.rag.embedder import EncoderEmbedder
    from lmkit.rag.index import RagIndex

    idx = RagIndex.create(tmp_path / "idx", EncoderEmbedder(progress=False))
    idx.add_documents([
        Document("HNSW is a graph index for approximate nearest neighbour search.", {"source": "ann.md"}),
        Document("BM25 ranks documents by term frequency and inverse document frequency.", {"source": "bm25.md"}),
        Document("LoRA adds trainable low-rank matrices to frozen weights.", {"source": "lora.md"}),
    ])
    idx.save()
    t = retrieval_tool(RagIndex.open(tmp_path / "idx"), k=1)
    assert t({"query": "approximate nearest neighbour graph"}).startswith("[1] (ann.md) HNSW")
    assert t({"query": "low-rank adapters"}).startswith("[1] (lora.md) LoRA")
