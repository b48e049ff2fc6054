"""`lmkit generate --tp 2` and `lmkit serve --tp 2` (2 gloo processes on loopback, one thread each)
give the greedy text of one process: the CLI's output, and the server's answers to the official
`openai` client, also for concurrent requests batched together."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

from lmkit.hub import save_pretrained
from lmkit.models.config import ModelConfig
from lmkit.models.decoder import DecoderLM
from lmkit.tokenizers.bpe import BPETokenizer

PROMPTS = ["the cat", "the dog sat on", "on the mat and the"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny GQA Llama with tied embeddings (--tp unties them) and a vocabulary padded to split in two."""
    tok = BPETokenizer.train(["the cat sat on the mat and the dog sat on the log " * 20], vocab_size=300,
                             special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    cfg = ModelConfig(arch="decoder", model_type="llama", vocab_size=-(-tok.vocab_size // 8) * 8, d_model=32,
                      n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64, max_seq_len=128, norm="rmsnorm",
                      activation="silu", gated_ffn=True, position="rope", tie_embeddings=True)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tp-model")
    save_pretrained(DecoderLM(cfg).eval(), path)
    tok.save_hf_json(path / "tokenizer.json")
    return path


def _env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1")


def _generate_args(model_dir, prompt: str) -> list[str]:
    return ["generate", str(model_dir), "-p", prompt, "--max-new-tokens", "6", "--json"]


def test_generate_tp2_prints_what_one_process_prints(model_dir):
    from lmkit.serve.commands import generate_cmd

    one = CliRunner().invoke(generate_cmd, _generate_args(model_dir, PROMPTS[1])[1:])
    assert one.exit_code == 0, one.output
    tp = subprocess.run([sys.executable, "-m", "lmkit", *_generate_args(model_dir, PROMPTS[1]), "--tp", "2"],
                        capture_output=True, text=True, timeout=300, env=_env())
    assert tp.returncode == 0, tp.stderr[-2000:]
    assert tp.stdout == one.output  # rank 0 alone prints
    assert len(json.loads(tp.stdout)["tokens"]) == 6


def test_tp_that_does_not_split_the_heads_is_refused_once_by_name(model_dir):
    proc = subprocess.run([sys.executable, "-m", "lmkit", *_generate_args(model_dir, "the"), "--tp", "3"],
                          capture_output=True, text=True, timeout=300, env=_env())
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.count("not divisible by the tensor-parallel degree 3") == 1


def test_engine_ranks_replaying_rank0s_messages_take_the_same_steps(model_dir, monkeypatch):
    """The lockstep contract without processes: rank 0's engine (requests joining while others decode,
    a cancellation, an unseeded sampled request, structured output) records what it broadcasts; a
    rank-1 engine fed those messages takes the same steps and stops at the same sync."""
    import pickle
    import threading

    import torch.distributed as dist

    from lmkit.hub import load_pretrained
    from lmkit.infer import GenerationConfig
    from lmkit.infer.structured_output import compile_json_schema
    from lmkit.serve.engine import Engine
    from lmkit.serve.tensor_parallel import Ranks
    from lmkit.serve.tensor_parallel_engine import TensorParallelEngine
    from lmkit.tokenizers.loading import load_tokenizer

    tok, model = load_tokenizer(model_dir), load_pretrained(model_dir)
    sent: list = []

    def record(box, src, group):  # rank 0: what the others would receive
        sent.append(pickle.loads(pickle.dumps(box[0])))

    monkeypatch.setattr(dist, "broadcast_object_list", record)
    leader = TensorParallelEngine(model, tok, ranks=Ranks(0, 2, None, None, torch.device("cpu")), max_batch_size=2)
    greedy = GenerationConfig(max_new_tokens=8)
    prompts = [tok.encode(p) for p in PROMPTS]
    done = threading.Event()
    finished: list = []

    def on_event(ev) -> None:
        if ev.finish_reason or ev.error:
            finished.append(ev)
            if len(finished) == 4:
                done.set()

    handles = [leader.submit(p, greedy, on_event) for p in prompts]  # 3 requests, 2 rows: one waits
    handles.append(leader.submit(prompts[0], GenerationConfig(max_new_tokens=8, do_sample=True, temperature=1.0), on_event))
    long = leader.submit(prompts[1], GenerationConfig(max_new_tokens=60), lambda ev: None)
    long.cancel()  # takes effect at the next sync, on every rank
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    json_ok = leader.generate(prompts[2], GenerationConfig(max_new_tokens=8, eos_token_id=[tok.vocab_size - 1]),
                              constraint=compile_json_schema(tok, schema))
    assert done.wait(120) and not any(ev.error for ev in finished)
    alone = Engine(load_pretrained(model_dir), tok)
    try:
        assert alone.generate(prompts[0], greedy).text == leader.generate(prompts[0], greedy).text
    finally:
        alone.stop()
    leader.stop()
    assert sent[-1][2] is True and any(msg[1] for msg in sent)  # the stop and the cancellation went out
    assert any(cfg.do_sample and cfg.seed is not None for msg in sent for _, _, cfg, _ in msg[0])  # seeded on rank 0
    assert json_ok.text.startswith("{")

    replay = list(sent)

    def receive(box, src, group):  # rank 1: rank 0's messages, in order
        box[0] = replay.pop(0)

    monkeypatch.setattr(dist, "broadcast_object_list", receive)
    follower = TensorParallelEngine(load_pretrained(model_dir), tok, ranks=Ranks(1, 2, None, None,
                                                                                 torch.device("cpu")),
                                    max_batch_size=2)
    follower.follow()
    assert replay == []  # it synced exactly as often as rank 0
    a, b = leader.stats, follower.stats
    assert a.batch_rows > a.decode_steps > 0 and a.errors == 0  # rows were batched; nothing failed
    assert (a.requests, a.prefills, a.decode_steps, a.batch_rows, a.generated_tokens, a.errors) == \
        (b.requests, b.prefills, b.decode_steps, b.batch_rows, b.generated_tokens, b.errors)


def _ask(url: str) -> list:
    """What the tests ask a server: one completion, twice three at once (they share batches, joining
    while others decode), a stream, a JSON-schema chat (structured output), then one more."""
    import openai

    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)

    def complete(prompt: str) -> str:
        return client.completions.create(model="tiny", prompt=prompt, max_tokens=16, temperature=0).choices[0].text

    answers = [complete(PROMPTS[0])]
    for _ in range(2):
        with concurrent.futures.ThreadPoolExecutor(len(PROMPTS)) as pool:
            answers.append(list(pool.map(complete, PROMPTS)))
    stream = client.completions.create(model="tiny", prompt=PROMPTS[2], max_tokens=16, temperature=0, stream=True)
    answers.append("".join(chunk.choices[0].text for chunk in stream))
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    chat = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "the cat"}], max_tokens=12, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}})
    answers.append(chat.choices[0].message.content)
    answers.append(complete(PROMPTS[1]))
    return answers


@pytest.mark.slow
@pytest.mark.parametrize("kv_cache", ["paged", "contiguous"])
def test_serve_tp2_answers_openai_clients_like_one_process(model_dir, kv_cache):
    openai = pytest.importorskip("openai")
    pytest.importorskip("llguidance")
    from live_server import free_port, start_serve, stop, wait_until_healthy
    from test_serve_util import LiveServer

    from lmkit.hub import load_pretrained
    from lmkit.serve.app import create_app
    from lmkit.serve.engine import Engine
    from lmkit.tokenizers.loading import load_tokenizer

    tok = load_tokenizer(model_dir)
    engine = Engine(load_pretrained(model_dir), tok, max_batch_size=4, kv_cache=kv_cache)
    with LiveServer(create_app(engine, model_name="tiny", template="chatml")) as one:
        expected = _ask(one.url)
    assert expected[1] == expected[2] and expected[1][2] == expected[3]  # batched = alone, streamed = not
    port = free_port()
    proc = start_serve(model_dir, port, "--tp", "2", "--max-batch-size", "4", "--model-name", "tiny",
                       "--kv-cache", kv_cache, "--template", "chatml")
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_healthy(proc, url)
        assert _ask(url) == expected
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
        with pytest.raises(openai.BadRequestError, match="tensor parallelism"):
            client.embeddings.create(model="tiny", input="the cat")
        assert _ask(url)[-1] == expected[-1]  # the ranks are still in step
    finally:
        stop(proc)
    assert proc.returncode in (0, -signal.SIGTERM), proc.stderr.read()[-2000:]
    assert "tensor-parallel over 2 ranks" in proc.stderr.read()
