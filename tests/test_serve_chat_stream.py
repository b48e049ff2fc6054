"""`ChatStream`, the chat SSE state machine, without HTTP or a model: events in, chunks out."""

from __future__ import annotations

import json

from lmkit.serve.chat_model import PreparedChat
from lmkit.serve.chat_stream import ChatStream
from lmkit.serve.engine import TokenEvent

BASE = {"id": "chatcmpl-x", "created": 1, "model": "m", "system_fingerprint": None}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


class CharTokenizer:
    """Token i is the character chr(i)."""

    def decode(self, ids):
        return "".join(chr(i) for i in ids)


def prepared(tools=None, prefix="") -> PreparedChat:
    return PreparedChat(prompt_ids=[1, 2, 3], prefix=prefix, eos_ids=[0], stop=None, tools=tools)


def stream(tools=None, prefix="", n=1, logprobs=False) -> ChatStream:
    return ChatStream(prepared(tools, prefix), n, BASE, CharTokenizer(), logprobs=logprobs)


def ev(text, token=None, finish=None, logprob=None, top=None) -> TokenEvent:
    token = token if token is not None else (ord(text[0]) if text else 0)
    return TokenEvent(text, token=token, logprob=logprob, top_logprobs=top, finish_reason=finish)


def deltas(chunks) -> list[tuple]:
    return [(c["choices"][0]["index"], c["choices"][0]["delta"], c["choices"][0]["finish_reason"]) for c in chunks]


def test_opening_chunks_carry_the_role_and_the_shared_fields():
    s = stream(n=2)
    chunks = s.opening()
    assert deltas(chunks) == [(0, {"role": "assistant", "content": ""}, None),
                              (1, {"role": "assistant", "content": ""}, None)]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == "chatcmpl-x" and c["model"] == "m"
               for c in chunks)


def test_plain_text_goes_out_as_it_comes_and_ends_with_the_finish_reason():
    s = stream()
    assert deltas(s.feed(0, ev("Hel"))) == [(0, {"content": "Hel"}, None)]
    assert deltas(s.feed(0, ev("lo"))) == [(0, {"content": "lo"}, None)]
    assert not s.done
    assert deltas(s.feed(0, ev("", token=0, finish="stop"))) == [(0, {}, "stop")]
    assert s.done and s.completion_tokens == 3
    assert s.usage_chunk(3)["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
    assert s.usage_chunk(3)["choices"] == []


def test_text_left_at_the_end_is_sent_before_the_finish():
    s = stream()
    assert deltas(s.feed(0, ev("Hi", finish="length"))) == [(0, {"content": "Hi"}, None), (0, {}, "length")]


def accumulate(chunks) -> list[dict]:
    """The tool calls a client rebuilds from `tool_calls` deltas (as the OpenAI SDK docs show)."""
    calls: dict[int, dict] = {}
    for _, delta, _ in deltas(chunks):
        for tc in delta.get("tool_calls", []):
            c = calls.setdefault(tc["index"], {"id": None, "type": None, "function": {"name": "", "arguments": ""}})
            c["id"] = tc.get("id") or c["id"]
            c["type"] = tc.get("type") or c["type"]
            c["function"]["name"] += tc.get("function", {}).get("name") or ""
            c["function"]["arguments"] += tc.get("function", {}).get("arguments") or ""
    return [calls[k] for k in sorted(calls)]


def test_a_tool_call_is_held_back_from_content_and_streamed_as_tool_calls_deltas():
    s = stream(tools=TOOLS)
    assert deltas(s.feed(0, ev("Sure"))) == [(0, {"content": "Sure"}, None)]
    # "<tool" may begin a call: it waits; the space before it goes out
    assert deltas(s.feed(0, ev(" <tool"))) == [(0, {"content": " "}, None)]
    assert s.feed(0, ev("_call>\n{\"name\": \"get_wea")) == []  # the name is not complete yet
    chunks = s.feed(0, ev('ther", "arguments": {"ci'))
    (first,) = [d for _, d, _ in deltas(chunks)]
    (call,) = first["tool_calls"]  # the first delta: index, id, type, name (and the arguments so far)
    assert call["index"] == 0 and call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"] == {"name": "get_weather", "arguments": '{"ci'}
    chunks += s.feed(0, ev('ty": "Paris"}}\n</tool_call>'))
    assert all("content" not in d for _, d, _ in deltas(chunks))
    end = s.feed(0, ev("", token=0, finish="stop"))
    assert deltas(end)[-1] == (0, {}, "tool_calls")
    (got,) = accumulate(chunks + end)
    assert got["id"] == call["id"] and got["function"]["name"] == "get_weather"
    assert got["function"]["arguments"] == '{"city": "Paris"}'  # as the model wrote it, as non-streamed


def test_tool_calls_in_one_token_and_two_calls():
    two = CALL + "\n" + CALL.replace("Paris", "Rome")
    s = stream(tools=TOOLS)
    chunks = s.feed(0, ev("ok " + two)) + s.feed(0, ev("", token=0, finish="stop"))
    assert [d["content"] for _, d, _ in deltas(chunks) if "content" in d] == ["ok "]
    assert [c["function"]["arguments"] for c in accumulate(chunks)] == ['{"city": "Paris"}', '{"city": "Rome"}']
    assert [c["index"] for _, d, _ in deltas(chunks) for c in d.get("tool_calls", [])] == [0, 1]


def test_a_tail_that_only_looked_like_a_tag_is_released():
    s = stream(tools=TOOLS)
    assert deltas(s.feed(0, ev("a <to"))) == [(0, {"content": "a "}, None)]
    assert deltas(s.feed(0, ev("day"))) == [(0, {"content": "<today"}, None)]


def test_an_invalid_call_comes_back_as_content():
    s = stream(tools=TOOLS)
    s.feed(0, ev("<tool_call>\n{not json"))
    out = deltas(s.feed(0, ev("", token=0, finish="stop")))
    assert out == [(0, {"content": "<tool_call>\n{not json"}, None), (0, {}, "stop")]


def test_forced_prefix_is_part_of_the_parsed_call_and_never_sent_as_content():
    prefix = '<tool_call>\n{"name": "get_weather", "arguments": '
    s = stream(tools=TOOLS, prefix=prefix)
    chunks = s.feed(0, ev('{"city": "Paris"}}'))
    assert all("content" not in d for _, d, _ in deltas(chunks))
    out = s.feed(0, ev("", token=0, finish="stop"))
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in accumulate(chunks + out)] == \
        [("get_weather", '{"city": "Paris"}')]
    assert deltas(out)[-1][2] == "tool_calls"


def test_logprobs_travel_with_their_content_and_held_ones_come_at_the_end():
    s = stream(tools=TOOLS, logprobs=True)
    (c,) = s.feed(0, ev("A", logprob=-0.5, top={ord("A"): -0.5, ord("B"): -1.0}))
    lp = c["choices"][0]["logprobs"]["content"]
    assert [(e["token"], e["logprob"], e["bytes"]) for e in lp] == [("A", -0.5, [65])]
    assert [t["token"] for t in lp[0]["top_logprobs"]] == ["A", "B"]
    assert s.feed(0, ev("<", logprob=-0.1)) == []  # may begin a call: held, with its logprob
    out = s.feed(0, ev("x", logprob=-0.2, finish="length"))
    content = out[0]["choices"][0]
    assert content["delta"] == {"content": "<x"}
    assert [e["logprob"] for e in content["logprobs"]["content"]] == [-0.1, -0.2]
    assert out[-1]["choices"][0]["finish_reason"] == "length"


def test_choices_are_independent_and_the_stream_ends_when_all_finish():
    s = stream(n=2)
    assert deltas(s.feed(1, ev("b"))) == [(1, {"content": "b"}, None)]
    assert deltas(s.feed(0, ev("a", finish="stop"))) == [(0, {"content": "a"}, None), (0, {}, "stop")]
    assert not s.done
    assert deltas(s.feed(1, ev("", token=0, finish="length"))) == [(1, {}, "length")]
    assert s.done and s.completion_tokens == 3
