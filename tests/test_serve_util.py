"""Shared builders for the serve tests (no tests here): a tiny chat model directory.

`build_chat_dir(path)` trains a small byte-level BPE tokenizer with the ChatML special
tokens, builds a tiny random Llama (hidden 32, 2 layers) and overfits it for a few hundred
steps on a few chat conversations, among them a tool call and the answer after the tool's
result, then saves it as a Hugging Face checkpoint with tokenizer.json — what `lmkit serve`
loads. Everything else about its outputs is random but deterministic.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lmkit.hub import save_pretrained
from lmkit.models.config import ModelConfig
from lmkit.models.decoder import DecoderLM
from lmkit.serve.chat_model import prepare_chat
from lmkit.serve.tool_calls import TOOLS_FOOTER, TOOLS_HEADER
from lmkit.tokenizers.bpe import BPETokenizer
from lmkit.tokenizers.chat_template import CHATML

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TOOL_QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]
TOOL_REPLY = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
TOOL_RESULT = '{"city": "Paris", "sky": "sunny", "celsius": 21}'
FINAL_REPLY = "It is sunny in Paris, 21 degrees."
GREETING = [{"role": "user", "content": "Say hello."}]
GREETING_REPLY = "Hello! 你好 🌍 How can I help?"

TRAIN_TEXT = (
    "What is the weather in Paris? sunny degrees city celsius get_weather arguments name "
    "Say hello. Hello! 你好 🌍 How can I help? You are a helpful assistant. system user assistant "
    "Current weather of a city type object properties string required function tool_call tool_response "
    "Once upon a time there was a small model that liked to talk about the weather. "
) * 8 + (TOOLS_HEADER + TOOLS_FOOTER + " ") * 8


def tool_followup() -> list[dict]:
    call = {"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": json.dumps({"city": "Paris"})}}
    return TOOL_QUESTION + [{"role": "assistant", "content": None, "tool_calls": [call]},
                            {"role": "tool", "tool_call_id": "call_1", "content": TOOL_RESULT}]


def build_tokenizer() -> BPETokenizer:
    return BPETokenizer.train([TRAIN_TEXT], vocab_size=700,
                              special_tokens=["<|endoftext|>"] + CHATML.special_tokens)


def build_chat_dir(path: Path, steps: int = 150, seed: int = 0) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer()
    eos = tok.token_to_id("<|endoftext|>")
    cfg = ModelConfig(arch="decoder", model_type="llama", vocab_size=tok.vocab_size, d_model=48, n_layers=2,
                      n_heads=4, n_kv_heads=2, d_ff=96, max_seq_len=1024, norm="rmsnorm", activation="silu",
                      gated_ffn=True, position="rope", tie_embeddings=False, initializer_range=0.2,
                      eos_token_id=eos, bos_token_id=eos)
    torch.manual_seed(seed)
    model = DecoderLM(cfg)
    end = tok.token_to_id("<|im_end|>")
    # (conversation, tools, reply): the reply (+ <|im_end|>) is what the model learns to say
    data = [(TOOL_QUESTION, [WEATHER_TOOL], TOOL_REPLY), (tool_followup(), [WEATHER_TOOL], FINAL_REPLY),
            (GREETING, None, GREETING_REPLY)]
    seqs = []
    for msgs, tools, reply in data:
        prompt = prepare_chat(model, tok, CHATML, msgs, tools=tools).prompt_ids
        target = tok.encode(reply) + [end]
        seqs.append((prompt + target, len(prompt)))
    width = max(len(s) for s, _ in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    labels = torch.full((len(seqs), width), -100, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, (s, n) in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        labels[i, n : len(s)] = torch.tensor(s[n:])
        labels[i, n // 2 : n] = torch.tensor(s[n // 2 : n])  # some prompt text too: less degenerate elsewhere
        mask[i, : len(s)] = 1
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        # labels[t] is the target after position t-1 (DecoderLM shifts them)
        loss = model(ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    save_pretrained(model, path)
    tok.save_hf_json(path / "tokenizer.json")
    (path / "train_loss.txt").write_text(f"{loss.item():.4f}\n")
    return path


def cached_chat_dir(tmp_path_factory) -> Path:
    """The trained chat model directory, built once per pytest session (shared by the serve test files)."""
    path = tmp_path_factory.getbasetemp() / "serve-chat-model"
    if not (path / "tokenizer.json").exists():
        build_chat_dir(path)
    return path


class LiveServer:
    """uvicorn running `app` on a free 127.0.0.1 port in a background thread."""

    def __init__(self, app) -> None:
        import socket
        import threading

        import uvicorn

        self.app = app
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        sock.close()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    timeout_graceful_shutdown=30))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "LiveServer":
        import time

        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(60)

    def __exit__(self, *exc) -> None:
        self.stop()


def tiny_decoder(kind: str = "llama", seed: int = 0, ctx: int = 128, vocab: int = 300) -> DecoderLM:
    """A random 2-layer Llama (GQA, RoPE) or GPT-2 (learned positions, biases) for engine tests."""
    common = dict(arch="decoder", vocab_size=vocab, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=ctx,
                  initializer_range=0.2, eos_token_id=2)
    if kind == "llama":
        cfg = ModelConfig(model_type="llama", n_kv_heads=2, norm="rmsnorm", activation="silu", gated_ffn=True,
                          position="rope", **common)
    else:
        cfg = ModelConfig(model_type="gpt2", norm="layernorm", activation="gelu_tanh", gated_ffn=False,
                          position="learned", qkv_bias=True, o_bias=True, ffn_bias=True, **common)
    torch.manual_seed(seed)
    return DecoderLM(cfg).eval()
