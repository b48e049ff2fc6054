"""SFT data: reading OpenAI/Alpaca files, assistant-only labels, packing boundaries."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmkit.data.sft import (
    IGNORE,
    PadCollate,
    SFTDataError,
    SFTExample,
    load_sft_examples,
    pack_examples,
    read_sft_file,
    sft_loader,
    tokenize_conversation,
)
from lmkit.models.config import ModelConfig
from lmkit.models.decoder import DecoderLM
from lmkit.tokenizers import BPETokenizer
from lmkit.tokenizers.chat_template import CHATML, LLAMA3

TEXT = "What is two plus two? Four. Name a colour. Blue. Say hi. Hi there! You are a helpful assistant.\n" * 10


@pytest.fixture(scope="module")
def tok():
    return BPETokenizer.train([TEXT], vocab_size=300, special_tokens=CHATML.special_tokens + LLAMA3.special_tokens)


CHAT_ROWS = [
    {"messages": [{"role": "user", "content": "What is two plus two?"}, {"role": "assistant", "content": "Four."}]},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."},
                  {"role": "assistant", "content": "Blue."}, {"role": "user", "content": "Say hi."},
                  {"role": "assistant", "content": "Hi there!"}]},
]
ALPACA_ROWS = [
    {"instruction": "Say hi.", "input": "", "output": "Hi there!"},
    {"instruction": "Name a colour.", "input": "not red", "output": "Blue."},
]


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def test_reads_openai_jsonl_and_alpaca_json(tmp_path):
    convs = read_sft_file(write_jsonl(tmp_path / "chat.jsonl", CHAT_ROWS))
    assert convs[1][3] == {"role": "user", "content": "Say hi."}
    p = tmp_path / "alpaca.json"
    p.write_text(json.dumps(ALPACA_ROWS), encoding="utf-8")
    convs = read_sft_file(p)
    assert convs[0] == [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi there!"}]
    assert convs[1][0]["content"] == "Name a colour.\n\nnot red"
    # the same rows as JSONL read the same
    assert read_sft_file(write_jsonl(tmp_path / "alpaca.jsonl", ALPACA_ROWS)) == convs


@pytest.mark.parametrize(
    "bad_line, match",
    [
        ("{not json", r":3: not valid JSON"),
        (json.dumps({"text": "hello"}), r":3: row has neither 'messages'"),
        (json.dumps({"messages": [{"role": "user", "content": "hi"}]}), r":3: .*no assistant message"),
        (json.dumps({"messages": [{"role": "robot", "content": "x"}]}), r":3: message 0 has unknown role 'robot'"),
        (json.dumps({"messages": [{"role": "user", "content": 5}]}), r":3: message 0: 'content' must be a string"),
        (json.dumps({"instruction": "x", "output": None}), r":3: Alpaca field 'output' must be a string"),
    ],
)
def test_malformed_rows_name_the_line(tmp_path, bad_line, match):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps(CHAT_ROWS[0]) + "\n\n" + bad_line + "\n", encoding="utf-8")  # line 2 blank
    with pytest.raises(SFTDataError, match=match):
        read_sft_file(p)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(SFTDataError, match="does not exist"):
        read_sft_file(tmp_path / "nope.jsonl")
    (tmp_path / "e.jsonl").write_text("\n", encoding="utf-8")
    with pytest.raises(SFTDataError, match="no examples"):
        read_sft_file(tmp_path / "e.jsonl")


@pytest.mark.parametrize("template", [CHATML, LLAMA3])
def test_labels_only_on_assistant_tokens(tok, template, tmp_path):
    examples = load_sft_examples(write_jsonl(tmp_path / "c.jsonl", CHAT_ROWS), tok, template)
    for row, ex in zip(CHAT_ROWS, examples):
        ids, mask = template.render_with_mask(row["messages"], tok)
        assert ex.input_ids == ids
        assert ex.labels == [i if m else IGNORE for i, m in zip(ids, mask)]
        trained = [i for i in ex.labels if i != IGNORE]
        replies = [m["content"] for m in row["messages"] if m["role"] == "assistant"]
        assert tok.decode(trained) == "".join(r + template.end_of_turn for r in replies)


def test_labels_match_transformers_assistant_mask():
    """Independent oracle: transformers' apply_chat_template(return_assistant_tokens_mask=True)."""
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    from tests.test_chat_template import QWEN2_JINJA_GEN

    words = ["<|im_start|>", "<|im_end|>", "system", "user", "assistant", "\n", "You", "are", "a", "helpful",
             "assistant.", "Hi", "there!", "Say", "hi."]
    vocab = {"<unk>": 0, **{w: i + 1 for i, w in enumerate(words)}}
    tk = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = tokenizers.pre_tokenizers.Split(tokenizers.Regex(r"\n| "), behavior="isolated")
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, chat_template=QWEN2_JINJA_GEN, unk_token="<unk>")
    hf.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    conv = [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi there!"}]
    out = hf.apply_chat_template(conv, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ex = tokenize_conversation(conv, hf, CHATML)
    assert ex.input_ids == out["input_ids"]
    assert [int(label != IGNORE) for label in ex.labels] == out["assistant_masks"]


def tiny_model(vocab: int) -> DecoderLM:
    torch.manual_seed(0)
    return DecoderLM(ModelConfig(vocab_size=vocab, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64,
                                 max_seq_len=128, norm="rmsnorm", activation="silu", gated_ffn=True,
                                 position="rope")).eval()


def per_token_loss(logits, labels):
    targets = F.pad(labels, (0, 1), value=IGNORE)[..., 1:]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE,
                           reduction="none").reshape(targets.shape)


def test_packed_row_gives_each_example_its_own_loss(tok, tmp_path):
    examples = load_sft_examples(write_jsonl(tmp_path / "c.jsonl", CHAT_ROWS * 2), tok, CHATML)
    model = tiny_model(tok.vocab_size)
    seq_len = sum(len(e) for e in examples[:3]) + 5
    rows = pack_examples(examples[:3], seq_len)
    assert len(rows) == 1
    row = rows[0]
    with torch.no_grad():
        packed = per_token_loss(model(row["input_ids"][None], document_ids=row["document_ids"][None]).logits,
                                row["labels"][None])[0]
        start = 0
        for ex in examples[:3]:
            n = len(ex)
            alone = per_token_loss(model(torch.tensor([ex.input_ids])).logits, torch.tensor([ex.labels]))[0]
            assert torch.allclose(packed[start:start + n], alone, atol=1e-5)
            start += n
        # without document_ids the later examples see the earlier ones: the losses differ
        leaky = per_token_loss(model(row["input_ids"][None]).logits, row["labels"][None])[0]
        assert (leaky - packed).abs().max() > 1e-3


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lengths=st.lists(st.integers(2, 12), min_size=1, max_size=12), seq_len=st.integers(4, 16))
def test_packing_invariants(lengths, seq_len):
    examples = [SFTExample(list(range(1, n + 1)), [IGNORE] + list(range(2, n + 1))) for n in lengths]
    rows = pack_examples(examples, seq_len, pad_id=0)
    kept = sum(min(n, seq_len) for n in lengths)
    assert sum(int((r["document_ids"] >= 0).sum()) for r in rows) == kept  # nothing lost, nothing duplicated
    for r in rows:
        assert r["input_ids"].shape == (seq_len,)
        docs = r["document_ids"]
        # each example is contiguous, starts with an ignored label, padding is ignored
        starts = torch.ones_like(docs, dtype=torch.bool)
        starts[1:] = docs[1:] != docs[:-1]
        assert (r["labels"][starts] == IGNORE).all()
        assert (r["labels"][docs < 0] == IGNORE).all()
        seen = docs[docs >= 0].unique_consecutive()
        assert len(seen) == len(docs[docs >= 0].unique())


def test_pad_collate_and_loader(tok, tmp_path):
    examples = load_sft_examples(write_jsonl(tmp_path / "c.jsonl", CHAT_ROWS), tok, "chatml")
    batch = PadCollate(pad_id=0)([{"input_ids": torch.tensor(e.input_ids), "labels": torch.tensor(e.labels)}
                                  for e in examples])
    n0 = len(examples[0])
    assert batch["attention_mask"][0].sum() == n0 and (batch["labels"][0, n0:] == IGNORE).all()
    loader = sft_loader(examples, 2, pack=True, seq_len=64, shuffle=False)
    (b,) = list(loader)
    assert set(b) == {"input_ids", "labels", "document_ids"}
    model = tiny_model(tok.vocab_size)
    assert torch.isfinite(model(**b).loss)


def test_document_ids_errors():
    model = tiny_model(50)
    ids = torch.zeros(1, 6, dtype=torch.long)
    with pytest.raises(ValueError, match="document_ids has shape"):
        model(ids, document_ids=torch.zeros(1, 5, dtype=torch.long))


def test_truncation_drops_examples_without_targets(tok, tmp_path):
    from lmkit.errors import ConfigError

    path = write_jsonl(tmp_path / "c.jsonl", CHAT_ROWS)
    with pytest.raises(ConfigError, match="raise max_len"):
        load_sft_examples(path, tok, CHATML, max_len=4)
