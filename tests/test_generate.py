"""`generate` against `transformers.generate` on the same randomly initialised weights.

HF Llama and GPT-2 models are built from tiny configs, saved with save_pretrained and
loaded with lmkit.hub.load_pretrained; greedy and beam search (2-4 beams, length penalty
and early stopping variants) must give identical token ids over several prompts and batch
sizes, batches left-padded. Plus processors inside generation, EOS, stop strings across
token boundaries, seeds, logprobs = log_softmax(processed scores), context-length errors,
and the CLI.
"""

from __future__ import annotations

import json

import pytest
import torch

from lmkit.errors import ConfigError
from lmkit.hub import load_pretrained
from lmkit.infer import GenerationConfig, generate, generate_text, stream_text
from lmkit.infer.sampling import build_logits_processors
from lmkit.tokenizers.bpe import AddedToken, BPETokenizer

transformers = pytest.importorskip("transformers")

V = 97
PROMPTS = [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15, 16], [17], [18, 19, 20, 21, 22, 23, 24]]


def _hf_config(name: str):
    # initializer_range 0.2 spreads the logits, so random models have clear argmaxes (no float ties)
    if name == "gpt2":
        return transformers.GPT2Config(vocab_size=V, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                       bos_token_id=1, eos_token_id=2, initializer_range=0.2)
    return transformers.LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                    bos_token_id=1, eos_token_id=2, initializer_range=0.2)


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def pair(request, tmp_path_factory):
    """(HF model, lmkit model) with the same weights."""
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(_hf_config(request.param), attn_implementation="eager").eval()
    path = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(path)
    return hf, load_pretrained(path)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    torch.manual_seed(1)
    hf = transformers.AutoModelForCausalLM.from_config(_hf_config("llama"), attn_implementation="eager").eval()
    path = tmp_path_factory.mktemp("llama1")
    hf.save_pretrained(path)
    return load_pretrained(path)


def hf_generate(hf, prompts, **kw):
    """transformers.generate on a left-padded batch -> new tokens per row, trailing padding removed."""
    t = max(map(len, prompts))
    ids = torch.tensor([[0] * (t - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (t - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        out = hf.generate(ids, attention_mask=mask, pad_token_id=0, **kw)
    rows = []
    for row in out[:, t:].tolist():
        if 2 in row:  # EOS ends the row; HF pads after it
            row = row[: row.index(2) + 1]
        rows.append(row)
    return rows


def ours_rows(out):
    return [list(s) for s in out.sequences]


BATCHES = [PROMPTS[:1], PROMPTS[1:2], PROMPTS[:2], PROMPTS[:3], PROMPTS]


@pytest.mark.parametrize("prompts", BATCHES, ids=lambda p: f"batch{len(p)}")
def test_greedy_matches_transformers(pair, prompts):
    hf, ours = pair
    out = generate(ours, prompts, max_new_tokens=12)
    assert ours_rows(out) == hf_generate(hf, prompts, max_new_tokens=12, do_sample=False)


BEAM_CASES = [
    dict(num_beams=2),
    dict(num_beams=3, length_penalty=0.5, early_stopping=True),
    dict(num_beams=4, length_penalty=-1.0, early_stopping="never"),
    dict(num_beams=3, length_penalty=2.0, early_stopping="never"),
    dict(num_beams=4, length_penalty=1.0, early_stopping=False),
]


@pytest.mark.parametrize("kw", BEAM_CASES, ids=lambda k: "-".join(f"{a}={b}" for a, b in k.items()))
@pytest.mark.parametrize("prompts", [PROMPTS[:1], PROMPTS[:3], PROMPTS], ids=lambda p: f"batch{len(p)}")
def test_beam_search_matches_transformers(pair, prompts, kw):
    hf, ours = pair
    out = generate(ours, prompts, max_new_tokens=10, **kw)
    assert ours_rows(out) == hf_generate(hf, prompts, max_new_tokens=10, do_sample=False, **kw)


def test_beam_search_ends_at_eos_like_transformers(pair):
    """Make EOS likely so hypotheses finish at different lengths (exercises the finished-beam logic)."""
    hf, ours = pair
    bias = torch.zeros(V)
    bias[2] = 3.0
    head = ours.lm_head
    hf_head = hf.get_output_embeddings()
    saved = (head.bias, getattr(hf_head, "bias", None))
    try:
        head.bias = torch.nn.Parameter(bias.clone())
        hf_head.bias = torch.nn.Parameter(bias.clone())
        for kw in BEAM_CASES[:3] + [dict(num_beams=2, early_stopping=True, length_penalty=0.0)]:
            out = generate(ours, PROMPTS[:3], max_new_tokens=8, **kw)
            assert ours_rows(out) == hf_generate(hf, PROMPTS[:3], max_new_tokens=8, do_sample=False, **kw)
        assert any(r == "stop" for r in out.finish_reasons)
    finally:
        head.bias, hf_head.bias = saved


@pytest.mark.parametrize(
    "kw",
    [dict(repetition_penalty=1.5), dict(no_repeat_ngram_size=2), dict(bad_words_ids=[[29], [69, 31]]),
     dict(min_new_tokens=5, repetition_penalty=0.7), dict(num_beams=3, no_repeat_ngram_size=2),
     dict(num_beams=2, repetition_penalty=1.3)],
    ids=str,
)
def test_processors_inside_generation_match_transformers(pair, kw):
    hf, ours = pair
    prompts = [PROMPTS[0]]  # unpadded: HF would also penalise its pad tokens
    out = generate(ours, prompts, max_new_tokens=10, **kw)
    assert ours_rows(out) == hf_generate(hf, prompts, max_new_tokens=10, do_sample=False, **kw)


def test_batch_rows_equal_single_runs(llama):
    together = generate(llama, PROMPTS, max_new_tokens=9, repetition_penalty=1.2, no_repeat_ngram_size=3)
    for i, p in enumerate(PROMPTS):
        alone = generate(llama, [p], max_new_tokens=9, repetition_penalty=1.2, no_repeat_ngram_size=3)
        assert alone.sequences[0] == together.sequences[i]


def test_eos_and_finish_reasons(llama):
    first = generate(llama, PROMPTS, max_new_tokens=6)
    stopper = first.sequences[1][2]  # make row 1's third token an EOS
    out = generate(llama, PROMPTS, max_new_tokens=6, eos_token_id=[stopper, 2])
    assert out.sequences[1] == first.sequences[1][:3]
    assert out.finish_reasons[1] == "stop" and out.stop_reasons[1] == stopper
    for seq, ref, reason in zip(out.sequences, first.sequences, out.finish_reasons):
        cut = next((k + 1 for k, tok in enumerate(ref) if tok in (stopper, 2)), len(ref))
        assert seq == ref[:cut]
        assert reason == ("stop" if cut < len(ref) or ref[-1] in (stopper, 2) else "length")


def test_sampling_seed_is_reproducible(llama):
    kw = dict(max_new_tokens=10, do_sample=True, temperature=1.3, top_k=40, top_p=0.95)
    a = generate(llama, PROMPTS, seed=123, **kw)
    b = generate(llama, PROMPTS, seed=123, **kw)
    c = generate(llama, PROMPTS, seed=124, **kw)
    assert a.sequences == b.sequences and a.sequences != c.sequences
    torch.manual_seed(5)
    d = generate(llama, PROMPTS, **kw)
    torch.manual_seed(5)
    assert generate(llama, PROMPTS, **kw).sequences == d.sequences  # no seed: torch's global RNG


def test_sampling_respects_top_k_1_and_is_greedy(llama):
    greedy = generate(llama, PROMPTS, max_new_tokens=8)
    assert generate(llama, PROMPTS, max_new_tokens=8, do_sample=True, top_k=1, seed=0).sequences == greedy.sequences


@pytest.mark.parametrize("sample", [False, True])
def test_logprobs_are_log_softmax_of_processed_scores(llama, sample):
    kw = dict(max_new_tokens=7, repetition_penalty=1.3, presence_penalty=0.4, frequency_penalty=0.2, top_logprobs=3)
    if sample:
        kw.update(do_sample=True, temperature=0.8, top_k=20, top_p=0.9, seed=3)
    prompts = [PROMPTS[0]]
    out = generate(llama, prompts, **kw)
    cfg = GenerationConfig(**kw)
    procs = build_logits_processors(cfg, len(prompts[0]), [2])
    seq = prompts[0] + out.sequences[0]
    with torch.no_grad():
        logits = llama(torch.tensor([seq])).logits[0].float()
    for k, tok in enumerate(out.sequences[0]):
        pos = len(prompts[0]) + k
        scores = procs(torch.tensor([seq[:pos]]), logits[pos - 1][None])
        expected = torch.log_softmax(scores, -1)[0]
        assert out.logprobs[0][k] == pytest.approx(expected[tok].item(), abs=1e-4)
        top = torch.topk(expected, 3)
        assert list(out.top_logprobs[0][k]) == top.indices.tolist()
        assert list(out.top_logprobs[0][k].values()) == pytest.approx(top.values.tolist(), abs=1e-4)


def test_prompt_longer_than_context_is_a_clear_error(llama):
    with pytest.raises(ConfigError, match="longer than the model's context"):
        generate(llama, [list(range(3, 60))], max_new_tokens=10)
    with pytest.raises(ConfigError, match="outside the vocabulary"):
        generate(llama, [[5, 500]], max_new_tokens=5)
    with pytest.raises(ConfigError, match="empty"):
        generate(llama, [[]], max_new_tokens=5)
    with pytest.raises(ConfigError, match="stop strings need the tokenizer"):
        generate(llama, [[5]], max_new_tokens=5, stop=["x"])


def test_tensor_input_and_attention_mask(llama):
    ids = torch.tensor([[0, 0, 11, 12], [13, 14, 15, 16]])
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    out = generate(llama, ids, attention_mask=mask, max_new_tokens=5)
    assert out.sequences == generate(llama, [[11, 12], [13, 14, 15, 16]], max_new_tokens=5).sequences
    single = generate(llama, torch.tensor([11, 12]), max_new_tokens=5)
    assert single.sequences[0] == out.sequences[0]


# ---- text level: stop strings, generate_text -------------------------------------------
def byte_tokenizer() -> BPETokenizer:
    """256 byte tokens + merges that cut through UTF-8 characters + an EOS special token (id V-1)."""
    toks = {i: bytes([i]) for i in range(256)}
    merges = []

    def add(a: int, b: int) -> int:
        toks[len(toks)] = toks[a] + toks[b]
        merges.append((a, b))
        return len(toks) - 1

    add(add(0xE4, 0xBD), 0xA0)  # 你
    add(0xF0, 0x9F)  # first half of most emoji
    add(ord("\n"), ord("\n"))
    add(ord("A"), ord("B"))
    return BPETokenizer(toks, merges, added_tokens=[AddedToken("<|eos|>", len(toks), special=True)])


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    """A random Llama over the byte tokenizer's vocabulary."""
    tok = byte_tokenizer()
    cfg = transformers.LlamaConfig(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=48,
                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=128, eos_token_id=tok.vocab_size - 1,
                                   initializer_range=0.2)
    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("bytes")
    transformers.LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_hf_json(path / "tokenizer.json")
    return load_pretrained(path), tok, path


def test_stop_string_across_token_boundaries(text_model):
    model, tok, _ = text_model
    prompt = tok.encode("AB")
    free = generate(model, [prompt], max_new_tokens=30, do_sample=True, seed=7, tokenizer=tok)
    full = tok.decode_bytes(free.sequences[0])
    # pick a 3-byte stop string that spans a token boundary inside the generated bytes
    bounds, pos = [], 0
    for t in free.sequences[0]:
        pos += len(tok.token_bytes(t))
        bounds.append(pos)
    def valid(chunk: bytes) -> bool:
        try:
            return chunk.decode("utf-8").isprintable()
        except UnicodeDecodeError:
            return False

    cut = next(b for b in bounds[2:-1] if valid(full[b - 1 : b + 1]) and full.find(full[b - 1 : b + 1]) == b - 1)
    stop = full[cut - 1 : cut + 1].decode("utf-8")
    out = generate(model, [prompt], max_new_tokens=30, do_sample=True, seed=7, tokenizer=tok, stop=[stop, "unused"])
    assert out.finish_reasons == ["stop"] and out.stop_reasons == [stop]
    start = full.find(stop.encode())
    assert out.texts[0] == full[:start].decode("utf-8", "replace")
    # the tokens run up to the one that completed the stop string
    assert tok.decode_bytes(out.sequences[0]).find(stop.encode()) == start
    assert len(tok.decode_bytes(out.sequences[0][:-1])) < start + len(stop.encode())
    assert generate_text(model, tok, "AB", max_new_tokens=30, do_sample=True, seed=7, stop=stop) == out.texts[0]
    assert "".join(stream_text(model, tok, "AB", max_new_tokens=30, do_sample=True, seed=7, stop=stop)) == out.texts[0]


def test_generate_text_batch_drops_eos(text_model):
    model, tok, _ = text_model
    texts = generate_text(model, tok, ["AB", "你好", "x"], max_new_tokens=12)
    out = generate(model, [tok.encode(p) for p in ["AB", "你好", "x"]], max_new_tokens=12)
    eos = tok.vocab_size - 1
    for text, seq in zip(texts, out.sequences):
        assert text == tok.decode([t for t in seq if t != eos])


def test_cli_generate(text_model):
    from click.testing import CliRunner

    from lmkit.cli import cli

    model, tok, path = text_model
    expected = generate_text(model, tok, "AB", max_new_tokens=8)
    res = CliRunner().invoke(cli, ["generate", str(path), "--prompt", "AB", "--max-new-tokens", "8"])
    assert res.exit_code == 0, res.output
    assert res.output == "AB" + expected + "\n"
    res = CliRunner().invoke(cli, ["generate", str(path), "--prompt", "AB", "--max-new-tokens", "8", "--stream"])
    assert res.exit_code == 0 and res.output == "AB" + expected + "\n"
    res = CliRunner().invoke(cli, ["generate", str(path), "--prompt", "AB", "--max-new-tokens", "500"])
    assert res.exit_code != 0 and "longer than the model's context" in res.output
    sampled = CliRunner().invoke(cli, ["generate", str(path), "--prompt", "AB", "--max-new-tokens", "8",
                                       "--temperature", "0.8", "--top-k", "20", "--top-p", "0.9", "--seed", "1",
                                       "--json"])
    assert sampled.exit_code == 0, sampled.output
    assert json.loads(sampled.output)["text"] == generate_text(model, tok, "AB", max_new_tokens=8, do_sample=True,
                                                               temperature=0.8, top_k=20, top_p=0.9, seed=1)


# ---- the fused decode step -------------------------------------------------------------
def _lmkit_model(kind: str):
    from lmkit.models.config import ModelConfig
    from lmkit.models.decoder import DecoderLM

    common = dict(vocab_size=V, d_model=32, n_layers=2, n_heads=4, d_ff=48, max_seq_len=64, initializer_range=0.2)
    kinds = {
        "llama-gqa": dict(n_kv_heads=2),
        "mqa-rope-linear": dict(n_kv_heads=1, rope_scaling="linear", rope_scaling_factor=2.0),
        "qwen2": dict(n_kv_heads=2, qkv_bias=True, tie_embeddings=True),
        "gpt2": dict(norm="layernorm", activation="gelu_tanh", gated_ffn=False, position="learned", qkv_bias=True,
                     o_bias=True, ffn_bias=True, tie_embeddings=True),
        "mistral-wide-window": dict(n_kv_heads=2, sliding_window=60),
    }
    torch.manual_seed(0)
    return DecoderLM(ModelConfig(**common, **kinds[kind])).eval()


@pytest.mark.parametrize("kind", ["llama-gqa", "mqa-rope-linear", "qwen2", "gpt2", "mistral-wide-window"])
def test_fused_step_equals_model_forward(kind):
    from lmkit.infer.fused_step import FusedDecoder
    from lmkit.infer.runner import ModelRunner

    model = _lmkit_model(kind)
    assert FusedDecoder.unsupported(model, 40) is None
    prompts = torch.tensor([[3, 4, 5, 6, 7], [0, 0, 8, 9, 10]])
    mask = torch.zeros(2, 40, dtype=torch.long)
    mask[0], mask[1, 2:] = 1, 1
    new = torch.tensor([[11, 12, 13], [14, 15, 16]])
    with torch.inference_mode():
        outs = []
        for fused in (True, False):
            cache = model.make_cache(2, 40)
            runner = ModelRunner(model, 2, 40, mask, fused)
            assert (runner.fused is not None) == fused
            runner.prefill(prompts, cache)
            one = runner.step(new[:, :1], cache)  # a decode step
            many = runner.step(new[:, 1:], cache, last_only=False)  # several tokens (speculative verify)
            outs.append((one, many))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outs[0][1], outs[1][1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_prefill_and_steps_without_padding(dtype):
    """No padding: the prompt runs through the fused step too (oneDNN GEMMs on CPU), same logits."""
    from lmkit.infer.runner import ModelRunner

    model = _lmkit_model("llama-gqa").to(dtype)
    prompt, new = torch.tensor([[3, 4, 5, 6, 7, 8, 9]]), torch.tensor([[11], [12]])
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=0.05, atol=0.05)
    with torch.inference_mode():
        outs = []
        for fused in (True, False):
            cache = model.make_cache(1, 20)
            runner = ModelRunner(model, 1, 20, None, fused)
            logits = [runner.prefill(prompt, cache)] + [runner.step(t[None], cache) for t in new]
            outs.append(torch.cat(logits, 1).float())
    torch.testing.assert_close(outs[0], outs[1], **tol)


def test_fused_step_falls_back_when_unsupported():
    from lmkit.infer.fused_step import FusedDecoder
    from lmkit.models.config import ModelConfig
    from lmkit.models.decoder import DecoderLM

    base = dict(vocab_size=V, d_model=32, n_layers=1, n_heads=4, d_ff=48, max_seq_len=64)
    assert "mixture" in FusedDecoder.unsupported(DecoderLM(ModelConfig(**base, n_experts=2)).eval(), 20)
    assert "sliding" in FusedDecoder.unsupported(DecoderLM(ModelConfig(**base, sliding_window=8)).eval(), 20)
    assert "alibi" in FusedDecoder.unsupported(DecoderLM(ModelConfig(**base, position="alibi")).eval(), 20)
    assert "training" in FusedDecoder.unsupported(DecoderLM(ModelConfig(**base)).train(), 20)
    moe = DecoderLM(ModelConfig(**base, n_experts=2, initializer_range=0.2)).eval()
    assert generate(moe, PROMPTS[:2], max_new_tokens=4).sequences == \
        generate(moe, PROMPTS[:2], max_new_tokens=4, fused=False).sequences


def test_fused_weights_follow_parameter_updates(llama):
    before = generate(llama, PROMPTS[:2], max_new_tokens=6).sequences
    with torch.no_grad():
        llama.layers[0].self_attn.q_proj.weight.mul_(3.0)
    try:
        assert generate(llama, PROMPTS[:2], max_new_tokens=6).sequences == \
            generate(llama, PROMPTS[:2], max_new_tokens=6, fused=False).sequences
    finally:
        with torch.no_grad():
            llama.layers[0].self_attn.q_proj.weight.div_(3.0)
    assert generate(llama, PROMPTS[:2], max_new_tokens=6).sequences == before


@pytest.mark.parametrize("kw", [dict(), dict(num_beams=3, length_penalty=0.5)], ids=["greedy", "beam"])
def test_unfused_path_matches_transformers(pair, kw):
    hf, ours = pair
    out = generate(ours, PROMPTS, max_new_tokens=10, fused=False, **kw)
    assert ours_rows(out) == hf_generate(hf, PROMPTS, max_new_tokens=10, do_sample=False, **kw)
