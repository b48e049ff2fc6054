"""Read and write SentencePiece ``.model`` files (a serialised ``ModelProto``) without protobuf.

A ``.model`` file is a protocol-buffer message. Only a handful of its fields matter for
encoding, so this module decodes the wire format directly (varints, length-delimited
fields, 32-bit floats) instead of depending on ``protobuf``/``sentencepiece`` at run time:

* ``pieces`` (field 1): ``piece`` (1, string), ``score`` (2, float), ``type`` (3, enum:
  NORMAL=1, UNKNOWN=2, CONTROL=3, USER_DEFINED=4, UNUSED=5, BYTE=6);
* ``trainer_spec`` (2): ``model_type`` (3: UNIGRAM=1, BPE=2, WORD=3, CHAR=4),
  ``byte_fallback`` (35), ``treat_whitespace_as_suffix`` (24), ``unk_surface`` (44);
* ``normalizer_spec`` (3): ``name`` (1), ``precompiled_charsmap`` (2), ``add_dummy_prefix``
  (3), ``remove_extra_whitespaces`` (4), ``escape_whitespaces`` (5).

The precompiled charsmap (used by ``nmt_nfkc`` and friends) is a darts-clone double-array
trie over UTF-8 keys followed by the NUL-terminated replacement strings; ``Charsmap`` looks
keys up in it exactly as SentencePiece's ``Normalizer::NormalizePrefix`` does (longest match).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum

from lmkit.errors import TokenizerError


SPACE = "\u2581"  # ▁, SentencePiece's whitespace symbol


class PieceType(IntEnum):
    """``ModelProto.SentencePiece.Type``."""

    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    USER_DEFINED = 4
    UNUSED = 5
    BYTE = 6


MODEL_TYPES = {1: "unigram", 2: "bpe", 3: "word", 4: "char"}


@dataclass
class SpmModel:
    """The parts of a SentencePiece ``ModelProto`` lmkit uses."""

    pieces: list[tuple[str, float, PieceType]]
    model_type: str = "unigram"
    byte_fallback: bool = False
    treat_whitespace_as_suffix: bool = False
    unk_surface: str = " \u2047 "
    normalizer_name: str = ""
    precompiled_charsmap: bytes = b""
    add_dummy_prefix: bool = True
    remove_extra_whitespaces: bool = True
    escape_whitespaces: bool = True
    extra: dict = field(default_factory=dict)


# ---- wire format ---------------------------------------------------------------------------
def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 70:
            raise ValueError("varint too long")


def _fields(buf: bytes):
    """Yield (field number, wire type, value) for every field of one message."""
    pos, n = 0, len(buf)
    while pos < n:
        key, pos = _varint(buf, pos)
        num, wt = key >> 3, key & 7
        if num == 0:
            raise ValueError("field number 0")
        if wt == 0:
            val, pos = _varint(buf, pos)
        elif wt == 1:
            if pos + 8 > n:
                raise ValueError("truncated 64-bit field")
            val, pos = buf[pos : pos + 8], pos + 8
        elif wt == 2:
            size, pos = _varint(buf, pos)
            if pos + size > n:
                raise ValueError("truncated length-delimited field")
            val, pos = buf[pos : pos + size], pos + size
        elif wt == 5:
            if pos + 4 > n:
                raise ValueError("truncated 32-bit field")
            val, pos = buf[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported wire type {wt}")
        yield num, wt, val


def _key(num: int, wt: int) -> bytes:
    return _enc_varint((num << 3) | wt)


def _enc_varint(v: int) -> bytes:
    if v < 0:
        v += 1 << 64
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _len_field(num: int, data: bytes) -> bytes:
    return _key(num, 2) + _enc_varint(len(data)) + data


# ---- reading -------------------------------------------------------------------------------
def parse_model(data: bytes, source: str = "<bytes>") -> SpmModel:
    """Decode a serialised ``ModelProto``; a corrupt file raises ``TokenizerError``."""
    try:
        return _parse_model(data)
    except (ValueError, UnicodeDecodeError, struct.error) as exc:
        raise TokenizerError(
            f"{source}: corrupt SentencePiece model file ({exc}); re-create or re-download it"
        ) from None


def _parse_model(data: bytes) -> SpmModel:
    pieces: list[tuple[str, float, PieceType]] = []
    m = SpmModel(pieces=pieces)
    for num, wt, val in _fields(data):
        if num == 1 and wt == 2:
            piece, score, ptype = "", 0.0, PieceType.NORMAL
            for n2, w2, v2 in _fields(val):
                if n2 == 1 and w2 == 2:
                    piece = v2.decode("utf-8")
                elif n2 == 2 and w2 == 5:
                    score = struct.unpack("<f", v2)[0]
                elif n2 == 3 and w2 == 0:
                    try:
                        ptype = PieceType(v2)
                    except ValueError:
                        raise ValueError(f"unknown piece type {v2}") from None
            pieces.append((piece, score, ptype))
        elif num == 2 and wt == 2:
            for n2, w2, v2 in _fields(val):
                if n2 == 3 and w2 == 0:
                    m.model_type = MODEL_TYPES.get(v2, f"type{v2}")
                elif n2 == 35 and w2 == 0:
                    m.byte_fallback = bool(v2)
                elif n2 == 24 and w2 == 0:
                    m.treat_whitespace_as_suffix = bool(v2)
                elif n2 == 44 and w2 == 2:
                    m.unk_surface = v2.decode("utf-8")
        elif num == 3 and wt == 2:
            for n2, w2, v2 in _fields(val):
                if n2 == 1 and w2 == 2:
                    m.normalizer_name = v2.decode("utf-8")
                elif n2 == 2 and w2 == 2:
                    m.precompiled_charsmap = bytes(v2)
                elif n2 == 3 and w2 == 0:
                    m.add_dummy_prefix = bool(v2)
                elif n2 == 4 and w2 == 0:
                    m.remove_extra_whitespaces = bool(v2)
                elif n2 == 5 and w2 == 0:
                    m.escape_whitespaces = bool(v2)
    if not pieces:
        raise ValueError("no pieces")
    return m


class Charsmap:
    """A precompiled charsmap: a darts-clone double-array trie over UTF-8 keys whose values
    point at NUL-terminated replacement strings. ``pieces(text)`` splits `text` the way
    SentencePiece's ``Normalizer::NormalizePrefix`` does: at each position the longest
    matching key is replaced, anything else passes through one character at a time."""

    def __init__(self, blob: bytes) -> None:
        try:
            (trie_size,) = struct.unpack_from("<I", blob, 0)
            if trie_size % 4 or 4 + trie_size > len(blob) or trie_size == 0:
                raise ValueError("bad trie size")
            self._units = struct.unpack_from(f"<{trie_size // 4}I", blob, 4)
        except (struct.error, ValueError) as exc:
            raise TokenizerError(f"corrupt precompiled charsmap ({exc})") from None
        self.blob = bytes(blob)
        self._strings = self.blob[4 + trie_size :]
        self._root = _offset(self._units[0])
        n = len(self._units)
        self._first = frozenset(
            c for c in range(1, 256) if (self._root ^ c) < n and _label(self._units[self._root ^ c]) == c
        )
        self._values: dict[int, str] = {}

    def _value(self, v: int) -> str:
        s = self._values.get(v)
        if s is None:
            end = self._strings.find(b"\0", v)
            s = self._strings[v : end if end >= 0 else len(self._strings)].decode("utf-8", "replace")
            self._values[v] = s
        return s

    def longest_match(self, data: bytes, i: int) -> tuple[int, str] | None:
        """(byte length, replacement) of the longest key at ``data[i:]`` that ends on a
        character boundary, or None."""
        units, n_units, n = self._units, len(self._units), len(data)
        pos, j, best = self._root, i, None
        while j < n:
            c = data[j]
            pos ^= c
            if pos >= n_units:
                break
            u = units[pos]
            if _label(u) != c:
                break
            pos ^= _offset(u)
            j += 1
            if (u >> 8) & 1 and pos < n_units and (j >= n or data[j] & 0xC0 != 0x80):
                best = (j - i, units[pos] & 0x7FFFFFFF)
        if best is None:
            return None
        return best[0], self._value(best[1])

    def pieces(self, text: str) -> list[str]:
        """`text` cut into normalised pieces (one per source character or matched key)."""
        first = self._first
        data = text.encode("utf-8")
        out: list[str] = []
        i, n = 0, len(data)
        while i < n:
            b = data[i]
            if b in first:
                m = self.longest_match(data, i)
                if m is not None:
                    out.append(m[1])
                    i += m[0]
                    continue
            k = 1 if b < 0x80 else 2 if b < 0xE0 else 3 if b < 0xF0 else 4
            out.append(data[i : i + k].decode("utf-8", "replace"))
            i += k
        return out


def _offset(u: int) -> int:
    return (u >> 10) << ((u & (1 << 9)) >> 6)


def _label(u: int) -> int:
    return u & ((1 << 31) | 0xFF)


# ---- writing -------------------------------------------------------------------------------
def serialize_model(m: SpmModel) -> bytes:
    """Encode `m` as a ``ModelProto`` that ``sentencepiece`` can load."""
    out = bytearray()
    for piece, score, ptype in m.pieces:
        body = _len_field(1, piece.encode("utf-8")) + _key(2, 5) + struct.pack("<f", score)
        if ptype != PieceType.NORMAL:
            body += _key(3, 0) + _enc_varint(int(ptype))
        out += _len_field(1, body)
    model_type = {v: k for k, v in MODEL_TYPES.items()}.get(m.model_type, 1)
    trainer = _key(3, 0) + _enc_varint(model_type)
    trainer += _key(4, 0) + _enc_varint(len(m.pieces))
    trainer += _key(35, 0) + _enc_varint(int(m.byte_fallback))
    # unk/bos/eos/pad ids (40..43) must agree with the piece types, or sentencepiece refuses the file
    unk = next((i for i, p in enumerate(m.pieces) if p[2] == PieceType.UNKNOWN), -1)
    trainer += _key(40, 0) + _enc_varint(unk)
    for num, name in ((41, "<s>"), (42, "</s>"), (43, "<pad>")):
        idx = next((i for i, p in enumerate(m.pieces) if p[0] == name and p[2] == PieceType.CONTROL), -1)
        trainer += _key(num, 0) + _enc_varint(idx)
    out += _len_field(2, trainer)
    norm = _len_field(1, (m.normalizer_name or "identity").encode("utf-8"))
    if m.precompiled_charsmap:
        norm += _len_field(2, m.precompiled_charsmap)
    norm += _key(3, 0) + _enc_varint(int(m.add_dummy_prefix))
    norm += _key(4, 0) + _enc_varint(int(m.remove_extra_whitespaces))
    norm += _key(5, 0) + _enc_varint(int(m.escape_whitespaces))
    out += _len_field(3, norm)
    return bytes(out)
