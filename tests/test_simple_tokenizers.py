"""Whitespace and character tokenizers: vocabulary learning, unknowns, specials, files, errors."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lmkit.errors import TokenizerError
from lmkit.tokenizers.simple import CharTokenizer, WhitespaceTokenizer

TEXT = "the cat sat on the mat\nthe dog sat\n"


def test_whitespace_vocab_is_specials_then_words_by_frequency():
    tok = WhitespaceTokenizer.train(TEXT)
    counts = Counter(TEXT.split())
    words = [tok.id_to_token(i) for i in range(4, tok.vocab_size)]
    assert [tok.id_to_token(i) for i in range(4)] == ["<pad>", "<unk>", "<s>", "</s>"]
    assert words == sorted(counts, key=lambda w: (-counts[w], w))
    assert tok.encode("the cat") == [tok.token_to_id("the"), tok.token_to_id("cat")]
    assert tok.encode("the zebra") == [tok.token_to_id("the"), tok.unk_id]
    assert tok.decode(tok.encode("  the   cat\tsat ")) == "the cat sat"


def test_vocab_size_and_min_frequency():
    tok = WhitespaceTokenizer.train(TEXT, vocab_size=6)
    assert tok.vocab_size == 6 and tok.get_vocab().keys() >= {"the", "sat"}
    tok = WhitespaceTokenizer.train(TEXT, min_frequency=2)
    assert set(tok.get_vocab()) == {"<pad>", "<unk>", "<s>", "</s>", "the", "sat"}
    low = WhitespaceTokenizer.train("The THE the", lowercase=True)
    assert low.encode("THE") == [low.token_to_id("the")]


def test_special_tokens_only_when_allowed():
    tok = WhitespaceTokenizer.train(TEXT)
    assert tok.encode("<s> the </s>") == [tok.unk_id, tok.token_to_id("the"), tok.unk_id]
    assert tok.encode("<s> the </s>", allowed_special="all") == [2, tok.token_to_id("the"), 3]
    assert tok.decode([2, tok.token_to_id("the"), 3, 0], skip_special_tokens=True) == "the"
    with pytest.raises(TokenizerError, match="not special"):
        tok.encode("x", allowed_special={"<mask>"})


def test_char_tokenizer_roundtrip_and_unknowns(corpus_dir):
    text = (corpus_dir / "zh.txt").read_text(encoding="utf-8")[:20000]
    tok = CharTokenizer.train(text)
    sample = text[5000:6000]
    assert tok.decode(tok.encode(sample)) == sample
    assert "\n" in tok.get_vocab()
    ids = tok.encode("模型🙂")
    assert ids[-1] == tok.unk_id
    assert tok.decode(ids) == "模型<unk>"


@given(st.text(alphabet="abc \n", max_size=40))
def test_char_roundtrip_property(s):
    tok = CharTokenizer.train("abc abc\ncab\n")
    assert tok.decode(tok.encode(s)) == s


def test_save_load(tmp_path):
    for cls in (WhitespaceTokenizer, CharTokenizer):
        tok = cls.train(TEXT, special_tokens=["[PAD]", "[UNK]", "[BOS]"], unk_token="[UNK]")
        tok.save(tmp_path / "t.json")
        back = cls.load(tmp_path / "t.json")
        assert back.get_vocab() == tok.get_vocab()
        assert back.special_tokens == tok.special_tokens
        assert back.encode("the cat [BOS] x", allowed_special="all") == tok.encode("the cat [BOS] x", allowed_special="all")
    with pytest.raises(TokenizerError, match="not an lmkit"):
        WhitespaceTokenizer.load(tmp_path / "t.json")


def test_errors_are_clear(tmp_path):
    with pytest.raises(TokenizerError, match="empty corpus"):
        WhitespaceTokenizer.train("  \n \n")
    with pytest.raises(TokenizerError, match="empty corpus"):
        CharTokenizer.train("")
    with pytest.raises(TokenizerError, match="too small"):
        WhitespaceTokenizer.train(TEXT, vocab_size=4)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok\n\xc3\x28 broken\n")
    with pytest.raises(TokenizerError, match="invalid UTF-8 at byte offset 3"):
        CharTokenizer.train([bad])
    corrupt = tmp_path / "c.json"
    corrupt.write_text('{"format": "lmkit.char", "version": 1, "vocab": ["<unk>", "a", "a"], "unk_token": "<unk>"}',
                       encoding="utf-8")
    with pytest.raises(TokenizerError, match="appears twice"):
        CharTokenizer.load(corrupt)
    corrupt.write_bytes(b"\xff\xfe{")
    with pytest.raises(TokenizerError, match="corrupt"):
        CharTokenizer.load(corrupt)
    tok = CharTokenizer.train("ab")
    with pytest.raises(TokenizerError, match="not in this vocabulary"):
        tok.decode([99])
