"""Tool calling: the prompt text against Qwen-2.5's published chat template (rendered by
transformers), parsing properties (hypothesis), and the `ChatModel` contract both ways —
`LocalChatModel` in process and `OpenAIChatModel` against a live lmkit server — giving the
same results on a model overfitted to call a tool.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmkit.errors import ConfigError
from lmkit.serve.chat_model import ChatModel, ChatModelError, ChatResult, LocalChatModel, OpenAIChatModel
from lmkit.serve.tool_calls import (normalize_messages, parse_tool_calls, partial_open_len, render_tool_call,
                                    render_tools_prompt, tool_choice_prefix)
from lmkit.tokenizers.chat_template import CHATML
from test_serve_util import (FINAL_REPLY, GREETING, GREETING_REPLY, TOOL_QUESTION, WEATHER_TOOL, LiveServer,
                             build_tokenizer, cached_chat_dir, tool_followup)

# Qwen2.5-Instruct's chat template (tools part as published; its default system sentence replaced by
# ChatML's "You are a helpful assistant." which lmkit's CHATML template uses).
QWEN25_JINJA = (
    "{%- if tools %}{{- '<|im_start|>system\\n' }}{%- if messages[0]['role'] == 'system' %}"
    "{{- messages[0]['content'] }}{%- else %}{{- 'You are a helpful assistant.' }}{%- endif %}"
    "{{- \"\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>\" }}"
    "{%- for tool in tools %}{{- \"\\n\" }}{{- tool | tojson }}{%- endfor %}"
    "{{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, "
    "\\\"arguments\\\": <args-json-object>}\\n</tool_call><|im_end|>\\n\" }}"
    "{%- else %}{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or "
    "(message.role == \"assistant\" and not message.tool_calls) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- elif message.role == \"assistant\" %}{{- '<|im_start|>' + message.role }}"
    "{%- if message.content %}{{- '\\n' + message.content }}{%- endif %}"
    "{%- for tool_call in message.tool_calls %}{%- if tool_call.function is defined %}"
    "{%- set tool_call = tool_call.function %}{%- endif %}"
    "{{- '\\n<tool_call>\\n{\"name\": \"' }}{{- tool_call.name }}{{- '\", \"arguments\": ' }}"
    "{{- tool_call.arguments | tojson }}{{- '}\\n</tool_call>' }}{%- endfor %}{{- '<|im_end|>\\n' }}"
    "{%- elif message.role == \"tool\" %}"
    "{%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != \"tool\") %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' }}{{- message.content }}{{- '\\n</tool_response>' }}"
    "{%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- endif %}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

SEARCH_TOOL = {"type": "function", "function": {
    "name": "search", "description": "搜索文档 (search the docs)",
    "parameters": {"type": "object", "properties": {"query": {"type": "string"}, "k": {"type": "integer"}}}}}


def _conversations():
    call = {"id": "c1", "type": "function", "function": {"name": "search", "arguments": {"query": "RoPE 位置编码", "k": 3}}}
    call2 = {"id": "c2", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    return [
        ([{"role": "user", "content": "hi"}], [WEATHER_TOOL]),
        ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "weather?"}], [WEATHER_TOOL, SEARCH_TOOL]),
        ([{"role": "user", "content": "find RoPE"}, {"role": "assistant", "content": "", "tool_calls": [call, call2]},
          {"role": "tool", "content": "doc 1"}, {"role": "tool", "content": "{\"sky\": \"sunny\"}"},
          {"role": "assistant", "content": "Found it."}, {"role": "user", "content": "thanks"}], [SEARCH_TOOL, WEATHER_TOOL]),
        ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "Let me look.", "tool_calls": [call]},
          {"role": "tool", "content": "r"}], [SEARCH_TOOL]),
        ([{"role": "system", "content": "S"}, {"role": "user", "content": "no tools"}], None),
    ]


def _openai_style(messages):
    """The same conversation as an OpenAI client sends it: arguments as JSON strings, content None."""
    out = []
    for m in messages:
        m = dict(m)
        if m.get("tool_calls"):
            m["tool_calls"] = [{**c, "function": {**c["function"], "arguments": json.dumps(c["function"]["arguments"],
                                                                                          ensure_ascii=False)}}
                               for c in m["tool_calls"]]
            m["content"] = m["content"] or None
        out.append(m)
    return out


@pytest.mark.parametrize("idx", range(5))
def test_prompt_matches_qwen25_template(idx, tmp_path):
    pytest.importorskip("transformers")
    from transformers import PreTrainedTokenizerFast

    messages, tools = _conversations()[idx]
    path = tmp_path / "tokenizer.json"
    build_tokenizer().save_hf_json(path)
    hf = PreTrainedTokenizerFast(tokenizer_file=str(path), chat_template=QWEN25_JINJA)
    want = hf.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True)
    got = CHATML.render(normalize_messages(_openai_style(messages), tools, CHATML.default_system),
                        add_generation_prompt=True)
    assert got == want


names = st.text(st.characters(whitelist_categories=("Ll", "Lu", "Nd"), whitelist_characters="_-"), min_size=1,
                max_size=12)
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=10),
                           lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
                           max_leaves=6)


@settings(max_examples=60, deadline=None)
@given(content=st.text(max_size=30).filter(lambda s: "<tool_call>" not in s),
       calls=st.lists(st.tuples(names, st.dictionaries(st.text(max_size=6), json_values, max_size=3)), min_size=1,
                      max_size=3))
def test_parse_inverts_render(content, calls):
    text = content + "\n" + "\n".join(render_tool_call({"name": n, "arguments": a}) for n, a in calls)
    got_content, got = parse_tool_calls(text)
    assert got_content == content.strip()
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in got] == calls
    assert all(c["type"] == "function" and c["id"].startswith("call_") for c in got)
    assert len({c["id"] for c in got}) == len(got)


def test_parse_edge_cases():
    assert parse_tool_calls("just text") == ("just text", [])
    bad = 'x <tool_call>\n{"name": "f", "arguments": {oops}\n</tool_call>'
    assert parse_tool_calls(bad) == (bad, [])  # invalid JSON: nothing is lost, nothing invented
    _, calls = parse_tool_calls('<tool_call>\n{"name": "f", "arguments": {"a": 1}}')  # stopped before </tool_call>
    assert calls[0]["function"] == {"name": "f", "arguments": '{"a": 1}'}
    _, calls = parse_tool_calls('<tool_call>{"name": "f", "arguments": "{\\"a\\": 2}"}</tool_call>')
    assert json.loads(calls[0]["function"]["arguments"]) == {"a": 2}
    assert partial_open_len("hello <tool_") == len("<tool_") and partial_open_len("hello") == 0


def test_tool_choice_and_validation():
    assert tool_choice_prefix("auto", [WEATHER_TOOL]) == "" and tool_choice_prefix("required", None) == ""
    assert tool_choice_prefix("required", [WEATHER_TOOL]) == "<tool_call>\n"
    named = tool_choice_prefix({"type": "function", "function": {"name": "get_weather"}}, [WEATHER_TOOL])
    assert (named + '{"city": "X"}}\n</tool_call>').startswith(render_tool_call({"name": "get_weather", "arguments": {}})[:40])
    for bad in ("sometimes", {"type": "function", "function": {"name": "nope"}}):
        with pytest.raises(ConfigError):
            tool_choice_prefix(bad, [WEATHER_TOOL])
    with pytest.raises(ConfigError, match="tools\\[0\\]"):
        render_tools_prompt([{"type": "function", "function": {"description": "no name"}}])
    with pytest.raises(ConfigError, match="role"):
        normalize_messages([{"role": "wizard", "content": "x"}])


# ---- the ChatModel contract, in process and over HTTP ---------------------------------------------
@pytest.fixture(scope="module")
def local_chat(tmp_path_factory):
    return LocalChatModel.from_dir(cached_chat_dir(tmp_path_factory))


@pytest.fixture(scope="module")
def remote_chat(local_chat):
    from lmkit.serve.app import create_app
    from lmkit.serve.engine import Engine

    app = create_app(Engine(local_chat.model, local_chat.tokenizer), model_name="m", api_keys=["k"])
    with LiveServer(app) as live:
        yield OpenAIChatModel(live.url + "/v1", model="m", api_key="k", timeout=60)


@pytest.mark.parametrize("which", ["local", "remote"])
def test_chat_model_tool_call_and_answer(which, local_chat, remote_chat):
    llm = local_chat if which == "local" else remote_chat
    assert isinstance(llm, ChatModel)
    r = llm.chat(TOOL_QUESTION, tools=[WEATHER_TOOL], max_tokens=60)
    assert isinstance(r, ChatResult) and r.finish_reason == "tool_calls" and r.content == ""
    (call,) = r.tool_calls
    assert call["type"] == "function" and call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    r2 = llm.chat(tool_followup(), tools=[WEATHER_TOOL], max_tokens=60)
    assert (r2.content, r2.tool_calls, r2.finish_reason) == (FINAL_REPLY, [], "stop")
    r3 = llm.chat(GREETING, max_tokens=40)
    assert r3.content == GREETING_REPLY and r3.usage["completion_tokens"] > 0
    r4 = llm.chat(GREETING, max_tokens=3)
    assert r4.finish_reason == "length" and r4.usage["completion_tokens"] == 3
    r5 = llm.chat(GREETING, max_tokens=40, stop=["你"])
    assert r5.content == "Hello! " and r5.finish_reason == "stop"


def test_local_and_remote_agree_when_sampling(local_chat, remote_chat):
    kw = dict(max_tokens=12, temperature=1.2, seed=5)
    assert local_chat.chat(GREETING, **kw).content == remote_chat.chat(GREETING, **kw).content


def test_openai_chat_model_errors(remote_chat):
    down = OpenAIChatModel("http://127.0.0.1:9/v1", model="m", timeout=5)
    with pytest.raises(ChatModelError, match="cannot connect"):
        down.chat(GREETING)
    wrong_key = OpenAIChatModel(remote_chat.base_url, model="m", api_key="nope")
    with pytest.raises(ChatModelError, match="401"):
        wrong_key.chat(GREETING)
    with pytest.raises(ChatModelError, match="context length"):
        remote_chat.chat(GREETING, max_tokens=100000)
