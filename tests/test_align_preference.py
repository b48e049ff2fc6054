"""Preference pairs: JSONL loading, prompt masking, padding, bad input with line numbers."""

from __future__ import annotations

import json

import pytest
import torch

from lmkit.align.logprobs import completion_logprobs
from lmkit.align.reward_model import RewardModel, last_token_index
from lmkit.align.synthetic import toy_char_tokenizer
from lmkit.data.preference import (
    PreferenceDataError,
    PreferencePair,
    collate_pairs,
    load_preference_jsonl,
    tokenize_pair,
    tokenize_pairs,
)
from lmkit.models.config import ModelConfig
from lmkit.models.decoder import DecoderLM
from lmkit.tokenizers import CHATML, BPETokenizer

TOK = toy_char_tokenizer()


def tiny(seed=0):
    torch.manual_seed(seed)
    return DecoderLM(ModelConfig(vocab_size=TOK.vocab_size, d_model=32, n_layers=2, n_heads=2, d_ff=64, max_seq_len=32,
                                 pad_token_id=0, eos_token_id=3, model_type="llama")).eval()


def write(tmp_path, rows):
    p = tmp_path / "prefs.jsonl"
    p.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return p


def test_load_and_tokenize_plain_text(tmp_path):
    p = write(tmp_path, [{"prompt": "ab", "chosen": "cd", "rejected": "efg"}, "", {"prompt": "h", "chosen": "a", "rejected": "b"}])
    pairs = load_preference_jsonl(p)
    assert [x.line for x in pairs] == [1, 3]
    tp = tokenize_pair(pairs[0], TOK, 16, bos_id=2, eos_id=3)
    assert tp.prompt_ids == [2] + TOK.encode("ab")
    assert tp.chosen_ids == [2] + TOK.encode("ab") + TOK.encode("cd") + [3]
    assert tp.chosen_mask == [0, 0, 0, 1, 1, 1]
    assert tp.rejected_mask == [0, 0, 0, 1, 1, 1, 1]


@pytest.mark.parametrize("row, match", [
    ({"prompt": "a", "chosen": "b"}, r"prefs.jsonl:2: missing field\(s\) \['rejected'\]"),
    ({"prompt": "a", "chosen": "b", "rejected": "b"}, "prefs.jsonl:2: 'chosen' and 'rejected' are identical"),
    ({"prompt": "a", "chosen": "", "rejected": "b"}, "prefs.jsonl:2: 'chosen' is empty"),
    ({"prompt": 3, "chosen": "a", "rejected": "b"}, "prefs.jsonl:2: 'prompt' must be a string"),
    ({"prompt": "a", "chosen": [{"role": "user", "content": "x"}], "rejected": "b"}, "prefs.jsonl:2: 'chosen' must be the assistant"),
    ("{not json", "prefs.jsonl:2: not valid JSON"),
    ("[1, 2]", "prefs.jsonl:2: a preference row must be a JSON object"),
])
def test_bad_rows_name_the_line(tmp_path, row, match):
    p = write(tmp_path, [{"prompt": "a", "chosen": "b", "rejected": "c"}, row])
    with pytest.raises(PreferenceDataError, match=match):
        load_preference_jsonl(p)


def test_prompt_longer_than_context_and_truncation(tmp_path):
    p = write(tmp_path, [{"prompt": "a", "chosen": "b", "rejected": "c"}, {"prompt": "abcdefgh" * 3, "chosen": "a", "rejected": "b"}])
    pairs = load_preference_jsonl(p)
    with pytest.raises(PreferenceDataError, match=r"prefs.jsonl:2: prompt of 24 tokens leaves no room .* context of 16"):
        tokenize_pairs(pairs, TOK, 16, source=str(p))
    long = PreferencePair("ab", "abcdefgh", "hbcdefga", line=7)
    tp = tokenize_pair(long, TOK, 6)  # completion truncated to fit
    assert len(tp.chosen_ids) == 6 and tp.chosen_mask == [0, 0, 1, 1, 1, 1]
    with pytest.raises(PreferenceDataError, match="line 7: prompt \\+ chosen is 10 tokens"):
        tokenize_pair(long, TOK, 6, truncation="error")
    same_start = PreferencePair("ab", "abcdefgh", "abcdefga", line=8)
    with pytest.raises(PreferenceDataError, match="line 8: 'chosen' and 'rejected' are the same token sequence after truncation"):
        tokenize_pair(same_start, TOK, 6)
    with pytest.raises(PreferenceDataError, match="does not exist"):
        load_preference_jsonl(tmp_path / "nope.jsonl")


def test_chat_rows_mask_only_the_reply():
    tok = BPETokenizer.train(["hello there how are you", "fine thanks bad"], vocab_size=300,
                             special_tokens=["<|im_start|>", "<|im_end|>"])
    pair = PreferencePair([{"role": "user", "content": "how are you"}], "fine thanks", [{"role": "assistant", "content": "bad"}], 4)
    tp = tokenize_pair(pair, tok, 256, template=CHATML)
    prompt_text = CHATML.render(pair.prompt, add_generation_prompt=True)
    n_prompt = len(tok.encode(prompt_text, allowed_special="all"))
    assert tp.chosen_ids[:n_prompt] == tok.encode(prompt_text, allowed_special="all")
    reply = [i for i, m in zip(tp.chosen_ids, tp.chosen_mask) if m]
    assert tok.decode(reply) == "fine thanks<|im_end|>"
    assert tok.decode([i for i, m in zip(tp.rejected_ids, tp.rejected_mask) if m]) == "bad<|im_end|>"
    with pytest.raises(PreferenceDataError, match="line 4: chat-format rows need a chat template"):
        tokenize_pair(pair, tok, 256)


def test_padding_sides_give_the_same_logprobs_and_rewards():
    pairs = tokenize_pairs([PreferencePair("ab", "cdd", "e"), PreferencePair("abcdef", "g", "hhhh")], TOK, 16, bos_id=2, eos_id=3)
    lm = tiny()
    right = collate_pairs(pairs, 0, "right")
    left = collate_pairs(pairs, 0, "left")
    a = completion_logprobs(lm, right["input_ids"], right["attention_mask"], right["completion_mask"])
    b = completion_logprobs(lm, left["input_ids"], left["attention_mask"], left["completion_mask"])
    torch.testing.assert_close(a.sum, b.sum, rtol=1e-5, atol=1e-5)
    # oracle: each sequence alone, no padding, prefix by prefix
    seqs = [p.chosen_ids for p in pairs] + [p.rejected_ids for p in pairs]
    masks = [p.chosen_mask for p in pairs] + [p.rejected_mask for p in pairs]
    for k, (s, m) in enumerate(zip(seqs, masks)):
        total = 0.0
        for t in range(1, len(s)):
            if m[t]:
                logits = lm(torch.tensor([s[:t]])).logits[0, -1]
                total += torch.log_softmax(logits.double(), -1)[s[t]].item()
        assert a.sum[k].item() == pytest.approx(total, abs=1e-4)
        assert a.lengths[k].item() == sum(m)
    rm = RewardModel(tiny(1)).eval()
    with torch.no_grad():
        r_right = rm(right["input_ids"], right["attention_mask"])
        r_left = rm(left["input_ids"], left["attention_mask"])
        r_alone = torch.stack([rm(torch.tensor([s]))[0] for s in seqs])
    torch.testing.assert_close(r_right, r_alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(r_left, r_alone, rtol=1e-5, atol=1e-5)
    assert last_token_index(right["attention_mask"], right["input_ids"].shape[1]).tolist() == [len(s) - 1 for s in seqs]
