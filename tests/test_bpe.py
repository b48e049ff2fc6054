"""Byte-level BPE against its oracles: Hugging Face `tokenizers` and `tiktoken`.

Default run: every line of en.txt and zh.txt and a deterministic sample (every 4th line)
of the 11 MB code.txt; the whole code.txt is in the `slow` test.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

tokenizers = pytest.importorskip("tokenizers")
tiktoken = pytest.importorskip("tiktoken")
from tokenizers import Tokenizer as HFTokenizer  # noqa: E402
from tokenizers import decoders, models, pre_tokenizers, trainers  # noqa: E402

from lmkit.errors import TokenizerError  # noqa: E402
from lmkit.tokenizers import bpe as bpe_module  # noqa: E402
from lmkit.tokenizers import text_files  # noqa: E402
from lmkit.tokenizers.bpe import BPETokenizer  # noqa: E402
from lmkit.tokenizers.bytes_level import bytes_to_unicode, token_str_to_bytes  # noqa: E402
from lmkit.tokenizers.hf_json import load_hf_json  # noqa: E402
from lmkit.tokenizers.pretokenize import CL100K_PATTERN, GPT2_PATTERN  # noqa: E402
from lmkit.tokenizers.tiktoken_ranks import load_tiktoken_ranks, save_tiktoken_ranks  # noqa: E402

EOT = "<|endoftext|>"
# The pattern Llama-3 / Qwen2 tokenizer.json files carry in their Split pre-tokenizer.
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


# ---- fixtures ---------------------------------------------------------------------------------
def _lines(corpus_dir: Path, name: str) -> list[str]:
    return (corpus_dir / name).read_text(encoding="utf-8").splitlines(keepends=True)


def _hf_train(lines: list[str], vocab_size: int, pre_tokenizer, specials=(EOT,)) -> HFTokenizer:
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=list(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(lines, trainer)
    return tok


def _tiktoken_from_hf(hf_json: dict, pattern: str) -> "tiktoken.Encoding":
    """An independent oracle: tiktoken with ranks = the HF ids of the same vocabulary."""
    specials = {t["content"]: t["id"] for t in hf_json["added_tokens"]}
    ranks = {token_str_to_bytes(s): i for s, i in hf_json["model"]["vocab"].items() if s not in specials}
    return tiktoken.Encoding("oracle", pat_str=pattern, mergeable_ranks=ranks, special_tokens=specials)


@pytest.fixture(scope="module")
def hf_gpt2(corpus_dir, tmp_path_factory):
    """HF-trained ByteLevel BPE (vocab 2000, GPT-2 split) on a slice of en.txt + zh + code."""
    lines = _lines(corpus_dir, "en.txt")[:8000] + _lines(corpus_dir, "zh.txt")[:300] + _lines(corpus_dir, "code.txt")[:3000]
    hf = _hf_train(lines, 2000, pre_tokenizers.ByteLevel(add_prefix_space=False))
    path = tmp_path_factory.mktemp("hf") / "tokenizer.json"
    hf.save(str(path))
    data = json.loads(path.read_text(encoding="utf-8"))
    return hf, path, data


@pytest.fixture(scope="module")
def hf_llama3(corpus_dir, tmp_path_factory):
    """HF-trained BPE in the Llama-3 form: Split(regex, Isolated) + ByteLevel(use_regex=False)."""
    lines = _lines(corpus_dir, "en.txt")[:4000] + _lines(corpus_dir, "code.txt")[:2000] + _lines(corpus_dir, "zh.txt")[:300]
    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Split(tokenizers.Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    hf = _hf_train(lines, 1200, pre)
    path = tmp_path_factory.mktemp("hf3") / "tokenizer.json"
    hf.save(str(path))
    return hf, path, json.loads(path.read_text(encoding="utf-8"))


def _assert_same(ours: BPETokenizer, hf: HFTokenizer, enc, lines: list[str]) -> None:
    got = [ours.encode(t) for t in lines]
    want_hf = [e.ids for e in hf.encode_batch(lines, add_special_tokens=False)]
    for text, a, b in zip(lines, got, want_hf):
        assert a == b, f"HF differs on {text[:120]!r}"
    if enc is not None:
        want_tk = [enc.encode_ordinary(t) for t in lines]
        for text, a, c in zip(lines, got, want_tk):
            assert a == c, f"tiktoken differs on {text[:120]!r}"


# ---- oracle agreement ---------------------------------------------------------------------------
@pytest.mark.parametrize("name,step", [("en.txt", 1), ("zh.txt", 1), ("code.txt", 4)])
def test_hf_trained_gives_hf_and_tiktoken_ids(hf_gpt2, corpus_dir, name, step):
    hf, path, data = hf_gpt2
    ours = BPETokenizer.load(path)
    assert ours.vocab_size == hf.get_vocab_size()
    enc = _tiktoken_from_hf(data, GPT2_PATTERN)
    _assert_same(ours, hf, enc, _lines(corpus_dir, name)[::step])


@pytest.mark.slow
def test_hf_trained_gives_hf_and_tiktoken_ids_whole_code(hf_gpt2, corpus_dir):
    hf, path, data = hf_gpt2
    _assert_same(BPETokenizer.load(path), hf, _tiktoken_from_hf(data, GPT2_PATTERN), _lines(corpus_dir, "code.txt"))


def test_whole_file_in_one_call_matches(hf_gpt2, corpus_dir):
    hf, path, data = hf_gpt2
    ours = BPETokenizer.load(path)
    text = (corpus_dir / "en.txt").read_text(encoding="utf-8")[:400_000]
    ids = ours.encode(text)
    assert ids == hf.encode(text, add_special_tokens=False).ids
    assert ids == _tiktoken_from_hf(data, GPT2_PATTERN).encode_ordinary(text)
    assert ours.decode(ids) == text


def test_llama3_split_form_matches_hf_and_tiktoken(hf_llama3, corpus_dir):
    hf, path, data = hf_llama3
    assert data["pre_tokenizer"]["type"] == "Sequence"
    ours = load_hf_json(path)
    enc = _tiktoken_from_hf(data, LLAMA3_PATTERN)
    lines = _lines(corpus_dir, "en.txt")[::7] + _lines(corpus_dir, "code.txt")[::40] + _lines(corpus_dir, "zh.txt")[::3]
    _assert_same(ours, hf, enc, lines)
    # Qwen2 adds an NFC normalizer; Llama-3 sets ignore_merges
    variant = json.loads(json.dumps(data))
    variant["normalizer"] = {"type": "NFC"}
    variant["model"]["ignore_merges"] = True
    path2 = path.with_name("qwen2_like.json")
    path2.write_text(json.dumps(variant), encoding="utf-8")
    texts = lines[::5] + ["cafe\u0301 re\u0301sume\u0301 \u212b\u00c5 A\u030a", "ｆｕｌｌ\uff57idth ①"]
    _assert_same(load_hf_json(path2), HFTokenizer.from_file(str(path2)), None, texts)


def test_add_prefix_space_and_ignore_merges_variants(hf_gpt2, corpus_dir, tmp_path):
    """ByteLevel(add_prefix_space=True) and model.ignore_merges, checked against HF."""
    _, _, data = hf_gpt2
    lines = _lines(corpus_dir, "en.txt")[::11] + _lines(corpus_dir, "zh.txt")[::5] + ["", " ", "x", " lead", "a  b"]
    for aps, ignore in [(True, False), (False, True), (True, True)]:
        variant = json.loads(json.dumps(data))
        variant["pre_tokenizer"]["add_prefix_space"] = aps
        variant["model"]["ignore_merges"] = ignore
        path = tmp_path / f"v{aps}{ignore}.json"
        path.write_text(json.dumps(variant), encoding="utf-8")
        _assert_same(BPETokenizer.load(path), HFTokenizer.from_file(str(path)), None, lines)


def test_long_words_match_hf(hf_gpt2):
    """Pre-tokens longer than 64 bytes take the heap path; HF is the oracle."""
    hf, path, data = hf_gpt2
    ours = BPETokenizer.load(path)
    rng = random.Random(0)
    zh = "".join(chr(rng.randint(0x4E00, 0x4FFF)) for _ in range(400))
    texts = ["a" * 1000, " " * 2000, "ab" * 700, zh, "the" * 300 + " x", "\n" * 300 + "y", "😀" * 100,
             "".join(rng.choice("etaoin shrdlu") for _ in range(5000))]
    _assert_same(ours, hf, _tiktoken_from_hf(data, GPT2_PATTERN), texts)


_TEXT = st.text(
    alphabet=st.one_of(
        st.characters(exclude_categories=("Cs",)),  # any code point except surrogates
        st.sampled_from(list(" \t\n\r\u3000\u00a0\x1c\x85")),
        st.sampled_from(list("的一是在不了有和人这中大为上个国我以要他😀🎉👍🏽e\u0301'sl")),
        st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF),
        st.characters(min_codepoint=0x1F300, max_codepoint=0x1FAFF),
    ),
    max_size=80,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=_TEXT)
def test_random_text_matches_hf_and_tiktoken(hf_gpt2, text):
    hf, path, data = hf_gpt2
    ours = _cached(path)
    ids = ours.encode(text)
    assert ids == hf.encode(text, add_special_tokens=False).ids
    assert ids == _cached_tiktoken(data).encode_ordinary(text)


_CACHE: dict = {}


def _cached(path):
    if path not in _CACHE:
        _CACHE[path] = BPETokenizer.load(path)
    return _CACHE[path]


def _cached_tiktoken(data):
    if "tk" not in _CACHE:
        _CACHE["tk"] = _tiktoken_from_hf(data, GPT2_PATTERN)
    return _CACHE["tk"]


# ---- our training -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(corpus_dir):
    lines = _lines(corpus_dir, "en.txt")[:6000] + _lines(corpus_dir, "zh.txt")[:400] + _lines(corpus_dir, "code.txt")[:2000]
    return {
        "gpt2": BPETokenizer.train(lines, 1000, special_tokens=[EOT, "<|pad|>"]),
        "cl100k": BPETokenizer.train(lines, 1000, special_tokens=[EOT], pattern="cl100k"),
    }


def test_compression_within_one_percent_of_hf(corpus_dir):
    lines = _lines(corpus_dir, "en.txt")
    cut = int(len(lines) * 0.8)
    train, held = lines[:cut], "".join(lines[cut:])
    ours = BPETokenizer.train(train, 2000, special_tokens=[EOT])
    hf = _hf_train(train, 2000, pre_tokenizers.ByteLevel(add_prefix_space=False))
    n_bytes = len(held.encode("utf-8"))
    ours_bpt = n_bytes / len(ours.encode(held))
    hf_bpt = n_bytes / len(hf.encode(held, add_special_tokens=False).ids)
    assert ours.vocab_size == hf.get_vocab_size() == 2000
    assert abs(ours_bpt / hf_bpt - 1) < 0.01, (ours_bpt, hf_bpt)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=_TEXT)
def test_decode_encode_roundtrip(trained, text):
    for tok in trained.values():
        assert tok.decode(tok.encode(text)) == text


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=_TEXT, specials=st.lists(st.sampled_from([EOT, "<|pad|>"]), max_size=3))
def test_roundtrip_with_special_tokens(trained, text, specials):
    tok = trained["gpt2"]
    s = text + "".join(specials) + text
    ids = tok.encode(s, allowed_special="all")
    assert tok.decode(ids) == s
    assert ids.count(tok.special_tokens[EOT]) == s.count(EOT)


@pytest.mark.parametrize("pattern", ["gpt2", "cl100k"])
def test_export_tokenizer_json_loads_in_hf_with_same_ids(trained, corpus_dir, tmp_path, pattern):
    tok = trained[pattern]
    path = tmp_path / "tokenizer.json"
    tok.save_hf_json(path)
    hf = HFTokenizer.from_file(str(path))
    lines = _lines(corpus_dir, "en.txt")[::13] + _lines(corpus_dir, "zh.txt")[::7] + _lines(corpus_dir, "code.txt")[::97]
    lines += [f"a{EOT}b {EOT}\n", "tail " + EOT]
    for text in lines:
        ids = tok.encode(text, allowed_special="all")
        assert ids == hf.encode(text, add_special_tokens=False).ids, text
        assert hf.decode(ids, skip_special_tokens=False) == text
    assert hf.get_vocab_size() == tok.vocab_size
    again = load_hf_json(path)  # and back
    assert [again.encode(t) for t in lines] == [tok.encode(t) for t in lines]


def test_own_format_roundtrip(trained, tmp_path, corpus_dir):
    text = (corpus_dir / "mixed.txt").read_text(encoding="utf-8")[:50_000]
    for name, tok in trained.items():
        tok.save(tmp_path / f"{name}.json")
        back = BPETokenizer.load(tmp_path / f"{name}.json")
        assert back.encode(text) == tok.encode(text)
        assert back.special_tokens == tok.special_tokens
        assert back.merges == tok.merges


def test_training_is_deterministic_and_ties_break_on_smallest_pair(corpus_dir):
    lines = _lines(corpus_dir, "en.txt")[:3000]
    shuffled = lines[:]
    random.Random(1).shuffle(shuffled)
    a = BPETokenizer.train(lines, 600)
    b = BPETokenizer.train(shuffled, 600)
    assert a.merges == b.merges
    # all pairs tie at count 1: the smallest (left id, right id) pair wins: (" ", "c") = (32, 99)
    tiny = BPETokenizer.train(["ab cd"], 257, min_frequency=1)
    assert tiny.merges == [(b" ", b"c")]


def test_min_frequency_stops_training():
    tok = BPETokenizer.train(["abab xy"], 300, min_frequency=2)
    assert tok.merges == [(b"a", b"b")]  # then ("ab", "ab") is seen once only
    assert tok.vocab_size == 257


def test_training_from_files_streams_and_equals_text(tmp_path, corpus_dir):
    text = "".join(_lines(corpus_dir, "en.txt")[:2000])
    f = tmp_path / "train.txt"
    f.write_text(text, encoding="utf-8")
    from_file = BPETokenizer.train([f], 500)
    from_text = BPETokenizer.train([text], 500)
    assert from_file.merges == from_text.merges


def test_training_with_special_tokens_in_corpus_does_not_learn_them():
    tok = BPETokenizer.train([f"hello{EOT}world{EOT}" * 50], 300, special_tokens=[EOT])
    assert all(b"|" not in a + b for a, b in tok.merges)
    assert tok.special_tokens == {EOT: tok.vocab_size - 1}


# ---- special tokens ------------------------------------------------------------------------------
def test_allowed_special_like_tiktoken(hf_gpt2, tmp_path):
    _, _, data = hf_gpt2
    enc = _tiktoken_from_hf(data, GPT2_PATTERN)
    save_tiktoken_ranks({token_str_to_bytes(s): i for s, i in data["model"]["vocab"].items() if s != EOT},
                        tmp_path / "r.tiktoken")
    ours = BPETokenizer.from_tiktoken(tmp_path / "r.tiktoken", pattern="gpt2", special_tokens={EOT: 0})
    text = f"Hello{EOT} world {EOT}{EOT}x<|endoftext|"
    assert ours.encode(text, allowed_special="all") == enc.encode(text, allowed_special="all")
    assert ours.encode(text, allowed_special={EOT}) == enc.encode(text, allowed_special={EOT})
    assert ours.encode(text) == enc.encode(text, disallowed_special=())
    assert 0 not in ours.encode(text)
    with pytest.raises(TokenizerError, match="unknown special token"):
        ours.encode(text, allowed_special={"<|nope|>"})


def test_tiktoken_rank_file_matches_tiktoken(hf_gpt2, corpus_dir, tmp_path):
    _, _, data = hf_gpt2
    ranks = {token_str_to_bytes(s): i for s, i in data["model"]["vocab"].items() if s != EOT}
    save_tiktoken_ranks(ranks, tmp_path / "r.tiktoken")
    assert load_tiktoken_ranks(tmp_path / "r.tiktoken") == ranks
    ours = BPETokenizer.from_tiktoken(tmp_path / "r.tiktoken", pattern="gpt2", special_tokens={EOT: 0})
    enc = _tiktoken_from_hf(data, GPT2_PATTERN)
    lines = _lines(corpus_dir, "en.txt")[::5] + _lines(corpus_dir, "code.txt")[::50] + _lines(corpus_dir, "zh.txt")
    assert [ours.encode(t) for t in lines] == [enc.encode_ordinary(t) for t in lines]
    ours.save(tmp_path / "own.json")  # ranks mode survives our format
    assert BPETokenizer.load(tmp_path / "own.json").encode(lines[3]) == ours.encode(lines[3])


def test_non_special_added_tokens_always_match(hf_gpt2, tmp_path):
    hf, _, data = hf_gpt2
    variant = json.loads(json.dumps(data))
    variant["added_tokens"].append({"id": 2000, "content": "[DOMAIN]", "single_word": False, "lstrip": False,
                                    "rstrip": False, "normalized": False, "special": False})
    path = tmp_path / "added.json"
    path.write_text(json.dumps(variant), encoding="utf-8")
    ours, ref = BPETokenizer.load(path), HFTokenizer.from_file(str(path))
    text = "x [DOMAIN] y[DOMAIN]z"
    assert ours.encode(text) == ref.encode(text, add_special_tokens=False).ids
    assert 2000 in ours.encode(text)


# ---- speed-related behaviour ---------------------------------------------------------------------
def test_encode_batch_processes_and_tiny_cache(trained, corpus_dir):
    tok = trained["gpt2"]
    lines = _lines(corpus_dir, "en.txt")[:400]
    want = [tok.encode(t) for t in lines]
    assert tok.encode_batch(lines, num_workers=2) == want
    small = BPETokenizer(dict(tok._tokens), tok.merge_ids(), pre_tokenizer=tok.pre_tokenizer, cache_size=8)
    assert [small.encode(t) for t in lines] == want
    assert len(small._cache) <= 8


def test_lone_surrogates_become_replacement_char(trained):
    tok = trained["gpt2"]
    assert tok.encode("a\ud800b") == tok.encode("a\ufffdb")


# ---- bad input -------------------------------------------------------------------------------------
def test_bad_training_input(tmp_path):
    with pytest.raises(TokenizerError, match="empty corpus"):
        BPETokenizer.train([], 300)
    with pytest.raises(TokenizerError, match="empty corpus"):
        BPETokenizer.train(["", ""], 300)
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(TokenizerError, match="empty corpus"):
        BPETokenizer.train([empty], 300)
    with pytest.raises(TokenizerError, match="too small"):
        BPETokenizer.train(["some text"], 256, special_tokens=[EOT])
    with pytest.raises(TokenizerError, match="does not exist"):
        BPETokenizer.train([tmp_path / "missing.txt"], 300)


def test_invalid_utf8_names_file_and_offset(tmp_path, monkeypatch):
    monkeypatch.setattr(text_files, "_READ_BLOCK", 64)  # force several blocks
    bad = tmp_path / "bad.txt"
    good = ("line of fine text\n" * 20).encode()
    bad.write_bytes(good + b"ok \xff\xfe more\n")
    with pytest.raises(TokenizerError) as info:
        BPETokenizer.train([bad], 300)
    msg = str(info.value)
    assert str(bad) in msg and f"byte offset {len(good) + 3}" in msg


def test_corrupt_tokenizer_files(tmp_path, trained):
    cases = {
        "notjson.json": "{not json",
        "truncated.json": json.dumps(trained["gpt2"].to_dict())[:5000],
        "wrongtype.json": json.dumps([1, 2, 3]),
        "noformat.json": json.dumps({"hello": 1}),
        "badmerge.json": json.dumps({**trained["gpt2"].to_dict(), "merges": [[1, 99999]]}),
        "badvocab.json": json.dumps({**trained["gpt2"].to_dict(), "vocab": {"a": "x"}}),
        "hf_wordlevel.json": json.dumps({"model": {"type": "WordLevel", "vocab": {}}}),
        "hf_badmerge.json": json.dumps({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a zz"]},
                                        "pre_tokenizer": {"type": "ByteLevel"}}),
    }
    for name, content in cases.items():
        path = tmp_path / name
        path.write_text(content, encoding="utf-8")
        with pytest.raises(TokenizerError) as info:
            BPETokenizer.load(path)
        assert name in str(info.value), str(info.value)
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(TokenizerError, match="corrupt"):
        BPETokenizer.load(tmp_path / "bin.json")
    (tmp_path / "bad.tiktoken").write_text("IQ== 0\nnot-base64!! x\n", encoding="utf-8")
    with pytest.raises(TokenizerError, match="bad.tiktoken:2"):
        load_tiktoken_ranks(tmp_path / "bad.tiktoken")


def test_decode_rejects_unknown_ids(trained):
    tok = trained["gpt2"]
    for bad in ([tok.vocab_size], [-1], [1, 2, 10**9]):
        with pytest.raises(TokenizerError, match="not in this vocabulary"):
            tok.decode(bad)


def test_byte_table_is_gpt2s():
    table = bytes_to_unicode()
    assert len(set(table.values())) == 256 and table[32] == "Ġ" and table[10] == "Ċ" and table[ord("a")] == "a"


def test_cl100k_pattern_is_tiktokens():
    """Our cl100k split equals tiktoken's on text (tiktoken built with the same ranks)."""
    ranks = {bytes([b]): b for b in range(256)}
    tiktoken_cl100k = (  # as tiktoken's cl100k_base writes it
        r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
    )
    enc = tiktoken.Encoding("bytes", pat_str=tiktoken_cl100k, mergeable_ranks=ranks, special_tokens={})
    tok = BPETokenizer.from_tiktoken(ranks, pattern="cl100k")
    text = "Hello  world's 12345 1234567 abc\r\n\n  x  \tfoo()... 你好 😀 I'LL +000000120 \n"
    assert tok.encode(text) == enc.encode_ordinary(text)
    assert tok.pre_tokenizer(text)[:3] == ["Hello", " ", " world"]


# ---- CLI ------------------------------------------------------------------------------------------------
def _cli(*args, input=None):
    return subprocess.run([sys.executable, "-m", "lmkit", "tokenizer", *args], capture_output=True, text=True,
                          input=input, timeout=120)


def test_cli_train_encode_decode_info(tmp_path, corpus_dir):
    src = tmp_path / "train.txt"
    src.write_text("".join(_lines(corpus_dir, "en.txt")[:1500]), encoding="utf-8")
    out = tmp_path / "tok.json"
    r = _cli("train", str(src), "-o", str(out), "--vocab-size", "400", "--special", EOT)
    assert r.returncode == 0, r.stderr
    assert out.exists()
    r = _cli("encode", str(out), "Hello world!")
    assert r.returncode == 0, r.stderr
    ids = r.stdout.split()
    assert ids and all(i.isdigit() for i in ids)
    r = _cli("decode", str(out), *ids)
    assert r.returncode == 0, r.stderr
    assert r.stdout.rstrip("\n") == "Hello world!"
    r = _cli("info", str(out))
    assert r.returncode == 0 and "400" in r.stdout, r.stdout + r.stderr
    assert "<|im_start|>" in r.stdout and "<|im_end|>" in r.stdout and "<|pad|>" in r.stdout  # reserved by default
    hf_out = tmp_path / "tokenizer.json"
    r = _cli("train", str(src), "-o", str(hf_out), "--vocab-size", "400", "--format", "hf", "--no-chat-tokens")
    assert r.returncode == 0, r.stderr
    assert HFTokenizer.from_file(str(hf_out)).get_vocab_size() == 400
    assert "<|im_start|>" not in HFTokenizer.from_file(str(hf_out)).get_vocab()
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"abc\xff")
    r = _cli("train", str(bad), "-o", str(tmp_path / "x.json"), "--vocab-size", "300")
    assert r.returncode != 0 and "byte offset 3" in r.stderr


# ---- vocabulary extension (词表扩增) -------------------------------------------------------------------
def test_extend_keeps_old_ids_and_compresses_domain_text(trained, corpus_dir, tmp_path):
    base = BPETokenizer.train(_lines(corpus_dir, "en.txt")[:3000], 600, special_tokens=[EOT])
    zh = _lines(corpus_dir, "zh.txt")
    train, held = zh[: len(zh) // 2], "".join(zh[len(zh) // 2:])
    ext = base.extend(train, 400)
    assert ext.vocab_size == base.vocab_size + 400
    assert all(ext.token_bytes(i) == base.token_bytes(i) for i in range(base.vocab_size))
    assert ext.merges[: len(base.merges)] == base.merges
    assert ext.special_tokens == base.special_tokens
    assert len(ext.encode(held)) < 0.8 * len(base.encode(held))
    assert ext.decode(ext.encode(held)) == held
    ext.save_hf_json(tmp_path / "ext.json")  # ids above the specials survive tokenizer.json
    hf = HFTokenizer.from_file(str(tmp_path / "ext.json"))
    assert hf.encode(held[:20000], add_special_tokens=False).ids == ext.encode(held[:20000])


def test_add_tokens():
    tok = BPETokenizer.train(["some domain text about tokenizers " * 20], 300, special_tokens=[EOT])
    n = tok.vocab_size
    ids = tok.add_tokens(["<tool>", "GPU-hours", "<tool>"])
    assert ids == [n, n + 1, n]
    got = tok.encode("use <tool> for GPU-hours")
    assert n in got and n + 1 in got
    assert tok.decode(tok.encode("x GPU-hours y")) == "x GPU-hours y"


def test_two_merge_paths_to_one_string_share_an_id():
    """("ab", "c") and ("a", "bc") both spell "abc": the second merge reuses the first's id."""
    tokens = {0: b"a", 1: b"b", 2: b"c", 3: b"bc"}
    words, freqs = [[0, 1, 2], [0, 3]], [5, 3]
    merges = bpe_module.merge_words(words, freqs, 10, 1, False, bpe_module.TokenNamer(tokens, 4))
    assert merges == [(0, 1), (4, 2), (0, 3)]
    assert tokens == {0: b"a", 1: b"b", 2: b"c", 3: b"bc", 4: b"ab", 5: b"abc"}
    assert words == [[5], [5]]


@pytest.mark.parametrize("pattern", [GPT2_PATTERN, CL100K_PATTERN])
def test_ascii_fast_split_equals_regex_module(corpus_dir, pattern):
    """The chunked stdlib-`re` fast path must split exactly like the `regex` pattern."""
    import regex

    from lmkit.tokenizers.pretokenize import PreTokenizer

    text = (corpus_dir / "mixed.txt").read_text(encoding="utf-8")[:300_000]
    text += "end.\n\n  \r\n x9\n" + "word\n" * 3000 + "  \n"
    assert PreTokenizer([{"type": "split", "pattern": pattern}])(text) == regex.compile(pattern).findall(text)
