"""Tokens for lexical retrieval (BM25): Chinese words from lmkit's segmenter, English words lower-cased.

`LexicalTokenizer` runs lmkit's maximum-probability segmenter (jieba's dictionary and
algorithm, HMM off) over the text — it also keeps runs of ASCII letters/digits together —
then lower-cases, drops whitespace and punctuation tokens and a short list of stop words
(的, 是, 什么, the, of …), which carry no topic. ``cjk_bigrams=True`` also emits every pair of
adjacent Chinese characters (marked "#xy"), so a word the dictionary cuts differently in the
query and the document (大模型 = 大/模型) still matches. Without a dictionary (jieba not installed) it
falls back to single CJK characters plus ASCII words. The dictionary is loaded once per
process (`shared_tokenizer`).
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

STOPWORDS_ZH = set("的 了 是 在 和 与 及 或 吗 呢 吧 啊 之 其 中 对 为 把 被 从 到 就 都 也 还 又 这 那 这个 那个 这些 那些 "
                   "什么 怎么 怎样 如何 哪些 哪个 为什么 为何 是否 一下 一个 一种 有 有哪些 可以 能 会 要 请 下 "
                   "我 你 他 它 我们 你们 他们 以及 如果 因为 所以 而 但 但是 并 等 上 个 着 过 给 让".split())
STOPWORDS_EN = set("a an the of to in on for and or is are was were be been it this that these those with as by "
                   "at from what which how why when who do does did can could should would i you we they".split())
_WORD = re.compile(r"[a-z0-9]+(?:[._+#-][a-z0-9]+)*")
_CJK = re.compile(r"[\u3400-\u9fff]")
_CJK_RUN = re.compile(r"[\u3400-\u9fff]{2,}")


def _is_punct(tok: str) -> bool:
    return all(unicodedata.category(c)[0] in "PSZC" for c in tok)


class LexicalTokenizer:
    def __init__(self, dictionary=None, stopwords: bool = True, cjk_bigrams: bool = False) -> None:
        self.segmenter = None
        if dictionary is not None:
            from lmkit.tokenizers.segment import MaxProbSegmenter

            self.segmenter = MaxProbSegmenter(dictionary)
        self.stop = (STOPWORDS_ZH | STOPWORDS_EN) if stopwords else set()
        self.cjk_bigrams = cjk_bigrams

    def __call__(self, text: str) -> list[str]:
        text = unicodedata.normalize("NFKC", text)
        if self.segmenter is not None:
            raw = self.segmenter.lcut(text)
        else:
            raw = []
            for part in re.split(r"([\u3400-\u9fff])", text):
                raw.extend([part] if _CJK.fullmatch(part or " ") else part.split())
        out = []
        for tok in raw:
            tok = tok.strip().lower()
            if not tok or _is_punct(tok) or tok in self.stop:
                continue
            if _CJK.search(tok):
                out.append(tok)
            else:
                out.extend(w for w in _WORD.findall(tok) if w not in self.stop)
        if self.cjk_bigrams:  # overlapping character pairs: robust to segmentation differences
            for run in _CJK_RUN.findall(text):
                out.extend("#" + run[i:i + 2] for i in range(len(run) - 1))
        return out


@lru_cache(maxsize=1)
def _dictionary():
    try:
        from lmkit.tokenizers.segment import Dictionary, jieba_dictionary_path

        return Dictionary.load(jieba_dictionary_path())
    except Exception:  # no jieba: character-level Chinese
        return None


@lru_cache(maxsize=4)
def shared_tokenizer(cjk_bigrams: bool = False) -> LexicalTokenizer:
    """The default tokenizer: jieba's dictionary in lmkit's segmenter, if jieba is installed."""
    return LexicalTokenizer(_dictionary(), cjk_bigrams=cjk_bigrams)
