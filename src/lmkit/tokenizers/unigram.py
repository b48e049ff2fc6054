"""Unigram language-model tokenizer (Kudo 2018), as in SentencePiece, T5, ALBERT, XLNet.

A Unigram model is a vocabulary of pieces with log-probabilities (scores). A text is
segmented into the piece sequence with the highest total score (Viterbi); the model also
gives the k best segmentations and can *sample* segmentations (subword regularisation).
Training (``train_unigram``; the algorithm is in ``lmkit.tokenizers.unigram_trainer``) grows a large seed vocabulary and prunes
it with EM; this file holds the model and everything that uses it.

Whitespace, as SentencePiece does it
    Text is normalised first (``identity`` or a precompiled charsmap such as ``nmt_nfkc``),
    then spaces become ``▁`` (U+2581), runs of spaces collapse and the ends are stripped
    (``remove_extra_whitespaces``) and one ``▁`` is prepended (``add_dummy_prefix``), so
    "Hello world" is segmented as "▁Hello▁world". ``decode`` turns ``▁`` back into spaces
    and drops the dummy prefix.

Viterbi
    Bit-exact with SentencePiece's ``EncodeOptimized``: positions are visited left to
    right, a node keeps the first candidate with the strictly highest *float32* score (so
    exact ties go to the longest piece, and near-ties round the way SentencePiece rounds),
    a character without a one-character piece gets an ``<unk>`` node scored
    ``min_score - 10``, and a run of unknown characters becomes one ``<unk>``. When no
    piece has ``▁`` inside it the lattice falls apart at every ``▁``, so words are
    segmented once and cached; a cached word is re-run in float32 only when its closest
    decision is within rounding distance (see ``_encode_words``).

Byte fallback
    With ``byte_fallback`` an unknown character is written as the ``<0xNN>`` pieces of its
    UTF-8 bytes, so nothing is lost. SentencePiece cannot represent a *literal* ``▁`` in
    the input (it decodes as a space); ``literal_meta_bytes=True`` (lmkit's default when
    training with byte fallback) writes a literal ``▁`` as its three bytes instead, which
    makes ``decode(encode(s)) == s`` hold for every string when
    ``remove_extra_whitespaces=False``.

Files: lmkit's JSON (``save``/``load``), SentencePiece ``.model`` files
(``from_sentencepiece``/``save_sentencepiece``, read and written without protobuf) and
Hugging Face ``tokenizer.json`` with a Unigram model (``from_tokenizer_json``).
"""

from __future__ import annotations

import base64
import math
import os
import random
import re
from array import array
from heapq import nlargest
from itertools import chain, islice
from typing import Iterable, Sequence

from lmkit.atomic import atomic_write_bytes
from lmkit.errors import TokenizerError
from lmkit.tokenizers.base import Tokenizer
from lmkit.tokenizers.json_files import (check_format, corrupt_file_errors, hf_json_errors, is_hf_tokenizer_json,
                                         parse_json, read_file_bytes, write_json)
from lmkit.tokenizers.special_tokens import encode_with_specials
from lmkit.tokenizers.spm_model import SPACE, Charsmap, PieceType, SpmModel, parse_model, serialize_model
from lmkit.tokenizers.unigram_trainer import learn_pieces
from lmkit.tokenizers.word_cache import CachesWords

FORMAT = "lmkit.unigram"
FORMAT_VERSION = 1
UNK_PENALTY = 10.0  # SentencePiece's kUnkPenalty
_NEG_INF = float("-inf")
# characters that mark a literal ``▁`` of the input while encoding (Unicode noncharacters)
_PLACEHOLDERS = [chr(c) for c in range(0xFDD0, 0xFDF0)] + ["\uFFFE", "\uFFFF"]
_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def byte_piece(b: int) -> str:
    """SentencePiece's name for byte `b`: ``<0x41>``."""
    return f"<0x{b:02X}>"


class UnigramTokenizer(CachesWords, Tokenizer):
    """SentencePiece-compatible Unigram tokenizer.

    ``pieces`` lists ``(piece, score, type)`` in id order; types are :class:`PieceType`
    (exactly one ``UNKNOWN`` piece is required; the ``BYTE`` pieces ``<0x00>``..``<0xFF>``
    are required with ``byte_fallback``). Scores and path sums are float32, like SentencePiece;
    ``float64_paths`` keeps them in float64 instead, as Hugging Face's Unigram does (on an exact
    tie, float32 rounding can pick the other path). ``prefix_only_if_no_space`` skips the dummy
    prefix when the text already starts with a space (Hugging Face's ``Metaspace``). Both are set
    by :meth:`from_tokenizer_json`. Build it with :meth:`train`, :meth:`load`,
    :meth:`from_sentencepiece` or :meth:`from_tokenizer_json`.
    """

    def __init__(
        self,
        pieces: Sequence[tuple[str, float, PieceType | int]],
        *,
        byte_fallback: bool = False,
        add_dummy_prefix: bool = True,
        remove_extra_whitespaces: bool = True,
        escape_whitespaces: bool = True,
        normalizer_name: str = "identity",
        precompiled_charsmap: bytes = b"",
        literal_meta_bytes: bool = False,
        unk_surface: str = " \u2047 ",
        prefix_only_if_no_space: bool = False,
        float64_paths: bool = False,
        cache_size: int = 1 << 18,
    ) -> None:
        self.byte_fallback = bool(byte_fallback)
        self.float64_paths = bool(float64_paths)
        self._round = float if self.float64_paths else _f32
        self.prefix_only_if_no_space = bool(prefix_only_if_no_space)
        self.add_dummy_prefix = bool(add_dummy_prefix)
        self.remove_extra_whitespaces = bool(remove_extra_whitespaces)
        self.escape_whitespaces = bool(escape_whitespaces)
        self.normalizer_name = normalizer_name or "identity"
        self.literal_meta_bytes = bool(literal_meta_bytes)
        self.unk_surface = unk_surface
        self.cache_size = int(cache_size)
        self._charsmap = Charsmap(precompiled_charsmap) if precompiled_charsmap else None
        if self.literal_meta_bytes and not self.byte_fallback:
            raise TokenizerError("literal_meta_bytes needs byte_fallback (a literal ▁ is written as bytes)")
        self._pieces: list[str] = []
        self._scores: list[float] = []
        self._types: list[PieceType] = []
        for k, item in enumerate(pieces):
            try:
                piece, score, ptype = item
                ptype = PieceType(int(ptype))
                score = float(score)
            except (TypeError, ValueError) as exc:
                raise TokenizerError(f"piece #{k} {item!r} is not (piece, score, type): {exc}") from None
            if not isinstance(piece, str) or not piece:
                raise TokenizerError(f"piece #{k} is empty or not a string")
            if math.isnan(score):
                raise TokenizerError(f"piece #{k} {piece!r} has a NaN score")
            self._pieces.append(piece)
            self._scores.append(self._round(score))
            self._types.append(ptype)
        self._build()

    # ---- construction ------------------------------------------------------------------
    def _build(self) -> None:
        pieces, scores, types = self._pieces, self._scores, self._types
        self._ids: dict[str, int] = {}
        for i, p in enumerate(pieces):
            if p in self._ids:
                raise TokenizerError(f"piece {p!r} appears twice (ids {self._ids[p]} and {i})")
            self._ids[p] = i
        unk = [i for i, t in enumerate(types) if t == PieceType.UNKNOWN]
        if len(unk) != 1:
            raise TokenizerError(f"a Unigram vocabulary needs exactly one unknown piece (<unk>), found {len(unk)}")
        self.unk_id = unk[0]
        normal = [s for s, t in zip(scores, types) if t == PieceType.NORMAL]
        self._min_score = min(normal, default=0.0)
        self._max_score = max(normal, default=0.0)
        self._unk_score = self._round(self._min_score - UNK_PENALTY)
        lookup: dict[str, tuple[int, float]] = {}
        for i, (p, s, t) in enumerate(zip(pieces, scores, types)):
            if t == PieceType.NORMAL:
                lookup[p] = (i, s)
            elif t == PieceType.USER_DEFINED:  # SentencePiece's bonus: always preferred
                lookup[p] = (i, self._round(len(p.encode("utf-8")) * self._max_score - 0.1))
        self._lookup = lookup
        self._prefixes = {p[:k] for p in lookup for k in range(1, len(p) + 1)}
        self._maxlen = max(map(len, lookup), default=1)
        self._meta = SPACE if self.escape_whitespaces else " "
        # the lattice falls apart at each meta symbol unless a piece has one inside it
        self._word_split = not any(self._meta in p[1:] for p in lookup)
        m = re.escape(self._meta)
        self._word_re = re.compile(f"{m}[^{m}]*|[^{m}]+")
        self._byte_ids: list[int] | None = None
        self._byte_of: dict[int, int] = {}
        for i, (p, t) in enumerate(zip(pieces, types)):
            if t == PieceType.BYTE:
                match = _BYTE_PIECE.fullmatch(p)
                if match is None:
                    raise TokenizerError(f"byte piece {p!r} (id {i}) is not of the form <0xNN>")
                self._byte_of[i] = int(match.group(1), 16)
        if self.byte_fallback:
            by_value = {b: i for i, b in self._byte_of.items()}
            missing = [b for b in range(256) if b not in by_value]
            if missing:
                raise TokenizerError(
                    f"byte_fallback needs the 256 pieces <0x00>..<0xFF>; {len(missing)} are missing "
                    f"(first: {byte_piece(missing[0])})"
                )
            self._byte_ids = [by_value[b] for b in range(256)]
        self._specials = {p: i for i, (p, t) in enumerate(zip(pieces, types))
                          if t in (PieceType.CONTROL, PieceType.UNKNOWN)}
        self._vocab_chars = frozenset(chain.from_iterable(lookup))
        self._reset_caches()  # word -> Viterbi entry (``_segment_word`` on a miss); splitters

    # ---- the Tokenizer interface -------------------------------------------------------
    @property
    def special_tokens(self) -> dict[str, int]:  # type: ignore[override]
        """Control pieces and ``<unk>`` (matched in text only with ``allowed_special``)."""
        return dict(self._specials)

    @property
    def vocab_size(self) -> int:
        return len(self._pieces)

    @property
    def pieces(self) -> list[tuple[str, float, PieceType]]:
        """``(piece, score, type)`` for every id."""
        return list(zip(self._pieces, self._scores, self._types))

    def id_to_token(self, idx: int) -> str:
        self._check_id(idx)
        return self._pieces[idx]

    def token_to_id(self, token: str) -> int | None:
        return self._ids.get(token)

    def score(self, idx: int) -> float:
        self._check_id(idx)
        return self._scores[idx]

    def piece_type(self, idx: int) -> PieceType:
        self._check_id(idx)
        return self._types[idx]

    def get_vocab(self) -> dict[str, int]:
        return dict(self._ids)

    def _check_id(self, idx) -> None:
        if isinstance(idx, bool) or not isinstance(idx, int) or not 0 <= idx < len(self._pieces):
            raise TokenizerError(f"token id {idx!r} is not in this vocabulary (size {len(self._pieces)})")

    # ---- normalisation -----------------------------------------------------------------
    def normalize(self, text: str) -> str:
        """SentencePiece's normalised form of `text` (``▁`` for spaces, dummy prefix)."""
        return self._normalize(text, None)

    def _normalize(self, text: str, placeholder: str | None) -> str:
        """``Normalizer::Normalize``; a literal ``▁`` becomes `placeholder` when given."""
        if placeholder is not None:
            text = text.replace(SPACE, placeholder)
        meta = self._meta
        if self._charsmap is None:  # identity: every character is its own piece
            if self.remove_extra_whitespaces:
                text = " ".join(filter(None, text.split(" ")))
            if not text:
                return ""
            if self.add_dummy_prefix and not (self.prefix_only_if_no_space and text[0] == " "):
                text = " " + text
            if self.escape_whitespaces:
                text = text.replace(" ", SPACE)
            if self.remove_extra_whitespaces:
                text = text.rstrip(meta)
            return text
        parts = self._charsmap.pieces(text)
        k = 0
        if self.remove_extra_whitespaces:
            while k < len(parts) and parts[k] == " ":
                k += 1
        if k == len(parts):
            return ""
        prefix = self.add_dummy_prefix and not (self.prefix_only_if_no_space and parts[k].startswith(" "))
        out: list[str] = [" "] if prefix else []
        prev_space = self.remove_extra_whitespaces
        for sp in islice(parts, k, None):
            if prev_space:
                sp = sp.lstrip(" ")
            if sp:
                out.append(sp)
                prev_space = sp.endswith(" ")
            if not self.remove_extra_whitespaces:
                prev_space = False
        s = "".join(out)
        if self.escape_whitespaces:
            s = s.replace(" ", SPACE)
        if self.remove_extra_whitespaces:
            s = s.rstrip(meta)
        return s

    def _placeholder(self, text: str) -> str | None:
        """A character standing for a literal ``▁`` during encoding (None: not needed)."""
        if not self.literal_meta_bytes or SPACE not in text:
            return None
        for ph in _PLACEHOLDERS:
            if ph not in text and ph not in self._vocab_chars:
                return ph
        raise TokenizerError("cannot encode this text: it uses every noncharacter U+FDD0..U+FDEF, U+FFFE, U+FFFF")

    # ---- encoding ----------------------------------------------------------------------
    def encode(self, text: str, allowed_special: str | Iterable[str] = "none") -> list[int]:
        """Viterbi segmentation of `text` as ids. With ``allowed_special``, control pieces
        (``<s>``…) written in the text become their ids; the text between them is encoded
        separately (each part gets its own dummy prefix)."""
        return encode_with_specials(text, allowed_special, self._specials, self._splitters, self._encode_text)

    def encode_as_pieces(self, text: str) -> list[str]:
        return [self._pieces[i] for i in self.encode(text)]

    def _encode_text(self, text: str) -> list[int]:
        ph = self._placeholder(text)
        s = self._normalize(text, ph)
        if not s:
            return []
        if self.float64_paths and ph is None and self._word_split:  # Hugging Face: float64, word by word
            ids = [i for w in self._word_re.findall(s) for i in self._cache[w][0]]
        elif self.float64_paths and ph is None:
            ids = list(self._word_entry(s)[0])
        elif not self._word_split:
            ids = self._viterbi_f32(s, 0.0, ph)[0]
        else:
            ids = self._encode_words(self._word_re.findall(s), ph)
        return ids if self._byte_ids is not None or len(ids) < 2 else self._merge_unk(ids)

    def _encode_words(self, words: list[str], placeholder: str | None) -> list[int]:
        """Viterbi over a sentence that falls apart into `words`, bit-exact with SentencePiece.

        SentencePiece accumulates path scores in float32 over the whole sentence, so an
        (almost) tie inside a word can be decided by rounding, which depends on the score
        accumulated before the word. A cached word segmentation is used only when its
        closest decision is wider than that rounding error can be; otherwise the word is
        re-run in float32 from the exact running score.
        """
        cache, ids = self._cache, []
        acc = array("f", b"\0\0\0\0")  # the running float32 path score, as SentencePiece's
        frexp, ldexp = math.frexp, math.ldexp
        for w in words:
            if placeholder is None:
                wids, wscore, node_scores, gap = cache[w]
                # each of the <= len(w) float32 additions on either path rounds by <= 1/2 ulp
                tol = ldexp(1.0, frexp(1.0 - acc[0] - wscore)[1] - 23) * (len(w) + 2)
                if gap > tol:
                    ids.extend(wids)
                    for sc in node_scores:
                        acc[0] = acc[0] + sc
                    continue
            wids, acc[0] = self._viterbi_f32(w, acc[0], placeholder)
            ids.extend(wids)
        return ids

    def _word_entry(self, w: str) -> tuple[tuple[int, ...], float, tuple[float, ...], float]:
        """Viterbi of one word in double precision, for the cache: (ids, score, the score of
        each lattice node on the path, smallest gap between best and runner-up at any node)."""
        n = len(w)
        lookup, prefixes, maxlen, unk_score = self._lookup, self._prefixes, self._maxlen, self._unk_score
        score = [0.0] + [_NEG_INF] * n
        second = [_NEG_INF] * (n + 1)
        start = [0] + [-1] * n
        best_id = [0] * (n + 1)
        best_sc = [0.0] * (n + 1)
        for i in range(n):
            base = score[i]
            single = False
            for j in range(i + 1, min(n, i + maxlen) + 1):
                sub = w[i:j]
                if sub not in prefixes:
                    break
                hit = lookup.get(sub)
                if hit is None:
                    continue
                pid, sc = hit
                if j == i + 1:
                    single = True
                cand = base + sc
                if start[j] < 0:
                    score[j], start[j], best_id[j], best_sc[j] = cand, i, pid, sc
                elif cand > score[j]:
                    second[j] = score[j]
                    score[j], start[j], best_id[j], best_sc[j] = cand, i, pid, sc
                elif cand > second[j]:
                    second[j] = cand
            if not single:  # no one-character piece: an <unk> node
                j = i + 1
                cand = base + unk_score
                if start[j] < 0:
                    score[j], start[j], best_id[j], best_sc[j] = cand, i, -1, unk_score
                elif cand > score[j]:
                    second[j] = score[j]
                    score[j], start[j], best_id[j], best_sc[j] = cand, i, -1, unk_score
                elif cand > second[j]:
                    second[j] = cand
        gap = min((score[j] - second[j] for j in range(1, n + 1)), default=math.inf)
        ids: list[int] = []
        node_scores: list[float] = []
        j = n
        while j > 0:
            i = start[j]
            node_scores.append(best_sc[j])
            if best_id[j] >= 0:
                ids.append(best_id[j])
            else:
                ids.extend(reversed(self._unk_ids(w[i:j], None)))
            j = i
        ids.reverse()
        node_scores.reverse()
        return tuple(ids), score[n], tuple(node_scores), gap

    _segment_word = _word_entry  # what the word cache runs on a miss

    def _viterbi_f32(self, s: str, base0: float, placeholder: str | None) -> tuple[list[int], float]:
        """SentencePiece's EncodeOptimized on normalised `s`, from path score `base0`:
        positions left to right, a node keeps the first candidate with the strictly highest
        float32 score, a character without a one-character piece gets an <unk> node."""
        n = len(s)
        lookup, prefixes, maxlen, unk_score = self._lookup, self._prefixes, self._maxlen, self._unk_score
        score = array("f", bytes(4 * (n + 1)))
        score[0] = base0
        f32 = array("f", b"\0\0\0\0")
        start = [0] + [-1] * n
        best_id = [0] * (n + 1)
        for i in range(n):
            base = score[i]
            single = False
            for j in range(i + 1, min(n, i + maxlen) + 1):
                sub = s[i:j]
                if sub not in prefixes:
                    break
                hit = lookup.get(sub)
                if hit is not None:
                    f32[0] = base + hit[1]
                    cand = f32[0]
                    if start[j] < 0 or cand > score[j]:
                        score[j] = cand
                        start[j] = i
                        best_id[j] = hit[0]
                    if j == i + 1:
                        single = True
            if not single:
                f32[0] = base + unk_score
                cand = f32[0]
                j = i + 1
                if start[j] < 0 or cand > score[j]:
                    score[j] = cand
                    start[j] = i
                    best_id[j] = -1
        out: list[int] = []
        j = n
        while j > 0:
            i = start[j]
            pid = best_id[j]
            if pid >= 0:
                out.append(pid)
            else:
                out.extend(reversed(self._unk_ids(s[i:j], placeholder)))
            j = i
        out.reverse()
        return out, score[n]

    def _merge_unk(self, ids: list[int]) -> list[int]:
        """One ``<unk>`` per run of unknown characters, as SentencePiece's encoder does."""
        unk = self.unk_id
        return [i for k, i in enumerate(ids) if i != unk or k == 0 or ids[k - 1] != unk]

    def _unk_ids(self, chars: str, placeholder: str | None) -> list[int]:
        """Ids for a character no piece covers: its UTF-8 bytes with byte fallback, else <unk>."""
        if self._byte_ids is None:
            return [self.unk_id]
        if placeholder is not None:
            chars = chars.replace(placeholder, SPACE)
        return [self._byte_ids[b] for b in chars.encode("utf-8", "surrogatepass")]

    # ---- lattice: n-best and sampling ----------------------------------------------------
    def _lattice(self, s: str) -> list[list[tuple[int, int, float]]]:
        """incoming[j] = [(start, id or -1 for <unk>, score)] for every end position j."""
        n = len(s)
        lookup, prefixes, maxlen = self._lookup, self._prefixes, self._maxlen
        incoming: list[list[tuple[int, int, float]]] = [[] for _ in range(n + 1)]
        for i in range(n):
            single = False
            for j in range(i + 1, min(n, i + maxlen) + 1):
                sub = s[i:j]
                if sub not in prefixes:
                    break
                hit = lookup.get(sub)
                if hit is not None:
                    incoming[j].append((i, hit[0], hit[1]))
                    single = single or j == i + 1
            if not single:
                incoming[i + 1].append((i, -1, self._unk_score))
        return incoming

    def _path_ids(self, s: str, path: Sequence[tuple[int, int, int]], placeholder: str | None) -> list[int]:
        out: list[int] = []
        for i, j, pid in path:
            out.extend([pid] if pid >= 0 else self._unk_ids(s[i:j], placeholder))
        return out if self._byte_ids is not None else self._merge_unk(out)

    def nbest(self, text: str, k: int) -> list[tuple[list[int], float]]:
        """The `k` best segmentations of `text` (distinct), best first, with their scores.

        A k-best Viterbi: each lattice node keeps its k best partial paths (float32 sums, as
        Viterbi); ties go to earlier starts, so the first result is always ``encode(text)``.
        """
        if not isinstance(k, int) or k < 1:
            raise TokenizerError(f"nbest needs an integer k >= 1, got {k!r}")
        ph = self._placeholder(text)
        s = self._normalize(text, ph)
        n = len(s)
        if n == 0:
            return [([], 0.0)]
        incoming = self._lattice(s)
        # best[j] = up to k entries (score, start, rank at start, id), best first
        best: list[list[tuple[float, int, int, int]]] = [[] for _ in range(n + 1)]
        best[0] = [(0.0, -1, 0, 0)]
        for j in range(1, n + 1):
            cands = [
                (_f32(b[0] + sc), i, r, pid)
                for i, pid, sc in incoming[j]
                for r, b in enumerate(best[i])
            ]
            best[j] = nlargest(k, cands, key=lambda c: (c[0], -c[1], -c[2]))
        out = []
        for entry in best[n]:
            total = entry[0]
            path = []
            j = n
            while j > 0:
                _, i, r, pid = entry
                path.append((i, j, pid))
                j = i
                entry = best[i][r]
            path.reverse()
            out.append((self._path_ids(s, path, ph), total))
        return out

    def sample(
        self,
        text: str,
        alpha: float = 0.1,
        nbest_size: int = -1,
        rng: random.Random | int | None = None,
    ) -> list[int]:
        """A random segmentation (subword regularisation): P(seg) ∝ exp(alpha * score(seg)).

        ``nbest_size < 0`` samples from *all* segmentations (forward filtering, backward
        sampling over the lattice); ``nbest_size > 1`` from the `nbest_size` best ones;
        ``nbest_size`` 0 or 1 returns the Viterbi segmentation. `rng` is a
        ``random.Random`` or a seed.
        """
        if not isinstance(rng, random.Random):
            rng = random.Random(rng)
        if nbest_size in (0, 1):
            return self.encode(text)
        if nbest_size > 1:
            results = self.nbest(text, nbest_size)
            top = max(sc for _, sc in results)
            weights = [math.exp(alpha * (sc - top)) for _, sc in results]
            return list(rng.choices(results, weights=weights)[0][0])
        ph = self._placeholder(text)
        s = self._normalize(text, ph)
        n = len(s)
        if n == 0:
            return []
        incoming = self._lattice(s)
        fwd = [0.0] + [_NEG_INF] * n
        for j in range(1, n + 1):
            vals = [fwd[i] + alpha * sc for i, _, sc in incoming[j]]
            m = max(vals)
            fwd[j] = m + math.log(sum(math.exp(v - m) for v in vals))
        path = []
        j = n
        while j > 0:
            edges = incoming[j]
            weights = [math.exp(fwd[i] + alpha * sc - fwd[j]) for i, _, sc in edges]
            i, pid, _ = rng.choices(edges, weights=weights)[0]
            path.append((i, j, pid))
            j = i
        path.reverse()
        return self._path_ids(s, path, ph)

    def log_likelihood(self, texts: Iterable[str]) -> tuple[float, int]:
        """(total log-probability, number of normalised characters) of `texts` under this
        model read as a *normalised* unigram LM, Viterbi approximation.

        Scores are renormalised to log-probabilities over the NORMAL pieces (raw scores
        need not sum to one), each text is segmented by Viterbi under those
        log-probabilities, and an unknown character costs ``min log-prob - 10``. This is
        the one scorer used to compare lmkit's trainer with SentencePiece's.
        """
        normal = [s for s, t in zip(self._scores, self._types) if t == PieceType.NORMAL]
        if not normal:
            raise TokenizerError("the model has no normal pieces to score with")
        m = max(normal)
        log_z = m + math.log(sum(math.exp(s - m) for s in normal))
        scored = UnigramTokenizer(
            [(p, s - log_z if t == PieceType.NORMAL else s, t) for p, s, t in self.pieces],
            byte_fallback=False, add_dummy_prefix=self.add_dummy_prefix,
            remove_extra_whitespaces=self.remove_extra_whitespaces, escape_whitespaces=self.escape_whitespaces,
            normalizer_name=self.normalizer_name,
            precompiled_charsmap=self._charsmap.blob if self._charsmap else b"",
            prefix_only_if_no_space=self.prefix_only_if_no_space, float64_paths=self.float64_paths,
        )
        total, chars = 0.0, 0
        for text in texts:
            s = scored.normalize(text)
            chars += len(s)
            if scored._word_split:
                total += sum(scored._cache[w][1] for w in scored._word_re.findall(s))
            elif s:
                total += scored._word_entry(s)[1]
        return total, chars

    # ---- decoding ----------------------------------------------------------------------
    def decode(self, ids: Sequence[int]) -> str:
        """Text for `ids`: ``▁`` -> space, dummy prefix dropped, byte pieces joined as UTF-8
        (invalid sequences become U+FFFD), control pieces dropped, ``<unk>`` -> unk_surface."""
        out: list[str] = []
        pending = bytearray()
        first = True
        pieces, types, byte_of = self._pieces, self._types, self._byte_of
        n = len(pieces)
        for idx in ids:
            if not (type(idx) is int and 0 <= idx < n):
                idx = _as_id(idx)
                self._check_id(idx)
            t = types[idx]
            if t == PieceType.BYTE:
                pending.append(byte_of[idx])
                first = False
                continue
            if pending:
                out.append(pending.decode("utf-8", "replace"))
                pending.clear()
            if t == PieceType.CONTROL:
                continue
            if t == PieceType.UNKNOWN:
                out.append(self.unk_surface)
            else:
                piece = pieces[idx]
                if first and self.add_dummy_prefix and piece.startswith(self._meta):
                    piece = piece[1:]
                out.append(piece.replace(SPACE, " ") if self.escape_whitespaces else piece)
            first = False
        if pending:
            out.append(pending.decode("utf-8", "replace"))
        return "".join(out)

    # ---- training ----------------------------------------------------------------------
    @classmethod
    def train(cls, texts_or_files, vocab_size: int = 8000, **kwargs) -> "UnigramTokenizer":
        """Train on texts and/or UTF-8 files (one sentence per line); see
        :func:`train_unigram` for the options."""
        return train_unigram(texts_or_files, vocab_size=vocab_size, **kwargs)

    # ---- persistence -------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "byte_fallback": self.byte_fallback,
            "add_dummy_prefix": self.add_dummy_prefix,
            "remove_extra_whitespaces": self.remove_extra_whitespaces,
            "escape_whitespaces": self.escape_whitespaces,
            "normalizer_name": self.normalizer_name,
            "literal_meta_bytes": self.literal_meta_bytes,
            "unk_surface": self.unk_surface,
            "prefix_only_if_no_space": self.prefix_only_if_no_space,
            "float64_paths": self.float64_paths,
            "precompiled_charsmap": base64.b64encode(self._charsmap.blob).decode() if self._charsmap else None,
            "pieces": [[p, s, t.name] for p, s, t in self.pieces],
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write lmkit's JSON format atomically."""
        write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, data: dict, source: str = "<dict>") -> "UnigramTokenizer":
        check_format(data, source, FORMAT, FORMAT_VERSION, "Unigram")
        with corrupt_file_errors(source):
            pieces = [(p, float(s), PieceType[t]) for p, s, t in data["pieces"]]
            blob = data.get("precompiled_charsmap")
            return cls(
                pieces,
                byte_fallback=bool(data.get("byte_fallback", False)),
                add_dummy_prefix=bool(data.get("add_dummy_prefix", True)),
                remove_extra_whitespaces=bool(data.get("remove_extra_whitespaces", True)),
                escape_whitespaces=bool(data.get("escape_whitespaces", True)),
                normalizer_name=str(data.get("normalizer_name", "identity")),
                precompiled_charsmap=base64.b64decode(blob) if blob else b"",
                literal_meta_bytes=bool(data.get("literal_meta_bytes", False)),
                unk_surface=str(data.get("unk_surface", " \u2047 ")),
                prefix_only_if_no_space=bool(data.get("prefix_only_if_no_space", False)),
                float64_paths=bool(data.get("float64_paths", False)),
            )

    @classmethod
    def load(cls, path: str | os.PathLike) -> "UnigramTokenizer":
        """Load lmkit's JSON, a SentencePiece ``.model`` or a Hugging Face ``tokenizer.json``."""
        raw = read_file_bytes(path)
        if raw.lstrip()[:1] == b"{":
            data = parse_json(raw, path)
            if is_hf_tokenizer_json(data):
                return cls.from_hf_dict(data, source=str(path))
            return cls.from_dict(data, source=str(path))
        return cls.from_sentencepiece(path)

    @classmethod
    def from_sentencepiece(cls, model_file: str | os.PathLike | bytes) -> "UnigramTokenizer":
        """Pieces, scores, types and normaliser settings of a SentencePiece ``.model``
        (read without protobuf or sentencepiece; the charsmap is used as is)."""
        if isinstance(model_file, (bytes, bytearray)):
            raw, source = bytes(model_file), "<model bytes>"
        else:
            raw, source = read_file_bytes(model_file), str(model_file)
        m = parse_model(raw, source)
        if m.model_type != "unigram":
            raise TokenizerError(f"{source}: SentencePiece model type is {m.model_type!r}, not 'unigram'")
        if m.treat_whitespace_as_suffix:
            raise TokenizerError(f"{source}: treat_whitespace_as_suffix models are not supported")
        try:
            return cls(
                m.pieces,
                byte_fallback=m.byte_fallback,
                add_dummy_prefix=m.add_dummy_prefix,
                remove_extra_whitespaces=m.remove_extra_whitespaces,
                escape_whitespaces=m.escape_whitespaces,
                normalizer_name=m.normalizer_name or "identity",
                precompiled_charsmap=m.precompiled_charsmap,
                unk_surface=m.unk_surface,
            )
        except TokenizerError as exc:
            raise TokenizerError(f"{source}: {exc}") from exc

    def to_sentencepiece_bytes(self) -> bytes:
        return serialize_model(
            SpmModel(
                pieces=self.pieces,
                byte_fallback=self.byte_fallback,
                normalizer_name=self.normalizer_name,
                precompiled_charsmap=self._charsmap.blob if self._charsmap else b"",
                add_dummy_prefix=self.add_dummy_prefix,
                remove_extra_whitespaces=self.remove_extra_whitespaces,
                escape_whitespaces=self.escape_whitespaces,
                unk_surface=self.unk_surface,
            )
        )

    def save_sentencepiece(self, path: str | os.PathLike) -> None:
        """Write a ``.model`` file that ``sentencepiece.SentencePieceProcessor`` loads
        (it reads a literal ``▁`` as a space: SentencePiece has no literal_meta_bytes)."""
        atomic_write_bytes(path, self.to_sentencepiece_bytes())

    @classmethod
    def from_hf_dict(cls, data: dict, source: str = "<tokenizer.json>") -> "UnigramTokenizer":
        """A Hugging Face ``tokenizer.json`` (as a dict) whose model is ``Unigram``.

        Understood: normalizer ``null`` / ``Precompiled`` (optionally in a Sequence with
        ``Replace(" {2,}", " ")`` / ``Strip``), pre-tokenizer ``Metaspace`` (optionally
        after ``WhitespaceSplit``); byte fallback; added tokens as control/user pieces.
        """
        with hf_json_errors(source):
            return _from_hf_dict(cls, data)

    @classmethod
    def from_tokenizer_json(cls, path: str | os.PathLike) -> "UnigramTokenizer":
        """Load a Hugging Face ``tokenizer.json`` whose model is Unigram."""
        return cls.from_hf_dict(parse_json(read_file_bytes(path), path), source=str(path))

    def __repr__(self) -> str:
        return (f"UnigramTokenizer(vocab_size={self.vocab_size}, normalizer={self.normalizer_name!r}, "
                f"byte_fallback={self.byte_fallback})")


# ---- helpers -------------------------------------------------------------------------------
_F32 = array("f", b"\0\0\0\0")


def _f32(x: float) -> float:
    """`x` rounded to float32 (SentencePiece keeps scores and path scores as float)."""
    _F32[0] = x
    return _F32[0]


def _as_id(idx) -> int:
    try:
        if float(idx).is_integer() and not isinstance(idx, (bool, str)):
            return int(idx)
    except (TypeError, ValueError, OverflowError):
        pass
    raise TokenizerError(f"token id {idx!r} is not an integer")


def _from_hf_dict(cls, data: dict) -> UnigramTokenizer:
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise TokenizerError("corrupt tokenizer.json (no \"model\" object)")
    model = data["model"]
    if model.get("type") != "Unigram":
        raise TokenizerError(f"model type {model.get('type')!r} is not Unigram")
    unk_id = model.get("unk_id")
    if unk_id is None:
        raise TokenizerError("a Unigram model without unk_id is not supported")
    byte_fallback = bool(model.get("byte_fallback", False))
    added = {int(t["id"]): t for t in data.get("added_tokens") or []}
    pieces = []
    for i, (piece, score) in enumerate(model["vocab"]):
        if i == unk_id:
            t = PieceType.UNKNOWN
        elif byte_fallback and _BYTE_PIECE.fullmatch(piece):
            t = PieceType.BYTE
        elif i in added and added[i].get("special", False):
            t = PieceType.CONTROL
        elif i in added:
            t = PieceType.USER_DEFINED
        else:
            t = PieceType.NORMAL
        pieces.append((piece, float(score), t))
    blob, remove_extra = b"", False
    norm = data.get("normalizer")
    steps = [] if norm is None else norm.get("normalizers", []) if norm.get("type") == "Sequence" else [norm]
    for step in steps:
        kind = step.get("type")
        if kind == "Precompiled":
            blob = base64.b64decode(step.get("precompiled_charsmap") or "")
        elif kind == "Replace" and step.get("pattern", {}).get("Regex") == " {2,}" and step.get("content") == " ":
            remove_extra = True
        elif kind == "Strip":
            remove_extra = True
        else:
            raise TokenizerError(f"normalizer {kind!r} is not supported for Unigram")
    pre = data.get("pre_tokenizer")
    parts = [] if pre is None else pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    add_prefix, seen_metaspace = True, False
    for step in parts:
        kind = step.get("type")
        if kind == "WhitespaceSplit":
            remove_extra = True
        elif kind == "Metaspace":
            seen_metaspace = True
            if step.get("replacement", SPACE) != SPACE:
                raise TokenizerError("Metaspace with a replacement other than ▁ is not supported")
            scheme = step.get("prepend_scheme", "always" if step.get("add_prefix_space", True) else "never")
            add_prefix = scheme != "never"
        else:
            raise TokenizerError(f"pre-tokenizer {kind!r} is not supported for Unigram")
    if not seen_metaspace:
        raise TokenizerError("a Unigram tokenizer.json needs a Metaspace pre-tokenizer")
    # Metaspace prepends "▁" only when the text does not start with one already
    return cls(pieces, byte_fallback=byte_fallback, add_dummy_prefix=add_prefix,
               remove_extra_whitespaces=remove_extra, precompiled_charsmap=blob,
               normalizer_name="precompiled" if blob else "identity", prefix_only_if_no_space=True,
               float64_paths=True)


def train_unigram(
    texts_or_files: str | os.PathLike | Iterable[str | os.PathLike],
    vocab_size: int = 8000,
    *,
    byte_fallback: bool = False,
    add_dummy_prefix: bool = True,
    remove_extra_whitespaces: bool = True,
    literal_meta_bytes: bool | None = None,
    unk_piece: str = "<unk>",
    control_symbols: Sequence[str] = ("<s>", "</s>"),
    user_defined_symbols: Sequence[str] = (),
    **learn_options,
) -> UnigramTokenizer:
    """Train a Unigram tokenizer of `vocab_size` pieces (special and byte pieces included).

    Ids: ``<unk>`` is 0, then `control_symbols` (``<s>``, ``</s>``), `user_defined_symbols`,
    the 256 byte pieces with `byte_fallback`, then the learned pieces by descending score --
    SentencePiece's layout. ``literal_meta_bytes`` defaults to `byte_fallback`. The other
    options (max_piece_length, seed_size, shrinking_factor, num_sub_iterations,
    split_by_unicode_script, split_by_number, split_digits, hard_vocab_limit, show_progress)
    go to :func:`lmkit.tokenizers.unigram_trainer.learn_pieces`.
    """
    if not isinstance(vocab_size, int) or vocab_size < 1:
        raise TokenizerError(f"vocab_size must be a positive integer, got {vocab_size!r}")
    meta = [(unk_piece, 0.0, PieceType.UNKNOWN)]
    meta += [(s, 0.0, PieceType.CONTROL) for s in control_symbols]
    meta += [(s, 0.0, PieceType.USER_DEFINED) for s in user_defined_symbols]
    if byte_fallback:
        meta += [(byte_piece(b), 0.0, PieceType.BYTE) for b in range(256)]
    names = [m[0] for m in meta]
    if len(set(names)) != len(names) or any(not n for n in names):
        raise TokenizerError(f"special/user-defined symbols must be distinct and non-empty: {names}")
    if literal_meta_bytes is None:
        literal_meta_bytes = byte_fallback
    normalizer = UnigramTokenizer([(unk_piece, 0.0, PieceType.UNKNOWN)],
                                  add_dummy_prefix=add_dummy_prefix, remove_extra_whitespaces=remove_extra_whitespaces)
    learned = learn_pieces(texts_or_files, normalizer.normalize, vocab_size - len(meta), n_reserved=len(meta),
                           user_defined_symbols=user_defined_symbols, **learn_options)
    return UnigramTokenizer(meta + [(p, s, PieceType.NORMAL) for p, s in learned], byte_fallback=byte_fallback,
                            add_dummy_prefix=add_dummy_prefix, remove_extra_whitespaces=remove_extra_whitespaces,
                            literal_meta_bytes=literal_meta_bytes)
