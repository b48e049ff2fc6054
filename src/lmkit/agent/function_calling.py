"""The OpenAI function-calling agent loop.

The model is given the tools' JSON schemas; each turn it either answers or asks for tool
calls. Calls are run, their results go back as `role: "tool"` messages, and the model is
asked again — until it answers, or a limit stops a runaway loop (max steps, the same call
repeated). Tool failures never end the run: the error text goes back to the model.

Works with any chat model that has `chat(messages, tools=..., ...)` returning an object with
`content`, `tool_calls` (OpenAI-shaped dicts) and `finish_reason` — lmkit's
`LocalChatModel`, or `OpenAIChatModel` talking to lmkit's server, vLLM or Ollama.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from lmkit.agent.memory import BufferMemory, Memory
from lmkit.agent.tools import Tool, Toolbox
from lmkit.errors import ConfigError


@dataclass
class AgentStep:
    """One tool call the agent made and what it got back."""

    tool: str
    arguments: Any
    observation: str
    thought: str = ""


@dataclass
class AgentResult:
    answer: str
    steps: list[AgentStep] = field(default_factory=list)
    stop_reason: str = "answer"  # answer | max_steps | repeated_call
    messages: list[dict[str, Any]] = field(default_factory=list)


def call_key(name: str, arguments: Any) -> str:
    """A tool call's identity (name + canonical JSON arguments), for spotting repeated calls."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return f"{name}:{arguments}"
    return f"{name}:{json.dumps(arguments, sort_keys=True, ensure_ascii=False)}"


class FunctionCallingAgent:
    """Answer a user message, calling tools through the model's native function calling."""

    def __init__(self, chat_model: Any, tools: list[Tool | Any] | Toolbox, *, memory: Memory | None = None,
                 system_prompt: str | None = None, max_steps: int = 8, max_repeats: int = 3,
                 max_tokens: int | None = 512, temperature: float = 0.0,
                 injection_detector: Any = None) -> None:
        if max_steps < 1:
            raise ConfigError(f"max_steps must be >= 1, got {max_steps}")
        if max_repeats < 1:
            raise ConfigError(f"max_repeats must be >= 1, got {max_repeats}")
        self.chat_model = chat_model
        self.toolbox = tools if isinstance(tools, Toolbox) else Toolbox(list(tools))
        if injection_detector is not None:  # tool results screened for prompt injection (tools.py)
            self.toolbox.injection_detector = injection_detector
        self.memory = memory if memory is not None else BufferMemory()
        self.system_prompt = system_prompt
        self.max_steps = max_steps
        self.max_repeats = max_repeats
        self.max_tokens = max_tokens
        self.temperature = temperature

    def run(self, user_input: str) -> AgentResult:
        head = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        messages = head + self.memory.messages() + [{"role": "user", "content": user_input}]
        steps: list[AgentStep] = []
        repeats: dict[str, int] = {}
        result = AgentResult(answer="", steps=steps, messages=messages)
        for _ in range(self.max_steps):
            reply = self.chat_model.chat(messages, tools=self.toolbox.schemas() or None,
                                         max_tokens=self.max_tokens, temperature=self.temperature)
            calls = list(reply.tool_calls or [])
            if not calls:
                result.answer = reply.content or ""
                messages.append({"role": "assistant", "content": result.answer})
                break
            messages.append({"role": "assistant", "content": reply.content or None, "tool_calls": calls})
            for i, call in enumerate(calls):
                fn = call.get("function", {})
                name, args = fn.get("name", ""), fn.get("arguments", "{}")
                call_id = call.get("id") or f"call_{len(steps)}_{i}"
                key = call_key(name, args)
                repeats[key] = repeats.get(key, 0) + 1
                observation = self.toolbox.call(name, args)
                steps.append(AgentStep(tool=name, arguments=args, observation=observation,
                                       thought=reply.content or ""))
                messages.append({"role": "tool", "tool_call_id": call_id, "name": name, "content": observation})
            if max(repeats.values()) >= self.max_repeats:
                result.stop_reason = "repeated_call"
                result.answer = (f"Stopped: the same tool call was made {self.max_repeats} times without an "
                                 f"answer. Last observation: {steps[-1].observation}")
                break
        else:
            result.stop_reason = "max_steps"
            result.answer = f"Stopped after {self.max_steps} steps without a final answer."
        self.memory.add({"role": "user", "content": user_input})
        self.memory.add({"role": "assistant", "content": result.answer})
        return result
