"""The chat stream: a request's engine events in, OpenAI `chat.completion.chunk` objects out.

Per choice it keeps the text generated so far (with any forced prefix) and how much of it
was sent. Text goes out as it comes, except where it may be a tool call: once ``<tool_call>``
appears the rest is held back from the content, and a tail that could be the start of that
tag waits for the next token. A call written the documented way (`{"name": ..., "arguments":
{...}}`) streams as OpenAI's `tool_calls` deltas: the first carries index, id, type and
function.name (with the arguments so far), later ones more of `function.arguments`, as the
official client accumulates them. At the end the held text is parsed (the same parse as a
non-streamed reply, which keeps the arguments text as written, so the deltas add up to it);
what was not streamed goes out then, anything that is no call as content. Logprobs travel
with the content they belong to (a call's with its last delta).

No I/O: the route frames the chunks as Server-Sent Events.
"""

from typing import Any

from lmkit.serve.chat_model import PreparedChat, finish_chat
from lmkit.serve.engine import TokenEvent
from lmkit.serve.openai_format import chat_logprobs, usage
from lmkit.serve.tool_calls import CALL_OPEN, new_call_id, partial_open_len, partial_tool_calls


class ChatStream:
    """Chunks for the `n` choices of one chat request.

    base: the fields every chunk repeats (id, created, model, system_fingerprint).
    logprobs: whether the request asked for logprobs.
    """

    def __init__(self, prepared: PreparedChat, n: int, base: dict, tokenizer, logprobs: bool = False) -> None:
        self.prepared, self.n, self.base, self.tokenizer = prepared, n, base, tokenizer
        self.want_logprobs = logprobs
        self.parse_tools = bool(prepared.tools)
        self.full = [prepared.prefix for _ in range(n)]  # everything generated, with the forced prefix
        self.sent = [0] * n  # characters of `full` already sent as content
        self.holding = [False] * n  # a <tool_call> began: the rest is held for parsing
        self.calls_sent: list[list[dict]] = [[] for _ in range(n)]  # per streamed call: its id, argument chars sent
        self.pending_logprobs: list[list[tuple]] = [[] for _ in range(n)]
        self.left = n
        self.completion_tokens = 0

    @property
    def done(self) -> bool:
        return self.left == 0

    def chunk(self, index: int, delta: dict, finish: str | None = None, logprobs: dict | None = None) -> dict:
        return {**self.base, "object": "chat.completion.chunk",
                "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]}

    def opening(self) -> list[dict]:
        """The first chunk of every choice: the assistant role."""
        return [self.chunk(i, {"role": "assistant", "content": ""}) for i in range(self.n)]

    def usage_chunk(self, prompt_tokens: int) -> dict:
        """The last chunk when the client asked for usage (stream_options.include_usage)."""
        return {**self.base, "object": "chat.completion.chunk", "choices": [],
                "usage": usage(prompt_tokens, self.completion_tokens)}

    def feed(self, index: int, event: TokenEvent) -> list[dict]:
        """The chunks that `event` (of choice `index`, not an error) releases."""
        if event.token is not None:
            self.completion_tokens += 1
            if self.want_logprobs:
                self.pending_logprobs[index].append((event.token, event.logprob, event.top_logprobs))
        self.full[index] += event.text
        if event.finish_reason is None:
            return self._partial(index)
        self.left -= 1
        return self._final(index, event.finish_reason)

    def _sendable_end(self, index: int) -> int:
        """How far the text may be sent now: not into a tool call, nor a tail that may begin one."""
        text = self.full[index]
        if self.parse_tools and not self.holding[index] and CALL_OPEN in text:
            self.holding[index] = True
        if self.holding[index]:
            return self.sent[index]
        return len(text) - partial_open_len(text) if self.parse_tools else len(text)

    def _take_logprobs(self, index: int) -> dict | None:
        pending = self.pending_logprobs[index]
        if not pending:
            return None
        self.pending_logprobs[index] = []
        return chat_logprobs(self.tokenizer, *zip(*pending))

    def _partial(self, index: int) -> list[dict]:
        end = self._sendable_end(index)
        if self.holding[index]:
            return self._call_deltas(index)
        if end <= self.sent[index]:
            return []
        text, start = self.full[index], self.sent[index]
        self.sent[index] = end
        return [self.chunk(index, {"content": text[start:end]}, None, self._take_logprobs(index))]

    def _call_deltas(self, index: int) -> list[dict]:
        """Content before the first call (not sent yet), then the `tool_calls` deltas of what is new."""
        text, out = self.full[index], []
        at = text.find(CALL_OPEN)
        if at > self.sent[index]:
            out.append(self.chunk(index, {"content": text[self.sent[index]:at]}))
            self.sent[index] = at
        sent = self.calls_sent[index]
        for k, (name, args, _) in enumerate(partial_tool_calls(text)):
            if k == len(sent):
                sent.append({"id": new_call_id(), "args": len(args)})
                entry = {"index": k, "id": sent[k]["id"], "type": "function",
                         "function": {"name": name, "arguments": args}}
            elif len(args) > sent[k]["args"]:
                entry = {"index": k, "function": {"arguments": args[sent[k]["args"]:]}}
                sent[k]["args"] = len(args)
            else:
                continue
            out.append(self.chunk(index, {"tool_calls": [entry]}))
        return out

    def _final(self, index: int, finish_reason: str) -> list[dict]:
        text, sent = self.full[index], self.sent[index]
        content, calls, finish = finish_chat(self.prepared, text[len(self.prepared.prefix):], finish_reason)
        lp = self._take_logprobs(index)
        out: list[dict] = []
        if calls:
            already = text[:sent]
            rest = content[len(already):] if content.startswith(already) else ""
            if rest:
                out.append(self.chunk(index, {"content": rest}))
            streamed, entries = self.calls_sent[index], []
            for k, c in enumerate(calls):
                if k >= len(streamed):
                    entries.append({"index": k, **c})
                elif len(c["function"]["arguments"]) > streamed[k]["args"]:
                    entries.append({"index": k, "function": {"arguments": c["function"]["arguments"][streamed[k]["args"]:]}})
            if entries:
                out.append(self.chunk(index, {"tool_calls": entries}, None, lp))
            elif lp:
                out.append(self.chunk(index, {}, None, lp))
        elif len(text) > sent or lp:
            out.append(self.chunk(index, {"content": text[sent:]}, None, lp))
        self.sent[index] = len(text)
        out.append(self.chunk(index, {}, finish))
        return out
