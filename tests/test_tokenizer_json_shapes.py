"""The tokenizer.json shapes real model families ship, against Hugging Face `tokenizers`.

Each shape is built here with the `tokenizers` library (a small BPE trained on lmkit's
en/zh/code corpora, then dressed as the family dresses it; nothing is downloaded), saved,
loaded by lmkit, and compared id for id and decoded string for decoded string:

* Llama 3: byte-level BPE, ``ignore_merges``, Split(regex) + ByteLevel(use_regex=False),
  ByteLevel decoder, Sequence[ByteLevel, TemplateProcessing(<|begin_of_text|> $A)];
* Llama 2 / Phi-3 (legacy): SentencePiece-style BPE with byte_fallback + fuse_unk,
  Sequence[Prepend("▁"), Replace(" ", "▁")] normalizer, Replace/ByteFallback/Fuse/Strip decoder;
* Llama 2 (legacy=False): Metaspace(prepend_scheme="first", split=False);
* Metaspace variants: prepend_scheme always/first/never × split true/false, Metaspace decoder;
* Gemma: Replace(" ", "▁") normalizer, no pre-tokenizer, byte fallback, no Strip.

Added tokens carry every flag (special, lstrip, rstrip, single_word, normalized) and appear
inside the text.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

tokenizers = pytest.importorskip("tokenizers")
from tokenizers import Tokenizer as HFTokenizer  # noqa: E402
from tokenizers import models, normalizers, pre_tokenizers, trainers  # noqa: E402

from lmkit.tokenizers.bpe import BPETokenizer  # noqa: E402
from lmkit.tokenizers.hf_json import load_hf_json, save_hf_json  # noqa: E402
from lmkit.tokenizers.loading import load_tokenizer  # noqa: E402
from lmkit.tokenizers.sentencepiece_bpe import SentencePieceBPETokenizer  # noqa: E402

LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SP = "\u2581"


def _added(content, idx, special=True, lstrip=False, rstrip=False, single_word=False, normalized=False):
    return {"id": idx, "content": content, "single_word": single_word, "lstrip": lstrip, "rstrip": rstrip,
            "normalized": normalized, "special": special}


# Text with the things that break tokenizers: emoji, characters no vocabulary has, control
# bytes, whitespace runs, and the added tokens with spaces around them.
EXTRA_LINES = [
    "Emoji 🙂🙃 and flags 🇫🇷🇩🇪, a family 👨‍👩‍👧 and a thumbs up 👍🏽!",
    "Unknown scripts: ᚠᛇᚻ ꦲꦏ 𓀀𓀁 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 and a lone combining mark \u0301x.",
    "Control bytes\x00\x01\x1b[0m and a BOM \ufeff and NBSP\u00a0here\u2009thin.",
    "    leading spaces, trailing spaces    ",
    "tabs\t\tand\n\n\nnewlines \r\n  mixed   \t  runs",
    "  ",
    "",
    " ",
    "ｆｕｌｌｗｉｄｔｈ ＡＢＣ and ligature ﬁ and Å vs A\u030a",
    "中文混合English和数字12345以及标点，。！？",
]


def _special_lines(names: dict[str, str]) -> list[str]:
    """Lines with the added tokens of a shape inside them (keys: bos, eos, lstrip, rstrip, word, norm)."""
    b, e, ls, rs, w, n = (names[k] for k in ("bos", "eos", "lstrip", "rstrip", "word", "norm"))
    return [
        f"{b}Hello world{e}",
        f"  {b}  Hello  {e}  ",
        f"text {ls} after   {ls}x{ls}   ",
        f"{rs}  next {rs}\n\nline {rs}",
        f"a {w} b{w}c {w}. _{w} {w}",
        f"{n} and {n}{n} and x{n}y",
        f"{b}{e}{ls}{rs}{w}{n}",
        f"{ls}{rs}  {rs}   {ls}",
        f"中文{b}中文 {ls} 中文{rs} 中文",
        f"def f():\n    return {e}  # {w}\n",
    ]


@pytest.fixture(scope="module")
def lines(corpus_dir: Path) -> list[str]:
    def take(name, n, step):
        text = (corpus_dir / name).read_text(encoding="utf-8").splitlines(keepends=True)
        return text[: n * step : step]

    return take("en.txt", 200, 7) + take("zh.txt", 120, 3) + take("code.txt", 250, 11) + EXTRA_LINES


@pytest.fixture(scope="module")
def training_text(corpus_dir: Path) -> list[str]:
    out = []
    for name, n in (("en.txt", 3000), ("zh.txt", 400), ("code.txt", 2000)):
        out += (corpus_dir / name).read_text(encoding="utf-8").splitlines(keepends=True)[:n]
    return out


# ---- building the shapes -----------------------------------------------------------------------
def _train(training_text, pre, normalizer=None, vocab_size=900, limit_alphabet=None, alphabet=()):
    tok = HFTokenizer(models.BPE())
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    kw = {} if limit_alphabet is None else {"limit_alphabet": limit_alphabet}
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  initial_alphabet=list(alphabet), **kw)
    tok.train_from_iterator(training_text, trainer)
    return json.loads(tok.to_str())


@pytest.fixture(scope="module")
def llama3_json(training_text) -> dict:
    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Split(tokenizers.Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    data = _train(training_text, pre, alphabet=pre_tokenizers.ByteLevel.alphabet())
    n = len(data["model"]["vocab"])
    data["model"]["ignore_merges"] = True
    data["decoder"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
    data["added_tokens"] = [
        _added("<|begin_of_text|>", n), _added("<|end_of_text|>", n + 1), _added("<|eot_id|>", n + 2),
        _added("<mask>", n + 3, lstrip=True), _added("<sep>", n + 4, rstrip=True),
        _added("[WORD]", n + 5, special=False, single_word=True), _added("domain", n + 6, special=False, normalized=True),
    ]
    data["post_processor"] = {
        "type": "Sequence",
        "processors": [
            {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
            {"type": "TemplateProcessing",
             "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
             "pair": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                      {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
             "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [n], "tokens": ["<|begin_of_text|>"]}}},
        ],
    }
    return data


LLAMA3_NAMES = {"bos": "<|begin_of_text|>", "eos": "<|eot_id|>", "lstrip": "<mask>", "rstrip": "<sep>",
                "word": "[WORD]", "norm": "domain"}
SPM_NAMES = {"bos": "<s>", "eos": "</s>", "lstrip": "<mask>", "rstrip": "<sep>", "word": "[WORD]", "norm": "domain"}


@pytest.fixture(scope="module")
def spm_base(training_text) -> dict:
    """A character-level BPE trained on ▁-text, laid out as SentencePiece does: <unk> <s> </s>,
    the 256 byte tokens, then the pieces. A limited alphabet leaves many characters to byte
    fallback."""
    pre = pre_tokenizers.Metaspace(replacement=SP, prepend_scheme="always", split=True)
    data = _train(training_text, pre, vocab_size=1000, limit_alphabet=400)
    pieces = [t for t, _ in sorted(data["model"]["vocab"].items(), key=lambda kv: kv[1])]
    head = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    vocab = {t: i for i, t in enumerate(head + [p for p in pieces if p not in head])}
    n = len(vocab)
    data["model"].update(vocab=vocab, unk_token="<unk>", byte_fallback=True, fuse_unk=True)
    data["added_tokens"] = [
        _added("<unk>", 0), _added("<s>", 1), _added("</s>", 2),
        _added("<mask>", n, lstrip=True), _added("<sep>", n + 1, rstrip=True),
        _added("[WORD]", n + 2, special=False, single_word=True),
        _added("domain", n + 3, special=False, normalized=True),
    ]
    data["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                 {"SpecialToken": {"id": "<s>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}},
    }
    return data


def _replace(pattern: str, content: str) -> dict:
    return {"type": "Replace", "pattern": {"String": pattern}, "content": content}


SPM_DECODER = {"type": "Sequence", "decoders": [
    _replace(SP, " "), {"type": "ByteFallback"}, {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0},
]}


def _shape(base: dict, **fields) -> dict:
    data = json.loads(json.dumps(base))
    data.update(fields)
    return data


def spm_shapes(base: dict) -> dict[str, dict]:
    shapes = {
        "llama2_legacy": _shape(base, normalizer={"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": SP}, _replace(" ", SP)]}, pre_tokenizer=None, decoder=SPM_DECODER),
        "llama2_metaspace": _shape(base, normalizer=None, pre_tokenizer={
            "type": "Metaspace", "replacement": SP, "prepend_scheme": "first", "split": False}, decoder=SPM_DECODER),
        "gemma": _shape(base, normalizer=_replace(" ", SP), pre_tokenizer=None, decoder={
            "type": "Sequence", "decoders": [_replace(SP, " "), {"type": "ByteFallback"}, {"type": "Fuse"}]}),
    }
    for scheme in ("always", "first", "never"):
        for split in (True, False):
            meta = {"type": "Metaspace", "replacement": SP, "prepend_scheme": scheme, "split": split}
            shapes[f"metaspace_{scheme}_{'split' if split else 'whole'}"] = _shape(
                base, normalizer=None, pre_tokenizer=meta,
                decoder={"type": "Sequence", "decoders": [{"type": "ByteFallback"}, meta]})
    no_fallback = _shape(shapes["gemma"])
    no_fallback["model"]["byte_fallback"] = False  # unknown characters become (fused) <unk>
    shapes["gemma_unk_fused"] = no_fallback
    unfused = _shape(no_fallback)
    unfused["model"]["fuse_unk"] = False
    shapes["gemma_unk_unfused"] = unfused
    return shapes


def _load_both(data: dict, tmp_path: Path):
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return load_tokenizer(path), HFTokenizer.from_file(str(path))


def _assert_same(ours, hf, texts: list[str]) -> None:
    want = hf.encode_batch(texts, add_special_tokens=False)
    for text, w in zip(texts, want):
        got = ours.encode(text, allowed_special="all")
        assert got == w.ids, f"ids differ on {text[:100]!r}"
        assert ours.decode(got) == hf.decode(w.ids, skip_special_tokens=False), f"decode differs on {text[:100]!r}"
        assert ours.decode(got, skip_special_tokens=True) == hf.decode(w.ids), f"skip-decode differs on {text[:100]!r}"
    for text in texts[:20]:
        assert ours.encode(text, allowed_special="all", add_special_tokens=True) == hf.encode(text).ids


# ---- tests -------------------------------------------------------------------------------------
def test_llama3_shape(llama3_json, lines, tmp_path):
    ours, hf = _load_both(llama3_json, tmp_path)
    assert isinstance(ours, BPETokenizer) and ours.ignore_merges
    _assert_same(ours, hf, lines + _special_lines(LLAMA3_NAMES))
    assert ours.encode("Hi", add_special_tokens=True)[0] == ours.special_tokens["<|begin_of_text|>"]


def test_llama3_ignore_merges_changes_ids(llama3_json, tmp_path):
    """A word in the vocab is one token with ignore_merges even where merges would split it."""
    ours, hf = _load_both(llama3_json, tmp_path)
    data = _shape(llama3_json)
    data["model"]["ignore_merges"] = False
    (tmp_path / "plain").mkdir()
    plain, hf_plain = _load_both(data, tmp_path / "plain")
    vocab_words = [w for w in llama3_json["model"]["vocab"] if len(w) > 3][:300]
    texts = [w.replace("Ġ", " ") for w in vocab_words]
    assert [ours.encode(t) for t in texts] == [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)]
    assert [plain.encode(t) for t in texts] == [e.ids for e in hf_plain.encode_batch(texts, add_special_tokens=False)]


@pytest.mark.parametrize("name", [
    "llama2_legacy", "llama2_metaspace", "gemma", "metaspace_always_split", "metaspace_always_whole",
    "metaspace_first_split", "metaspace_first_whole", "metaspace_never_split", "metaspace_never_whole",
    "gemma_unk_fused", "gemma_unk_unfused",
])
def test_sentencepiece_bpe_shapes(spm_base, lines, tmp_path, name):
    data = spm_shapes(spm_base)[name]
    ours, hf = _load_both(data, tmp_path)
    assert isinstance(ours, SentencePieceBPETokenizer)
    texts = lines if name in ("llama2_legacy", "llama2_metaspace", "gemma") else lines[::4] + EXTRA_LINES
    _assert_same(ours, hf, texts + _special_lines(SPM_NAMES))


def test_byte_fallback_is_exercised(spm_base, lines, tmp_path):
    ours, _ = _load_both(spm_shapes(spm_base)["llama2_legacy"], tmp_path)
    ids = [i for t in lines for i in ours.encode(t)]
    assert sum(3 <= i < 259 for i in ids) > 100  # many characters fell back to bytes


@pytest.mark.parametrize("name", ["llama2_legacy", "gemma", "metaspace_first_split"])
def test_write_back_loads_in_tokenizers_with_same_ids(spm_base, llama3_json, lines, tmp_path, name):
    data = llama3_json if name == "llama3" else spm_shapes(spm_base)[name]
    ours, _ = _load_both(data, tmp_path)
    out = tmp_path / "written.json"
    save_hf_json(ours, out)
    again, hf = load_hf_json(out), HFTokenizer.from_file(str(out))
    texts = lines[::5] + _special_lines(SPM_NAMES)
    _assert_same(again, hf, texts)


def test_llama3_write_back(llama3_json, lines, tmp_path):
    ours, _ = _load_both(llama3_json, tmp_path)
    out = tmp_path / "written.json"
    save_hf_json(ours, out)
    assert json.loads(out.read_text(encoding="utf-8"))["post_processor"] == llama3_json["post_processor"]
    _assert_same(load_hf_json(out), HFTokenizer.from_file(str(out)), lines[::5] + _special_lines(LLAMA3_NAMES))
    ours.save(tmp_path / "own.json")  # lmkit's own format keeps the post-processor too
    own = BPETokenizer.load(tmp_path / "own.json")
    assert own.encode("Hi <|eot_id|>", "all", add_special_tokens=True) == ours.encode("Hi <|eot_id|>", "all", True)
    assert own.encode("Hi", add_special_tokens=True)[0] == ours.special_tokens["<|begin_of_text|>"]


@pytest.fixture(scope="module")
def fallback_pair(spm_base, tmp_path_factory):
    path = tmp_path_factory.mktemp("fallback") / "tokenizer.json"
    path.write_text(json.dumps(spm_shapes(spm_base)["llama2_legacy"], ensure_ascii=False), encoding="utf-8")
    return load_tokenizer(path), HFTokenizer.from_file(str(path))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
# Unassigned code points (Cn) are left out: whether U+323B0 is a letter depends on the Unicode
# version of each regex engine (Rust's tables vs the `regex` module's), not on the tokenizer.
@given(text=st.text(st.characters(blacklist_categories=("Cs", "Cn")), max_size=40))
def test_byte_fallback_random_unicode(fallback_pair, text):
    ours, hf = fallback_pair
    got = ours.encode(text, allowed_special="all")
    want = hf.encode(text, add_special_tokens=False).ids
    assert got == want
    assert ours.decode(got) == hf.decode(want, skip_special_tokens=False)


@pytest.fixture(scope="module")
def llama3_pair(llama3_json, tmp_path_factory):
    path = tmp_path_factory.mktemp("llama3") / "tokenizer.json"
    path.write_text(json.dumps(llama3_json, ensure_ascii=False), encoding="utf-8")
    return load_tokenizer(path), HFTokenizer.from_file(str(path))


def _text_with_tokens(names: dict[str, str]):
    """Random text made of unicode runs, whitespace runs and the shape's added tokens."""
    part = st.one_of(
        st.text(st.characters(blacklist_categories=("Cs", "Cn")), max_size=8),
        st.sampled_from([" ", "  ", "\n", "\t", " \n ", "x", "_", "中"]),
        st.sampled_from(sorted(set(names.values()))),
    )
    return st.lists(part, max_size=10).map("".join)


@pytest.fixture(scope="module")
def spm_pairs(spm_base, tmp_path_factory):
    """shape name -> (lmkit tokenizer, tokenizers tokenizer), built on first use."""
    made: dict = {}

    def get(name: str):
        if name not in made:
            path = tmp_path_factory.mktemp(name) / "tokenizer.json"
            path.write_text(json.dumps(spm_shapes(spm_base)[name], ensure_ascii=False), encoding="utf-8")
            made[name] = load_tokenizer(path), HFTokenizer.from_file(str(path))
        return made[name]

    return get


@pytest.mark.parametrize("pair, names", [
    ("fallback_pair", SPM_NAMES), ("llama3_pair", LLAMA3_NAMES), ("llama2_metaspace", SPM_NAMES),
    ("metaspace_first_split", SPM_NAMES), ("gemma_unk_fused", SPM_NAMES),
])
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_added_token_flags_random_text(request, spm_pairs, pair, names, data):
    """lstrip / rstrip / single_word / normalized tokens among random text, whitespace runs and each other."""
    ours, hf = request.getfixturevalue(pair) if pair.endswith("_pair") else spm_pairs(pair)
    text = data.draw(_text_with_tokens(names))
    want = hf.encode(text, add_special_tokens=False).ids
    assert ours.encode(text, allowed_special="all") == want
    assert ours.decode(want) == hf.decode(want, skip_special_tokens=False)


def test_added_tokens_written_back_match_tokenizers(spm_base, tmp_path):
    ours, _ = _load_both(spm_shapes(spm_base)["llama2_legacy"], tmp_path)
    ids = ours.add_tokens(["<tool_call>", "▁the", "<tool_call>"], special=True)
    assert ids[0] == ids[2] == ours.vocab_size - 1 and ids[1] == ours._model_ids["▁the"]
    save_hf_json(ours, tmp_path / "grown.json")
    hf = HFTokenizer.from_file(str(tmp_path / "grown.json"))
    text = "call <tool_call>{\"a\": 1}</s> the end"
    assert ours.encode(text, allowed_special="all") == hf.encode(text, add_special_tokens=False).ids


@pytest.mark.parametrize("change, message", [
    ({"pre_tokenizer": {"type": "Whitespace"}}, "pre-tokenizer .*Whitespace.* not supported"),
    ({"normalizer": {"type": "BertNormalizer"}}, "normalizer 'BertNormalizer' is not supported"),
    ({"decoder": {"type": "WordPiece"}}, "decoder 'WordPiece' is not supported"),
    ({"model": {"dropout": 0.1}}, "dropout"),
    ({"model": {"continuing_subword_prefix": "##"}}, "continuing_subword_prefix"),
])
def test_unsupported_parts_are_refused_by_name(spm_base, tmp_path, change, message):
    from lmkit.errors import TokenizerError

    data = spm_shapes(spm_base)["gemma"]
    for key, value in change.items():
        data[key] = {**data[key], **value} if key == "model" else value
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(TokenizerError, match=message):
        load_tokenizer(path)


def test_pickles_for_worker_processes(spm_pairs):
    import pickle

    ours, hf = spm_pairs("llama2_legacy")
    again = pickle.loads(pickle.dumps(ours))
    text = "Hello <s> wörld 🙂 domain  x"
    assert again.encode(text, "all") == ours.encode(text, "all") == hf.encode(text, add_special_tokens=False).ids
    assert again.decode(again.encode(text, "all")) == ours.decode(ours.encode(text, "all"))
