"""One loader for every tokenizer file lmkit reads, dispatching on content, not file name."""

from __future__ import annotations

import pytest

from lmkit.errors import TokenizerError
from lmkit.tokenizers import (
    BPETokenizer,
    CharTokenizer,
    UnigramTokenizer,
    WhitespaceTokenizer,
    WordPieceTokenizer,
    load_tokenizer,
)

TEXT = "the quick brown fox jumps over the lazy dog. " * 50


def test_lmkit_formats_round_trip(tmp_path):
    for tok in (BPETokenizer.train([TEXT], vocab_size=300),
                WhitespaceTokenizer.train([TEXT]) if hasattr(WhitespaceTokenizer, "train") else None,
                CharTokenizer.train([TEXT]) if hasattr(CharTokenizer, "train") else None):
        if tok is None:
            continue
        p = tmp_path / f"{type(tok).__name__}.json"
        tok.save(p)
        back = load_tokenizer(p)
        assert type(back) is type(tok)
        assert back.encode("the lazy fox") == tok.encode("the lazy fox")


def test_hf_tokenizer_json_of_each_model_type(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import models, pre_tokenizers, trainers

    cases = [
        (models.BPE(), trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>"]), BPETokenizer,
         pre_tokenizers.ByteLevel(add_prefix_space=False)),
        (models.Unigram(), trainers.UnigramTrainer(vocab_size=60, special_tokens=["<unk>"], unk_token="<unk>"),
         UnigramTokenizer, pre_tokenizers.Metaspace()),
        (models.WordPiece(unk_token="[UNK]"), trainers.WordPieceTrainer(vocab_size=80, special_tokens=["[UNK]"]),
         WordPieceTokenizer, pre_tokenizers.BertPreTokenizer()),
    ]
    for model, trainer, cls, pre in cases:
        hf = tokenizers.Tokenizer(model)
        hf.pre_tokenizer = pre
        if cls is BPETokenizer:
            from tokenizers import decoders

            hf.decoder = decoders.ByteLevel()
        hf.train_from_iterator([TEXT], trainer)
        p = tmp_path / f"{cls.__name__}-tokenizer.json"
        hf.save(str(p))
        ours = load_tokenizer(p)
        assert isinstance(ours, cls)
        assert ours.encode("the lazy fox") == hf.encode("the lazy fox", add_special_tokens=False).ids


def test_directories_and_errors(tmp_path):
    d = tmp_path / "bert"
    d.mkdir()
    (d / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nthe\nfox\n", encoding="utf-8")
    assert isinstance(load_tokenizer(d), WordPieceTokenizer)
    with pytest.raises(TokenizerError, match="does not exist"):
        load_tokenizer(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(TokenizerError, match="corrupt"):
        load_tokenizer(bad)
    odd = tmp_path / "odd.json"
    odd.write_text('{"format": "lmkit.xyz"}', encoding="utf-8")
    with pytest.raises(TokenizerError, match="unknown lmkit tokenizer format"):
        load_tokenizer(odd)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TokenizerError, match="no tokenizer.json"):
        load_tokenizer(empty)
