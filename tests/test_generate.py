"""`generate` and beam search against `transformers.generate` on the same random weights.

A Hugging Face model built from a tiny config is saved with save_pretrained and loaded into
lmkit with load_pretrained; both then decode the same prompts (batched, left-padded) and
must produce the same token ids: greedy, beam search (num_beams 2-4, length penalty,
early stopping variants), and sampling (both draw from torch's global RNG in the same
order, so even sampled tokens agree). Plus logprobs, seeds, stop strings across token
boundaries and the errors people hit.
"""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from lmkit.errors import ConfigError
from lmkit.hub import load_pretrained
from lmkit.infer import GenerationConfig, generate, stream_generate
from lmkit.tokenizers.bpe import BPETokenizer

transformers = pytest.importorskip("transformers")
lp = pytest.importorskip("transformers.generation.logits_process")

V = 61
EOS, PAD = 2, 0


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread avoids OpenMP overhead on a busy 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _hf_config(kind: str, init: float):
    if kind == "gpt2":
        return transformers.GPT2Config(vocab_size=V, n_positions=64, n_embd=32, n_layer=2, n_head=4, bos_token_id=1,
                                       eos_token_id=EOS, pad_token_id=PAD, initializer_range=init)
    return transformers.LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                    bos_token_id=1, eos_token_id=EOS, pad_token_id=PAD, initializer_range=init)


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def pair(request, tmp_path_factory):
    """(HF model, the same weights loaded by lmkit). A large init makes the distributions peaked
    enough that EOS is hit by some rows and not by others."""
    torch.manual_seed(0)
    cls = transformers.GPT2LMHeadModel if request.param == "gpt2" else transformers.LlamaForCausalLM
    hf = cls(_hf_config(request.param, 0.3)).eval()
    path = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(path)
    return hf, load_pretrained(path)


def left_pad(prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), PAD)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    return ids, mask


PROMPTS = {
    1: [[5, 17, 33, 8]],
    3: [[5, 17, 33, 8, 40, 12, 9], [44, 3], [30, 31, 32, 33]],
}


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("eos", [EOS, [EOS, 7, 19]])
def test_greedy_matches_transformers(pair, batch, eos):
    hf, lm = pair
    ids, mask = left_pad(PROMPTS[batch])
    with torch.no_grad():
        ref = hf.generate(ids, attention_mask=mask, max_new_tokens=14, do_sample=False, eos_token_id=eos,
                          pad_token_id=PAD)
    out = generate(lm, ids, attention_mask=mask, max_new_tokens=14, eos_token_id=eos, pad_token_id=PAD)
    assert torch.equal(out.sequences, ref)
    # the same prompts as ragged lists (padded inside generate) give the same result
    again = generate(lm, PROMPTS[batch], max_new_tokens=14, eos_token_id=eos, pad_token_id=PAD)
    assert again.token_ids == out.token_ids
    for row, reason in zip(out.token_ids, out.finish_reasons):
        assert (reason == "stop") == (row[-1] in ([eos] if isinstance(eos, int) else eos))


def test_some_rows_stop_at_eos_and_some_do_not(pair):
    """Guard for the parity tests: EOS must actually be exercised."""
    _, lm = pair
    reasons = set()
    for batch, eos in itertools.product((1, 3), (EOS, [EOS, 7, 19])):
        reasons |= set(generate(lm, PROMPTS[batch], max_new_tokens=14, eos_token_id=eos).finish_reasons)
    assert reasons == {"stop", "length"}


BEAM_CASES = [  # (num_beams, length_penalty, early_stopping, eos)
    (2, 1.0, False, EOS), (3, 0.5, True, EOS), (4, -1.0, "never", [EOS, 7]), (3, 2.0, "never", EOS),
    (2, 0.0, True, [EOS, 7, 19]), (4, 1.0, False, [EOS, 7, 19]),
]


@pytest.mark.parametrize("num_beams,length_penalty,early_stopping,eos", BEAM_CASES)
@pytest.mark.parametrize("batch", [1, 3])
def test_beam_search_matches_transformers(pair, batch, num_beams, length_penalty, early_stopping, eos):
    hf, lm = pair
    ids, mask = left_pad(PROMPTS[batch])
    kw = dict(max_new_tokens=9, num_beams=num_beams, length_penalty=length_penalty, early_stopping=early_stopping,
              eos_token_id=eos, pad_token_id=PAD, num_return_sequences=num_beams)
    with torch.no_grad():
        ref = hf.generate(ids, attention_mask=mask, do_sample=False, output_scores=True, return_dict_in_generate=True,
                          **kw)
    out = generate(lm, ids, attention_mask=mask, **kw)
    assert torch.equal(out.sequences, ref.sequences)
    torch.testing.assert_close(out.sequence_scores, ref.sequences_scores, rtol=1e-4, atol=1e-4)


def test_beam_search_min_new_tokens_and_penalties_match(pair):
    hf, lm = pair
    ids, mask = left_pad(PROMPTS[3])
    kw = dict(max_new_tokens=8, min_new_tokens=4, num_beams=3, eos_token_id=[EOS, 7, 19], pad_token_id=PAD,
              no_repeat_ngram_size=2)
    with torch.no_grad():
        ref = hf.generate(ids, attention_mask=mask, do_sample=False, **kw)
    assert torch.equal(generate(lm, ids, attention_mask=mask, **kw).sequences, ref)


@pytest.mark.parametrize("options", [
    dict(repetition_penalty=1.5),
    dict(no_repeat_ngram_size=2, min_new_tokens=6),
    dict(bad_words_ids=[[11], [5, 17], [40, 12, 9]], repetition_penalty=0.8),
])
def test_greedy_with_processors_matches_transformers(pair, options):
    hf, lm = pair
    ids = torch.tensor([[5, 17, 33, 8, 40, 12], [44, 3, 9, 5, 17, 21]])  # unpadded: HF penalises pad ids too
    kw = dict(max_new_tokens=12, eos_token_id=[EOS, 7], pad_token_id=PAD, **options)
    with torch.no_grad():
        ref = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, **kw)
    assert torch.equal(generate(lm, ids, **kw).sequences, ref)


@pytest.mark.parametrize("options", [
    dict(temperature=0.7, top_k=12),
    dict(top_p=0.8, min_p=0.05, top_k=0),  # top_k=0: transformers would apply its default top_k=50
    dict(temperature=1.3, top_k=30, top_p=0.95),
])
def test_sampling_matches_transformers_draw_for_draw(pair, options):
    """Both sample with torch.multinomial from the global RNG in the same order."""
    hf, lm = pair
    ids, mask = left_pad(PROMPTS[3])
    kw = dict(max_new_tokens=12, do_sample=True, eos_token_id=EOS, pad_token_id=PAD, **options)
    torch.manual_seed(11)
    with torch.no_grad():
        ref = hf.generate(ids, attention_mask=mask, **kw)
    torch.manual_seed(11)
    assert torch.equal(generate(lm, ids, attention_mask=mask, **kw).sequences, ref)


# ---- logprobs ------------------------------------------------------------------------------
def test_logprobs_are_log_softmax_of_the_processed_scores(pair):
    """Recompute every step without a cache: logits -> HF processors -> log_softmax."""
    hf, lm = pair
    cfg = GenerationConfig(max_new_tokens=8, do_sample=True, temperature=0.7, top_k=10, repetition_penalty=1.3,
                           eos_token_id=[], seed=3, top_logprobs=4)
    prompt = [5, 17, 33, 8]
    out = generate(lm, [prompt], cfg)
    toks = out.token_ids[0]
    assert len(out.logprobs[0]) == len(toks) == 8
    procs = lp.LogitsProcessorList([lp.RepetitionPenaltyLogitsProcessor(1.3), lp.TemperatureLogitsWarper(0.7),
                                    lp.TopKLogitsWarper(10)])
    with torch.no_grad():
        for j, tok in enumerate(toks):
            ids = torch.tensor([prompt + toks[:j]])
            scores = procs(ids, hf(ids).logits[:, -1])
            logp = scores.log_softmax(-1)[0]
            assert out.logprobs[0][j] == pytest.approx(float(logp[tok]), abs=1e-4)
            top = out.top_logprobs[0][j]
            assert [t for t, _ in top] == logp.topk(4).indices.tolist()
            assert [v for _, v in top] == pytest.approx(logp.topk(4).values.tolist(), abs=1e-4)


# ---- seeds and shapes ----------------------------------------------------------------------
def test_seed_reproducible_and_num_return_sequences(pair):
    _, lm = pair
    cfg = GenerationConfig(max_new_tokens=10, do_sample=True, top_p=0.95, seed=123, eos_token_id=[],
                           num_return_sequences=3)
    a = generate(lm, PROMPTS[3][:2], cfg)
    b = generate(lm, PROMPTS[3][:2], cfg)
    c = generate(lm, PROMPTS[3][:2], cfg.replace(seed=124))
    assert a.token_ids == b.token_ids and a.token_ids != c.token_ids
    assert len(a.token_ids) == 6 and a.sequences.shape == (6, 7 + 10)
    assert len({tuple(t) for t in a.token_ids[:3]}) > 1  # three different samples of prompt 0
    assert a.prompt_lengths == [7, 7, 7, 2, 2, 2]


def test_max_new_tokens_zero_and_defaults_from_model_config(pair):
    _, lm = pair
    out = generate(lm, [[5, 6]], max_new_tokens=0)
    assert out.token_ids == [[]] and out.sequences.tolist() == [[5, 6]]
    cfg_out = generate(lm, [[5, 6, 7]], max_new_tokens=30)  # EOS from the model config (2)
    if cfg_out.finish_reasons[0] == "stop":
        assert cfg_out.token_ids[0][-1] == EOS


# ---- errors -----------------------------------------------------------------------------------
def test_errors_for_people(pair):
    hf, lm = pair
    with pytest.raises(ValueError, match="at least one token"):
        generate(lm, [[]])
    with pytest.raises(ValueError, match="left-padded"):
        generate(lm, torch.tensor([[5, 6, 0]]), attention_mask=torch.tensor([[1, 1, 0]]))
    with pytest.raises(ValueError, match="max_seq_len"):
        generate(lm, [[5] * 65])
    with pytest.raises(ValueError, match=r"\[0, 61\)"):
        generate(lm, [[5, 99]])
    with pytest.raises(ConfigError, match="tokenizer"):
        generate(lm, [[5]], stop=["x"])
    with pytest.raises(ConfigError, match="unknown"):
        generate(lm, [[5]], temprature=0.5)
    if lm.config.position == "learned":
        with pytest.raises(ValueError, match="max_new_tokens"):
            generate(lm, [[5] * 60], max_new_tokens=10)


# ---- stop strings ---------------------------------------------------------------------------
class _Counter:
    def __init__(self) -> None:
        self.seq_len = 0


class ScriptedLM(nn.Module):
    """A 'model' that emits a fixed script of token ids whatever it is fed, to place stop
    strings exactly where a test wants them."""

    def __init__(self, script: list[int], vocab: int = 256) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))
        self.script = script
        self.config = SimpleNamespace(vocab_size=vocab, eos_token_id=None, pad_token_id=None, max_seq_len=4096,
                                      position="rope")

    def make_cache(self, batch: int, max_len: int) -> _Counter:
        return _Counter()

    def forward(self, input_ids, attention_mask=None, position_ids=None, kv_cache=None, num_logits_to_keep=0):
        b, t = input_ids.shape
        if kv_cache.seq_len == 0:
            self.prompt_len = t
        kv_cache.seq_len += t
        step = kv_cache.seq_len - self.prompt_len
        logits = torch.full((b, 1, self.config.vocab_size), -10.0)
        logits[:, :, self.script[min(step, len(self.script) - 1)]] = 10.0
        return SimpleNamespace(logits=logits)


BYTES = BPETokenizer({i: bytes([i]) for i in range(256)}, [])  # one token per byte: every character splits
SCRIPT_TEXT = "Hello, wörld! 你好 STOP and more 😀 text STOP"


@pytest.mark.parametrize("stop,expect", [
    (["STOP"], "Hello, wörld! 你好 "),
    (["and", "wörld"], "Hello, "),  # the earliest match wins, across the 2-byte ö
    (["好 S"], "Hello, wörld! 你"),  # ends inside nothing, starts inside a 3-byte character's tokens
    (["😀"], "Hello, wörld! 你好 STOP and more "),  # a 4-byte emoji = 4 tokens
    (["absent"], SCRIPT_TEXT),
])
def test_stop_strings_across_token_boundaries(stop, expect):
    script = list(SCRIPT_TEXT.encode())
    model = ScriptedLM(script)
    out = generate(model, [[1]], tokenizer=BYTES, stop=stop, max_new_tokens=len(script))
    assert out.text == expect
    if expect == SCRIPT_TEXT:
        assert out.finish_reasons == ["length"] and out.token_ids[0] == script
    else:
        hit = min((SCRIPT_TEXT.find(s), s) for s in stop if s in SCRIPT_TEXT)
        end = len((SCRIPT_TEXT[: hit[0]] + hit[1]).encode())
        assert out.finish_reasons == ["stop"] and out.stop_reasons == [hit[1]]
        assert out.token_ids[0] == script[:end]  # generation ended on the token completing the stop string
    streamed = "".join(d.text for d in stream_generate(model, BYTES, [[1]], stop=stop, max_new_tokens=len(script)))
    assert streamed == expect


def test_stop_string_in_a_batch_ends_only_that_row():
    script = list("abcXYZdef".encode())
    model = ScriptedLM(script)
    out = generate(model, [[1], [2, 3]], tokenizer=BYTES, stop=["YZ"], max_new_tokens=9)
    assert out.texts == ["abcX", "abcX"]
    out = generate(model, [[1]], tokenizer=BYTES, stop=["Q"], max_new_tokens=4)
    assert out.texts == ["abcX"] and out.finish_reasons == ["length"]


def test_stop_strings_on_a_real_model_cut_the_unstopped_output(pair):
    """Choose a stop string that spans a token boundary of an unconstrained output."""
    _, lm = pair
    tok = BPETokenizer({i: bytes([i]) for i in range(V)}, [])  # ids < 61 are the first 61 bytes
    free = generate(lm, [[40, 41]], tokenizer=tok, max_new_tokens=20, eos_token_id=[])
    text = free.text
    stop = text[5:8]  # three tokens
    first = text.find(stop)
    out = generate(lm, [[40, 41]], tokenizer=tok, max_new_tokens=20, eos_token_id=[], stop=stop)
    assert out.text == text[:first]
    assert out.token_ids[0] == free.token_ids[0][: first + 3]
    assert out.finish_reasons == ["stop"] and out.stop_reasons == [stop]


# ---- the CLI ----------------------------------------------------------------------------------
def test_cli_generate_matches_the_api(tmp_path):
    from click.testing import CliRunner

    from lmkit.cli import cli
    from lmkit.hub import save_pretrained
    from lmkit.infer import generate_text
    from lmkit.models.config import ModelConfig
    from lmkit.models.decoder import DecoderLM

    torch.manual_seed(0)
    model = DecoderLM(ModelConfig(vocab_size=256, d_model=32, n_layers=1, n_heads=4, d_ff=48, max_seq_len=64,
                                  model_type="llama", initializer_range=0.2)).eval()
    save_pretrained(model, tmp_path)
    BYTES.save_hf_json(tmp_path / "tokenizer.json")
    runner = CliRunner()
    args = ["generate", str(tmp_path), "--prompt", "Hi 你", "--max-new-tokens", "12", "--seed", "3", "--top-k", "20"]
    res = runner.invoke(cli, args)
    assert res.exit_code == 0, res.output
    expect = generate_text(load_pretrained(tmp_path), BYTES, "Hi 你", max_new_tokens=12, do_sample=True, top_k=20,
                           seed=3)
    assert res.output == expect + "\n"
    streamed = runner.invoke(cli, args + ["--stream"])
    assert streamed.exit_code == 0 and streamed.output == expect + "\n"
    greedy = runner.invoke(cli, ["generate", str(tmp_path), "-p", "Hi", "--temperature", "0", "--max-new-tokens", "5"])
    assert greedy.output == generate_text(model, BYTES, "Hi", max_new_tokens=5) + "\n"
    missing = runner.invoke(cli, ["generate", str(tmp_path / "nope"), "-p", "x"])
    assert missing.exit_code != 0
    (tmp_path / "tokenizer.json").unlink()
    no_tok = runner.invoke(cli, ["generate", str(tmp_path), "-p", "x"])
    assert no_tok.exit_code != 0 and "tokenizer" in no_tok.output


def test_outputs_are_ordinary_tensors_usable_with_autograd(pair):
    """RL fine-tuning feeds generated sequences back through the model with gradients."""
    _, lm = pair
    for kw in (dict(max_new_tokens=4), dict(max_new_tokens=4, num_beams=2)):
        seq = generate(lm, [[5, 6, 7]], **kw).sequences
        assert not seq.is_inference()
        lm.zero_grad()
        lm(seq).logits.float().logsumexp(-1).sum().backward()
        assert lm.lm_head.weight.grad is not None
    lm.zero_grad()
