"""Chinese segmentation: textbook ambiguity cases, naive and brute-force oracles, jieba parity,
SIGHAN scoring, CLI."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmkit.errors import TokenizerError
from lmkit.tokenizers.segment import (
    Dictionary,
    MaxProbSegmenter,
    PrefixTrie,
    backward_max_match,
    bidirectional_max_match,
    evaluate,
    forward_max_match,
    jieba_dictionary_path,
    segment,
)


def make_dict(*words: str) -> Dictionary:
    return Dictionary((w, 10) for w in words)


def all_methods(s: str, d: Dictionary, **kw) -> dict[str, list[str]]:
    return {m: segment(s, d, m, **kw) for m in ("fmm", "bmm", "bimm")}


# ---- textbook cases ----------------------------------------------------------------------
def test_yanjiu_shengming_qiyuan():
    d = make_dict("研究", "研究生", "生命", "命", "起源")
    assert all_methods("研究生命起源", d) == {
        "fmm": ["研究生", "命", "起源"],
        "bmm": ["研究", "生命", "起源"],
        # 3 words each; FMM has a single-character word (命), BMM none: BMM wins on rule 2
        "bimm": ["研究", "生命", "起源"],
    }
    # equal frequencies: P(研究)P(生命)P(起源) = P(研究生)P(命)P(起源), a tie; the DP keeps the
    # longer first word, as jieba does
    assert MaxProbSegmenter(d).lcut("研究生命起源") == ["研究生", "命", "起源"]


def test_jiehun_heshang():
    d = make_dict("结婚", "的", "和尚", "尚未", "未", "和")
    assert all_methods("结婚的和尚未结婚的", d) == {
        "fmm": ["结婚", "的", "和尚", "未", "结婚", "的"],
        "bmm": ["结婚", "的", "和", "尚未", "结婚", "的"],
        # same counts of words (6), single characters (3) and OOV words (0): the tie goes to BMM
        "bimm": ["结婚", "的", "和", "尚未", "结婚", "的"],
    }


def test_nanjing_changjiang_daqiao():
    d = make_dict("南京", "南京市", "南京市长", "市长", "长江", "长江大桥", "大桥", "江")
    assert all_methods("南京市长江大桥", d) == {
        "fmm": ["南京市长", "江", "大桥"],  # the famous mistake: the mayor of Nanjing, Jiang Daqiao
        "bmm": ["南京市", "长江大桥"],
        "bimm": ["南京市", "长江大桥"],  # rule 1: 2 words beat 3
    }
    fmm2, bmm2 = forward_max_match("南京市长江大桥", d, 2), backward_max_match("南京市长江大桥", d, 2)
    assert fmm2 == ["南京", "市长", "江", "大桥"] and bmm2 == ["南京", "市", "长江", "大桥"]
    # 4 words and 1 single character each; BMM's 市 is not in the dictionary, FMM's 江 is: rule 3
    assert bidirectional_max_match("南京市长江大桥", d, 2) == fmm2
    with pytest.raises(ValueError, match="max_len"):
        forward_max_match("南京", d, 0)


def test_ta_shuo_de_queshi_zaili():
    d = make_dict("他", "说", "的", "的确", "确实", "实在", "在理", "在")
    assert all_methods("他说的确实在理", d) == {
        "fmm": ["他", "说", "的确", "实在", "理"],
        "bmm": ["他", "说", "的", "确实", "在理"],
        # 5 words and 3 single characters each; FMM's 理 is OOV: BMM
        "bimm": ["他", "说", "的", "确实", "在理"],
    }


def test_bimm_rules_in_order():
    # rule 1, fewer words: FMM abc/d/e (3) vs BMM a/bcde (2)
    d = make_dict("ab", "abc", "cd", "d", "e", "bcde")
    assert bidirectional_max_match("abcde", d) == backward_max_match("abcde", d) == ["a", "bcde"]
    d2 = make_dict("abcd", "e", "a", "bc", "de")
    assert forward_max_match("abcde", d2) == ["abcd", "e"]
    assert bidirectional_max_match("abcde", d2) == ["abcd", "e"]
    # rule 3 decides when words and singles tie: FMM xy/z/w, BMM x/yz/w; BMM's x is OOV
    d3 = Dictionary([("xy", 5), ("yz", 5), ("z", 5), ("w", 5)])
    assert forward_max_match("xyzw", d3) == ["xy", "z", "w"] and backward_max_match("xyzw", d3) == ["x", "yz", "w"]
    assert bidirectional_max_match("xyzw", d3) == ["xy", "z", "w"]


def test_max_prob_picks_the_likelier_path():
    d = Dictionary([("研究", 100), ("研究生", 5), ("生命", 100), ("命", 1), ("起源", 50)])
    assert MaxProbSegmenter(d).lcut("研究生命起源") == ["研究", "生命", "起源"]
    d2 = Dictionary([("研究", 1), ("研究生", 1000), ("生命", 1), ("命", 1000), ("起源", 50)])
    assert MaxProbSegmenter(d2).lcut("研究生命起源") == ["研究生", "命", "起源"]


# ---- oracles: the textbook window-shrinking algorithms, and exhaustive search --------------
def naive_fmm(text: str, words: set[str], max_len: int) -> list[str]:
    """As the notes describe: take max_len characters; not a word? drop the last one; repeat."""
    out, i = [], 0
    while i < len(text):
        for size in range(min(max_len, len(text) - i), 0, -1):
            if size == 1 or text[i:i + size] in words:
                out.append(text[i:i + size])
                i += size
                break
    return out


def naive_bmm(text: str, words: set[str], max_len: int) -> list[str]:
    out, j = [], len(text)
    while j > 0:
        for size in range(min(max_len, j), 0, -1):
            if size == 1 or text[j - size:j] in words:
                out.append(text[j - size:j])
                j -= size
                break
    return out[::-1]


ALPHABET = "研究生命起源南京市长江大桥"
word_st = st.text(st.sampled_from(ALPHABET), min_size=1, max_size=4)
vocab_st = st.dictionaries(word_st, st.integers(1, 1000), min_size=1, max_size=25)


@settings(max_examples=150, deadline=None)
@given(vocab=vocab_st, text=st.text(st.sampled_from(ALPHABET + "的"), max_size=25), max_len=st.integers(1, 5))
def test_max_match_equals_naive_textbook_algorithm(vocab, text, max_len):
    d = Dictionary(vocab.items())
    words = set(vocab)
    assert forward_max_match(text, d, max_len) == naive_fmm(text, words, max_len)
    assert backward_max_match(text, d, max_len) == naive_bmm(text, words, max_len)
    assert forward_max_match(text, d) == naive_fmm(text, words, 99)
    assert backward_max_match(text, d) == naive_bmm(text, words, 99)
    bi = bidirectional_max_match(text, d, max_len)
    assert bi in (naive_fmm(text, words, max_len), naive_bmm(text, words, max_len))


def brute_force_best(text: str, vocab: dict[str, int], total: int) -> tuple[float, list[list[str]]]:
    """Every path through jieba's DAG (the words starting at i; a lone character only where
    none does), scored by sum(log(freq / total)); returns the best score and its paths."""
    paths: list[tuple[float, list[str]]] = []

    def walk(i: int, acc: float, words: list[str]) -> None:
        if i == len(text):
            paths.append((acc, words))
            return
        ends = [j for j in range(i + 1, len(text) + 1) if vocab.get(text[i:j], 0) > 0]
        for j in ends or [i + 1]:
            walk(j, acc + math.log(vocab.get(text[i:j], 0) or 1) - math.log(total), words + [text[i:j]])

    walk(0, 0.0, [])
    best = max(s for s, _ in paths)
    return best, [w for s, w in paths if s > best - 1e-9]


@settings(max_examples=150, deadline=None)
@given(vocab=vocab_st, text=st.text(st.sampled_from(ALPHABET + "的"), max_size=12))
def test_max_prob_is_the_exhaustive_optimum(vocab, text):
    d = Dictionary(vocab.items())
    got = MaxProbSegmenter(d).lcut(text)
    assert "".join(got) == text
    best, argmaxes = brute_force_best(text, vocab, d.total)
    assert got in argmaxes
    if len(argmaxes) > 1:  # exact ties: jieba's rule takes the longest first word, left to right
        assert got == max(argmaxes, key=lambda ws: [len(w) for w in ws])


def test_prefix_trie():
    t = PrefixTrie()
    for w, f in [("南京", 3), ("南京市", 2), ("南京市长", 1), ("长江", 5)]:
        t.insert(w, f)
    assert t.table["南"] == 0 and t.get("南京市") == 2 and "南" not in t and "长江" in t
    assert list(t.matches("南京市长江", 0)) == [2, 3, 4]
    assert list(t.matches("南京市长江", 0, max_len=3)) == [2, 3]
    assert t.longest_match("南京市长江", 3) == 5 and t.longest_match("江", 0) == 0
    assert sorted(t.words()) == [("南京", 3), ("南京市", 2), ("南京市长", 1), ("长江", 5)] and t.max_len == 4


# ---- jieba parity --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def jieba_dict():
    pytest.importorskip("jieba")
    return Dictionary.load(jieba_dictionary_path())


@pytest.fixture(scope="module")
def jieba_mod():
    jieba = pytest.importorskip("jieba")
    jieba.setLogLevel(60)
    jieba.initialize()
    return jieba


def test_dictionary_equals_jiebas_prefix_dict(jieba_dict, jieba_mod):
    assert jieba_dict.freq == jieba_mod.dt.FREQ
    assert jieba_dict.total == jieba_mod.dt.total  # B超 is listed twice and counted twice, as jieba does
    assert len(jieba_dict) == sum(1 for f in jieba_mod.dt.FREQ.values() if f)


def test_max_prob_equals_jieba_without_hmm(jieba_dict, jieba_mod, corpus_dir):
    seg = MaxProbSegmenter(jieba_dict)
    lines = (corpus_dir / "zh.txt").read_text(encoding="utf-8").splitlines()
    extra = ["我来到北京清华大学", "他说：“Hello, world! 2024年GPT-4o发布了。”", "  空格\t和\r\n换行 ",
             "abc中文123def", "研究生命起源", "结婚的和尚未结婚的", "南京市长江大桥", "B超和T恤", "ａｂｃ１２３，全角"]
    same = sum(seg.lcut(s) == jieba_mod.lcut(s, HMM=False) for s in lines + extra)
    assert same == len(lines + extra), f"{same}/{len(lines + extra)} lines agree with jieba"
    # the whole file at once (multi-line text) too
    text = "\n".join(lines[:400])
    assert seg.lcut(text) == jieba_mod.lcut(text, HMM=False)


def test_dag_equals_jieba(jieba_dict, jieba_mod):
    seg = MaxProbSegmenter(jieba_dict)
    for s in ["研究生命起源", "南京市长江大桥", "他说的确实在理", "B超abc中文", "去北京大学玩"]:
        assert seg.dag(s) == jieba_mod.get_DAG(s)


MIXED = st.text(
    st.one_of(st.sampled_from("研究生命起源南京市长江大桥的了是在中国人民共和国北京大学清华"),
              st.sampled_from("abcXYZ019+#&._%- \t\r\n，。！？“”()@~"), st.characters(blacklist_categories=("Cs",))),
    max_size=40,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=MIXED)
def test_max_prob_equals_jieba_on_any_text(jieba_dict, jieba_mod, text):
    assert MaxProbSegmenter(jieba_dict).lcut(text) == jieba_mod.lcut(text, HMM=False)


def test_user_words_equal_jieba_user_dict(tmp_path, jieba_mod):
    """A small custom dictionary plus a user dictionary (with and without frequencies, and
    with tag-only lines) and add_word/del_word, against a jieba.Tokenizer built the same way."""
    main = tmp_path / "main.txt"
    main.write_text("研究 50 n\n研究生 30 n\n生命 40 n\n命 20 n\n起源 25 n\n南京 30 ns\n市长 20 n\n长江 40 ns\n"
                    "大桥 20 n\n江 10 n\n南京市 25 ns\n", encoding="utf-8")
    user = tmp_path / "user.txt"
    user.write_text("江大桥\n命起 3\n生命起源 n\n长江大桥 5 ns\n", encoding="utf-8")
    jt = jieba_mod.Tokenizer(dictionary=str(main))
    jt.tmp_dir = str(tmp_path)
    jt.initialize()
    jt.load_userdict(str(user))
    jt.add_word("研究生命", 7)
    jt.del_word("命")
    ours = Dictionary.load(main, [user])
    ours.add_word("研究生命", 7)
    ours.del_word("命")
    assert ours.freq == jt.FREQ and ours.total == jt.total
    assert ours.tags["生命起源"] == "n" and ours.tags["长江大桥"] == "ns"
    seg = MaxProbSegmenter(ours)
    for s in ["研究生命起源", "南京市长江大桥", "江大桥", "命起源南京", "长江大桥研究"]:
        assert seg.lcut(s) == jt.lcut(s, HMM=False), s
    assert ours.suggest_freq("南京市长") == jt.suggest_freq("南京市长", False)
    assert ours.suggest_freq(("南京市", "长江")) == jt.suggest_freq(("南京市", "长江"), False)
    ours.suggest_freq(("长江", "大桥"), tune=True)
    jt.suggest_freq(("长江", "大桥"), tune=True)
    assert seg.lcut("南京市长江大桥") == jt.lcut("南京市长江大桥", HMM=False) == ["南京市", "长江", "大桥"]


def test_dictionary_files_and_errors(tmp_path):
    path = tmp_path / "d.txt"
    path.write_text("\ufeff研究 10 n\n生命 10\n\n起源\n命起 v\n", encoding="utf-8")
    d = Dictionary.load(path)
    assert d.freq["研究"] == 10 and d.tags["研究"] == "n" and d.tags["命起"] == "v"
    assert "起源" in d and d.freq["起源"] >= 1 and "研" not in d and len(d) == 4
    assert sorted(d) == sorted(["研究", "生命", "起源", "命起"]) and "4 words" in repr(d)
    d.add_word("生命起源", 1000)  # words added after construction take effect at once
    seg = MaxProbSegmenter(d)
    assert seg.lcut("研究生命起源") == ["研究", "生命起源"]
    assert backward_max_match("研究生命起源", d) == ["研究", "生命起源"]  # reverse trie updated too
    d.del_word("生命起源")
    assert "生命起源" not in d and backward_max_match("研究生命起源", d) == ["研究", "生命", "起源"]
    for content, match in [("好 1\n坏 12x\n", r"bad.txt:2: cannot read"), ("好 -3\n", r"bad.txt:1: .*>= 0"),
                           ("好 1 n extra\n", "bad.txt:1")]:
        (tmp_path / "bad.txt").write_text(content, encoding="utf-8")
        with pytest.raises(TokenizerError, match=match):
            Dictionary.load(tmp_path / "bad.txt")
    raw = tmp_path / "raw.txt"
    raw.write_bytes("好 1\n".encode() + b"\xff\xfe 1\n")
    with pytest.raises(TokenizerError, match="not UTF-8"):
        Dictionary.load(raw)
    with pytest.raises(TokenizerError, match="cannot read"):
        Dictionary.load(tmp_path / "missing.txt")
    with pytest.raises(TokenizerError, match="non-empty"):
        Dictionary().add_word("")
    with pytest.raises(ValueError, match="unknown segmentation method"):
        segment("好", Dictionary([("好", 1)]), "crf")


# ---- scoring ---------------------------------------------------------------------------------
def test_evaluate_hand_computed():
    gold = [["研究", "生命", "起源"], "我 爱 北京"]  # a list of words, or a bakeoff-style line
    pred = ["研究生 命 起源", ["我", "爱", "北", "京"]]
    s = evaluate(pred, gold, dictionary={"研究", "生命", "起源", "我", "爱"})
    # correct spans: 起源 [4,6), 我 [0,1), 爱 [1,2) = 3; predicted 7; gold 6
    assert (s.correct, s.predicted, s.gold) == (3, 7, 6)
    assert s.precision == pytest.approx(3 / 7) and s.recall == pytest.approx(0.5)
    assert s.f1 == pytest.approx(2 * (3 / 7) * 0.5 / (3 / 7 + 0.5))
    assert s.oov_recall == 0.0  # 北京 is the only OOV gold word and was split
    assert s.iv_recall == pytest.approx(3 / 5)
    assert evaluate(pred, gold).oov_recall is None
    perfect = evaluate(gold, gold)
    assert perfect.precision == perfect.recall == perfect.f1 == 1.0
    with pytest.raises(TokenizerError, match="same text"):
        evaluate([["ab"]], [["a", "c"]])
    with pytest.raises(TokenizerError, match="empty word"):
        evaluate([["a", "", "b"]], [["ab"]])
    with pytest.raises(TokenizerError, match="1 predicted sentences but 2"):
        evaluate([["a"]], [["a"], ["b"]])


def test_evaluate_matches_boundary_counting(jieba_dict, corpus_dir):
    """An independent computation: a word is correct iff both its boundaries are gold boundaries
    and no gold boundary falls inside it; corpus-level (micro) counts."""
    lines = [l for l in (corpus_dir / "zh.txt").read_text(encoding="utf-8").splitlines() if l.strip()][:300]
    gold = [MaxProbSegmenter(jieba_dict).lcut(l) for l in lines]
    pred = [forward_max_match(l, jieba_dict) for l in lines]
    correct = 0
    for p, g in zip(pred, gold):
        cuts = {0}
        pos = 0
        for w in g:
            pos += len(w)
            cuts.add(pos)
        pos = 0
        for w in p:
            a, b = pos, pos + len(w)
            pos = b
            correct += a in cuts and b in cuts and not any(a < c < b for c in cuts)
    s = evaluate(pred, gold)
    assert s.correct == correct
    assert s.precision == pytest.approx(correct / sum(map(len, pred)))
    assert s.recall == pytest.approx(correct / sum(map(len, gold)))
    assert 0.8 < s.f1 < 1.0


# ---- CLI ------------------------------------------------------------------------------------
def run_cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lmkit", "segment", *args], input=stdin, capture_output=True, text=True)


def test_cli_segment(tmp_path):
    dic = tmp_path / "d.txt"
    dic.write_text("南京 3\n南京市 3\n南京市长 3\n市长 3\n长江 3\n长江大桥 3\n大桥 3\n江 3\n", encoding="utf-8")
    src = tmp_path / "in.txt"
    src.write_text("南京市长江大桥\n南京\n", encoding="utf-8")
    out = run_cli("--method", "fmm", "--dict", str(dic), "--sep", "|", str(src))
    assert out.returncode == 0 and out.stdout.splitlines() == ["南京市长|江|大桥", "南京"]
    out = run_cli("--method", "bimm", "--dict", str(dic), "--sep", "|", stdin="南京市长江大桥\n")
    assert out.stdout.strip() == "南京市|长江大桥"
    out = run_cli("--method", "fmm", "--max-len", "2", "--dict", str(dic), "--sep", "|", stdin="南京市长江大桥\n")
    assert out.stdout.strip() == "南京|市长|江|大桥"
    user = tmp_path / "u.txt"
    user.write_text("江大桥\n", encoding="utf-8")
    out = run_cli("--method", "maxprob", "--dict", str(dic), "--user-dict", str(user), "--sep", "|", stdin="江大桥\n")
    assert out.stdout.strip() == "江大桥"
    bad = tmp_path / "bad.txt"
    bad.write_text("好 x y z\n", encoding="utf-8")
    out = run_cli("--dict", str(bad), stdin="好\n")
    assert out.returncode != 0 and "bad.txt:1" in out.stderr


def test_cli_segment_default_jieba_dictionary():
    pytest.importorskip("jieba")
    out = run_cli("--sep", "|", stdin="研究生命起源\n")
    assert out.returncode == 0 and out.stdout.strip() == "研究|生命|起源"
