"""Cleaning filters, the pipeline, augmentation, mixtures and datasheets (issue 19).

The quality-rule tests build documents at each threshold (just below, at, just above) and
write the expected verdict from the rule text (Gopher table A1 / datatrove's defaults, C4
section 2.2), not from our code. Where datatrove is installed, the same documents also go
through datatrove's own filters (its spaCy word split replaced by ours, so that the rules and
not the tokenizers are compared).
"""

from __future__ import annotations

import json
import random

import pytest

from lmkit.data.filters import (
    BoilerplateLines,
    C4QualityFilter,
    Dropped,
    GopherQualityFilter,
    GopherRepetitionFilter,
    PIIMasker,
    UnicodeNormalizer,
)
from lmkit.data.filters.words import split_words

# ---- hand-built documents -------------------------------------------------------------------
FILLER = [f"w{c}{d}x" for c in "abcdefghij" for d in "klmnopqrst"]  # 100 distinct 4-letter words


def words_doc(n: int, stop: tuple[str, ...] = ("the", "and"), word: str | None = None) -> str:
    """n distinct words (two of them stop words), one line."""
    body = list(stop) + [word or FILLER[i % len(FILLER)] + str(i // len(FILLER)) * (i >= 100) for i in range(n - len(stop))]
    return " ".join(body)


def with_mean_length(mean_times_10: int) -> str:
    """50 words whose mean length is mean_times_10 / 10 (the two stop words are 'the' and 'and')."""
    total = mean_times_10 * 50 // 10
    lengths = [3, 3] + [0] * 48
    rest = total - 6
    for i in range(48):
        lengths[2 + i] = rest // 48 + (1 if i < rest % 48 else 0)
    words = ["the", "and"] + ["".join(random.Random(i).choice("bcdfghjklmnpqrstvwxz") for _ in range(n)) for i, n in enumerate(lengths[2:])]
    return " ".join(words)


gq = GopherQualityFilter()


@pytest.mark.parametrize("n,keep", [(49, False), (50, True), (51, True)])
def test_gopher_min_words(n, keep):
    assert gq.keep(words_doc(n)) is keep


def test_gopher_max_words():
    small = GopherQualityFilter(max_doc_words=60)
    assert small.keep(words_doc(60)) and small.keep(words_doc(59)) and not small.keep(words_doc(61))


@pytest.mark.parametrize("mean10,keep", [(29, False), (30, True), (31, True), (99, True), (100, True), (101, False)])
def test_gopher_mean_word_length(mean10, keep):
    doc = with_mean_length(mean10)
    lens = [len(w) for w in doc.split()]
    assert abs(sum(lens) / len(lens) - mean10 / 10) < 1e-9
    assert gq.keep(doc) is keep


@pytest.mark.parametrize("symbol", ["#", "...", "…"])
@pytest.mark.parametrize("n_words,keep", [(55, True), (54, True), (53, False)])
def test_gopher_symbol_ratio(symbol, n_words, keep):
    # 6 symbols among n_words words + 6 symbol tokens: 6/61 and 6/60 = 0.1 (not above) kept, 6/59 dropped;
    # a last word after them keeps the line from ending in an ellipsis
    doc = words_doc(n_words - 1) + f" {symbol}" * 6 + " wend"
    assert len(split_words(doc)) == n_words + 6
    assert gq.keep(doc) is keep


@pytest.mark.parametrize("bullets,keep", [(9, True), (10, False)])
def test_gopher_bullet_lines(bullets, keep):
    # 10 lines, `bullets` start with a bullet: 9/10 = 0.9 is not above 0.9 -> kept; 10/10 dropped
    lines = [("- " if i < bullets else "") + words_doc(6, stop=("the", "and") if i == 0 else ()) for i in range(10)]
    lines = [l + f" z{i}" for i, l in enumerate(lines)]
    assert gq.keep("\n".join(lines)) is keep


@pytest.mark.parametrize("ellipsis_lines,keep", [(2, True), (3, True), (4, False)])
def test_gopher_ellipsis_lines(ellipsis_lines, keep):
    # 10 lines of 6 words; ellipsis at the end of some: 3/10 = 0.3 kept, 4/10 dropped.
    # The symbol rule must not fire: 4 ellipses over >= 60 words stays below 0.1.
    lines = [" ".join(FILLER[6 * i:6 * i + 6]) for i in range(10)]
    lines[0] = "the and " + lines[0]
    lines = [l + (" …" if i < ellipsis_lines else ".") for i, l in enumerate(lines)]
    assert gq.keep("\n".join(lines)) is keep


@pytest.mark.parametrize("numbers,keep", [(12, True), (13, True), (14, False)])
def test_gopher_alpha_words(numbers, keep):
    # 52 alphabetic words + `numbers` numeric words: share with a letter >= 0.8 kept.
    # 52/64 = 0.8125, 52/65 = 0.8 (not below), 52/66 = 0.788 dropped
    doc = words_doc(52) + "".join(f" {1000 + i}" for i in range(numbers))
    assert gq.keep(doc) is keep


@pytest.mark.parametrize("stop,keep", [((), False), (("the",), False), (("the", "the"), False), (("the", "and"), True)])
def test_gopher_stop_words(stop, keep):
    # at least two *distinct* stop words
    doc = words_doc(60, stop=stop)
    assert gq.keep(doc) is keep


def test_gopher_chinese_variant_counts_han_characters():
    zh = "的是" + "".join(chr(0x4E00 + 37 * i) for i in range(48))  # 50 Han characters, 2 stop words
    assert gq.keep(zh)
    assert not gq.keep(zh[:-1])  # 49 words
    assert GopherQualityFilter(language="en").apply(zh) == Dropped("gopher_below_avg_word_length")


# ---- repetition --------------------------------------------------------------------------------
gr = GopherRepetitionFilter(top_n_grams=(), dup_n_grams=())


@pytest.mark.parametrize("dups,keep", [(2, True), (3, True), (4, False)])
def test_repetition_duplicate_line_fraction(dups, keep):
    # 10 lines, `dups` of them repeat the first: 3/10 = 0.3 not above -> kept (char rule off)
    f = GopherRepetitionFilter(dup_line_char_frac=None, dup_para_char_frac=None, top_n_grams=(), dup_n_grams=())
    lines = [f"line number {i} of the text" for i in range(10 - dups)] + ["line number 0 of the text"] * dups
    assert f.keep("\n".join(lines)) is keep


def test_repetition_duplicate_line_chars():
    # one repeated line of 20 chars in a text of 100 chars = 0.2 -> kept; 21 -> dropped
    f = GopherRepetitionFilter(dup_line_frac=None, dup_para_frac=None, dup_para_char_frac=None, top_n_grams=(), dup_n_grams=())
    a = "a" * 20
    text = "\n".join([a, "b" * 58, a])  # 20 + 1 + 58 + 1 + 20 = 100
    assert len(text) == 100 and f.keep(text)
    text = "\n".join([a + "a", "b" * 56, a + "a"])  # dup chars 21 / 100
    assert len(text) == 100 and not f.keep(text)


def test_repetition_paragraph_rules():
    f = GopherRepetitionFilter(dup_line_frac=None, dup_line_char_frac=None, dup_para_char_frac=None, top_n_grams=(), dup_n_grams=())
    paras = [f"paragraph {i}" for i in range(7)] + ["paragraph 0"] * 3  # 3/10
    assert f.keep("\n\n".join(paras))
    paras = [f"paragraph {i}" for i in range(6)] + ["paragraph 0"] * 4  # 4/10
    assert not f.keep("\n\n".join(paras))


def test_repetition_top_2gram():
    # top 2-gram "ab cd" (5 chars) x k over len(text); limit 0.2
    f = GopherRepetitionFilter(None, None, None, None, top_n_grams=((2, 0.2),), dup_n_grams=())
    def doc(k: int, total: int) -> str:
        body = " ".join(["ab cd"] * k)
        pad = total - len(body) - 1
        return body + " " + "z" * pad
    assert f.keep(doc(4, 100))  # 20 / 100 = 0.2
    assert not f.keep(doc(5, 100))  # 25 / 100


def test_repetition_duplicated_5grams():
    f = GopherRepetitionFilter(None, None, None, None, top_n_grams=(), dup_n_grams=((5, 0.15),))
    gram = "aa bb cc dd ee"  # joined without spaces: 10 chars
    # two copies: the second is a duplicated 5-gram of 10 chars
    text = gram + " " + gram
    assert len(text) == 29
    # 10 duplicated chars: 10/67 = 0.149 kept, 10/66 = 0.152 dropped
    assert f.keep(text + " " + "z" * 37)
    assert not f.keep(text + " " + "z" * 36)


# ---- C4 ------------------------------------------------------------------------------------------
c4 = C4QualityFilter()
GOOD = "This is a fine sentence."


def c4_doc(lines: list[str]) -> str:
    return "\n".join(lines)


@pytest.mark.parametrize("n,keep", [(4, False), (5, True)])
def test_c4_min_sentences(n, keep):
    assert c4.keep(c4_doc([GOOD] * n)) is keep


def test_c4_line_rules():
    base = [GOOD] * 5
    out = c4.apply(c4_doc(base + ["no terminal punctuation", "Two words.", "It ends with dots...",
                                  "Enable javascript to view this page.", "Read our privacy policy here.",
                                  "A " + "x" * 1001 + " word.", "Wikipedia says so.[1]"]))
    assert out == c4_doc(base + ["Wikipedia says so."])
    assert c4.apply(c4_doc(base + ["Lorem ipsum dolor sit amet."])) == Dropped("lorem_ipsum")
    assert c4.apply(c4_doc(base + ["Code like {this} is here."])) == Dropped("curly_bracket")
    assert c4.keep(c4_doc(base + ["Code like {this} without end"]))  # the line goes first, the bracket never counts
    assert c4.keep(c4_doc(["Exactly three words."] * 5)) and not c4.keep(c4_doc(["Two words."] * 5))
    zh = "这是一个很好的句子。" * 1
    assert c4.keep(c4_doc([zh] * 5))


# ---- datatrove itself ---------------------------------------------------------------------------
def _boundary_documents() -> list[str]:
    docs = [words_doc(n) for n in (49, 50, 51)]
    docs += [with_mean_length(m) for m in (29, 30, 31, 99, 100, 101)]
    docs += [words_doc(50) + " #" * k for k in (4, 5, 6)]
    docs += [words_doc(52) + "".join(f" {1000 + i}" for i in range(k)) for k in (12, 13, 14)]
    docs += [words_doc(60, stop=s) for s in ((), ("the",), ("the", "and"))]
    rng = random.Random(0)
    vocab = ["the", "and", "of", "data", "model", "#", "...", "-", "123", "x", "tokenizer", "a", "to", "•", "…"]
    for _ in range(150):
        lines = [" ".join(rng.choice(vocab) for _ in range(rng.randint(1, 12))) for _ in range(rng.randint(1, 12))]
        docs.append(("\n\n" if rng.random() < 0.3 else "\n").join(lines))
    return docs


def test_same_verdicts_as_datatrove(monkeypatch):
    pytest.importorskip("datatrove")
    import datatrove.pipeline.filters.gopher_quality_filter as dq
    import datatrove.pipeline.filters.gopher_repetition_filter as dr
    from datatrove.data import Document

    monkeypatch.setattr(dq, "split_into_words", lambda text, language=None: split_words(text))
    monkeypatch.setattr(dr, "split_into_words", lambda text, language=None: split_words(text))
    theirs_q, theirs_r = dq.GopherQualityFilter(), dr.GopherRepetitionFilter()
    ours_q, ours_r = GopherQualityFilter(language="en"), GopherRepetitionFilter()
    docs = _boundary_documents()
    for i, text in enumerate(docs):
        for ours, theirs in ((ours_q, theirs_q), (ours_r, theirs_r)):
            verdict = theirs.filter(Document(text=text, id=str(i)))
            keep_theirs = verdict is True or (isinstance(verdict, tuple) and verdict[0])
            assert ours.keep(text) is keep_theirs, (type(ours).__name__, text[:80], verdict)


# ---- PII -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text,expected", [
    ("Mail john.doe+x@example.co.uk today.", "Mail <EMAIL> today."),
    ("write to 张三@例子 or a@b", "write to 张三@例子 or a@b"),  # not addresses
    ("host 192.168.1.20 is up", "host <IP_ADDRESS> is up"),
    ("999.1.1.1 and 1.2.3 and 3.11.7", "999.1.1.1 and 1.2.3 and 3.11.7"),
    ("v6 2001:db8::ff00:42:8329 and fe80::1 here", "v6 <IP_ADDRESS> and <IP_ADDRESS> here"),
    ("full 2001:0db8:85a3:0000:0000:8a2e:0370:7334.", "full <IP_ADDRESS>."),
    ("code a::b and time 12:30:45", "code a::b and time 12:30:45"),
    ("call +1 415-555-0132 or (555) 123-4567 or 555.123.4567", "call <PHONE> or <PHONE> or <PHONE>"),
    ("手机13812345678，谢谢", "手机<PHONE>，谢谢"),
    ("联系a.b@example.com。", "联系<EMAIL>。"),
    ("+44 20 7946 0958", "<PHONE>"),
    ("身份证 11010519491231002X 号", "身份证 <ID> 号"),
    ("SSN 078-05-1120.", "SSN <ID>."),
    ("card 4111 1111 1111 1111 ok", "card <ID> ok"),
    ("not a card 4111 1111 1111 1112", "not a card 4111 1111 1111 1112"),  # fails the Luhn check
    ("year 2024, price 1,234,567, pi 3.14159", "year 2024, price 1,234,567, pi 3.14159"),
])
def test_pii_masking(text, expected):
    assert PIIMasker().mask(text) == expected


def test_pii_counts_and_kinds():
    m = PIIMasker(kinds=["email"])
    assert m.mask("a@example.com 192.168.0.1") == "<EMAIL> 192.168.0.1"
    assert m.counts == {"email": 1}
    m = PIIMasker()
    m.mask("a@example.com b@example.org 10.0.0.1 13812345678")
    assert m.counts == {"email": 2, "ip": 1, "id": 0, "phone": 1}


# ---- normalisation and boilerplate -----------------------------------------------------------------
def test_unicode_and_control_characters():
    f = UnicodeNormalizer("NFKC")
    assert f.apply("ｆｕｌｌ\u00a0width ① e\u0301\r\nnext\x00\u200b\ufeff") == "full width 1 é\nnext"
    assert UnicodeNormalizer("NFC").apply("e\u0301 ①") == "é ①"
    assert f.apply("\x00\u200b  ") == Dropped("empty")


def test_boilerplate_lines():
    f = BoilerplateLines()
    text = "Home | About | Contact\nA real sentence about tokenizers.\nThis site uses cookies.\n© 2024 Foo Inc. All rights reserved.\nShare on Facebook"
    assert f.apply(text) == "A real sentence about tokenizers."
    assert f.apply("Click here\nSubscribe now!") == Dropped("only_boilerplate")
    assert f.apply("Plain text stays.") == "Plain text stays."


# ---- language identification ---------------------------------------------------------------------
def _parses(line: str) -> bool:
    """A line of the code sample that is a Python statement (not a docstring or comment line)."""
    import ast

    try:
        tree = ast.parse(line)
    except SyntaxError:
        return False
    return bool(tree.body) and not isinstance(tree.body[0], ast.Expr)


@pytest.fixture(scope="module")
def identifier():
    from lmkit.data.filters.language import LanguageIdentifier, corpus_samples

    samples = corpus_samples(200_000)
    return LanguageIdentifier.train({k: v[:100_000] for k, v in samples.items()}), samples


def test_language_id_accuracy_on_held_out_lines(identifier):
    """Lines the model never saw (past its 100,000 training characters); a line's label is what it is:
    Chinese lines are those mostly of Han characters, code lines those that parse as Python statements."""
    from lmkit.corpus import chinese_text
    from lmkit.data.filters.words import han_fraction

    ident, samples = identifier
    held = {
        "en": [l for l in samples["en"][100_000:].split("\n") if len(l.split()) >= 6][:200],
        "code": [l for l in samples["code"][100_000:].split("\n") if len(l.strip()) >= 25 and _parses(l.strip())][:200],
        "zh": [l for l in chinese_text()[100_000:].split("\n") if len(l.strip()) >= 10 and han_fraction(l) >= 0.3][:200],
    }
    floor = {"en": 0.95, "zh": 0.95, "code": 0.8}  # measured 0.98 / 0.99 / 0.85: one-line code is the hard case
    for label, lines in held.items():
        assert len(lines) >= 150
        acc = sum(ident.predict(l)[0] == label for l in lines) / len(lines)
        assert acc >= floor[label], (label, acc)


def test_language_filter_and_save(identifier, tmp_path):
    from lmkit.data.filters import LanguageFilter, LanguageIdentifier

    ident, _ = identifier
    path = tmp_path / "lid.json"
    ident.save(path)
    f = LanguageFilter(keep=["en"], identifier=LanguageIdentifier.load(path))
    assert f.keep("The function returns a new list with the items of the sequence in sorted order.")
    assert f.apply("这是一个中文句子，用来测试语言识别是否正确。") == Dropped("language_zh")
    assert f.apply("for key, value in sorted(table.items()): print(key, value)") == Dropped("language_code")


# ---- the pipeline --------------------------------------------------------------------------------
GOOD_DOC = ("The tokenizer reads the text and splits it into words that the model can learn from. "
            "Each word is mapped to an integer, and the model learns to predict the next one with care. "
            "Training repeats this over many documents, so that the statistics of the language are captured. "
            "Evaluation then measures how well the model predicts text that it has not seen before today.")


def _pipeline(**kw):
    from lmkit.data.clean import CleanPipeline

    filters = [UnicodeNormalizer(), BoilerplateLines(), GopherQualityFilter(), GopherRepetitionFilter(), PIIMasker()]
    return CleanPipeline(filters, progress=False, **kw)


def test_pipeline_counts_drops_and_resumes(tmp_path):
    from lmkit.data.clean import STATE_DIR

    raw = tmp_path / "raw"
    raw.mkdir()
    docs_a = [GOOD_DOC, "too short", GOOD_DOC.replace("today", "today, mail me at a@example.com") + "\nAccept cookies",
              "\n".join([GOOD_DOC] * 4)]
    (raw / "a.jsonl").write_text("".join(json.dumps({"text": t, "label": i}) + "\n" for i, t in enumerate(docs_a)))
    (raw / "b.txt").write_text(GOOD_DOC + "\n\n" + "# # # # junk\n\n" + GOOD_DOC.upper() + "\n")
    out, dropped = tmp_path / "out", tmp_path / "dropped"
    p = _pipeline(split_by="paragraph")
    stats = p.run([raw], out, dropped)
    assert stats.documents_in == 7
    assert stats.drop_counts() == {"gopher_quality": 3, "gopher_repetition": 1}  # short, junk, upper-case (no stop words); repeats
    assert stats.changed == {"boilerplate": 1, "pii": 1}
    kept = [json.loads(l) for l in (out / "a.jsonl").read_text().splitlines()]
    assert [k["label"] for k in kept] == [0, 2]  # every other field survives
    assert "<EMAIL>" in kept[1]["text"] and "cookies" not in kept[1]["text"]
    why = [json.loads(l) for l in (dropped / "a.jsonl.dropped.jsonl").read_text().splitlines()]
    assert [(w["filter"], w["reason"]) for w in why] == [("gopher_quality", "gopher_short_doc"),
                                                         ("gopher_repetition", "dup_line_frac")]
    report = json.loads((out / "clean_report.json").read_text())
    assert report["drop_counts"] == stats.drop_counts() and report["shards_skipped"] == 0
    # a rerun skips both shards and reports the same counts
    (out / "b.txt").write_text("sentinel")
    again = _pipeline(split_by="paragraph").run([raw], out, dropped)
    assert again.to_dict() == stats.to_dict() and (out / "b.txt").read_text() == "sentinel"
    assert json.loads((out / "clean_report.json").read_text())["shards_skipped"] == 2
    # an interrupted shard (no state file) is redone; other settings redo everything
    (out / STATE_DIR / "b.txt.json").unlink()
    _pipeline(split_by="paragraph").run([raw], out, dropped)
    assert (out / "b.txt").read_text() != "sentinel"
    from lmkit.data.clean import CleanPipeline

    CleanPipeline([UnicodeNormalizer()], split_by="paragraph", progress=False).run([raw], out)
    assert json.loads((out / "clean_report.json").read_text())["shards_skipped"] == 0


def test_pipeline_reads_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": [GOOD_DOC, "short"], "id": [1, 2]}), tmp_path / "s.parquet")
    stats = _pipeline().run([tmp_path / "s.parquet"], tmp_path / "out")
    assert (stats.documents_in, stats.documents_out) == (2, 1)
    assert json.loads((tmp_path / "out" / "s.jsonl").read_text()) == {"text": GOOD_DOC, "id": 1}


# ---- augmentation --------------------------------------------------------------------------------
EXAMPLES = [{"text": "The movie was very good and the actor was great .", "label": "pos"},
            {"text": "A boring plot and a terrible ending . I want my money back .", "label": "neg"},
            {"text": "这部电影非常好，我很喜欢。", "label": "pos"}]


def test_eda_is_deterministic_and_keeps_labels():
    from lmkit.data.augment import EDAConfig, EDAugmenter

    cfg = EDAConfig(num_aug=6, operations=("sr", "ri", "rs", "rd", "mask", "shuffle"), seed=3)
    a = list(EDAugmenter(cfg).augment_records(EXAMPLES))
    b = list(EDAugmenter(EDAConfig(**{**vars(cfg)})).augment_records(EXAMPLES))
    assert a == b and len(a) == len(EXAMPLES) * 7
    c = list(EDAugmenter(EDAConfig(**{**vars(cfg), "seed": 4})).augment_records(EXAMPLES))
    assert a != c
    for i, ex in enumerate(EXAMPLES):
        group = a[i * 7:(i + 1) * 7]
        assert group[0] == ex and all(g["label"] == ex["label"] for g in group)
        assert [g["augmentation"] for g in group[1:]] == ["sr", "ri", "rs", "rd", "mask", "shuffle"]
    sr, ri, rs, rd, mask, shuffle = (g["text"] for g in a[1:7])
    words = EXAMPLES[0]["text"].split()
    assert len(sr.split()) == len(words) and sr != EXAMPLES[0]["text"]  # movie/good/actor/great have synonyms
    assert len(ri.split()) == len(words) + 1  # alpha 0.1 of 11 words: one insertion
    assert sorted(rs.split()) == sorted(words) and rs != EXAMPLES[0]["text"]
    assert set(rd.split()) <= set(words) and 1 <= len(rd.split()) <= len(words)
    assert mask.split().count("<mask>") == 1 and len(mask.split()) == len(words) - 1 + 1  # one word -> one mask
    two = a[7 + 6]["text"]  # the second example's sentences, shuffled
    assert sorted([two[: two.index(".") + 1], two[two.index(".") + 2:]]) == sorted(
        ["A boring plot and a terrible ending .", "I want my money back ."])
    zh_rs = a[14 + 3]["text"]  # Chinese is augmented character by character
    assert sorted(zh_rs) == sorted(EXAMPLES[2]["text"])


def test_paraphrase_with_a_fake_callable_and_a_tiny_lmkit_model():
    import torch

    from lmkit.data.paraphrase import back_translation, paraphrase_records, prompt_paraphraser, prompt_translator

    def fake_translate(text, source, target):
        return text[::-1] if target == "Chinese" else text[::-1].replace("good", "fine")

    out = list(paraphrase_records(EXAMPLES[:1], back_translation(fake_translate)))
    assert out[1] == {"text": "The movie was very fine and the actor was great .", "label": "pos", "augmentation": "paraphrase"}
    calls = []
    para = prompt_paraphraser(lambda prompt: calls.append(prompt) or " same words\nsecond line")
    assert para("hello") == "same words" and "hello" in calls[0]
    assert prompt_translator(lambda p: "bonjour")("hello", "English", "French") == "bonjour"

    from lmkit.infer.generate import generate_text
    from lmkit.models.config import ModelConfig
    from lmkit.models.decoder import DecoderLM
    from lmkit.tokenizers import BPETokenizer

    tok = BPETokenizer.train(["the movie was good the actor was great"] * 20, vocab_size=300)
    torch.manual_seed(0)
    model = DecoderLM(ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_layers=1, n_heads=2, max_seq_len=256)).eval()
    para = prompt_paraphraser(lambda p: generate_text(model, tok, p, max_new_tokens=8, do_sample=False))
    out = list(paraphrase_records(EXAMPLES[:2], para, skip_unchanged=False))
    assert out[0] == EXAMPLES[0] and len(out) in (2, 3, 4)
    assert [o["label"] for o in out if o["text"] in (EXAMPLES[1]["text"],)] == ["neg"]
    assert all(o["label"] == ("pos" if i < out.index(EXAMPLES[1]) else "neg") for i, o in enumerate(out))


# ---- balancing and mixtures ----------------------------------------------------------------------
def test_temperature_weights_formula():
    from lmkit.data.mixture import temperature_weights

    sizes = {"a": 4000, "b": 400, "c": 40}
    for T in (1.0, 2.0, 5.0):
        w = temperature_weights(sizes, T)
        z = sum(n ** (1 / T) for n in sizes.values())
        assert all(abs(w[k] - sizes[k] ** (1 / T) / z) < 1e-12 for k in sizes)
    assert temperature_weights(sizes, 1.0)["a"] == pytest.approx(4000 / 4440)
    assert list(temperature_weights(sizes, float("inf")).values()) == pytest.approx([1 / 3] * 3)


def test_mixture_draws_follow_the_temperature_formula():
    """Chi-square goodness of fit of 20,000 draws against p_i ∝ n_i^(1/T) (T = 2)."""
    from lmkit.data.mixture import MixtureDataset

    sizes = {"a": 4000, "b": 400, "c": 40}
    sources = {k: [{"x": i} for i in range(n)] for k, n in sizes.items()}
    mix = MixtureDataset(sources, temperature=2.0, samples_per_epoch=20_000, seed=11, with_source=True)
    drawn = list(mix)
    z = sum(n ** 0.5 for n in sizes.values())
    chi2 = 0.0
    for k, n in sizes.items():
        expected = 20_000 * n ** 0.5 / z
        observed = sum(d["source"] == k for d in drawn)
        chi2 += (observed - expected) ** 2 / expected
    assert chi2 < 13.82  # the 0.999 quantile of chi-square with 2 degrees of freedom
    # the small source is over-sampled evenly: every example 35 or 36 times
    from collections import Counter

    per_example = Counter(d["x"] for d in drawn if d["source"] == "c")
    assert len(per_example) == 40 and max(per_example.values()) - min(per_example.values()) <= 1


def test_mixture_feeds_the_trainer_and_resumes(tmp_path):
    import torch

    from lmkit.data.mixture import MixtureDataset
    from lmkit.models.config import ModelConfig
    from lmkit.models.decoder import DecoderLM
    from lmkit.train import TrainConfig, Trainer, set_seed

    g = torch.Generator().manual_seed(0)
    domain = lambda n, lo, hi: [{"input_ids": (ids := torch.randint(lo, hi, (12,), generator=g)), "labels": ids} for _ in range(n)]  # noqa: E731
    sources = {"code": domain(30, 0, 32), "prose": domain(6, 32, 64)}
    make = lambda: MixtureDataset(sources, temperature=2.0,  # noqa: E731
                                  batch_size=4, samples_per_epoch=24, seed=5)
    batches = list(make())
    assert len(batches) == 6 and batches[0]["input_ids"].shape == (4, 12)
    resumed = make()
    it = iter(resumed)
    next(it), next(it)
    state = resumed.state_dict()
    fresh = make()
    fresh.load_state_dict(state)
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(fresh, batches[2:]))

    set_seed(0)
    model = DecoderLM(ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=2, d_ff=64, max_seq_len=16))
    cfg = TrainConfig(max_steps=3, lr=5e-3, warmup_steps=1, out_dir=str(tmp_path / "run"), progress=False, seed=1)
    history = Trainer(model, cfg, make()).train()
    assert len(history) >= 1 and all(torch.isfinite(torch.tensor(r["loss"])) for r in history)


def test_balancing():
    from collections import Counter

    from lmkit.data.balance import balanced_sampler, class_weights, resample

    labels = ["a"] * 90 + ["b"] * 10
    w = class_weights(labels)
    assert w["b"] / w["a"] == pytest.approx(9.0) and sum(w[l] for l in labels) / 100 == pytest.approx(1.0)
    assert class_weights(labels, "sqrt_inverse")["b"] / class_weights(labels, "sqrt_inverse")["a"] == pytest.approx(3.0)
    eff = class_weights(labels, "effective", beta=0.9)
    assert eff["b"] / eff["a"] == pytest.approx((1 - 0.9 ** 90) / (1 - 0.9 ** 10))
    items = list(range(100))
    over = resample(items, labels, "over", seed=1)
    assert Counter(labels[i] for i in over) == {"a": 90, "b": 90} and set(over) == set(items)
    under = resample(items, labels, "under", seed=1)
    assert Counter(labels[i] for i in under) == {"a": 10, "b": 10}
    assert resample(items, labels, "under", seed=1) == under
    drawn = Counter(labels[i] for i in balanced_sampler(labels, num_samples=4000, seed=0))
    assert abs(drawn["b"] / 4000 - 0.5) < 0.05


# ---- datasheet and CLI ---------------------------------------------------------------------------
def test_datasheet_and_cli(tmp_path, identifier, monkeypatch):
    from click.testing import CliRunner

    monkeypatch.setenv("LMKIT_PROGRESS", "off")  # --quiet sets it; monkeypatch restores it afterwards

    from lmkit.cli import cli as main
    from lmkit.data.datasheet import build_datasheet, datasheet_markdown

    ident, _ = identifier
    sheet = build_datasheet("toy", [GOOD_DOC, "中文文本，五个字。"], identifier=ident, tokenizers={"chars": _Chars()},
                            clean_report={"documents_in": 5, "documents_out": 2, "filters": [{"name": "gopher_quality"}],
                                          "drop_counts": {"gopher_quality": 3}, "dropped": {"gopher_quality": {"gopher_short_doc": 3}}},
                            dedup_report={"documents": 4, "kept": 3, "exact_duplicates": 1, "near_duplicates": 0,
                                          "duplicate_rate": 0.25, "clusters": 1})
    assert sheet["sizes"]["documents"] == 2 and sheet["languages"] == {"en": 1, "zh": 1}
    assert sheet["tokens"]["chars"] == len(GOOD_DOC) + 9
    md = datasheet_markdown(sheet)
    assert "| gopher_quality | 3 | 0 | gopher_short_doc 3 |" in md and "Duplicate rate 25.00 %" in md

    raw = tmp_path / "raw.txt"
    raw.write_text(GOOD_DOC + "\n\nshort line\n\n" + GOOD_DOC + " Mail a@example.com now.\n")
    runner = CliRunner()
    r = runner.invoke(main, ["data", "clean", str(raw), "-o", str(tmp_path / "out"), "--filters", "unicode,gopher_quality,pii",
                             "--dropped", str(tmp_path / "dropped"), "--quiet"])
    assert r.exit_code == 0, r.output
    assert "3 documents in, 2 kept" in r.output and "gopher_quality 1" in r.output
    r = runner.invoke(main, ["data", "stats", str(tmp_path / "out" / "raw.txt"), "-o", str(tmp_path / "sheet"),
                             "--clean-report", str(tmp_path / "out" / "clean_report.json"), "--no-languages", "--quiet"])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "sheet.json").read_text())["cleaning"]["drop_counts"] == {"gopher_quality": 1}
    ex = tmp_path / "ex.jsonl"
    ex.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in EXAMPLES))
    r = runner.invoke(main, ["data", "augment", str(ex), "-o", str(tmp_path / "aug.jsonl"), "--num-aug", "2", "--quiet"])
    assert r.exit_code == 0, r.output
    aug = [json.loads(l) for l in (tmp_path / "aug.jsonl").read_text().splitlines()]
    assert len(aug) == 9 and [a["label"] for a in aug] == ["pos"] * 3 + ["neg"] * 3 + ["pos"] * 3
    r = runner.invoke(main, ["data", "mix", f"a={ex}", f"b={tmp_path / 'aug.jsonl'}", "-o", str(tmp_path / "mix.jsonl"),
                             "--temperature", "2", "--samples", "30", "--quiet"])
    assert r.exit_code == 0, r.output
    assert len((tmp_path / "mix.jsonl").read_text().splitlines()) == 30


class _Chars:
    def encode(self, text):
        return list(text)
