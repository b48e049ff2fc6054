"""Chinese segmentation: textbook ambiguity cases, jieba parity, SIGHAN scoring, CLI."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lmkit.errors import TokenizerError
from lmkit.tokenizers.segment import (
    Dictionary,
    MaxProbSegmenter,
    backward_max_match,
    bidirectional_max_match,
    evaluate,
    forward_max_match,
    jieba_dictionary_path,
    segment,
)


def make_dict(*words: str) -> Dictionary:
    return Dictionary((w, 10) for w in words)


def test_yanjiu_shengming_qiyuan():
    d = make_dict("研究", "研究生", "生命", "命", "起源")
    assert forward_max_match("研究生命起源", d) == ["研究生", "命", "起源"]
    assert backward_max_match("研究生命起源", d) == ["研究", "生命", "起源"]
    # equal word counts; BMM has no single-character word, so BiMM takes it
    assert bidirectional_max_match("研究生命起源", d) == ["研究", "生命", "起源"]


def test_jiehun_heshang():
    d = make_dict("结婚", "的", "和尚", "尚未", "未", "和")
    s = "结婚的和尚未结婚的"
    assert forward_max_match(s, d) == ["结婚", "的", "和尚", "未", "结婚", "的"]
    assert backward_max_match(s, d) == ["结婚", "的", "和", "尚未", "结婚", "的"]
    # same counts of words, singles and OOV words: the tie goes to BMM
    assert bidirectional_max_match(s, d) == ["结婚", "的", "和", "尚未", "结婚", "的"]


def test_nanjing_bridge_and_max_len():
    d = make_dict("南京", "南京市", "市长", "长江", "长江大桥", "大桥", "江")
    s = "南京市长江大桥"
    assert forward_max_match(s, d) == ["南京市", "长江大桥"]
    assert backward_max_match(s, d) == ["南京市", "长江大桥"]
    assert forward_max_match(s, d, max_len=2) == ["南京", "市长", "江", "大桥"]
    assert backward_max_match(s, d, max_len=2) == ["南京", "市", "长江", "大桥"]


def test_bimm_prefers_fewer_words():
    d = make_dict("ab", "abc", "cd", "d", "e", "bcde")
    # FMM: abc/d/e (3)   BMM: a/bcde (2)
    assert bidirectional_max_match("abcde", d) == backward_max_match("abcde", d) == ["a", "bcde"]
    d2 = make_dict("abcd", "e", "a", "bc", "de")
    # FMM: abcd/e (2)   BMM: a/bc/de (3)
    assert bidirectional_max_match("abcde", d2) == ["abcd", "e"]


def test_bimm_oov_rule():
    # FMM: xy/z/w, BMM: x/yz/w -> same counts and singles; BMM's single 'x' is OOV, FMM's 'z','w' are not
    d = Dictionary([("xy", 5), ("yz", 5), ("z", 5), ("w", 5)])
    fwd, bwd = forward_max_match("xyzw", d), backward_max_match("xyzw", d)
    assert fwd == ["xy", "z", "w"] and bwd == ["x", "yz", "w"]
    assert bidirectional_max_match("xyzw", d) == fwd


def test_max_prob_picks_the_likelier_path():
    d = Dictionary([("研究", 100), ("研究生", 5), ("生命", 100), ("命", 1), ("起源", 50)])
    assert MaxProbSegmenter(d).lcut("研究生命起源") == ["研究", "生命", "起源"]
    d2 = Dictionary([("研究", 1), ("研究生", 1000), ("生命", 1), ("命", 1000), ("起源", 50)])
    assert MaxProbSegmenter(d2).lcut("研究生命起源") == ["研究生", "命", "起源"]


@pytest.fixture(scope="module")
def jieba_dict():
    pytest.importorskip("jieba")
    return Dictionary.load(jieba_dictionary_path())


def test_max_prob_equals_jieba_without_hmm(jieba_dict, corpus_dir):
    import jieba

    jieba.setLogLevel(60)
    seg = MaxProbSegmenter(jieba_dict)
    lines = (corpus_dir / "zh.txt").read_text(encoding="utf-8").splitlines()
    extra = ["我来到北京清华大学", "他说：“Hello, world! 2024年GPT-4o发布了。”", "  空格\t和\r\n换行 ", "abc中文123def"]
    same = sum(seg.lcut(s) == jieba.lcut(s, HMM=False) for s in lines + extra)
    assert same / len(lines + extra) >= 0.99, f"{same}/{len(lines + extra)} lines agree with jieba"
    assert same == len(lines + extra)  # in fact every line agrees


def test_user_words_and_dictionary_file(tmp_path):
    path = tmp_path / "d.txt"
    path.write_text("研究 10 n\n生命 10\n起源\n", encoding="utf-8")
    user = tmp_path / "u.txt"
    user.write_text("命起 99\n", encoding="utf-8")
    d = Dictionary.load(path, [user])
    assert "起源" in d and d.freq["起源"] == 1 and d.tags["研究"] == "n"
    assert "研" not in d and "命起" in d
    d.add_word("生命起源", 1000)
    assert MaxProbSegmenter(d).lcut("研究生命起源") == ["研究", "生命起源"]


def test_bad_dictionary_lines(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text("好 1\n坏 many\n", encoding="utf-8")
    with pytest.raises(TokenizerError, match=r"bad.txt:2"):
        Dictionary.load(path)
    raw = tmp_path / "raw.txt"
    raw.write_bytes("好 1\n".encode() + b"\xff\xfe 1\n")
    with pytest.raises(TokenizerError, match="not UTF-8"):
        Dictionary.load(raw)
    with pytest.raises(TokenizerError, match="cannot read"):
        Dictionary.load(tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="unknown segmentation method"):
        segment("好", Dictionary([("好", 1)]), "crf")


def test_evaluate_hand_computed():
    gold = [["研究", "生命", "起源"], ["我", "爱", "北京"]]
    pred = [["研究生", "命", "起源"], ["我", "爱", "北", "京"]]
    s = evaluate(pred, gold, dictionary={"研究", "生命", "起源", "我", "爱"})
    # correct spans: 起源, 我, 爱 = 3; predicted 7; gold 6
    assert (s.correct, s.predicted, s.gold) == (3, 7, 6)
    assert s.precision == pytest.approx(3 / 7) and s.recall == pytest.approx(0.5)
    assert s.f1 == pytest.approx(2 * (3 / 7) * 0.5 / (3 / 7 + 0.5))
    assert s.oov_recall == 0.0  # 北京 is the only OOV gold word and was split
    assert s.iv_recall == pytest.approx(3 / 5)
    with pytest.raises(TokenizerError, match="same text"):
        evaluate([["ab"]], [["a", "c"]])


def test_evaluate_matches_boundary_counting(jieba_dict, corpus_dir):
    """An independent computation: a word is correct iff both its boundaries are gold boundaries
    and no gold boundary falls inside it."""
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
    assert 0.8 < s.f1 < 1.0


def test_cli_segment():
    out = subprocess.run(
        [sys.executable, "-m", "lmkit", "segment", "--method", "fmm", "--sep", "|"],
        input="研究生命起源\n", capture_output=True, text=True, check=True,
    ).stdout
    assert out.strip() == "研究生|命|起源"
