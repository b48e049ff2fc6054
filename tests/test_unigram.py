"""Unigram tokenizer vs SentencePiece (the oracle): Viterbi, n-best, decoding, model files,
training quality; sampling against the exact segmentation distribution; properties."""

from __future__ import annotations

import collections
import math
import pickle
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmkit.errors import TokenizerError
from lmkit.tokenizers.spm_model import PieceType
from lmkit.tokenizers.unigram import UnigramTokenizer

spm = pytest.importorskip("sentencepiece")


def _lines(corpus_dir, name):
    return (corpus_dir / f"{name}.txt").read_text(encoding="utf-8").splitlines()


def _spm_train(tmp, name, text_lines, **kw):
    src = tmp / f"{name}.txt"
    src.write_text("\n".join(text_lines) + "\n", encoding="utf-8")
    args = dict(model_type="unigram", vocab_size=1000, minloglevel=2)
    args.update(kw)
    spm.SentencePieceTrainer.train(input=str(src), model_prefix=str(tmp / name), **args)
    return tmp / f"{name}.model"


@pytest.fixture(scope="module")
def identity_model(tmp_path_factory, corpus_dir):
    """A sentencepiece Unigram model (identity normalisation, vocab 1000) on en + zh slices."""
    tmp = tmp_path_factory.mktemp("spm_identity")
    lines = _lines(corpus_dir, "en")[:3000] + _lines(corpus_dir, "zh")[:100]
    path = _spm_train(tmp, "identity", lines, normalization_rule_name="identity")
    return path, spm.SentencePieceProcessor(model_file=str(path)), UnigramTokenizer.from_sentencepiece(path)


@pytest.fixture(scope="module")
def nfkc_bytes_model(tmp_path_factory, corpus_dir):
    """sentencepiece's default normalisation (nmt_nfkc charsmap) with byte fallback."""
    tmp = tmp_path_factory.mktemp("spm_nfkc")
    lines = _lines(corpus_dir, "en")[:2000] + _lines(corpus_dir, "zh")[:100]
    path = _spm_train(tmp, "nfkc", lines, byte_fallback=True, vocab_size=1500)
    return path, spm.SentencePieceProcessor(model_file=str(path)), UnigramTokenizer.from_sentencepiece(path)


def _assert_same_ids(tok, sp, lines):
    ref = sp.encode(lines)
    bad = [(line, tok.encode_as_pieces(line), [sp.id_to_piece(i) for i in r])
           for line, r in zip(lines, ref) if tok.encode(line) != r]
    assert not bad, f"{len(bad)} of {len(lines)} lines differ, first: {bad[0]}"


# ---- loading sentencepiece models --------------------------------------------------------
def test_from_sentencepiece_reads_pieces_scores_types(identity_model, nfkc_bytes_model):
    for _, sp, tok in (identity_model, nfkc_bytes_model):
        assert tok.vocab_size == sp.get_piece_size()
        for i in range(sp.get_piece_size()):
            assert tok.id_to_token(i) == sp.id_to_piece(i)
            assert tok.score(i) == pytest.approx(sp.get_score(i), abs=0)
            t = tok.piece_type(i)
            assert (t == PieceType.UNKNOWN) == sp.is_unknown(i)
            assert (t == PieceType.CONTROL) == sp.is_control(i)
            assert (t == PieceType.BYTE) == sp.is_byte(i)
    assert nfkc_bytes_model[2].byte_fallback and nfkc_bytes_model[2].normalizer_name == "nmt_nfkc"


# ---- Viterbi = sentencepiece on every line -----------------------------------------------
@pytest.mark.parametrize("name", ["en", "zh"])
def test_viterbi_matches_sentencepiece_every_line(identity_model, corpus_dir, name):
    _, sp, tok = identity_model
    _assert_same_ids(tok, sp, _lines(corpus_dir, name))


def test_viterbi_matches_sentencepiece_code_sample(identity_model, corpus_dir):
    _, sp, tok = identity_model
    _assert_same_ids(tok, sp, _lines(corpus_dir, "code")[::25])


@pytest.mark.slow
def test_viterbi_matches_sentencepiece_code_full(identity_model, nfkc_bytes_model, corpus_dir):
    for _, sp, tok in (identity_model, nfkc_bytes_model):
        _assert_same_ids(tok, sp, _lines(corpus_dir, "code"))


def test_charsmap_and_byte_fallback_match_sentencepiece(nfkc_bytes_model, corpus_dir):
    _, sp, tok = nfkc_bytes_model
    extra = ["ｆｕｌｌｗｉｄｔｈ　ｔｅｘｔ①②", "ﬁne ｶﾀｶﾅ", "tabs\tand\u00a0nbsp", "emoji 🙂 and ☃", "  lead  trail  "]
    _assert_same_ids(tok, sp, _lines(corpus_dir, "en")[::7] + _lines(corpus_dir, "zh") + extra)


def test_decode_matches_sentencepiece(identity_model, nfkc_bytes_model, corpus_dir):
    lines = _lines(corpus_dir, "en")[::50] + _lines(corpus_dir, "zh")[::10] + _lines(corpus_dir, "code")[::400]
    for _, sp, tok in (identity_model, nfkc_bytes_model):
        for ids in sp.encode(lines):
            assert tok.decode(ids) == sp.decode(ids)
    _, sp, tok = nfkc_bytes_model
    assert tok.decode(tok.encode("héllo 世界 🙂")) == sp.decode(sp.encode("héllo 世界 🙂"))


# ---- n-best and sampling -----------------------------------------------------------------
WORDS = ["internationalization", "Hello world", "the parameters", "tokenization", "集合的方法"]


def test_nbest_distinct_sorted_and_matches_sentencepiece(identity_model):
    _, sp, tok = identity_model
    for text in WORDS:
        results = tok.nbest(text, 8)
        ids = [tuple(r) for r, _ in results]
        scores = [s for _, s in results]
        assert len(set(ids)) == len(ids)
        assert scores == sorted(scores, reverse=True)
        assert list(ids[0]) == tok.encode(text)
        assert [list(r) for r in ids] == sp.nbest_encode(text, nbest_size=8)



def test_sampling_follows_the_segmentation_distribution(identity_model):
    _, _, tok = identity_model
    text, alpha, n = "tokenization", 0.5, 3000
    everything = tok.nbest(text, 100000)
    assert len(everything) == 32  # all of them
    top = everything[0][1]
    z = sum(math.exp(alpha * (s - top)) for _, s in everything)
    prob = {tuple(ids): math.exp(alpha * (s - top)) / z for ids, s in everything}
    rng = random.Random(1234)
    counts = collections.Counter(tuple(tok.sample(text, alpha=alpha, rng=rng)) for _ in range(n))
    viterbi = tuple(tok.encode(text))
    assert counts.most_common(1)[0][0] == viterbi and counts[viterbi] > n / 2  # mostly Viterbi...
    assert len(counts) > 3  # ...and sometimes others
    for seg, p in sorted(prob.items(), key=lambda kv: -kv[1])[:6]:
        sd = math.sqrt(p * (1 - p) / n)
        assert abs(counts[seg] / n - p) < 5 * sd + 1e-3, (seg, counts[seg] / n, p)
    # restricted to the 4 best: only those, in proportion exp(alpha * score)
    four = everything[:4]
    counts4 = collections.Counter(tuple(tok.sample(text, alpha=alpha, nbest_size=4, rng=rng)) for _ in range(n))
    assert set(counts4) <= {tuple(ids) for ids, _ in four}
    z4 = sum(math.exp(alpha * (s - top)) for _, s in four)
    for ids, s in four:
        p = math.exp(alpha * (s - top)) / z4
        assert abs(counts4[tuple(ids)] / n - p) < 5 * math.sqrt(p * (1 - p) / n) + 1e-3
    # large alpha: always Viterbi; same seed, same samples
    assert all(tok.sample(text, alpha=50.0, rng=rng) == list(viterbi) for _ in range(20))
    assert tok.sample(text, alpha=0.2, rng=7) == tok.sample(text, alpha=0.2, rng=7)


# ---- training ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained_pair(tmp_path_factory, corpus_dir):
    """lmkit and sentencepiece Unigram models trained on the same en slice (vocab 1000)."""
    lines = [line for line in _lines(corpus_dir, "en")[:12000]]
    train, held = lines[:10000], lines[10000:]
    tmp = tmp_path_factory.mktemp("pair")
    ref_path = _spm_train(tmp, "ref", train, normalization_rule_name="identity", character_coverage=1.0)
    ours = UnigramTokenizer.train(train, vocab_size=1000)
    return ours, UnigramTokenizer.from_sentencepiece(ref_path), held, tmp


def test_trainer_heldout_likelihood_within_2_percent_of_sentencepiece(trained_pair):
    ours, ref, held, _ = trained_pair
    assert ours.vocab_size == ref.vocab_size == 1000
    lp_ours, chars = ours.log_likelihood(held)
    lp_ref, chars_ref = ref.log_likelihood(held)
    assert chars == chars_ref > 10000
    ll_ours, ll_ref = lp_ours / chars, lp_ref / chars
    # log-likelihoods are negative: ours may be at most 2% lower than sentencepiece's
    assert ll_ours >= ll_ref * 1.02, (ll_ours, ll_ref)


def test_trained_model_layout_and_sentencepiece_interop(trained_pair):
    ours, _, held, tmp = trained_pair
    assert [ours.id_to_token(i) for i in range(3)] == ["<unk>", "<s>", "</s>"]
    scores = [s for _, s, t in ours.pieces if t == PieceType.NORMAL]
    assert scores == sorted(scores, reverse=True)
    chars = {c for line in held for c in ours.normalize(line)}
    # our model written as a .model file: sentencepiece segments exactly as we do
    ours.save_sentencepiece(tmp / "ours.model")
    sp = spm.SentencePieceProcessor(model_file=str(tmp / "ours.model"))
    _assert_same_ids(ours, sp, held)
    assert chars  # sanity


def test_train_with_byte_fallback_and_options():
    text = "low lower lowest newer newest wider\n" * 20 + "the café naïve 北京\n"
    tok = UnigramTokenizer.train(text, vocab_size=300, byte_fallback=True, hard_vocab_limit=False)
    assert tok.byte_fallback and tok.literal_meta_bytes
    assert [tok.id_to_token(i) for i in (3, 258)] == ["<0x00>", "<0xFF>"]
    for s in ["newest 東京 🙂", "  two  spaces", "▁literal▁"]:
        ids = tok.encode(s)
        assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(tok.encode("newest 東京 🙂")) == "newest 東京 🙂"


# ---- properties ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lossless():
    text = "the lowest newer newest wider café\n" * 30 + "数据 模型 训练\n" * 10
    return UnigramTokenizer.train(text, vocab_size=350, byte_fallback=True, remove_extra_whitespaces=False,
                                  hard_vocab_limit=False)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text())
def test_byte_fallback_roundtrip_any_string(lossless, s):
    ids = lossless.encode(s)
    assert all(0 <= i < lossless.vocab_size for i in ids)
    assert lossless.decode(ids) == s


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet="ab cd▁é", max_size=12))
def test_nbest_first_is_viterbi_property(lossless, s):
    results = lossless.nbest(s, 3)
    assert results[0][0] == lossless.encode(s)
    assert len({tuple(r) for r, _ in results}) == len(results)


# ---- files, specials, errors -------------------------------------------------------------
def test_save_load_json_and_pickle(identity_model, tmp_path, corpus_dir):
    _, _, tok = identity_model
    tok.save(tmp_path / "uni.json")
    back = UnigramTokenizer.load(tmp_path / "uni.json")
    assert back.pieces == tok.pieces
    lines = _lines(corpus_dir, "zh")[:200]
    assert [back.encode(x) for x in lines] == [tok.encode(x) for x in lines]
    assert pickle.loads(pickle.dumps(tok)).encode(lines[3]) == tok.encode(lines[3])
    assert UnigramTokenizer.load(identity_model[0]).pieces == tok.pieces  # .model via load()


def test_special_tokens_only_when_allowed(identity_model):
    _, sp, tok = identity_model
    text = "<s>hello</s>"
    assert tok.encode(text) == sp.encode(text)
    ids = tok.encode(text, allowed_special="all")
    assert ids[0] == 1 and ids[-1] == 2 and ids[1:-1] == sp.encode("hello")
    assert tok.special_tokens == {"<unk>": 0, "<s>": 1, "</s>": 2}
    assert tok.decode(ids) == "hello"
    with pytest.raises(TokenizerError, match="not special"):
        tok.encode(text, allowed_special={"<mask>"})


def test_hf_tokenizer_json_unigram(tmp_path, trained_pair):
    tokenizers = pytest.importorskip("tokenizers")
    ours, _, held, _ = trained_pair
    vocab = [(p, s) for p, s, _ in ours.pieces]
    hf = tokenizers.Tokenizer(tokenizers.models.Unigram(vocab, unk_id=0, byte_fallback=False))
    hf.pre_tokenizer = tokenizers.pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    hf.decoder = tokenizers.decoders.Metaspace(replacement="▁", prepend_scheme="always")
    hf.save(str(tmp_path / "tokenizer.json"))
    loaded = UnigramTokenizer.from_tokenizer_json(tmp_path / "tokenizer.json")
    sample = [x for x in held[:400] if x.strip()]
    assert [loaded.encode(x) for x in sample] == [hf.encode(x).ids for x in sample]


def test_errors_are_clear(tmp_path):
    with pytest.raises(TokenizerError, match="empty corpus"):
        UnigramTokenizer.train("", vocab_size=100)
    with pytest.raises(TokenizerError, match="empty corpus"):
        UnigramTokenizer.train("   \n\n  \n", vocab_size=100)
    with pytest.raises(TokenizerError, match="too small"):
        UnigramTokenizer.train("abcdefghij klmnop\n", vocab_size=10)
    with pytest.raises(TokenizerError, match="too large"):
        UnigramTokenizer.train("ab ab ab\n", vocab_size=5000)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine line\nbroken \xff\xfe line\n")
    with pytest.raises(TokenizerError, match="invalid UTF-8 at byte offset 17"):
        UnigramTokenizer.train([bad], vocab_size=100)
    with pytest.raises(TokenizerError, match="does not exist"):
        UnigramTokenizer.train([tmp_path / "missing.txt"], vocab_size=100)
    corrupt = tmp_path / "corrupt.model"
    corrupt.write_bytes(b"\x0a\xff\xff\xff\x0fgarbage")
    with pytest.raises(TokenizerError, match="corrupt SentencePiece model"):
        UnigramTokenizer.from_sentencepiece(corrupt)
    (tmp_path / "c.json").write_text('{"format": "lmkit.unigram", "version": 1, "pieces": [["a", 0.0', encoding="utf-8")
    with pytest.raises(TokenizerError, match="invalid JSON"):
        UnigramTokenizer.load(tmp_path / "c.json")
    (tmp_path / "d.json").write_text('{"format": "lmkit.unigram", "version": 1, "pieces": [["a", 0.0, "NORMAL"]]}',
                                     encoding="utf-8")
    with pytest.raises(TokenizerError, match="unknown piece"):
        UnigramTokenizer.load(tmp_path / "d.json")
    with pytest.raises(TokenizerError, match="does not exist"):
        UnigramTokenizer.load(tmp_path / "nope.model")
    tok = UnigramTokenizer([("<unk>", 0.0, PieceType.UNKNOWN), ("a", -1.0, PieceType.NORMAL)])
    with pytest.raises(TokenizerError, match="not in this vocabulary"):
        tok.decode([0, 7])
    with pytest.raises(TokenizerError, match="byte_fallback needs"):
        UnigramTokenizer([("<unk>", 0.0, PieceType.UNKNOWN)], byte_fallback=True)


def test_bpe_sentencepiece_model_is_refused(tmp_path, corpus_dir):
    path = _spm_train(tmp_path, "bpe", _lines(corpus_dir, "en")[:500], model_type="bpe", vocab_size=300)
    with pytest.raises(TokenizerError, match="not 'unigram'"):
        UnigramTokenizer.from_sentencepiece(path)


def test_hf_tokenizer_json_breaks_exact_ties_in_float64(tmp_path):
    """Hugging Face sums path scores in float64: two paths with the same pieces in another order
    tie exactly, and the first one found wins; float32 rounding (SentencePiece) picks the other."""
    tokenizers = pytest.importorskip("tokenizers")
    vocab = [("<unk>", 0.0), ("▁-", -7.385317802429199), ("-----------", -8.095890998840332),
             ("-", -5.263601779937744)]
    hf = tokenizers.Tokenizer(tokenizers.models.Unigram(vocab, unk_id=0, byte_fallback=False))
    hf.pre_tokenizer = tokenizers.pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    hf.save(str(tmp_path / "tokenizer.json"))
    loaded = UnigramTokenizer.from_tokenizer_json(tmp_path / "tokenizer.json")
    assert loaded.float64_paths and UnigramTokenizer.load(tmp_path / "tokenizer.json").float64_paths
    text = "-" * 13
    assert loaded.encode(text) == hf.encode(text).ids == [1, 3, 2]
    sentencepiece_like = UnigramTokenizer([(p, s, PieceType.UNKNOWN if i == 0 else PieceType.NORMAL)
                                           for i, (p, s) in enumerate(vocab)])
    assert sentencepiece_like.encode(text) == [1, 2, 3]
    saved = tmp_path / "lmkit.json"
    loaded.save(saved)
    assert UnigramTokenizer.load(saved).encode(text) == [1, 3, 2]
