"""Training a Unigram tokenizer: seed vocabulary, EM, pruning -- SentencePiece's recipe.

1. **Words.** Every line is normalised (``▁`` for spaces, dummy prefix) and cut into words
   at ``▁``; words are counted. No piece crosses a word boundary.
2. **Seed.** Every substring of 2..``max_piece_length`` characters is counted (weighted by
   word frequency) with a 64-bit rolling hash in numpy -- one pass per length over the
   concatenated distinct words. Like SentencePiece's suffix-array seed, a candidate must
   occur at least twice and be *right-branching* (not always followed by the same
   character), and may not mix Unicode scripts (``split_by_unicode_script``). The best
   ``seed_size`` by ``count * length`` plus every single character form the seed, scored
   ``log(count * length / total)``.
3. **EM.** E-step: forward-backward over every word's lattice gives the expected count
   of each piece. It is vectorised over all words at once: words are sorted by length,
   so at each end offset ``t`` the words still running are a prefix of the array, and the
   lattice edges ending at ``t`` form one ``(words, lengths)`` gather; log-sum-exp is
   ``np.maximum.reduceat`` + ``np.add.reduceat``. M-step as SentencePiece: pieces with an
   expected count below 0.5 are dropped, the rest get the Bayesian (Dirichlet-process)
   update ``digamma(count) - digamma(total)`` instead of ``log(count / total)``.
4. **Pruning.** Every piece's best alternative segmentation (the Viterbi path of its own
   string without itself) is found with the same vectorised Viterbi; a piece whose own
   Viterbi path is split is dropped outright; for the others the loss of the corpus
   likelihood if the piece were replaced by its alternative is estimated as SentencePiece
   does, and only the ``shrinking_factor`` (0.75) share with the largest losses survives.
   EM + pruning repeat until the vocabulary is within 10% of the target; the final
   vocabulary is every character plus the best-scored pieces.

Single characters are never pruned (every word stays segmentable); ``byte_fallback`` adds
the 256 ``<0xNN>`` pieces for characters never seen in training.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from typing import Callable, Iterable, Sequence

import numpy as np

from lmkit.errors import TokenizerError
from lmkit.tokenizers.spm_model import SPACE
from lmkit.tokenizers.text_files import iter_lines

_HASH_MUL = np.uint64(0x9E3779B97F4A7C15)
_WILD = -1  # script class that agrees with every other (▁, combining marks)

# Unicode scripts (``\p{Script=...}``); a character in none of them is "Unknown".
SCRIPTS = (
    "Latin Greek Cyrillic Armenian Hebrew Arabic Syriac Thaana Nko Samaritan Mandaic Devanagari "
    "Bengali Gurmukhi Gujarati Oriya Tamil Telugu Kannada Malayalam Sinhala Thai Lao Tibetan "
    "Myanmar Georgian Hangul Ethiopic Cherokee Canadian_Aboriginal Ogham Runic Tagalog Hanunoo "
    "Buhid Tagbanwa Khmer Mongolian Limbu Tai_Le New_Tai_Lue Buginese Tai_Tham Balinese Sundanese "
    "Batak Lepcha Ol_Chiki Glagolitic Tifinagh Hiragana Katakana Bopomofo Han Yi Lisu Vai Bamum "
    "Syloti_Nagri Phags_Pa Saurashtra Kayah_Li Rejang Javanese Cham Tai_Viet Meetei_Mayek Coptic "
    "Braille Common Inherited"
).split()


def learn_pieces(
    texts_or_files: str | os.PathLike | Iterable[str | os.PathLike],
    normalize: Callable[[str], str],
    n_target: int,
    *,
    n_reserved: int = 0,
    max_piece_length: int = 16,
    seed_size: int = 1_000_000,
    shrinking_factor: float = 0.75,
    num_sub_iterations: int = 2,
    split_by_unicode_script: bool = True,
    split_by_number: bool = True,
    split_digits: bool = False,
    user_defined_symbols: Sequence[str] = (),
    hard_vocab_limit: bool = True,
    show_progress: bool = False,
) -> list[tuple[str, float]]:
    """The `n_target` best (piece, log-probability score) pairs, by descending score, learned
    from the text normalised by `normalize`. `n_reserved` ids go to special/byte pieces (only
    for the error messages, which speak of the whole vocabulary). The tokenizer itself is
    built by `lmkit.tokenizers.unigram.train_unigram`."""
    if not 1 <= max_piece_length <= 64:
        raise TokenizerError(f"max_piece_length must be in 1..64, got {max_piece_length}")
    if not 0.0 < shrinking_factor < 1.0:
        raise TokenizerError(f"shrinking_factor must be in (0, 1), got {shrinking_factor}")
    if num_sub_iterations < 1:
        raise TokenizerError(f"num_sub_iterations must be >= 1, got {num_sub_iterations}")
    counts, last = _count_words(texts_or_files, normalize, user_defined_symbols)
    if not counts:
        raise TokenizerError("cannot train a Unigram tokenizer on an empty corpus: no text was found in the input")
    vocab_size = n_target + n_reserved
    trainer = _Trainer(counts, last, max_piece_length, split_by_unicode_script, split_by_number, split_digits)
    n_chars = trainer.n_chars
    if n_target < n_chars:
        raise TokenizerError(
            f"vocab_size={vocab_size} is too small: the training text has {n_chars} distinct characters "
            f"and {n_reserved} ids go to special/byte pieces; use vocab_size >= {n_chars + n_reserved}"
        )
    learned = trainer.run(n_target, seed_size, shrinking_factor, num_sub_iterations, show_progress)
    if len(learned) < n_target and hard_vocab_limit:
        raise TokenizerError(
            f"vocab_size={vocab_size} is too large for this corpus: only {len(learned) + n_reserved} pieces "
            f"can be learned; use a smaller vocab_size or hard_vocab_limit=False"
        )
    return learned


def _count_words(sources, normalize: Callable[[str], str], user_defined: Sequence[str]) -> tuple[Counter, Counter]:
    """(word -> count, word -> count of its occurrences that end a line)."""
    counts: Counter = Counter()
    last: Counter = Counter()
    word_re = re.compile(f"{SPACE}[^{SPACE}]*|[^{SPACE}]+")
    cut = re.compile("|".join(map(re.escape, sorted(user_defined, key=len, reverse=True)))) if user_defined else None
    norm = normalize
    for line in iter_lines(sources):
        for part in cut.split(line) if cut is not None else (line,):
            s = norm(part)
            if s:
                words = word_re.findall(s)
                counts.update(words)
                last[words[-1]] += 1
    return counts, last


def digamma(x: np.ndarray) -> np.ndarray:
    """Digamma by recurrence up to x >= 7, then the asymptotic series (SentencePiece's)."""
    x = np.asarray(x, dtype=np.float64).copy()
    result = np.zeros_like(x)
    for _ in range(7):
        small = x < 7
        if not small.any():
            break
        result[small] -= 1.0 / x[small]
        x[small] += 1.0
    x = x - 0.5
    xx = 1.0 / x
    xx2 = xx * xx
    xx4 = xx2 * xx2
    return result + np.log(x) + xx2 / 24.0 - 7.0 / 960.0 * xx4 + 31.0 / 8064.0 * xx4 * xx2 - 127.0 / 30720.0 * xx4 * xx4


class _Blocks:
    """The lattice edges of many strings, grouped for a vectorised forward or backward pass.

    Strings are sorted by length (longest first), so those of length >= t are a prefix.
    ``fwd[t-1]`` holds the edges *ending* at offset t: (string index, edge length, piece),
    grouped by string (each string has at least its one-character edge), lengths
    descending inside a group (= starts ascending: SentencePiece's tie order).
    ``bwd[r-1]`` holds the edges *starting* r characters before the string's end.
    """

    def __init__(self, table: np.ndarray, starts: np.ndarray, lens: np.ndarray, alive: np.ndarray,
                 exclude_full: bool = False, backward: bool = True) -> None:
        self.lens = lens
        self.node_off = np.concatenate(([0], np.cumsum(lens[:-1] + 1))).astype(np.int64)
        self.n_nodes = int(lens.sum() + len(lens))
        L = table.shape[0] - 1
        maxlen = int(lens[0]) if len(lens) else 0
        # number of strings with length >= t, for t = 0..maxlen
        self.count = np.searchsorted(-lens, -np.arange(maxlen + 1), side="right")
        self.fwd = []
        for t in range(1, maxlen + 1):
            c = int(self.count[t])
            bs = np.arange(min(t, L), 0, -1)
            u = table[bs[None, :], starts[:c, None] + (t - bs)[None, :]]
            ok = alive[u]
            if exclude_full and t <= L:
                ok[lens[:c] == t, 0] = False  # the string's own piece (b == t == len)
            self.fwd.append(self._group(ok, u, bs, c))
        self.bwd = []
        if backward:
            for r in range(1, maxlen + 1):
                c = int(self.count[r])
                bs = np.arange(1, min(r, L) + 1)
                pos = starts[:c] + lens[:c] - r
                u = table[bs[None, :], pos[:, None]]
                self.bwd.append(self._group(alive[u], u, bs, c))

    @staticmethod
    def _group(ok: np.ndarray, u: np.ndarray, bs: np.ndarray, c: int):
        nb = ok.shape[1]
        flat = np.flatnonzero(ok.ravel())
        word = flat // nb
        b = bs[flat % nb]
        pid = u.ravel()[flat]
        gcount = np.bincount(word, minlength=c)
        gstart = np.concatenate(([0], np.cumsum(gcount)[:-1]))
        return word, b, pid, gstart, gcount


def _logsumexp_groups(v: np.ndarray, gstart: np.ndarray, gcount: np.ndarray) -> np.ndarray:
    m = np.maximum.reduceat(v, gstart)
    m_safe = np.where(np.isfinite(m), m, 0.0)
    s = np.add.reduceat(np.exp(v - np.repeat(m_safe, gcount)), gstart)
    with np.errstate(divide="ignore"):
        return m_safe + np.log(s)


def forward_backward(blocks: _Blocks, scores: np.ndarray, weights: np.ndarray, n_pieces: int):
    """Expected piece counts (weighted by `weights` per string) and sum of weight * log Z."""
    alpha = np.full(blocks.n_nodes, -np.inf)
    node_off = blocks.node_off
    alpha[node_off] = 0.0
    saved = []
    for t, (word, b, pid, gstart, gcount) in enumerate(blocks.fwd, start=1):
        v = alpha[node_off[word] + t - b] + scores[pid]
        saved.append(v)
        alpha[node_off[: len(gcount)] + t] = _logsumexp_groups(v, gstart, gcount)
    beta = np.full(blocks.n_nodes, -np.inf)
    beta[node_off + blocks.lens] = 0.0
    lens = blocks.lens
    for r, (word, b, pid, gstart, gcount) in enumerate(blocks.bwd, start=1):
        a = lens[word] - r
        v = scores[pid] + beta[node_off[word] + a + b]
        c = len(gcount)
        beta[node_off[:c] + lens[:c] - r] = _logsumexp_groups(v, gstart, gcount)
    z = alpha[node_off + lens]
    expected = np.zeros(n_pieces)
    for t, ((word, b, pid, gstart, gcount), v) in enumerate(zip(blocks.fwd, saved), start=1):
        post = np.exp(v + beta[node_off[word] + t] - z[word]) * weights[word]
        expected += np.bincount(pid, weights=post, minlength=n_pieces)
    return expected, float(np.dot(weights, z))


def viterbi(blocks: _Blocks, scores: np.ndarray):
    """Best path of every string: (score per string, token string index, token piece)."""
    node_off = blocks.node_off
    best = np.full(blocks.n_nodes, -np.inf)
    best[node_off] = 0.0
    back_b = np.zeros(blocks.n_nodes, dtype=np.int64)
    back_pid = np.full(blocks.n_nodes, -1, dtype=np.int64)
    for t, (word, b, pid, gstart, gcount) in enumerate(blocks.fwd, start=1):
        v = best[node_off[word] + t - b] + scores[pid]
        c = len(gcount)
        m = np.maximum.reduceat(v, gstart)
        hit = np.flatnonzero(v == np.repeat(m, gcount))
        grp = word[hit]
        first = hit[np.concatenate(([True], grp[1:] != grp[:-1]))]  # earliest start wins ties
        nodes = node_off[:c] + t
        best[nodes] = m
        back_b[nodes[word[first]]] = b[first]
        back_pid[nodes[word[first]]] = pid[first]
    lens = blocks.lens
    n = len(lens)
    cur = node_off + lens
    idx = np.arange(n)
    tok_word, tok_pid = [], []
    left = lens.copy()
    active = left > 0
    while active.any():
        w = idx[active]
        node = cur[w]
        tok_word.append(w)
        tok_pid.append(back_pid[node])
        bb = back_b[node]
        cur[w] = node - bb
        left[w] -= bb
        active = left > 0
    tw = np.concatenate(tok_word) if tok_word else np.zeros(0, np.int64)
    tp = np.concatenate(tok_pid) if tok_pid else np.zeros(0, np.int64)
    return best[node_off + lens], tw, tp


class _Trainer:
    """Holds the words (as one code-point array) and the window -> substring-id table."""

    def __init__(self, counts: Counter, last: Counter, max_len: int, by_script: bool, by_number: bool,
                 split_digits: bool):
        items = sorted(counts.items(), key=lambda kv: (-len(kv[0]), kv[0]))
        self.words = [w for w, _ in items]
        self.freq = np.array([f for _, f in items], dtype=np.float64)
        f_last = np.array([last.get(w, 0) for w in self.words], dtype=np.float64)
        self.lens = np.array([len(w) for w in self.words], dtype=np.int64)
        self.starts = np.concatenate(([0], np.cumsum(self.lens)[:-1])).astype(np.int64)
        text = "".join(self.words)
        self.text = text
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
        N = len(codes)
        self.N = N
        self.L = L = max_len
        word_of = np.repeat(np.arange(len(self.words)), self.lens)
        end_of = np.repeat(self.starts + self.lens, self.lens)
        wfreq = self.freq[word_of]
        # what follows a word-final occurrence in the running text: "▁" (the next word)
        # or the end of the line -- two more continuations for the right-branching test
        wlast = f_last[word_of]
        wmid = wfreq - wlast
        end_counts: list[np.ndarray] = []
        # characters and their script classes
        uniq, inv = np.unique(codes, return_inverse=True)
        cls = _script_classes(uniq, by_script, by_number)
        pos_cls = cls[inv]
        big = 1 << 30
        cmin0 = np.where(pos_cls == _WILD, big, pos_cls)
        cmax0 = np.where(pos_cls == _WILD, -big, pos_cls)
        digit0 = ((codes >= 0x30) & (codes <= 0x39)) | ((codes >= 0xFF10) & (codes <= 0xFF19))
        # table[l, p] = id of the substring text[p:p+l] (or -1); ids are contiguous per length
        table = np.full((L + 2, N + 1), -1, dtype=np.int32)
        h = np.zeros(N, dtype=np.uint64)
        cmin, cmax, dig = cmin0.copy(), cmax0.copy(), np.zeros(N, dtype=bool)
        self.length: list[np.ndarray] = []
        self.rep: list[np.ndarray] = []
        self.count: list[np.ndarray] = []
        next_id = 0
        with np.errstate(over="ignore"):
            for l in range(1, L + 2):
                m = N - l + 1
                if m <= 0:
                    break
                h = h[:m] * _HASH_MUL + (codes[l - 1 :] + np.uint64(1)).astype(np.uint64)
                cmin = np.minimum(cmin[:m], cmin0[l - 1 :])
                cmax = np.maximum(cmax[:m], cmax0[l - 1 :])
                dig = dig[:m] | digit0[l - 1 :]
                valid = np.arange(m) + l <= end_of[:m]
                if l > 1:
                    valid &= (cmin >= cmax) | (cmin == big)
                    if split_digits:
                        valid &= ~dig
                pos = np.flatnonzero(valid)
                if not len(pos):
                    break
                u, first, inv_l = np.unique(h[pos], return_index=True, return_inverse=True)
                table[l, pos] = next_id + inv_l
                self.rep.append(pos[first])
                self.count.append(np.bincount(inv_l, weights=wfreq[pos], minlength=len(u)))
                at_end = pos + l == end_of[pos]
                end_counts.append(np.maximum(
                    np.bincount(inv_l[at_end], weights=wmid[pos[at_end]], minlength=len(u)),
                    np.bincount(inv_l[at_end], weights=wlast[pos[at_end]], minlength=len(u))))
                self.length.append(np.full(len(u), l, dtype=np.int64))
                next_id += len(u)
        self.length_all = np.concatenate(self.length)
        self.rep_all = np.concatenate(self.rep)
        self.count_all = np.concatenate(self.count)
        self.n_ids = next_id
        self.n_chars = len(self.count[0])
        # count of the most frequent one-character extension: a substring is right-branching
        # (a suffix-tree node, as SentencePiece's seed requires) when it is below its count
        self.maxchild = np.concatenate(end_counts)
        for l in range(2, min(L + 1, len(self.length)) + 1):
            child = np.flatnonzero(self.length_all == l)
            np.maximum.at(self.maxchild, table[l - 1, self.rep_all[child]], self.count_all[child])
        self.table = np.ascontiguousarray(table[: L + 1])

    def piece(self, uid: int) -> str:
        p = int(self.rep_all[uid])
        return self.text[p : p + int(self.length_all[uid])]

    def seed(self, seed_size: int) -> np.ndarray:
        """Ids of the seed vocabulary: all characters + the best right-branching substrings."""
        length, count, L = self.length_all, self.count_all, self.L
        cand = np.flatnonzero((length >= 2) & (length <= L) & (count >= 2) & (count > self.maxchild))
        score = count[cand] * length[cand]
        order = np.lexsort((cand, -score))[: max(0, seed_size - self.n_chars)]
        return np.concatenate((np.arange(self.n_chars), cand[order]))

    def run(self, n_target: int, seed_size: int, shrinking: float, sub_iters: int, show_progress: bool):
        n_ids = self.n_ids
        is_char = self.length_all == 1
        alive = np.zeros(n_ids + 1, dtype=bool)  # the extra slot is what id -1 indexes
        seed = self.seed(seed_size)
        alive[seed] = True
        raw = np.where(is_char, self.count_all, self.count_all * self.length_all)[seed]
        scores = np.full(n_ids + 1, -np.inf)
        scores[seed] = np.log(raw) - np.log(raw.sum())
        desired = int(n_target * 1.1)
        bar = None
        if show_progress:
            from lmkit.progress import Progress

            bar = Progress(desc="unigram EM", unit="round", progress=show_progress)
        while True:
            blocks = _Blocks(self.table, self.starts, self.lens, alive)
            for _ in range(sub_iters):
                expected, _ = forward_backward(blocks, scores, self.freq, n_ids + 1)
                scores = self._m_step(expected, alive, is_char)
            n_alive = int(alive.sum())
            if bar is not None:
                bar.set_postfix(pieces=n_alive)
                bar.update(1)
            if n_alive <= desired:
                break
            self._prune(blocks, scores, alive, is_char, max(desired, int(shrinking * n_alive)))
        if bar is not None:
            bar.close()
        return self._finalize(scores, alive, is_char, n_target)

    @staticmethod
    def _m_step(expected: np.ndarray, alive: np.ndarray, is_char: np.ndarray) -> np.ndarray:
        ext_char = np.append(is_char, False)
        keep = alive & ((expected >= 0.5) | ext_char)
        alive[:] = keep
        total = expected[keep].sum()
        scores = np.full(len(alive), -np.inf)
        scores[keep] = digamma(np.maximum(expected[keep], 1e-8)) - digamma(np.array([total]))[0]
        return scores

    def _prune(self, blocks: _Blocks, scores: np.ndarray, alive: np.ndarray, is_char: np.ndarray, size: int):
        n_ids = self.n_ids
        # how often each piece is on a word's Viterbi path
        _, tw, tp = viterbi(blocks, scores)
        vfreq = np.bincount(tp, weights=self.freq[tw], minlength=n_ids + 1)
        vsum = self.freq.sum()
        total = vfreq.sum()
        # each multi-character piece's best segmentation without itself
        cand = np.flatnonzero(alive[:n_ids] & ~is_char)
        order = np.argsort(-self.length_all[cand], kind="stable")
        cand = cand[order]
        plens = self.length_all[cand]
        pblocks = _Blocks(self.table, self.rep_all[cand], plens, alive, exclude_full=True, backward=False)
        alt_score, aw, ap = viterbi(pblocks, scores)
        removable = alt_score > scores[cand]
        f = vfreq[cand]
        n_alt = np.bincount(aw, minlength=len(cand))
        with np.errstate(divide="ignore", invalid="ignore"):
            logprob_sp = np.log(f) - np.log(total)
            logsum_alt = np.log(total + f * (n_alt - 1))
            logprob_alt = np.bincount(aw, weights=np.log(vfreq[ap] + f[aw]), minlength=len(cand)) - n_alt * logsum_alt
            loss = (f / vsum) * (logprob_sp - logprob_alt)
        ok = (f > 0) & ~removable
        keep_chars = np.flatnonzero(alive[:n_ids] & is_char)
        room = max(0, size - len(keep_chars))
        survivors = np.flatnonzero(ok)
        best = survivors[np.lexsort((cand[survivors], -loss[survivors]))][:room]
        alive[:] = False
        alive[keep_chars] = True
        alive[cand[best]] = True

    def _finalize(self, scores: np.ndarray, alive: np.ndarray, is_char: np.ndarray, n_target: int):
        ids = np.flatnonzero(alive[: self.n_ids])
        chars = ids[is_char[ids]]
        others = ids[~is_char[ids]]
        # characters the model barely uses get SentencePiece's treatment of required
        # characters: just below the lowest piece score, more frequent ones higher
        floor = scores[others].min() if len(others) else 0.0
        rank = np.empty(len(chars), dtype=np.int64)
        rank[np.argsort(-self.count_all[chars], kind="stable")] = np.arange(len(chars))
        char_scores = np.maximum(scores[chars], floor - 1e-4 * (rank + 1))
        order = np.lexsort((others, -scores[others]))[: max(0, n_target - len(chars))]
        out = [(self.piece(int(u)), float(s)) for u, s in zip(chars, char_scores)]
        out += [(self.piece(int(u)), float(scores[u])) for u in others[order]]
        out.sort(key=lambda ps: (-ps[1], ps[0]))
        return out


def _script_classes(codes: np.ndarray, by_script: bool, by_number: bool) -> np.ndarray:
    """A class per code point; a piece may not mix classes (``_WILD`` mixes with all)."""
    import regex

    n = len(codes)
    if not by_script:
        cls = np.zeros(n, dtype=np.int64)
    else:
        cls = np.full(n, len(SCRIPTS), dtype=np.int64)  # "Unknown"
        chars = "".join(map(chr, codes.tolist()))
        for k, name in enumerate(SCRIPTS):
            try:
                pat = regex.compile(rf"\p{{Script={name}}}")
            except regex.error:  # pragma: no cover - depends on the regex module's tables
                continue
            for m in pat.finditer(chars):
                cls[m.start()] = k
        han = SCRIPTS.index("Han")
        for name in ("Hiragana", "Katakana"):
            cls[cls == SCRIPTS.index(name)] = han
        cls[codes == 0x30FC] = han
        cls[cls == SCRIPTS.index("Inherited")] = _WILD
    cls[codes == ord(SPACE)] = _WILD
    if not by_number:
        cls[((codes >= 0x30) & (codes <= 0x39)) | ((codes >= 0xFF10) & (codes <= 0xFF19))] = _WILD
    return cls
