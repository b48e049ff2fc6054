"""ReAct (Yao et al., 2022): reason and act in plain text, for models without function calling.

The model writes `Thought:` / `Action:` / `Action Input:` lines; generation stops before
`Observation:`, the tool runs, its result is appended as the observation, and the model goes
on — until it writes `Final Answer:`. The prompt and the parsing follow LangChain's classic
ReAct agent, so prompts written for it work here. Output that cannot be parsed is answered
with an observation saying what format is expected (the model gets to correct itself), and
max steps / repeated actions stop a runaway loop.
"""

from __future__ import annotations

import json
import re
from typing import Any

from lmkit.agent.function_calling import AgentResult, AgentStep, call_key
from lmkit.agent.memory import BufferMemory, Memory
from lmkit.agent.tools import Tool, Toolbox
from lmkit.errors import ConfigError

REACT_PROMPT = """Answer the following questions as best you can. You have access to the following tools:

{tools}

Use the following format:

Question: the input question you must answer
Thought: you should always think about what to do
Action: the action to take, should be one of [{tool_names}]
Action Input: the input to the action, as a JSON object
Observation: the result of the action
... (this Thought/Action/Action Input/Observation can repeat N times)
Thought: I now know the final answer
Final Answer: the final answer to the original input question

Begin!

Question: {input}
Thought:{scratchpad}"""

FINAL_ANSWER = "Final Answer:"
_ACTION = re.compile(r"Action\s*\d*\s*:[\s]*(.*?)[\s]*Action\s*\d*\s*Input\s*\d*\s*:[\s]*(.*)", re.DOTALL)
FORMAT_ERROR = ("Invalid format: write either 'Action: <tool name>' followed by 'Action Input: <JSON object>', "
                "or 'Final Answer: <answer>'.")


def parse_react(text: str) -> tuple[str, Any] | str | None:
    """(tool, input) for an action, the answer string for a final answer, None if unparsable."""
    action = _ACTION.search(text)
    if FINAL_ANSWER in text:
        if action and text.index(FINAL_ANSWER) > action.start():
            return None  # an action and an answer at once: ambiguous, ask again
        return text.split(FINAL_ANSWER, 1)[1].strip()
    if not action:
        return None
    name = action.group(1).strip().strip("`'\"")
    raw = action.group(2).strip().strip("`").strip()
    if raw.startswith("json"):
        raw = raw[4:].strip()
    try:
        return name, json.loads(raw)
    except json.JSONDecodeError:
        return name, raw


def _coerce_input(tool: Tool | None, value: Any) -> Any:
    """A bare string input goes to a tool's single required argument (LangChain single-input tools)."""
    if tool is None or isinstance(value, dict):
        return value
    required = tool.parameters.get("required", [])
    if len(required) == 1:
        return {required[0]: value}
    return value


class ReActAgent:
    """Answer a question with the text ReAct loop over any chat model."""

    def __init__(self, chat_model: Any, tools: list[Tool | Any] | Toolbox, *, memory: Memory | None = None,
                 prompt: str = REACT_PROMPT, max_steps: int = 8, max_repeats: int = 3,
                 max_tokens: int | None = 256, temperature: float = 0.0,
                 injection_detector: Any = None) -> None:
        if max_steps < 1:
            raise ConfigError(f"max_steps must be >= 1, got {max_steps}")
        for key in ("{tools}", "{tool_names}", "{input}", "{scratchpad}"):
            if key not in prompt:
                raise ConfigError(f"a ReAct prompt needs the placeholder {key}")
        self.chat_model = chat_model
        self.toolbox = tools if isinstance(tools, Toolbox) else Toolbox(list(tools))
        if injection_detector is not None:  # tool results screened for prompt injection (tools.py)
            self.toolbox.injection_detector = injection_detector
        self.memory = memory if memory is not None else BufferMemory()
        self.prompt = prompt
        self.max_steps = max_steps
        self.max_repeats = max_repeats
        self.max_tokens = max_tokens
        self.temperature = temperature

    def run(self, question: str) -> AgentResult:
        scratchpad = ""
        steps: list[AgentStep] = []
        repeats: dict[str, int] = {}
        result = AgentResult(answer="", steps=steps)
        for _ in range(self.max_steps):
            text = self.prompt.format(tools=self.toolbox.describe(), tool_names=", ".join(self.toolbox.tools),
                                      input=question, scratchpad=scratchpad)
            messages = self.memory.messages() + [{"role": "user", "content": text}]
            reply = self.chat_model.chat(messages, max_tokens=self.max_tokens, temperature=self.temperature,
                                         stop=["\nObservation:", "Observation:"])
            output = (reply.content or "").split("Observation:")[0].rstrip()
            parsed = parse_react(output)
            if isinstance(parsed, str):
                result.answer = parsed
                result.messages = messages + [{"role": "assistant", "content": output}]
                break
            if parsed is None:
                observation = FORMAT_ERROR
                steps.append(AgentStep(tool="_invalid_format", arguments=output, observation=observation))
            else:
                name, value = parsed
                value = _coerce_input(self.toolbox.tools.get(name), value)
                key = call_key(name, value)
                repeats[key] = repeats.get(key, 0) + 1
                observation = self.toolbox.call(name, value)
                thought = output.split("Action", 1)[0].strip()
                steps.append(AgentStep(tool=name, arguments=value, observation=observation, thought=thought))
                if repeats[key] >= self.max_repeats:
                    result.stop_reason = "repeated_call"
                    result.answer = (f"Stopped: the action {name} was repeated {self.max_repeats} times "
                                     f"without an answer. Last observation: {observation}")
                    break
            scratchpad += f" {output.strip()}\nObservation: {observation}\nThought:"
        else:
            result.stop_reason = "max_steps"
            result.answer = f"Stopped after {self.max_steps} steps without a final answer."
        self.memory.add({"role": "user", "content": question})
        self.memory.add({"role": "assistant", "content": result.answer})
        return result
